"""GET /metrics: the app's Prometheus registry (``core/metrics.py``), text exposition format."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from backend.app.api.deps import MetricsDep
from backend.app.core.policy import RoutePolicy, declare

router = APIRouter(tags=["ops"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_description="Prometheus text exposition format.",
    responses={200: {"content": {"text/plain": {}}}},
)
@declare(RoutePolicy(auth=True))  # the traffic and the results it counts are not public
def metrics(app_metrics: MetricsDep) -> Response:
    """Endpoint that serves Prometheus metrics."""
    return Response(content=generate_latest(app_metrics.registry), media_type=CONTENT_TYPE_LATEST)
