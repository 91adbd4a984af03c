"""Live performance against the radiologists' reads: sensitivity, specificity, PPV and NPV
with Wilson 95 % intervals, overall and by model version, scanner and ISO week.

The product's call is ``flagged`` (``Potentially Fracture``); the truth is the study's latest
read. Studies the CT gate refused (``Not a CT slice`` or ``CT outside the model's range``: no
call made) are counted apart (``no_call``), never as negatives. Pure functions over
:class:`store.ReviewedStudy` rows: ``GET /monitoring`` and the Prometheus gauges
(``core/metrics.py``) read the same figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backend.app.worklist.store import AnalysedStudy, ReviewedStudy
from ml_model.config import RESULT_OUT_OF_DISTRIBUTION, RESULT_OUTSIDE_RANGE

Z_95 = 1.959963984540054  # the standard normal's 97.5 % quantile
NO_CALL_VERDICTS = (RESULT_OUT_OF_DISTRIBUTION, RESULT_OUTSIDE_RANGE)  # no fracture call
UNKNOWN = "unknown"


@dataclass(frozen=True)
class Proportion:
    """k of n, its estimate and Wilson score interval (None when n is 0)."""

    successes: int
    total: int
    estimate: float | None
    lower: float | None
    upper: float | None


def wilson(successes: int, total: int, z: float = Z_95) -> Proportion:
    """The Wilson score interval of ``successes`` / ``total`` (Wilson 1927): it stays inside
    [0, 1] and keeps its coverage for small n and proportions near 0 or 1."""
    if total <= 0:
        return Proportion(successes, total, None, None, None)
    p = successes / total
    denominator = 1.0 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return Proportion(successes, total, p, max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Performance:
    """The confusion matrix of one group of reviewed studies and its four figures."""

    reviewed: int
    no_call: int
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion


MEASURES = ("sensitivity", "specificity", "ppv", "npv")


def performance(rows: Iterable[ReviewedStudy]) -> Performance:
    """The figures of ``rows`` (see the module's docstring for what counts)."""
    tp = fp = tn = fn = reviewed = no_call = 0
    for row in rows:
        reviewed += 1
        if row.verdict in NO_CALL_VERDICTS:
            no_call += 1
        elif row.flagged and row.fracture:
            tp += 1
        elif row.flagged:
            fp += 1
        elif row.fracture:
            fn += 1
        else:
            tn += 1
    return Performance(
        reviewed=reviewed,
        no_call=no_call,
        true_positive=tp,
        false_positive=fp,
        true_negative=tn,
        false_negative=fn,
        sensitivity=wilson(tp, tp + fn),
        specificity=wilson(tn, tn + fp),
        ppv=wilson(tp, tp + fp),
        npv=wilson(tn, tn + fn),
    )


def iso_week(row: ReviewedStudy | AnalysedStudy) -> str:
    """The ISO week of the study's arrival, e.g. ``2026-W49``."""
    year, week, _ = row.arrived_at.isocalendar()
    return f"{year}-W{week:02d}"


# How the figures are broken down: the grouping's name -> the group of a row.
GROUPINGS: dict[str, Callable[[ReviewedStudy], str]] = {
    "model_version": lambda row: f"{row.model_name} {row.model_version}",
    "scanner": lambda row: f"{row.manufacturer or UNKNOWN} / {row.manufacturer_model or UNKNOWN}",
    "week": iso_week,
}


@dataclass(frozen=True)
class Monitoring:
    overall: Performance
    groups: dict[str, dict[str, Performance]]  # grouping -> group -> figures


def monitoring(rows: list[ReviewedStudy]) -> Monitoring:
    """Overall and per group of every :data:`GROUPINGS` (groups in sorted order)."""
    groups: dict[str, dict[str, Performance]] = {}
    for name, key in GROUPINGS.items():
        members: dict[str, list[ReviewedStudy]] = {}
        for row in rows:
            members.setdefault(key(row), []).append(row)
        groups[name] = {group: performance(members[group]) for group in sorted(members)}
    return Monitoring(overall=performance(rows), groups=groups)


Sample = tuple[dict[str, str], float]


def gauge_samples(report: Monitoring) -> tuple[list[Sample], list[Sample]]:
    """The figures as Prometheus samples: (grouping, group, measure, bound) -> value, and
    (grouping, group) -> reviewed studies. A figure without studies (n = 0) is left out
    rather than exported as NaN."""
    samples: list[Sample] = []
    counts: list[Sample] = []
    sections = [("overall", {"all": report.overall}), *report.groups.items()]
    for grouping, members in sections:
        for group, figures in members.items():
            counts.append(({"grouping": grouping, "group": group}, float(figures.reviewed)))
            for measure in MEASURES:
                proportion: Proportion = getattr(figures, measure)
                for bound in ("estimate", "lower", "upper"):
                    value = getattr(proportion, bound)
                    if value is not None:
                        labels = {
                            "grouping": grouping,
                            "group": group,
                            "measure": measure,
                            "bound": bound,
                        }
                        samples.append((labels, float(value)))
    return samples, counts
