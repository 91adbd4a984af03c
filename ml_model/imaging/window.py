"""Intensity transforms: Hounsfield units through a window, high bit depth to uint8."""

from __future__ import annotations

import numpy as np

from ml_model.imaging.errors import ImageDecodeError


def hu_window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Map Hounsfield units to uint8 through a linear window (level +/- width/2)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Min-max stretch of a high-bit-depth grayscale array to uint8.

    NaN or infinite values (float TIFF) have no place on the stretch: refused.
    """
    pixels = np.asarray(pixels, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise ImageDecodeError("the image has NaN or infinite pixel values")
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.rint((pixels - low) / (high - low) * 255.0).astype(np.uint8)
