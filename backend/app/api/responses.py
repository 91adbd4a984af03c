"""Error responses as OpenAPI documents them, and the model's name and version: shared by
the routes."""

from __future__ import annotations

from typing import Any

from backend.app.schemas import ErrorResponse, ModelInfo
from ml_model.inference.core import InferenceCore


def model_info(core: InferenceCore) -> ModelInfo:
    """The ``model`` field of an answer: the loaded bundle's name and version."""
    return ModelInfo(name=core.bundle.card.name, version=core.bundle.card.version)


def error_response(description: str, example: str) -> dict[str, Any]:
    """One documented error status: its meaning and an example body."""
    return {
        "model": ErrorResponse,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }


UPLOAD_ERRORS: dict[int | str, dict[str, Any]] = {
    400: error_response("Empty, truncated or undecodable file.", "the file is empty"),
    413: error_response(
        "Request or file over the size limit, or image over the pixel limit.",
        "the upload is larger than the limit of 20 MiB per file",
    ),
    415: error_response(
        "Not an image or DICOM we accept.", "the file is not a recognised image or DICOM"
    ),
    503: error_response(
        "The model is not loaded yet, or the model server is unreachable.",
        "the model is not loaded yet",
    ),
}
