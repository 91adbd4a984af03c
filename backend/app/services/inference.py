"""The model behind the routes. Routes only see :class:`InferenceService`.

``LocalInference`` runs the bundle in-process through ``ml_model.predictor.Predictor``
(one traced ``tf.function``, never ``model.predict`` per request). Another backend
(server-side micro-batching, a TF Serving REST client) implements the same protocol
and is picked by ``create_inference_service`` from ``Settings.inference_backend``.
"""

from __future__ import annotations

from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from backend.app.core.config import Settings
from backend.app.schemas import Result
from ml_model.config import RESULT_NEGATIVE, RESULT_POSITIVE
from ml_model.predictor import DEFAULT_OPERATING_POINT, OPERATING_POINTS, Predictor


@runtime_checkable
class InferenceService(Protocol):
    """What the API needs from a model, wherever it runs."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    @property
    def img_size(self) -> int: ...

    @property
    def card(self) -> dict[str, Any]: ...

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, S, S, 3) -> P(fracture) per image, float64 (N,)."""
        ...

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image (S, S, 3) -> raw Grad-CAM map (conv resolution)."""
        ...

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float: ...

    def warm_up(self) -> None:
        """Run one inference so the first request does not pay for tracing."""
        ...


def operating_threshold(
    service: InferenceService, operating_point: str, override: float | None = None
) -> float:
    """The model card's threshold for ``operating_point``; the ``THRESHOLD`` setting, when
    set, replaces the threshold of the default (sensitive) operating point only."""
    if operating_point not in OPERATING_POINTS:
        raise ValueError(f"operating point must be one of {OPERATING_POINTS}")
    if override is not None and operating_point == DEFAULT_OPERATING_POINT:
        return override
    return service.threshold(operating_point)


def label(probability: float, threshold: float) -> Result:
    """The triage result for a probability at a threshold (same rule as the Predictor)."""
    return cast(Result, RESULT_POSITIVE if probability >= threshold else RESULT_NEGATIVE)


class LocalInference:
    """In-process TensorFlow inference over a loaded :class:`Predictor`.

    ``predict`` is thread-safe (a traced ``tf.function``), so sync routes may call
    it concurrently from the threadpool.
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalInference:
        return cls(Predictor(settings.model_dir))

    @property
    def name(self) -> str:
        return self.predictor.name

    @property
    def version(self) -> str:
        return self.predictor.version

    @property
    def img_size(self) -> int:
        return self.predictor.img_size

    @property
    def card(self) -> dict[str, Any]:
        return self.predictor.card

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.predictor.predict(images)

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        return self.predictor.gradcam(image)

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        return self.predictor.threshold(operating_point)

    def warm_up(self) -> None:
        blank = np.zeros((1, self.img_size, self.img_size, 3), dtype=np.uint8)
        probabilities = self.predict(blank)
        if probabilities.shape != (1,) or not np.all(np.isfinite(probabilities)):
            raise RuntimeError(f"warm-up inference returned {probabilities!r}")
        self.gradcam(blank[0])  # trace Grad-CAM too: the first explain=true is not slow


def create_inference_service(settings: Settings) -> InferenceService:
    """Build the configured backend (loads the model: seconds, call from a worker thread)."""
    if settings.inference_backend == "local":
        return LocalInference.from_settings(settings)
    raise ValueError(f"unknown inference backend {settings.inference_backend!r}")
