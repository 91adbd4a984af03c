"""The RSNA 2022 study model's figures: the competition metric, AUC / sensitivity /
specificity per output with patient-bootstrap 95 % intervals, the level-matched specificity
of the slice scores, and operating points chosen on out-of-fold scores.

A figure that the data cannot give (one class only, no slice at a level, no labelled slice)
is ``None`` with a ``reason`` beside it, never an exception and never a made-up number: the
real sample (5 studies, all patients positive, every sampled slice labelled 0) must still
produce a complete report.

Conventions: positive = fracture; a score >= threshold is called positive; label -1 means
"unknown" and is left out of every slice figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ml_model.card import STUDY_OUTPUTS, VERTEBRAE
from ml_model.evaluation.metrics import choose_operating_points

# The competition's weights: patient_overall 7 (negative) / 14 (positive), each of C1-C7
# 1 / 2, in STUDY_OUTPUTS order.
NEGATIVE_WEIGHTS = np.array([7.0] + [1.0] * len(VERTEBRAE))
POSITIVE_WEIGHTS = np.array([14.0] + [2.0] * len(VERTEBRAE))
LOG_LOSS_EPS = 1e-15
BOOTSTRAP_ROUNDS = 1000
DEFAULT_TARGET = 0.9  # the operating points' recall / specificity target


def _undefined(reason: str) -> dict[str, Any]:
    return {"value": None, "reason": reason}


# ---------------------------------------------------------------------------- the metric


def competition_weights(labels: np.ndarray) -> np.ndarray:
    """(N, 8) weights of (N, 8) labels in STUDY_OUTPUTS order."""
    y = np.asarray(labels, np.float64)
    return np.where(y > 0.5, POSITIVE_WEIGHTS, NEGATIVE_WEIGHTS)


def competition_log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """The RSNA 2022 weighted multi-label log loss: every (study, output) pair is a row,
    weighted 14 / 7 (patient_overall positive / negative) or 2 / 1 (each vertebra), and the
    score is sum(w * bce) / sum(w) over all rows. Probabilities are clipped to 1e-15."""
    y = np.asarray(labels, np.float64)
    p = np.clip(np.asarray(probabilities, np.float64), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    width = len(STUDY_OUTPUTS)
    if y.ndim != 2 or y.shape[1] != width or p.shape != y.shape:
        raise ValueError(f"expected labels and probabilities of shape (N, {width})")
    if len(y) == 0:
        raise ValueError("no studies to score")
    w = competition_weights(y)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float((w * bce).sum() / w.sum())


def competition_log_loss_report(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """:func:`competition_log_loss` as a card entry: value and the studies it rests on."""
    if len(np.asarray(labels)) == 0:
        return _undefined("no studies")
    return {
        "value": competition_log_loss(labels, probabilities),
        "studies": len(np.asarray(labels)),
        "definition": "sum(w * bce) / sum(w) over every (study, output); w = 14 / 7 for "
        "patient_overall positive / negative, 2 / 1 for each of C1-C7",
    }


# ---------------------------------------------------------------------------- AUC & co.


def _weighted_auc(y: np.ndarray, inverse: np.ndarray, unique: int, weights: np.ndarray) -> float:
    """AUC with sample multiplicities (ties count one half); NaN with one class only."""
    pos = np.bincount(inverse, weights=weights * (y == 1), minlength=unique)
    neg = np.bincount(inverse, weights=weights * (y == 0), minlength=unique)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (total_pos * total_neg))


def auc(labels: np.ndarray, scores: np.ndarray) -> tuple[float | None, str | None]:
    """(ROC AUC, None) or (None, why not)."""
    y = np.asarray(labels).astype(int)
    p = np.asarray(scores, np.float64)
    if len(y) == 0:
        return None, "no cases"
    if (y == 1).sum() == 0 or (y == 0).sum() == 0:
        return (
            None,
            f"one class only ({int((y == 1).sum())} positive, {int((y == 0).sum())} negative)",
        )
    _, inverse = np.unique(p, return_inverse=True)
    return _weighted_auc(y, inverse, int(inverse.max()) + 1, np.ones(len(y))), None


def _rate(hits: float, total: float) -> float:
    return float(hits / total) if total > 0 else float("nan")


def _patient_draws(patients: np.ndarray, rounds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(index of each row's patient, (rounds, P) multiplicities of every patient per draw)."""
    names, index = np.unique(np.asarray(patients).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    counts = (
        np.stack(
            [
                np.bincount(rng.integers(0, len(names), len(names)), minlength=len(names))
                for _ in range(rounds)
            ]
        )
        if len(names)
        else np.zeros((rounds, 0), int)
    )
    return index, counts


def _interval(draws: Sequence[float]) -> tuple[list[float] | None, int]:
    values = np.asarray(draws, np.float64)
    valid = values[np.isfinite(values)]
    if len(valid) < 2:
        return None, len(valid)
    return [float(np.percentile(valid, 2.5)), float(np.percentile(valid, 97.5))], len(valid)


def binary_report(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    patients: np.ndarray | None = None,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC, sensitivity and specificity at ``threshold`` with 95 % percentile intervals from
    ``rounds`` bootstrap draws of patients (all rows of a drawn patient move together; rows
    without ``patients`` are their own patient). Rows labelled -1 are left out. Every figure
    the data cannot give is None, its reason under ``undefined``."""
    y_all = np.asarray(labels).astype(int)
    keep = y_all >= 0
    y = y_all[keep]
    p = np.asarray(scores, np.float64)[keep]
    groups = np.arange(len(y_all)) if patients is None else np.asarray(patients)
    groups = groups[keep]
    called = p >= threshold
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    report: dict[str, Any] = {
        "n": len(y),
        "positives": positives,
        "negatives": negatives,
        "patients": len(np.unique(groups.astype(str))),
        "threshold": float(threshold),
        "undefined": {},
    }
    value, reason = auc(y, p)
    report["auc"] = value
    if reason:
        report["undefined"]["auc"] = reason
    report["sensitivity"] = _rate((called & (y == 1)).sum(), positives) if positives else None
    if not positives:
        report["undefined"]["sensitivity"] = "no positive cases"
    report["specificity"] = _rate((~called & (y == 0)).sum(), negatives) if negatives else None
    if not negatives:
        report["undefined"]["specificity"] = "no negative cases"

    intervals: dict[str, list[float] | None] = {}
    if len(y):
        index, counts = _patient_draws(groups, rounds, seed)
        _, inverse = np.unique(p, return_inverse=True)
        unique = int(inverse.max()) + 1
        draws: dict[str, list[float]] = {"auc": [], "sensitivity": [], "specificity": []}
        for row in counts:
            w = row[index].astype(np.float64)
            draws["auc"].append(_weighted_auc(y, inverse, unique, w))
            draws["sensitivity"].append(
                _rate((w * (called & (y == 1))).sum(), (w * (y == 1)).sum())
            )
            draws["specificity"].append(
                _rate((w * (~called & (y == 0))).sum(), (w * (y == 0)).sum())
            )
        for key, values in draws.items():
            interval, valid = _interval(values)
            intervals[key] = interval if report[key] is not None else None
            if report[key] is not None and interval is None:
                report["undefined"][f"{key}_ci"] = f"only {valid} of {rounds} draws define it"
    report["ci_95"] = {k: intervals.get(k) for k in ("auc", "sensitivity", "specificity")}
    report["bootstrap"] = {"rounds": rounds, "resampled": "patients", "seed": seed}
    if not report["undefined"]:
        del report["undefined"]
    return report


def study_report(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: Mapping[str, float],
    patients: np.ndarray | None = None,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Per output of STUDY_OUTPUTS (labels and probabilities (N, 8)): :func:`binary_report`
    at that output's threshold (``thresholds[name]``, else patient_overall's), and the
    competition log loss over all of them."""
    y = np.asarray(labels, np.float64)
    p = np.asarray(probabilities, np.float64)
    default = float(thresholds.get(STUDY_OUTPUTS[0], 0.5))
    per_output = {
        name: binary_report(
            y[:, i], p[:, i], float(thresholds.get(name, default)), patients, rounds, seed + i
        )
        for i, name in enumerate(STUDY_OUTPUTS)
    }
    return {
        "studies": len(y),
        "competition_log_loss": competition_log_loss_report(y, p),
        "outputs": per_output,
    }


# ---------------------------------------------------------------------------- level matching


def _level_weights(levels: np.ndarray) -> np.ndarray:
    """(N, 7) multi-hot -> each slice's weight per vertebra (1 / vertebrae it shows)."""
    lv = np.asarray(levels, np.float64).reshape(len(levels), len(VERTEBRAE))
    shown = lv.sum(axis=1, keepdims=True)
    return np.divide(lv, shown, out=np.zeros_like(lv), where=shown > 0)


def _matched(
    p_called: np.ndarray, y: np.ndarray, weights: np.ndarray, w_row: np.ndarray
) -> tuple[float, float, np.ndarray, np.ndarray, np.ndarray]:
    """(level-matched specificity, share of fracture weight at levels with normal slices,
    fracture share per level, normal weight per level, specificity per level)."""
    fracture = (weights * (w_row * (y == 1))[:, None]).sum(axis=0)
    normal_rows = w_row * (y == 0)
    normal = (weights * normal_rows[:, None]).sum(axis=0)
    correct = (weights * (normal_rows * ~p_called)[:, None]).sum(axis=0)
    spec = np.divide(correct, normal, out=np.full(len(normal), np.nan), where=normal > 0)
    total = fracture.sum()
    share = fracture / total if total > 0 else np.zeros_like(fracture)
    usable = (share > 0) & (normal > 0)
    covered = float(share[usable].sum())
    matched = float((share[usable] * spec[usable]).sum() / covered) if covered > 0 else float("nan")
    return matched, covered, share, normal, spec


def level_matched_specificity(
    prob: np.ndarray,
    label: np.ndarray,
    levels: np.ndarray,
    threshold: float,
    patients: np.ndarray | None = None,
    rounds: int = BOOTSTRAP_ROUNDS,
    seed: int = 0,
) -> dict[str, Any]:
    """Specificity of slice scores over the no-fracture slices, reweighted so their
    vertebral levels follow the fracture slices' level distribution, beside the plain
    (overall) specificity and the gap (overall - level-matched).

    A slice showing k vertebrae counts 1/k at each. Specificity per level = the
    (weighted) share of normal slices at that level scored below ``threshold``; the matched
    figure is their mean weighted by the fracture slices' share per level, over the levels
    that have normal slices (``fracture_share_matched`` says how much of the fracture weight
    that covers). Slices labelled -1 are left out; slices with no level (all zero: level
    unknown, or no cervical vertebra in view) count in the overall figure only. A model that
    learned the level instead of the fracture calls the normal slices at the fracture levels
    positive: its matched specificity falls far below the overall one."""
    y_all = np.asarray(label).astype(int)
    keep = y_all >= 0
    y = y_all[keep]
    p_called = np.asarray(prob, np.float64)[keep] >= threshold
    lv = np.asarray(levels).reshape(len(y_all), len(VERTEBRAE))[keep]
    weights = _level_weights(lv)
    groups = (np.arange(len(y_all)) if patients is None else np.asarray(patients))[keep]
    normals = int((y == 0).sum())
    with_level = weights.sum(axis=1) > 0
    report: dict[str, Any] = {
        "threshold": float(threshold),
        "fracture_slices": int((y == 1).sum()),
        "fracture_slices_with_level": int(((y == 1) & with_level).sum()),
        "normal_slices": normals,
        "normal_slices_with_level": int(((y == 0) & with_level).sum()),
    }
    overall = _rate((~p_called & (y == 0)).sum(), normals)
    matched, covered, share, normal, spec = _matched(p_called, y, weights, np.ones(len(y)))
    report["overall_specificity"] = None if np.isnan(overall) else overall
    report["level_matched_specificity"] = None if np.isnan(matched) else matched
    report["gap"] = None if np.isnan(overall) or np.isnan(matched) else overall - matched
    report["fracture_share_matched"] = covered
    report["per_level"] = {
        name: {
            "fracture_share": float(share[i]),
            "normal_weight": float(normal[i]),
            "specificity": None if np.isnan(spec[i]) else float(spec[i]),
        }
        for i, name in enumerate(VERTEBRAE)
    }
    undefined = {}
    if normals == 0:
        undefined["overall_specificity"] = "no normal (label 0) slices"
    if np.isnan(matched):
        if report["fracture_slices_with_level"] == 0:
            undefined["level_matched_specificity"] = "no fracture slice with a known level"
        else:
            undefined["level_matched_specificity"] = (
                "no normal slice at the fracture slices' levels"
            )
    if report["gap"] is None:
        undefined["gap"] = "overall or level-matched specificity undefined"

    if report["gap"] is not None and len(y):
        index, counts = _patient_draws(groups, rounds, seed)
        draws: dict[str, list[float]] = {
            "level_matched_specificity": [],
            "gap": [],
            "overall_specificity": [],
        }
        for row in counts:
            w = row[index].astype(np.float64)
            m, *_ = _matched(p_called, y, weights, w)
            o = _rate((w * (~p_called & (y == 0))).sum(), (w * (y == 0)).sum())
            draws["level_matched_specificity"].append(m)
            draws["overall_specificity"].append(o)
            draws["gap"].append(o - m)
        report["ci_95"] = {key: _interval(values)[0] for key, values in draws.items()}
        report["bootstrap"] = {"rounds": rounds, "resampled": "patients", "seed": seed}
    if undefined:
        report["undefined"] = undefined
    return report


# ---------------------------------------------------------------------------- operating points


def operating_points(
    labels: np.ndarray,
    scores: np.ndarray,
    target: float = DEFAULT_TARGET,
    source: str = "out-of-fold",
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """(points, details). ``points["sensitive"]``: the highest threshold whose recall on
    these scores is >= ``target``; ``points["specific"]``: the lowest whose specificity is
    >= ``target`` (each {threshold, recall, specificity}), by the project's convention
    (``ml_model.evaluation.metrics.choose_operating_points``: midpoints between scores, the
    best secondary figure among thresholds meeting the target, the best reachable value when
    none does). Pass out-of-fold scores only; rows labelled -1 are left out.

    With one class only (or none) both thresholds fall back to 0.5, recall / specificity
    are None and ``details["reason"]`` says why."""
    y_all = np.asarray(labels).astype(int)
    keep = y_all >= 0
    y, p = y_all[keep], np.asarray(scores, np.float64)[keep]
    positives, negatives = int((y == 1).sum()), int((y == 0).sum())
    details: dict[str, Any] = {
        "target": target,
        "source": source,
        "positives": positives,
        "negatives": negatives,
    }
    if positives == 0 or negatives == 0:
        fallback = {"threshold": 0.5, "recall": None, "specificity": None}
        details["reason"] = (
            f"one class only ({positives} positive, {negatives} negative): "
            "thresholds fall back to 0.5"
        )
        return {"sensitive": dict(fallback), "specific": dict(fallback)}, details
    return dict(choose_operating_points(y, p, target)), details
