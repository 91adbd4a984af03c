"""A tiny study bundle (RSNA 2022 format) for serving tests, without training anything.

What ``ml_model.training.train_rsna`` writes, in miniature: a 2.5D slice model with the three
outputs {``fracture``, ``vertebrae``, ``embedding``} (a small Keras functional model with
random weights), a study head (random weights in ``study_head.npz``'s documented layout,
``ml_model.inference.study_head``), a CT gate that accepts every image, and a card with
``input.context`` and ``study.head``, all written by the product's own exporter
(``ml_model.training.export.export_bundle``: SavedModel, TFLite, ONNX + parity).

:func:`study_bundle` builds one per process (a few seconds of export) and hands the same
folder to every test that asks.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.card import STUDY_OUTPUTS, VERTEBRAE

IMG_SIZE = 32
EMBEDDING = 4
FEATURE_DIM = 1 + len(VERTEBRAE) + EMBEDDING
SEQUENCE_LENGTH = 8
HEAD_UNITS = 4
ATTENTION = 4
CONTEXT_MM = 2.0
GRADCAM_LAYER = "features_conv"
GATE_THRESHOLD = -1000.0  # every image is "CT": the tests are about the study path


def slice_model(seed: int = 0) -> Any:
    """A small 2.5D slice model with the study bundle's three outputs (random weights)."""
    import keras
    from keras import layers

    from ml_model.architectures.rsna_slice import (
        EMBEDDING_OUTPUT,
        FRACTURE_OUTPUT,
        VERTEBRAE_OUTPUT,
    )

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IMG_SIZE, IMG_SIZE, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    x = layers.Conv2D(6, 3, strides=2, activation="relu", name=GRADCAM_LAYER)(x)
    x = layers.GlobalAveragePooling2D()(x)
    vector = layers.Dense(EMBEDDING, name="slice_embedding")(x)
    outputs = {
        FRACTURE_OUTPUT: layers.Dense(1, activation="sigmoid", name=FRACTURE_OUTPUT)(vector),
        VERTEBRAE_OUTPUT: layers.Dense(len(VERTEBRAE), activation="sigmoid", name=VERTEBRAE_OUTPUT)(
            vector
        ),
        EMBEDDING_OUTPUT: vector,
    }
    return keras.Model(inputs, outputs, name="tiny_rsna_slice")


def study_head_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random study-head weights in ``study_head.npz``'s layout (F = :data:`FEATURE_DIM`)."""
    rng = np.random.default_rng(seed)
    f, u, a = FEATURE_DIM, HEAD_UNITS, ATTENTION

    def arr(*shape: int, scale: float = 0.5) -> np.ndarray:
        return rng.normal(0.0, scale, shape).astype(np.float32)

    weights = {
        "mean": arr(f, scale=0.1),
        "scale": rng.uniform(1.0, 3.0, f).astype(np.float32),
        "attention_hidden_kernel": arr(2 * u, a),
        "attention_hidden_bias": arr(a),
        "attention_score_kernel": arr(a, 1),
        "attention_score_bias": arr(1),
        "output_kernel": arr(2 * u + f, len(STUDY_OUTPUTS), scale=1.0),
        "output_bias": arr(len(STUDY_OUTPUTS)),
        "sequence_length": np.array(SEQUENCE_LENGTH, np.int32),
        "outputs": np.array(STUDY_OUTPUTS),
    }
    for direction in ("forward", "backward"):
        weights[f"gru_{direction}_kernel"] = arr(f, 3 * u)
        weights[f"gru_{direction}_recurrent_kernel"] = arr(u, 3 * u)
        weights[f"gru_{direction}_bias"] = arr(2, 3 * u)
    return weights


def accepting_gate() -> Any:
    """A CT gate (tiny random backbone) whose threshold every image passes."""
    from ml_model.inference.gate import FEATURE_NAMES, CTGate

    rng = np.random.default_rng(0)

    def arr(*shape: int) -> np.ndarray:
        return rng.normal(0, 0.3, shape).astype(np.float32)

    backbone = {
        "stem_w": arr(3, 3, 1, 8), "stem_b": arr(8),
        "block0_dw_w": arr(3, 3, 8, 1), "block0_dw_b": arr(8),
        "block0_project_w": arr(1, 1, 8, 8), "block0_project_b": arr(8),
        "spec": np.array([[3, 1, 1, 1]], np.int32),
    }  # fmt: skip
    n = 8 + len(FEATURE_NAMES)
    return CTGate(np.zeros(n), np.ones(n), rng.normal(0, 0.01, n), 0.0, GATE_THRESHOLD, backbone)


def study_card(temperature: float = 1.5) -> dict[str, Any]:
    """The card of the tiny bundle: 2.5D context, the study head, both operating points."""
    return {
        "name": "tiny-rsna-study",
        "version": "0.0.1-test",
        "architecture": "tiny test CNN (2.5D) + BiGRU study head",
        "input": {
            "size": IMG_SIZE,
            "channels": 3,
            "serving_dtype": "uint8",
            "window": {"level": 400.0, "width": 1800.0},
            "context": {"slices": 3, "spacing_mm": CONTEXT_MM},
        },
        "temperature": temperature,
        "operating_points": {
            "sensitive": {"threshold": 0.3},
            "specific": {"threshold": 0.7},
        },
        "gradcam_layer": GRADCAM_LAYER,
        "study": {
            "aggregation": "study_head",
            "top_k": 2,
            "operating_points": {
                "sensitive": {"threshold": 0.4},
                "specific": {"threshold": 0.8},
            },
            "head": {
                "file": "study_head.npz",
                "sequence_length": SEQUENCE_LENGTH,
                "feature_dim": FEATURE_DIM,
                "outputs": list(STUDY_OUTPUTS),
            },
        },
        "gate": {"threshold": GATE_THRESHOLD},
        "intended_use": "Tests only.",
        "limitations": ["Random weights: a test fixture, not a model."],
    }


def write_study_bundle(out_dir: str | Path, seed: int = 0) -> Path:
    """Export the tiny study bundle into ``out_dir`` with the product's exporter."""
    from ml_model.training.export import export_bundle

    return export_bundle(
        slice_model(seed),
        out_dir,
        study_card(),
        accepting_gate(),
        study_head=study_head_weights(seed),
    )


@functools.cache
def study_bundle() -> Path:
    """The tiny study bundle, exported once per process into a temporary folder."""
    return write_study_bundle(Path(tempfile.mkdtemp(prefix="study-bundle-")) / "bundle")
