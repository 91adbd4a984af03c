"""The forward pass on ONNX Runtime: the bundle's ``model.onnx``, no TensorFlow in the process.

``model.onnx`` is written by ``ml_model/training/export.py`` from
``forward.serving_function`` (tf2onnx), so it computes the graph ``KerasForward`` runs and
TF Serving serves: uint8 (N, S, S, 3) ``image`` -> ``probability`` and ``ct_logit`` (and a
study bundle's ``slice_features``, which the forward then returns too). Its
parity with TensorFlow (max |Δp|, verdict agreement) is in the model card under
``runtimes.onnx``. ``gradcam.onnx`` is Grad-CAM as its own graph (:class:`OnnxGradCam`), so
``explain=true`` needs no TensorFlow either.

The session: graph optimisation ALL, intra-op threads = the CPUs this process may use,
one inter-op thread (the graph is a chain), and no spinning: idle pool threads sleep
instead of burning the cores the request path (decode, multipart, JSON) needs.

Batches (two images or more) run on *lanes*: one single-thread session per CPU, each on its
share of the batch, side by side. The spine crop and the CT gate's statistics are many small
operations, and a multi-threaded session synchronises its threads on every one of them;
lanes never wait for each other (batch 16 in-process: 9.4 -> 5.6 ms per image). A
lone image keeps the multi-threaded session (the lower latency for one).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml_model.bundle import (
    EXPORTED_FROM_KEY,
    GRADCAM_BOX_OUTPUT,
    GRADCAM_ONNX_FILE,
    GRADCAM_OUTPUT,
    ONNX_FILE,
    SERVING_FEATURES_OUTPUT,
    SERVING_GATE_OUTPUT,
    SERVING_INPUT,
    SERVING_OUTPUT,
    SHARED_WEIGHTS_KEY,
)
from ml_model.inference.explain import place_cam
from ml_model.inference.forward import ForwardOutput, ModelUnavailableError, as_features

if TYPE_CHECKING:
    import onnxruntime as ort

    from ml_model.inference.bundle import Bundle

# Images per session.run. ONNX Runtime materialises every intermediate of the spine crop and
# the CT gate's features (dozens of (N, 384, 384) float tensors): past ~8 images they leave
# the caches and the cost per image rises (bench.ceiling: ms_per_image_b8 vs batched). It
# also keeps its memory arena at the largest batch it has run, so the chunk bounds the
# resident memory too.
ONNX_CHUNK = 8
CLOSED_DETAIL = "the model is closed (the server is shutting down)"


class OnnxModelError(ValueError):
    """A bundle's ONNX file is missing, unreadable or has the wrong signature (the message
    names the file and what to do)."""


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's cpuset, taskset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Optimisation ALL, ``threads`` intra-op threads (default: every available CPU), one
    inter-op thread, sequential execution, spinning off."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or available_cpus()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: shape-merge notes are not for operators
    return options


def open_session(path: str | Path, threads: int | None = None) -> ort.InferenceSession:
    """An ONNX Runtime CPU session on ``path``; :class:`OnnxModelError` names the file."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise OnnxModelError(
            f"{path}: the bundle has no {path.name}; add it with "
            f"`python -m ml_model.training.export --bundle {path.parent}` "
            "or serve with INFERENCE_BACKEND=local (TensorFlow)"
        )
    try:
        return ort.InferenceSession(
            str(path), session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own exception types (no common base)
        raise OnnxModelError(f"{path}: unreadable ONNX model ({exc})") from exc


def sha256_of(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def exported_from(model_dir: Path, temperature: float) -> dict[str, Any]:
    """What model.onnx records about its source: the bundle files baked into it and the
    calibration temperature."""
    from ml_model.bundle import GATE_FILE, KERAS_FILE

    sources: dict[str, Any] = {
        name: sha256_of(model_dir / name)
        for name in (KERAS_FILE, GATE_FILE)
        if (model_dir / name).is_file()
    }
    return sources | {"temperature": float(temperature)}


def check_exported_from(path: Path, session: ort.InferenceSession, temperature: float) -> None:
    """The graph bakes in the network's weights, the CT gate's coefficients and the
    temperature: it must have been exported from this bundle's files and its card's
    ``temperature`` (a bundle retrained, its gate refitted or recalibrated since would
    otherwise serve the old model quietly)."""
    stamp = session.get_modelmeta().custom_metadata_map.get(EXPORTED_FROM_KEY)
    if stamp is None:
        return  # exported before the stamp existed: nothing to compare
    recorded = json.loads(stamp)
    current = exported_from(path.parent, temperature)
    changed = [
        name for name, value in recorded.items() if name in current and current[name] != value
    ]
    if changed:
        raise OnnxModelError(
            f"{path}: exported from another {' / '.join(changed)} than the bundle now holds "
            f"(retrained, refitted or recalibrated since?); export it again: "
            f"`python -m ml_model.training.export --bundle {path.parent}`"
        )


def check_shared_weights(path: Path, session: ort.InferenceSession) -> None:
    """A graph whose weights are byte ranges of another file (``gradcam.onnx`` of
    ``model.onnx``) runs only against the very file it was exported with."""
    import hashlib

    stamp = session.get_modelmeta().custom_metadata_map.get(SHARED_WEIGHTS_KEY)
    if stamp is None:
        return
    name, _, expected = stamp.partition(" sha256:")
    weights = path.parent / name
    if not weights.is_file() or hashlib.sha256(weights.read_bytes()).hexdigest() != expected:
        raise OnnxModelError(
            f"{path}: its weights are those of the {name} it was exported with, and {weights} "
            f"has changed since; export both again (`python -m ml_model.training.export "
            f"--bundle {path.parent}`)"
        )


def _run(session: ort.InferenceSession | None, names: list[str], feed: dict[str, Any]) -> Any:
    if session is None:
        raise ModelUnavailableError(CLOSED_DETAIL)
    return session.run(names, feed)


class OnnxForward:
    """``model.onnx`` in this process: uint8 images in bounded chunks -> both outputs; a
    lone image on one multi-threaded session, a batch split over ``lanes`` single-thread
    sessions run side by side (``lanes=1``: the multi-threaded session for everything)."""

    def __init__(
        self,
        path: str | Path,
        threads: int | None = None,
        chunk: int = ONNX_CHUNK,
        lanes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.threads = threads or available_cpus()
        self.chunk = max(1, chunk)
        self._session: ort.InferenceSession | None = open_session(self.path, self.threads)
        self.img_size = self._check_signature(self._session)
        # A study bundle's graph also returns each slice's features for the study head.
        self.has_features = SERVING_FEATURES_OUTPUT in {
            output.name for output in self._session.get_outputs()
        }
        self._names = [SERVING_OUTPUT, SERVING_GATE_OUTPUT]
        if self.has_features:
            self._names.append(SERVING_FEATURES_OUTPUT)
        self.lanes = max(1, lanes if lanes is not None else self.threads)
        self._lanes: list[ort.InferenceSession] = []
        self._pool: ThreadPoolExecutor | None = None
        if self.lanes > 1:
            self._lanes = [open_session(self.path, 1) for _ in range(self.lanes)]
            self._pool = ThreadPoolExecutor(self.lanes, thread_name_prefix="onnx-lane")

    def _check_signature(self, session: ort.InferenceSession) -> int:
        inputs = session.get_inputs()
        outputs = {output.name for output in session.get_outputs()}
        problem = None
        if len(inputs) != 1 or inputs[0].name != SERVING_INPUT:
            problem = f"one input named {SERVING_INPUT!r}, got {[i.name for i in inputs]}"
        elif inputs[0].type != "tensor(uint8)":
            problem = f"a uint8 input, got {inputs[0].type}"
        elif not {SERVING_OUTPUT, SERVING_GATE_OUTPUT} <= outputs:
            problem = f"outputs {SERVING_OUTPUT!r} and {SERVING_GATE_OUTPUT!r}, got {outputs}"
        shape = inputs[0].shape if inputs else []
        if problem is None and (len(shape) != 4 or not isinstance(shape[1], int)):
            problem = f"input shape (N, S, S, 3), got {shape}"
        if problem is not None:
            raise OnnxModelError(f"{self.path}: the model must have {problem}")
        return int(shape[1])

    @classmethod
    def from_bundle(
        cls, bundle: Bundle | str | Path, threads: int | None = None, lanes: int | None = None
    ) -> OnnxForward:
        """The bundle's model.onnx, refused (:class:`OnnxModelError`) when the bundle's
        model, CT gate or calibration changed after it was exported."""
        from ml_model.inference.bundle import Bundle, as_bundle

        folder = bundle.path if isinstance(bundle, Bundle) else Path(bundle)
        forward = cls(Path(folder, ONNX_FILE), threads, lanes=lanes)  # names a missing file
        if forward._session is not None:
            check_exported_from(forward.path, forward._session, as_bundle(bundle).card.temperature)
        return forward

    def _chunks(self, session: ort.InferenceSession | None, images: np.ndarray) -> ForwardOutput:
        parts = []
        for start in range(0, len(images), self.chunk):
            feed = {SERVING_INPUT: images[start : start + self.chunk]}
            probability, ct_logit, *features = _run(session, self._names, feed)
            parts.append(
                ForwardOutput(
                    np.asarray(probability, np.float64).reshape(-1),
                    np.asarray(ct_logit, np.float64).reshape(-1),
                    as_features(features[0]) if features else None,
                )
            )
        return ForwardOutput.concat(parts)

    def __call__(self, images: np.ndarray) -> ForwardOutput:
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if not len(images):
            return ForwardOutput(np.zeros(0), np.zeros(0))  # no features of no slice
        pool, lanes = self._pool, self._lanes
        if pool is None or len(images) < 2 or self._session is None:
            return self._chunks(self._session, images).check(len(images))
        shares = [share for share in np.array_split(images, len(lanes)) if len(share)]
        runs = pool.map(self._chunks, lanes, shares)
        return ForwardOutput.concat(list(runs)).check(len(images))

    def is_ready(self) -> bool:
        return self._session is not None

    def close(self) -> None:
        # ONNX Runtime frees the sessions once no run holds a reference (a run in flight
        # keeps its own); the lanes' idle threads end with their pool.
        self._session = None
        self._lanes = []
        self._pool = None


class OnnxGradCam:
    """Grad-CAM of one uint8 image (S, S, 3) from the bundle's ``gradcam.onnx``, placed in
    the frame of the whole input like ``gradcam.GradCam`` (whose computation it exports).
    The session opens on the first heatmap asked for (warm-up leaves it alone)."""

    lazy = True

    def __init__(self, path: str | Path, img_size: int, threads: int | None = None) -> None:
        self.path = Path(path)
        self.img_size = img_size
        self.threads = threads
        self._lock = threading.Lock()
        self._session: ort.InferenceSession | None = None

    @classmethod
    def from_bundle(
        cls, model_dir: str | Path, img_size: int, threads: int | None = None
    ) -> OnnxGradCam:
        return cls(Path(model_dir, GRADCAM_ONNX_FILE), img_size, threads)

    def _ready_session(self) -> ort.InferenceSession:
        with self._lock:
            if self._session is None:
                session = open_session(self.path, self.threads)
                check_shared_weights(self.path, session)
                self._session = session
            return self._session

    def __call__(self, image: np.ndarray) -> np.ndarray:
        session = self._ready_session()
        names = [output.name for output in session.get_outputs()]
        batch = np.ascontiguousarray(np.asarray(image, np.uint8)[np.newaxis])
        outputs = dict(zip(names, session.run(names, {SERVING_INPUT: batch}), strict=True))
        cam = np.asarray(outputs[GRADCAM_OUTPUT][0], np.float32)
        if GRADCAM_BOX_OUTPUT not in outputs:
            return cam
        return place_cam(cam, outputs[GRADCAM_BOX_OUTPUT][0], self.img_size)
