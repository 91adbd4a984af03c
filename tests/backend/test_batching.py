"""Dynamic micro-batching over the REAL model: same answers, fewer model calls, isolation.

Model calls are counted by wrapping the real ``Predictor.run`` (the real model still
answers every call). Ordering is made deterministic where it matters by holding the
first model call on an event, so that later requests queue up behind it.
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
from backend.app.services.batching import BatchingInference, MicroBatcher, incoming
from backend.app.services.inference import (
    InferenceUnavailableError,
    LocalInference,
    create_inference_service,
)
from ml_model.config import SHARED_DATA_DIR
from ml_model.predictor import Prediction, Predictor
from ml_model.transforms import image_to_array

TOLERANCE = 1e-5  # batch size changes float summation order only


@pytest.fixture(scope="module")
def slices(predictor: Predictor) -> np.ndarray:
    """24 model inputs: real CT slices when the shared data is there, else noise images."""
    paths = sorted((SHARED_DATA_DIR / "train").rglob("*.png"))[::40][:24]
    if len(paths) == 24:
        return np.stack([image_to_array(p.read_bytes(), predictor.img_size) for p in paths])
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (24, predictor.img_size, predictor.img_size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reference(predictor: Predictor, slices: np.ndarray) -> list[Prediction]:
    """Each image alone through the real predictor: what every caller must get back."""
    return [predictor.run(image[np.newaxis]) for image in slices]


class CallCounter:
    """Wraps the real ``Predictor.run``: counts calls and their batch sizes."""

    def __init__(self, predictor: Predictor) -> None:
        self.real = predictor.run
        self.sizes: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> Prediction:
        with self.lock:
            self.sizes.append(len(images))
        return self.real(images)


@pytest.fixture
def counter(predictor: Predictor, monkeypatch: pytest.MonkeyPatch) -> CallCounter:
    counting = CallCounter(predictor)
    monkeypatch.setattr(predictor, "run", counting)
    return counting


@pytest.fixture
def batching(predictor: Predictor) -> Iterator[Callable[..., BatchingInference]]:
    made: list[BatchingInference] = []

    def make(max_size: int = 16, max_wait_s: float = 0.005) -> BatchingInference:
        service = BatchingInference(LocalInference(predictor), max_size, max_wait_s)
        made.append(service)
        return service

    yield make
    for service in made:
        service.batcher.close()


def check_same(got: Prediction, expected: Prediction) -> None:
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=TOLERANCE)
    assert got.ood_distances is not None and expected.ood_distances is not None
    np.testing.assert_allclose(got.ood_distances, expected.ood_distances, rtol=1e-4)
    np.testing.assert_array_equal(got.in_distribution, expected.in_distribution)
    assert got.features.shape == expected.features.shape


def run_concurrently(service: BatchingInference, images: np.ndarray) -> list[Any]:
    """One thread per image, all released at once, each announcing itself first."""
    barrier = threading.Barrier(len(images))

    def call(image: np.ndarray) -> Any:
        with incoming(service):
            barrier.wait()
            try:
                return service.run(image[np.newaxis])
            except Exception as exc:
                return exc

    with ThreadPoolExecutor(len(images)) as pool:
        return list(pool.map(call, images))


def test_batched_results_equal_unbatched(
    batching: Any, slices: np.ndarray, reference: list[Prediction]
) -> None:
    service = batching()
    for image, expected in zip(slices[:4], reference, strict=False):
        check_same(service.run(image[np.newaxis]), expected)
    # And one multi-image call through the batcher equals the images one by one.
    together = service.run(slices[:8])
    for row, expected in enumerate(reference[:8]):
        check_same(
            Prediction(
                together.probabilities[row : row + 1],
                together.features[row : row + 1],
                None if together.ood_distances is None else together.ood_distances[row : row + 1],
                together.in_distribution[row : row + 1],
            ),
            expected,
        )


def test_concurrent_callers_get_their_own_answers_from_fewer_model_calls(
    batching: Any, counter: CallCounter, slices: np.ndarray, reference: list[Prediction]
) -> None:
    service = batching(max_size=16)
    counter.sizes.clear()
    results = run_concurrently(service, slices)
    for got, expected in zip(results, reference, strict=True):
        assert isinstance(got, Prediction), got
        check_same(got, expected)
    assert sum(counter.sizes) == len(slices)  # every image ran exactly once
    assert len(counter.sizes) < len(slices)  # ...in fewer calls than requests
    assert max(counter.sizes) <= 16


class Gate:
    """Wraps the real run; the first call waits until ``open`` so that others queue."""

    def __init__(self, real: Callable[[np.ndarray], Prediction]) -> None:
        self.real = real
        self.entered = threading.Event()
        self.release = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, images: np.ndarray) -> Prediction:
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
    predictor: Predictor, slices: np.ndarray, reference: list[Prediction]
) -> None:
    gate = Gate(predictor.run)
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


def test_max_size_splits_batches(predictor: Predictor, slices: np.ndarray) -> None:
    gate = Gate(predictor.run)
    batcher = MicroBatcher(gate, max_size=4, max_wait_s=0.0)
    try:
        first = batcher.submit(slices[:1])
        assert gate.entered.wait(5)
        futures = [batcher.submit(slices[i : i + 3]) for i in range(1, 13, 3)]  # 4 x 3 images
        futures.append(batcher.submit(slices[13:21]))  # 8 images: over max, runs alone
        wait_queued(batcher, 5)
        gate.release.set()
        for future in [first, *futures]:
            future.result(10)
        assert gate.sizes == [1, 3, 3, 3, 3, 8]
    finally:
        gate.release.set()
        batcher.close()


def test_one_bad_request_does_not_poison_the_batch(
    predictor: Predictor, slices: np.ndarray, reference: list[Prediction]
) -> None:
    poison_value = 7

    def model(images: np.ndarray) -> Prediction:
        if np.any(np.all(images == poison_value, axis=(1, 2, 3))):
            raise RuntimeError("the model choked on this image")
        return predictor.run(images)

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


def test_a_lone_request_does_not_wait(predictor: Predictor, slices: np.ndarray) -> None:
    batcher = MicroBatcher(predictor.run, max_size=16, max_wait_s=2.0)  # a huge wait
    try:
        batcher.run(slices[:1])
        started = time.perf_counter()
        for image in slices[:5]:
            with batcher.incoming():  # announced, then submitted: nobody else on the way
                batcher.run(image[np.newaxis])
        assert time.perf_counter() - started < 1.0
    finally:
        batcher.close()


def test_worker_waits_for_announced_requests(predictor: Predictor, slices: np.ndarray) -> None:
    counting = CallCounter(predictor)
    batcher = MicroBatcher(counting, max_size=16, max_wait_s=2.0)
    try:
        batcher.run(slices[:1])
        counting.sizes.clear()
        announced = threading.Event()
        result: list[Prediction] = []

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
        assert result and mine.probabilities.shape == (1,)
    finally:
        batcher.close()


def test_withdrawn_announcement_stops_the_wait(predictor: Predictor, slices: np.ndarray) -> None:
    batcher = MicroBatcher(predictor.run, max_size=16, max_wait_s=3.0)
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
    finally:
        batcher.close()


def test_close_drains_queued_requests_then_refuses(
    predictor: Predictor, slices: np.ndarray, reference: list[Prediction]
) -> None:
    gate = Gate(predictor.run)
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
    with pytest.raises(InferenceUnavailableError, match="shutting down"):
        batcher.run(slices[:1])


def test_lifespan_closes_the_service_it_built(
    predictor: Predictor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    built: list[BatchingInference] = []

    def build(settings: Settings) -> BatchingInference:
        service = BatchingInference(LocalInference(predictor), settings.batch_max_size, 0.002)
        built.append(service)
        return service

    monkeypatch.setattr("backend.app.main.create_inference_service", build)
    app = create_app(Settings(frontend_dist=tmp_path / "none"))
    with TestClient(app) as client:
        (service,) = built
        assert client.get("/ready").status_code == 200
        assert service.batcher._thread.is_alive()
    assert not service.batcher._thread.is_alive()
    assert service.batcher.closed
    assert app.state.inference is None


def test_concurrent_api_requests_are_batched(
    client: TestClient,
    service: Any,
    predictor: Predictor,
    monkeypatch: pytest.MonkeyPatch,
    ct_slice_paths: list[Path],
) -> None:
    """Through the production app: 16 clients at once, each gets its own slice's answer."""
    assert isinstance(service, BatchingInference)
    inner = service.inner
    assert isinstance(inner, LocalInference)
    counting = CallCounter(inner.predictor)
    monkeypatch.setattr(inner.predictor, "run", counting)
    uploads = [ct_slice_paths[i % len(ct_slice_paths)] for i in range(16)]
    expected = {
        path: float(predictor.predict(image_to_array(path.read_bytes()))[0]) for path in uploads
    }
    barrier = threading.Barrier(len(uploads))

    def post(path: Path) -> float:
        data = path.read_bytes()
        barrier.wait()
        response = client.post("/predict", files={"file": (path.name, data)})
        assert response.status_code == 200, response.text
        return float(response.json()["prediction"])

    with ThreadPoolExecutor(len(uploads)) as pool:
        answers = list(pool.map(post, uploads))
    for path, answer in zip(uploads, answers, strict=True):
        assert answer == pytest.approx(expected[path], abs=TOLERANCE)
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


@pytest.mark.parametrize("batching_on", [True, False])
def test_create_inference_service_honours_batching(batching_on: bool, tmp_path: Path) -> None:
    service = create_inference_service(Settings(batching=batching_on))
    try:
        assert isinstance(service, BatchingInference) is batching_on
        assert isinstance(service, LocalInference) is not batching_on
    finally:
        service.close()


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
