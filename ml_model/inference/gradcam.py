"""Grad-CAM of a bundle's Keras model: where the fracture logit is sensitive in the last
convolutional block, placed back in the frame of the whole slice.

:func:`gradcam_function` is the same computation as one graph for exporters (the bundle's
``gradcam.onnx``, run by ``forward_onnx.OnnxGradCam`` without TensorFlow). Keras and
TensorFlow are imported on first use only: importing this module costs neither.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_model.bundle import GRADCAM_BOX_OUTPUT, GRADCAM_OUTPUT, KERAS_FILE
from ml_model.inference.explain import place_cam

if TYPE_CHECKING:
    from collections.abc import Callable

    import keras
    import tensorflow as tf


def make_gradcam_fn(model: keras.Model, layer_name: str) -> Any:
    """Compile a function image batch (float32, 0-255) -> Grad-CAM maps at conv resolution."""
    import keras
    import tensorflow as tf

    from ml_model.inference.forward import fracture_output

    # P(fracture): the one output, or a study bundle's ``fracture`` output by name (a dict
    # output's flat order is alphabetical, so ``outputs[0]`` would be another head).
    fracture = fracture_output(model.output)
    grad_model = keras.Model(model.input, [model.get_layer(layer_name).output, fracture])

    @tf.function(reduce_retracing=True)
    def gradcam(images: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            conv, probability = grad_model(images, training=False)
            # Gradients of the logit, not the saturating sigmoid, keep the map informative.
            p = tf.clip_by_value(tf.reshape(probability, [-1]), 1e-7, 1 - 1e-7)
            logit = tf.math.log(p) - tf.math.log1p(-p)
        grads = tape.gradient(logit, conv)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        return tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1))

    return gradcam


def _spine_crop(model: keras.Model) -> Any:
    from ml_model.architectures.layers import SPINE_CROP_LAYER

    names = {layer.name for layer in model.layers}
    return model.get_layer(SPINE_CROP_LAYER) if SPINE_CROP_LAYER in names else None


def gradcam_function(
    model: keras.Model, layer_name: str
) -> Callable[[tf.Tensor], dict[str, tf.Tensor]]:
    """Grad-CAM as one function for exporters: uint8 images (N, S, S, 3) ->
    {``gradcam``: maps at conv resolution (N, h, w), ``crop_box``: the spine crop's
    normalised box (N, 4), for a model that crops}; :class:`GradCam` computes the same."""
    import tensorflow as tf

    fn = make_gradcam_fn(model, layer_name)
    crop = _spine_crop(model)

    def gradcam(image: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(image, tf.float32)
        outputs = {GRADCAM_OUTPUT: fn(pixels)}
        if crop is not None:
            outputs[GRADCAM_BOX_OUTPUT] = crop.boxes(pixels)
        return outputs

    return gradcam


class GradCam:
    """Grad-CAM for one uint8 image (S, S, 3), in the frame of the whole input: for a model
    that crops around the spine the map is placed back where the crop came from (zero
    elsewhere)."""

    def __init__(self, model: keras.Model, layer_name: str) -> None:
        self.img_size = int(model.input_shape[1])
        self._fn = make_gradcam_fn(model, layer_name)
        self._crop = _spine_crop(model)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        batch = tf.convert_to_tensor(np.asarray(image)[np.newaxis], tf.float32)
        cam = self._fn(batch).numpy()[0]
        if self._crop is None:
            return np.asarray(cam)
        box = self._crop.boxes(batch).numpy()[0]
        return place_cam(cam, box, self.img_size)


class LazyGradCam:
    """A :class:`GradCam` built on first use from the bundle's ``model.keras`` (seconds once):
    a forward that runs elsewhere (TF Serving) never loads Keras unless a heatmap is asked."""

    lazy = True  # warm-up leaves it alone

    def __init__(self, model_dir: str | Path, layer_name: str) -> None:
        self.model_dir = Path(model_dir)
        self.layer_name = layer_name
        self._lock = threading.Lock()
        self._gradcam: GradCam | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._gradcam is None:
                from ml_model.architectures.layers import load_model

                model = load_model(self.model_dir / KERAS_FILE)
                self._gradcam = GradCam(model, self.layer_name)
        return self._gradcam(image)
