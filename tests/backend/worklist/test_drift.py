"""Drift: the population stability index against hand-computed values, the refusal shares,
and which studies count in which window."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from backend.app.worklist.drift import (
    NO_MODEL,
    NO_REFERENCE,
    drift,
    drift_samples,
    psi,
    refusal_shares,
    score_drift,
)
from backend.app.worklist.store import AnalysedStudy
from ml_model.card import ScoreHistogram, score_histogram

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)  # Thursday of ISO 2026-W50
F, N, X, R = "Potentially Fracture", "Normal", "Not a CT slice", "CT outside the model's range"
MODEL = ("cspine", "2026.12.1")


@pytest.mark.parametrize(
    ("reference", "live", "expected"),
    [
        ([0.5, 0.5], [0.5, 0.5], 0.0),
        ([0.1] * 10, [0.1] * 10, 0.0),
        # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 (ln 2 + ln 1.5)
        ([0.5, 0.5], [0.25, 0.75], 0.25 * (math.log(2) + math.log(1.5))),
        # 0.1 ln 1.5 + 0 + (-0.1) ln 0.8
        ([0.2, 0.3, 0.5], [0.3, 0.3, 0.4], 0.1 * math.log(1.5) - 0.1 * math.log(0.8)),
        # An empty bin counts as 1e-4: 0.5 ln 2 + (1e-4 - 0.5) ln(1e-4 / 0.5)
        ([0.5, 0.5], [1.0, 0.0], 0.5 * math.log(2) + (1e-4 - 0.5) * math.log(2e-4)),
    ],
    ids=["same halves", "same deciles", "quarter moved", "three bins", "empty bin"],
)
def test_psi_against_hand_computed_values(
    reference: list[float], live: list[float], expected: float
) -> None:
    assert psi(reference, live) == pytest.approx(expected, abs=1e-12)


def test_psi_needs_the_same_bins() -> None:
    with pytest.raises(ValueError, match="same bins"):
        psi([0.5, 0.5], [1.0])


REFERENCE_SCORES = np.random.default_rng(7).beta(2, 5, 2000)
REFERENCE = score_histogram(REFERENCE_SCORES, "test: beta(2, 5)")


@pytest.mark.parametrize(
    ("scores", "low", "high", "warning"),
    [
        (REFERENCE_SCORES, 0.0, 1e-9, False),  # the reference itself: PSI 0
        (np.random.default_rng(8).beta(2, 5, 2000), 0.0, 0.05, False),  # a new sample of it
        (np.clip(REFERENCE_SCORES + 0.25, 0, 1), 0.2, math.inf, True),  # shifted up
        (np.random.default_rng(9).beta(5, 2, 500), 0.2, math.inf, True),  # another shape
    ],
    ids=["identical", "resampled", "shifted", "other shape"],
)
def test_score_drift(scores: np.ndarray, low: float, high: float, warning: bool) -> None:
    assert REFERENCE is not None
    got = score_drift(list(scores), REFERENCE, bound=0.2)
    assert got.n == len(scores) and sum(got.counts) == len(scores)
    assert got.psi is not None and low <= got.psi < high
    assert got.warning is warning


def test_score_histogram_is_the_reference_deciles() -> None:
    assert REFERENCE is not None
    assert len(REFERENCE.edges) == 11 and REFERENCE.edges[0] == 0.0 and REFERENCE.edges[-1] == 1.0
    assert REFERENCE.fractions == pytest.approx([0.1] * 10)
    assert score_histogram([], "nothing") is None


@pytest.mark.parametrize(
    "card",
    [
        {"edges": [0.0, 0.5], "fractions": [0.5, 0.5]},  # one edge short
        {"edges": [0.0, 0.6, 0.5, 1.0], "fractions": [0.3, 0.3, 0.4]},  # not increasing
        {"edges": [0.1, 0.5, 1.0], "fractions": [0.5, 0.5]},  # not from 0
        {"edges": [0.0, 0.5, 1.0], "fractions": [0.5, 0.6]},  # not summing to 1
    ],
)
def test_a_malformed_histogram_is_refused(card: dict[str, list[float]]) -> None:
    with pytest.raises(ValueError):
        ScoreHistogram.model_validate({**card, "n": 10, "source": "test"})


def entry(
    verdict: str, score: float = 0.3, days: float = 0, model: tuple[str, str] = MODEL
) -> AnalysedStudy:
    return AnalysedStudy(verdict, score, *model, NOW - timedelta(days=days))


@pytest.mark.parametrize(
    ("verdicts", "not_ct", "outside", "warnings"),
    [
        ([N, N, F, X], (1, 4), (0, 4), (True, False)),
        ([N] * 7 + [X, R, R], (1, 10), (2, 10), (False, False)),
        ([N] * 6 + [R] * 4, (0, 10), (4, 10), (False, True)),
        ([X], (1, 1), (0, 1), (True, False)),
    ],
)
def test_refusal_shares(
    verdicts: list[str],
    not_ct: tuple[int, int],
    outside: tuple[int, int],
    warnings: tuple[bool, bool],
) -> None:
    shares = refusal_shares([entry(v) for v in verdicts], bound=0.2)
    for answer, (k, n), warning in zip((X, R), (not_ct, outside), warnings, strict=True):
        share = shares[answer].share
        assert (share.successes, share.total, share.estimate) == (k, n, k / n)
        assert share.lower is not None and share.upper is not None
        assert share.lower <= k / n <= share.upper
        assert shares[answer].warning is warning


def test_which_studies_count_where() -> None:
    assert REFERENCE is not None
    rows = [
        entry(N, 0.2, days=2),  # W50, recent
        entry(F, 0.9, days=3),  # W50, recent
        entry(X, 0.0, days=3),  # W50: a refusal, no score
        entry(N, 0.2, days=10),  # W49, recent
        entry(N, 0.2, days=40),  # W44: older than the 28 days
        entry(N, 0.2, days=2, model=("cspine", "older")),  # another model: no PSI
    ]
    report = drift(
        rows, MODEL, REFERENCE, now=NOW, recent_days=28, psi_bound=0.2, refusal_bound=0.2
    )
    assert report.unavailable is None and report.model == "cspine 2026.12.1"
    assert report.recent is not None and report.recent.n == 3
    assert {week: figure.n for week, figure in report.by_week.items()} == {
        "2026-W44": 1,
        "2026-W49": 1,
        "2026-W50": 2,
    }
    # Refusals: every analysed entry, any model.
    w50 = report.refusals_by_week["2026-W50"]
    assert (w50[X].share.successes, w50[X].share.total) == (1, 4)
    psis, shares = drift_samples(report)
    windows = {labels["window"] for labels, _ in psis}
    assert windows == {"last_28d", "2026-W44", "2026-W49", "2026-W50"}
    assert ({"week": "2026-W50", "answer": X, "bound": "estimate"}, 0.25) in shares


@pytest.mark.parametrize(
    ("model", "reference", "reason"),
    [(None, REFERENCE, NO_MODEL), (MODEL, None, NO_REFERENCE)],
    ids=["no model", "no reference"],
)
def test_without_a_reference_psi_is_left_out_with_the_reason(
    model: tuple[str, str] | None, reference: ScoreHistogram | None, reason: str
) -> None:
    report = drift(
        [entry(N), entry(X)], model, reference, now=NOW, recent_days=28, psi_bound=0.2,
        refusal_bound=0.2,
    )  # fmt: skip
    assert report.unavailable == reason
    assert report.recent is None and report.by_week == {}
    assert report.refusals_by_week["2026-W50"][X].share.estimate == 0.5
    psis, shares = drift_samples(report)
    assert psis == [] and shares
