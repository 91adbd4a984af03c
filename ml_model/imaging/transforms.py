"""The one path from image bytes to a model input: decode -> window -> resize.

Training (through ``tf.data``), the CLI and the server all call :func:`image_to_array`;
nothing else turns pixels into tensors. Each step is a small function so it can be tested
and reused on its own. Untrusted bytes: every failure is one of the errors in
``ml_model.imaging.errors``. No function here has a default DICOM window: the caller passes
the bundle's (``Bundle.window``), or training its export window.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image

from ml_model.config import DEFAULT_IMG_SIZE
from ml_model.imaging.dicom import DicomImage
from ml_model.imaging.errors import ImageDecodeError
from ml_model.imaging.formats import decode
from ml_model.imaging.window_estimate import bring_to_window


def decode_source(
    data: bytes, level: float, width: float, frame: int | None = None
) -> tuple[np.ndarray, DicomImage | None]:
    """:func:`decode_image`, and for DICOM the decoded image itself (HU or display values,
    header facts), so a caller can show it in other windows without decoding it again."""
    if not data:
        raise ImageDecodeError("the file is empty")
    decoded = decode(data, frame)  # the format's own decoder (formats.FORMATS)
    if isinstance(decoded, np.ndarray):
        # An 8-bit export in another CT window: back to this one where the physics allows
        # (window_estimate); untouched when it is already in it or cannot be recovered.
        return bring_to_window(decoded, level, width)[0], None
    return decoded.window(level, width), decoded


def decode_image(data: bytes, level: float, width: float, frame: int | None = None) -> np.ndarray:
    """Image or DICOM bytes -> 2-D uint8 grayscale at the file's own size (DICOM through the
    window, a raster image rendered in a recoverable other CT window brought into it;
    ``frame``: which frame of a multi-frame DICOM; None refuses one)."""
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


def image_to_array(data: bytes, size: int, level: float, width: float) -> np.ndarray:
    """Bytes -> uint8 array of shape (size, size, 3): decode, window, resize."""
    return gray_to_model_input(decode_image(data, level, width), size)


def load_image(path: str | Path, size: int, level: float, width: float) -> np.ndarray:
    """Read a file and run :func:`image_to_array`; errors name the file."""
    path = Path(path)
    try:
        return image_to_array(path.read_bytes(), size, level, width)
    except ImageDecodeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc


def neighbour_offset(spacing_mm: float, context_mm: float) -> int:
    """How many slices apart the 2.5D neighbours of a slice are: ``context_mm`` at the
    series' slice spacing, at least 1 (so thin and thick series see the same anatomy)."""
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"the slice spacing must be a positive number of mm, not {spacing_mm}")
    if not (math.isfinite(context_mm) and context_mm >= 0):
        raise ValueError(f"the context must be a non-negative number of mm, not {context_mm}")
    return max(1, round(context_mm / spacing_mm))


def stack_neighbours(pixels: np.ndarray, index: int | np.ndarray, offset: int) -> np.ndarray:
    """2.5D model input: slices ``k - offset, k, k + offset`` of a study (``pixels`` (Z, S, S)
    uint8, head to foot) as the 3 channels, clamped at the study's ends. ``index`` an int ->
    (S, S, 3); an array of N indices -> (N, S, S, 3). Training and serving both call it."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or pixels.shape[0] == 0:
        raise ValueError(f"pixels must be (Z, S, S) with Z >= 1, not shape {pixels.shape}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, not {offset}")
    last = pixels.shape[0] - 1
    indices = np.asarray(index, dtype=np.int64)
    if indices.size and (indices.min() < 0 or indices.max() > last):
        raise IndexError(f"slice index out of range 0..{last}")
    channels = np.stack(
        [np.clip(indices - offset, 0, last), indices, np.clip(indices + offset, 0, last)],
        axis=-1,
    )
    stacked = pixels[channels]  # index shape + (3, S, S)
    return np.ascontiguousarray(np.moveaxis(stacked, indices.ndim, -1), dtype=np.uint8)
