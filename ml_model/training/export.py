"""Write a model bundle (``ml_model.bundle``): model.keras, gate.npz, a SavedModel for TF
Serving, model.tflite and model_card.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model.bundle import (
    KERAS_FILE,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_OUTPUT,
    SERVING_SIGNATURE,
    TFLITE_FILE,
)
from ml_model.card import write_card
from ml_model.inference.forward import serving_function
from ml_model.inference.gate import CTGate


def export_saved_model(
    model: keras.Model, path: Path, img_size: int, temperature: float, gate: CTGate
) -> None:
    """SavedModel whose ``serving_default`` takes uint8 images (N, S, S, 3) and returns the
    calibrated ``probability`` and the CT gate's ``ct_logit``: the function
    ``ml_model.inference.forward.serving_function`` builds, the one the product runs."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    serve, both = serving_function(model, temperature, gate)
    archive.track(both)
    archive.add_endpoint(
        name=SERVING_SIGNATURE,
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, img_size, img_size, 3], tf.uint8, name=SERVING_INPUT)
        ],
    )
    archive.write_out(str(path), verbose=False)


def export_tflite(saved_model_path: Path, path: Path, float16: bool = False) -> None:
    """Convert the SavedModel's serving signature to TFLite (optionally float16 weights)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_path), signature_keys=[SERVING_SIGNATURE]
    )
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


def export_bundle(
    model: keras.Model,
    out_dir: str | Path,
    card: dict[str, Any],
    gate: CTGate,
    tflite_float16: bool = False,
) -> Path:
    """Write every bundle file into ``out_dir`` (the card validated first) and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_size = int(model.input_shape[1])
    model.save(out / KERAS_FILE)
    gate.save(out)
    export_saved_model(model, out / SAVED_MODEL_DIR, img_size, float(card["temperature"]), gate)
    export_tflite(out / SAVED_MODEL_DIR, out / TFLITE_FILE, float16=tflite_float16)
    write_card(out, card)
    return out


def tflite_predict(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Run the TFLite model on uint8 images one at a time; returns P(fracture) per image."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
    outputs = [runner(**{SERVING_INPUT: image[np.newaxis]})[SERVING_OUTPUT] for image in images]
    return np.concatenate(outputs).reshape(-1)


def saved_model_outputs(path: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the SavedModel's serving signature for uint8 images."""
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SERVING_SIGNATURE]
    outputs = fn(**{SERVING_INPUT: tf.constant(images, tf.uint8)})
    return {name: value.numpy() for name, value in outputs.items()}


def saved_model_predict(path: str | Path, images: np.ndarray) -> np.ndarray:
    """P(fracture) from the SavedModel's serving signature for uint8 images."""
    return saved_model_outputs(path, images)[SERVING_OUTPUT].reshape(-1)
