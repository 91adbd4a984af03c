"""Crop the slice around the cervical spine, inside the model graph.

Why: the full slice lets a network learn the *level* of the slice (brain and skull at
the skull base, neck below) instead of the bone, and the table, the field-of-view
circle and the export window differ from scanner to scanner. Every model in this
project therefore starts with :class:`SpineCrop`: it finds the body (pixels brighter
than fat-minus-margin in the export window), takes the bone pixels (saturated in that
window) weighted by their closeness to the body's centre (the spine sits central; the
skull ring and the table do not), and resamples a square around them. The crop is part
of the exported graph, so every runtime (Keras, SavedModel, TFLite) sees the same input.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

# Grey levels of the training export window (about level -70 HU / width 380 HU).
TISSUE_GREY = 60.0  # below fat (~107): air, background, outside the field of view
BONE_GREY = 250.0  # bone is saturated in this window
# Half-side of the crop as a fraction of the body's equivalent radius; bone weights fall
# off with distance from the body's centre at this fraction of the radius.
CROP_FRACTION = 0.5
CENTRE_FALLOFF = 0.35
MIN_BONE_WEIGHT = 20.0  # fewer (weighted) bone pixels: centre on the body instead
MIN_HALF_SIDE = 0.1  # of the slice side: a crop never collapses on an empty image


def spine_boxes(images: tf.Tensor, fraction: float = CROP_FRACTION) -> tf.Tensor:
    """Normalised crop boxes ``[y0, x0, y1, x1]`` (N, 4) for float images (N, S, S, C), 0-255."""
    gray = images[..., 0]
    size = tf.cast(tf.shape(gray)[1], tf.float32)
    coords = tf.range(size, dtype=tf.float32)
    yy = coords[tf.newaxis, :, tf.newaxis]
    xx = coords[tf.newaxis, tf.newaxis, :]
    tissue = tf.cast(gray > TISSUE_GREY, tf.float32)
    area = tf.reduce_sum(tissue, axis=(1, 2)) + 1e-6
    cy = tf.reduce_sum(tissue * yy, axis=(1, 2)) / area
    cx = tf.reduce_sum(tissue * xx, axis=(1, 2)) / area
    radius = tf.sqrt(area / math.pi)
    bone = tf.cast(gray >= BONE_GREY, tf.float32) * tissue
    spread = (CENTRE_FALLOFF * radius)[:, tf.newaxis, tf.newaxis] + 1e-6
    distance2 = (yy - cy[:, tf.newaxis, tf.newaxis]) ** 2 + (
        xx - cx[:, tf.newaxis, tf.newaxis]
    ) ** 2
    weight = bone * tf.exp(-distance2 / spread**2)
    total = tf.reduce_sum(weight, axis=(1, 2))
    has_bone = total > MIN_BONE_WEIGHT
    by = tf.where(has_bone, tf.reduce_sum(weight * yy, axis=(1, 2)) / (total + 1e-6), cy)
    bx = tf.where(has_bone, tf.reduce_sum(weight * xx, axis=(1, 2)) / (total + 1e-6), cx)
    half = tf.maximum(fraction * radius, MIN_HALF_SIDE * size)
    last = size - 1.0
    return tf.stack(
        [(by - half) / last, (bx - half) / last, (by + half) / last, (bx + half) / last], 1
    )


def crop_resize(images: tf.Tensor, boxes: tf.Tensor, size: int) -> tf.Tensor:
    """``tf.image.crop_and_resize`` (bilinear, black outside the image) written with
    gathers, which every runtime has as a builtin (TFLite has no CropAndResize kernel)."""
    shape = tf.shape(images)
    last = tf.cast(shape[1] - 1, tf.float32)
    steps = tf.linspace(0.0, 1.0, size)[tf.newaxis, :]
    ys = (boxes[:, 0:1] + (boxes[:, 2:3] - boxes[:, 0:1]) * steps) * last  # (N, size)
    xs = (boxes[:, 1:2] + (boxes[:, 3:4] - boxes[:, 1:2]) * steps) * last
    y0, x0 = tf.floor(ys), tf.floor(xs)
    wy, wx = (ys - y0)[:, :, tf.newaxis, tf.newaxis], (xs - x0)[:, tf.newaxis, :, tf.newaxis]
    inside = (
        tf.cast((ys >= 0) & (ys <= last), tf.float32)[:, :, tf.newaxis]
        * tf.cast((xs >= 0) & (xs <= last), tf.float32)[:, tf.newaxis, :]
    )
    top = tf.cast(shape[1] - 1, tf.int32)
    yi0 = tf.clip_by_value(tf.cast(y0, tf.int32), 0, top)
    yi1 = tf.clip_by_value(tf.cast(y0, tf.int32) + 1, 0, top)
    xi0 = tf.clip_by_value(tf.cast(x0, tf.int32), 0, top)
    xi1 = tf.clip_by_value(tf.cast(x0, tf.int32) + 1, 0, top)
    # One flat gather per corner (a plain Gather: much cheaper than GatherND in ONNX Runtime).
    pixels = tf.reshape(images, (-1, shape[3]))
    offset = (tf.range(shape[0]) * shape[1] * shape[2])[:, tf.newaxis, tf.newaxis]

    def at(yi: tf.Tensor, xi: tf.Tensor) -> tf.Tensor:
        index = offset + yi[:, :, tf.newaxis] * shape[2] + xi[:, tf.newaxis, :]
        return tf.gather(pixels, index)

    upper = at(yi0, xi0) * (1 - wx) + at(yi0, xi1) * wx
    lower = at(yi1, xi0) * (1 - wx) + at(yi1, xi1) * wx
    return (upper * (1 - wy) + lower * wy) * inside[..., tf.newaxis]


@keras.saving.register_keras_serializable(package="cspine")
class SpineCrop(keras.layers.Layer):
    """Full slice (N, S, S, C) -> square crop around the spine (N, size, size, C); the
    channels are copies of channel 0 (a grey slice), and only channel 0 is read."""

    def __init__(self, size: int, fraction: float = CROP_FRACTION, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.size = int(size)
        self.fraction = float(fraction)

    def boxes(self, images: tf.Tensor) -> tf.Tensor:
        return spine_boxes(tf.cast(images, tf.float32), self.fraction)

    def call(self, images: tf.Tensor) -> tf.Tensor:
        # The slice is grey: the three input channels are copies of one (model card:
        # ``input``), so the crop reads channel 0 once and copies the result, a third of
        # the gathers and products of cropping every channel.
        grey = tf.cast(images[..., :1], tf.float32)
        crop = crop_resize(grey, spine_boxes(grey, self.fraction), self.size)
        return tf.tile(crop, [1, 1, 1, int(images.shape[-1])])

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], self.size, self.size, input_shape[-1])

    def get_config(self) -> dict[str, object]:
        return {**super().get_config(), "size": self.size, "fraction": self.fraction}
