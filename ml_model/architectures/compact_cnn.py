"""A compact fully convolutional CNN: small lesions, trained from scratch on a CPU.

The seed's custom CNN (``custom_cnn``) flattens a 4x4-pooled map into dense layers, so what
it learns is tied to where in the slice it saw it, and its two convolutions see 7 pixels:
it cannot learn a few-pixel cortical break that may sit anywhere along the spine (the
synthetic RSNA benchmark, ``bench/rsna_synthetic.py``: held-out slice AUC 0.60). This one is
four stages of two 3x3 convolutions (batch norm, ReLU; ``width``, 2x, 4x, 8x filters) with a
2x2 max pool between them, then global max and average pooling side by side: the max keeps
a small lesion's response wherever it is, the average the slice's context. No pretrained
weights exist for it; it is the CPU backbone of tests and of the synthetic benchmark, where
the pretrained EfficientNet-Lite is too slow for two cores.
"""

from __future__ import annotations

import keras
from keras import layers

from ml_model.architectures.layers import EMBEDDING_LAYER, GRADCAM_LAYER, OUTPUT_LAYER, slice_input

STAGES = 4
DEFAULT_WIDTH = 16


def build_compact(
    img_size: int = 96,
    width: int = DEFAULT_WIDTH,
    dropout: float = 0.2,
    input_size: int | None = None,
) -> keras.Model:
    """The compact CNN: float32 pixels in [0, 255] (S, S, 3) -> P(fracture)."""
    inputs, x = slice_input(img_size, input_size)
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(x)
    for stage in range(STAGES):
        filters = width * 2**stage
        for conv in range(2):
            last = stage == STAGES - 1 and conv == 1
            name = GRADCAM_LAYER if last else f"stage{stage + 1}_conv{conv + 1}"
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(name=f"{name}_bn")(x)
            x = layers.ReLU(name=f"{name}_relu")(x)
        if stage < STAGES - 1:
            x = layers.MaxPool2D(name=f"stage{stage + 1}_pool")(x)
    pooled = layers.Concatenate(name=EMBEDDING_LAYER)(
        [
            layers.GlobalMaxPooling2D(name="max_pool")(x),
            layers.GlobalAveragePooling2D(name="avg_pool")(x),
        ]
    )
    x = layers.Dropout(dropout, name="dropout")(pooled)
    # float32 output keeps the sigmoid stable under mixed precision.
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER)(x)
    return keras.Model(inputs, outputs, name="compact_cnn")
