"""The inference core the routes use, built from ``Settings``.

``ml_model.inference.core.InferenceCore`` decides every verdict; this module only picks
where its forward runs (in-process ONNX Runtime, in-process TensorFlow, or TF Serving),
wraps that forward in the micro-batcher when ``BATCHING`` is on, and sizes the thread pools
once at start-up. With ``INFERENCE_BACKEND=onnx`` (the default) and ``tfserving`` nothing
here imports TensorFlow: Grad-CAM runs the bundle's ``gradcam.onnx``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from ml_model.bundle import GRADCAM_ONNX_FILE
from ml_model.card import ModelCard
from ml_model.inference.batching import BatchedForward
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward import Forward, KerasForward

logger = logging.getLogger(LOGGER_NAME)


def configure_blas(settings: Settings) -> None:
    """numpy's BLAS: ``BLAS_THREADS`` (1), so that it never competes with the model's pool."""
    try:
        from threadpoolctl import threadpool_limits  # a scikit-learn dependency

        threadpool_limits(settings.blas_threads, user_api="blas")
    except ImportError:  # pragma: no cover - scikit-learn always brings it
        logger.warning("threadpoolctl not installed; BLAS thread count left as is")


def configure_threads(settings: Settings) -> None:
    """Size the thread pools once, at start-up: TensorFlow's and numpy's BLAS.

    TensorFlow: intra-op = the CPU count (one convolution uses every core), inter-op =
    ``TF_INTER_OP_THREADS`` (see ``bench/batching.py`` for the measurement). Only possible
    before the TensorFlow runtime starts; afterwards a logged no-op.

    BLAS (OpenBLAS/MKL under numpy): ``BLAS_THREADS`` (1). The CT gate's matrix
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
    configure_blas(settings)
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


def create_core(settings: Settings) -> InferenceCore:
    """Load the bundle and build its forward (seconds: call from a worker thread).

    Raises ``CardError`` / ``GateFileError`` for an invalid or incomplete bundle: the
    server then refuses to start, naming the file and the field."""
    from ml_model.card import load_card

    card = load_card(settings.model_dir)  # validated before any model is loaded
    forward: Forward
    if settings.inference_backend == "onnx":
        from ml_model.inference.forward_onnx import OnnxForward

        configure_blas(settings)
        forward = OnnxForward.from_bundle(
            settings.model_dir, settings.onnx_threads, settings.onnx_lanes
        )
        logger.info(
            "thread pools",
            extra={
                "onnx_intra_op_threads": forward.threads,
                "onnx_lanes": forward.lanes,
                "blas_threads": settings.blas_threads,
                "cpus": os.cpu_count(),
            },
        )
    elif settings.inference_backend == "local":
        if importlib.util.find_spec("tensorflow") is None:
            raise RuntimeError(
                "INFERENCE_BACKEND=local runs TensorFlow, which is not installed here (the "
                "serving image leaves it out): use onnx (the default) or tfserving"
            )
        configure_threads(settings)
        forward = KerasForward.from_bundle(settings.model_dir, card.temperature)
    elif settings.inference_backend == "tfserving":
        from ml_model.inference.forward_tfserving import TFServingForward

        forward = TFServingForward(settings.tfserving_url, settings.tfserving_timeout_s)
    else:
        raise ValueError(f"unknown inference backend {settings.inference_backend!r}")
    gradcam = create_gradcam(forward, card, settings)
    if settings.batching:
        forward = BatchedForward(
            forward, settings.batch_max_size, settings.batch_max_wait_ms / 1000.0
        )
    return configure(InferenceCore(settings.model_dir, forward, gradcam=gradcam), settings)


def create_gradcam(
    forward: Forward, card: ModelCard, settings: Settings
) -> Callable[[np.ndarray], np.ndarray]:
    """Grad-CAM for ``explain=true``: TensorFlow's own next to a TensorFlow forward; else the
    bundle's ``gradcam.onnx`` (no TensorFlow), opened on the first heatmap; else (a bundle
    without it) ``model.keras`` loaded on the first heatmap."""
    if isinstance(forward, KerasForward):
        from ml_model.inference.gradcam import GradCam

        return GradCam(forward.model, card.gradcam_layer)
    onnx_file = Path(settings.model_dir, GRADCAM_ONNX_FILE)
    if onnx_file.is_file():
        from ml_model.inference.forward_onnx import OnnxGradCam

        return OnnxGradCam(onnx_file, card.input.size, settings.onnx_threads)
    from ml_model.inference.gradcam import LazyGradCam

    return LazyGradCam(settings.model_dir, card.gradcam_layer)


def configure(core: InferenceCore, settings: Settings) -> InferenceCore:
    """The core with this app's ``THRESHOLD`` override and DICOM window settings."""
    window = None
    if settings.window_level is not None or settings.window_width is not None:
        card = core.card.input.window
        window = (
            card.level if settings.window_level is None else settings.window_level,
            card.width if settings.window_width is None else settings.window_width,
        )
    return core.configured(settings.threshold, window)


def warm_up(core: InferenceCore, settings: Settings) -> None:
    """Trace the forward at the batch sizes it will see (one, and a full micro-batch)."""
    sizes = (1, settings.batch_max_size) if settings.batching else (1,)
    core.warm_up(sizes)
