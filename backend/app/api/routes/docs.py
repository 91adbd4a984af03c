"""GET /docs (Swagger UI) and /redoc (ReDoc), served offline by the app itself.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc's fonts from Google):
behind a hospital firewall they are blank. Here the assets come from the packaged copy in
the ``fastapi-offline`` wheel (Swagger UI, ReDoc, favicon; only its files are used) and the
start-up code from ``backend/app/static/docs/`` (static files, so the pages have no inline
script). The app is built with ``docs_url=None, redoc_url=None`` and includes this router.

The pages' CSP is :func:`backend.app.core.security.docs_csp` (their policy's ``docs_page``):
scripts from the app only.
"""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse

from backend.app.core.policy import RoutePolicy, declare

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"

_PACKAGED = Path(fastapi_offline.__file__).resolve().parent / "static"
_OWN = Path(__file__).resolve().parents[2] / "static" / "docs"

# name -> (file, media type): a fixed list, so no path from the URL ever reaches the disk.
ASSETS: dict[str, tuple[Path, str]] = {
    "swagger-ui-bundle.js": (_PACKAGED / "swagger-ui-bundle.js", "text/javascript"),
    "swagger-ui.css": (_PACKAGED / "swagger-ui.css", "text/css"),
    "redoc.standalone.js": (_PACKAGED / "redoc.standalone.js", "text/javascript"),
    "favicon.png": (_PACKAGED / "favicon.png", "image/png"),
    "swagger-init.js": (_OWN / "swagger-init.js", "text/javascript"),
    "redoc-init.js": (_OWN / "redoc-init.js", "text/javascript"),
}

router = APIRouter(include_in_schema=False)


def _page(request: Request, title: str, root_id: str, styles: list[str], scripts: list[str]) -> str:
    prefix = request.scope.get("root_path", "")
    openapi_url = f"{prefix}{request.app.openapi_url}"
    title = html.escape(f"{request.app.title} - {title}")
    links = "".join(f'<link rel="stylesheet" href="{prefix}{ASSETS_PATH}/{s}">' for s in styles)
    tags = "".join(f'<script src="{prefix}{ASSETS_PATH}/{s}"></script>' for s in scripts)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        f'<link rel="icon" type="image/png" href="{prefix}{ASSETS_PATH}/favicon.png">{links}'
        f'</head><body><div id="{root_id}" data-openapi-url="{html.escape(openapi_url)}"></div>'
        f"{tags}</body></html>"
    )


@router.get(DOCS_PATH)
@declare(RoutePolicy(auth=False, docs_page=True))
async def swagger_ui(request: Request) -> HTMLResponse:
    return HTMLResponse(
        _page(
            request,
            "Swagger UI",
            "swagger-ui",
            ["swagger-ui.css"],
            ["swagger-ui-bundle.js", "swagger-init.js"],
        )
    )


@router.get(REDOC_PATH)
@declare(RoutePolicy(auth=False, docs_page=True))
async def redoc(request: Request) -> HTMLResponse:
    return HTMLResponse(
        _page(request, "ReDoc", "redoc", [], ["redoc.standalone.js", "redoc-init.js"])
    )


@router.get(f"{ASSETS_PATH}/{{name}}")
@declare(RoutePolicy(auth=False))
async def docs_asset(name: str) -> FileResponse:
    asset = ASSETS.get(name)
    if asset is None:
        raise HTTPException(status_code=404, detail="Not Found")
    path, media_type = asset
    return FileResponse(
        path, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"}
    )
