"""The CT gate: is this image a CT slice at all? ("Not a CT slice" otherwise.)

A logistic regression on two kinds of features of the whole input slice, neither of them
the fracture network's:

* **generic image features**: the first eleven blocks (0-10) of an ImageNet-trained
  EfficientNet-Lite0, run on the slice's grey channel average-pooled to about 128 x 128,
  each of four stages (blocks 2, 4, 7 and 10: 24 + 40 + 80 + 112 channels) averaged over the
  image. Their weights (batch norm folded in, ~0.7 M numbers) live in ``gate.npz``, apart
  from any fracture network, so every bundle carries the same gate;
* **103 image statistics** (:func:`gate_features_tf`): the grey-level distribution
  (cumulative histogram), the share of pure black and saturated pixels, the distribution of
  edge strengths and an 8x8 thumbnail.

It is trained with explicit negatives (``ml_model.data.negatives``) and CT slices under
realistic perturbations, and its threshold comes from out-of-fold scores with whole CT
series held out (``ml_model.training.gate_fit``). The exported graph computes it too
(:meth:`CTGate.logit_tf`: convolutions, depthwise convolutions, ReLU6, means and a matrix
product, all TFLite builtins).
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

from ml_model.bundle import ANY_WINDOW_GATE_FILE, GATE_FILE

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
# The backbone sees the grey channel average-pooled by input_size // GATE_SIDE (384 -> 128).
GATE_SIDE = 128
# EfficientNet's input scaling ((x - 127) / 128, as in the fracture network's backbone).
PIXEL_MEAN, PIXEL_STD = 127.0, 128.0
# Columns of ``backbone_spec``: kernel, stride, has a residual add, is a tap (averaged into
# the features).
SPEC_COLUMNS = ("kernel", "stride", "residual", "tap")


def ct_gate_margin(logits: np.ndarray, threshold: float) -> np.ndarray:
    """The API's ``ct_gate_margin``: exp(threshold - logit) per gate logit, so <= 1 is
    accepted as a CT slice and > 1 refused; the further above 1, the further from CT."""
    return np.exp(np.clip(threshold - np.asarray(logits, np.float64), -50.0, 50.0))


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


def _in_batches(
    fn: Callable[[tf.Tensor], tf.Tensor], images: np.ndarray, batch: int, width: int
) -> np.ndarray:
    """``fn`` (a ``tf.function`` of float images) over numpy images in bounded batches."""
    import tensorflow as tf

    images = np.asarray(images)
    if not len(images):
        return np.zeros((0, width), np.float32)
    return np.concatenate(
        [
            fn(tf.convert_to_tensor(images[i : i + batch], tf.float32)).numpy()
            for i in range(0, len(images), batch)
        ]
    )


def gate_features(images: np.ndarray, batch: int = 64) -> np.ndarray:
    """Numpy convenience over :func:`gate_features_tf`, in bounded batches."""
    return _in_batches(_features_fn(), images, batch, len(FEATURE_NAMES))


def gate_view_tf(images: tf.Tensor) -> tf.Tensor:
    """Float images (N, S, S, C) in 0-255 -> the backbone's view (N, S/k, S/k, 1): the grey
    channel average-pooled by k = max(1, S // GATE_SIDE), scaled as EfficientNet expects."""
    import tensorflow as tf

    gray = tf.cast(images, tf.float32)[..., :1]
    block = max(1, int(images.shape[1]) // GATE_SIDE)
    if block > 1:
        gray = tf.nn.avg_pool2d(gray, block, block, "VALID")
    return (gray - PIXEL_MEAN) / PIXEL_STD


def backbone_tf(view: tf.Tensor, weights: dict[str, np.ndarray]) -> tf.Tensor:
    """The gate's backbone on its view (N, H, W, 1): every tap block's output averaged over
    the image, concatenated (N, sum of tap channels). Batch norm is folded into ``weights``
    (``ml_model.training.gate_fit.imagenet_backbone``)."""
    import tensorflow as tf

    def relu6(x: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(x, 0.0, 6.0)

    def conv(x: tf.Tensor, name: str, stride: int = 1) -> tf.Tensor:
        kernel = tf.constant(weights[f"{name}_w"].astype(np.float32))
        return tf.nn.conv2d(x, kernel, stride, "SAME") + weights[f"{name}_b"].astype(np.float32)

    x = relu6(conv(view, "stem", 2))
    taps = []
    for index, (kernel, stride, residual, tap) in enumerate(weights["spec"].astype(int)):
        shortcut = x
        if f"block{index}_expand_w" in weights:
            x = relu6(conv(x, f"block{index}_expand"))
        depthwise = weights[f"block{index}_dw_w"].astype(np.float32)
        assert depthwise.shape[0] == kernel, "spec and weights disagree"
        x = tf.nn.depthwise_conv2d(x, tf.constant(depthwise), (1, stride, stride, 1), "SAME")
        x = relu6(x + weights[f"block{index}_dw_b"].astype(np.float32))
        x = conv(x, f"block{index}_project")
        if residual:
            x = x + shortcut
        if tap:
            taps.append(tf.reduce_mean(x, axis=(1, 2)))
    return tf.concat(taps, axis=1)


def _same_pad(x: np.ndarray, kernel: int, stride: int) -> tuple[np.ndarray, int, int]:
    """``x`` (N, H, W, C) padded as TensorFlow's "SAME" pads it, and the output's H, W."""
    out_h, out_w = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
    pad_h = max((out_h - 1) * stride + kernel - x.shape[1], 0)
    pad_w = max((out_w - 1) * stride + kernel - x.shape[2], 0)
    padding = ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
    return np.pad(x, padding), out_h, out_w


def _conv_np(x: np.ndarray, kernel: np.ndarray, stride: int, depthwise: bool) -> np.ndarray:
    """A "SAME" convolution (or depthwise convolution) in numpy, float32."""
    k = kernel.shape[0]
    if k == 1 and stride == 1 and not depthwise:
        return x @ kernel[0, 0]
    padded, out_h, out_w = _same_pad(x, k, stride)
    channels = kernel.shape[2] if depthwise else kernel.shape[3]
    out = np.zeros((x.shape[0], out_h, out_w, channels), np.float32)
    for i in range(k):
        for j in range(k):
            window = padded[:, i : i + stride * out_h : stride, j : j + stride * out_w : stride]
            out += window * kernel[i, j, :, 0] if depthwise else window @ kernel[i, j]
    return out


def features_numpy(images: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    """The gate's features (:meth:`CTGate.features_tf`: backbone taps + 103 statistics) in
    numpy alone, for float or uint8 images (N, S, S, C) in 0-255: what the core uses where
    no TensorFlow is installed (the server's image serves with ONNX Runtime)."""
    pixels = np.asarray(images, np.float32)
    n, side = pixels.shape[0], pixels.shape[1]
    gray = pixels[..., 0] / 255.0
    grey = [(gray >= e).mean(axis=(1, 2)) for e in GREY_EDGES]
    black = (gray <= 1.0 / 255.0).mean(axis=(1, 2))
    saturated = (gray >= 254.0 / 255.0).mean(axis=(1, 2))
    dy = gray[:, 1:, :-1] - gray[:, :-1, :-1]
    dx = gray[:, :-1, 1:] - gray[:, :-1, :-1]
    magnitude = np.sqrt(dx * dx + dy * dy)
    edges = [(magnitude >= np.float32(e)).mean(axis=(1, 2)) for e in EDGE_STRENGTHS]
    block = side // THUMBNAIL
    thumb = gray[:, : block * THUMBNAIL, : block * THUMBNAIL].reshape(
        n, THUMBNAIL, block, THUMBNAIL, block
    )
    statistics = np.concatenate(
        [
            np.stack([*grey, black, saturated, *edges], axis=1),
            thumb.mean(axis=(2, 4)).reshape(n, -1),
        ],
        axis=1,
    )
    view = pixels[..., :1]
    pool = max(1, side // GATE_SIDE)
    if pool > 1:
        cut = side // pool * pool
        view = (
            view[:, :cut, :cut]
            .reshape(n, cut // pool, pool, cut // pool, pool, 1)
            .mean(axis=(2, 4))
        )
    x = (view - PIXEL_MEAN) / PIXEL_STD
    w = {key: value.astype(np.float32) for key, value in weights.items() if key != "spec"}
    x = np.clip(_conv_np(x, w["stem_w"], 2, False) + w["stem_b"], 0.0, 6.0)
    taps = []
    for index, (kernel, stride, residual, tap) in enumerate(weights["spec"].astype(int)):
        shortcut = x
        if f"block{index}_expand_w" in w:
            x = np.clip(x @ w[f"block{index}_expand_w"][0, 0] + w[f"block{index}_expand_b"], 0, 6)
        x = _conv_np(x, w[f"block{index}_dw_w"], int(stride), True) + w[f"block{index}_dw_b"]
        x = np.clip(x, 0.0, 6.0) @ w[f"block{index}_project_w"][0, 0] + w[f"block{index}_project_b"]
        if residual:
            x = x + shortcut
        if tap:
            taps.append(x.mean(axis=(1, 2)))
        del kernel
    return np.concatenate([*taps, statistics], axis=1).astype(np.float32)


def _backbone_width(weights: dict[str, np.ndarray]) -> int:
    spec = weights["spec"].astype(int)
    return sum(int(weights[f"block{i}_project_b"].shape[0]) for i in range(len(spec)) if spec[i, 3])


@dataclass(frozen=True)
class CTGate:
    """Features (backbone taps + image statistics) -> standardise -> a linear logit; a slice
    is CT when ``logit >= threshold``."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    threshold: float
    backbone: dict[str, np.ndarray]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def feature_count(self) -> int:
        return _backbone_width(self.backbone) + len(FEATURE_NAMES)

    def features_tf(self, images: tf.Tensor) -> tf.Tensor:
        """Float images (N, S, S, C) in 0-255 -> the gate's features (N, taps + 103)."""
        import tensorflow as tf

        pixels = tf.cast(images, tf.float32)
        return tf.concat(
            [backbone_tf(gate_view_tf(pixels), self.backbone), gate_features_tf(pixels)], 1
        )

    @functools.cached_property
    def _features_fn(self) -> Callable[[tf.Tensor], tf.Tensor]:
        import tensorflow as tf

        return tf.function(self.features_tf)

    def features(self, images: np.ndarray, batch: int = 64) -> np.ndarray:
        """Numpy convenience over :meth:`features_tf`, in bounded batches (float32)."""
        return _in_batches(self._features_fn, images, batch, self.feature_count)

    def features_np(self, images: np.ndarray, batch: int = 16) -> np.ndarray:
        """:func:`features_numpy` (no TensorFlow) in bounded batches (float32)."""
        images = np.asarray(images)
        parts = [
            features_numpy(images[i : i + batch], self.backbone)
            for i in range(0, len(images), batch)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.feature_count), np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        """The logit of :meth:`features` rows, in float64 (the graph's reference)."""
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return z @ self.coef + self.intercept

    def logit_tf(self, images: tf.Tensor) -> tf.Tensor:
        """The gate's logit (N,) of float images (N, S, S, C) in 0-255, in a TensorFlow graph
        (float32: TFLite has no float64 kernels)."""
        import tensorflow as tf

        weights = tf.constant((self.coef / self.scale).astype(np.float32))
        bias = float(self.intercept - np.sum(self.coef * self.mean / self.scale))
        return tf.linalg.matvec(self.features_tf(images), weights) + bias

    def with_threshold(self, threshold: float, details: dict[str, Any]) -> CTGate:
        return CTGate(
            self.mean, self.scale, self.coef, self.intercept, threshold, self.backbone, details
        )

    def save(self, model_dir: str | Path) -> None:
        """Write ``gate.npz``: the weights. The threshold is stored once, in the model card
        (``gate.threshold``), which training writes beside it."""
        arrays = {
            "mean": self.mean,
            "scale": self.scale,
            "coef": self.coef,
            "intercept": np.array(self.intercept),
            "details": np.array(json.dumps(self.details)),
        } | {f"backbone/{name}": value for name, value in self.backbone.items()}
        np.savez(Path(model_dir, GATE_FILE), **arrays)  # type: ignore[arg-type]  # numpy stub

    def save_any_window(self, model_dir: str | Path) -> None:
        """Write ``ct_any_window.npz``: the linear part and threshold of a gate that shares
        the bundle gate's backbone (which is not stored again)."""
        np.savez(
            Path(model_dir, ANY_WINDOW_GATE_FILE),
            mean=self.mean,
            scale=self.scale,
            coef=self.coef,
            intercept=np.array(self.intercept),
            threshold=np.array(self.threshold),
            details=np.array(json.dumps(self.details)),
        )

    def any_window(self, model_dir: str | Path) -> CTGate | None:
        """The bundle's "CT in any window" gate on this gate's backbone (None: the bundle has
        none); ``GateFileError`` when the file is unreadable or does not fit the backbone."""
        path = Path(model_dir, ANY_WINDOW_GATE_FILE)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                gate = CTGate(
                    mean=stored["mean"].astype(np.float64),
                    scale=stored["scale"].astype(np.float64),
                    coef=stored["coef"].astype(np.float64),
                    intercept=float(stored["intercept"]),
                    threshold=float(stored["threshold"]),
                    backbone=self.backbone,
                    details=json.loads(str(stored["details"])),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise GateFileError(f"{path}: unreadable any-window gate file ({exc})") from exc
        if not gate.coef.shape == gate.mean.shape == gate.scale.shape == (self.feature_count,):
            raise GateFileError(f"{path}: does not fit the bundle gate's features")
        return gate

    @classmethod
    def load(cls, model_dir: str | Path, threshold: float) -> CTGate:
        """The bundle's gate weights with ``threshold``, the card's ``gate.threshold`` (the
        one place it is stored; ``Bundle.load`` reads both)."""
        path = Path(model_dir, GATE_FILE)
        if not path.is_file():
            raise GateFileError(f"{path}: the bundle has no CT gate file")
        try:
            with np.load(path, allow_pickle=False) as stored:
                backbone = {
                    key.split("/", 1)[1]: stored[key]
                    for key in stored.files
                    if key.startswith("backbone/")
                }
                gate = cls(
                    mean=stored["mean"].astype(np.float64),
                    scale=stored["scale"].astype(np.float64),
                    coef=stored["coef"].astype(np.float64),
                    intercept=float(stored["intercept"]),
                    threshold=float(threshold),
                    backbone=backbone,
                    details=json.loads(str(stored["details"])),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise GateFileError(f"{path}: unreadable CT gate file ({exc})") from exc
        n = gate.coef.shape
        if gate.mean.shape != n or gate.scale.shape != n or len(n) != 1:
            raise GateFileError(f"{path}: mean, scale and coef must be vectors of one length")
        if not (np.isfinite(gate.threshold) and np.isfinite(gate.intercept)):
            raise GateFileError(f"{path}: threshold and intercept must be finite numbers")
        try:
            width = gate.feature_count
        except (KeyError, IndexError, ValueError) as exc:
            raise GateFileError(
                f"{path}: no usable gate backbone ({exc!r}); refit the gate: "
                "python -m ml_model.training.gate_fit --bundle DIR --data DATA"
            ) from None
        if width != n[0]:
            raise GateFileError(
                f"{path}: {n[0]} coefficients for {width} features (backbone taps + "
                f"{len(FEATURE_NAMES)} statistics); refit the gate: "
                "python -m ml_model.training.gate_fit --bundle DIR --data DATA"
            )
        return gate
