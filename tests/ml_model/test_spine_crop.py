"""The in-graph spine crop: where it looks, and that its gathers are a bilinear crop."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from ml_model.architectures.spine_crop import SpineCrop, crop_resize, spine_boxes


def _neck(size: int = 96, spine: tuple[float, float] = (0.6, 0.5)) -> np.ndarray:
    """A grey 'slice': black air, a soft-tissue disc, a bright bone blob at ``spine``."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    gray = np.where((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.4**2, 110.0, 0.0)
    gray[(yy - spine[0]) ** 2 + (xx - spine[1]) ** 2 < 0.06**2] = 255.0
    return np.repeat(gray[np.newaxis, ..., np.newaxis], 3, axis=-1).astype(np.float32)


@pytest.mark.parametrize("spine", [(0.6, 0.5), (0.45, 0.55)])
def test_the_box_centres_on_the_bone_near_the_body_centre(spine: tuple[float, float]) -> None:
    boxes = spine_boxes(tf.constant(_neck(spine=spine))).numpy()[0]
    centre = ((boxes[0] + boxes[2]) / 2, (boxes[1] + boxes[3]) / 2)
    np.testing.assert_allclose(centre, spine, atol=0.02)


def test_crop_resize_is_tensorflows_bilinear_crop_and_resize() -> None:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (3, 40, 40, 2)).astype(np.float32)
    # Inside, straddling an edge, and partly outside the image (black there).
    boxes = np.array(
        [[0.1, 0.2, 0.7, 0.8], [-0.2, 0.3, 0.5, 1.1], [0.0, 0.0, 1.0, 1.0]], np.float32
    )
    ours = crop_resize(tf.constant(images), tf.constant(boxes), 17).numpy()
    reference = tf.image.crop_and_resize(
        images, boxes, tf.range(3), (17, 17), extrapolation_value=0.0
    ).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_the_layer_crops_channel_0_and_copies_it_exactly() -> None:
    """A grey slice's three channels are equal: cropping channel 0 once and copying it gives
    bit for bit what cropping every channel gives."""
    images = tf.constant(_neck(size=64))
    layer = SpineCrop(32)
    every_channel = crop_resize(images, spine_boxes(images), 32).numpy()
    np.testing.assert_array_equal(layer(images).numpy(), every_channel)
    np.testing.assert_array_equal(layer(tf.cast(images, tf.uint8)).numpy(), every_channel)
