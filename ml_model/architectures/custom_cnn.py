"""The seed's custom CNN, kept to its recipe (see the model card of ``models/custom``)."""

from __future__ import annotations

import keras
from keras import layers

from ml_model.architectures.layers import EMBEDDING_LAYER, GRADCAM_LAYER, OUTPUT_LAYER, slice_input


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
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="custom_cnn")
