"""Drift of what the product sees, without waiting for reads: the study scores' distribution
against the model card's out-of-fold one (population stability index, PSI), and the weekly
share of the CT gate's refusals (``Not a CT slice``, ``CT outside the model's range``).

Every analysed entry counts, reviewed or not. PSI takes the entries with a call (not the
refusals: their score is no fracture score) of the model the card describes (another
version's scores are another distribution), binned on the card's edges
(``study.score_histogram``, written by training from out-of-fold study scores):

    PSI = sum over bins of (live_i - reference_i) * ln(live_i / reference_i)

with each share floored at :data:`PSI_FLOOR` (an empty bin would make it infinite). Common
reading: below 0.1 stable, 0.1-0.2 a shift worth a look, above 0.2 a shift
(``MONITORING_PSI_WARN``). The refusal shares carry Wilson 95 % intervals; a warning is
raised when the estimate passes ``MONITORING_NOT_CT_WARN``. Pure functions, as
``monitoring.py``: ``GET /monitoring`` and the gauges read the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from backend.app.worklist.monitoring import NO_CALL_VERDICTS, Proportion, Sample, iso_week, wilson
from backend.app.worklist.store import AnalysedStudy
from ml_model.card import ScoreHistogram, bin_index

PSI_FLOOR = 1e-4
NO_REFERENCE = "the card has no out-of-fold score distribution"
NO_MODEL = "the model is not loaded yet"


def psi(reference: Sequence[float], live: Sequence[float]) -> float:
    """The population stability index of ``live`` shares against ``reference`` shares (the
    same bins; each share floored at :data:`PSI_FLOOR`)."""
    if len(reference) != len(live):
        raise ValueError("reference and live need the same bins")
    total = 0.0
    for expected, actual in zip(reference, live, strict=True):
        e, a = max(expected, PSI_FLOOR), max(actual, PSI_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


@dataclass(frozen=True)
class ScoreDrift:
    """PSI of one window's scores (None without scores), their count per bin, the warning."""

    n: int
    counts: list[int]
    psi: float | None
    warning: bool


def score_drift(scores: Sequence[float], reference: ScoreHistogram, bound: float) -> ScoreDrift:
    """``scores`` binned on the reference's edges and their PSI against it."""
    counts = [0] * len(reference.fractions)
    for index in bin_index(list(scores), reference.edges):
        counts[int(index)] += 1
    if not scores:
        return ScoreDrift(0, counts, None, False)
    value = psi(reference.fractions, [c / len(scores) for c in counts])
    return ScoreDrift(len(scores), counts, value, value > bound)


@dataclass(frozen=True)
class RefusalShare:
    """Of one week's analysed entries, the share that got one refusal answer."""

    share: Proportion
    warning: bool


def refusal_shares(rows: Sequence[AnalysedStudy], bound: float) -> dict[str, RefusalShare]:
    """Per refusal answer (:data:`NO_CALL_VERDICTS`): its share of ``rows``, Wilson
    interval, and whether the estimate passes ``bound``."""
    shares = {}
    for answer in NO_CALL_VERDICTS:
        share = wilson(sum(row.verdict == answer for row in rows), len(rows))
        shares[answer] = RefusalShare(share, share.estimate is not None and share.estimate > bound)
    return shares


@dataclass(frozen=True)
class Drift:
    model: str | None  # the card's `name version`, whose scores PSI takes
    reference: ScoreHistogram | None
    unavailable: str | None  # why there is no PSI (no card, no reference); None: there is
    psi_bound: float
    refusal_bound: float
    recent_days: int
    recent: ScoreDrift | None  # PSI over the last ``recent_days`` days of arrivals
    by_week: dict[str, ScoreDrift]
    refusals_by_week: dict[str, dict[str, RefusalShare]]  # week -> answer -> share


def drift(
    rows: Sequence[AnalysedStudy],
    model: tuple[str, str] | None,
    reference: ScoreHistogram | None,
    *,
    now: datetime,
    recent_days: int,
    psi_bound: float,
    refusal_bound: float,
) -> Drift:
    """The drift figures of ``rows``; ``model`` (name, version) and ``reference`` are the
    loaded card's (None: not loaded / no histogram: PSI left out with the reason)."""
    weeks: dict[str, list[AnalysedStudy]] = {}
    for row in rows:
        weeks.setdefault(iso_week(row), []).append(row)
    refusals = {week: refusal_shares(weeks[week], refusal_bound) for week in sorted(weeks)}
    name = f"{model[0]} {model[1]}" if model else None
    unavailable = NO_MODEL if model is None else NO_REFERENCE if reference is None else None
    if model is None or reference is None:
        return Drift(
            name, reference, unavailable, psi_bound, refusal_bound, recent_days, None, {}, refusals
        )
    scored = [
        row
        for row in rows
        if row.verdict not in NO_CALL_VERDICTS and (row.model_name, row.model_version) == model
    ]
    start = now - timedelta(days=recent_days)
    recent = score_drift([r.score for r in scored if r.arrived_at >= start], reference, psi_bound)
    by_week: dict[str, list[float]] = {}
    for row in scored:
        by_week.setdefault(iso_week(row), []).append(row.score)
    weekly = {week: score_drift(by_week[week], reference, psi_bound) for week in sorted(by_week)}
    return Drift(
        name, reference, None, psi_bound, refusal_bound, recent_days, recent, weekly, refusals
    )


def drift_samples(report: Drift) -> tuple[list[Sample], list[Sample]]:
    """The figures as Prometheus samples: PSI by window (``last_{days}d`` or an ISO week),
    and the refusal shares by (week, answer, bound). Figures without studies are left out."""
    windows = {f"last_{report.recent_days}d": report.recent, **report.by_week}
    psis = [
        ({"window": window}, figure.psi)
        for window, figure in windows.items()
        if figure is not None and figure.psi is not None
    ]
    shares: list[Sample] = []
    for week, answers in report.refusals_by_week.items():
        for answer, refusal in answers.items():
            for bound in ("estimate", "lower", "upper"):
                value = getattr(refusal.share, bound)
                if value is not None:
                    shares.append(({"week": week, "answer": answer, "bound": bound}, value))
    return psis, shares
