"""Liveness and readiness probes."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter, HTTPException

from backend.app.api.deps import CoreDep
from backend.app.schemas import ErrorResponse, HealthResponse, ModelInfo, ReadyResponse

router = APIRouter(tags=["ops"])

MODEL_SERVER_NOT_READY_DETAIL = "the model server (TF Serving) is not answering yet"


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
async def health() -> HealthResponse:
    return HealthResponse()


@router.get(
    "/ready",
    response_model=ReadyResponse,
    responses={
        503: {
            "model": ErrorResponse,
            "description": "Model not loaded/warmed up yet, or TF Serving not answering.",
        }
    },
    summary="Readiness: the model is loaded and has run one warm-up inference",
)
async def ready(core: CoreDep) -> ReadyResponse:
    # INFERENCE_BACKEND=tfserving: not ready until TF Serving reports the model AVAILABLE.
    if not await anyio.to_thread.run_sync(core.is_ready):
        raise HTTPException(status_code=503, detail=MODEL_SERVER_NOT_READY_DETAIL)
    return ReadyResponse(model=ModelInfo(name=core.name, version=core.version))
