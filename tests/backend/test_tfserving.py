"""INFERENCE_BACKEND=tfserving against a stand-in TF Serving that runs the REAL SavedModel.

The stand-in implements TF Serving's REST API shape (``POST /v1/models/NAME:predict``
with ``instances`` or ``inputs``, ``GET /v1/models/NAME`` for the status) on a loopback
port and answers with ``tf.saved_model.load(bundle/saved_model)``'s ``serving_default``:
the same graph TF Serving would run, with both of its outputs (``probability`` and the CT
gate's ``ct_logit``). In this mode no model runs in the API process: the verdict (and the
CT gate's decision) comes from TF Serving's two outputs and the bundle's card.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tensorflow as tf
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skimage_data

from backend.app.core.config import Settings
from backend.app.main import create_app
from backend.app.services.inference import create_core
from ml_model.bundle import (
    SAVED_MODEL_DIR,
    SERVING_GATE_OUTPUT,
    SERVING_INPUT,
    SERVING_OUTPUT,
    SERVING_SIGNATURE,
)
from ml_model.config import DEFAULT_MODEL_DIR, RESULT_OUT_OF_DISTRIBUTION, SHARED_DATA_DIR
from ml_model.inference.batching import BatchedForward
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward import ForwardOutput, KerasForward, ModelUnavailableError
from ml_model.inference.forward_onnx import OnnxGradCam
from ml_model.inference.forward_tfserving import (
    BAD_ANSWER_DETAIL,
    TIMEOUT_DETAIL,
    UNREACHABLE_DETAIL,
    TFServingForward,
    decode_predictions,
    encode_instances,
    status_url,
)

MODEL_NAME = "fracture"
TOLERANCE = 1e-5
LOGIT_TOLERANCE = 1e-4
# TF Serving (TensorFlow) against the local app (ONNX Runtime, the default): float32 noise
# between runtimes, as bounded by tests/ml_model/test_onnx_parity.py; verdicts equal.
CROSS_RUNTIME_TOLERANCE = 5e-3
CROSS_RUNTIME_LOGIT_TOLERANCE = 1e-2


class FakeTFServing:
    """TF Serving's REST surface over the bundle's real SavedModel (both outputs)."""

    def __init__(self) -> None:
        loaded = tf.saved_model.load(str(DEFAULT_MODEL_DIR / SAVED_MODEL_DIR))
        self.signature = loaded.signatures[SERVING_SIGNATURE]
        self._keep = loaded
        self.size = int(self.signature.structured_input_signature[1][SERVING_INPUT].shape[1])
        self.requests: list[dict[str, Any]] = []
        # "ok" | "error" | "slow" | "garbage" | "no_ct_logit" | "probability_only"
        self.mode = "ok"
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
                row = "instances" in body
                if row:
                    images = np.asarray(body["instances"], dtype=np.uint8)
                else:
                    inputs = body["inputs"]
                    images = np.asarray(
                        inputs[SERVING_INPUT] if isinstance(inputs, dict) else inputs, np.uint8
                    )
                outputs = {
                    name: value.numpy().tolist()
                    for name, value in fake.signature(
                        **{SERVING_INPUT: tf.constant(images)}
                    ).items()
                }
                if fake.mode == "probability_only":
                    # What TF Serving answers for a single-output SavedModel (a bundle
                    # exported before the CT gate was part of the graph): bare values.
                    key = "predictions" if row else "outputs"
                    self._send(200, {key: outputs[SERVING_OUTPUT]})
                    return
                if fake.mode == "no_ct_logit":
                    del outputs[SERVING_GATE_OUTPUT]
                if row:  # TF Serving's row format for several outputs: one object per row
                    rows = [
                        {name: values[i] for name, values in outputs.items()}
                        for i in range(len(images))
                    ]
                    self._send(200, {"predictions": rows})
                else:  # columnar: {name: all rows}
                    self._send(200, {"outputs": outputs})

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


def check_same_answer(via_tfs: dict[str, Any], local: dict[str, Any]) -> None:
    """The fields of a /predict answer that come from the model: the same verdict in both
    modes, the numbers within the runtimes' float32 noise (TensorFlow vs ONNX Runtime)."""
    assert via_tfs["prediction"] == pytest.approx(local["prediction"], abs=CROSS_RUNTIME_TOLERANCE)
    assert via_tfs["result"] == local["result"]
    assert via_tfs["in_distribution"] is local["in_distribution"]
    assert via_tfs["ct_gate_margin"] == pytest.approx(
        local["ct_gate_margin"], rel=CROSS_RUNTIME_LOGIT_TOLERANCE
    )
    assert via_tfs["threshold"] == local["threshold"]


