"""The one way domain errors become HTTP responses.

Routes raise what the domain raises (an undecodable image, a study that is not one series,
an upload over a limit, a request over its memory budget or a busy server, a model server
that cannot answer); the handlers registered here
turn each into ``{"detail": ...}`` with its status and count it. The batch route, which
answers per file, asks :func:`status_for` for the same mapping.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
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


def register_error_handlers(app: FastAPI) -> None:
    for kind in (
        ImageDecodeError,
        StudyError,
        UploadProblem,
        ModelUnavailableError,
        AdmissionError,
    ):
        app.add_exception_handler(kind, domain_error_handler)
