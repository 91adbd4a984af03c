"""Numbers for a new patient: per held-out CT series, with intervals and product-level counts."""

from __future__ import annotations

from typing import Any

import numpy as np

from ml_model.evaluation.metrics import bootstrap_intervals, compute_metrics, product_metrics
from ml_model.inference.verdict import triage_result

SUMMARY_KEYS = ("auc", "recall", "specificity", "accuracy")


def product_results(probs: np.ndarray, threshold: float, accepted: np.ndarray) -> list[str]:
    """The answer strings the product would show, through the one verdict function."""
    return [
        triage_result(float(p), threshold, bool(a)) for p, a in zip(probs, accepted, strict=True)
    ]


def held_out_report(
    labels: np.ndarray,
    probs: np.ndarray,
    accepted: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Model metrics at ``threshold``, 95 % intervals over base slices, and what the product
    answers (gate included)."""
    y = np.asarray(labels).astype(int)
    model = compute_metrics(y, probs, threshold)
    product = product_metrics(y, product_results(probs, threshold, accepted))
    return {
        "files": len(y),
        "base_slices": {
            "fracture": len({g for g, t in zip(groups, y, strict=True) if t == 1}),
            "normal": len({g for g, t in zip(groups, y, strict=True) if t == 0}),
        },
        "model": model,
        "intervals_95": bootstrap_intervals(y, probs, groups, threshold, seed=seed),
        "refused": product["refused"],
        "product": product,
        "summary": {
            **{k: model[k] for k in SUMMARY_KEYS},
            "product_recall": product["recall"],
            "product_specificity": product["specificity"],
            "refused": product["refused"],
        },
    }


def series_report(
    labels: np.ndarray,
    oof: np.ndarray,
    oof_gate: np.ndarray,
    groups: np.ndarray,
    folds: dict[str, dict[str, Any]],
    seed: int = 0,
) -> dict[str, Any]:
    """Leave-one-series-out report: each series scored by the model that never saw it, at
    the threshold that model chose on its own epoch-choosing slices."""
    report = {}
    for name, fold in folds.items():
        index = fold["index"]
        accepted = oof_gate[index] >= fold["gate_threshold"]
        report[name] = held_out_report(
            labels[index], oof[index], accepted, groups[index], fold["threshold"], seed
        ) | {"threshold": fold["threshold"], "series": name}
    return report