def test_tfserving_forward_equals_the_local_forward(
    fake: FakeTFServing,
    keras_predictor: InferenceCore,
    samples: list[tuple[str, bytes]],
    images: Any,
) -> None:
    """Both outputs of the served SavedModel equal the in-process KerasForward's."""
    predictor = keras_predictor
    batch = np.stack(
        [predictor.model_input(predictor.decode(data)) for _, data in samples]
        + [predictor.model_input(predictor.decode(photo(images)))]
    )
    forward = TFServingForward(fake.url)
    try:
        remote_output = forward(batch)
    finally:
        forward.close()
    local_output = predictor.forward(batch)
    np.testing.assert_allclose(remote_output.probability, local_output.probability, atol=TOLERANCE)
    np.testing.assert_allclose(remote_output.ct_logit, local_output.ct_logit, atol=LOGIT_TOLERANCE)
    remote_verdicts = predictor.judge(remote_output)
    local_verdicts = predictor.judge(local_output)
    assert [v.result for v in remote_verdicts] == [v.result for v in local_verdicts]
    assert [v.in_distribution for v in remote_verdicts] == [
        v.in_distribution for v in local_verdicts
    ]
    assert remote_verdicts[-1].result == RESULT_OUT_OF_DISTRIBUTION  # the photo
    (request,) = fake.requests
    assert len(request["instances"]) == len(batch)


