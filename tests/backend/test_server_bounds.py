"""The server as ``make serve`` starts it (issue 16): the port opens at once and the model
loads behind it; header and body read deadlines; a bounded graceful shutdown; a model that
fails to load stops the process. Real processes on loopback, real model."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ml_model.bundle import CARD_FILE, GATE_FILE
from ml_model.config import DEFAULT_MODEL_DIR
from tests.load.soak import REPO_ROOT, free_port, serve_command

MIB = 1024 * 1024


@contextmanager
def serving(log: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    full = os.environ | {"MODEL_DIR": str(DEFAULT_MODEL_DIR), "FRONTEND_DIST": "/nonexistent"}
    full.pop("LOAD_MODEL_IN_BACKGROUND", None)  # the product's default: in the background
    with open(log, "wb") as out:
        process = subprocess.Popen(
            serve_command(port), cwd=REPO_ROOT, env=full | env, stdout=out, stderr=out
        )
    try:
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> float:
    start = time.monotonic()
    while time.monotonic() - start < 120:
        assert process.poll() is None, log.read_text()[-3000:]
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return time.monotonic() - start
        time.sleep(0.02)
    raise TimeoutError(log.read_text()[-3000:])


def closed_within(sock: socket.socket, limit: float) -> float | None:
    """Seconds until the server closes the connection, or None within ``limit``."""
    start = time.monotonic()
    sock.settimeout(0.5)
    while time.monotonic() - start < limit:
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - start
    return None


def stalled_upload(port: int, sent: int = 2 * MIB) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /predict/study HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {64 * MIB}\r\n\r\n".encode()
        + b'--b\r\nContent-Disposition: form-data; name="files"; filename="s.zip"\r\n\r\n'
        + bytes(sent)
    )
    return sock


@pytest.mark.slow
def test_the_port_opens_before_the_model_is_loaded(tmp_path: Path) -> None:
    """TensorFlow takes seconds to load: /health answers 200 and /ready 503 with the stage
    meanwhile (HEAD too), then /ready 200."""
    log = tmp_path / "server.log"
    with serving(log, INFERENCE_BACKEND="local") as (process, port):
        wait_for_port(process, port, log)
        assert get(port, "/health") == (200, b'{"status":"ok"}')
        assert get(port, "/health", "HEAD")[0] == 200
        early, body = get(port, "/ready")
        assert early == 503, body  # the model cannot be loaded in the time the port took
        assert b"the model is not loaded yet: " in body and b"s so far" in body
        assert get(port, "/ready", "HEAD")[0] == 503
        deadline = time.monotonic() + 180
        while get(port, "/ready")[0] != 200:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert get(port, "/ready", "HEAD") == (200, b"")


@pytest.mark.slow
def test_read_deadlines_and_a_bounded_graceful_shutdown(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serving(log, HEADER_TIMEOUT_S="2", BODY_TIMEOUT_S="3") as (process, port):
        wait_for_port(process, port, log)
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Ty")
            after = closed_within(sock, 10)
            assert after is not None and after < 2 + 2, after
        with socket.create_connection(("127.0.0.1", port)) as sock:  # says nothing at all
            after = closed_within(sock, 10)
            assert after is not None and after < 2 + 2, after
        sock = stalled_upload(port)
        after = closed_within(sock, 15)
        sock.close()
        assert after is not None and after < 3 + 3, after
    # SIGTERM with uploads stalled half-way (a body deadline longer than the shutdown bound):
    # the Makefile's --timeout-graceful-shutdown 20 ends them; the process is gone in < 30 s.
    with serving(tmp_path / "stop.log", BODY_TIMEOUT_S="300") as (process, port):
        wait_for_port(process, port, log)
        socks = [stalled_upload(port) for _ in range(3)]
        time.sleep(0.5)
        start = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
        assert time.monotonic() - start < 30
        for sock in socks:
            sock.close()


@pytest.mark.slow
def test_a_model_that_fails_to_load_stops_the_process(tmp_path: Path) -> None:
    """The card and gate are valid (checked before the port opens), the model file is not:
    the load fails behind the open port, is logged naming the file, and the process ends
    non-zero."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for item in DEFAULT_MODEL_DIR.iterdir():
        if item.name in (CARD_FILE, GATE_FILE):
            shutil.copy(item, bundle / item.name)
        elif item.name == "model.onnx":
            (bundle / item.name).write_bytes(b"not an ONNX model")
        else:
            (bundle / item.name).symlink_to(item)
    log = tmp_path / "server.log"
    with serving(log, MODEL_DIR=str(bundle)) as (process, _port):
        code = process.wait(timeout=120)
    text = log.read_text()
    assert code != 0, text[-3000:]
    assert "the model could not be loaded" in text and "model.onnx" in text, text[-3000:]
    assert sys.executable  # the venv's interpreter ran it


def test_make_serve_and_the_image_use_the_bounded_server_flags() -> None:
    """The Makefile's UVICORN_FLAGS are the ones the soak and these tests start the server with
    (the image's CMD: tests/packaging/test_dockerfiles.py)."""
    from tests.load.soak import UVICORN_FLAGS

    makefile = (REPO_ROOT / "Makefile").read_text()
    block = makefile.split("UVICORN_FLAGS :=", 1)[1].split("\n\n", 1)[0]
    flags = block.replace("\\\n", " ").split()
    assert flags == UVICORN_FLAGS
    for target in ("run:", "serve:"):
        recipe = makefile.split(f"\n{target}", 1)[1].split("\n\n", 1)[0]
        assert "$(UVICORN_FLAGS)" in recipe, target
