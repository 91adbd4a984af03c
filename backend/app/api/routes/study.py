"""POST /predict/study: one CT series (many slices, or one zip of them) -> one answer.

The analysis is :func:`backend.app.api.studies.analyse_study` (shared with ``/report``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from backend.app.api.deps import CoreDep, MetricsDep, SettingsDep, WorklistDep
from backend.app.api.responses import UPLOAD_ERRORS, error_response
from backend.app.api.routes.predict import OperatingPointQuery
from backend.app.api.studies import STUDY_FILES_DESCRIPTION, analyse_study
from backend.app.core.policy import RoutePolicy, Upload, declare
from backend.app.schemas import OperatingPoint, StudyResponse

router = APIRouter(tags=["predict"])


@router.post(
    "/predict/study",
    response_model=StudyResponse,
    response_model_exclude_unset=True,
    responses={
        400: error_response(
            "Not one orderable series (mixed series, DICOM mixed with PNG, no slice numbers, "
            "nothing decodable), or a zip member with path traversal, an absolute path or a "
            "symlink.",
            "the files come from 2 different series (SeriesInstanceUID); upload one series at "
            "a time",
        ),
        413: error_response(
            "Too many slices or zip entries, request over MAX_STUDY_MB, zip over its "
            "uncompressed-size or compression-ratio limit.",
            "1200 files sent; at most 1000 slices per study",
        ),
        503: UPLOAD_ERRORS[503],
    },
    summary="Triage a whole CT series",
)
@declare(RoutePolicy(auth=True, upload=Upload.study, study_slot=True))
def predict_study_route(
    files: Annotated[list[UploadFile], File(description=STUDY_FILES_DESCRIPTION)],
    core: CoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    worklist: WorklistDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
    explain: Annotated[
        bool,
        Query(description="Add a Grad-CAM `heatmap_png_base64` to each of the `top_slices`."),
    ] = False,
    save: Annotated[
        bool,
        Query(
            description="Also save the study to the worklist (`worklist_id` in the answer; "
            "DICOM slices: with their study and series UIDs and scanner)."
        ),
    ] = False,
) -> StudyResponse:
    """Orders the slices head to foot, scores each one, and aggregates the in-distribution
    slices into a study score compared with the model card's study threshold.

    Slices the CT gate refuses are listed with `in_distribution` false
    and left out of the score; if none is left, `result` is `Not a CT slice`. Files that
    cannot be decoded are listed in `errors` and do not fail the study. Positions are in
    `position_unit` (`mm` for DICOM geometry); gaps, duplicate positions and mixed
    orientations are listed in `warnings`.

    A study bundle (RSNA 2022, model card `study.head`) scores each slice with its
    neighbours as channels (2.5D), and its study head reads every slice's features head to
    foot: `prediction` is then its P(fracture), and `vertebrae` holds P(fracture) of each of
    C1-C7 (null for a slice bundle)."""
    saved_to = worklist if save else None
    return analyse_study(files, core, settings, metrics, operating_point, explain, saved_to)[0]
