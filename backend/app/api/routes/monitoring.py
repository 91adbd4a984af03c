"""GET /monitoring: the product's live performance against the radiologists' reads
(``worklist/monitoring.py``) and the drift of what it sees (``worklist/drift.py``); the same
figures are gauges on ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter

from backend.app.api.deps import LoadedCardDep, SettingsDep, WorklistDep
from backend.app.api.worklist import monitoring_out
from backend.app.core.policy import RoutePolicy, declare
from backend.app.schemas import MonitoringResponse
from backend.app.services.worklist import drift_report
from backend.app.worklist.monitoring import monitoring

router = APIRouter(tags=["worklist"])


@router.get(
    "/monitoring",
    response_model=MonitoringResponse,
    summary="Sensitivity, specificity, PPV, NPV against the reads; score and refusal drift",
)
@declare(RoutePolicy(auth=True))
def monitoring_route(
    store: WorklistDep, card: LoadedCardDep, settings: SettingsDep
) -> MonitoringResponse:
    """Over the reviewed studies (each one's latest read is the truth; `Potentially
    Fracture` is a positive call): sensitivity, specificity, PPV and NPV with Wilson 95 %
    intervals, overall, by model version, by scanner (manufacturer / model) and by ISO week
    of arrival. `Not a CT slice` studies made no call: counted in `no_call` only.

    `drift`, over every analysed study (reviewed or not): the population stability index
    (PSI) of the loaded model's study scores against its card's out-of-fold score
    distribution (`study.score_histogram`; null with the reason when the card has none),
    per ISO week and over the last MONITORING_DRIFT_DAYS days, flagged above
    MONITORING_PSI_WARN; and per week the share of `Not a CT slice` and `CT outside the
    model's range` answers with Wilson 95 % intervals, flagged above MONITORING_NOT_CT_WARN.

    `pipeline_failures`: the series the PACS pipeline gave up on (and has not analysed
    since), by failure class."""
    return monitoring_out(
        monitoring(store.reviewed()), drift_report(store, card, settings), store.failure_counts()
    )
