"""Write a model bundle: model.keras, a SavedModel for TF Serving, model.tflite, model_card.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model.gate import CTGate, gate_features_tf
from ml_model.models import EMBEDDING_LAYER

KERAS_FILE = "model.keras"
SAVED_MODEL_DIR = "saved_model"
TFLITE_FILE = "model.tflite"
CARD_FILE = "model_card.json"

# Names of the serving signature, as TF Serving's REST `predict` sees them.
SERVING_SIGNATURE = "serving_default"
SERVING_INPUT = "image"
SERVING_OUTPUT = "probability"
SERVING_GATE_OUTPUT = "ct_logit"  # the CT gate's logit; "a CT slice" when >= card gate.threshold


def export_saved_model(
    model: keras.Model,
    path: Path,
    img_size: int,
    temperature: float = 1.0,
    gate: CTGate | None = None,
) -> None:
    """SavedModel whose ``serving_default`` takes uint8 images (N, S, S, 3).

    The uint8 -> float cast, the scaling and the calibration (temperature) live in the
    graph, so a client only has to decode, window and resize
    (ml_model.transforms.image_to_array) and gets the same probability as the Predictor.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    # One forward, two heads: P(fracture) and the embedding the CT gate reads.
    both = keras.Model(model.input, [model.outputs[0], model.get_layer(EMBEDDING_LAYER).output])
    archive.track(both)

    def serve(image: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.cast(image, tf.float32)
        probability, embedding = both(pixels, training=False)
        if temperature != 1.0:
            # float32 throughout: TFLite has no float64 kernels.
            p = tf.clip_by_value(tf.cast(probability, tf.float32), 1e-7, 1 - 1e-7)
            probability = tf.sigmoid((tf.math.log(p) - tf.math.log1p(-p)) / temperature)
        outputs = {SERVING_OUTPUT: probability}
        if gate is not None:
            features = tf.concat([tf.cast(embedding, tf.float32), gate_features_tf(pixels)], 1)
            outputs[SERVING_GATE_OUTPUT] = gate.logit_tf(features)[:, tf.newaxis]
        return outputs

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
    tflite_float16: bool = False,
    gate: CTGate | None = None,
) -> Path:
    """Write all four bundle files into ``out_dir`` and return it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_size = int(model.input_shape[1])
    model.save(out / KERAS_FILE)
    export_saved_model(
        model, out / SAVED_MODEL_DIR, img_size, float(card.get("temperature", 1.0)), gate
    )
    export_tflite(out / SAVED_MODEL_DIR, out / TFLITE_FILE, float16=tflite_float16)
    write_card(out, card)
    return out


def write_card(out_dir: str | Path, card: dict[str, Any]) -> None:
    Path(out_dir, CARD_FILE).write_text(json.dumps(card, indent=2, default=_json_default) + "\n")


def read_card(model_dir: str | Path) -> dict[str, Any]:
    card: dict[str, Any] = json.loads(Path(model_dir, CARD_FILE).read_text())
    return card


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


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
