"""uvicorn's HTTP/1.1 protocol with read deadlines.

    uvicorn ... --http backend.app.core.http:BoundedHttpProtocol

uvicorn closes an idle keep-alive connection after ``--timeout-keep-alive``, but a connection
that opens and sends nothing, or a partial request header and then silence, is kept open
for as long as the client likes, and a body that stalls half-way pins its buffers (and
holds graceful shutdown) until the client goes away. This protocol adds two deadlines:

* ``HEADER_TIMEOUT_S``: from a connection's opening (or the first byte of its next request)
  to the end of that request's header; past it the connection is closed;
* ``BODY_TIMEOUT_S``: while a request body is incomplete, the longest silence between two
  reads; past it the connection is closed and the app sees the client leave (its memory is
  freed). The app answers 408 at the same deadline when it is the one reading
  (``core/middleware.py``); this catches bodies nobody reads.

It extends whichever protocol uvicorn would pick (httptools when installed, else h11) and
touches only ``connection_made``, ``data_received`` and ``connection_lost``. The Makefile's
``run``/``serve`` and the backend image's CMD use it.
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # what uvicorn's "auto" picks
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base
except ImportError:  # pragma: no cover - httptools not installed
    _Base = H11Protocol  # type: ignore[assignment,misc]

CHECK_INTERVAL_S = 1.0


@cache
def _deadlines() -> tuple[float, float]:
    from backend.app.core.config import Settings

    settings = Settings()
    return settings.header_timeout_s, settings.body_timeout_s


class _Bounded:
    """The deadlines, over either of uvicorn's HTTP/1.1 protocols (see the module docstring)."""

    # Set by the uvicorn protocol this is mixed into.
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport | None
    cycle: Any
    flow: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout, self.body_timeout = _deadlines()
        self._header_since: float | None = None
        self._last_read = 0.0
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        now = self.loop.time()
        self._header_since = now  # a silent connection is a header that never comes
        self._last_read = now
        self._watch = self.loop.call_later(CHECK_INTERVAL_S, self._check)

    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        self._last_read = now
        if self._header_since is None and (self.cycle is None or self.cycle.response_complete):
            self._header_since = now  # the first bytes of the next request
        before = self.cycle
        super().data_received(data)  # type: ignore[misc]
        if self.cycle is not before:  # a new request's header is complete
            self._header_since = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _check(self) -> None:
        self._watch = None
        if self.transport is None or self.transport.is_closing():
            return
        now = self.loop.time()
        if self._header_since is not None and now - self._header_since > self.header_timeout:
            self.transport.close()
            return
        cycle = self.cycle
        reading_body = (
            cycle is not None
            and cycle.more_body
            and not cycle.disconnected
            and not self.flow.read_paused  # paused by us (the app is behind), not the client
        )
        if reading_body and now - self._last_read > self.body_timeout:
            self.transport.close()
            return
        self._watch = self.loop.call_later(CHECK_INTERVAL_S, self._check)


class BoundedHttpProtocol(_Bounded, _Base):  # type: ignore[misc]
    """httptools when installed (what uvicorn's ``auto`` picks), else h11; with deadlines."""


class BoundedH11Protocol(_Bounded, H11Protocol):  # type: ignore[misc]
    """h11 (pure Python, what a bare ``pip install uvicorn`` runs), with deadlines."""
