"""INFERENCE_BACKEND=tfserving against a stand-in TF Serving that runs the REAL SavedModel.

The stand-in implements TF Serving's REST API shape (``POST /v1/models/NAME:predict``
with ``instances`` or ``inputs``, ``GET /v1/models/NAME`` for the status) on a loopback
port and answers with ``tf.saved_model.load(bundle/saved_model)``'s ``serving_default``:
the same graph TF Serving would run.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skimage_data

from backend.app.core.config import Settings
from backend.app.main import create_app
from backend.app.services.batching import BatchingInference
from backend.app.services.tfserving import (
    TFServingInference,
    decode_predictions,
    encode_instances,
    status_url,
)
from ml_model.config import DEFAULT_MODEL_DIR, RESULT_OUT_OF_DISTRIBUTION, SHARED_DATA_DIR
from ml_model.export import SAVED_MODEL_DIR, SERVING_INPUT, SERVING_OUTPUT, SERVING_SIGNATURE
from ml_model.predictor import Predictor
from ml_model.transforms import image_to_array

MODEL_NAME = "fracture"


class FakeTFServing:
    """TF Serving's REST surface over the bundle's real SavedModel."""

    def __init__(self) -> None:
        loaded = tf.saved_model.load(str(DEFAULT_MODEL_DIR / SAVED_MODEL_DIR))
        self.signature = loaded.signatures[SERVING_SIGNATURE]
        self._keep = loaded
        self.requests: list[dict[str, Any]] = []
        self.mode = "ok"  # "ok" | "error" | "slow" | "garbage"
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: Any) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                if self.path != f"/v1/models/{MODEL_NAME}":
                    self._send(404, {"error": "Servable not found"})
                    return
                status = {"error_code": "OK", "error_message": ""}
                self._send(
                    200,
                    {"model_version_status": [
                        {"version": "1", "state": "AVAILABLE", "status": status}
                    ]},
                )  # fmt: skip

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                fake.requests.append(body)
                if self.path != f"/v1/models/{MODEL_NAME}:predict":
                    self._send(404, {"error": "Servable not found"})
                    return
                if fake.mode == "error":
                    self._send(500, {"error": "Internal: out of memory"})
                    return
                if fake.mode == "slow":
                    time.sleep(1.5)
                if fake.mode == "garbage":
                    self._send(200, {"predictions": "not numbers"})
                    return
                if body.get("signature_name", SERVING_SIGNATURE) != SERVING_SIGNATURE:
                    self._send(400, {"error": "unknown signature"})
                    return
                if "instances" in body:
                    images = np.asarray(body["instances"], dtype=np.uint8)
                    key = "predictions"
                else:
                    inputs = body["inputs"]
                    images = np.asarray(
                        inputs[SERVING_INPUT] if isinstance(inputs, dict) else inputs, np.uint8
                    )
                    key = "outputs"
                output = fake.signature(**{SERVING_INPUT: tf.constant(images)})[SERVING_OUTPUT]
                self._send(200, {key: output.numpy().tolist()})

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a client that gave up (the timeout test) is not an error here

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/models/{MODEL_NAME}:predict"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def tfserving() -> Iterator[FakeTFServing]:
    server = FakeTFServing()
    yield server
    server.close()


@pytest.fixture
def fake(tfserving: FakeTFServing) -> Iterator[FakeTFServing]:
    tfserving.mode = "ok"
    tfserving.requests.clear()
    yield tfserving
    tfserving.mode = "ok"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def tfs_client(tmp_path: Path) -> Iterator[Any]:
    """Apps in tfserving mode, built by their own lifespan like in production."""
    opened: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            inference_backend="tfserving", frontend_dist=tmp_path / "none", **overrides
        )
        client = TestClient(create_app(settings))
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def remote(tfserving: FakeTFServing, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One production-like app in tfserving mode (micro-batching on), shared by the module."""
    settings = Settings(
        inference_backend="tfserving",
        tfserving_url=tfserving.url,
        frontend_dist=tmp_path_factory.mktemp("web") / "none",
    )
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def samples(images: Any) -> list[tuple[str, bytes]]:
    """Real CT slices (two per class) where the shared data is, else synthetic PNGs."""
    folders = [SHARED_DATA_DIR / "train" / label for label in ("fracture", "normal")]
    if all(folder.is_dir() for folder in folders):
        paths = [path for folder in folders for path in sorted(folder.glob("*.png"))[:2]]
        return [(path.name, path.read_bytes()) for path in paths]
    return [(f"synthetic{seed}.png", images.png_bytes(seed=seed)) for seed in range(4)]


