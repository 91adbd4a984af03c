"""POST /predict and POST /predict/batch.

Sync ``def`` routes: decoding and inference are CPU-bound, so FastAPI runs them in
its threadpool and the event loop stays free. Uploads arrive fully in memory
(see ``main.create_app``: multipart parts are never spooled to disk).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile

from backend.app.api.deps import InferenceDep, MetricsDep, SettingsDep
from backend.app.core.metrics import AppMetrics
from backend.app.core.security import one_part_named
from backend.app.schemas import (
    BatchItemError,
    BatchItemPrediction,
    BatchResponse,
    ErrorResponse,
    ModelInfo,
    OperatingPoint,
    PredictionResponse,
)
from backend.app.services.batching import incoming
from backend.app.services.imaging import (
    PreparedImage,
    UploadProblem,
    heatmap_base64,
    prepare,
    read_upload,
)
from backend.app.services.inference import (
    InferenceService,
    ood_verdict,
    operating_threshold,
    triage_result,
)
from ml_model.predictor import Prediction

router = APIRouter(tags=["predict"])


def _error(description: str, example: str) -> dict[str, Any]:
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }


UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Empty, truncated or undecodable file.", "the file is empty"),
    413: _error(
        "Request or file over the size limit, or image over the pixel limit.",
        "the upload is larger than the limit of 20 MiB per file",
    ),
    415: _error("Not an image or DICOM we accept.", "the file is not a recognised image or DICOM"),
    503: _error(
        "The model is not loaded yet, or the model server is unreachable.",
        "the model is not loaded yet",
    ),
}

OperatingPointQuery = Annotated[
    OperatingPoint,
    Query(description="`sensitive` (default) or `specific`: which model-card threshold."),
]
FILE_DESCRIPTION = (
    "PNG, JPEG, BMP, TIFF (8/16-bit gray, RGB, RGBA, palette) or DICOM (.dcm, "
    "bone-windowed from Hounsfield units)."
)


def _model_info(service: InferenceService) -> ModelInfo:
    return ModelInfo(name=service.name, version=service.version)


def _verdict(
    prediction: Prediction,
    row: int,
    threshold: float,
    operating_point: OperatingPoint,
    metrics: AppMetrics,
) -> dict[str, Any]:
    """The response fields for one image of a forward pass; counts the result."""
    probability = float(prediction.probabilities[row])
    in_distribution, distance = ood_verdict(prediction, row)
    result = triage_result(probability, threshold, in_distribution)
    metrics.record_prediction(result, operating_point.value)
    return {
        "result": result,
        "prediction": probability,
        "threshold": threshold,
        "operating_point": operating_point,
        "in_distribution": in_distribution,
        "ood_distance": distance,
    }


def _upload_problem(metrics: AppMetrics, problem: UploadProblem) -> HTTPException:
    metrics.record_upload_error(problem.status_code)
    return HTTPException(status_code=problem.status_code, detail=problem.detail)


@router.post(
    "/predict",
    dependencies=[Depends(one_part_named("file"))],  # two files in `file`: 400, not one dropped
    response_model=PredictionResponse,
    response_model_exclude_unset=True,
    responses=UPLOAD_ERRORS,
    summary="Triage one CT slice",
)
def predict(
    file: Annotated[UploadFile, File(description=FILE_DESCRIPTION)],
    service: InferenceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
    explain: Annotated[
        bool, Query(description="Add `heatmap_png_base64`, a Grad-CAM overlay of the input.")
    ] = False,
) -> PredictionResponse:
    """Probability of fracture for one image, its triage result at the chosen operating
    point and, with `explain=true`, a Grad-CAM heatmap over the input.

    An input the out-of-distribution guard refuses (a photo, a chest X-ray...) gets
    `result` `Not a CT slice` and `in_distribution` false: no fracture call is made;
    `prediction` is still reported, for transparency only."""
    start = time.perf_counter()
    # Announced to the micro-batcher while decoding: a batch being formed waits for it.
    with incoming(service):
        try:
            data = read_upload(file.file, settings.max_upload_bytes)
            image = prepare(data, settings, service.img_size)
            if explain and image.gray.size > settings.max_explain_pixels:
                height, width = image.gray.shape
                raise UploadProblem(
                    413,
                    f"the image is {width}x{height} pixels; explain=true draws heatmaps for "
                    f"images up to {settings.max_explain_pixels:,} pixels",
                )
        except UploadProblem as problem:
            raise _upload_problem(metrics, problem) from problem
        prediction = service.run(image.array[np.newaxis])
    threshold = operating_threshold(service, operating_point.value, settings.threshold)
    extra = _verdict(prediction, 0, threshold, operating_point, metrics)
    if explain:
        extra["heatmap_png_base64"] = heatmap_base64(image.gray, service.gradcam(image.array))
    return PredictionResponse(
        model=_model_info(service),
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
        **extra,
    )


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    responses={
        413: _error(
            "Too many files, or the request body is over the batch limit.",
            "40 files sent; at most 32 files per batch",
        ),
        503: UPLOAD_ERRORS[503],
    },
    summary="Triage several CT slices in one call",
)
def predict_batch(
    files: Annotated[list[UploadFile], File(description=FILE_DESCRIPTION + " Repeat the field.")],
    service: InferenceDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
) -> BatchResponse:
    """One result per file, in upload order, from one forward pass. A file that cannot be
    read gets an entry with `error` and `status_code` instead of failing the batch; a file
    the out-of-distribution guard refuses gets `result` `Not a CT slice`."""
    start = time.perf_counter()
    if len(files) > settings.max_batch_files:
        raise HTTPException(
            status_code=413,
            detail=f"{len(files)} files sent; at most {settings.max_batch_files} files per batch",
        )
    results: list[BatchItemPrediction | BatchItemError | None] = [None] * len(files)
    prepared: list[tuple[int, PreparedImage]] = []
    for index, upload in enumerate(files):
        filename = upload.filename or ""
        try:
            data = read_upload(upload.file, settings.max_upload_bytes)
            prepared.append((index, prepare(data, settings, service.img_size)))
        except UploadProblem as problem:
            metrics.record_upload_error(problem.status_code)
            results[index] = BatchItemError(
                filename=filename, error=problem.detail, status_code=problem.status_code
            )
    threshold = operating_threshold(service, operating_point.value, settings.threshold)
    model = _model_info(service)
    if prepared:
        prediction = service.run(np.stack([image.array for _, image in prepared]))
        for row, (index, _) in enumerate(prepared):
            results[index] = BatchItemPrediction(
                filename=files[index].filename or "",
                model=model,
                **_verdict(prediction, row, threshold, operating_point, metrics),
            )
    return BatchResponse(
        results=[item for item in results if item is not None],
        model=model,
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
    )
