"""The study threshold: the study score (top-k mean of slice scores) that keeps a chosen
recall on synthetic studies assembled from out-of-fold slice scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_model.card import score_histogram, top_k_mean
from ml_model.evaluation.metrics import choose_operating_points
from ml_model.inference.study import DEFAULT_TOP_K, aggregate


def calibrate_study_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    studies: int = 400,
    slices_per_study: int = 40,
    fracture_slices: int = 3,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
) -> dict[str, Any]:
    """Pick the study threshold on synthetic series made of validation-slice scores.

    A normal study samples ``slices_per_study`` normal slices; a fracture study swaps
    ``fracture_slices`` of them for copies of one fracture slice (a fracture spans a
    few neighbouring slices). Returns both operating points, the recipe, and the synthetic
    study scores' histogram (``score_histogram``: drift monitoring's reference; half of the
    synthetic studies are fractures, so it is the score distribution at that prevalence).
    """
    rng = np.random.default_rng(seed)
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    normal = np.flatnonzero(labels == 0)
    fracture_groups = sorted({g for g, y in zip(groups, labels, strict=True) if y == 1})
    scores, truth = [], []
    for s in range(studies):
        chosen = list(rng.choice(normal, slices_per_study, replace=True))
        is_fracture = s % 2 == 1
        if is_fracture:
            group = fracture_groups[rng.integers(len(fracture_groups))]
            members = np.flatnonzero(groups == group)
            chosen[:fracture_slices] = rng.choice(members, fracture_slices, replace=True)
        scores.append(aggregate(probs[chosen], top_k))
        truth.append(int(is_fracture))
    points = choose_operating_points(np.array(truth), np.array(scores))
    return {
        "aggregation": top_k_mean(top_k),
        "top_k": top_k,
        "operating_points": points,
        "score_histogram": score_histogram(
            scores,
            f"{studies} synthetic studies (half with a fracture) of out-of-fold slice scores",
        ),
        "calibration": {
            "synthetic_studies": studies,
            "slices_per_study": slices_per_study,
            "fracture_slices_per_positive_study": fracture_slices,
            "source": "grouped-validation slices of the training split",
        },
    }
