"""Fitting the CT gate (``ml_model.inference.gate.CTGate``): a class-balanced logistic
regression on CT slices vs explicit non-CT negatives, and its threshold from out-of-fold
scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from ml_model.inference.gate import CTGate, gate_features


def fit_logistic(
    positives: np.ndarray, negatives: np.ndarray, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of a class-balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    model.fit((x - mean) / scale, y)
    return mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0])


def gate_inputs(model: Any, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """The gate's features for a fracture model: its embedding of the (cropped) slice and
    the image statistics of the whole input (N, D + 103)."""
    from ml_model.architectures.transfer import feature_extractor

    extractor = feature_extractor(model)
    forward = tf.function(lambda x: extractor(x, training=False))
    embeddings = np.concatenate(
        [
            forward(tf.cast(images[i : i + batch], tf.float32)).numpy()
            for i in range(0, len(images), batch)
        ]
    )
    return np.concatenate([embeddings, gate_features(images, batch)], axis=1)


def fit_ct_gate(model: Any, positives: np.ndarray, negatives: np.ndarray, c: float = 0.1) -> CTGate:
    """Fit the gate on a model's features of CT slices (positives) and non-CT images; its
    threshold is 0 (the balanced decision boundary) until :func:`gate_with_threshold`."""
    mean, scale, coef, intercept = fit_logistic(
        gate_inputs(model, positives), gate_inputs(model, negatives), c
    )
    return CTGate(
        mean, scale, coef, intercept, 0.0, {"c": c, "features": "embedding + image statistics"}
    )


def gate_with_threshold(
    gate: CTGate,
    ct_floor: float | None,
    train_negative_logits: np.ndarray,
    negatives: Sequence[Any],
    negative_logits: np.ndarray,
) -> CTGate:
    """Set the threshold halfway between the lowest out-of-fold CT logit (whole series held
    out, re-exported copies included) and the highest training-negative logit; if they
    overlap, just under the CT floor (accepting CT comes first). Records the margins and the
    held-out negatives' refusals per kind."""
    top_negative = float(np.max(train_negative_logits))
    if ct_floor is None:
        threshold, rule = 0.0, "decision boundary (no out-of-fold scores)"
    elif ct_floor > top_negative:
        threshold, rule = (
            (ct_floor + top_negative) / 2.0,
            "midpoint: lowest out-of-fold CT vs highest training negative",
        )
    else:
        threshold, rule = (
            ct_floor - 0.5,
            "0.5 under the lowest out-of-fold CT logit (classes overlap)",
        )
    refused: dict[str, dict[str, float]] = {}
    for kind in sorted({n.kind for n in negatives}):
        held = [i for i, n in enumerate(negatives) if n.kind == kind and n.held_out]
        if held:
            logits = negative_logits[held]
            refused[kind] = {
                "held_out": len(held),
                "refused": int((logits < threshold).sum()),
                "max_logit": float(logits.max()),
            }
    details = gate.details | {
        "threshold_rule": rule,
        "lowest_out_of_fold_ct_logit": ct_floor,
        "highest_training_negative_logit": top_negative,
        "held_out_negatives": refused,
    }
    return CTGate(gate.mean, gate.scale, gate.coef, gate.intercept, float(threshold), details)
