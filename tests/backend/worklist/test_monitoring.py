"""The monitoring figures: Wilson intervals against published values, what counts as a true
or false call, and the groupings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from backend.app.worklist.monitoring import gauge_samples, monitoring, performance, wilson
from backend.app.worklist.store import ReviewedStudy

MONDAY = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)  # ISO 2026-W49


@pytest.mark.parametrize(
    ("successes", "total", "lower", "upper"),
    [
        # Newcombe (1998), Statistics in Medicine 17:857, table I (method 3, Wilson).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        # Symmetric and boundary cases.
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (0, 1, 0.0, 0.7935),
    ],
)
def test_wilson_interval(successes: int, total: int, lower: float, upper: float) -> None:
    got = wilson(successes, total)
    assert got.estimate == pytest.approx(successes / total)
    assert got.lower == pytest.approx(lower, abs=5e-5)
    assert got.upper == pytest.approx(upper, abs=5e-5)


def test_wilson_without_studies_has_no_figure() -> None:
    got = wilson(0, 0)
    assert (got.estimate, got.lower, got.upper) == (None, None, None)


def row(
    verdict: str,
    fracture: bool,
    version: str = "1",
    manufacturer: str | None = "GE",
    model: str | None = "Revolution",
    days: int = 0,
) -> ReviewedStudy:
    return ReviewedStudy(
        flagged=verdict == "Potentially Fracture",
        verdict=verdict,
        fracture=fracture,
        model_name="cspine",
        model_version=version,
        manufacturer=manufacturer,
        manufacturer_model=model,
        arrived_at=MONDAY + timedelta(days=days),
    )


F, N, X = "Potentially Fracture", "Normal", "Not a CT slice"


@pytest.mark.parametrize(
    ("rows", "tp", "fp", "tn", "fn", "no_call"),
    [
        ([row(F, True)], 1, 0, 0, 0, 0),
        ([row(F, False)], 0, 1, 0, 0, 0),
        ([row(N, False)], 0, 0, 1, 0, 0),
        ([row(N, True)], 0, 0, 0, 1, 0),
        ([row(X, True), row(X, False)], 0, 0, 0, 0, 2),  # no call: never a negative
        ([row(F, True)] * 3 + [row(N, True), row(N, False), row(F, False)], 3, 1, 1, 1, 0),
    ],
    ids=["tp", "fp", "tn", "fn", "no call", "mixed"],
)
def test_confusion_matrix(
    rows: list[ReviewedStudy], tp: int, fp: int, tn: int, fn: int, no_call: int
) -> None:
    got = performance(rows)
    assert (got.true_positive, got.false_positive, got.true_negative) == (tp, fp, tn)
    assert (got.false_negative, got.no_call, got.reviewed) == (fn, no_call, len(rows))
    assert (got.sensitivity.successes, got.sensitivity.total) == (tp, tp + fn)
    assert (got.specificity.successes, got.specificity.total) == (tn, tn + fp)
    assert (got.ppv.successes, got.ppv.total) == (tp, tp + fp)
    assert (got.npv.successes, got.npv.total) == (tn, tn + fn)


def test_groupings() -> None:
    rows = [
        row(F, True, version="1"),
        row(N, True, version="2", manufacturer="SIEMENS", model="Force", days=7),
        row(N, False, version="2", manufacturer=None, model=None, days=8),
    ]
    report = monitoring(rows)
    assert report.overall.reviewed == 3
    assert {k: v.reviewed for k, v in report.groups["model_version"].items()} == {
        "cspine 1": 1,
        "cspine 2": 2,
    }
    assert set(report.groups["scanner"]) == {
        "GE / Revolution",
        "SIEMENS / Force",
        "unknown / unknown",
    }
    assert {k: v.reviewed for k, v in report.groups["week"].items()} == {
        "2026-W49": 1,
        "2026-W50": 2,
    }
    assert report.groups["model_version"]["cspine 2"].sensitivity.estimate == 0.0


def test_gauge_samples_leave_out_figures_without_studies() -> None:
    ratios, counts = gauge_samples(monitoring([row(F, True)]))
    overall = {
        (labels["measure"], labels["bound"]): value
        for labels, value in ratios
        if labels["grouping"] == "overall"
    }
    assert overall[("sensitivity", "estimate")] == 1.0
    assert overall[("ppv", "lower")] == pytest.approx(wilson(1, 1).lower)
    assert not any(measure in ("specificity", "npv") for measure, _ in overall)  # n = 0
    assert ({"grouping": "overall", "group": "all"}, 1.0) in counts
    assert ({"grouping": "week", "group": "2026-W49"}, 1.0) in counts
