"""Classification metrics, operating points, calibration and their plots (fracture = positive)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

_EPS = 1e-7


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> list[list[int]]:
    """``[[tn, fp], [fn, tp]]`` for binary labels."""
    y_true, y_pred = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    tn = int(np.sum((y_true == 0) & (y_pred == 0)))
    fp = int(np.sum((y_true == 0) & (y_pred == 1)))
    fn = int(np.sum((y_true == 1) & (y_pred == 0)))
    tp = int(np.sum((y_true == 1) & (y_pred == 1)))
    return [[tn, fp], [fn, tp]]


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else 0.0


def binary_cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    y = np.asarray(y_true, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins: mean |accuracy - confidence| weighted by bin size."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = index == b
        if in_bin.any():
            ece += in_bin.mean() * abs(y[in_bin].mean() - p[in_bin].mean())
    return float(ece)


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Every number the evaluation reports, at one decision threshold (positive if p >= t)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    (tn, fp), (fn, tp) = cm = confusion(y, p >= threshold)
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    both_classes = len(np.unique(y)) == 2
    return {
        "n": len(y),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "precision": precision,
        "recall": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * precision * recall, precision + recall),
        "auc": float(roc_auc_score(y, p)) if both_classes else float("nan"),
        "loss": binary_cross_entropy(y, p),
        "brier": float(np.mean((p - y) ** 2)),
        "ece": expected_calibration_error(y, p),
        "confusion_matrix": cm,
    }


def choose_operating_points(
    y_true: np.ndarray, probs: np.ndarray, target: float = 0.99
) -> dict[str, dict[str, float]]:
    """Thresholds picked on validation data (positive if p >= threshold).

    ``sensitive``: recall >= target, then the best specificity.
    ``specific``: specificity >= target, then the best recall.
    A target that cannot be met falls back to the best reachable value. Candidates are
    midpoints between neighbouring scores, so a threshold never sits on a validation score;
    remaining ties go to the side that protects the primary metric (lower threshold for
    ``sensitive``, higher for ``specific``). On separable data both meet in the gap.
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probs, dtype=np.float64)
    scores = np.unique(p)
    candidates = np.concatenate(
        [[scores[0] / 2], (scores[:-1] + scores[1:]) / 2, [(scores[-1] + 1.0) / 2]]
    )
    rows = []
    for t in candidates:
        (tn, fp), (fn, tp) = confusion(y, p >= t)
        rows.append((float(t), _ratio(tp, tp + fn), _ratio(tn, tn + fp)))
    thresholds, recalls, specs = (np.array(c) for c in zip(*rows, strict=True))

    def pick(primary: np.ndarray, secondary: np.ndarray, lowest: bool) -> int:
        options = np.flatnonzero(primary >= min(target, primary.max()))
        options = options[secondary[options] == secondary[options].max()]
        options = options[primary[options] == primary[options].max()]
        return int(options.min() if lowest else options.max())

    chosen = {
        "sensitive": pick(recalls, specs, lowest=True),
        "specific": pick(specs, recalls, lowest=False),
    }
    return {
        name: {
            "threshold": float(thresholds[i]),
            "recall": float(recalls[i]),
            "specificity": float(specs[i]),
        }
        for name, i in chosen.items()
    }


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens over-confident scores, T < 1 sharpens."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    return 1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temperature))


