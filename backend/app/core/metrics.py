"""Prometheus metrics: HTTP metrics from prometheus-fastapi-instrumentator, plus our own.

Each app gets its own ``CollectorRegistry``, so several apps (tests) never collide;
``GET /metrics`` (``api/routes/metrics.py``) serves it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from fastapi import FastAPI
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_fastapi_instrumentator import Instrumentator

from backend.app.core.admission import MemoryBudget, StudySlots
from backend.app.core.auth import note_result

# Inference takes ~5 ms to a few seconds (batch, Grad-CAM, cold start).
REFUSAL_REASONS = frozenset({"request_memory", "process_memory", "studies", "body_timeout"})
# From a series' arrival in the PACS to the webhook's 2xx: seconds to hours (retries).
NOTIFICATION_BUCKETS = (5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200)
WEBHOOK_OUTCOMES = frozenset({"delivered", "failed", "dead_letter"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# Labelled samples of a gauge computed at scrape time: (labels, value).
Samples = list[tuple[dict[str, str], float]]


@dataclass(frozen=True)
class GaugeSpec:
    name: str
    documentation: str
    labels: tuple[str, ...]


# The worklist's gauges, in the order ``MonitoringCollector``'s figures return their samples.
MONITORING_GAUGES = (
    GaugeSpec(
        "triage_monitoring_ratio",
        "Sensitivity, specificity, PPV and NPV against the radiologists' reads (`measure`), "
        "with Wilson 95 % bounds (`bound`: estimate, lower, upper), `grouping` overall / "
        "model_version / scanner / week.",
        ("grouping", "group", "measure", "bound"),
    ),
    GaugeSpec(
        "triage_monitoring_reviewed_studies",
        "Reviewed studies behind triage_monitoring_ratio, by grouping and group.",
        ("grouping", "group"),
    ),
    GaugeSpec(
        "triage_monitoring_psi",
        "Population stability index of the analysed studies' scores against the model "
        "card's out-of-fold score distribution, by `window` (last_<N>d or an ISO week).",
        ("window",),
    ),
    GaugeSpec(
        "triage_monitoring_refusal_share",
        "Share of the analysed studies answered `Not a CT slice` or `CT outside the model's "
        "range` (`answer`) per ISO `week`, with Wilson 95 % bounds (`bound`).",
        ("week", "answer", "bound"),
    ),
    GaugeSpec(
        "triage_pipeline_failures",
        "Series the PACS pipeline gave up on and has not analysed since, by `failure_class` "
        "(identity, permanent, error; GET /pipeline/failures).",
        ("failure_class",),
    ),
)


class MonitoringCollector(Collector):
    """The worklist's live performance and drift (``worklist/monitoring.py``, ``drift.py``),
    computed from the database at each scrape, so the gauges survive a restart and never go
    stale. ``figures`` returns one list of samples per gauge of :data:`MONITORING_GAUGES`; a
    failing read is logged and leaves the gauges empty for that scrape instead of failing
    ``/metrics``."""

    def __init__(self, figures: Callable[[], Sequence[Samples]]) -> None:
        self.figures = figures

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(spec.name, spec.documentation, labels=spec.labels)
            for spec in MONITORING_GAUGES
        ]

    def describe(self) -> Iterator[Metric]:
        yield from self._families()  # without a read: registration never touches the store

    def collect(self) -> Iterator[Metric]:
        families = self._families()
        try:
            samples = list(self.figures())
        except Exception:
            logging.getLogger(__name__).exception("monitoring figures could not be read")
            samples = [[] for _ in MONITORING_GAUGES]
        for spec, family, gauge_samples in zip(MONITORING_GAUGES, families, samples, strict=True):
            for labels, value in gauge_samples:
                family.add_metric([labels[name] for name in spec.labels], value)
        yield from families


class AppMetrics:
    """Application metrics, registered in the app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.predictions = Counter(
            "triage_predictions_total",
            "Images classified, by result (`Potentially Fracture`, `Normal`, `Not a CT slice`, "
            "`CT outside the model's range`) "
            "and operating point.",
            ["result", "operating_point"],
            registry=registry,
        )
        self.studies = Counter(
            "triage_studies_total",
            "Studies (series) classified by /predict/study, by result and operating point.",
            ["result", "operating_point"],
            registry=registry,
        )
        self.upload_errors = Counter(
            "triage_upload_errors_total",
            "Uploaded files refused before inference, by HTTP status code.",
            ["status"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "triage_model_ready", "1 once the model is loaded and warmed up.", registry=registry
        )
        self.admission_refusals = Counter(
            "triage_admission_refusals_total",
            "Requests refused by admission control, by reason: `request_memory` (413, over "
            "MAX_REQUEST_MEMORY_MB), `process_memory` (503, MEMORY_BUDGET_MB full), "
            "`studies` (503, MAX_CONCURRENT_STUDIES busy), `body_timeout` (408).",
            ["reason"],
            registry=registry,
        )
        self.memory_in_flight = Gauge(
            "triage_memory_in_flight_bytes",
            "Memory held by requests in flight, as estimated by admission control.",
            registry=registry,
        )
        self.studies_in_flight = Gauge(
            "triage_studies_in_flight", "Studies being analysed.", registry=registry
        )

        self.webhook_deliveries = Counter(
            "triage_webhook_deliveries_total",
            "Webhook calls for flagged studies, by outcome: `delivered` (2xx), `failed` (to be "
            "retried), `dead_letter` (the last attempt failed).",
            ["outcome"],
            registry=registry,
        )
        self.time_to_notification = Histogram(
            "triage_time_to_notification_seconds",
            "From a flagged series' arrival in the PACS (the worklist's arrived_at: the last "
            "instance stored) to the webhook answering 2xx for it.",
            buckets=NOTIFICATION_BUCKETS,
            registry=registry,
        )

    def record_webhook(self, outcome: str, waited_s: float | None = None) -> None:
        """One webhook attempt's outcome; ``waited_s`` (arrival -> 2xx) when delivered."""
        if outcome in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome=outcome).inc()
        if waited_s is not None:
            self.time_to_notification.observe(max(0.0, waited_s))

    def record_prediction(self, result: str, operating_point: str) -> None:
        self.predictions.labels(result=result, operating_point=operating_point).inc()
        note_result(result)

    def record_study(self, result: str, operating_point: str) -> None:
        self.studies.labels(result=result, operating_point=operating_point).inc()
        note_result(result, study=True)

    def record_refusal(self, reason: str) -> None:
        if reason in REFUSAL_REASONS:  # a fixed label set
            self.admission_refusals.labels(reason=reason).inc()

    def watch_admission(self, budget: MemoryBudget, slots: StudySlots) -> None:
        self.memory_in_flight.set_function(lambda: budget.used)
        self.studies_in_flight.set_function(lambda: slots.busy)

    def watch_monitoring(self, figures: Callable[[], Sequence[Samples]]) -> None:
        """Export the worklist's live performance (see :class:`MonitoringCollector`)."""
        self.registry.register(MonitoringCollector(figures))

    def record_upload_error(self, status_code: int) -> None:
        self.upload_errors.labels(status=str(status_code)).inc()


def instrument(app: FastAPI) -> AppMetrics:
    """Add the HTTP metrics middleware; return the app metrics (``GET /metrics`` serves
    their registry)."""
    registry = CollectorRegistry()
    Instrumentator(
        should_group_status_codes=False,  # status="413", not "4xx"
        should_ignore_untemplated=False,
        should_group_untemplated=True,  # unknown paths share handler="none"
        excluded_handlers=["/metrics"],
        registry=registry,
    ).instrument(app, latency_highr_buckets=LATENCY_BUCKETS)
    return AppMetrics(registry)
