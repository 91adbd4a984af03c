"""Security headers on every response (pure ASGI middleware).

Every response gets ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY`` and a strict Content-Security-Policy: the built web app
(``frontend/dist``) loads its one script and one stylesheet from its own origin, with
no inline script or style, so ``'self'`` is all it needs; heatmaps are ``data:`` URLs
and previews ``blob:`` URLs. On JSON responses the same CSP is harmless and stops a
browser from running anything it is tricked into rendering.

The interactive API docs, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, are served
offline by the app itself (``api/routes/docs.py``: assets from a packaged copy, start-up
code in static files). Those two pages get their own CSP: scripts from the app only (and
any inline script only by the SHA-256 hash of the exact ``<script>`` blocks of the page
being sent, computed from the response body; the pages have none today), no CDN, no
web fonts, and inline styles, because both UIs style their components at run time
(ReDoc injects ``<style>`` elements); ReDoc runs its search in a ``blob:`` worker.

Headers a route already set are kept. 500 responses built by Starlette's outermost
``ServerErrorMiddleware`` (which wraps every user middleware) do not get them.

Also here: :func:`one_part_named`, which refuses an ambiguous multipart upload.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Awaitable, Callable, Iterable

from fastapi import HTTPException, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)

BASE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)

# An inline script: a <script> start tag without a src attribute, and its text.
_INLINE_SCRIPT = re.compile(
    rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.IGNORECASE | re.DOTALL
)


def docs_csp(inline_scripts: Iterable[bytes] = ()) -> str:
    """The CSP of the docs pages: the app's own assets, inline styles, and only these
    inline scripts."""
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in inline_scripts
    )
    script_src = "script-src 'self'" + (f" {hashes}" if hashes else "")
    return (
        f"default-src 'self'; {script_src}; style-src 'self' 'unsafe-inline'; "
        "font-src 'self'; img-src 'self' data: blob:; worker-src 'self' blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
    )


def _with_headers(
    headers: Iterable[tuple[bytes, bytes]], extra: Iterable[tuple[bytes, bytes]]
) -> list[tuple[bytes, bytes]]:
    """``headers`` plus each of ``extra`` the response does not already set."""
    merged = list(headers)
    present = {name.lower() for name, _ in merged}
    merged.extend((name, value) for name, value in extra if name not in present)
    return merged


class SecurityHeadersMiddleware:
    """Add the security headers above to every HTTP response; the paths ``is_docs_page``
    accepts (the routes' ``RoutePolicy.docs_page``) get :func:`docs_csp`."""

    def __init__(
        self, app: ASGIApp, is_docs_page: Callable[[str], bool] = lambda path: False
    ) -> None:
        self.app = app
        self.is_docs_page = is_docs_page
        self.strict = (*BASE_HEADERS, (b"content-security-policy", STRICT_CSP.encode()))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.is_docs_page(scope["path"]):
            await self._docs(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = _with_headers(message.get("headers", []), self.strict)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _docs(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold the (small) docs page until its end, hash its inline scripts, then send it."""
        start: Message | None = None
        body: list[bytes] = []

        async def buffering_send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
                return
            if message["type"] != "http.response.body" or start is None:
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            content = b"".join(body)
            csp = docs_csp(_INLINE_SCRIPT.findall(content))
            extra = (*BASE_HEADERS, (b"content-security-policy", csp.encode()))
            await send({**start, "headers": _with_headers(start.get("headers", []), extra)})
            await send({"type": "http.response.body", "body": content})

        await self.app(scope, receive, buffering_send)


def one_part_named(field: str) -> Callable[[Request], Awaitable[None]]:
    """A route dependency: 400 when the multipart body repeats ``field``.

    FastAPI binds a single ``UploadFile`` parameter to the *last* part of that name and
    silently drops the others: a client sending two slices to ``/predict`` would get a
    result for only one of them, without knowing which.
    """

    async def check(request: Request) -> None:
        form = await request.form()  # the form FastAPI already parsed (cached on the request)
        count = len(form.getlist(field))
        if count > 1:
            raise HTTPException(
                status_code=400,
                detail=f"{count} parts named '{field}' were sent; send exactly one file "
                "(several slices go to /predict/batch)",
            )

    return check
