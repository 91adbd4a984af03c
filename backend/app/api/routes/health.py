"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.api.deps import InferenceDep
from backend.app.schemas import ErrorResponse, HealthResponse, ModelInfo, ReadyResponse

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
async def health() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={503: {"model": ErrorResponse, "description": "Model not loaded/warmed up yet."}},
    summary="Readiness: the model is loaded and has run one warm-up inference",
)
async def ready(service: InferenceDep) -> ReadyResponse:
    return ReadyResponse(model=ModelInfo(name=service.name, version=service.version))
