"""The RSNA figures against hand-computed values, and degenerate data that must give None
with a reason (never an exception)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_model.card import STUDY_OUTPUTS
from ml_model.evaluation.rsna_metrics import (
    auc,
    binary_report,
    competition_log_loss,
    level_matched_specificity,
    operating_points,
    study_report,
)


def NL(p: float) -> float:
    return -math.log(p)


@pytest.mark.parametrize(
    ("labels", "probs", "expected"),
    [
        # Constant bce: the weighted mean is that constant whatever the weights.
        ([[1, 1, 0, 0, 0, 0, 0, 0]], [[0.5] * 8], math.log(2)),
        # Weights 14 (patient positive), 2 (C1 positive), 1 x 6: (20 * -ln .9 + 2 * -ln .8) / 22
        (
            [[1, 1, 0, 0, 0, 0, 0, 0]],
            [[0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]],
            (20 * NL(0.9) + 2 * NL(0.8)) / 22,
        ),
        # A negative study adds weight 7 + 7 x 1 = 14 at -ln .8 each.
        (
            [[1, 1, 0, 0, 0, 0, 0, 0], [0] * 8],
            [[0.9, 0.8, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1], [0.2] * 8],
            (20 * NL(0.9) + 2 * NL(0.8) + 14 * NL(0.8)) / 36,
        ),
        # Patient wrong at 0.25 on a positive: weight 14 of 14 + 7 x 1 (vertebrae right at .9)
        ([[1, 0, 0, 0, 0, 0, 0, 0]], [[0.25] + [0.1] * 7], (14 * NL(0.25) + 7 * NL(0.9)) / 21),
    ],
)
def test_competition_log_loss(labels, probs, expected):
    assert competition_log_loss(np.array(labels), np.array(probs)) == pytest.approx(expected)


def test_competition_log_loss_clips_and_checks_shapes():
    assert np.isfinite(competition_log_loss(np.ones((1, 8)), np.zeros((1, 8))))
    with pytest.raises(ValueError, match=r"\(N, 8\)"):
        competition_log_loss(np.ones((1, 7)), np.ones((1, 7)))


@pytest.mark.parametrize(
    ("labels", "scores", "expected", "reason"),
    [
        ([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], 0.75, None),
        ([0, 1], [0.5, 0.5], 0.5, None),  # a tie counts one half
        ([0, 0, 1], [0.9, 0.8, 0.1], 0.0, None),
        ([1, 1, 1], [0.1, 0.2, 0.3], None, "one class only (3 positive, 0 negative)"),
        ([], [], None, "no cases"),
    ],
)
def test_auc(labels, scores, expected, reason):
    value, why = auc(np.array(labels), np.array(scores))
    assert why == reason
    assert value == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("threshold", "sensitivity", "specificity"), [(0.3, 1.0, 0.5), (0.5, 0.5, 1.0), (0.9, 0.0, 1.0)]
)
def test_binary_report_at_a_threshold(threshold, sensitivity, specificity):
    # The -1 row (unknown) is left out of every figure.
    report = binary_report(
        np.array([0, 0, 1, 1, -1]), np.array([0.1, 0.4, 0.35, 0.8, 0.99]), threshold, rounds=200
    )
    assert report["n"] == 4 and report["positives"] == 2 and report["negatives"] == 2
    assert report["auc"] == pytest.approx(0.75)
    assert report["sensitivity"] == pytest.approx(sensitivity)
    assert report["specificity"] == pytest.approx(specificity)
    assert "undefined" not in report
    for key in ("auc", "sensitivity", "specificity"):
        low, high = report["ci_95"][key]
        assert 0.0 <= low <= high <= 1.0


def test_bootstrap_resamples_patients_not_rows():
    # One patient holds every row: each draw is that patient, so the interval is the point.
    report = binary_report(
        np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), 0.3, np.array(["p"] * 4)
    )
    assert report["patients"] == 1
    assert report["ci_95"]["auc"] == [pytest.approx(0.75), pytest.approx(0.75)]
    assert report["ci_95"]["specificity"] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_binary_report_on_one_class_gives_reasons():
    report = binary_report(np.ones(5), np.linspace(0.1, 0.9, 5), 0.5, rounds=50)
    assert report["auc"] is None and report["specificity"] is None
    assert report["sensitivity"] == pytest.approx(0.6)
    assert report["undefined"]["auc"].startswith("one class only")
    assert report["undefined"]["specificity"] == "no negative cases"
    assert report["ci_95"]["auc"] is None and report["ci_95"]["specificity"] is None
    assert report["ci_95"]["sensitivity"] is not None
    empty = binary_report(np.full(3, -1), np.zeros(3), 0.5, rounds=10)
    assert empty["n"] == 0 and empty["auc"] is None and empty["sensitivity"] is None


def test_study_report_on_the_real_sample_shape():
    """Every study positive, vertebrae mixed: patient_overall has no AUC, the rest do."""
    y = np.zeros((5, 8))
    y[:, 0] = 1
    y[[0, 1], 2] = 1  # C2 fractured in two studies
    p = np.full((5, 8), 0.3)
    p[:, 2] = [0.9, 0.6, 0.2, 0.1, 0.4]
    report = study_report(y, p, {"patient_overall": 0.5}, np.arange(5), rounds=100)
    assert list(report["outputs"]) == list(STUDY_OUTPUTS)
    overall = report["outputs"]["patient_overall"]
    assert overall["auc"] is None and overall["sensitivity"] == 0.0
    assert report["outputs"]["C2"]["auc"] == pytest.approx(1.0)
    assert report["outputs"]["C1"]["auc"] is None  # no C1 fracture
    assert report["competition_log_loss"]["value"] == pytest.approx(competition_log_loss(y, p))


def _levels(*names: str) -> list[int]:
    return [int(f"C{i}" in names) for i in range(1, 8)]


def test_level_matched_specificity_exposes_a_level_shortcut():
    # Two fracture slices at C1; normal slices: two at C1 (one called positive), six at C5.
    label = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0, -1])
    prob = np.array([0.9, 0.8, 0.9, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.9])
    levels = np.array(
        [_levels("C1")] * 4 + [_levels("C5")] * 6 + [_levels("C5")]  # the -1 row is ignored
    )
    report = level_matched_specificity(prob, label, levels, 0.5, rounds=100)
    assert report["overall_specificity"] == pytest.approx(7 / 8)
    assert report["level_matched_specificity"] == pytest.approx(0.5)
    assert report["gap"] == pytest.approx(0.375)
    assert report["fracture_share_matched"] == pytest.approx(1.0)
    assert report["per_level"]["C1"]["fracture_share"] == 1.0
    assert report["per_level"]["C5"]["specificity"] == 1.0
    assert report["normal_slices"] == 8
    assert set(report["ci_95"]) == {"level_matched_specificity", "gap", "overall_specificity"}


def test_level_matched_specificity_splits_slices_over_their_levels():
    # Fractures at C1 and C2 (share 1/2 each); a normal slice showing C1+C2 (wrong) counts
    # 1/2 at each; one right normal at C1, one at C2: 2/3 at both levels.
    label = np.array([1, 1, 0, 0, 0])
    prob = np.array([0.9, 0.9, 0.9, 0.1, 0.1])
    levels = np.array(
        [_levels("C1"), _levels("C2"), _levels("C1", "C2"), _levels("C1"), _levels("C2")]
    )
    report = level_matched_specificity(prob, label, levels, 0.5, rounds=50)
    assert report["level_matched_specificity"] == pytest.approx(2 / 3)
    assert report["overall_specificity"] == pytest.approx(2 / 3)
    assert report["gap"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("label", "levels", "field", "reason"),
    [
        # Fracture at C7, normals only at C3: nothing to match.
        ([1, 0, 0], [_levels("C7"), _levels("C3"), _levels("C3")], "level_matched_specificity",
         "no normal slice at the fracture slices' levels"),
        # No level known anywhere (no segmentation).
        ([1, 0, 0], [_levels()] * 3, "level_matched_specificity",
         "no fracture slice with a known level"),
        # The real sample: every slice labelled 0.
        ([0, 0, 0], [_levels()] * 3, "level_matched_specificity",
         "no fracture slice with a known level"),
        ([1, 1], [_levels("C2")] * 2, "overall_specificity", "no normal (label 0) slices"),
    ],
)  # fmt: skip
def test_level_matched_specificity_degenerate(label, levels, field, reason):
    report = level_matched_specificity(
        np.full(len(label), 0.3), np.array(label), np.array(levels), 0.5
    )
    assert report[field] is None
    assert report["undefined"][field] == reason
    assert report["gap"] is None and "ci_95" not in report


def test_operating_points_on_out_of_fold_scores():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.6, 0.4, 0.7, 0.9])
    points, details = operating_points(labels, scores, target=0.9)
    assert points["sensitive"] == {
        "threshold": pytest.approx(0.3),
        "recall": 1.0,
        "specificity": pytest.approx(2 / 3),
    }
    assert points["specific"] == {
        "threshold": pytest.approx(0.65),
        "recall": pytest.approx(2 / 3),
        "specificity": 1.0,
    }
    assert details["source"] == "out-of-fold" and "reason" not in details


def test_operating_points_with_one_class_fall_back_with_a_reason():
    points, details = operating_points(np.zeros(4), np.linspace(0, 1, 4))
    assert points["sensitive"]["threshold"] == points["specific"]["threshold"] == 0.5
    assert points["sensitive"]["recall"] is None
    assert details["reason"].startswith("one class only (0 positive, 4 negative)")
