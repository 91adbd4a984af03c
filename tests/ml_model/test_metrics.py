"""Metrics against hand-computed values, and operating-point selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml_model.evaluation.metrics import (
    choose_operating_points,
    compute_metrics,
    confusion,
    expected_calibration_error,
    fit_temperature,
)

# 10 cases by hand at threshold 0.5: tp=3 (0.9, 0.8, 0.6), fn=1 (0.4),
# fp=2 (0.7, 0.55), tn=4 (0.1, 0.2, 0.3, 0.45).
Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.4, 0.7, 0.55, 0.1, 0.2, 0.3, 0.45])


def test_confusion_layout_is_tn_fp_fn_tp() -> None:
    assert confusion(Y, P >= 0.5) == [[4, 2], [1, 3]]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("accuracy", 7 / 10),
        ("precision", 3 / 5),
        ("recall", 3 / 4),
        ("specificity", 4 / 6),
        ("f1", 2 * (3 / 5) * (3 / 4) / (3 / 5 + 3 / 4)),
        # AUC by pair counting: positives beat negatives in 6 + 6 + 5 + 3 of 24 pairs.
        ("auc", 20 / 24),
        ("n", 10),
        ("threshold", 0.5),
    ],
)
def test_compute_metrics_by_hand(key: str, expected: float) -> None:
    assert compute_metrics(Y, P, 0.5)[key] == pytest.approx(expected)


def test_loss_is_mean_binary_cross_entropy() -> None:
    expected = -np.mean(Y * np.log(P) + (1 - Y) * np.log(1 - P))
    assert compute_metrics(Y, P, 0.5)["loss"] == pytest.approx(expected)


def test_metrics_with_one_class_do_not_crash() -> None:
    metrics = compute_metrics(np.ones(3), np.array([0.2, 0.7, 0.9]), 0.5)
    assert metrics["recall"] == pytest.approx(2 / 3) and math.isnan(metrics["auc"])


def test_sensitive_point_keeps_every_fracture() -> None:
    points = choose_operating_points(Y, P)
    sensitive = points["sensitive"]
    assert sensitive["recall"] == 1.0
    assert sensitive["threshold"] == pytest.approx(0.35)  # between 0.3 and the fracture at 0.4
    assert sensitive["specificity"] == pytest.approx(3 / 6)  # 0.45, 0.55, 0.7 flagged


def test_specific_point_has_no_false_positive() -> None:
    specific = choose_operating_points(Y, P)["specific"]
    assert specific["specificity"] == 1.0
    assert specific["threshold"] == pytest.approx(0.75)  # between the top normal (0.7) and 0.8
    assert specific["recall"] == pytest.approx(2 / 4)


def test_operating_points_on_separable_scores() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.8, 0.9])
    points = choose_operating_points(y, p)
    for name in ("sensitive", "specific"):
        assert points[name]["recall"] == 1.0 and points[name]["specificity"] == 1.0
        assert points[name]["threshold"] == pytest.approx(0.5)  # the middle of the gap


def test_ece_zero_for_perfectly_calibrated_bins() -> None:
    y = np.array([1, 0, 0, 0, 1, 1, 1, 0])
    p = np.array([0.25, 0.25, 0.25, 0.25, 0.75, 0.75, 0.75, 0.75])
    assert expected_calibration_error(y, p) == pytest.approx(0.0)


def test_temperature_softens_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    # Right 75% of the time but always 99% sure: the fitted temperature must be > 1.
    correct = rng.random(400) < 0.75
    p = np.where(correct == y.astype(bool), 0.99, 0.01)
    assert fit_temperature(y, p) > 1.5
