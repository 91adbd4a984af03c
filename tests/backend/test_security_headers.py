"""Security headers on every response, a CSP the web app can live with, CORS only from
settings, and no API input that names a server path or a URL to fetch."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from backend.app.core.config import REPO_ROOT
from backend.app.core.security import STRICT_CSP, SecurityHeadersMiddleware, docs_csp
from tests.backend.hostile import corpus

BASE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
DIST = REPO_ROOT / "frontend" / "dist"
INDEX_HTML = (
    '<!doctype html><html><head><script type="module" crossorigin src="/assets/app.js">'
    '</script><link rel="stylesheet" href="/assets/app.css"></head>'
    '<body><div id="root"></div></body></html>'
)


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def check_strict(response: Any) -> None:
    for name, value in BASE.items():
        assert response.headers[name] == value, (name, response.headers)
    assert response.headers["content-security-policy"] == STRICT_CSP


@pytest.fixture
def spa_client(make_client: Any, tmp_path: Path) -> TestClient:
    """The app serving a small built web app of its own (index.html + assets)."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text(INDEX_HTML)
    (dist / "assets" / "app.js").write_text("console.log('app')")
    (dist / "assets" / "app.css").write_text("body{margin:0}")
    client: TestClient = make_client(frontend_dist=dist)
    return client


def test_strict_csp_is_what_the_brief_asked_for() -> None:
    directives = csp_directives(STRICT_CSP)
    assert directives == {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:", "blob:"],
        "connect-src": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'self'"],
        "object-src": ["'none'"],
    }
    assert "unsafe" not in STRICT_CSP


def test_api_responses_of_every_kind_carry_the_headers(make_client: Any) -> None:
    client = make_client(max_upload_mb=0.01)
    png = corpus.png()
    responses = [
        client.get("/health"),
        client.get("/ready"),
        client.get("/model"),
        client.get("/metrics"),
        client.get("/openapi.json"),
        client.get("/no/such/path"),  # 404
        client.get("/predict"),  # 405
        client.post("/predict", files={"file": ("a.png", png)}),  # 200
        client.post("/predict", files={"file": ("a.txt", b"text")}),  # 415
        client.post("/predict", files={"image": ("a.png", png)}),  # 422
        client.post("/predict", files={"file": ("a.bmp", b"\0" * 20_000)}),  # 413, middleware
        client.post("/predict/batch", files=[("files", ("a.png", png))]),
    ]
    assert [r.status_code for r in responses] == [
        200, 200, 200, 200, 200, 404, 405, 200, 415, 422, 413, 200,
    ]  # fmt: skip
    for response in responses:
        check_strict(response)


def test_the_web_app_gets_the_strict_csp(spa_client: TestClient) -> None:
    html = {"accept": "text/html"}  # a client-side route falls back to index.html for browsers
    for path in ("/", "/index.html", "/results/123", "/assets/app.js", "/assets/app.css"):
        response = spa_client.get(path, headers=html)
        assert response.status_code == 200, path
        check_strict(response)
    assert spa_client.get("/results/123", headers=html).text == INDEX_HTML


def test_production_app_serves_the_headers(client: TestClient) -> None:
    check_strict(client.get("/health"))
    if (DIST / "index.html").is_file():
        page = client.get("/")
        assert page.headers["content-type"].startswith("text/html")
        check_strict(page)


INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>", re.IGNORECASE)
INLINE_STYLE = re.compile(r"<style\b|\sstyle=", re.IGNORECASE)
EXTERNAL = re.compile(r"""(?:src|href)=["']?(?:https?:)?//""", re.IGNORECASE)


@pytest.mark.parametrize(
    "page", [REPO_ROOT / "frontend" / "index.html", DIST / "index.html"], ids=["source", "dist"]
)
def test_web_app_html_needs_no_inline_script_or_style(page: Path) -> None:
    """What makes ``script-src 'self'; style-src 'self'`` enough for the web app."""
    if not page.is_file():
        pytest.skip(f"{page} is not there (the web app is not built)")
    html = page.read_text()
    assert INLINE_SCRIPT.search(html) is None
    assert INLINE_STYLE.search(html) is None
    assert EXTERNAL.search(html) is None  # every script, stylesheet, icon from 'self'


def test_built_assets_load_nothing_from_elsewhere() -> None:
    css_files = sorted((DIST / "assets").glob("*.css")) if DIST.is_dir() else []
    if not css_files:
        pytest.skip("the web app is not built")
    for css in css_files:
        assert re.search(r"url\(\s*['\"]?(?:https?:)?//", css.read_text()) is None
        assert "@import" not in css.read_text()


# --- the docs pages ----------------------------------------------------------------------


