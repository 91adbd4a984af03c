"""The CT gate: is this image a CT slice at all? ("Not a CT slice" otherwise.)

A logistic regression on image statistics that any runtime can compute in a few
operations: the grey-level distribution (cumulative histogram), the share of pure
black and saturated pixels, the distribution of edge strengths and an 8x8 thumbnail.
CT slices exported in a fixed window are stereotyped in exactly these terms (black
background, saturated bone, tissue peaks, a body in the middle); photos, charts,
documents, noise, shapes and other modalities are not. It is trained with explicit
negatives (``ml_model.data.negatives``) and CT slices under realistic perturbations, and
its threshold comes from out-of-fold scores with whole CT series held out. It does
not depend on the fracture network, so every bundle carries the same kind of gate,
and the exported graph computes it too (:func:`gate_logit_tf`).
"""

from __future__ import annotations

import functools
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_model.bundle import GATE_FILE

if TYPE_CHECKING:
    import tensorflow as tf

# TensorFlow is imported inside the functions that build graphs, never at module level:
# the server loads a CTGate (its threshold) without TensorFlow when the forward runs
# elsewhere (ONNX Runtime, TF Serving).

GREY_EDGES = tuple(k / 32.0 for k in range(1, 32))
EDGE_STRENGTHS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32)
THUMBNAIL = 8
FEATURE_NAMES = (
    [f"grey>={e:.3f}" for e in GREY_EDGES]
    + ["black", "saturated"]
    + [f"edge>={e}" for e in EDGE_STRENGTHS]
    + [f"thumb{r}{c}" for r in range(THUMBNAIL) for c in range(THUMBNAIL)]
)


class GateFileError(ValueError):
    """The bundle's gate file is missing or unreadable."""


def gate_features_tf(images: tf.Tensor) -> tf.Tensor:
    """Float images (N, S, S, C) in 0-255 -> gate features (N, 103)."""
    import tensorflow as tf

    gray = tf.cast(images, tf.float32)[..., 0] / 255.0
    grey = [tf.reduce_mean(tf.cast(gray >= e, tf.float32), axis=(1, 2)) for e in GREY_EDGES]
    black = tf.reduce_mean(tf.cast(gray <= 1.0 / 255.0, tf.float32), axis=(1, 2))
    saturated = tf.reduce_mean(tf.cast(gray >= 254.0 / 255.0, tf.float32), axis=(1, 2))
    dy = gray[:, 1:, :-1] - gray[:, :-1, :-1]
    dx = gray[:, :-1, 1:] - gray[:, :-1, :-1]
    magnitude = tf.sqrt(dx * dx + dy * dy)
    edges = [
        tf.reduce_mean(tf.cast(magnitude >= e, tf.float32), axis=(1, 2)) for e in EDGE_STRENGTHS
    ]
    # Block means (average pooling: a TFLite builtin, unlike area resizing).
    block = int(images.shape[1]) // THUMBNAIL
    thumb = tf.nn.avg_pool2d(gray[..., tf.newaxis], block, block, "VALID")[
        :, :THUMBNAIL, :THUMBNAIL
    ]
    thumb = tf.reshape(thumb, (-1, THUMBNAIL * THUMBNAIL))
    return tf.concat([tf.stack([*grey, black, saturated, *edges], axis=1), thumb], axis=1)


@functools.cache
def _features_fn() -> Callable[[tf.Tensor], tf.Tensor]:
    """:func:`gate_features_tf` as one ``tf.function`` (one trace per input size: the
    pooling is static), built on first use."""
    import tensorflow as tf

    return tf.function(gate_features_tf)


def gate_features(images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Numpy convenience over :func:`gate_features_tf`, in bounded batches."""
    import tensorflow as tf

    images = np.asarray(images)
    return (
        np.concatenate(
            [
                _features_fn()(tf.convert_to_tensor(images[i : i + batch])).numpy()
                for i in range(0, len(images), batch)
            ]
        )
        if len(images)
        else np.zeros((0, len(FEATURE_NAMES)), np.float32)
    )


@dataclass(frozen=True)
class CTGate:
    """Standardise, then a linear logit; a slice is CT when ``logit >= threshold``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    details: dict[str, Any] = field(default_factory=dict)

    def logits(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return z @ self.coef + self.intercept

    def distance(self, logits: np.ndarray) -> np.ndarray:
        """The API's ``ood_distance``: exp(threshold - logit); <= 1 means "a CT slice"."""
        return np.exp(np.clip(self.threshold - np.asarray(logits, np.float64), -50.0, 50.0))

    def logit_tf(self, features: tf.Tensor) -> tf.Tensor:
        """The same logit in a TensorFlow graph (float32: TFLite has no float64 kernels)."""
        import tensorflow as tf

        weights = tf.constant((self.coef / self.scale).astype(np.float32))
        bias = float(self.intercept - np.sum(self.coef * self.mean / self.scale))
        return tf.linalg.matvec(tf.cast(features, tf.float32), weights) + bias

    def save(self, model_dir: str | Path) -> None:
        np.savez(
            Path(model_dir, GATE_FILE),
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=np.array(self.intercept),
            threshold=np.array(self.threshold),
            details=np.array(json.dumps(self.details)),
        )

    @classmethod
    def load(cls, model_dir: str | Path) -> CTGate:
        path = Path(model_dir, GATE_FILE)
        if not path.is_file():
            raise GateFileError(f"{path}: the bundle has no CT gate file")
        try:
            with np.load(path, allow_pickle=False) as stored:
                gate = cls(
                    mean=stored["mean"].astype(np.float64),
                    scale=stored["scale"].astype(np.float64),
                    coef=stored["coef"].astype(np.float64),
                    intercept=float(stored["intercept"]),
                    threshold=float(stored["threshold"]),
                    details=json.loads(str(stored["details"])),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise GateFileError(f"{path}: unreadable CT gate file ({exc})") from exc
        n = gate.coef.shape
        if gate.mean.shape != n or gate.scale.shape != n or len(n) != 1:
            raise GateFileError(f"{path}: mean, scale and coef must be vectors of one length")
        if not (np.isfinite(gate.threshold) and np.isfinite(gate.intercept)):
            raise GateFileError(f"{path}: threshold and intercept must be finite numbers")
        return gate
