"""POST /predict/study: one CT series (many slices, or one zip of them) -> one answer.

Ordering, the one-series check, scoring and top-k aggregation are ``ml_model.study``'s
(the same code as ``python -m ml_model.predict --study``); this route unpacks the
upload (``services/study_upload.py``) and shapes the answer.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, File, HTTPException, Query, UploadFile

from backend.app.api.deps import InferenceDep, MetricsDep, SettingsDep
from backend.app.api.routes.predict import UPLOAD_ERRORS, OperatingPointQuery, _error
from backend.app.schemas import (
    ModelInfo,
    OperatingPoint,
    StudyFileError,
    StudyResponse,
    StudySlice,
    StudyTopSlice,
)
from backend.app.services.imaging import UploadProblem, heatmap_base64, prepare
from backend.app.services.inference import InferenceService, triage_result
from backend.app.services.study_upload import collect_study
from ml_model.predictor import Prediction
from ml_model.study import DEFAULT_TOP_K, StudyError, predict_study, threshold_for

router = APIRouter(tags=["predict"])


class _GuardWatch:
    """The service as ``predict_study`` sees it, noting whether an OOD guard ran."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service
        self.img_size = service.img_size
        self.guarded = True

    def run(self, images: np.ndarray) -> Prediction:
        prediction = self.service.run(images)
        if prediction.ood_distances is None:
            self.guarded = False
        return prediction


STUDY_FILES_DESCRIPTION = (
    "The slices of one series: DICOM files (ordered by ImagePositionPatient, else "
    "InstanceNumber) or PNG/JPEG files with the slice number in the name, e.g. "
    "`CSFD (12).png`; repeat the field. Or a single `.zip` of them (folders allowed)."
)


@router.post(
    "/predict/study",
    response_model=StudyResponse,
    response_model_exclude_unset=True,
    responses={
        400: _error(
            "Not one orderable series (mixed series, DICOM mixed with PNG, no slice numbers, "
            "nothing decodable), or a zip member with path traversal, an absolute path or a "
            "symlink.",
            "the files come from 2 different series (SeriesInstanceUID); upload one series at "
            "a time",
        ),
        413: _error(
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
    service: InferenceDep,
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

    Slices the out-of-distribution guard refuses are listed with `in_distribution` false
    and left out of the score; if none is left, `result` is `Not a CT slice`. Files that
    cannot be decoded are listed in `errors` and do not fail the study."""
    start = time.perf_counter()
    single = len(files) == 1
    limit = settings.max_study_bytes if single else settings.max_upload_bytes
    try:
        uploads = []
        for index, upload in enumerate(files):
            data = upload.file.read(limit + 1)
            if single and len(data) > limit:
                raise UploadProblem(
                    413,
                    f"the study upload is larger than the limit of {settings.max_study_mb:g} MiB",
                )
            uploads.append((upload.filename or f"file{index + 1}", data))
        collected = collect_study(uploads, settings)
    except UploadProblem as problem:
        metrics.record_upload_error(problem.status_code)
        raise HTTPException(status_code=problem.status_code, detail=problem.detail) from problem

    study_card = service.card.get("study", {})
    top_k = int(study_card.get("top_k", DEFAULT_TOP_K))
    aggregation = str(study_card.get("aggregation", f"top{top_k}_mean"))
    model = _GuardWatch(service)
    try:
        study = predict_study(
            model, collected.slices, top_k, settings.window_level, settings.window_width
        )
    except StudyError as exc:
        metrics.record_upload_error(400)
        raise HTTPException(status_code=400, detail=str(exc)) from exc

    threshold = threshold_for(
        len(study.names),
        top_k,
        service.threshold(operating_point.value),
        service.study_threshold(operating_point.value),
    )
    any_inside = bool(study.top_indices)
    result = triage_result(study.study_probability, threshold, any_inside)
    metrics.record_study(result, operating_point.value)

    in_distribution = [bool(value) if model.guarded else None for value in study.in_distribution]
    slices = [
        StudySlice(
            name=name,
            position=position + 0.0,  # no -0.0
            prediction=float(probability),
            in_distribution=inside,
        )
        for name, position, probability, inside in zip(
            study.names, study.positions, study.probabilities, in_distribution, strict=True
        )
    ]
    data_by_name = {item.name: item.data for item in collected.slices}
    top_slices = []
    for index in study.top_indices:
        extra = {}
        if explain:
            image = prepare(data_by_name[study.names[index]], settings, service.img_size)
            if image.gray.size <= settings.max_explain_pixels:
                extra["heatmap_png_base64"] = heatmap_base64(
                    image.gray, service.gradcam(image.array)
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
        result=result,
        prediction=study.study_probability,
        threshold=threshold,
        operating_point=operating_point,
        aggregation=aggregation,
        slice_count=len(slices),
        slices=slices,
        top_slices=top_slices,
        errors=errors,
        model=ModelInfo(name=service.name, version=service.version),
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
    )
