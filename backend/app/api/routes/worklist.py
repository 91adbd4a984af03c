"""The triage worklist: ``POST /worklist`` (the PACS worker, after each analysed series),
``GET /worklist`` (flagged first, then by arrival), ``GET /worklist/{id}`` (marks it opened),
``GET /worklist/{id}/top-slices/{rank}`` (a PACS study's top slice or its heatmap,
from the PACS) and ``POST /worklist/{id}/review`` (a radiologist's read; a ``reader`` token
when tokens are configured). The store is ``backend/app/worklist``; the shaping
``api/worklist.py``; the PACS's images ``services/pacs_images.py``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, Response, status

from backend.app.api.deps import CoreDep, PacsImagesDep, SettingsDep, TokenIdDep, WorklistDep
from backend.app.api.responses import error_response
from backend.app.api.worklist import entry_out, study_entry
from backend.app.core.config import READER_ROLE
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import (
    MAX_ID,
    ReviewRequest,
    TopSliceLayer,
    UtcDatetime,
    WorklistEntry,
    WorklistPage,
    WorklistStatus,
    WorklistSubmission,
)
from backend.app.services.pacs_images import PacsImageError, instance_uid_of
from backend.app.worklist.store import MAX_PAGE_SIZE, Filters, NewReview
from ml_model.imaging.dicom import SeriesIdentity
from ml_model.inference.verdict import Result

router = APIRouter(tags=["worklist"])

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: error_response("No worklist entry has this id.", "no worklist entry 7")
}


StudyId = Annotated[int, Path(ge=1, le=MAX_ID, description="The worklist entry's id.")]


def _not_found(study_id: int) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no worklist entry {study_id}")


@router.post(
    "/worklist",
    response_model=WorklistEntry,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {
            "model": WorklistEntry,
            "description": "The series was already listed: "
            "its analysis is updated (status and reads kept).",
        }
    },
    summary="Add an analysed series to the worklist",
)
@declare(RoutePolicy(auth=True))
def add_to_worklist(
    submission: WorklistSubmission, store: WorklistDep, settings: SettingsDep, response: Response
) -> WorklistEntry:
    """What the PACS worker calls after analysing a series: its UIDs, the scanner, when it
    arrived, and the `POST /predict/study` answer as is. The same study and series again (a
    retry, a re-analysis) updates the entry instead of adding one: 200 instead of 201."""
    identity = SeriesIdentity(
        study_uid=submission.study_uid,
        series_uid=submission.series_uid,
        manufacturer=submission.manufacturer,
        manufacturer_model=submission.manufacturer_model,
    )
    entry = study_entry(
        submission.study,
        source="pacs",
        identity=identity,
        settings=settings,
        arrived_at=submission.arrived_at,
        identifiers=submission.identifiers,
    )
    row, created = store.record(entry)
    if not created:
        response.status_code = status.HTTP_200_OK
    return entry_out(row)


@router.get("/worklist", response_model=WorklistPage, summary="The worklist, flagged first")
@declare(RoutePolicy(auth=True))
def list_worklist(
    store: WorklistDep,
    status_: Annotated[
        list[WorklistStatus] | None,
        Query(alias="status", description="Only these statuses (repeat the parameter)."),
    ] = None,
    verdict: Annotated[
        list[Result] | None, Query(description="Only these verdicts (repeat the parameter).")
    ] = None,
    arrived_from: Annotated[
        UtcDatetime | None, Query(description="Arrived at or after (ISO 8601 with zone).")
    ] = None,
    arrived_to: Annotated[
        UtcDatetime | None, Query(description="Arrived before (ISO 8601 with zone).")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
) -> WorklistPage:
    """Flagged studies (`Potentially Fracture`) first, then by arrival, the longest waiting
    first; filtered and paginated (`total` counts every page)."""
    filters = Filters(
        statuses=tuple(item.value for item in status_ or ()),
        verdicts=tuple(verdict or ()),
        arrived_from=arrived_from,
        arrived_to=arrived_to,
    )
    rows, total = store.page(filters, offset, limit)
    return WorklistPage(
        items=[entry_out(row) for row in rows], total=total, offset=offset, limit=limit
    )


@router.get(
    "/worklist/{study_id}",
    response_model=WorklistEntry,
    responses=NOT_FOUND,
    summary="One worklist study (marks it opened)",
)
@declare(RoutePolicy(auth=True))
def open_study(study_id: StudyId, store: WorklistDep) -> WorklistEntry:
    """The study with every read; a `new` study becomes `opened`."""
    row = store.open(study_id)
    if row is None:
        raise _not_found(study_id)
    return entry_out(row)


@router.get(
    "/worklist/{study_id}/top-slices/{rank}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The image, as PNG."},
        404: error_response(
            "No such entry or top slice; the entry did not come from the PACS; no PACS is "
            "configured (WORKLIST_PACS_URL); or the PACS holds no such image.",
            "no PACS is configured for the worklist's images (WORKLIST_PACS_URL)",
        ),
        502: error_response(
            "The PACS did not answer, or answered with an error or an unreadable image.",
            "the PACS did not answer for slice 1.2.3",
        ),
    },
    summary="A PACS study's top slice, or its heatmap, from the PACS",
)
@declare(RoutePolicy(auth=True))
def top_slice_image(
    study_id: StudyId,
    rank: Annotated[int, Path(ge=1, le=64, description="The top slice's rank (1: highest).")],
    store: WorklistDep,
    pacs: PacsImagesDep,
    core: CoreDep,
    layer: Annotated[
        TopSliceLayer, Query(description="`slice` (the default) or its `heatmap`.")
    ] = TopSliceLayer.slice,
) -> Response:
    """The entry's `rank`-th top slice as the viewer shows it, read from the PACS the worker
    analysed it in (DICOMweb, WORKLIST_PACS_URL): `slice`, the CT slice through the model's
    window (WADO-RS), or `heatmap`, the Secondary Capture heatmap the PACS worker stored for
    it. The worklist keeps no image; the entry is not marked opened."""
    row = store.get(study_id)
    if row is None:
        raise _not_found(study_id)
    if pacs is None:
        raise HTTPException(
            status_code=404,
            detail="no PACS is configured for the worklist's images (WORKLIST_PACS_URL)",
        )
    if row.source != "pacs" or not row.study_uid or not row.series_uid:
        raise HTTPException(
            status_code=404, detail=f"worklist entry {study_id} did not come from the PACS"
        )
    if rank > len(row.top_slices):
        raise HTTPException(
            status_code=404,
            detail=f"worklist entry {study_id} has {len(row.top_slices)} top slice(s)",
        )
    try:
        instance_uid = instance_uid_of(str(row.top_slices[rank - 1]["name"]))
        if layer == TopSliceLayer.slice:
            image = pacs.slice_png(row.study_uid, row.series_uid, instance_uid, core.decode)
        else:
            image = pacs.heatmap_png(row.study_uid, instance_uid)
    except PacsImageError as exc:
        raise HTTPException(status_code=exc.status_code, detail=exc.detail) from exc
    return Response(content=image, media_type="image/png")


@router.post(
    "/worklist/{study_id}/review",
    response_model=WorklistEntry,
    status_code=status.HTTP_201_CREATED,
    responses={
        **NOT_FOUND,
        403: error_response(
            "Tokens are configured and this one lacks the `reader` role.",
            "this needs a token with the reader role",
        ),
    },
    summary="Record a radiologist's read",
)
@declare(RoutePolicy(auth=True, role=READER_ROLE))
def review_study(
    study_id: StudyId, read: ReviewRequest, store: WorklistDep, reader: TokenIdDep
) -> WorklistEntry:
    """Fracture yes/no, the fractured levels (C1-C7, optional), a note; the reader (the
    token's id) and the time are recorded. A second read is added to the history (the
    latest counts for monitoring); none is overwritten. The study becomes `reviewed`."""
    row = store.review(
        study_id,
        NewReview(fracture=read.fracture, levels=list(read.levels), note=read.note, reader=reader),
    )
    if row is None:
        raise _not_found(study_id)
    return entry_out(row)
