"""Names every architecture shares, and the input stage they all start with.

Grad-CAM needs a named conv layer in the top-level graph, so builders keep the graph flat
and name that layer ``GRADCAM_LAYER`` (or say which layer it is in the registry).

Only the spine crop needs TensorFlow, and it is imported where it is used: the builders
themselves are plain Keras 3 and run on any backend (the GPU benchmark uses JAX where
TensorFlow is not installed).
"""

from __future__ import annotations

from pathlib import Path

import keras

GRADCAM_LAYER = "gradcam_conv"
EMBEDDING_LAYER = "embedding"
SPINE_CROP_LAYER = "spine_crop"
OUTPUT_LAYER = "fracture_probability"


def slice_input(
    img_size: int, input_size: int | None
) -> tuple[keras.KerasTensor, keras.KerasTensor]:
    """(model input, tensor the network sees). With ``input_size`` the model takes the whole
    slice at that size and crops it around the spine to ``img_size`` in its own graph;
    without, it takes ``img_size`` images as they are."""
    if input_size is None:
        inputs = keras.Input(shape=(img_size, img_size, 3), name="image")
        return inputs, inputs
    from ml_model.architectures.spine_crop import SpineCrop

    inputs = keras.Input(shape=(input_size, input_size, 3), name="image")
    return inputs, SpineCrop(img_size, name=SPINE_CROP_LAYER)(inputs)


def load_model(path: str | Path) -> keras.Model:
    """Load a saved ``model.keras`` (the custom layers it may hold registered first)."""
    import ml_model.architectures.spine_crop  # noqa: F401  (registers SpineCrop)

    return keras.models.load_model(Path(path), compile=False)
