"""The inference core the routes use, built from ``Settings``.

``ml_model.inference.core.InferenceCore`` decides every verdict; this module only loads the
bundle (``Bundle.load`` with the server's overrides), picks where its forward runs by name
from ``ml_model.inference.runtimes`` (``INFERENCE_BACKEND``: in-process ONNX Runtime,
in-process TensorFlow, or TF Serving), wraps that forward in the micro-batcher when
``BATCHING`` is on, and sizes the thread pools once at start-up. With
``INFERENCE_BACKEND=onnx`` (the default) and ``tfserving`` nothing here imports TensorFlow:
Grad-CAM runs the bundle's ``gradcam.onnx``.
"""

from __future__ import annotations

import logging
import os

from backend.app.core.config import Settings
from backend.app.core.logging import LOGGER_NAME
from ml_model.inference.batching import BatchedForward
from ml_model.inference.bundle import Bundle
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward_onnx import OnnxForward
from ml_model.inference.runtimes import RuntimeOptions, load_runtime

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


def load_bundle(settings: Settings) -> Bundle:
    """The bundle ``MODEL_DIR`` points at, with this server's ``THRESHOLD`` and window
    settings (milliseconds: the start-up check). Raises ``CardError`` / ``GateFileError``
    naming the file and the field."""
    return Bundle.load(settings.model_dir).with_overrides(
        settings.threshold, settings.window_level, settings.window_width
    )


def create_core(settings: Settings, bundle: Bundle | None = None) -> InferenceCore:
    """Build the forward of ``INFERENCE_BACKEND`` (a runtime of ``inference/runtimes.py``)
    for the bundle (seconds: call from a worker thread); ``bundle``: already loaded by the
    start-up check, else loaded here."""
    bundle = bundle or load_bundle(settings)
    if settings.inference_backend == "local":
        configure_threads(settings)  # before TensorFlow starts
    else:
        configure_blas(settings)
    options = RuntimeOptions(
        threads=settings.onnx_threads,
        lanes=settings.onnx_lanes,
        tfserving_url=settings.tfserving_url,
        tfserving_timeout_s=settings.tfserving_timeout_s,
    )
    forward, gradcam = load_runtime(settings.inference_backend, bundle, options)
    if isinstance(forward, OnnxForward):
        logger.info(
            "thread pools",
            extra={
                "onnx_intra_op_threads": forward.threads,
                "onnx_lanes": forward.lanes,
                "blas_threads": settings.blas_threads,
                "cpus": os.cpu_count(),
            },
        )
    if settings.batching:
        forward = BatchedForward(
            forward, settings.batch_max_size, settings.batch_max_wait_ms / 1000.0
        )
    return InferenceCore(bundle, forward, gradcam=gradcam)


def configure(core: InferenceCore, settings: Settings) -> InferenceCore:
    """A shared core (its bundle and forward) with this app's ``THRESHOLD`` and window."""
    return core.with_bundle(
        core.bundle.with_overrides(settings.threshold, settings.window_level, settings.window_width)
    )


def warm_up(core: InferenceCore, settings: Settings) -> None:
    """Trace the forward at the batch sizes it will see (one, and a full micro-batch)."""
    sizes = (1, settings.batch_max_size) if settings.batching else (1,)
    core.warm_up(sizes)
