"""POST /predict and POST /predict/batch.

Sync ``def`` routes: decoding and inference are CPU-bound, so FastAPI runs them in
its threadpool and the event loop stays free. Uploads arrive fully in memory
(see ``main.create_app``: multipart parts are never spooled to disk).
"""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated, Any, cast

import numpy as np
from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile

from backend.app.api.deps import CoreDep, MetricsDep, SettingsDep
from backend.app.api.errors import DomainError, detail_of, status_for
from backend.app.api.responses import UPLOAD_ERRORS, error_response, model_info
from backend.app.core.metrics import AppMetrics
from backend.app.core.policy import RoutePolicy, Upload, declare
from backend.app.core.security import one_part_named
from backend.app.schemas import (
    BatchItemError,
    BatchItemPrediction,
    BatchResponse,
    DicomInfo,
    OperatingPoint,
    PredictionResponse,
    PreviewWindow,
)
from backend.app.services.imaging import (
    UploadProblem,
    heatmap_base64,
    preview_base64,
    read_upload,
)
from ml_model.config import BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH
from ml_model.imaging import formats
from ml_model.imaging.dicom import DicomImage
from ml_model.imaging.errors import ImageDecodeError
from ml_model.inference.core import InferenceCore, SliceVerdict

router = APIRouter(tags=["predict"])

OperatingPointQuery = Annotated[
    OperatingPoint,
    Query(description="`sensitive` (default) or `specific`: which model-card threshold."),
]
FILE_DESCRIPTION = formats.describe()  # the table of input formats, in words
# Preview windows (level, width in HU); `model` is the core's own window.
SOFT_TISSUE_WINDOW = (40.0, 400.0)
PREVIEW_WINDOWS = {
    PreviewWindow.bone: (BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH),
    PreviewWindow.soft_tissue: SOFT_TISSUE_WINDOW,
}


def dicom_fields(image: DicomImage, window: PreviewWindow, core: InferenceCore) -> dict[str, Any]:
    """The preview (the slice through the chosen window) and header facts of a DICOM."""
    level, width = PREVIEW_WINDOWS.get(window, core.bundle.window)
    facts = image.facts
    return {
        "preview_png_base64": preview_base64(image.window(level, width)),
        "dicom": DicomInfo(
            modality=facts.modality,
            series_description=facts.series_description,
            slice_location_mm=facts.slice_location_mm,
            pixel_spacing_mm=list(facts.pixel_spacing_mm) if facts.pixel_spacing_mm else None,
            slice_thickness_mm=facts.slice_thickness_mm,
            rows=facts.rows,
            columns=facts.columns,
            transfer_syntax=facts.transfer_syntax,
        ),
    }


def verdict_fields(
    verdict: SliceVerdict, operating_point: OperatingPoint, metrics: AppMetrics
) -> dict[str, Any]:
    """The response fields of one slice's verdict; counts the result."""
    metrics.record_prediction(verdict.result, operating_point.value)
    fields: dict[str, Any] = {
        "result": verdict.result,
        "prediction": verdict.probability,
        "threshold": verdict.threshold,
        "operating_point": operating_point,
        "in_distribution": verdict.in_distribution,
        "ct_gate_margin": verdict.ct_gate_margin,
    }
    if verdict.outside_reason is not None:  # only with "CT outside the model's range"
        fields["outside_reason"] = verdict.outside_reason
    return fields


