"""Fixtures over the REAL committed model bundle (ml_model/models/default): nothing is mocked.

``client`` runs the production app (``backend.app.main:app``) with its lifespan, so the
model is loaded and warmed up exactly as under uvicorn. ``make_client`` builds extra
apps with other settings that reuse that loaded model (no second load).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app.core.config import Settings
from backend.app.main import app, create_app
from ml_model.config import DEFAULT_MODEL_DIR, SHARED_DATA_DIR
from ml_model.inference.core import InferenceCore
from tests.conftest import make_dicom

ClientFactory = Callable[..., TestClient]


@pytest.fixture(scope="session")
def client() -> Iterator[TestClient]:
    """The production app object, lifespan included (model load + warm-up)."""
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def service(client: TestClient) -> InferenceCore:
    loaded: InferenceCore = client.app.state.inference  # type: ignore[attr-defined]
    return loaded


@pytest.fixture(scope="session")
def predictor() -> InferenceCore:
    """An independent inference core over the same bundle and runtime as the served app
    (ONNX Runtime: its own session, no micro-batching): the reference the API must match.
    TensorFlow's answers are held to ONNX Runtime's by tests/ml_model/test_onnx_parity.py."""
    from backend.app.services.inference import create_core

    return create_core(Settings(model_dir=DEFAULT_MODEL_DIR, batching=False, threshold=None))


@pytest.fixture(scope="session")
def keras_predictor() -> InferenceCore:
    """The same bundle in TensorFlow (KerasForward, INFERENCE_BACKEND=local): the reference
    of the TensorFlow-based paths (TF Serving's SavedModel, local mode)."""
    return InferenceCore(DEFAULT_MODEL_DIR)


@pytest.fixture
def make_client(service: InferenceCore, tmp_path: Path) -> Iterator[ClientFactory]:
    """Apps with other settings (limits, CORS, windows...), sharing the loaded model."""
    opened: list[TestClient] = []

    def factory(**overrides: Any) -> TestClient:
        overrides.setdefault("frontend_dist", tmp_path / "no-dist")
        test_client = TestClient(create_app(Settings(**overrides), inference=service))
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield factory
    for test_client in opened:
        test_client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def ct_slice_path() -> Path:
    """A real CT slice of the shared data set (skipped where the data set is absent)."""
    folder = SHARED_DATA_DIR / "train" / "fracture"
    if not folder.is_dir():
        pytest.skip(f"shared data set not found at {folder}; see ml_model.config.SHARED_DATA_DIR")
    return sorted(folder.glob("*.png"))[0]


@pytest.fixture(scope="session")
def ct_slice_paths() -> list[Path]:
    """Two real slices of each class."""
    paths = []
    for label in ("fracture", "normal"):
        folder = SHARED_DATA_DIR / "train" / label
        if not folder.is_dir():
            pytest.skip(f"shared data set not found at {folder}")
        paths.extend(sorted(folder.glob("*.png"))[:2])
    return paths


class Images:
    """Builders for test uploads (a fixture, so it works under any pytest import mode)."""

    @staticmethod
    def synthetic_slice(width: int = 160, height: int = 120, seed: int = 0) -> np.ndarray:
        """A CT-like uint8 grayscale slice: dark background, bright ring, noise."""
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width]
        radius = np.hypot((xx - width / 2) / (width / 3), (yy - height / 2) / (height / 3))
        body = np.where(radius < 1.0, 90.0, 10.0) + np.where(np.abs(radius - 0.6) < 0.1, 140.0, 0.0)
        noisy = body + rng.normal(0, 8, size=body.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    @staticmethod
    def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    @staticmethod
    def png_bytes(width: int = 160, height: int = 120, seed: int = 0) -> bytes:
        return Images.encode(Image.fromarray(Images.synthetic_slice(width, height, seed)), "PNG")

    @staticmethod
    def png_header_only(width: int, height: int) -> bytes:
        """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
        idat = zlib.compress(b"\x00" * (width + 1))  # one row; the header check comes first
        return (
            b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
        )

    @staticmethod
    def decode_png(data: bytes) -> Image.Image:
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG"
        image.load()
        return image

    @staticmethod
    def dicom_bytes(
        hu: np.ndarray,
        slope: float = 2.0,
        intercept: float = -1024.0,
        with_pixels: bool = True,
    ) -> bytes:
        """A CT DICOM (Part 10, explicit VR little endian) whose pixels decode to ``hu``."""
        stored = (np.asarray(hu, dtype=np.float64) - intercept) / slope
        assert np.array_equal(stored, np.rint(stored)), "choose HU values the slope can store"
        return make_dicom(stored.astype(np.uint16), slope, intercept, with_pixels=with_pixels)


@pytest.fixture(scope="session")
def images() -> type[Images]:
    return Images
