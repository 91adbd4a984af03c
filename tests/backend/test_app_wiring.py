"""App wiring: settings from env, CORS, the built web app at /, start-up failures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.app.core.config import REPO_ROOT, Settings
from backend.app.main import create_app
from ml_model.card import CardError
from ml_model.config import DEFAULT_MODEL_DIR

# --- settings ---------------------------------------------------------------------------

SETTINGS_ENV = [
    # (env var, value, attribute, expected)
    ("MODEL_DIR", "some/bundle", "model_dir", Path("some/bundle")),
    ("THRESHOLD", "0.42", "threshold", 0.42),
    ("MAX_UPLOAD_MB", "5", "max_upload_bytes", 5 * 1024 * 1024),
    ("MAX_BATCH_FILES", "8", "max_batch_files", 8),
    ("MAX_BATCH_MB", "50", "max_batch_bytes", 50 * 1024 * 1024),
    ("MAX_EXPLAIN_PIXELS", "1000000", "max_explain_pixels", 1_000_000),
    ("CORS_ORIGINS", "http://a.test, http://b.test", "cors_origins", ["http://a.test", "http://b.test"]),
    ("CORS_ORIGINS", '["http://a.test"]', "cors_origins", ["http://a.test"]),
    ("CORS_ORIGINS", "", "cors_origins", []),
    ("WINDOW_LEVEL", "40", "window_level", 40.0),
    ("WINDOW_WIDTH", "400", "window_width", 400.0),
    ("FRONTEND_DIST", "/srv/web", "frontend_dist", Path("/srv/web")),
]  # fmt: skip


@pytest.mark.parametrize(("env", "raw", "attribute", "expected"), SETTINGS_ENV)
def test_settings_from_env(
    monkeypatch: pytest.MonkeyPatch, env: str, raw: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(env, raw)
    assert getattr(Settings(), attribute) == expected


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    settings = Settings()
    assert settings.model_dir == DEFAULT_MODEL_DIR
    assert settings.threshold is None
    assert settings.max_upload_mb == 20
    assert settings.max_batch_files == 32
    assert settings.cors_origins == []
    assert (settings.window_level, settings.window_width) == (None, None)  # the card's window
    assert settings.frontend_dist == REPO_ROOT / "frontend" / "dist"
    assert settings.inference_backend == "onnx"  # ONNX Runtime: no TensorFlow when serving


@pytest.mark.parametrize(
    ("env", "raw"),
    [
        ("THRESHOLD", "1.5"),
        ("WINDOW_WIDTH", "0"),
        ("MAX_UPLOAD_MB", "-1"),
        ("MAX_BATCH_FILES", "0"),
    ],
)
def test_invalid_settings_are_refused(monkeypatch: pytest.MonkeyPatch, env: str, raw: str) -> None:
    monkeypatch.setenv(env, raw)
    with pytest.raises(ValidationError):
        Settings()


def test_missing_model_dir_fails_start_up(tmp_path: Path) -> None:
    app = create_app(Settings(model_dir=tmp_path / "no-bundle", frontend_dist=tmp_path / "none"))
    with (
        pytest.raises(CardError, match=r"no-bundle/model_card\.json: the bundle has no model card"),
        TestClient(app),
    ):
        pass


# --- CORS ---------------------------------------------------------------------------------


def test_cors_allows_only_configured_origins(make_client: Any) -> None:
    client = make_client(cors_origins=["http://localhost:5173"])
    preflight = {"Access-Control-Request-Method": "POST"}
    allowed = client.options("/predict", headers={"Origin": "http://localhost:5173", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://localhost:5173"
    refused = client.options("/predict", headers={"Origin": "http://evil.test", **preflight})
    assert "access-control-allow-origin" not in refused.headers


def test_no_cors_by_default(client: TestClient) -> None:
    response = client.get("/health", headers={"Origin": "http://localhost:5173"})
    assert "access-control-allow-origin" not in response.headers


# --- the built web app ---------------------------------------------------------------------


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text("<!doctype html><div id='root'></div>")
    (folder / "assets" / "app.js").write_text("console.log('triage')")
    return folder


def test_web_app_served_at_root_after_the_api(make_client: Any, dist: Path, images: Any) -> None:
    client = make_client(frontend_dist=dist)
    html = {"Accept": "text/html,application/xhtml+xml"}

    root = client.get("/", headers=html)
    assert root.status_code == 200
    assert "id='root'" in root.text
    asset = client.get("/assets/app.js")
    assert asset.status_code == 200
    assert "triage" in asset.text
    spa_route = client.get("/studies/123/slice/4", headers=html)  # client-side route
    assert spa_route.status_code == 200
    assert "id='root'" in spa_route.text
    assert client.get("/assets/missing.js").status_code == 404  # not HTML: no fallback

    # The API keeps priority over the web app.
    assert client.get("/health", headers=html).json() == {"status": "ok"}
    assert client.get("/openapi.json").json()["paths"]
    assert "swagger" in client.get("/docs", headers=html).text.lower()
    predicted = client.post("/predict", files={"file": ("a.png", images.png_bytes())})
    assert predicted.status_code == 200
    assert client.get("/metrics").status_code == 200


def test_no_web_app_without_dist(make_client: Any, tmp_path: Path) -> None:
    client = make_client(frontend_dist=tmp_path / "absent")
    assert client.get("/", headers={"Accept": "text/html"}).status_code == 404