@router.post(
    "/predict",
    dependencies=[Depends(one_part_named("file"))],  # two files in `file`: 400, not one dropped
    response_model=PredictionResponse,
    response_model_exclude_unset=True,
    responses=UPLOAD_ERRORS,
    summary="Triage one CT slice",
)
@declare(RoutePolicy(auth=True))
def predict(
    file: Annotated[UploadFile, File(description=FILE_DESCRIPTION)],
    core: CoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
    explain: Annotated[
        bool, Query(description="Add `heatmap_png_base64`, a Grad-CAM overlay of the input.")
    ] = False,
    preview_window: Annotated[
        PreviewWindow,
        Query(
            description="DICOM only: the window of `preview_png_base64`: `model` (the model "
            "card's, default), `bone` (400/1800 HU) or `soft_tissue` (40/400 HU). The model "
            "always sees the model card's window."
        ),
    ] = PreviewWindow.model,
) -> PredictionResponse:
    """Probability of fracture for one image, its triage result at the chosen operating
    point and, with `explain=true`, a Grad-CAM heatmap over the input. A DICOM upload also
    gets `preview_png_base64` (the slice as the server read it) and `dicom` (header facts).

    An input the CT gate refuses (a photo, a chest X-ray...) gets
    `result` `Not a CT slice` and `in_distribution` false: no fracture call is made;
    `prediction` is still reported, for transparency only."""
    start = time.perf_counter()

    def explainable(gray: np.ndarray) -> None:
        if explain and gray.size > settings.max_explain_pixels:
            height, width = gray.shape
            raise UploadProblem(
                413,
                f"the image is {width}x{height} pixels; explain=true draws heatmaps for "
                f"images up to {settings.max_explain_pixels:,} pixels",
            )

    judged = core.judge_source(
        lambda: read_upload(file.file, settings.max_upload_bytes),
        operating_point.value,
        check=explainable,
    )
    extra = verdict_fields(judged.verdict, operating_point, metrics)
    if explain:
        extra["heatmap_png_base64"] = heatmap_base64(
            judged.gray, core.gradcam(judged.image), settings.heatmap_max_side
        )
    if judged.dicom is not None:
        extra.update(dicom_fields(judged.dicom, preview_window, core))
    return PredictionResponse(
        model=model_info(core),
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
        **extra,
    )


@router.post(
    "/predict/batch",
    response_model=BatchResponse,
    response_model_exclude_unset=True,  # `outside_reason` only where it is set
    responses={
        413: error_response(
            "Too many files, or the request body is over the batch limit.",
            "40 files sent; at most 32 files per batch",
        ),
        503: UPLOAD_ERRORS[503],
    },
    summary="Triage several CT slices in one call",
)
@declare(RoutePolicy(auth=True, upload=Upload.batch))
def predict_batch(
    files: Annotated[list[UploadFile], File(description=FILE_DESCRIPTION + " Repeat the field.")],
    core: CoreDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    operating_point: OperatingPointQuery = OperatingPoint.sensitive,
) -> BatchResponse:
    """One result per file, in upload order, from one forward pass. A file that cannot be
    read gets an entry with `error` and `status_code` instead of failing the batch; a file
    the CT gate refuses gets `result` `Not a CT slice`."""
    start = time.perf_counter()
    if len(files) > settings.max_batch_files:
        raise HTTPException(
            status_code=413,
            detail=f"{len(files)} files sent; at most {settings.max_batch_files} files per batch",
        )
    results: list[BatchItemPrediction | BatchItemError | None] = [None] * len(files)
    judged = core.judge_files(
        [partial(read_upload, upload.file, settings.max_upload_bytes) for upload in files],
        operating_point.value,
        errors=(ImageDecodeError, UploadProblem),
    )
    for index, exc in judged.errors:
        problem = cast(DomainError, exc)  # one of `errors` above
        metrics.record_upload_error(status_for(problem))
        results[index] = BatchItemError(
            filename=files[index].filename or "",
            error=detail_of(problem),
            status_code=status_for(problem),
        )
    model = model_info(core)
    for index, verdict in zip(judged.indices, judged.verdicts, strict=True):
        results[index] = BatchItemPrediction(
            filename=files[index].filename or "",
            model=model,
            **verdict_fields(verdict, operating_point, metrics),
        )
    return BatchResponse(
        results=[item for item in results if item is not None],
        model=model,
        latency_ms=round((time.perf_counter() - start) * 1000.0, 2),
    )
