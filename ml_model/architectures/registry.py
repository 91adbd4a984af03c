"""The architecture registry: every model ``--arch`` can name, in one explicit table.

Every model takes float32 pixels in [0, 255], shape (S, S, 3) (the whole slice when it crops
around the spine itself), and outputs P(fracture); scaling to the backbone's range lives
inside the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras

from ml_model.architectures import efficientnet_lite, transfer
from ml_model.architectures.compact_cnn import build_compact
from ml_model.architectures.custom_cnn import build_custom
from ml_model.architectures.layers import GRADCAM_LAYER


@dataclass(frozen=True)
class Architecture:
    """A builder, the input size it was designed for, its Grad-CAM layer, and whether it
    has a pretrained backbone (a ``weights`` option and a frozen-backbone phase)."""

    build: Callable[..., keras.Model]
    native_size: int
    gradcam_layer: str
    pretrained: bool = True


REGISTRY: dict[str, Architecture] = {
    "custom": Architecture(build_custom, 224, GRADCAM_LAYER, pretrained=False),
    "compact": Architecture(build_compact, 96, GRADCAM_LAYER, pretrained=False),
    **{
        arch: Architecture(
            transfer.keras_transfer_builder(arch), spec.native_size, spec.gradcam_layer
        )
        for arch, spec in transfer.KERAS_BACKBONES.items()
    },
    **{
        arch: Architecture(build, size, efficientnet_lite.GRADCAM_LAYER_LITE)
        for arch, (build, size) in efficientnet_lite.VARIANT_BUILDERS.items()
    },
}

# name -> builder(img_size, **options) / native input size / Grad-CAM layer name.
ARCHITECTURES: dict[str, Callable[..., keras.Model]] = {k: a.build for k, a in REGISTRY.items()}
DEFAULT_IMG_SIZES: dict[str, int] = {k: a.native_size for k, a in REGISTRY.items()}
GRADCAM_LAYERS: dict[str, str] = {k: a.gradcam_layer for k, a in REGISTRY.items()}


def gradcam_layer(arch: str) -> str:
    """Grad-CAM layer name for a registered architecture (what the model card records)."""
    return GRADCAM_LAYERS.get(arch, GRADCAM_LAYER)


def is_pretrained(arch: str) -> bool:
    """Whether ``arch`` has a pretrained backbone (takes ``weights``; trained head first)."""
    return REGISTRY[arch].pretrained


def build_model(arch: str, img_size: int | None = None, **options: object) -> keras.Model:
    """Build a registered architecture at its native (or the given) input size."""
    if arch not in REGISTRY:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(REGISTRY)}")
    return REGISTRY[arch].build(img_size or REGISTRY[arch].native_size, **options)
