"""Fixtures shared by every test package."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# In-process apps (TestClient) wait for the model in their lifespan, so a client is ready on
# entry; the product loads it behind an open port (tests/backend/test_server_bounds.py).
os.environ.setdefault("LOAD_MODEL_IN_BACKGROUND", "false")
# The API's worklist database: a file of this test run (removed at its end), never the
# checkout's worklist.sqlite3.
if "WORKLIST_SQLITE_PATH" not in os.environ:
    _WORKLIST_DIR = tempfile.mkdtemp(prefix="worklist-tests-")
    atexit.register(shutil.rmtree, _WORKLIST_DIR, True)
    os.environ["WORKLIST_SQLITE_PATH"] = os.path.join(_WORKLIST_DIR, "worklist.sqlite3")

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model.config import SHARED_DATA_DIR
from testing.dicom_writers import ct_dicom_bytes, gray_to_export_window_dicom  # noqa: F401
from testing.postgres import PostgresServer, postgres_server, why_not_available


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT slices beside the checkout; tests that need them skip when absent."""
    if not (SHARED_DATA_DIR / "train").is_dir():
        pytest.skip(f"real CT data not found at {SHARED_DATA_DIR} (see its README)")
    return SHARED_DATA_DIR


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL server (``testing/postgres.py``: started once per session on
    127.0.0.1, a fresh database per test with ``new_database``); skipped, with the reason,
    where the server's binaries are absent."""
    reason = why_not_available()
    if reason is not None:
        pytest.skip(reason)
    with postgres_server() as server:
        yield server


def synthetic_slice(label: int, seed: int, size: int = 64) -> np.ndarray:
    """A grayscale 'slice' whose class is learnable: a bright disc (fracture) or a ring."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    radius = np.hypot(yy - size / 2, xx - size / 2)
    image = rng.normal(40, 10, (size, size))
    if label:
        image[radius < size / 5] += 160
    else:
        image[(radius > size / 4) & (radius < size / 3)] += 160
    return np.clip(image, 0, 255).astype(np.uint8)


WriteDataset = Callable[..., Path]


@pytest.fixture
def write_dataset(tmp_path: Path) -> WriteDataset:
    """Write a small labelled folder: ``layout`` is 'flat' or 'kaggle'; names mimic the real set."""

    def write(layout: str = "flat", slices_per_class: int = 4, copies: int = 3) -> Path:
        root = tmp_path / layout
        base = root if layout == "flat" else root / "cervical fracture" / "train"
        for label, name in enumerate(("normal", "fracture")):
            folder = base / name
            folder.mkdir(parents=True, exist_ok=True)
            for s in range(slices_per_class):
                series = f"CSFDV1B1{label} ({s + 1})"
                for c in range(copies):
                    suffix = "" if c == 0 else f"-rotated{c}"
                    pixels = synthetic_slice(label, seed=label * 1000 + s * 10 + c)
                    image = Image.fromarray(pixels)
                    if c % 2:  # mix modes like the real set: L originals, RGB copies
                        image = image.convert("RGB")
                    image.save(folder / f"{series}{suffix}.png")
        if layout == "kaggle":
            val = root / "cervical fracture" / "val"
            for label, name in enumerate(("normal", "fracture")):
                (val / name).mkdir(parents=True)
                Image.fromarray(synthetic_slice(label, 99 + label)).save(
                    val / name / f"VAL{label} (1).png"
                )
        return root

    return write


# The DICOM writers live in testing.dicom_writers; the tests use them under this name.
make_dicom = ct_dicom_bytes
