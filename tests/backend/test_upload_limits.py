"""Upload size limits (checked while reading) and uploads never touching the disk."""

from __future__ import annotations

import asyncio
import io
import tempfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.formparsers import MultiPartParser
from starlette.types import Message

BOUNDARY = "----triage-test-boundary"
PART_HEAD = (
    f"--{BOUNDARY}\r\n"
    'Content-Disposition: form-data; name="file"; filename="big.bmp"\r\n'
    "Content-Type: image/bmp\r\n\r\n"
).encode()
PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def noise_bmp(width: int, height: int) -> bytes:
    """Incompressible pixels: the file is as large as it looks (width * height bytes)."""
    pixels = np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def test_content_length_over_limit_is_413(make_client: Any) -> None:
    client = make_client(max_upload_mb=0.1)
    response = client.post("/predict", files={"file": ("big.bmp", noise_bmp(400, 400))})
    assert response.status_code == 413
    assert "larger than the limit of" in response.json()["detail"]


def test_file_over_limit_inside_the_multipart_slack_is_413(make_client: Any) -> None:
    """Body under limit + framing allowance, file itself over the per-file limit."""
    client = make_client(max_upload_mb=0.1)  # 104,857 bytes per file
    data = noise_bmp(330, 330)  # ~110 kB: over the file limit, under limit + 64 KiB
    assert 0.1 * 1024 * 1024 < len(data) < 0.1 * 1024 * 1024 + 64 * 1024
    response = client.post("/predict", files={"file": ("big.bmp", data)})
    assert response.status_code == 413
    assert response.json()["detail"].startswith("the file is larger than the limit")


def test_file_at_limit_is_accepted(make_client: Any) -> None:
    client = make_client(max_upload_mb=0.1)
    response = client.post("/predict", files={"file": ("ok.bmp", noise_bmp(300, 300))})
    assert response.status_code == 200, response.text


def test_chunked_upload_without_content_length_is_413(make_client: Any) -> None:
    client = make_client(max_upload_mb=0.1)

    def body() -> Iterator[bytes]:
        yield PART_HEAD
        for _ in range(40):
            yield b"\0" * 16384
        yield PART_TAIL

    response = client.post("/predict", content=body(), headers={"content-type": MULTIPART})
    assert response.status_code == 413
    assert response.json()["detail"] == "the upload is larger than the limit of 0.1 MiB per file"


def _call_asgi(app: Any, headers: list[tuple[bytes, bytes]], receive: Any) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    return sent


def test_streamed_body_stops_being_read_at_the_limit(make_client: Any) -> None:
    """A 16 MiB chunked upload against a 0.1 MiB limit: reading stops at the limit."""
    app = make_client(max_upload_mb=0.1).app
    limit = app.state.settings.max_single_request_bytes
    chunk, total_chunks = 16384, 1024
    read = 0

    async def receive() -> Message:
        nonlocal read
        read += 1
        body = PART_HEAD if read == 1 else b"\0" * chunk
        return {"type": "http.request", "body": body, "more_body": read < total_chunks}

    sent = _call_asgi(app, [(b"content-type", MULTIPART.encode())], receive)

    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 413
    assert read * chunk <= limit + 2 * chunk  # stopped at the first chunk past the limit
    assert read < total_chunks


def test_declared_content_length_is_refused_before_reading(make_client: Any) -> None:
    app = make_client(max_upload_mb=0.1).app

    async def receive() -> Message:
        raise AssertionError("the body must not be read")

    headers = [(b"content-type", MULTIPART.encode()), (b"content-length", b"50000000")]
    sent = _call_asgi(app, headers, receive)
    assert sent[0]["status"] == 413


@pytest.fixture
def disk_tripwire(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail any attempt to roll a spooled upload over to a temporary file on disk."""
    attempts: list[str] = []

    def no_disk(*args: Any, **kwargs: Any) -> Any:
        attempts.append("TemporaryFile")
        raise AssertionError("an upload was about to be written to disk")

    monkeypatch.setattr(tempfile, "TemporaryFile", no_disk)
    return attempts


def test_large_uploads_stay_in_memory(client: TestClient, disk_tripwire: list[str]) -> None:
    data = noise_bmp(1800, 1800)  # 3.2 MB: Starlette's default would spool it at 1 MiB
    assert len(data) > 3 * 1024 * 1024
    response = client.post("/predict", files={"file": ("big.bmp", data)})
    assert response.status_code == 200, response.text
    batch = client.post("/predict/batch", files=[("files", ("a.bmp", data))] * 2)
    assert batch.status_code == 200, batch.text
    assert all("prediction" in item for item in batch.json()["results"])
    assert disk_tripwire == []
    assert MultiPartParser.spool_max_size > client.app.state.settings.max_batch_bytes  # type: ignore[attr-defined]


def test_tripwire_catches_starlettes_default_spooling(
    client: TestClient, disk_tripwire: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Control: with Starlette's 1 MiB default the same upload would go to disk."""
    monkeypatch.setattr(MultiPartParser, "spool_max_size", 1024 * 1024)
    response = client.post("/predict", files={"file": ("big.bmp", noise_bmp(1800, 1800))})
    assert response.status_code != 200
    assert disk_tripwire == ["TemporaryFile"]
