"""Privacy: uploads are medical images. Serving them writes nothing to disk (temp dir,
working tree) and logs nothing of them: no pixels, no file names, no DICOM tags, no base64.

Three independent nets for disk writes during predict, batch and explain requests:
  * an audit hook (``sys.addaudithook``) records every file this process opens for
    writing, creates, renames or deletes, anywhere, from any thread;
  * ``TMPDIR`` (and ``tempfile.tempdir``) point at an empty private directory, which
    must still be empty afterwards;
  * the working tree's file listing with sizes and mtimes must be unchanged (this one
    also sees writes from native code, which the audit hook does not).
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from backend.app.core.config import REPO_ROOT
from backend.app.core.logging import JsonFormatter
from tests.backend.hostile import corpus
from tests.conftest import make_dicom

SECRET_NAME = "DOE-JANE-MRN-0047113"  # in every file name sent
SECRET_TEXT = "PHI-MARKER-2f9c1e"  # inside the files: PNG text chunk, DICOM patient tags
SKIP_DIRS = {
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
    ".hypothesis",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_WRITE_EVENTS = {
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.truncate",
    "os.link",
    "os.symlink",
    "shutil.copyfile",
    "shutil.move",
    "tempfile.mkstemp",
    "tempfile.mkdtemp",
}


# --- the audit hook: installed once per process, records only while armed --------------

_armed: list[tuple[str, str]] | None = None
_lock = threading.Lock()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _armed is None:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS
        )
    else:
        writing, path = event in _WRITE_EVENTS, args[0] if args else None
    if writing and "__pycache__" not in str(path):  # bytecode caches of lazy imports
        with _lock:
            if _armed is not None:
                _armed.append((event, str(path)))


sys.addaudithook(_audit)


def tree_state(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` (minus caches and environments): path -> (size, mtime)."""
    state = {}
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [name for name in subdirs if name not in SKIP_DIRS]
        for name in files:
            path = Path(directory, name)
            with_stat = path.lstat()
            state[str(path.relative_to(root))] = (with_stat.st_size, with_stat.st_mtime_ns)
    return state


@pytest.fixture
def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmpdir"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # recomputed from TMPDIR on next use
    assert tempfile.gettempdir() == str(folder)
    return folder


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Every log record of every logger, at every level, as the product's JSON lines."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    backend, root = logging.getLogger("backend"), logging.getLogger()
    old_root_level = root.level
    backend.addHandler(handler)  # the backend logger does not propagate to root
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.setLevel(old_root_level)
        root.removeHandler(handler)
        backend.removeHandler(handler)


def png_with_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", f"patient {SECRET_TEXT}")
    return corpus.encode(corpus.gray(), "PNG", pnginfo=info)


def dicom_with_patient(**tags: Any) -> bytes:
    import pydicom

    data = make_dicom(np.full((32, 32), 1200, dtype=np.uint16), 1.0, -1024.0)
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.PatientName = f"DOE^{SECRET_TEXT}"
    dataset.PatientID = SECRET_TEXT
    for keyword, value in tags.items():
        setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def big_bmp() -> bytes:
    """3 MB: past Starlette's default 1 MiB spool threshold."""
    pixels = np.random.default_rng(0).integers(0, 255, (1800, 1800), dtype=np.uint8)
    return corpus.encode(Image.fromarray(pixels), "BMP")


def exercise(client: TestClient) -> list[int]:
    """Predict, explain, batch and errors, with the secrets in names and contents."""
    png, dcm = png_with_text(), dicom_with_patient()
    bad_dcm = dicom_with_patient(RescaleSlope="0")
    calls = [
        client.post("/predict", files={"file": (f"{SECRET_NAME}.png", png)}),
        client.post(
            "/predict", params={"explain": "true"}, files={"file": (f"{SECRET_NAME}.dcm", dcm)}
        ),
        client.post("/predict", files={"file": (f"{SECRET_NAME}.bmp", big_bmp())}),
        client.post("/predict", files={"file": (f"{SECRET_NAME}.dcm", bad_dcm)}),
        client.post("/predict", files={"file": (f"{SECRET_NAME}.txt", SECRET_TEXT.encode())}),
        client.post(
            "/predict/batch",
            files=[
                ("files", (f"{SECRET_NAME}-1.png", png)),
                ("files", (f"{SECRET_NAME}-2.dcm", dcm)),
                ("files", (f"{SECRET_NAME}-3.dcm", bad_dcm)),
                ("files", (f"{SECRET_NAME}-4.bmp", big_bmp())),
            ],
        ),
    ]
    return [call.status_code for call in calls]


def test_serving_writes_nothing_to_disk(client: TestClient, private_tmpdir: Path) -> None:
    global _armed
    before = tree_state(REPO_ROOT)
    with _lock:
        _armed = []
    try:
        statuses = exercise(client)
    finally:
        with _lock:
            writes, _armed = _armed, None
    after = tree_state(REPO_ROOT)

    assert statuses == [200, 200, 200, 400, 415, 200]
    assert writes == [], writes
    assert list(private_tmpdir.iterdir()) == []
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    assert changed == set(), changed


def test_audit_hook_sees_writes() -> None:
    """The net above catches a write (temp file, spooled upload): it can fail."""
    global _armed
    with _lock:
        _armed = []
    try:
        with tempfile.TemporaryFile() as spooled:
            spooled.write(b"x")
    finally:
        with _lock:
            writes, _armed = _armed, None
    assert writes, "the audit hook recorded nothing"


BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{48,}={0,2}")  # request ids are 32 hex characters
NUMBER_RUN = re.compile(r"(?:-?\d+(?:\.\d+)?[,;\s]+){24,}")  # an array of pixel values


def test_logs_carry_no_pixels_names_or_tags(client: TestClient, captured_logs: io.StringIO) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        statuses = exercise(client)
    assert statuses == [200, 200, 200, 400, 415, 200]
    text = captured_logs.getvalue()
    lines = text.splitlines()
    access = [json.loads(line) for line in lines if '"logger": "backend.access"' in line]
    assert len(access) == len(statuses)  # the capture works: one line per request
    for line in lines:
        json.loads(line)  # every line is JSON
    for secret in (SECRET_NAME, SECRET_TEXT, "DOE^", ".png", ".dcm", "iVBOR"):
        assert secret not in text, secret
    assert BASE64_RUN.search(text) is None, BASE64_RUN.search(text)
    assert NUMBER_RUN.search(text) is None, NUMBER_RUN.search(text)
    for warning in caught:  # warnings reach stderr too
        assert SECRET_TEXT not in str(warning.message) and SECRET_NAME not in str(warning.message)


def test_log_scan_would_catch_a_leak(captured_logs: io.StringIO) -> None:
    """The patterns above match what a leak would look like."""
    logging.getLogger("backend").warning(
        "oops", extra={"upload": f"{SECRET_NAME}.png", "pixels": list(range(40))}
    )
    text = captured_logs.getvalue()
    assert SECRET_NAME in text and NUMBER_RUN.search(text)
    assert BASE64_RUN.search(base64.b64encode(png_with_text()).decode()) is not None


def test_damaged_dicom_logs_no_traceback(client: TestClient, captured_logs: io.StringIO) -> None:
    """pydicom logs each failing codec plugin with a traceback; the upload's 400 says it all."""
    data = corpus.file_case("dicom-jpeg-2000-garbage").build()
    response = client.post("/predict", files={"file": ("x.dcm", data)})
    assert response.status_code == 400
    text = captured_logs.getvalue()
    assert "Traceback" not in text and '"level": "ERROR"' not in text, text
    assert '"logger": "backend.access"' in text  # the capture works
