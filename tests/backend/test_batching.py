"""Dynamic micro-batching of the REAL forward: same answers, fewer model calls, isolation.

Micro-batching wraps only the forward function (``MicroBatcher`` / ``BatchedForward``
around the served ``OnnxForward``, or a ``KerasForward``). Model calls are counted by
wrapping the reference core's real forward (the real model still answers every call).
Ordering is made deterministic where it matters by holding the first model call on an
event, so that later requests queue up behind it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.app.core.config import Settings
from backend.app.main import create_app
from backend.app.services import inference as inference_module
from backend.app.services.inference import create_core
from ml_model.config import DEFAULT_MODEL_DIR, SHARED_DATA_DIR
from ml_model.inference.batching import BatchedForward, MicroBatcher
from ml_model.inference.bundle import Bundle
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward import ForwardOutput, KerasForward, ModelUnavailableError
from ml_model.inference.forward_onnx import OnnxForward, OnnxGradCam
from ml_model.inference.gradcam import GradCam

TOLERANCE = 1e-5  # batch size changes float summation order only
LOGIT_TOLERANCE = 1e-4  # the CT gate's logit: a sum over many features, same story


@pytest.fixture(scope="module")
def slices(predictor: InferenceCore) -> np.ndarray:
    """24 model inputs: real CT slices when the shared data is there, else noise images."""
    paths = sorted((SHARED_DATA_DIR / "train").rglob("*.png"))[::40][:24]
    if len(paths) == 24:
        return np.stack([predictor.model_input(predictor.decode(p.read_bytes())) for p in paths])
    rng = np.random.default_rng(0)
    return rng.integers(
        0, 256, (24, predictor.bundle.img_size, predictor.bundle.img_size, 3), dtype=np.uint8
    )


@pytest.fixture(scope="module")
def reference(predictor: InferenceCore, slices: np.ndarray) -> list[ForwardOutput]:
    """Each image alone through the reference core's real forward: what every caller must
    get back."""
    return [predictor.forward(image[np.newaxis]) for image in slices]


class CountingForward:
    """A forward around the real one: counts calls and their batch sizes."""

    def __init__(self, real: Callable[[np.ndarray], ForwardOutput]) -> None:
        self.real = real
        self.sizes: list[int] = []
        self.lock = threading.Lock()
        self.closed = False

    def __call__(self, images: np.ndarray) -> ForwardOutput:
        with self.lock:
            self.sizes.append(len(images))
        return self.real(images)

    def is_ready(self) -> bool:
        return not self.closed

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def batched(predictor: InferenceCore) -> Iterator[Callable[..., BatchedForward]]:
    """``BatchedForward`` around a counting wrapper of the reference's real forward."""
    made: list[BatchedForward] = []

    def make(max_size: int = 16, max_wait_s: float = 0.005) -> BatchedForward:
        forward = BatchedForward(CountingForward(predictor.forward), max_size, max_wait_s)
        made.append(forward)
        return forward

    yield make
    for forward in made:
        forward.close()


def check_same(got: ForwardOutput, expected: ForwardOutput) -> None:
    assert isinstance(got, ForwardOutput), got
    assert got.probability.shape == expected.probability.shape
    np.testing.assert_allclose(got.probability, expected.probability, atol=TOLERANCE)
    np.testing.assert_allclose(got.ct_logit, expected.ct_logit, atol=LOGIT_TOLERANCE)


def run_concurrently(forward: BatchedForward, images: np.ndarray) -> list[Any]:
    """One thread per image, all released at once, each announcing itself first."""
    barrier = threading.Barrier(len(images))

    def call(image: np.ndarray) -> Any:
        with forward.incoming():
            barrier.wait()
            try:
                return forward(image[np.newaxis])
            except Exception as exc:
                return exc

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(call, images))


