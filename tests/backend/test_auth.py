"""Who may ask (issue 16): AUTH_TOKEN_HASHES, the 401 contract, the audit log."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from backend.app.core.auth import AUDIT_LOGGER_NAME, accepted
from backend.app.core.config import Settings

TOKEN = "s3cret-token-for-tests"
OTHER = "another-accepted-token"
DIGEST = hashlib.sha256(TOKEN.encode()).hexdigest()
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def guarded(make_client: Any) -> TestClient:
    other = hashlib.sha256(OTHER.encode()).hexdigest()
    client: TestClient = make_client(auth_token_hashes=f"{DIGEST}, {other.upper()}")
    return client


def _requests(images: Any) -> list[tuple[str, str, dict[str, Any]]]:
    png = images.png_bytes()
    return [
        ("POST", "/predict", {"files": {"file": ("a.png", png)}}),
        ("POST", "/predict/batch", {"files": [("files", ("a.png", png))]}),
        ("POST", "/predict/study", {"files": [("files", ("s (1).png", png))]}),
        ("POST", "/report", {"files": [("files", ("s (1).png", png))]}),
        ("GET", "/model", {}),
        ("GET", "/metrics", {}),
    ]


def test_every_guarded_endpoint_needs_a_token(guarded: TestClient, images: Any) -> None:
    for method, path, kwargs in _requests(images):
        response = guarded.request(method, path, **kwargs)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["detail"].startswith("authentication required")
        assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = guarded.request(method, path, headers={"Authorization": "Bearer nope"}, **kwargs)
        assert wrong.status_code == 401
        assert wrong.json()["detail"] == "the bearer token is not accepted"
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = guarded.request(method, path, headers={"Authorization": "Basic eDp5"}, **kwargs)
        assert basic.status_code == 401
        allowed = guarded.request(method, path, headers=BEARER, **kwargs)
        assert allowed.status_code == 200, (path, allowed.text)


def test_any_configured_token_is_accepted(guarded: TestClient) -> None:
    assert guarded.get("/model", headers={"Authorization": f"bearer {OTHER}"}).status_code == 200


def test_probes_docs_and_schema_stay_open(guarded: TestClient) -> None:
    for path in ("/health", "/ready", "/docs", "/redoc", "/openapi.json"):
        assert guarded.get(path).status_code == 200, path
    assert guarded.head("/health").status_code == 200
    assert guarded.head("/ready").status_code == 200
    assert guarded.get("/docs/assets/swagger-init.js").status_code == 200


def test_the_web_app_files_stay_open(make_client: Any, tmp_path: Any) -> None:
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>app</title>")
    (dist / "assets" / "app.js").write_text("console.log(1)")
    client = make_client(auth_token_hashes=DIGEST, frontend_dist=dist)
    assert client.get("/").status_code == 200
    assert client.get("/assets/app.js").status_code == 200


def test_no_tokens_configured_means_no_authentication(client: TestClient) -> None:
    assert client.app.state.settings.auth_token_hashes == []  # type: ignore[attr-defined]
    assert client.get("/model").status_code == 200


def test_hashes_must_be_sha256_hex(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TOKEN_HASHES", "not-a-digest")
    with pytest.raises(ValidationError, match="SHA-256 hex digests"):
        Settings()
    monkeypatch.setenv("AUTH_TOKEN_HASHES", f" {DIGEST.upper()} ,")
    assert Settings().auth_token_hashes == [DIGEST]


def test_every_digest_is_compared() -> None:
    """No early exit: the comparison takes as long whichever digest matches."""
    calls: list[bytes] = []
    import backend.app.core.auth as auth

    original = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append(b)
        return original(a, b)

    digests = [DIGEST, "0" * 64, "1" * 64]
    auth.hmac.compare_digest = counting  # type: ignore[assignment]
    try:
        assert accepted(DIGEST, digests)
        assert len(calls) == 3
        assert not accepted("f" * 64, digests)
    finally:
        auth.hmac.compare_digest = original  # type: ignore[assignment]


def test_audit_line_per_guarded_request_without_secrets(
    guarded: TestClient, images: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=AUDIT_LOGGER_NAME)
    logger = logging.getLogger(AUDIT_LOGGER_NAME)
    logger.addHandler(caplog.handler)  # the backend loggers do not propagate
    try:
        png = images.png_bytes()
        name = "patient-Jane-Doe-1970.png"
        ok = guarded.post("/predict", headers=BEARER, files={"file": (name, png)})
        assert ok.status_code == 200
        refused = guarded.post("/predict", files={"file": (name, png)})
        assert refused.status_code == 401
        guarded.get("/health")  # open endpoints: no audit line
        batch = guarded.post(
            "/predict/batch", headers=BEARER, files=[("files", (name, png)), ("files", ("b", b""))]
        )
        assert batch.status_code == 200
    finally:
        logger.removeHandler(caplog.handler)
    records = [r for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert len(records) == 3
    first, second, third = (vars(r) for r in records)
    assert first["token_id"] == DIGEST[:8] and first["outcome"] == "allowed"
    assert first["endpoint"] == "/predict" and first["status"] == 200
    assert first["results"] == {ok.json()["result"]: 1}
    assert first["request_id"] == ok.headers["x-request-id"]
    assert second["token_id"] is None and second["outcome"] == "refused: no bearer token"
    assert second["status"] == 401
    assert sum(third["results"].values()) == 1  # one slice classified, one file refused
    text = json.dumps([{k: str(v) for k, v in vars(r).items()} for r in records])
    assert TOKEN not in text and DIGEST not in text and "Jane" not in text


def test_no_log_line_holds_the_token(guarded: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("backend")
    logger.addHandler(caplog.handler)  # the backend loggers do not propagate
    caplog.set_level(logging.DEBUG, logger="backend")
    try:
        guarded.get("/model", headers=BEARER)
        guarded.get("/model", headers={"Authorization": "Bearer wrong-token-value"})
    finally:
        logger.removeHandler(caplog.handler)
    lines = [json.dumps({k: str(v) for k, v in vars(r).items()}) for r in caplog.records]
    assert any("/model" in line for line in lines)
    assert not any(TOKEN in line or "wrong-token-value" in line for line in lines)


def test_cors_preflight_needs_no_token(make_client: Any) -> None:
    client = make_client(auth_token_hashes=DIGEST, cors_origins=["http://localhost:5173"])
    preflight = client.options(
        "/predict",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
