"""Pure ASGI middleware: request body size limit and one JSON access-log line per request."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

import anyio
import anyio.to_thread
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.app.core.admission import (
    RETRY_AFTER_S,
    AdmissionError,
    MemoryBudget,
    RequestLedger,
    StudySlots,
    ledger_context,
)
from backend.app.core.logging import ACCESS_LOGGER_NAME, REQUEST_ID
from backend.app.core.memory import release_free_memory

# A Content-Length is ASCII digits; 18 of them are already past any limit (and int() of
# thousands of digits raises, which used to be a 500).
_CONTENT_LENGTH = re.compile(r"[0-9]{1,18}")


def declared_length(scope: Scope) -> int | None:
    """The request's Content-Length as a number; None when absent or not a plain number."""
    value = Headers(scope=scope).get("content-length")
    if value is None or not _CONTENT_LENGTH.fullmatch(value.strip()):
        return None
    return int(value.strip())


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
        declared = declared_length(scope)
        if declared is not None and declared > limit:
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


# The methods this API or any browser uses; anything else is refused before it is logged or
# counted, so that a client inventing method names cannot grow /metrics or the logs.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class RequestGuardMiddleware:
    """Before anything logs, counts or parses a request: 405 for an HTTP method outside
    :data:`KNOWN_METHODS` (metric labels stay a fixed set), 400 for a ``Content-Length``
    that is not a plain number (the metrics middleware would parse it, and ``int()`` of
    thousands of digits raises)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            response = None
            if scope["method"] not in KNOWN_METHODS:
                response = JSONResponse(
                    {"detail": "Method Not Allowed"},
                    status_code=405,
                    headers={"Allow": "GET, HEAD, POST, OPTIONS"},
                )
            elif (
                Headers(scope=scope).get("content-length") is not None
                and declared_length(scope) is None
            ):
                response = JSONResponse(
                    {"detail": "the Content-Length header is not a number"}, status_code=400
                )
            if response is not None:
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


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
        REQUEST_ID.set(request_id)

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


class BodyRefusedError(HTTPException):
    """The upload was refused while it was being read: over the memory budget (413/503) or
    stalled past ``BODY_TIMEOUT_S`` (408). An ``HTTPException`` so that FastAPI's body
    parsing re-raises it unchanged."""

    def __init__(self, status_code: int, detail: str, headers: dict[str, str]) -> None:
        super().__init__(status_code=status_code, detail=detail, headers=headers)


class AdmissionMiddleware:
    """Admission control (``core/admission.py``) around every HTTP request.

    Gives the request a :class:`RequestLedger` (in a context variable for the routes and
    the inference core), takes a study slot for study paths, reserves the body's bytes
    (the declared ``Content-Length`` before reading anything, else chunk by chunk), answers
    408 to a body that sends nothing for ``body_timeout_s``, and releases everything when
    the response is done, handing freed memory back to the system after a busy spell.
    """

    def __init__(
        self,
        app: ASGIApp,
        budget: MemoryBudget,
        slots: StudySlots,
        request_limit: int,
        body_timeout_s: float,
        is_study: Callable[[str], bool],
        on_refused: Callable[[str], None] = lambda reason: None,
    ) -> None:
        self.app = app
        self.budget = budget
        self.slots = slots
        self.request_limit = request_limit
        self.body_timeout_s = body_timeout_s
        self.is_study = is_study
        self.on_refused = on_refused

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, error: AdmissionError, reason: str
    ) -> None:
        self.on_refused(reason)
        response = JSONResponse(
            {"detail": error.detail}, status_code=error.status_code, headers=error.headers
        )
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ledger = RequestLedger(self.budget, self.request_limit)
        study = self.is_study(scope["path"]) and scope["method"] == "POST"
        if study and not self.slots.try_take():
            busy = AdmissionError(
                503,
                f"the server is analysing {self.slots.capacity} studies already (the most at "
                "once); retry in a few seconds",
                retry_after=RETRY_AFTER_S,
            )
            await self._refuse(scope, receive, send, busy, "studies")
            return
        try:
            declared = declared_length(scope) or 0
            reserved = declared
            try:
                ledger.reserve(declared, "the upload")
            except AdmissionError as exc:
                reason = "request_memory" if exc.status_code == 413 else "process_memory"
                await self._refuse(scope, receive, send, exc, reason)
                return
            received = 0

            async def admitted_receive() -> Message:
                nonlocal received, reserved
                try:
                    with anyio.fail_after(self.body_timeout_s):
                        message = await receive()
                except TimeoutError:
                    self.on_refused("body_timeout")
                    raise BodyRefusedError(
                        408,
                        f"the upload stalled: no data for {self.body_timeout_s:g} s",
                        {"Connection": "close"},
                    ) from None
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > reserved:
                        try:
                            ledger.reserve(received - reserved, "the upload")
                        except AdmissionError as exc:
                            reason = (
                                "request_memory" if exc.status_code == 413 else ("process_memory")
                            )
                            self.on_refused(reason)
                            raise BodyRefusedError(
                                exc.status_code, exc.detail, exc.headers
                            ) from None
                        reserved = received
                return message

            with ledger_context(ledger):
                await self.app(scope, admitted_receive, send)
        finally:
            ledger.release_all()
            if study:
                self.slots.give()
            if ledger.trim_due:
                await anyio.to_thread.run_sync(release_free_memory)