def post(client: TestClient, data: bytes, name: str = "slice.png", **params: Any) -> Any:
    return client.post("/predict", params=params, files={"file": (name, data)})


def photo(images: Any) -> bytes:
    return bytes(images.encode(Image.fromarray(skimage_data.rocket()), "JPEG"))


def test_tfserving_matches_local(
    fake: FakeTFServing,
    remote: TestClient,
    client: TestClient,
    samples: list[tuple[str, bytes]],
    images: Any,
) -> None:
    service = remote.app.state.inference
    assert isinstance(service, BatchingInference)
    assert isinstance(service.inner, TFServingInference)
    assert remote.get("/ready").status_code == 200

    for name, data in samples:
        fake.requests.clear()
        via_tfs = post(remote, data, name).json()
        local = post(client, data, name).json()
        assert via_tfs["prediction"] == pytest.approx(local["prediction"], abs=1e-5)
        assert via_tfs["result"] == local["result"]
        assert via_tfs["in_distribution"] is local["in_distribution"]
        assert via_tfs["ood_distance"] == pytest.approx(local["ood_distance"], rel=1e-5)
        (request,) = fake.requests  # the classification really went to TF Serving
        assert request["signature_name"] == "serving_default"
        sent = np.asarray(request["instances"])
        size = int(fake.signature.structured_input_signature[1][SERVING_INPUT].shape[1])
        assert sent.shape == (1, size, size, 3)
        np.testing.assert_array_equal(sent[0], image_to_array(data, size))

    # The OOD guard still runs (locally) in tfserving mode.
    refused = post(remote, photo(images), "rocket.jpg").json()
    assert refused["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert refused["in_distribution"] is False

    # explain=true: Grad-CAM from the local bundle.
    explained = post(remote, samples[0][1], explain="true").json()
    assert explained["heatmap_png_base64"]


def test_tfserving_batch_matches_local(
    fake: FakeTFServing, remote: TestClient, client: TestClient, samples: list[tuple[str, bytes]]
) -> None:
    uploads = [("files", sample) for sample in samples]
    via_tfs = remote.post("/predict/batch", files=uploads).json()["results"]
    local = client.post("/predict/batch", files=uploads).json()["results"]
    for a, b in zip(via_tfs, local, strict=True):
        assert a["prediction"] == pytest.approx(b["prediction"], abs=1e-5)
        assert a["result"] == b["result"]
    assert len(fake.requests) == 1
    assert len(fake.requests[0]["instances"]) == len(samples)


def test_without_local_ood_the_guard_is_null(
    fake: FakeTFServing,
    tfs_client: Any,
    samples: list[tuple[str, bytes]],
    images: Any,
    client: TestClient,
) -> None:
    remote = tfs_client(tfserving_url=fake.url, tfserving_local_ood=False)
    body = post(remote, samples[0][1]).json()
    assert body["in_distribution"] is None
    assert body["ood_distance"] is None
    local = post(client, samples[0][1]).json()
    assert body["prediction"] == pytest.approx(local["prediction"], abs=1e-5)
    unguarded = post(remote, photo(images), "rocket.jpg").json()
    assert unguarded["result"] != RESULT_OUT_OF_DISTRIBUTION  # no guard: no refusal


def test_unreachable_tfserving_is_503_not_500(
    tfs_client: Any, samples: list[tuple[str, bytes]], images: Any
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/models/{MODEL_NAME}:predict"  # nobody listens
    remote = tfs_client(tfserving_url=url)  # start-up does not wait for TF Serving
    ready = remote.get("/ready")
    assert ready.status_code == 503
    assert "TF Serving" in ready.json()["detail"]
    for response in (
        post(remote, samples[0][1]),
        remote.post("/predict/batch", files=[("files", ("a.png", samples[0][1]))]),
    ):
        assert response.status_code == 503, response.text
        assert response.json() == {
            "detail": "the model server (TF Serving) is unreachable; retry later"
        }
    assert remote.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("mode", "status", "detail"),
    [
        ("error", 502, "unusable answer (HTTP 500)"),
        ("garbage", 502, "unusable answer"),
    ],
)
def test_tfserving_failures_are_clear(
    fake: FakeTFServing,
    remote: TestClient,
    samples: list[tuple[str, bytes]],
    mode: str,
    status: int,
    detail: str,
) -> None:
    fake.mode = mode
    response = post(remote, samples[0][1])
    assert response.status_code == status, response.text
    assert detail in response.json()["detail"]
    fake.mode = "ok"
    assert post(remote, samples[0][1]).status_code == 200  # recovers


def test_tfserving_timeout_is_503(
    fake: FakeTFServing, tfs_client: Any, samples: list[tuple[str, bytes]]
) -> None:
    remote = tfs_client(tfserving_url=fake.url, tfserving_timeout_s=0.3, batching=False)
    fake.mode = "slow"
    response = post(remote, samples[0][1])
    assert response.status_code == 503, response.text
    assert "did not answer in time" in response.json()["detail"]


def test_fast_json_encoding_equals_json_dumps() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 224, 224, 3), (3, 7, 5, 3), (1, 1, 1, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = json.loads(encode_instances(images))
        assert decoded == {"signature_name": "serving_default", "instances": images.tolist()}
    extremes = np.array([[[[0, 9, 10], [99, 100, 255]]]], np.uint8)
    assert json.loads(encode_instances(extremes))["instances"] == extremes.tolist()


def test_ready_follows_tfserving(fake: FakeTFServing, predictor: Predictor) -> None:
    from backend.app.services.inference import LocalInference

    service = TFServingInference(fake.url, LocalInference(predictor))
    try:
        assert service.is_ready()
        other = TFServingInference(
            fake.url.replace(MODEL_NAME, "other-model"), LocalInference(predictor)
        )
        assert not other.is_ready()
        other.close()
    finally:
        service.close()


def test_columnar_inputs_and_outputs_are_understood(fake: FakeTFServing) -> None:
    import httpx

    size = int(fake.signature.structured_input_signature[1][SERVING_INPUT].shape[1])
    images = np.zeros((2, size, size, 3), np.uint8)
    body = {"signature_name": "serving_default", "inputs": {"image": images.tolist()}}
    answer = httpx.post(fake.url, json=body, timeout=30).json()
    assert decode_predictions(answer, 2).shape == (2,)
    assert decode_predictions({"predictions": [{"probability": [0.25]}]}, 1) == [0.25]
    with pytest.raises(ValueError):
        decode_predictions({"predictions": [[0.1], [0.2]]}, 3)


def test_status_url() -> None:
    assert status_url("http://tfserving:8501/v1/models/fracture:predict") == (
        "http://tfserving:8501/v1/models/fracture"
    )
    assert status_url("http://h:8501/v1/models/m/versions/2:predict") == (
        "http://h:8501/v1/models/m/versions/2"
    )


def test_warm_up_flags_a_different_model_in_tfserving(
    fake: FakeTFServing, predictor: Predictor, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODEL_DIR and TF Serving must hold the same bundle; warm-up compares them."""
    from backend.app.core.logging import LOGGER_NAME
    from backend.app.services.inference import LocalInference

    messages: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = Capture(logging.ERROR)
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    service = TFServingInference(fake.url, LocalInference(predictor))
    try:
        service.warm_up()
        assert messages == []
        real_run = predictor.run

        def other_model(images: np.ndarray) -> Any:
            result = real_run(images)
            return type(result)(
                1.0 - result.probabilities,
                result.features,
                result.ood_distances,
                result.in_distribution,
            )

        monkeypatch.setattr(predictor, "run", other_model)
        service.warm_up()
        assert messages == ["tfserving serves a different model than MODEL_DIR"]
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)
        service.close()


def test_tfserving_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    assert Settings().tfserving_url == "http://tfserving:8501/v1/models/fracture:predict"
    monkeypatch.setenv("INFERENCE_BACKEND", "tfserving")
    monkeypatch.setenv("TFSERVING_URL", "http://tfs.internal:8501/v1/models/x:predict")
    settings = Settings()
    assert settings.inference_backend == "tfserving"
    assert settings.tfserving_url.startswith("http://tfs.internal")
    monkeypatch.setenv("INFERENCE_BACKEND", "grpc")
    with pytest.raises(ValueError):
        Settings()
