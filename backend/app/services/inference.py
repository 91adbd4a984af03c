"""The model behind the routes. Routes only see :class:`InferenceService`.

``LocalInference`` runs the bundle in-process through ``ml_model.predictor.Predictor``
(one traced ``tf.function``, never ``model.predict`` per request).
``TFServingInference`` (``services/tfserving.py``) sends the classification to TF
Serving's REST API. ``BatchingInference`` (``services/batching.py``) wraps either one
and groups concurrent requests into one model call. ``create_inference_service``
builds what ``Settings`` ask for.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from backend.app.schemas import Result
from ml_model.predictor import DEFAULT_OPERATING_POINT, OPERATING_POINTS, Prediction, Predictor
from ml_model.verdict import triage_result as predictor_triage_result

logger = logging.getLogger(LOGGER_NAME)


class InferenceUnavailableError(RuntimeError):
    """The model cannot answer right now (remote model server down, shutting down).

    The app turns it into a JSON error with ``status_code`` (503, or 502 for a bad
    answer from the model server) instead of a 500.
    """

    def __init__(self, detail: str, status_code: int = 503) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status_code = status_code


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

    def run(self, images: np.ndarray) -> Prediction:
        """uint8 images (N, S, S, 3) -> calibrated P(fracture) and the OOD verdict per image.

        ``ood_distances`` is None when no out-of-distribution guard was applied.
        """
        ...

    def predict(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, S, S, 3) -> P(fracture) per image, float64 (N,)."""
        ...

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        """One uint8 image (S, S, 3) -> raw Grad-CAM map (conv resolution)."""
        ...

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float: ...

    def study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float: ...

    def warm_up(self) -> None:
        """Run one inference so the first request does not pay for tracing."""
        ...

    def is_ready(self) -> bool:
        """Whether the model can answer now (a remote model server is reachable)."""
        ...

    def close(self) -> None:
        """Release threads and connections (the lifespan calls it at shut-down)."""
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


def triage_result(probability: float, threshold: float, in_distribution: bool | None) -> Result:
    """``ml_model.predictor.triage_result``, typed as the API's ``Result``."""
    return cast(Result, predictor_triage_result(probability, threshold, in_distribution))


def ood_verdict(prediction: Prediction, index: int) -> tuple[bool | None, float | None]:
    """(in_distribution, distance) of one image; (None, None) when no guard was applied."""
    if prediction.ood_distances is None:
        return None, None
    return bool(prediction.in_distribution[index]), float(prediction.ood_distances[index])


def configure_threads(settings: Settings) -> None:
    """Size the thread pools once, at start-up: TensorFlow's and numpy's BLAS.

    TensorFlow: intra-op = the CPU count (one convolution uses every core), inter-op =
    ``TF_INTER_OP_THREADS`` (see ``bench/batching.py`` for the measurement). Only possible
    before the TensorFlow runtime starts; afterwards a logged no-op.

    BLAS (OpenBLAS/MKL under numpy): ``BLAS_THREADS`` (1). The OOD guard's matrix
    products are tiny, and BLAS threads spinning against TensorFlow's pool made them
    cost 16 ms instead of 0.13 ms per request on 2 cores (and the forward pass 2x slower).
    """
    import tensorflow as tf

    intra, inter = settings.intra_op_threads, settings.tf_inter_op_threads
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
        applied = True
    except RuntimeError:
        # TensorFlow already started in this process (tests, a second app): keep its pools.
        applied = False
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        inter = tf.config.threading.get_inter_op_parallelism_threads()
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        threadpool_limits(settings.blas_threads, user_api="blas")
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        logger.warning("threadpoolctl not installed; BLAS thread count left as is")
    logger.info(
        "thread pools",
        extra={
            "tf_intra_op_threads": intra,
            "tf_inter_op_threads": inter,
            "tf_threads_applied": applied,
            "blas_threads": settings.blas_threads,
            "cpus": os.cpu_count(),
        },
    )


class LocalInference:
    """In-process TensorFlow inference over a loaded :class:`Predictor`.

    ``run`` is thread-safe (a traced ``tf.function``), so sync routes may call
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

    def run(self, images: np.ndarray) -> Prediction:
        return self.predictor.run(images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.run(images).probabilities

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        return self.predictor.gradcam(image)

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        return self.predictor.threshold(operating_point)

    def study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        return self.predictor.study_threshold(operating_point)

    def warm_up(self) -> None:
        blank = np.zeros((1, self.img_size, self.img_size, 3), dtype=np.uint8)
        probabilities = self.run(blank).probabilities
        if probabilities.shape != (1,) or not np.all(np.isfinite(probabilities)):
            raise RuntimeError(f"warm-up inference returned {probabilities!r}")
        self.gradcam(blank[0])  # trace Grad-CAM too: the first explain=true is not slow

    def is_ready(self) -> bool:
        return True

    def close(self) -> None:
        return None


def create_inference_service(settings: Settings) -> InferenceService:
    """Build the configured backend (loads the model: seconds, call from a worker thread)."""
    configure_threads(settings)
    service: InferenceService
    if settings.inference_backend == "local":
        service = LocalInference.from_settings(settings)
    elif settings.inference_backend == "tfserving":
        from backend.app.services.tfserving import TFServingInference

        service = TFServingInference.from_settings(settings)
    else:
        raise ValueError(f"unknown inference backend {settings.inference_backend!r}")
    if settings.batching:
        from backend.app.services.batching import BatchingInference

        service = BatchingInference(
            service, settings.batch_max_size, settings.batch_max_wait_ms / 1000.0
        )
    return service
