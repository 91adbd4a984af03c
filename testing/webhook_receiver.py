"""A real webhook receiver on 127.0.0.1 for the notification tests and the time-to-notification
benchmark: it checks each call's HMAC-SHA256 signature (as docs/worklist.md shows a receiver
should), notes when the call arrived, and fails as told."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Call:
    delivery: str
    body: dict[str, Any]
    signed: bool  # the signature matched the raw body
    status: int
    received_at: float  # time.time() when the call's body was read


@dataclass
class Receiver:
    """Verifies each call's signature with ``secret`` and answers 500 to the first
    ``fail_first`` calls of each delivery id (all of them with ``fail_always``), else 204."""

    secret: str
    fail_first: int = 0
    fail_always: bool = False
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def answer(self, headers: Any, raw: bytes) -> int:
        received_at = time.time()
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, headers.get("X-Triage-Signature", ""))
        delivery = headers.get("X-Triage-Delivery", "")
        with self.lock:
            earlier = sum(1 for call in self.calls if call.delivery == delivery)
            if not signed:
                status = 401
            elif self.fail_always or earlier < self.fail_first:
                status = 500
            else:
                status = 204
            self.calls.append(Call(delivery, json.loads(raw), signed, status, received_at))
        return status

    def accepted(self) -> list[Call]:
        with self.lock:
            return [call for call in self.calls if call.status == 204]

    def all(self) -> list[Call]:
        with self.lock:
            return list(self.calls)


@contextlib.contextmanager
def running_receiver(secret: str) -> Iterator[Receiver]:
    """A receiver listening on a free loopback port (``url``) until the block ends."""
    state = Receiver(secret)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(state.answer(self.headers, raw))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/triage"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
