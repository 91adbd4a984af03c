"""Load a model bundle once and run it: probabilities, thresholds, Grad-CAM.

Used by the CLI, evaluation and the server, so every consumer applies the same
calibration and operating points stored in the bundle's model card.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.explain import make_gradcam_fn, place_cam
from ml_model.export import KERAS_FILE, read_card
from ml_model.gate import CTGate, gate_features_tf
from ml_model.metrics import apply_temperature
from ml_model.models import EMBEDDING_LAYER, GRADCAM_LAYER, SPINE_CROP_LAYER
from ml_model.verdict import triage_result

DEFAULT_OPERATING_POINT = "sensitive"
OPERATING_POINTS = ("sensitive", "specific")
MAX_FORWARD_BATCH = 64


@dataclass(frozen=True)
class Prediction:
    """One forward pass: calibrated P(fracture) and the CT gate's verdict."""

    probabilities: np.ndarray
    features: np.ndarray  # the CT gate's inputs (embedding + image statistics)
    ood_distances: np.ndarray | None  # exp(gate threshold - gate logit): <= 1 is CT
    in_distribution: np.ndarray


class Predictor:
    """A loaded model bundle. ``predict`` takes uint8 images (N, S, S, 3)."""

    def __init__(self, model_dir: str | Path = DEFAULT_MODEL_DIR) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / KERAS_FILE).is_file():
            raise FileNotFoundError(f"no {KERAS_FILE} in model directory {self.model_dir}")
        self.card: dict[str, Any] = read_card(self.model_dir)
        self.model: keras.Model = keras.models.load_model(
            self.model_dir / KERAS_FILE, compile=False
        )
        self.img_size = int(self.model.input_shape[1])
        self.temperature = float(self.card.get("temperature", 1.0))
        self.gate = CTGate.load(self.model_dir)
        gradcam_layer = str(self.card.get("gradcam_layer", GRADCAM_LAYER))
        both = keras.Model(
            self.model.input,
            [self.model.outputs[0], self.model.get_layer(EMBEDDING_LAYER).output],
        )

        def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            probability, embedding = both(x, training=False)
            return probability, tf.concat([embedding, gate_features_tf(x)], axis=1)

        spec = tf.TensorSpec([None, self.img_size, self.img_size, 3], tf.float32)
        # One traced graph for every batch size: no per-request retracing, no model.predict.
        self._forward = tf.function(forward, input_signature=[spec])
        self._gradcam = make_gradcam_fn(self.model, gradcam_layer)
        names = {layer.name for layer in self.model.layers}
        self._crop = self.model.get_layer(SPINE_CROP_LAYER) if SPINE_CROP_LAYER in names else None

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.card.get("architecture", "model")))

    @property
    def version(self) -> str:
        return str(self.card.get("version", "unversioned"))

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        points = self.card.get("operating_points", {})
        if operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating point must be one of {OPERATING_POINTS}")
        if operating_point not in points:
            return 0.5
        return float(points[operating_point]["threshold"])

    def study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """Threshold on the aggregated study score; the slice threshold if none is stored."""
        points = self.card.get("study", {}).get("operating_points", {})
        if operating_point in points:
            return float(points[operating_point]["threshold"])
        return self.threshold(operating_point)

    def run(self, images: np.ndarray) -> Prediction:
        """Probabilities, OOD features and the in-distribution verdict for uint8 images."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[np.newaxis]
        if images.shape[1:] != (self.img_size, self.img_size, 3):
            raise ValueError(
                f"expected images of shape (N, {self.img_size}, {self.img_size}, 3), "
                f"got {images.shape}"
            )
        # Bounded chunks: a 1000-image call would otherwise hold ~0.6 GB of float activations
        # at once and run slower per image than batches that fit in cache.
        chunks = [
            self._forward(tf.convert_to_tensor(images[i : i + MAX_FORWARD_BATCH], tf.float32))
            for i in range(0, len(images), MAX_FORWARD_BATCH)
        ]
        probs = np.concatenate([p.numpy().reshape(-1) for p, _ in chunks])
        features = np.concatenate([f.numpy() for _, f in chunks])
        logits = self.gate.logits(features)
        inside = logits >= self.gate.threshold
        return Prediction(self._calibrate(probs), features, self.gate.distance(logits), inside)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """P(fracture) for each image, after the bundle's temperature scaling."""
        return self.run(images).probabilities

    def result(self, probability: float, threshold: float, in_distribution: bool = True) -> str:
        """The label shown to the user: no fracture call for an out-of-distribution input."""
        return triage_result(probability, threshold, in_distribution)

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM map for one uint8 image (S, S, 3), in the frame of the whole input: for
        a model that crops around the spine the map is placed back where the crop came from
        (zero elsewhere)."""
        batch = tf.convert_to_tensor(np.asarray(image)[np.newaxis], tf.float32)
        cam = self._gradcam(batch).numpy()[0]
        if self._crop is None:
            return cam
        box = self._crop.boxes(batch).numpy()[0]
        return place_cam(cam, box, self.img_size)

    def _calibrate(self, probs: np.ndarray) -> np.ndarray:
        if self.temperature == 1.0:
            return probs.astype(np.float64)
        return apply_temperature(probs, self.temperature)
