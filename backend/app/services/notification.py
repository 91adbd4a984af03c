"""The webhook notification of flagged studies: delivers the worklist's outbox.

``store.record`` writes one notification per entry that becomes flagged, in the same
transaction (``worklist/store.py``), so a listed flagged study always has one, and a
re-posted entry never a second. :class:`WebhookNotifier` runs in the API's lifespan: it
claims due notifications (``claim_notifications``: a lease, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, so replicas share the work without sending one twice), POSTs each one's JSON
with an HMAC-SHA256 signature of the raw body, and records the outcome: 2xx -> delivered
(``triage_time_to_notification_seconds`` observes arrival -> now); anything else -> due
again after an exponential back-off (WEBHOOK_BACKOFF_BASE_S doubling, at most
WEBHOOK_BACKOFF_MAX_S); the last of WEBHOOK_MAX_ATTEMPTS failed -> a dead letter (a row of
``worklist_dead_letters`` and an ERROR log line). What is pending survives a restart: the
next start delivers it. A receiver may see one call twice only when a process dies
between the receiver's 2xx and the record of it; ``X-Triage-Delivery`` lets it drop that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import httpx

import ml_model
from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from backend.app.core.metrics import AppMetrics
from backend.app.worklist.store import PendingNotification, WorklistStore, utcnow

logger = logging.getLogger(LOGGER_NAME)

SIGNATURE_HEADER = "X-Triage-Signature"
TIMESTAMP_HEADER = "X-Triage-Timestamp"
DELIVERY_HEADER = "X-Triage-Delivery"
CLAIM_BATCH = 16  # notifications claimed (and sent concurrently) at once
# A claim lapses this long after a call's timeout: a process that died mid-call leaves its
# notification to the next claimer then.
LEASE_MARGIN_S = 5.0
ERROR_LENGTH = 500


def body_bytes(body: dict[str, Any]) -> bytes:
    """The raw JSON that is sent and signed (the same bytes on every attempt)."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode()


def signature(key: bytes, raw: bytes) -> str:
    """``X-Triage-Signature``'s value: ``sha256=`` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest()


def signed_headers(key: bytes, raw: bytes, delivery_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"cspine-triage/{ml_model.__version__}",
        SIGNATURE_HEADER: signature(key, raw),
        TIMESTAMP_HEADER: str(int(time.time())),
        DELIVERY_HEADER: delivery_id,
    }


def backoff_s(attempts: int, base_s: float, max_s: float) -> float:
    """The wait after the ``attempts``-th failed attempt: base, 2 x base, 4 x base ... max."""
    return float(min(base_s * 2.0 ** (attempts - 1), max_s))


class WebhookNotifier:
    """Delivers ``store``'s notifications to WEBHOOK_URL (see the module's docstring)."""

    def __init__(self, store: WorklistStore, settings: Settings, metrics: AppMetrics) -> None:
        assert settings.webhook_url, "WebhookNotifier needs WEBHOOK_URL"
        self.store = store
        self.url = settings.webhook_url
        self.key = settings.webhook_key
        self.settings = settings
        self.metrics = metrics
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S

    async def run(self) -> None:
        """Deliver what is due, forever (until the lifespan cancels it)."""
        logger.info("webhook notifications on", extra={"webhook_url": self.url})
        timeout = httpx.Timeout(self.settings.webhook_timeout_s)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
            while True:
                claimed = await self.deliver_due(client)
                if claimed < CLAIM_BATCH:
                    await anyio.sleep(self.settings.webhook_poll_s)

    async def deliver_due(self, client: httpx.AsyncClient) -> int:
        """One round: claim what is due and send it; the number claimed. A database that
        cannot be read is logged and tried again at the next round."""
        try:
            due = await anyio.to_thread.run_sync(
                self.store.claim_notifications, CLAIM_BATCH, self.lease_s
            )
        except Exception:
            logger.exception("webhook notifications could not be read")
            return 0
        async with anyio.create_task_group() as tasks:
            for notification in due:
                tasks.start_soon(self._deliver_logged, client, notification)
        return len(due)

    async def _deliver_logged(
        self, client: httpx.AsyncClient, claimed: PendingNotification
    ) -> None:
        try:
            await self._deliver(client, claimed)
        except Exception:  # the outcome could not be recorded: due again when the claim lapses
            logger.exception(
                "webhook outcome not recorded", extra={"delivery_id": claimed.delivery_id}
            )

    async def _deliver(self, client: httpx.AsyncClient, claimed: PendingNotification) -> None:
        raw = body_bytes(claimed.body)
        error = await self._post(client, raw, claimed.delivery_id)
        facts = {
            "worklist_id": claimed.study_id,
            "delivery_id": claimed.delivery_id,
            "attempt": claimed.attempts,
        }
        if error is None:
            await anyio.to_thread.run_sync(self.store.notification_delivered, claimed.id)
            waited = (utcnow() - claimed.arrived_at).total_seconds()
            self.metrics.record_webhook("delivered", waited)
            logger.info("webhook delivered", extra={**facts, "time_to_notification_s": waited})
        elif claimed.attempts >= self.settings.webhook_max_attempts:
            await anyio.to_thread.run_sync(self.store.notification_dead, claimed, self.url, error)
            self.metrics.record_webhook("dead_letter")
            logger.error("webhook dead-lettered", extra={**facts, "error": error})
        else:
            wait = backoff_s(
                claimed.attempts,
                self.settings.webhook_backoff_base_s,
                self.settings.webhook_backoff_max_s,
            )
            retry_at: datetime = utcnow() + timedelta(seconds=wait)
            await anyio.to_thread.run_sync(
                self.store.notification_failed, claimed.id, error, retry_at
            )
            self.metrics.record_webhook("failed")
            logger.warning("webhook failed", extra={**facts, "error": error, "retry_in_s": wait})

    async def _post(self, client: httpx.AsyncClient, raw: bytes, delivery_id: str) -> str | None:
        """One call; None when the receiver answered 2xx, else what went wrong."""
        try:
            response = await client.post(
                self.url, content=raw, headers=signed_headers(self.key, raw, delivery_id)
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:ERROR_LENGTH]
        if response.is_success:
            return None
        return f"HTTP {response.status_code}: {response.text[:200]}"[:ERROR_LENGTH]


def notifier(
    store: WorklistStore, settings: Settings, metrics: AppMetrics
) -> WebhookNotifier | None:
    """The lifespan's notifier, or None when WEBHOOK_URL is unset."""
    return WebhookNotifier(store, settings, metrics) if settings.webhook_url else None