def test_batched_results_equal_unbatched(
    batched: Any, predictor: InferenceCore, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    forward = batched()
    for image, expected in zip(slices[:4], reference, strict=False):
        check_same(forward(image[np.newaxis]), expected)
    # One multi-image call through the batcher equals the images one by one...
    together = forward(slices[:8])
    assert len(together) == 8
    for row, expected in enumerate(reference[:8]):
        check_same(together.rows(row, row + 1), expected)
    # ...and so do the verdicts a core over the batched forward gives.
    core = InferenceCore(DEFAULT_MODEL_DIR, forward, gradcam=predictor.gradcam)
    for verdict, expected in zip(core.classify(slices[:8]), reference[:8], strict=True):
        (alone,) = predictor.judge(expected)
        assert verdict.result == alone.result
        assert verdict.in_distribution is alone.in_distribution
        assert verdict.probability == pytest.approx(alone.probability, abs=TOLERANCE)


def test_concurrent_callers_get_their_own_answers_from_fewer_model_calls(
    batched: Any, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    forward = batched(max_size=16)
    counter = forward.inner
    results = run_concurrently(forward, slices)
    for got, expected in zip(results, reference, strict=True):
        check_same(got, expected)
    assert sum(counter.sizes) == len(slices)  # every image ran exactly once
    assert len(counter.sizes) < len(slices)  # ...in fewer calls than requests
    assert max(counter.sizes) <= 16
    assert forward.batcher.requests == len(slices)
    assert forward.batcher.model_calls == len(counter.sizes)


class Gate:
    """Wraps a real forward; the first call waits until ``release`` so that others queue."""

    def __init__(self, real: Callable[[np.ndarray], ForwardOutput]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> ForwardOutput:
        self.sizes.append(len(images))
        if len(self.sizes) == 1:
            self.entered.set()
            assert self.release.wait(10)
        return self.real(images)


def wait_queued(batcher: MicroBatcher, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(batcher._queue) < count:
        assert time.monotonic() < deadline, "requests did not queue"
        time.sleep(0.001)


def test_queued_requests_run_as_one_batch(
    predictor: InferenceCore, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    gate = Gate(predictor.forward)
    batcher = MicroBatcher(gate, max_size=16, max_wait_s=0.0)
    try:
        first = batcher.submit(slices[:1])
        assert gate.entered.wait(5)
        futures = [batcher.submit(image[np.newaxis]) for image in slices[1:11]]
        wait_queued(batcher, 10)
        gate.release.set()
        check_same(first.result(10), reference[0])
        for future, expected in zip(futures, reference[1:11], strict=True):
            check_same(future.result(10), expected)
        assert gate.sizes == [1, 10]
    finally:
        gate.release.set()
        batcher.close()


def test_max_size_splits_batches(predictor: InferenceCore, slices: np.ndarray) -> None:
    gate = Gate(predictor.forward)
    batcher = MicroBatcher(gate, max_size=4, max_wait_s=0.0)
    try:
        first = batcher.submit(slices[:1])
        assert gate.entered.wait(5)
        futures = [batcher.submit(slices[i : i + 3]) for i in range(1, 13, 3)]  # 4 x 3 images
        futures.append(batcher.submit(slices[13:21]))  # 8 images: over max, runs alone
        wait_queued(batcher, 5)
        gate.release.set()
        for future, size in zip([first, *futures], [1, 3, 3, 3, 3, 8], strict=True):
            assert len(future.result(10)) == size
        assert gate.sizes == [1, 3, 3, 3, 3, 8]
    finally:
        gate.release.set()
        batcher.close()


def test_max_size_must_be_positive(predictor: InferenceCore) -> None:
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(predictor.forward, max_size=0)


def test_one_bad_request_does_not_poison_the_batch(
    predictor: InferenceCore, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    poison_value = 7

    def model(images: np.ndarray) -> ForwardOutput:
        if np.any(np.all(images == poison_value, axis=(1, 2, 3))):
            raise RuntimeError("the model choked on this image")
        # The core's shape check, then the real forward. A wrong shape must never reach
        # KerasForward's tf.function itself: TensorFlow (2.21) keeps the function's lock
        # when its input signature refuses a call, and every later call then hangs.
        return predictor.scores(images)

    gate = Gate(model)
    batcher = MicroBatcher(gate, max_size=16, max_wait_s=0.0)
    try:
        first = batcher.submit(slices[:1])
        assert gate.entered.wait(5)
        good_a = batcher.submit(slices[1:2])
        wrong_shape = batcher.submit(np.zeros((1, 10, 10, 3), np.uint8))
        good_b = batcher.submit(slices[2:3])
        poisoned = batcher.submit(np.full(slices[:1].shape, poison_value, np.uint8))
        good_c = batcher.submit(slices[3:4])
        wait_queued(batcher, 5)
        gate.release.set()
        check_same(first.result(10), reference[0])
        check_same(good_a.result(10), reference[1])
        check_same(good_b.result(10), reference[2])
        check_same(good_c.result(10), reference[3])
        with pytest.raises(ValueError, match="expected images of shape"):
            wrong_shape.result(10)
        with pytest.raises(RuntimeError, match="choked"):
            poisoned.result(10)
        # The batcher keeps working afterwards.
        check_same(batcher.run(slices[4:5]), reference[4])
    finally:
        gate.release.set()
        batcher.close()


def test_a_cancelled_request_does_not_fail_its_batch(
    predictor: InferenceCore, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    """A caller that gives up (cancels its queued future) leaves the rest of the batch
    answered, and its images are not run."""
    gate = Gate(predictor.forward)
    batcher = MicroBatcher(gate, max_size=16, max_wait_s=0.0)
    try:
        first = batcher.submit(slices[:1])
        assert gate.entered.wait(5)
        given_up = batcher.submit(slices[1:2])
        kept = batcher.submit(slices[2:3])
        wait_queued(batcher, 2)
        assert given_up.cancel()
        gate.release.set()
        check_same(first.result(10), reference[0])
        check_same(kept.result(10), reference[2])
        assert given_up.cancelled()
        assert gate.sizes == [1, 1]
        check_same(batcher.run(slices[3:4]), reference[3])  # still working
    finally:
        gate.release.set()
        batcher.close()


def test_a_forward_that_returns_the_wrong_row_count_fails_its_callers(
    predictor: InferenceCore, slices: np.ndarray
) -> None:
    def short(images: np.ndarray) -> ForwardOutput:
        return predictor.forward(images).rows(0, len(images) - 1)

    batcher = MicroBatcher(short, max_size=16, max_wait_s=0.0)
    try:
        with pytest.raises(RuntimeError, match="returned 1 results for 2 images"):
            batcher.run(slices[:2])
    finally:
        batcher.close()


def test_a_lone_request_does_not_wait(predictor: InferenceCore, slices: np.ndarray) -> None:
    batcher = MicroBatcher(predictor.forward, max_size=16, max_wait_s=2.0)  # a huge wait
    try:
        batcher.run(slices[:1])
        started = time.perf_counter()
        for image in slices[:5]:
            with batcher.incoming():  # announced, then submitted: nobody else on the way
                batcher.run(image[np.newaxis])
        assert time.perf_counter() - started < 1.0
    finally:
        batcher.close()


def test_worker_waits_for_announced_requests(predictor: InferenceCore, slices: np.ndarray) -> None:
    counting = CountingForward(predictor.forward)
    batcher = MicroBatcher(counting, max_size=16, max_wait_s=2.0)
    try:
        batcher.run(slices[:1])
        counting.sizes.clear()
        announced = threading.Event()
        result: list[ForwardOutput] = []

        def late_caller() -> None:
            with batcher.incoming():
                announced.set()
                time.sleep(0.05)  # decoding its upload
                result.append(batcher.run(slices[1:2]))

        thread = threading.Thread(target=late_caller)
        thread.start()
        assert announced.wait(5)
        mine = batcher.run(slices[2:3])
        thread.join(10)
        assert counting.sizes == [2]  # the early request waited for the announced one
        assert len(result) == 1 and len(result[0]) == 1
        assert mine.probability.shape == (1,) and mine.ct_logit.shape == (1,)
    finally:
        batcher.close()


def test_withdrawn_announcement_stops_the_wait(
    predictor: InferenceCore, slices: np.ndarray
) -> None:
    batcher = MicroBatcher(predictor.forward, max_size=16, max_wait_s=3.0)
    try:
        batcher.run(slices[:1])
        announced = threading.Event()

        def failing_caller() -> None:
            with batcher.incoming():
                announced.set()
                time.sleep(0.05)
                # an upload error: leaves without submitting

        thread = threading.Thread(target=failing_caller)
        thread.start()
        assert announced.wait(5)
        started = time.perf_counter()
        batcher.run(slices[1:2])
        thread.join(10)
        assert time.perf_counter() - started < 2.0  # did not sit out the 3 s wait
        assert batcher._announced == 0
    finally:
        batcher.close()


def test_close_drains_queued_requests_then_refuses(
    predictor: InferenceCore, slices: np.ndarray, reference: list[ForwardOutput]
) -> None:
    gate = Gate(predictor.forward)
    batcher = MicroBatcher(gate, max_size=16, max_wait_s=0.0)
    first = batcher.submit(slices[:1])
    assert gate.entered.wait(5)
    queued = batcher.submit(slices[1:2])
    closer = threading.Thread(target=batcher.close)
    closer.start()
    gate.release.set()
    closer.join(10)
    assert not closer.is_alive()
    check_same(first.result(1), reference[0])
    check_same(queued.result(1), reference[1])  # accepted before close: still answered
    assert not batcher._thread.is_alive()
    with pytest.raises(ModelUnavailableError, match="shutting down") as refused:
        batcher.run(slices[:1])
    assert refused.value.status_code == 503


def test_closed_batched_forward_is_not_ready(batched: Any) -> None:
    forward = batched()
    assert forward.is_ready()
    forward.close()
    assert not forward.is_ready()
    assert forward.inner.closed  # closing the wrapper closes the forward it wraps


def test_lifespan_closes_the_core_it_built(
    predictor: InferenceCore, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: list[InferenceCore] = []
    counting = CountingForward(predictor.forward)

    def build(settings: Settings, bundle: Bundle | None = None) -> InferenceCore:
        forward = BatchedForward(counting, settings.batch_max_size, 0.002)
        core = InferenceCore(bundle or settings.model_dir, forward, gradcam=predictor.gradcam)
        built.append(core)
        return core

    monkeypatch.setattr("backend.app.main.create_core", build)
    app = create_app(Settings(frontend_dist=tmp_path / "none"))
    with TestClient(app) as client:
        (core,) = built
        forward = core.forward
        assert isinstance(forward, BatchedForward)
        assert client.get("/ready").status_code == 200
        assert forward.batcher._thread.is_alive()
        assert counting.sizes  # warm-up ran through the batched forward
    assert not forward.batcher._thread.is_alive()
    assert forward.batcher.closed
    assert counting.closed  # ...and the forward it wraps
    assert app.state.inference is None


def test_lifespan_leaves_a_shared_core_open(service: InferenceCore, tmp_path: Path) -> None:
    """An app handed a loaded core (``create_app(inference=...)``) must not close it."""
    app = create_app(Settings(frontend_dist=tmp_path / "none"), inference=service)
    with TestClient(app) as other:
        assert other.get("/ready").status_code == 200
    forward = service.forward
    assert isinstance(forward, BatchedForward)
    assert not forward.batcher.closed
    assert service.is_ready()


def test_concurrent_api_requests_are_batched(
    client: TestClient,
    service: InferenceCore,
    predictor: InferenceCore,
    monkeypatch: pytest.MonkeyPatch,
    ct_slice_paths: list[Path],
) -> None:
    """Through the production app: 16 clients at once, each gets its own slice's answer."""
    forward = service.forward
    assert isinstance(forward, BatchedForward)
    assert isinstance(forward.inner, OnnxForward)
    counting = CountingForward(forward.batcher._forward)
    monkeypatch.setattr(forward.batcher, "_forward", counting)
    uploads = [ct_slice_paths[i % len(ct_slice_paths)] for i in range(16)]
    expected = {path: predictor.verdict(path.read_bytes()) for path in set(uploads)}
    barrier = threading.Barrier(len(uploads))

    def post(path: Path) -> dict[str, Any]:
        data = path.read_bytes()
        barrier.wait()
        response = client.post("/predict", files={"file": (path.name, data)})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(post, uploads))
    for path, answer in zip(uploads, answers, strict=True):
        assert answer["prediction"] == pytest.approx(expected[path].probability, abs=TOLERANCE)
        assert answer["result"] == expected[path].result
        assert answer["in_distribution"] is expected[path].in_distribution
    assert sum(counting.sizes) == len(uploads)
    assert len(counting.sizes) < len(uploads)  # overlapping requests shared model calls


# --- settings and wiring -------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "raw", "attribute", "expected"),
    [
        ("BATCHING", "false", "batching", False),
        ("BATCHING", "1", "batching", True),
        ("BATCH_MAX_SIZE", "32", "batch_max_size", 32),
        ("BATCH_MAX_WAIT_MS", "0.5", "batch_max_wait_ms", 0.5),
        ("TF_INTRA_OP_THREADS", "3", "intra_op_threads", 3),
        ("TF_INTER_OP_THREADS", "1", "tf_inter_op_threads", 1),
        ("BLAS_THREADS", "2", "blas_threads", 2),
    ],
)
def test_batching_settings_from_env(
    monkeypatch: pytest.MonkeyPatch, env: str, raw: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(env, raw)
    assert getattr(Settings(), attribute) == expected


def test_batching_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.batching is True
    assert settings.batch_max_size == 16
    assert settings.batch_max_wait_ms == 2.0
    assert settings.intra_op_threads >= 1


@pytest.mark.parametrize(("env", "raw"), [("BATCH_MAX_WAIT_MS", "6"), ("BATCH_MAX_SIZE", "0")])
def test_bad_batching_settings_refused(monkeypatch: pytest.MonkeyPatch, env: str, raw: str) -> None:
    monkeypatch.setenv(env, raw)
    with pytest.raises(ValidationError):
        Settings()


@pytest.fixture
def keras_forward(keras_predictor: InferenceCore) -> KerasForward:
    """The bundle in TensorFlow (INFERENCE_BACKEND=local)."""
    assert isinstance(keras_predictor.forward, KerasForward)
    return keras_predictor.forward


@pytest.mark.parametrize("backend", ["onnx", "local"])
@pytest.mark.parametrize("batching_on", [True, False])
def test_create_core_honours_batching(
    batching_on: bool,
    backend: str,
    predictor: InferenceCore,
    keras_forward: KerasForward,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``create_core`` with ONNX Runtime (the default) and in local mode (TensorFlow): the
    backend's forward, wrapped in a BatchedForward (with the configured size and wait)
    exactly when BATCHING is on. The model load itself is an already loaded forward
    (``from_bundle`` is the only thing replaced)."""
    loaded: list[Path] = []
    ready = predictor.forward if backend == "onnx" else keras_forward

    def from_bundle(cls: type, bundle: Bundle, *args: Any) -> Any:
        loaded.append(bundle.path)
        return ready

    owner = OnnxForward if backend == "onnx" else KerasForward
    monkeypatch.setattr(owner, "from_bundle", classmethod(from_bundle))
    settings = Settings(
        batching=batching_on, batch_max_size=8, batch_max_wait_ms=1.5, inference_backend=backend
    )
    core = create_core(settings)
    try:
        assert loaded == [Path(settings.model_dir)]
        forward = core.forward
        assert isinstance(forward, BatchedForward) is batching_on
        if isinstance(forward, BatchedForward):
            assert forward.inner is ready
            assert forward.batcher.max_size == 8
            assert forward.batcher.max_wait_s == pytest.approx(0.0015)
        else:
            assert forward is ready
        # local: Grad-CAM on the loaded model; onnx: the bundle's gradcam.onnx, no TensorFlow
        assert isinstance(core._gradcam, GradCam if backend == "local" else OnnxGradCam)
    finally:
        if batching_on:
            assert isinstance(core.forward, BatchedForward)
            core.forward.batcher.close()  # the loaded forward itself stays open for others
    if batching_on:
        assert isinstance(core.forward, BatchedForward) and core.forward.batcher.closed


def test_thread_pools_set_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """TF sizes are applied when TensorFlow has not started (afterwards a logged no-op);
    numpy's BLAS is limited to BLAS_THREADS."""
    import tensorflow as tf
    from threadpoolctl import threadpool_info

    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        tf.config.threading,
        "set_intra_op_parallelism_threads",
        lambda n: calls.append(("intra", n)),
    )
    monkeypatch.setattr(
        tf.config.threading,
        "set_inter_op_parallelism_threads",
        lambda n: calls.append(("inter", n)),
    )
    inference_module.configure_threads(Settings(tf_intra_op_threads=3, tf_inter_op_threads=1))
    assert calls == [("intra", 3), ("inter", 1)]
    blas = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    assert blas and all(pool["num_threads"] == 1 for pool in blas)

    def too_late(n: int) -> None:
        raise RuntimeError("Intra op parallelism cannot be modified after initialization.")

    monkeypatch.setattr(tf.config.threading, "set_intra_op_parallelism_threads", too_late)
    inference_module.configure_threads(Settings())  # does not raise
