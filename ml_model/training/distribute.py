"""Where training runs: the tf.distribute strategy, which process is the chief, mixed
precision. Shared by every trainer (``train``, ``train_rsna``).

- one process, several local GPUs: ``MirroredStrategy`` (``auto`` picks it);
- several machines: ``MultiWorkerMirroredStrategy``, each process started with the same
  ``TF_CONFIG`` cluster and its own task index; the chief (worker 0) writes the bundle;
- mixed precision (float16 compute, float32 variables and heads) only where a GPU is.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import tensorflow as tf

STRATEGIES = ("auto", "mirrored", "multiworker")


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: all local GPUs when there are several. ``multiworker`` reads TF_CONFIG.

    Multi-worker collectives must be configured before any other TensorFlow op runs, so
    call this first."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose auto, mirrored or multiworker")


def _task() -> dict[str, Any]:
    task: dict[str, Any] = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task


def is_chief() -> bool:
    """Only the chief (worker 0, or a single process) writes the bundle in multi-worker runs."""
    task = _task()
    return task.get("type", "worker") in ("worker", "chief") and int(task.get("index", 0)) == 0


def worker_index() -> int:
    """This process's task index in TF_CONFIG (0 without one)."""
    return int(_task().get("index", 0))


def use_mixed_precision(requested: bool) -> bool:
    """Switch Keras to ``mixed_float16`` when asked and a GPU is present; returns whether
    it is on (on CPU float16 is slower, so the request is ignored there)."""
    enabled = bool(requested and tf.config.list_logical_devices("GPU"))
    keras.mixed_precision.set_global_policy("mixed_float16" if enabled else "float32")
    return enabled
