"""The forward pass: uint8 slices in, calibrated P(fracture) and the CT gate's logit out.

A *forward* is anything with the :class:`Forward` shape. The product has three:
``forward_onnx.OnnxForward`` runs the bundle's ``model.onnx`` in this process (ONNX
Runtime, the server's default, no TensorFlow), :class:`KerasForward` runs ``model.keras``
in this process (TensorFlow, the reference), and ``forward_tfserving.TFServingForward``
asks TF Serving for exactly the same two outputs. The exported SavedModel's signature and
model.onnx are both built from :func:`serving_function` below, so all three compute one
graph. ``batching.BatchedForward`` wraps any of them. Everything after the
forward (thresholds, the gate's decision, study aggregation) is ``core.InferenceCore``'s.

A study bundle's model (``ml_model.architectures.rsna_slice``) has several outputs
({``fracture``, ``vertebrae``, ``embedding``}); its serving graph also returns each slice's
features for the study head (``slice_features`` (N, F), computed in the graph by
``rsna_slice.slice_features_tf``), and every forward carries them in
:attr:`ForwardOutput.features` (None for a slice bundle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from ml_model.bundle import (
    FRACTURE_OUTPUT,
    KERAS_FILE,
    SERVING_FEATURES_OUTPUT,
    SERVING_GATE_OUTPUT,
    SERVING_OUTPUT,
)

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from ml_model.inference.bundle import Bundle
    from ml_model.inference.gate import CTGate

# Bounded chunks: a 1000-image call would otherwise hold ~0.6 GB of float activations at
# once and run slower per image than batches that fit in cache.
MAX_FORWARD_BATCH = 64


class ModelUnavailableError(RuntimeError):
    """The model cannot answer right now (model server down, shutting down): the API
    answers ``status_code`` (503, or 502 for a bad answer from the model server)."""

    def __init__(self, detail: str, status_code: int = 503) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


@dataclass(frozen=True)
class ForwardOutput:
    """Per image: calibrated P(fracture) and the CT gate's logit (both float64, (N,)), and
    for a study bundle the slice's features for the study head (float32 (N, F), else None)."""

    probability: np.ndarray
    ct_logit: np.ndarray
    features: np.ndarray | None = None
    # Added by the inference core, not by a forward (issue 26): for each row the bundle's
    # gate refused, whether the "CT in any window" gate takes it for CT, and why the model
    # cannot judge it ("window" / "region"); "" for the other rows. None: not asked.
    outside_range: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.probability)

    def rows(self, start: int, stop: int) -> ForwardOutput:
        features = None if self.features is None else self.features[start:stop]
        outside = None if self.outside_range is None else self.outside_range[start:stop]
        return ForwardOutput(
            self.probability[start:stop], self.ct_logit[start:stop], features, outside
        )

    @staticmethod
    def concat(parts: list[ForwardOutput]) -> ForwardOutput:
        features = [p.features for p in parts if p.features is not None]
        if features and len(features) != len(parts):
            raise ValueError("cannot join outputs with and without slice features")
        outside = [p.outside_range for p in parts if p.outside_range is not None]
        return ForwardOutput(
            np.concatenate([p.probability for p in parts]),
            np.concatenate([p.ct_logit for p in parts]),
            np.concatenate(features) if features else None,
            np.concatenate(outside) if len(outside) == len(parts) else None,
        )

    def check(self, count: int) -> ForwardOutput:
        """This output, if it has ``count`` finite rows; ValueError otherwise."""
        shapes = (self.probability.shape, self.ct_logit.shape)
        if shapes != ((count,), (count,)):
            raise ValueError(f"expected {count} results per output, got shapes {shapes}")
        if not (np.all(np.isfinite(self.probability)) and np.all(np.isfinite(self.ct_logit))):
            raise ValueError("the model returned a non-finite value")
        if self.features is not None:
            if self.features.ndim != 2 or len(self.features) != count:
                raise ValueError(
                    f"expected {count} rows of slice features, got shape {self.features.shape}"
                )
            if not np.all(np.isfinite(self.features)):
                raise ValueError("the model returned a non-finite slice feature")
        return self


def as_features(values: object) -> np.ndarray:
    """A forward's slice features as float32 (N, F)."""
    array = np.asarray(values, np.float32)
    return array.reshape(len(array), -1)


