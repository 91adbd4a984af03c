"""Liveness and readiness probes."""

from __future__ import annotations

import anyio
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response

from backend.app.api.deps import (
    NOT_READY_RETRY_AFTER_S,
    CoreDep,
    SettingsDep,
    get_core,
    get_settings,
)
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import ErrorResponse, HealthResponse, ModelInfo, ReadyResponse

router = APIRouter(tags=["ops"])

MODEL_SERVER_NOT_READY_DETAIL = "the model server (TF Serving) is not answering yet"
# Probes stay open: orchestrators and load balancers carry no token.
PROBE = RoutePolicy(auth=False)


@router.get("/health", response_model=HealthResponse, summary="Liveness: the process answers")
@declare(PROBE)
async def health() -> HealthResponse:
    return HealthResponse()


@router.head("/health", include_in_schema=False)
@declare(PROBE)
async def health_head() -> Response:
    """HEAD /health: 200, no body (load balancers' and orchestrators' probes)."""
    return Response(status_code=200)


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
@declare(PROBE)
async def ready(core: CoreDep, settings: SettingsDep) -> ReadyResponse:
    # INFERENCE_BACKEND=tfserving: not ready until TF Serving reports the model AVAILABLE (an
    # HTTP call: in a thread of its own, never queued behind uploads being decoded). An
    # in-process model answers at once: no thread, so a busy server still answers in time.
    if settings.inference_backend != "tfserving":
        is_ready = core.is_ready()
    else:
        is_ready = await anyio.to_thread.run_sync(core.is_ready, limiter=anyio.CapacityLimiter(1))
    if not is_ready:
        raise HTTPException(
            status_code=503,
            detail=MODEL_SERVER_NOT_READY_DETAIL,
            headers={"Retry-After": str(NOT_READY_RETRY_AFTER_S)},
        )
    return ReadyResponse(
        model=ModelInfo(name=core.bundle.card.name, version=core.bundle.card.version)
    )


@router.head("/ready", include_in_schema=False)
@declare(PROBE)
async def ready_head(request: Request) -> Response:
    """HEAD /ready: 200 or 503, as GET /ready, without a body."""
    try:
        await ready(await get_core(request), await get_settings(request))
    except HTTPException as exc:
        return Response(status_code=exc.status_code, headers=exc.headers)
    return Response(status_code=200)
