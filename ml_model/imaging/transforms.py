"""The one path from image bytes to a model input: decode -> window -> resize.

Training (through ``tf.data``), the CLI and the server all call :func:`image_to_array`;
nothing else turns pixels into tensors. Each step is a small function so it can be tested
and reused on its own. Untrusted bytes: every failure is one of the errors in
``ml_model.imaging.errors``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ml_model.config import DEFAULT_IMG_SIZE, EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from ml_model.imaging.dicom import DicomImage, is_dicom, read_dicom
from ml_model.imaging.errors import ImageDecodeError
from ml_model.imaging.raster import decode_raster


def decode_source(
    data: bytes,
    level: float = EXPORT_WINDOW_LEVEL,
    width: float = EXPORT_WINDOW_WIDTH,
    frame: int | None = None,
) -> tuple[np.ndarray, DicomImage | None]:
    """:func:`decode_image`, and for DICOM the decoded image itself (HU or display values,
    header facts), so a caller can show it in other windows without decoding it again."""
    if not data:
        raise ImageDecodeError("the file is empty")
    if is_dicom(data):
        image = read_dicom(data, frame=frame)
        return image.window(level, width), image
    return decode_raster(data), None


def decode_image(
    data: bytes,
    level: float = EXPORT_WINDOW_LEVEL,
    width: float = EXPORT_WINDOW_WIDTH,
    frame: int | None = None,
) -> np.ndarray:
    """Image or DICOM bytes -> 2-D uint8 grayscale at the file's own size (DICOM through the
    window; ``frame``: which frame of a multi-frame DICOM; None refuses one)."""
    return decode_source(data, level, width, frame)[0]


def resize(gray: np.ndarray, size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """Resize a 2-D uint8 slice to ``size`` x ``size`` (bilinear, antialiased)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))


def to_model_channels(gray: np.ndarray) -> np.ndarray:
    """Replicate grayscale into 3 channels: every backbone expects RGB input."""
    return np.repeat(gray[..., np.newaxis], 3, axis=-1)


def gray_to_model_input(gray: np.ndarray, size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """A decoded 2-D slice -> uint8 (size, size, 3): the steps after decoding."""
    return to_model_channels(resize(gray, size))


def image_to_array(
    data: bytes,
    size: int = DEFAULT_IMG_SIZE,
    level: float = EXPORT_WINDOW_LEVEL,
    width: float = EXPORT_WINDOW_WIDTH,
) -> np.ndarray:
    """Bytes -> uint8 array of shape (size, size, 3): decode, window, resize."""
    return gray_to_model_input(decode_image(data, level, width), size)


def load_image(path: str | Path, size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """Read a file and run :func:`image_to_array`; errors name the file."""
    path = Path(path)
    try:
        return image_to_array(path.read_bytes(), size)
    except ImageDecodeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
