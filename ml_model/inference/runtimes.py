"""The runtime registry: every place a bundle's forward can run, in one explicit table.

A runtime turns a loaded :class:`~ml_model.inference.bundle.Bundle` into a forward (uint8
slices -> calibrated P(fracture), the CT gate's logit and a study bundle's slice features)
and the Grad-CAM that goes with it. The server (``INFERENCE_BACKEND``), ``predict`` and
``evaluate`` (``--runtime``) and the inference core's default all pick one by name here;
nothing else chooses with if/elif. Adding one is a function and a row in :data:`RUNTIMES`
(ARCHITECTURE.md, "Worked example: adding a runtime"). Each imports its own dependencies
when chosen: ONNX Runtime and TF Serving never import TensorFlow.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_model.bundle import GRADCAM_ONNX_FILE
from ml_model.inference.bundle import Bundle
from ml_model.inference.forward import Forward

GradCamFn = Callable[[np.ndarray], np.ndarray]
DEFAULT_TFSERVING_URL = "http://localhost:8501/v1/models/fracture:predict"


@dataclass(frozen=True)
class RuntimeOptions:
    """What a runtime may be tuned with (each runtime reads its own)."""

    threads: int | None = None  # ONNX Runtime: intra-op threads (None: every CPU)
    lanes: int | None = None  # ONNX Runtime: single-thread sessions for batches
    tfserving_url: str = DEFAULT_TFSERVING_URL
    tfserving_timeout_s: float = 10.0


@dataclass(frozen=True)
class Runtime:
    """A forward and its Grad-CAM for a bundle, and a line for ``--help`` and the docs."""

    load: Callable[[Bundle, RuntimeOptions], tuple[Forward, GradCamFn]]
    description: str


def _bundle_gradcam(bundle: Bundle, options: RuntimeOptions) -> GradCamFn:
    """Grad-CAM without TensorFlow in the process: the bundle's ``gradcam.onnx``, opened on
    the first heatmap; a bundle without it: ``model.keras``, loaded on the first heatmap."""
    onnx_file = Path(bundle.path, GRADCAM_ONNX_FILE)
    if onnx_file.is_file():
        from ml_model.inference.forward_onnx import OnnxGradCam

        return OnnxGradCam(onnx_file, bundle.img_size, options.threads)
    from ml_model.inference.gradcam import LazyGradCam

    return LazyGradCam(bundle.path, bundle.card.gradcam_layer)


def _onnx(bundle: Bundle, options: RuntimeOptions) -> tuple[Forward, GradCamFn]:
    from ml_model.inference.forward_onnx import OnnxForward

    forward = OnnxForward.from_bundle(bundle, options.threads, options.lanes)
    return forward, _bundle_gradcam(bundle, options)


def _local(bundle: Bundle, options: RuntimeOptions) -> tuple[Forward, GradCamFn]:
    if importlib.util.find_spec("tensorflow") is None:
        raise RuntimeError(
            "INFERENCE_BACKEND=local runs TensorFlow, which is not installed here (the "
            "serving image leaves it out): use onnx (the default) or tfserving"
        )
    from ml_model.inference.forward import KerasForward
    from ml_model.inference.gradcam import GradCam

    forward = KerasForward.from_bundle(bundle)
    return forward, GradCam(forward.model, bundle.card.gradcam_layer)


def _tfserving(bundle: Bundle, options: RuntimeOptions) -> tuple[Forward, GradCamFn]:
    from ml_model.inference.forward_tfserving import TFServingForward

    forward = TFServingForward(options.tfserving_url, options.tfserving_timeout_s)
    return forward, _bundle_gradcam(bundle, options)


RUNTIMES: dict[str, Runtime] = {
    "onnx": Runtime(_onnx, "the bundle's model.onnx in this process (ONNX Runtime, no TensorFlow)"),
    "local": Runtime(
        _local, "the bundle's model.keras in this process (TensorFlow, the reference)"
    ),
    "tfserving": Runtime(_tfserving, "TF Serving's REST API serving the bundle's saved_model/"),
}


def load_runtime(
    name: str, bundle: Bundle, options: RuntimeOptions | None = None
) -> tuple[Forward, GradCamFn]:
    """The forward and Grad-CAM of the runtime ``name`` for ``bundle``."""
    if name not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose from {sorted(RUNTIMES)}")
    return RUNTIMES[name].load(bundle, options or RuntimeOptions())


def add_runtime_argument(parser: argparse.ArgumentParser, default: str = "local") -> None:
    """A command's ``--runtime`` (``predict``, ``evaluate``): TensorFlow, the reference,
    unless told otherwise."""
    parser.add_argument(
        "--runtime",
        default=default,
        choices=sorted(RUNTIMES),
        help="where the forward runs: "
        + "; ".join(f"{name}: {runtime.description}" for name, runtime in RUNTIMES.items()),
    )
