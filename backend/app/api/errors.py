"""The one way domain errors become HTTP responses.

Routes raise what the domain raises (an undecodable image, a study that is not one series,
an upload over a limit, a request over its memory budget or a busy server, a model server
that cannot answer); the handlers registered here
turn each into ``{"detail": ...}`` with its status and count it. The batch route, which
answers per file, asks :func:`status_for` for the same mapping.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from backend.app.core.admission import AdmissionError
from backend.app.core.metrics import AppMetrics
from backend.app.services.imaging import UploadProblem
from ml_model.imaging.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from ml_model.inference.forward import ModelUnavailableError
from ml_model.inference.study import StudyError

DomainError = ImageDecodeError | StudyError | UploadProblem | ModelUnavailableError | AdmissionError


def status_for(exc: Exception) -> int:
    """The HTTP status of a domain error."""
    if isinstance(exc, UploadProblem | ModelUnavailableError | AdmissionError):
        return exc.status_code
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageError):
        return 415
    return 400  # ImageDecodeError, StudyError


def detail_of(exc: Exception) -> str:
    if isinstance(exc, UploadProblem | ModelUnavailableError | AdmissionError):
        return exc.detail
    return str(exc)


async def domain_error_handler(request: Request, exc: Exception) -> JSONResponse:
    status = status_for(exc)
    metrics: AppMetrics = request.app.state.metrics
    headers = None
    if isinstance(exc, AdmissionError):  # memory budget: 413 over the request's, 503 busy
        metrics.record_refusal("request_memory" if status == 413 else "process_memory")
        headers = exc.headers
    elif not isinstance(exc, ModelUnavailableError):  # the client's input, not our model
        metrics.record_upload_error(status)
    return JSONResponse({"detail": detail_of(exc)}, status_code=status, headers=headers)


def _encodable(value: Any) -> Any:
    """``value`` with every text made UTF-8 encodable (a lone surrogate, sent as a JSON
    escape, shown as ``\\udXXX``), so that echoing a client's input cannot fail the answer."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list):
        return [_encodable(item) for item in value]
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item) for key, item in value.items()}
    return value


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own 422 answer (``{"detail": [errors]}``), its echoed input made encodable."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    return JSONResponse(status_code=422, content={"detail": _encodable(jsonable_encoder(errors))})


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    for kind in (
        ImageDecodeError,
        StudyError,
        UploadProblem,
        ModelUnavailableError,
        AdmissionError,
    ):
        app.add_exception_handler(kind, domain_error_handler)
