"""Heatmaps shown to the user: a Grad-CAM map placed back on the whole slice, normalised and
blended over it (numpy + Pillow only; the maps themselves come from ``gradcam.py``).

A map placed from a crop (the in-graph spine crop) is a masked array: masked where the model
saw nothing, zero underneath (so arithmetic on it is what it was). The overlay colours only the
region the model saw, fading out towards its edge, and outlines that region.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# The heat's colours: matplotlib's "jet" (its segments, x -> value per channel) as the
# 256-entry table matplotlib builds from them, so serving needs no matplotlib (and its
# config-folder writes). tests/ml_model/test_explain.py checks it against matplotlib's.
JET_SEGMENTS = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
JET_ENTRIES = 256
JET_TABLE = np.stack(
    [
        np.interp(np.linspace(0.0, 1.0, JET_ENTRIES), *zip(*JET_SEGMENTS[channel], strict=True))
        for channel in ("red", "green", "blue")
    ],
    axis=-1,
)
# The soft edge: the heat fades out over this share of the seen region's shorter side.
FEATHER_SHARE = 0.12
# The outline of the seen region: colour (RGB) and opacity over the slice.
OUTLINE_RGB = (255, 255, 255)
OUTLINE_OPACITY = 0.7


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
    unseen = np.ones((size, size), bool)
    top, left = round(y0), round(x0)
    ys, xs = max(0, -top), max(0, -left)
    ye, xe = min(height, size - top), min(width, size - left)
    if ye > ys and xe > xs:
        full[top + ys : top + ye, left + xs : left + xe] = resized[ys:ye, xs:xe]
        unseen[top + ys : top + ye, left + xs : left + xe] = False
    return np.ma.MaskedArray(full, mask=unseen)


def seen_region(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray | None:
    """Where the model saw the slice (1) and not (0), at ``size`` (width, height); None when
    the map covers the whole input (no crop)."""
    mask = np.ma.getmask(cam)
    if mask is np.ma.nomask or not mask.any():
        return None
    seen = Image.fromarray(np.where(mask, 0, 255).astype(np.uint8))
    resized = np.asarray(seen.resize(size, Image.Resampling.NEAREST)) > 127
    # A sliver of an image can lose the whole region to the resize: then nothing is drawn.
    return resized


def _inset(seen: np.ndarray) -> np.ndarray:
    """For each pixel of the seen region (a rectangle: the crop box), its distance in pixels
    to the region's nearest edge (1 on the edge row or column); 0 outside."""
    rows, cols = np.nonzero(seen.any(axis=1))[0], np.nonzero(seen.any(axis=0))[0]
    y = np.arange(seen.shape[0], dtype=np.float32)[:, np.newaxis]
    x = np.arange(seen.shape[1], dtype=np.float32)[np.newaxis, :]
    dy = np.minimum(y - rows[0], rows[-1] - y) + 1
    dx = np.minimum(x - cols[0], cols[-1] - x) + 1
    return np.where(seen, np.minimum(dy, dx), 0).astype(np.float32)


def _feather(inset: np.ndarray) -> np.ndarray:
    """1 deep inside the seen region, easing to 0 at its edge (smoothstep over
    FEATHER_SHARE of the region's shorter side)."""
    short = 2 * float(inset.max())
    ramp = np.clip(inset / max(1.0, FEATHER_SHARE * short), 0.0, 1.0)
    return ramp * ramp * (3 - 2 * ramp)


def _outline(inset: np.ndarray) -> np.ndarray:
    """The seen region's border, about 1/256 of the image's longer side thick."""
    width = max(1, round(max(inset.shape) / 256))
    return (inset > 0) & (inset <= width)


def normalise_cam(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale a raw CAM to [0, 1] and resize it to ``size`` (width, height)."""
    cam = np.ma.filled(cam, 0.0).astype(np.float32)
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    resized = Image.fromarray(cam).resize(size, Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def jet(values: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] of values in [0, 1] under the "jet" colormap (as matplotlib looks it up:
    the table entry ``floor(value * 256)``, the last for 1.0)."""
    index = np.clip((np.asarray(values, np.float64) * JET_ENTRIES).astype(np.int64), 0,
                    JET_ENTRIES - 1)  # fmt: skip
    colours: np.ndarray = JET_TABLE[index]
    return colours


def overlay_png(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """Blend a jet-coloured CAM over a grayscale slice; returns PNG bytes at the slice's size.
    A map from a crop colours only the region the model saw, with a soft edge, outlined."""
    height, width = gray.shape
    heat = normalise_cam(cam, (width, height))
    coloured = jet(heat) * 255.0
    base = np.repeat(gray[..., np.newaxis].astype(np.float32), 3, axis=-1)
    # Weight the colour by the heat so cold regions keep the original slice visible.
    weight = alpha * heat[..., np.newaxis]
    seen = seen_region(cam, (width, height))
    inset = (
        None if seen is None else _inset(seen) if seen.any() else np.zeros(seen.shape, np.float32)
    )
    if inset is not None:
        weight = weight * _feather(inset)[..., np.newaxis]
    blended = base * (1 - weight) + coloured * weight
    if inset is not None:
        edge = _outline(inset)
        blended[edge] = (1 - OUTLINE_OPACITY) * blended[edge] + OUTLINE_OPACITY * np.asarray(
            OUTLINE_RGB, np.float32
        )
    blended = np.clip(blended, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(blended).save(buffer, format="PNG")
    return buffer.getvalue()
