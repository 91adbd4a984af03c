"""Transfer-learning models on keras.applications backbones, and fine-tuning helpers.

The keras.applications backbones (named in ``ml_model.architectures.registry``):

=============  ======  ==========================  ===================
arch           native  Grad-CAM layer              minimum img_size
=============  ======  ==========================  ===================
inceptionv3    299     ``mixed10``                 75
resnet50v2     224     ``post_relu``               32
xception       299     ``block14_sepconv2_act``    71
=============  ======  ==========================  ===================

``registry.gradcam_layer(arch)`` gives the name to write into the model card's
``gradcam_layer``.

Graph: Input [0, 255] -> ``preprocess`` (Rescaling) -> backbone layers (flat, top-level)
-> GlobalAveragePooling2D ``embedding`` -> Dropout ``head_dropout`` -> Dense(1, sigmoid)
``fracture_probability``.

Fine-tuning: ``freeze_backbone`` / ``unfreeze_top`` (BatchNormalization always stays frozen,
i.e. in inference mode), and ``feature_extractor`` / ``head_model`` which share layers with
the full model, so a head trained on cached embeddings *is* the full model's head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import keras
import numpy as np
from keras import layers

from ml_model.architectures.layers import EMBEDDING_LAYER, OUTPUT_LAYER, slice_input
from ml_model.architectures.weights import WeightsUnavailableError, fetch_keras_weights

if TYPE_CHECKING:  # TensorFlow only where features are extracted: the builders run on any backend
    import tensorflow as tf

HEAD_DROPOUT_LAYER = "head_dropout"
PREPROCESS_LAYER = "preprocess"

_KERAS_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclass(frozen=True)
class KerasBackbone:
    """A keras.applications backbone and the no-top ImageNet file Keras would download."""

    constructor: Callable[..., keras.Model]
    native_size: int
    min_size: int
    gradcam_layer: str
    weights_file: str
    weights_url: str
    weights_hash: str


# File names, URLs and md5 hashes copied from keras/src/applications (Keras 3.15), so the
# cache file is byte-for-byte the one `keras.applications.X(weights="imagenet")` uses.
KERAS_BACKBONES: dict[str, KerasBackbone] = {
    "inceptionv3": KerasBackbone(
        constructor=keras.applications.InceptionV3,
        native_size=299,
        min_size=75,
        gradcam_layer="mixed10",
        weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_url=_KERAS_APPS_URL
        + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="bcbd6486424b2319ff4ef7d526e38f63",
    ),
    "resnet50v2": KerasBackbone(
        constructor=keras.applications.ResNet50V2,
        native_size=224,
        min_size=32,
        gradcam_layer="post_relu",
        weights_file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_url=_KERAS_APPS_URL
        + "resnet/resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="fac2f116257151a9d068a22e544a4917",
    ),
    "xception": KerasBackbone(
        constructor=keras.applications.Xception,
        native_size=299,
        min_size=71,
        gradcam_layer="block14_sepconv2_act",
        weights_file="xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_url=_KERAS_APPS_URL
        + "xception/xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
        weights_hash="b0042744bf5b25fce3cb969f33bebb97",
    ),
}


def normalise_weights_option(weights: str | Path | None) -> str | None:
    """'imagenet' -> 'imagenet'; 'none'/None/'' -> None; anything else is a file path."""
    if weights is None or str(weights).lower() in ("", "none", "random"):
        return None
    if str(weights).lower() == "imagenet":
        return "imagenet"
    return str(weights)


def load_full_model_weights(model: keras.Model, path: Path) -> None:
    """Load a checkpoint of the same fracture architecture (.weights.h5 or .keras)."""
    if not (path.name.endswith(".weights.h5") or path.suffix == ".keras"):
        raise ValueError(
            f"unsupported weights file {path}: expected a backbone file this architecture "
            "knows, or a full-model .weights.h5/.keras checkpoint of the same architecture"
        )
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(f"{path} does not match {model.name} at this img_size: {error}") from None


def build_keras_transfer(
    arch: str,
    img_size: int | None = None,
    weights: str | Path | None = "imagenet",
    dropout: float = 0.2,
    input_size: int | None = None,
) -> keras.Model:
    """Fracture classifier on a keras.applications backbone, built flat.

    ``weights``: "imagenet" (Keras download/cache; ``WeightsUnavailableError`` offline),
    "none" (random init), or PATH: the backbone's Keras no-top ``.h5`` (loaded in layer
    order, as keras.applications does) or a full-model ``.weights.h5``/``.keras`` checkpoint.
    """
    spec = KERAS_BACKBONES[arch]
    size = img_size or spec.native_size
    if size < spec.min_size:
        raise ValueError(f"{arch} needs img_size >= {spec.min_size}, got {size}")
    option = normalise_weights_option(weights)
    backbone_weights: str | None = None
    full_model_file: Path | None = None
    if option == "imagenet":
        backbone_weights = str(
            fetch_keras_weights(spec.weights_file, spec.weights_url, spec.weights_hash, arch)
        )
    elif option is not None:
        path = Path(option)
        if not path.is_file():
            raise FileNotFoundError(f"weights file {path} not found")
        if path.suffix in (".h5", ".hdf5") and not path.name.endswith(".weights.h5"):
            backbone_weights = str(path)
        else:
            full_model_file = path

    inputs, x = slice_input(size, input_size)
    # All three backbones use preprocess_input mode "tf": x / 127.5 - 1. A Rescaling layer
    # computes exactly that and, unlike raw ops, serialises to .keras / SavedModel / TFLite.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=PREPROCESS_LAYER)(x)
    # With input_tensor the application is built on our tensor, so its layers become
    # top-level layers of the model below (Grad-CAM and get_layer need that).
    backbone = spec.constructor(include_top=False, weights=backbone_weights, input_tensor=x)
    x = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(backbone.output)
    x = layers.Dropout(dropout, name=HEAD_DROPOUT_LAYER)(x)
    # float32 output keeps the sigmoid stable under mixed precision (as in build_custom).
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER)(x)
    model = keras.Model(inputs, outputs, name=f"{arch}_fracture")
    if full_model_file is not None:
        load_full_model_weights(model, full_model_file)
    return model


def keras_transfer_builder(arch: str) -> Callable[..., keras.Model]:
    def build(img_size: int = KERAS_BACKBONES[arch].native_size, **options: Any) -> keras.Model:
        return build_keras_transfer(arch, img_size, **options)

    build.__name__ = f"build_{arch}"
    build.__doc__ = f"{arch} fracture model; options: weights, dropout."
    return build


# ----------------------------------------------------------------------------- fine-tuning


def _split(model: keras.Model) -> tuple[list[keras.Layer], list[keras.Layer]]:
    """(backbone layers, head layers): the head is ``embedding`` and everything after it."""
    names = [layer.name for layer in model.layers]
    if EMBEDDING_LAYER not in names:
        raise ValueError(f"model {model.name} has no {EMBEDDING_LAYER!r} layer")
    cut = names.index(EMBEDDING_LAYER)
    return list(model.layers[:cut]), list(model.layers[cut:])


def freeze_backbone(model: keras.Model) -> None:
    """Phase 1: train only the head (``embedding`` onward). Recompile afterwards."""
    backbone, head = _split(model)
    for layer in backbone:
        layer.trainable = False
    for layer in head:
        layer.trainable = True


def unfreeze_top(model: keras.Model, n_layers: int) -> list[str]:
    """Phase 2: make the last ``n_layers`` backbone layers trainable; returns their names.

    Counts layers in ``model.layers`` order (Keras' fine-tuning convention, parameter-free
    layers included). BatchNormalization layers stay frozen: in Keras 3 a frozen BN runs
    in inference mode, so its ImageNet statistics are not wrecked by small CT batches.
    Everything earlier stays frozen and the head stays trainable. Recompile afterwards.
    """
    if n_layers < 0:
        raise ValueError("n_layers must be >= 0")
    freeze_backbone(model)
    backbone, _ = _split(model)
    chosen = backbone[max(0, len(backbone) - n_layers) :] if n_layers else []
    unfrozen = []
    for layer in chosen:
        if isinstance(layer, (layers.BatchNormalization, layers.InputLayer)):
            continue
        layer.trainable = True
        unfrozen.append(layer.name)
    return unfrozen


def feature_extractor(model: keras.Model) -> keras.Model:
    """input -> ``embedding`` features, sharing the model's layers (and weights)."""
    return keras.Model(
        model.input, model.get_layer(EMBEDDING_LAYER).output, name=f"{model.name}_features"
    )