def fit_temperature(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Temperature T minimising validation log-loss of sigmoid(logit / T) (grid search)."""
    grid = np.exp(np.linspace(np.log(0.25), np.log(8.0), 200))
    losses = [binary_cross_entropy(y_true, apply_temperature(probs, t)) for t in grid]
    return float(grid[int(np.argmin(losses))])


# --- plots -----------------------------------------------------------------------------


def plot_confusion_matrix(cm: list[list[int]], path: Path, title: str = "Confusion matrix") -> None:
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(np.array(cm), cmap="Blues")
    labels = ["normal", "fracture"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in cm) or 1
    for i in range(2):
        for j in range(2):
            colour = "white" if cm[i][j] > peak / 2 else "black"
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color=colour, fontsize=14)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_roc(y_true: np.ndarray, probs: np.ndarray, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    if len(np.unique(y_true)) == 2:
        fpr, tpr, _ = roc_curve(y_true, probs)
        auc = roc_auc_score(y_true, probs)
        ax.plot(fpr, tpr, label=f"AUC = {auc:.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="chance")
    _finish(
        fig,
        ax,
        path,
        "ROC curve",
        "false positive rate (1 - specificity)",
        "true positive rate (recall)",
        "lower right",
    )


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, path: Path, bins: int = 10) -> None:
    y, p = np.asarray(y_true, dtype=float), np.asarray(probs, dtype=float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    centres, observed = [], []
    for b in range(bins):
        if (index == b).any():
            centres.append(p[index == b].mean())
            observed.append(y[index == b].mean())
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    ax.plot(centres, observed, "o-", label=f"model (ECE {expected_calibration_error(y, p):.3f})")
    _finish(
        fig,
        ax,
        path,
        "Reliability curve",
        "predicted P(fracture)",
        "observed fraction of fractures",
        "upper left",
    )


def _finish(
    fig: Any, ax: Any, path: Path, title: str, xlabel: str, ylabel: str, legend: str
) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc=legend)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_history(history: dict[str, list[float]], path: Path) -> None:
    """Loss and accuracy per epoch, train vs validation (the seed's training curves)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key in zip(axes, ("loss", "accuracy"), strict=True):
        if key in history:
            ax.plot(history[key], label=f"train {key}")
        if f"val_{key}" in history:
            ax.plot(history[f"val_{key}"], label=f"validation {key}")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: dict[str, dict[str, Any]], keys: list[str]) -> str:
    """Rows of metrics as a Markdown table (the seed's train/validation table)."""
    header = "| | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys) + "\n"
    body = ""
    for name, values in rows.items():
        cells = [
            f"{values[k]:.3f}" if isinstance(values.get(k), float) else str(values.get(k))
            for k in keys
        ]
        body += f"| {name} | " + " | ".join(cells) + " |\n"
    return header + body


# --- new-patient reporting ---------------------------------------------------------------


def product_metrics(labels: np.ndarray, results: Sequence[str]) -> dict[str, Any]:
    """What the user gets, from the answer strings the product shows: a refused ("Not a CT
    slice" or "CT outside the model's range") fracture is a miss, a refused normal is no call
    (neither a true negative nor a false alarm)."""
    from ml_model.config import (
        RESULT_NEGATIVE,
        RESULT_OUT_OF_DISTRIBUTION,
        RESULT_OUTSIDE_RANGE,
        RESULT_POSITIVE,
    )

    y = np.asarray(labels).astype(int)
    # "CT outside the model's range" is no call either: refused as "Not a CT slice" is.
    r = np.where(np.asarray(results) == RESULT_OUTSIDE_RANGE, RESULT_OUT_OF_DISTRIBUTION, results)
    positives, negatives = y == 1, y == 0
    called_positive, called_negative = r == RESULT_POSITIVE, r == RESULT_NEGATIVE
    correct = (positives & called_positive) | (negatives & called_negative)
    return {
        "accuracy": _ratio(float(correct.sum()), float(len(y))),
        "recall": _ratio(float((positives & called_positive).sum()), float(positives.sum())),
        "specificity": _ratio(float((negatives & called_negative).sum()), float(negatives.sum())),
        "refused": int((r == RESULT_OUT_OF_DISTRIBUTION).sum()),
        "refused_fractures": int((positives & (r == RESULT_OUT_OF_DISTRIBUTION)).sum()),
        "refused_normals": int((negatives & (r == RESULT_OUT_OF_DISTRIBUTION)).sum()),
    }


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(roc_auc_score(y, p)) if 0 < y.sum() < len(y) else float("nan")


def bootstrap_intervals(
    labels: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, list[float]]:
    """95 % percentile intervals of AUC, recall and specificity, resampling base slices
    (augmented copies of a slice move together), stratified by class."""
    rng = np.random.default_rng(seed)
    y, p, g = np.asarray(labels).astype(int), np.asarray(probs, np.float64), np.asarray(groups)
    members: dict[int, list[np.ndarray]] = {0: [], 1: []}
    for group in np.unique(g):
        index = np.flatnonzero(g == group)
        members[int(y[index[0]])].append(index)
    draws: dict[str, list[float]] = {"auc": [], "recall": [], "specificity": []}
    for _ in range(rounds):
        chosen = [
            members[c][k]
            for c in (0, 1)
            if members[c]
            for k in rng.integers(0, len(members[c]), len(members[c]))
        ]
        index = np.concatenate(chosen)
        yy, pp = y[index], p[index] >= threshold
        draws["auc"].append(_auc(y[index], p[index]))
        draws["recall"].append(_ratio(float((pp & (yy == 1)).sum()), float((yy == 1).sum())))
        draws["specificity"].append(_ratio(float((~pp & (yy == 0)).sum()), float((yy == 0).sum())))
    return {
        key: [float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5))]
        if np.isfinite(v).any()
        else [float("nan"), float("nan")]
        for key, v in draws.items()
    }