def inline_script_hashes(html: str) -> set[str]:
    scripts = re.findall(r"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", html, re.DOTALL)
    return {
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
        for s in scripts
    }


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_pages_get_their_own_csp(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    for name, value in BASE.items():
        assert response.headers[name] == value
    directives = csp_directives(response.headers["content-security-policy"])
    # Served offline: scripts from the app only, no CDN, no inline script on the page.
    assert directives["script-src"] == ["'self'"]
    assert inline_script_hashes(response.text) == set()
    assert "http" not in response.headers["content-security-policy"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["connect-src"] == ["'self'"]
    # every script and stylesheet the page loads is the app's own
    for url in re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', response.text):
        assert url.startswith("/docs/assets/"), url


def test_the_old_oauth2_redirect_page_is_gone(client: TestClient) -> None:
    # No OAuth in this API: the page (and its inline script) is not served any more.
    assert "swagger" not in client.get("/docs/oauth2-redirect").text.lower()


def test_docs_csp_hashes_what_it_is_given() -> None:
    digest = base64.b64encode(hashlib.sha256(b"alert(1)").digest()).decode()
    assert f"'sha256-{digest}'" in docs_csp([b"alert(1)"])
    assert "sha256" not in docs_csp([])


def test_headers_a_route_sets_are_kept() -> None:
    def own(request: Any) -> PlainTextResponse:
        return PlainTextResponse("x", headers={"X-Frame-Options": "SAMEORIGIN"})

    app = Starlette(routes=[Route("/own", own)])
    app.add_middleware(SecurityHeadersMiddleware)
    response = TestClient(app).get("/own")
    assert response.headers["x-frame-options"] == "SAMEORIGIN"
    assert response.headers.get_list("x-frame-options") == ["SAMEORIGIN"]
    assert response.headers["x-content-type-options"] == "nosniff"


# --- CORS: only the configured origins ------------------------------------------------------


def preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        "/predict",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )


def test_no_cors_unless_configured(make_client: Any) -> None:
    client = make_client()
    response = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in preflight(client, "https://evil.example").headers


def test_cors_allows_only_the_configured_origin(make_client: Any) -> None:
    client = make_client(cors_origins="https://viewer.hospital.example")
    allowed = preflight(client, "https://viewer.hospital.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://viewer.hospital.example"
    check_strict(allowed)
    refused = preflight(client, "https://evil.example")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    simple = client.get("/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in simple.headers


# --- no endpoint takes a server path or a URL ---------------------------------------------

SUSPICIOUS_NAME = re.compile(
    r"path|url|uri|dir|folder|file_?name|location|href|src|host|endpoint|callback|redirect",
    re.IGNORECASE,
)
SUSPICIOUS_FORMAT = {"uri", "uri-reference", "iri", "iri-reference", "url", "hostname", "path"}


def _resolve(openapi: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = openapi["components"]["schemas"][name]
    return schema


def _fields(openapi: dict[str, Any], schema: dict[str, Any], name: str = "") -> list[Any]:
    """Every (name, schema) of a request schema, nested objects, arrays and unions included."""
    schema = _resolve(openapi, schema)
    found = [(name, schema)]
    for key, sub in schema.get("properties", {}).items():
        found += _fields(openapi, sub, key)
    if "items" in schema:
        found += _fields(openapi, schema["items"], name)
    for union in ("anyOf", "oneOf", "allOf"):
        for sub in schema.get(union, []):
            found += _fields(openapi, sub, name)
    return found


# The worklist's records (issue 29) and the PACS pipeline's failure reports beside it (issue
# 30) are JSON with text the server stores and shows, never interprets (no path, URL or query is
# built from it): each such text is bounded.
STORED_TEXT_PATHS = re.compile(r"^/(worklist(/|$)|pipeline/failures$)")


def test_no_operation_takes_a_path_or_url(client: TestClient) -> None:
    openapi = client.get("/openapi.json").json()
    inputs = []
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":  # an id (an integer), never a name or a path
                    assert _resolve(openapi, parameter["schema"])["type"] == "integer", where
                inputs += [(where, name or parameter["name"], schema) for name, schema in
                           _fields(openapi, parameter["schema"], parameter["name"])]  # fmt: skip
            for media, content in operation.get("requestBody", {}).get("content", {}).items():
                json_record = media == "application/json" and STORED_TEXT_PATHS.match(path)
                assert media == "multipart/form-data" or json_record, f"{where}: {media} body"
                inputs += [(where, name, schema) for name, schema in
                           _fields(openapi, content["schema"])]  # fmt: skip
    assert inputs, "no inputs found: the walk is broken"
    for where, name, schema in inputs:
        assert not SUSPICIOUS_NAME.search(name), f"{where}: input {name!r}"
        assert schema.get("format") not in SUSPICIOUS_FORMAT, f"{where}: {name!r} {schema}"
        if schema.get("type") == "string":
            # a closed set (enum), an uploaded file or a time: never free text the server
            # interprets; a worklist record's stored text is bounded
            is_file = schema.get("contentMediaType") == "application/octet-stream" or (
                schema.get("format") == "binary"
            )
            is_time = schema.get("format") == "date-time"
            stored = STORED_TEXT_PATHS.match(where.split(" ", 1)[1]) and "maxLength" in schema
            assert "enum" in schema or is_file or is_time or stored, (
                f"{where}: free-text input {name!r} {schema}"
            )
