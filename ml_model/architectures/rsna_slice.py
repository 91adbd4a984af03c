"""The 2.5D slice model of the RSNA study pipeline, and the per-slice feature vector.

Input: a CT slice and its neighbours ``spacing_mm`` apart as the three channels, uint8 values
as float32 (N, S, S, 3) in [0, 255] (``ml_model.imaging.transforms.stack_neighbours`` builds
them, in training and in serving). A backbone from the architecture registry (``custom``,
``efficientnet_lite0``, the keras.applications transfer models) is cut at its pooled
``embedding`` layer; on top of it:

    pooled -> Dropout -> Dense(E) ``slice_embedding`` (the bottleneck both heads read)
           -> "fracture":  Dense(1, sigmoid)  P(fracture on this slice)
           -> "vertebrae": Dense(7, sigmoid)  which of C1..C7 the slice shows
           -> "embedding": the E-vector itself

The vertebra head is what the 1st-place RSNA 2022 solution got from a segmentation stage: it
tells the study head where along the spine each slice lies, so the head can put a fracture
at the right vertebra (and, on data where the fracture label follows the level, the
level-matched specificity in ``ml_model.evaluation.rsna_metrics`` shows that shortcut).

:func:`slice_features_tf` turns the three outputs into the vector the study head reads:
``concat(logit(fracture), logit(vertebrae), embedding)`` of length ``8 + E``. It is the one
definition: training computes features with it, and the serving graph calls it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import keras
from keras import layers

from ml_model.architectures.layers import EMBEDDING_LAYER
from ml_model.architectures.registry import REGISTRY, build_model, is_pretrained
from ml_model.bundle import FRACTURE_OUTPUT
from ml_model.card import VERTEBRAE

if TYPE_CHECKING:  # TensorFlow only for the feature vector: the builder runs on any backend
    import tensorflow as tf

VERTEBRAE_OUTPUT = "vertebrae"
EMBEDDING_OUTPUT = "embedding"
SLICE_OUTPUTS = (FRACTURE_OUTPUT, VERTEBRAE_OUTPUT, EMBEDDING_OUTPUT)
EMBEDDING_PROJECTION_LAYER = "slice_embedding"
SLICE_DROPOUT_LAYER = "slice_dropout"
DEFAULT_EMBEDDING = 16
# Probabilities are clipped to [eps, 1 - eps] before the logit: features stay bounded
# (|logit| <= 9.2) and identical in float32 on every runtime.
FEATURE_LOGIT_EPS = 1e-4


def slice_feature_dim(embedding: int = DEFAULT_EMBEDDING) -> int:
    """F: the length of :func:`slice_features_tf`'s vector for an ``embedding``-wide model."""
    return 1 + len(VERTEBRAE) + embedding


def build_slice_model(
    arch: str,
    img_size: int,
    embedding: int = DEFAULT_EMBEDDING,
    weights: str | None = "none",
    dropout: float = 0.2,
) -> keras.Model:
    """The 2.5D slice model: registry backbone -> {"fracture", "vertebrae", "embedding"}.

    ``weights`` is the registry's option for the pretrained backbones ("imagenet", "none",
    or a file); the custom and compact CNNs have none. The heads are float32 under mixed precision.
    """
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(REGISTRY)}")
    options: dict[str, Any] = {"weights": weights or "none"} if is_pretrained(arch) else {}
    backbone = build_model(arch, img_size, **options)
    pooled = backbone.get_layer(EMBEDDING_LAYER).output
    x = layers.Dropout(dropout, name=SLICE_DROPOUT_LAYER)(pooled)
    vector = layers.Dense(embedding, dtype="float32", name=EMBEDDING_PROJECTION_LAYER)(x)
    fracture = layers.Dense(1, activation="sigmoid", dtype="float32", name=FRACTURE_OUTPUT)(vector)
    vertebrae = layers.Dense(
        len(VERTEBRAE), activation="sigmoid", dtype="float32", name=VERTEBRAE_OUTPUT
    )(vector)
    outputs = {FRACTURE_OUTPUT: fracture, VERTEBRAE_OUTPUT: vertebrae, EMBEDDING_OUTPUT: vector}
    return keras.Model(backbone.input, outputs, name=f"{arch}_rsna_slice")


def training_view(model: keras.Model) -> keras.Model:
    """The slice model with only its two supervised outputs (shared layers, shared
    weights): what stage 1 compiles and fits."""
    return keras.Model(
        model.input,
        {
            FRACTURE_OUTPUT: model.get_layer(FRACTURE_OUTPUT).output,
            VERTEBRAE_OUTPUT: model.get_layer(VERTEBRAE_OUTPUT).output,
        },
        name=f"{model.name}_training",
    )


def _logit(probability: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    p = tf.clip_by_value(tf.cast(probability, tf.float32), FEATURE_LOGIT_EPS, 1 - FEATURE_LOGIT_EPS)
    return tf.math.log(p) - tf.math.log1p(-p)


def slice_features_tf(outputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """The per-slice feature vector (N, 8 + E) float32 from the slice model's outputs:
    ``concat(logit(fracture), logit(vertebrae), embedding)``. The study head's input, in
    training and in the serving graph alike."""
    import tensorflow as tf

    return tf.concat(
        [
            _logit(outputs[FRACTURE_OUTPUT]),
            _logit(outputs[VERTEBRAE_OUTPUT]),
            tf.cast(outputs[EMBEDDING_OUTPUT], tf.float32),
        ],
        axis=-1,
    )
