"""The worklist's work outside the routes: opening the store at start-up, the drift figures
against the loaded card, and the monitoring figures for ``/metrics``."""

from __future__ import annotations

import logging

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from backend.app.core.metrics import MONITORING_GAUGES, Samples
from backend.app.worklist.drift import Drift, drift, drift_samples
from backend.app.worklist.monitoring import gauge_samples, monitoring
from backend.app.worklist.store import WorklistStore, utcnow
from ml_model.card import ModelCard

logger = logging.getLogger(LOGGER_NAME)


def open_worklist(settings: Settings) -> WorklistStore:
    """The store of ``settings``' database, its schema upgraded to head (start-up); it
    writes a notification for each flagged entry when WEBHOOK_URL is set."""
    store = WorklistStore(settings.worklist_database_url, notify=settings.webhook_url is not None)
    try:
        store.migrate()
    except Exception:
        store.close()
        raise
    logger.info("worklist ready", extra={"database": store.engine.url.render_as_string()})
    return store


def drift_report(store: WorklistStore, card: ModelCard | None, settings: Settings) -> Drift:
    """Every analysed entry's drift figures against ``card`` (the loaded bundle's; None
    while it loads: refusal shares only), with the Settings' bounds and window."""
    return drift(
        store.analysed(),
        (card.name, card.version) if card is not None else None,
        card.study.score_histogram if card is not None else None,
        now=utcnow(),
        recent_days=settings.monitoring_drift_days,
        psi_bound=settings.monitoring_psi_warn,
        refusal_bound=settings.monitoring_not_ct_warn,
    )


def monitoring_samples(
    store: WorklistStore | None, card: ModelCard | None, settings: Settings
) -> list[Samples]:
    """The live performance and drift as Prometheus samples, one list per gauge of
    ``core.metrics.MONITORING_GAUGES`` (none while no store is open)."""
    if store is None:
        return [[] for _ in MONITORING_GAUGES]
    ratios, counts = gauge_samples(monitoring(store.reviewed()))
    psis, shares = drift_samples(drift_report(store, card, settings))
    failures: Samples = [
        ({"failure_class": name}, float(count)) for name, count in store.failure_counts().items()
    ]
    return [ratios, counts, psis, shares, failures]