def head_model(model: keras.Model) -> keras.Model:
    """``embedding`` features -> P(fracture), built from the model's own head layers.

    The layers are shared, not copied: fitting this model on cached features updates the
    full model, and ``head(features(x)) == model(x)``.
    """
    _, head = _split(model)
    embedding, after = head[0], head[1:]
    features = keras.Input(shape=tuple(embedding.output.shape[1:]), name="features")
    x = features
    previous = embedding
    for layer in after:
        # The head must be a chain (embedding -> ... -> output), or replaying it is wrong.
        if layer.input is not previous.output:
            raise ValueError(f"head layer {layer.name!r} does not follow {previous.name!r}")
        x = layer(x)
        previous = layer
    if previous.output is not model.outputs[0]:
        raise ValueError("the head chain does not end at the model output")
    return keras.Model(features, x, name=f"{model.name}_head")


def extract_features(
    model: keras.Model, images: np.ndarray | tf.Tensor, batch_size: int = 32
) -> np.ndarray:
    """Embeddings (N, D) of images (N, S, S, 3) in [0, 255], inference mode."""
    import tensorflow as tf

    forward = _features_fn(model)
    images = np.asarray(images, dtype=np.float32)
    chunks = [
        forward(tf.constant(images[i : i + batch_size])).numpy()
        for i in range(0, len(images), batch_size)
    ]
    dim = int(model.get_layer(EMBEDDING_LAYER).output.shape[-1])
    return np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)


def extract_features_from_dataset(
    model: keras.Model, dataset: Iterable[Any]
) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) from a batched dataset of (images, labels[, weights]).

    One pass, so features and labels line up even if the dataset shuffles.
    """
    import tensorflow as tf

    forward = _features_fn(model)
    features, labels = [], []
    for batch in dataset:
        features.append(forward(tf.cast(batch[0], tf.float32)).numpy())
        labels.append(np.asarray(batch[1]))
    return np.concatenate(features), np.concatenate(labels)


def _features_fn(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    import tensorflow as tf

    extractor = feature_extractor(model)
    return tf.function(lambda x: extractor(x, training=False), reduce_retracing=True)


__all__ = [
    "KERAS_BACKBONES",
    "WeightsUnavailableError",
    "build_keras_transfer",
    "extract_features",
    "extract_features_from_dataset",
    "feature_extractor",
    "freeze_backbone",
    "head_model",
    "keras_transfer_builder",
    "normalise_weights_option",
    "unfreeze_top",
]
