"""Dependencies as ``Annotated`` aliases: routes declare what they need, app state provides it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.responses import JSONResponse

from backend.app.core.config import Settings
from backend.app.core.metrics import AppMetrics
from backend.app.services.inference import InferenceService, InferenceUnavailableError

NOT_READY_DETAIL = "the model is not loaded yet; retry when GET /ready answers 200"


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_inference(request: Request) -> InferenceService:
    """The loaded, warmed-up model; 503 until the lifespan has finished loading it."""
    service: InferenceService | None = request.app.state.inference
    if service is None or not request.app.state.ready:
        raise HTTPException(status_code=503, detail=NOT_READY_DETAIL)
    return service


async def inference_unavailable_handler(request: Request, exc: Exception) -> JSONResponse:
    """A model that cannot answer (TF Serving down, shutting down): 503/502, never 500."""
    assert isinstance(exc, InferenceUnavailableError)
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def get_metrics(request: Request) -> AppMetrics:
    metrics: AppMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
InferenceDep = Annotated[InferenceService, Depends(get_inference)]
MetricsDep = Annotated[AppMetrics, Depends(get_metrics)]
