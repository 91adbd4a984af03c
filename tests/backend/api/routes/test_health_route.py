"""GET /health, /ready (503 until the model is loaded and warmed up), /docs, /openapi.json."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.main import create_app


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_after_lifespan(client: TestClient, service: Any) -> None:
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "model": {"name": service.bundle.card.name, "version": service.bundle.card.version},
    }


@pytest.fixture
def unloaded_client(tmp_path: Path) -> Iterator[TestClient]:
    """An app whose lifespan has not run (no ``with``): no model loaded."""
    app = create_app(Settings(frontend_dist=tmp_path / "none"))
    yield TestClient(app)


@pytest.mark.parametrize(
    ("method", "path", "kwargs"),
    [
        ("GET", "/ready", {}),
        ("GET", "/model", {}),
        ("POST", "/predict", {"files": {"file": ("a.png", b"\x89PNG")}}),
        ("POST", "/predict/batch", {"files": [("files", ("a.png", b"\x89PNG"))]}),
    ],
)
def test_503_before_the_model_is_loaded(
    unloaded_client: TestClient, method: str, path: str, kwargs: dict[str, Any]
) -> None:
    response = unloaded_client.request(method, path, **kwargs)
    assert response.status_code == 503
    assert "not loaded" in response.json()["detail"]


def test_health_answers_before_the_model_is_loaded(unloaded_client: TestClient) -> None:
    assert unloaded_client.get("/health").status_code == 200


class CountingService:
    """Delegates to the real loaded model, counting warm-ups and predictions."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.warm_ups = 0
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def with_bundle(self, bundle: Any) -> CountingService:
        self.real = self.real.with_bundle(bundle)
        return self

    def with_decode_guard(self, guard: Any) -> CountingService:
        self.real = self.real.with_decode_guard(guard)
        return self

    def warm_up(self, *args: Any) -> None:
        self.calls.append("warm_up")
        self.warm_ups += 1
        self.real.warm_up(*args)

    def predict(self, images: np.ndarray) -> np.ndarray:
        self.calls.append("predict")
        result: np.ndarray = self.real.scores(images)
        return result


def test_lifespan_warms_up_once_then_becomes_ready(service: Any, tmp_path: Path) -> None:
    counting = CountingService(service)
    app = create_app(Settings(frontend_dist=tmp_path / "none"), inference=counting)
    plain = TestClient(app)
    assert plain.get("/ready").status_code == 503  # lifespan not started
    assert counting.warm_ups == 0
    with TestClient(app) as started:
        assert counting.calls == ["warm_up"]  # warm-up ran before the first request
        assert started.get("/ready").status_code == 200
    assert counting.warm_ups == 1
    assert plain.get("/ready").status_code == 503  # shut down: not ready any more


def test_docs_and_openapi(client: TestClient) -> None:
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text.lower()
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"/predict", "/predict/batch", "/health", "/ready", "/model", "/metrics"} <= set(paths)

    predict = paths["/predict"]["post"]
    body = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    body_schema = schema["components"]["schemas"][body["$ref"].split("/")[-1]]
    assert body_schema["required"] == ["file"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(predict["responses"])
    params = {p["name"]: p for p in predict["parameters"]}
    assert set(params) == {"operating_point", "explain", "preview_window"}

    components = schema["components"]["schemas"]
    examples = components["PredictionResponse"]["examples"]
    assert {"result", "prediction", "threshold", "operating_point", "model", "latency_ms"} <= set(
        examples[0]
    )
    assert "heatmap_png_base64" in examples[1]
    assert components["BatchResponse"]["examples"]
    assert set(components["Result"]["enum"] if "Result" in components else []) <= {
        "Potentially Fracture",
        "Normal",
    }
    batch_body = paths["/predict/batch"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert batch_body["schema"]["$ref"]
