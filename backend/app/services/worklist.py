"""The worklist's work outside the routes: opening the store at start-up, and the
monitoring figures for ``/metrics``."""

from __future__ import annotations

import logging

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from backend.app.core.metrics import Samples
from backend.app.worklist.monitoring import gauge_samples, monitoring
from backend.app.worklist.store import WorklistStore

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


def monitoring_samples(store: WorklistStore | None) -> tuple[Samples, Samples]:
    """The live performance as Prometheus samples (none while no store is open)."""
    if store is None:
        return [], []
    return gauge_samples(monitoring(store.reviewed()))