@runtime_checkable
class Forward(Protocol):
    """uint8 images (N, S, S, 3) -> :class:`ForwardOutput`; thread-safe."""

    def __call__(self, images: np.ndarray) -> ForwardOutput: ...

    def is_ready(self) -> bool:
        """Whether it can answer now (a remote model server is reachable)."""
        ...

    def close(self) -> None: ...


def fracture_output(outputs: object) -> object:
    """P(fracture) among a model's outputs: the ``fracture`` entry of a several-output
    (study bundle) model's dict, else the one output."""
    if isinstance(outputs, dict):
        return outputs[FRACTURE_OUTPUT]
    return outputs


def serving_function(
    model: keras.Model, temperature: float, gate: CTGate
) -> tuple[Callable[[tf.Tensor], dict[str, tf.Tensor]], keras.Model]:
    """The bundle's forward as one TensorFlow function: uint8 (N, S, S, 3) ->
    {``probability``: calibrated P(fracture) (N, 1), ``ct_logit``: the gate's logit (N, 1)}
    and, for a study bundle's several-output model, ``slice_features`` (N, F) for the study
    head (``rsna_slice.slice_features_tf`` of the raw outputs, before calibration).

    The uint8 -> float cast, scaling, spine crop, temperature and the CT gate (its own
    backbone and image statistics of the whole input, nothing of the fracture network) all
    live in the graph. The SavedModel (TF Serving, TFLite) exports this function and
    :class:`KerasForward` runs it: one graph. Returns the function and the Keras model it
    calls (an exporter must track it).
    """
    import tensorflow as tf

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(image, tf.float32)
        outputs = model(pixels, training=False)
        probability = fracture_output(outputs)
        if temperature != 1.0:
            # float32 throughout: TFLite has no float64 kernels.
            p = tf.clip_by_value(tf.cast(probability, tf.float32), 1e-7, 1 - 1e-7)
            probability = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / temperature)
        served = {
            SERVING_OUTPUT: probability,
            SERVING_GATE_OUTPUT: gate.logit_tf(pixels)[:, tf.newaxis],
        }
        if isinstance(outputs, dict):
            from ml_model.architectures.rsna_slice import slice_features_tf

            served[SERVING_FEATURES_OUTPUT] = tf.cast(slice_features_tf(outputs), tf.float32)
        return served

    return serve, model


def has_features(model: keras.Model) -> bool:
    """Whether ``model`` is a study bundle's several-output slice model (its serving graph
    returns ``slice_features``)."""
    return isinstance(model.output, dict)


class KerasForward:
    """The bundle's ``model.keras`` run in this process by TensorFlow: one traced
    ``tf.function`` for every batch size (no per-request retracing, no ``model.predict``)."""

    def __init__(self, model: keras.Model, temperature: float, gate: CTGate) -> None:
        import tensorflow as tf

        self.model = model
        self.img_size = int(model.input_shape[1])
        self.has_features = has_features(model)  # a study bundle's slice model
        serve, _ = serving_function(model, temperature, gate)
        spec = tf.TensorSpec([None, self.img_size, self.img_size, 3], tf.uint8)
        self._serve = tf.function(serve, input_signature=[spec])

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path) -> KerasForward:
        """The bundle's model.keras with its card's temperature and its CT gate."""
        from ml_model.architectures.layers import load_model
        from ml_model.inference.bundle import as_bundle

        loaded = as_bundle(bundle)
        model = load_model(Path(loaded.path, KERAS_FILE))
        return cls(model, loaded.card.temperature, loaded.gate)

    def __call__(self, images: np.ndarray) -> ForwardOutput:
        import tensorflow as tf

        images = np.asarray(images, np.uint8)
        expected = (self.img_size, self.img_size, 3)
        if images.ndim != 4 or images.shape[1:] != expected:
            # Checked here, not by TensorFlow: a tf.function called with a shape outside its
            # signature raises while holding its lock, and every later call would hang.
            raise ValueError(f"expected images of shape (N, {expected}), got {images.shape}")
        parts = []
        for start in range(0, len(images), MAX_FORWARD_BATCH):
            out = self._serve(tf.convert_to_tensor(images[start : start + MAX_FORWARD_BATCH]))
            features = out.get(SERVING_FEATURES_OUTPUT)
            parts.append(
                ForwardOutput(
                    out[SERVING_OUTPUT].numpy().reshape(-1).astype(np.float64),
                    out[SERVING_GATE_OUTPUT].numpy().reshape(-1).astype(np.float64),
                    None if features is None else as_features(features.numpy()),
                )
            )
        return ForwardOutput.concat(parts).check(len(images))

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        return None