def test_tfserving_matches_local(
    fake: FakeTFServing,
    remote: TestClient,
    client: TestClient,
    predictor: InferenceCore,
    samples: list[tuple[str, bytes]],
    images: Any,
) -> None:
    core: InferenceCore = remote.app.state.inference  # type: ignore[attr-defined]
    assert isinstance(core.forward, BatchedForward)
    assert isinstance(core.forward.inner, TFServingForward)
    assert remote.get("/ready").status_code == 200

    for name, data in samples:
        fake.requests.clear()
        via_tfs = post(remote, data, name).json()
        local = post(client, data, name).json()
        check_same_answer(via_tfs, local)
        (request,) = fake.requests  # the classification really went to TF Serving
        assert request["signature_name"] == "serving_default"
        sent = np.asarray(request["instances"])
        assert sent.shape == (1, fake.size, fake.size, 3)
        np.testing.assert_array_equal(sent[0], predictor.model_input(predictor.decode(data)))

    # The CT gate's decision comes from TF Serving's ct_logit: a photo is refused.
    fake.requests.clear()
    refused = post(remote, photo(images), "rocket.jpg").json()
    assert refused["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert refused["in_distribution"] is False
    assert refused["ct_gate_margin"] > 1.0
    check_same_answer(refused, post(client, photo(images), "rocket.jpg").json())
    assert len(fake.requests) == 1

    # explain=true: Grad-CAM from the bundle's gradcam.onnx (opened on this first use).
    explained = post(remote, samples[0][1], explain="true").json()
    assert explained["heatmap_png_base64"]
    assert isinstance(core._gradcam, OnnxGradCam)
    assert core._gradcam._session is not None


def test_tfserving_batch_matches_local(
    fake: FakeTFServing,
    remote: TestClient,
    client: TestClient,
    samples: list[tuple[str, bytes]],
    images: Any,
) -> None:
    uploads = [("files", sample) for sample in samples]
    uploads.append(("files", ("rocket.jpg", photo(images))))
    via_tfs = remote.post("/predict/batch", files=uploads).json()["results"]
    local = client.post("/predict/batch", files=uploads).json()["results"]
    for a, b in zip(via_tfs, local, strict=True):
        check_same_answer(a, b)
    assert via_tfs[-1]["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert len(fake.requests) == 1
    assert len(fake.requests[0]["instances"]) == len(uploads)


@pytest.mark.parametrize("batching", [True, False])
def test_tfserving_mode_runs_no_local_model(
    batching: bool,
    fake: FakeTFServing,
    tfs_client: Any,
    client: TestClient,
    samples: list[tuple[str, bytes]],
    images: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No Keras model is loaded or run in this process (start-up, warm-up, /predict,
    /predict/batch), and the CT gate still refuses a photo: from the remote ct_logit."""

    def no_local_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a local Keras model was loaded in tfserving mode")

    monkeypatch.setattr(KerasForward, "from_bundle", classmethod(no_local_model))
    monkeypatch.setattr("ml_model.architectures.layers.load_model", no_local_model)
    remote = tfs_client(tfserving_url=fake.url, batching=batching)
    core = remote.app.state.inference
    forward = core.forward
    if batching:
        assert isinstance(forward, BatchedForward)
        forward = forward.inner
    assert isinstance(forward, TFServingForward)
    assert isinstance(core._gradcam, OnnxGradCam)
    assert fake.requests  # warm-up went to TF Serving, not to a local model

    fake.requests.clear()
    answer = post(remote, samples[0][1]).json()
    check_same_answer(answer, post(client, samples[0][1]).json())
    refused = post(remote, photo(images), "rocket.jpg").json()
    assert refused["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert refused["in_distribution"] is False
    batch = remote.post("/predict/batch", files=[("files", ("a.png", samples[1][1]))])
    assert batch.status_code == 200, batch.text
    assert len(fake.requests) == 3  # every verdict was computed by TF Serving
    assert core._gradcam._session is None  # Grad-CAM never loaded


def test_create_core_in_tfserving_mode(fake: FakeTFServing) -> None:
    for batching in (True, False):
        core = create_core(
            Settings(inference_backend="tfserving", tfserving_url=fake.url, batching=batching)
        )
        try:
            forward = core.forward
            assert isinstance(forward, BatchedForward) is batching
            inner = forward.inner if isinstance(forward, BatchedForward) else forward
            assert isinstance(inner, TFServingForward)
            assert inner.url == fake.url
            assert core.is_ready()
        finally:
            core.close()


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
        remote.post("/predict/study", files=[("files", ("a (1).png", samples[0][1]))]),
    ):
        assert response.status_code == 503, response.text
        assert response.json() == {"detail": UNREACHABLE_DETAIL}
    assert remote.get("/health").status_code == 200


@pytest.mark.parametrize(
    ("mode", "status", "detail"),
    [
        ("error", 502, "unusable answer (HTTP 500)"),
        ("garbage", 502, "unusable answer"),
        ("no_ct_logit", 502, "'ct_logit'"),
        ("probability_only", 502, "'ct_logit'"),
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
    assert response.json()["detail"].startswith(BAD_ANSWER_DETAIL)
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
    assert response.json() == {"detail": TIMEOUT_DETAIL}
    assert "did not answer in time" in TIMEOUT_DETAIL


def test_fast_json_encoding_equals_json_dumps() -> None:
    rng = np.random.default_rng(0)
    for shape in [(1, 224, 224, 3), (3, 7, 5, 3), (1, 1, 1, 3)]:
        images = rng.integers(0, 256, shape, dtype=np.uint8)
        decoded = json.loads(encode_instances(images))
        assert decoded == {"signature_name": "serving_default", "instances": images.tolist()}
    extremes = np.array([[[[0, 9, 10], [99, 100, 255]]]], np.uint8)
    assert json.loads(encode_instances(extremes))["instances"] == extremes.tolist()
    with pytest.raises(ValueError, match="3 channels"):
        encode_instances(np.zeros((1, 2, 2, 1), np.uint8))


def test_ready_follows_tfserving(fake: FakeTFServing) -> None:
    forward = TFServingForward(fake.url)
    other = TFServingForward(fake.url.replace(MODEL_NAME, "other-model"))
    nobody = TFServingForward(f"http://127.0.0.1:{free_port()}/v1/models/{MODEL_NAME}:predict")
    try:
        assert forward.is_ready()
        assert not other.is_ready()
        assert not nobody.is_ready()
        assert not BatchedForward(nobody).is_ready()
    finally:
        forward.close()
        other.close()
        nobody.close()


def test_columnar_inputs_and_outputs_are_understood(fake: FakeTFServing) -> None:
    images = np.zeros((2, fake.size, fake.size, 3), np.uint8)
    body = {"signature_name": "serving_default", "inputs": {"image": images.tolist()}}
    answer = httpx.post(fake.url, json=body, timeout=60).json()
    assert set(answer["outputs"]) == {SERVING_OUTPUT, SERVING_GATE_OUTPUT}
    decoded = decode_predictions(answer, 2)
    assert isinstance(decoded, ForwardOutput)
    assert decoded.probability.shape == decoded.ct_logit.shape == (2,)
    # Row and columnar answers of the same numbers decode alike.
    rows = {"predictions": [{"probability": [0.25], "ct_logit": [-3.5]}]}
    columns = {"outputs": {"probability": [[0.25]], "ct_logit": [[-3.5]]}}
    for answer in (rows, columns):
        one = decode_predictions(answer, 1)
        assert one.probability.tolist() == [0.25]
        assert one.ct_logit.tolist() == [-3.5]
    bad_answers: list[tuple[Any, int]] = [
        ({"predictions": [[0.1], [0.2]]}, 2),  # a single unnamed output
        ({"predictions": [{"probability": [0.1]}]}, 1),  # no ct_logit
        ({"outputs": {"probability": [[0.1]]}}, 1),  # no ct_logit, columnar
        ({"predictions": [{"probability": [0.1], "ct_logit": [1.0]}]}, 3),  # wrong count
        ({"outputs": {"probability": [[0.1]], "ct_logit": [["x"]]}}, 1),  # not numbers
        ({"outputs": {"probability": [[float("nan")]], "ct_logit": [[1.0]]}}, 1),
        ([0.1], 1),  # not an object
    ]
    for bad, count in bad_answers:
        with pytest.raises(ValueError):
            decode_predictions(bad, count)


def test_decode_names_the_missing_output() -> None:
    for answer in (
        {"predictions": [{"probability": [0.1]}]},
        {"outputs": {"probability": [[0.1]]}},
        {"predictions": [[0.1]]},
    ):
        with pytest.raises(ValueError, match="'ct_logit'"):
            decode_predictions(answer, 1)


def test_a_bad_answer_is_a_502_model_error(fake: FakeTFServing) -> None:
    fake.mode = "no_ct_logit"
    forward = TFServingForward(fake.url)
    try:
        with pytest.raises(ModelUnavailableError) as failed:
            forward(np.zeros((1, fake.size, fake.size, 3), np.uint8))
    finally:
        forward.close()
    assert failed.value.status_code == 502
    assert "'ct_logit'" in failed.value.detail


def test_status_url() -> None:
    assert status_url("http://tfserving:8501/v1/models/fracture:predict") == (
        "http://tfserving:8501/v1/models/fracture"
    )
    assert status_url("http://h:8501/v1/models/m/versions/2:predict") == (
        "http://h:8501/v1/models/m/versions/2"
    )
    assert status_url("http://h:8501/v1/models/m:predict?x=1") == "http://h:8501/v1/models/m"


def test_tfserving_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    assert Settings().tfserving_url == "http://tfserving:8501/v1/models/fracture:predict"
    assert Settings().tfserving_timeout_s == 10.0
    assert "tfserving_local_ood" not in Settings.model_fields  # the gate logit is remote now
    monkeypatch.setenv("INFERENCE_BACKEND", "tfserving")
    monkeypatch.setenv("TFSERVING_URL", "http://tfs.internal:8501/v1/models/x:predict")
    monkeypatch.setenv("TFSERVING_TIMEOUT_S", "2.5")
    settings = Settings()
    assert settings.inference_backend == "tfserving"
    assert settings.tfserving_url.startswith("http://tfs.internal")
    assert settings.tfserving_timeout_s == 2.5
    monkeypatch.setenv("INFERENCE_BACKEND", "grpc")
    with pytest.raises(ValueError):
        Settings()
