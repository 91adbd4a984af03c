"""The analysis of one uploaded series, shared by ``POST /predict/study`` (the answer as
JSON) and ``POST /report`` (the same answer as a PDF).

Ordering, the one-series check, scoring, top-k aggregation and the verdict are the
inference core's (``InferenceCore.study``, the same call as ``python -m ml_model.predict
--study``); this unpacks the upload (``services/study_upload.py``) and shapes the answer.
"""

from __future__ import annotations

import time

from fastapi import UploadFile

from backend.app.api.responses import model_info
from backend.app.api.worklist import study_entry, upload_identity
from backend.app.core.config import Settings
from backend.app.core.metrics import AppMetrics
from backend.app.schemas import (
    OperatingPoint,
    OutsideReason,
    StudyFileError,
    StudyResponse,
    StudySlice,
    StudySummary,
    StudyTopSlice,
    VertebraProbabilities,
)
from backend.app.services.imaging import heatmap_base64
from backend.app.services.study_upload import collect_uploads
from backend.app.worklist.store import WorklistStore
from ml_model.imaging.dicom import SeriesIdentity
from ml_model.imaging.formats import image_format_names
from ml_model.inference.core import InferenceCore

STUDY_FILES_DESCRIPTION = (
    "The slices of one series: DICOM files (ordered along the slice normal by "
    "ImagePositionPatient, else by InstanceNumber; an enhanced multi-frame CT is read frame "
    f"by frame) or {image_format_names()} files with the slice number in the name, e.g. "
    "`CSFD (12).png`; repeat the field. Or a single `.zip` of them (folders allowed)."
)


def analyse_study(
    files: list[UploadFile],
    core: InferenceCore,
    settings: Settings,
    metrics: AppMetrics,
    operating_point: OperatingPoint,
    explain: bool,
    worklist: WorklistStore | None = None,
    identifiers: bool = False,
) -> tuple[StudyResponse, SeriesIdentity | None]:
    """One series -> one :class:`StudyResponse` (with ``explain``, Grad-CAM heatmaps of the
    top slices); counts the study's result. With ``worklist``, the study is saved to it
    (its DICOM UIDs and scanner, when the slices are DICOM) and ``worklist_id`` set. With
    ``identifiers``, also the exam identity of the series' first slice (for the report; never
    part of the JSON answer)."""
    start = time.perf_counter()
    collected = collect_uploads(files, settings)
    study = core.study(collected.slices, operating_point.value)
    metrics.record_study(study.result, operating_point.value)

    reasons = study.outside_reasons or [""] * len(study.names)
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
    for row, why in zip(slices, reasons, strict=True):  # set only where there is one
        if why:
            row.outside_reason = OutsideReason(why)
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
    identity = upload_identity(study.sources) if identifiers or worklist is not None else None
    response = StudyResponse(
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
    if study.outside_reason:  # only with "CT outside the model's range" (exclude_unset)
        response.outside_reason = OutsideReason(study.outside_reason)
    if worklist is not None:
        summary = StudySummary.model_validate(response.model_dump())
        entry = study_entry(summary, source="upload", identity=identity, settings=settings)
        response.worklist_id = worklist.record(entry)[0].id
    return response, identity if identifiers else None
