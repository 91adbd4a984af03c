"""Pure ASGI middleware: request body size limit and one JSON access-log line per request."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app.core.logging import ACCESS_LOGGER_NAME


class BodyLimit(NamedTuple):
    max_bytes: int
    detail: str  # the 413 response's detail


class RequestTooLargeError(HTTPException):
    """The request body passed its limit while it was being read (HTTP 413).

    An ``HTTPException`` so that FastAPI's body parsing re-raises it unchanged
    (any other exception there becomes a generic 400).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(status_code=413, detail=detail)


class BodySizeLimitMiddleware:
    """Refuse request bodies over a per-path byte limit, without buffering them first.

    A ``Content-Length`` over the limit is answered 413 before any byte is read;
    otherwise (chunked uploads, lying headers) the wrapped ``receive`` counts the
    bytes as they arrive and raises :class:`RequestTooLargeError` at the first
    chunk past the limit, so the rest of the upload is never read.
    """

    def __init__(self, app: ASGIApp, limit_for_path: Callable[[str], BodyLimit]) -> None:
        self.app = app
        self.limit_for_path = limit_for_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, detail = self.limit_for_path(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)
            return

        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise RequestTooLargeError(detail)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except RequestTooLargeError as exc:
            # Raised outside FastAPI's exception handling (e.g. a non-FastAPI route).
            if response_started:
                raise
            await JSONResponse({"detail": exc.detail}, status_code=413)(scope, receive, send)


class AccessLogMiddleware:
    """Log method, path, status and latency of every HTTP request as one JSON line.

    No query string, headers, client address, filenames or body: uploads are
    medical images and must not end up in logs.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.logger = logging.getLogger(ACCESS_LOGGER_NAME)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        request_id = uuid.uuid4().hex

        async def logging_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        finally:
            self.logger.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "latency_ms": round((time.perf_counter() - start) * 1000.0, 2),
                },
            )
