"""Upload helpers: reading a part under its size limit, the heatmap and the DICOM preview
as base64 PNG."""

from __future__ import annotations

import base64
import io
from typing import BinaryIO

import numpy as np
from PIL import Image

from backend.app.services.admission import heatmap_hold
from ml_model.inference.explain import overlay_png

# Longest side of a DICOM preview image (px): enough to read a slice, small to send.
PREVIEW_MAX_SIDE = 512
# Longest side of a heatmap (px) unless Settings.heatmap_max_side says otherwise.
HEATMAP_MAX_SIDE = 1024


class UploadProblem(Exception):
    """An uploaded file that cannot be classified; carries the HTTP status and detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def read_upload(stream: BinaryIO, limit: int) -> bytes:
    """Read an uploaded file held in memory, refusing more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    stream.close()  # the upload buffer: freed now, so the file is not held twice
    if len(data) > limit:
        raise UploadProblem(
            413, f"the file is larger than the limit of {limit / (1024 * 1024):g} MiB per file"
        )
    return data


def heatmap_base64(gray: np.ndarray, cam: np.ndarray, max_side: int = HEATMAP_MAX_SIDE) -> str:
    """Grad-CAM overlay on the slice, as a base64 PNG the size of the slice, or scaled down
    (aspect ratio kept) so that its longest side is ``max_side``: a 2048 x 2048 overlay was a
    16 MB response and ~400 MB to draw."""
    longest = max(gray.shape)
    if longest > max_side:
        scale = max_side / longest
        height, width = (max(1, round(side * scale)) for side in gray.shape)
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.BILINEAR))
    with heatmap_hold(gray.size):
        return base64.b64encode(overlay_png(gray, cam)).decode("ascii")


def preview_png(gray: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> bytes:
    """A windowed slice as a greyscale PNG (an RGB image as a colour one), its longest side
    at most ``max_side`` (aspect ratio kept; never enlarged)."""
    image = Image.fromarray(np.asarray(gray, dtype=np.uint8))  # 2-D: mode L; H x W x 3: RGB
    longest = max(image.size)
    if longest > max_side:
        scale = max_side / longest
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def preview_base64(gray: np.ndarray, max_side: int = PREVIEW_MAX_SIDE) -> str:
    """:func:`preview_png` as base64 (the JSON answers' ``preview_png_base64``)."""
    return base64.b64encode(preview_png(gray, max_side)).decode("ascii")
