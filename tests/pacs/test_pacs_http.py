"""The worker's HTTP sessions (``pacs.clients.http_session``) against a real socket server
that does what Orthanc does to an idle kept-alive connection: it closes it, here just as the
next request arrives ("Remote end closed connection without response"). A GET is sent again
once on a new connection; a plain ``requests`` session fails (the case is real); a POST is
never sent twice; a timeout is not retried here (the worker's back-off handles it)."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests

from pacs.clients import ApiClient, PacsClient, http_session
from pacs.settings import WorkerSettings

SLOW_S = 2.0


@dataclass
class Seen:
    """What the server saw: requests per connection, in order."""

    requests: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _read_request(conn: socket.socket) -> str | None:
    """One HTTP request's first line (its body read and dropped); None at end of stream."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(4096)
    return head.split(b"\r\n")[0].decode()


def serve(mode: str, seen: Seen) -> socketserver.ThreadingTCPServer:
    """``drop``: the second request on a connection is met by closing it; ``slow``: every
    answer comes after SLOW_S."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            count = 0
            while (line := _read_request(conn)) is not None:
                count += 1
                with seen.lock:
                    seen.requests.append((id(conn), line))
                if mode == "drop" and count == 2:
                    conn.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "slow":
                    time.sleep(SLOW_S)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def dropping() -> Iterator[tuple[str, Seen]]:
    seen = Seen()
    server = serve("drop", seen)
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_a_get_on_a_connection_closed_under_it_is_sent_again(dropping: tuple[str, Seen]) -> None:
    url, seen = dropping
    session = http_session()
    assert session.get(f"{url}/series", timeout=5).text == "ok"
    assert session.get(f"{url}/series", timeout=5).text == "ok"  # the kept-alive one dropped
    connections = [conn for conn, _ in seen.requests]
    assert len(seen.requests) == 3 and len(set(connections)) == 2, seen.requests


def test_a_plain_session_fails_there(dropping: tuple[str, Seen]) -> None:
    url, seen = dropping
    session = requests.Session()
    session.get(f"{url}/series", timeout=5)
    with pytest.raises(requests.ConnectionError, match="closed connection without response"):
        session.get(f"{url}/series", timeout=5)
    assert len(seen.requests) == 2


def test_a_post_is_never_sent_twice(dropping: tuple[str, Seen]) -> None:
    url, seen = dropping
    session = http_session()
    session.post(f"{url}/worklist", data=b"{}", timeout=5)
    with pytest.raises(requests.ConnectionError):
        session.post(f"{url}/worklist", data=b"{}", timeout=5)
    assert [line for _, line in seen.requests] == ["POST /worklist HTTP/1.1"] * 2


def test_a_timeout_is_not_retried_here() -> None:
    seen = Seen()
    server = serve("slow", seen)
    try:
        with pytest.raises(requests.ReadTimeout):
            http_session().get(f"http://127.0.0.1:{server.server_address[1]}/x", timeout=0.5)
        time.sleep(SLOW_S)  # a retry, had there been one, would have arrived by now
        assert len(seen.requests) == 1
    finally:
        server.shutdown()


def test_the_worker_talks_through_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_URL", "http://127.0.0.1:8042")
    monkeypatch.setenv("API_URL", "http://127.0.0.1:8000")
    settings = WorkerSettings()
    for session in (PacsClient(settings).session, ApiClient(settings).session):
        retry = session.get_adapter("http://127.0.0.1/").max_retries
        assert type(retry).__name__ == "DroppedConnectionRetry" and retry.total == 1
