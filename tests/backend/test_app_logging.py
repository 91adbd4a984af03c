"""One structured JSON log line per request: method, path, status, latency; no filenames/pixels."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from backend.app.core.logging import ACCESS_LOGGER_NAME, LOGGER_NAME, JsonFormatter

SECRET_NAME = "Jane-Doe-MRN-4711.png"


@pytest.fixture
def log_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)  # parent of the access logger
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def test_one_json_line_per_request(client: TestClient, images: Any, log_lines: io.StringIO) -> None:
    data = images.png_bytes()
    responses = [
        client.post("/predict", files={"file": (SECRET_NAME, data)}),
        client.post("/predict", params={"explain": "true"}, files={"file": (SECRET_NAME, data)}),
        client.post("/predict", files={"file": (SECRET_NAME, b"not an image")}),
        client.post("/predict/batch", files=[("files", (SECRET_NAME, data))]),
        client.get("/health"),
    ]
    output = log_lines.getvalue()
    lines = [json.loads(line) for line in output.splitlines()]
    access = [line for line in lines if line["logger"] == ACCESS_LOGGER_NAME]
    assert [(line["method"], line["path"], line["status"]) for line in access] == [
        ("POST", "/predict", 200),
        ("POST", "/predict", 200),
        ("POST", "/predict", 415),
        ("POST", "/predict/batch", 200),
        ("GET", "/health", 200),
    ]
    for line, response in zip(access, responses, strict=True):
        assert isinstance(line["latency_ms"], float) and line["latency_ms"] >= 0
        assert line["request_id"] == response.headers["x-request-id"]
        assert {"ts", "level", "message"} <= set(line)

    assert "MRN" not in output and "Jane" not in output  # no filenames
    assert "base64" not in output and "iVBOR" not in output  # no pixels or heatmaps
    assert max(len(line) for line in output.splitlines()) < 1000


def test_uvicorn_access_log_is_replaced(client: TestClient) -> None:
    assert logging.getLogger("uvicorn.access").disabled
    assert not logging.getLogger(LOGGER_NAME).propagate
