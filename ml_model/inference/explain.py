"""Heatmaps shown to the user: a Grad-CAM map placed back on the whole slice, normalised and
blended over it (numpy + Pillow only; the maps themselves come from ``gradcam.py``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def place_cam(cam: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """A CAM of a crop -> a (size, size) map of the whole input: the CAM resized into the
    crop's box (normalised ``[y0, x0, y1, x1]``), zero elsewhere."""
    y0, x0, y1, x1 = (float(v) * (size - 1) for v in box)
    height, width = max(1, round(y1 - y0)), max(1, round(x1 - x0))
    resized = np.asarray(
        Image.fromarray(np.asarray(cam, np.float32)).resize(
            (width, height), Image.Resampling.BILINEAR
        )
    )
    full = np.zeros((size, size), np.float32)
    top, left = round(y0), round(x0)
    ys, xs = max(0, -top), max(0, -left)
    ye, xe = min(height, size - top), min(width, size - left)
    if ye > ys and xe > xs:
        full[top + ys : top + ye, left + xs : left + xe] = resized[ys:ye, xs:xe]
    return full


def normalise_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale a raw CAM to [0, 1] and resize it to ``size`` (width, height)."""
    cam = np.asarray(cam, dtype=np.float32)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    resized = Image.fromarray(cam).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def overlay_png(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """Blend a jet-coloured CAM over a grayscale slice; returns PNG bytes at the slice's size."""
    from matplotlib import colormaps  # on the first heatmap, not at the server's start-up

    height, width = gray.shape
    heat = normalise_cam(cam, (width, height))
    coloured = colormaps["jet"](heat)[..., :3] * 255.0
    base = np.repeat(gray[..., np.newaxis].astype(np.float32), 3, axis=-1)
    # Weight the colour by the heat so cold regions keep the original slice visible.
    weight = alpha * heat[..., np.newaxis]
    blended = np.clip(base * (1 - weight) + coloured * weight, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()
