"""POST /predict/study: one CT series (many slices, or one zip of them) -> one answer.

Ordering, the one-series check, scoring, top-k aggregation and the verdict are the
inference core's (``InferenceCore.study``, the same call as ``python -m ml_model.predict
--study``); this route unpacks the upload (``services/study_upload.py``) and shapes the
answer.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, File, Query, UploadFile

from backend.app.api.deps import CoreDep, MetricsDep, SettingsDep
from backend.app.api.responses import UPLOAD_ERRORS, error_response
from backend.app.api.routes.predict import OperatingPointQuery, model_info
from backend.app.schemas import (
    OperatingPoint,
    StudyFileError,
    StudyResponse,
    StudySlice,
    StudyTopSlice,
    VertebraProbabilities,
)
from backend.app.services.imaging import heatmap_base64
from backend.app.services.study_upload import collect_uploads

router = APIRouter(tags=["predict"])


STUDY_FILES_DESCRIPTION = (
    "The slices of one series: DICOM files (ordered along the slice normal by "
    "ImagePositionPatient, else by InstanceNumber; an enhanced multi-frame CT is read frame "
    "by frame) or PNG/JPEG files with the slice number in the name, e.g. `CSFD (12).png`; "
    "repeat the field. Or a single `.zip` of them (folders allowed)."
)


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
def predict_study_route(
    files: Annotated[list[UploadFile], File(description=STUDY_FILES_DESCRIPTION)],
    core: CoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
    explain: Annotated[
        bool,
        Query(description="Add a Grad-CAM `heatmap_png_base64` to each of the `top_slices`."),
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
    start = time.perf_counter()
    collected = collect_uploads(files, settings)
    study = core.study(collected.slices, operating_point.value)
    metrics.record_study(study.result, operating_point.value)

    slices = [
        StudySlice(
            name=name,
            position=position + 0.0,  # no -0.0
            prediction=float(probability),
            in_distribution=bool(inside),
        )
        for name, position, probability, inside in zip(
            study.names, study.positions, study.probabilities, study.in_distribution, strict=True
        )
    ]
    top_slices = []
    for index in study.top_indices:
        extra = {}
        if explain:
            source = study.sources[index]
            gray = core.decode(source.data, source.frame)
            if gray.size <= settings.max_explain_pixels:
                # The input the slice was scored with (a 2.5D bundle: with its neighbours).
                image = core.study_model_input(study, index, gray)
                extra["heatmap_png_base64"] = heatmap_base64(
                    gray, core.gradcam(image), settings.heatmap_max_side
                )
        top_slices.append(
            StudyTopSlice(
                index=index,
                name=study.names[index],
                position=study.positions[index] + 0.0,
                prediction=float(study.probabilities[index]),
                **extra,
            )
        )
    errors = [StudyFileError(name=name, error=error) for name, error in collected.errors]
    errors += [StudyFileError(name=name, error=error) for name, error in study.errors]
    return StudyResponse(
        result=study.result,
        prediction=study.probability,
        threshold=study.threshold,
        operating_point=operating_point,
        aggregation=study.aggregation,
        slice_count=len(slices),
        slices=slices,
        top_slices=top_slices,
        errors=errors,
        position_unit=study.position_unit,
        warnings=study.warnings,
        # Set even when None: a slice bundle answers `"vertebrae": null` (exclude_unset).
        vertebrae=None if study.vertebrae is None else VertebraProbabilities(**study.vertebrae),
        model=model_info(core),
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
    )
