"""GET /docs and /redoc offline: every asset from the app itself, no inline script, no CDN.

(The browser side, Swagger UI rendering `/predict` with the outside network blocked, is
in frontend/e2e/e2e.mjs.)"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from backend.app.api.routes.docs import ASSETS


def loaded_urls(html: str) -> list[str]:
    return re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)


@pytest.mark.parametrize(
    ("path", "needs"),
    [
        ("/docs", {"swagger-ui-bundle.js", "swagger-init.js", "swagger-ui.css"}),
        ("/redoc", {"redoc.standalone.js", "redoc-init.js"}),
    ],
)
def test_docs_pages_load_only_the_apps_own_assets(
    client: TestClient, path: str, needs: set[str]
) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'data-openapi-url="/openapi.json"' in page.text
    # no inline script: every <script> has a src
    assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page.text) is None
    urls = loaded_urls(page.text)
    assert needs <= {url.rsplit("/", 1)[-1] for url in urls}
    for url in urls:
        assert url.startswith("/docs/assets/"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100


def test_every_listed_asset_is_there_with_its_type(client: TestClient) -> None:
    for name, (path, media_type) in ASSETS.items():
        assert path.is_file(), path
        response = client.get(f"/docs/assets/{name}")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith(media_type)
        assert response.content == path.read_bytes()


@pytest.mark.parametrize(
    "name", ["missing.js", "..%2F..%2Fmain.py", "%2E%2E%2Fstatic%2Fdocs%2Fswagger-init.js"]
)
def test_only_listed_assets_are_served(client: TestClient, name: str) -> None:
    response = client.get(f"/docs/assets/{name}")
    assert response.status_code == 404


def test_swagger_starts_without_calling_out(client: TestClient) -> None:
    init = client.get("/docs/assets/swagger-init.js").text
    assert "validatorUrl: null" in init  # the public validator would be a call outside
    assert "http" not in init


def test_docs_are_not_in_the_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not any(p.startswith(("/docs", "/redoc")) for p in paths)
