"""The worklist's answers, shaped from the store's rows, and the store's entries, shaped
from the requests: shared by ``api/routes/worklist.py``, ``monitoring.py`` and the study
upload's ``save=true`` (``api/studies.py``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import datetime

from backend.app.core.config import Settings
from backend.app.schemas import (
    DriftOut,
    ModelInfo,
    MonitoringResponse,
    PerformanceOut,
    RefusalShareOut,
    ReviewEntry,
    ScoreDriftOut,
    ScoreHistogramOut,
    StudySummary,
    WorklistEntry,
    WorklistTopSlice,
)
from backend.app.worklist.drift import Drift
from backend.app.worklist.models import WorklistStudy
from backend.app.worklist.monitoring import Monitoring, Performance
from backend.app.worklist.store import NewStudy, kept_identifiers, utcnow
from ml_model.imaging.dicom import SeriesIdentity, read_series_identity
from ml_model.inference.study import OrderedSlice


def study_entry(
    summary: StudySummary,
    *,
    source: str,
    identity: SeriesIdentity | None,
    settings: Settings,
    arrived_at: datetime | None = None,
    identifiers: dict[str, str] | None = None,
) -> NewStudy:
    """A worklist entry from a study answer and the series' identity (UIDs, scanner)."""
    now = utcnow()
    return NewStudy(
        source=source,
        study_uid=identity.study_uid if identity else None,
        series_uid=identity.series_uid if identity else None,
        arrived_at=arrived_at or now,
        analysed_at=now,
        verdict=summary.result,
        score=summary.prediction,
        threshold=summary.threshold,
        operating_point=summary.operating_point.value,
        top_slices=[item.model_dump() for item in summary.top_slices],
        model_name=summary.model.name,
        model_version=summary.model.version,
        manufacturer=identity.manufacturer if identity else None,
        manufacturer_model=identity.manufacturer_model if identity else None,
        identifiers=kept_identifiers(identifiers, settings.worklist_identifiers),
    )


def upload_identity(sources: list[OrderedSlice]) -> SeriesIdentity | None:
    """The identity of an uploaded series: its first slice's DICOM header (one series per
    upload), else None (PNG slices carry none)."""
    return read_series_identity(sources[0].data) if sources else None


def entry_out(study: WorklistStudy) -> WorklistEntry:
    """A worklist row (with its reads loaded) as the API answers it."""
    return WorklistEntry(
        id=study.id,
        source=study.source,  # type: ignore[arg-type]  # "pacs" | "upload", checked on write
        study_uid=study.study_uid,
        series_uid=study.series_uid,
        identifiers=study.identifiers,
        arrived_at=study.arrived_at,
        analysed_at=study.analysed_at,
        verdict=study.verdict,  # type: ignore[arg-type]  # a Result, checked on write
        flagged=study.flagged,
        score=study.score,
        threshold=study.threshold,
        operating_point=study.operating_point,  # type: ignore[arg-type]
        top_slices=[WorklistTopSlice(**item) for item in study.top_slices],
        model=ModelInfo(name=study.model_name, version=study.model_version),
        manufacturer=study.manufacturer,
        manufacturer_model=study.manufacturer_model,
        status=study.status,  # type: ignore[arg-type]
        opened_at=study.opened_at,
        reviews=[
            ReviewEntry(
                id=read.id,
                fracture=read.fracture,
                levels=read.levels,  # type: ignore[arg-type]  # C1..C7, checked on write
                note=read.note,
                reader=read.reader,
                reviewed_at=read.reviewed_at,
            )
            for read in study.reviews
        ],
    )


def _performance_out(figures: Performance) -> PerformanceOut:
    return PerformanceOut.model_validate(figures, from_attributes=True)


def _drift_out(report: Drift) -> DriftOut:
    return DriftOut(
        model=report.model,
        reference=ScoreHistogramOut.model_validate(report.reference, from_attributes=True)
        if report.reference is not None
        else None,
        psi_unavailable=report.unavailable,
        psi_warn=report.psi_bound,
        refusal_warn=report.refusal_bound,
        recent_days=report.recent_days,
        recent=ScoreDriftOut.model_validate(report.recent, from_attributes=True)
        if report.recent is not None
        else None,
        psi_by_week={
            week: ScoreDriftOut.model_validate(figure, from_attributes=True)
            for week, figure in report.by_week.items()
        },
        refusals_by_week={
            week: {
                answer: RefusalShareOut.model_validate(
                    {**asdict(refusal.share), "warning": refusal.warning}
                )
                for answer, refusal in answers.items()
            }
            for week, answers in report.refusals_by_week.items()
        },
    )


def monitoring_out(
    report: Monitoring, drift: Drift, failures: dict[str, int]
) -> MonitoringResponse:
    groups = {
        name: {group: _performance_out(figures) for group, figures in members.items()}
        for name, members in report.groups.items()
    }
    return MonitoringResponse(
        overall=_performance_out(report.overall),
        by_model_version=groups["model_version"],
        by_scanner=groups["scanner"],
        by_week=groups["week"],
        drift=_drift_out(drift),
        pipeline_failures=failures,
    )
