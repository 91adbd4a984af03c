"""Model builders. Every model takes float32 pixels in [0, 255], shape (S, S, 3),
and outputs P(fracture); scaling to the backbone's range lives inside the model.

Grad-CAM needs a named conv layer in the top-level graph, so builders keep the
graph flat and name that layer ``GRADCAM_LAYER``.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from ml_model.spine_crop import SpineCrop

GRADCAM_LAYER = "gradcam_conv"
EMBEDDING_LAYER = "embedding"


SPINE_CROP_LAYER = "spine_crop"


def slice_input(
    img_size: int, input_size: int | None
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(model input, tensor the network sees). With ``input_size`` the model takes the whole
    slice at that size and crops it around the spine to ``img_size`` in its own graph;
    without, it takes ``img_size`` images as they are."""
    if input_size is None:
        inputs = keras.Input(shape=(img_size, img_size, 3), name="image")
        return inputs, inputs
    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    return inputs, SpineCrop(img_size, name=SPINE_CROP_LAYER)(inputs)


def build_custom(
    img_size: int = 224, dropout: float = 0.2, input_size: int | None = None
) -> keras.Model:
    """The seed CNN: Conv2D x2, Dropout, BatchNorm, MaxPool2D, Flatten, Dense x2, sigmoid.

    The convolutions use stride 2 and the pool is 4x4 so that Flatten feeds
    ~6k features instead of ~400k: same layer list, a 1.6 MB model instead of 200 MB.
    """
    inputs, x = slice_input(img_size, input_size)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name=GRADCAM_LAYER)(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.BatchNormalization(name="batchnorm")(x)
    x = layers.MaxPool2D(pool_size=4, name="maxpool")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(64, activation="relu", name="dense1")(x)
    x = layers.Dense(32, activation="relu", name=EMBEDDING_LAYER)(x)
    # float32 output keeps the sigmoid stable under mixed precision.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name="fracture_probability")(x)
    return keras.Model(inputs, outputs, name="custom_cnn")


# name -> builder(img_size, **options). Transfer-learning builders register here too.
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {"custom": build_custom}
DEFAULT_IMG_SIZES: dict[str, int] = {"custom": 224}


def build_model(arch: str, img_size: int | None = None, **options: object) -> keras.Model:
    """Build a registered architecture at its native (or the given) input size."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHITECTURES)}")
    size = img_size or DEFAULT_IMG_SIZES.get(arch, 224)
    return ARCHITECTURES[arch](size, **options)


# Registration hook: importing these adds inceptionv3, resnet50v2, xception, efficientnet_lite0/2
# to ARCHITECTURES/DEFAULT_IMG_SIZES. At the bottom so the names above exist when they import
# them back (circular import, resolved by ordering; transfer also imports efficientnet_lite).
from ml_model import transfer  # noqa: E402, F401
