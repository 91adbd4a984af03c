"""The drift reference's re-run check (``ml_model.training.score_reference.compare``): a card
written from some out-of-fold scores agrees with those scores on every figure, and scores of
a different run (another model's, or noisier) are caught on the figures they change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ml_model.evaluation.metrics import (
    apply_temperature,
    choose_operating_points,
    compute_metrics,
    fit_temperature,
)
from ml_model.training.score_reference import compare
from ml_model.training.study_threshold import calibrate_study_threshold

SEED = 42


def first_run() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Out-of-fold scores of three series of base slices, 20 copies each (as the data)."""
    rng = np.random.default_rng(0)
    labels, groups, scores = [], [], []
    for series, (fractures, normals) in {"B10": (2, 25), "B11": (7, 48), "B12": (40, 18)}.items():
        for base, label in enumerate([1] * fractures + [0] * normals):
            centre = rng.beta(5, 3) if label else rng.beta(2, 4)
            for _copy in range(20):
                labels.append(label)
                groups.append(f"{series} ({base})")
                scores.append(float(np.clip(centre + rng.normal(0, 0.05), 0.001, 0.999)))
    return np.array(scores), np.array(labels), np.array(groups)


def card_of(oof: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """The card figures training writes from ``oof`` (the sections compare reads)."""
    temperature = fit_temperature(labels, oof)
    calibrated = apply_temperature(oof, temperature)
    points = choose_operating_points(labels, calibrated)
    study = calibrate_study_threshold(calibrated, labels, groups, seed=SEED)
    series = np.array([g.split(" ")[0] for g in groups])
    return {
        "temperature": temperature,
        "operating_points": points,
        "metrics": {
            "out_of_fold (pooled)": compute_metrics(labels, oof, points["sensitive"]["threshold"])
        },
        "leave_one_series_out": {
            name: {"model": compute_metrics(labels[series == name], oof[series == name], 0.5)}
            for name in sorted(set(series))
        },
        "study": {key: study[key] for key in ("top_k", "operating_points", "calibration")},
        "training": {"seed": SEED},
    }


def test_the_same_scores_agree_on_every_figure() -> None:
    oof, labels, groups = first_run()
    figures, study = compare(card_of(oof, labels, groups), oof, labels, groups)
    names = [figure.name for figure in figures]
    assert "pooled out-of-fold AUC" in names and "B11 AUC" in names
    assert "study threshold (sensitive)" in names and "slice threshold (specific)" in names
    assert all(figure.agrees and figure.difference < 1e-9 for figure in figures), figures
    assert study["score_histogram"].n == 400
    assert sum(study["score_histogram"].fractions) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("rerun", "caught"),
    [
        ("noisier", "pooled out-of-fold AUC"),  # another run: noise on every score
        ("sharper", "temperature"),  # the same ranking (every AUC kept), over-confident
    ],
)
def test_a_different_run_is_caught(rerun: str, caught: str) -> None:
    oof, labels, groups = first_run()
    card = card_of(oof, labels, groups)
    rng = np.random.default_rng(1)
    if rerun == "noisier":
        other = np.clip(oof + rng.normal(0, 0.25, oof.size), 0.001, 0.999)
    else:  # the same ranking, over-confident: logits doubled
        other = apply_temperature(oof, 0.5)
    figures, _ = compare(card, other, labels, groups)
    by_name = {figure.name: figure for figure in figures}
    assert not by_name[caught].agrees, by_name[caught].line()
