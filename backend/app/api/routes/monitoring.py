"""GET /monitoring: the product's live performance against the radiologists' reads
(``worklist/monitoring.py``; the same figures are gauges on ``/metrics``)."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.api.deps import WorklistDep
from backend.app.api.worklist import monitoring_out
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import MonitoringResponse
from backend.app.worklist.monitoring import monitoring

router = APIRouter(tags=["worklist"])


@router.get(
    "/monitoring",
    response_model=MonitoringResponse,
    summary="Sensitivity, specificity, PPV, NPV against the reads",
)
@declare(RoutePolicy(auth=True))
def monitoring_route(store: WorklistDep) -> MonitoringResponse:
    """Over the reviewed studies (each one's latest read is the truth; `Potentially
    Fracture` is a positive call): sensitivity, specificity, PPV and NPV with Wilson 95 %
    intervals, overall, by model version, by scanner (manufacturer / model) and by ISO week
    of arrival. `Not a CT slice` studies made no call: counted in `no_call` only."""
    return monitoring_out(monitoring(store.reviewed()))
