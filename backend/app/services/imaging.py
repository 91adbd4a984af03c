"""Uploaded bytes -> grayscale slice + model input, through the one path in ml_model.transforms."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from backend.app.core.config import Settings
from ml_model.explain import overlay_png
from ml_model.transforms import (
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
    gray_to_model_input,
)


class UploadProblem(Exception):
    """An uploaded file that cannot be classified; carries the HTTP status and detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass(frozen=True)
class PreparedImage:
    gray: np.ndarray  # 2-D uint8 at the file's own size (for the heatmap overlay)
    array: np.ndarray  # uint8 (S, S, 3): the model input


def status_for(exc: ImageDecodeError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, UnsupportedImageError):
        return 415
    return 400


def read_upload(stream: BinaryIO, limit: int) -> bytes:
    """Read an uploaded file held in memory, refusing more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise UploadProblem(
            413, f"the file is larger than the limit of {limit / (1024 * 1024):g} MiB per file"
        )
    return data


def prepare(data: bytes, settings: Settings, img_size: int) -> PreparedImage:
    """Decode (DICOM windowed with the configured level/width), resize, replicate channels.

    Equal to ``ml_model.transforms.image_to_array(data, img_size, level, width)``,
    keeping the full-size grayscale slice for the Grad-CAM overlay.
    """
    try:
        gray = decode_image(data, settings.window_level, settings.window_width)
    except ImageDecodeError as exc:
        raise UploadProblem(status_for(exc), str(exc)) from exc
    return PreparedImage(gray=gray, array=gray_to_model_input(gray, img_size))


def heatmap_base64(gray: np.ndarray, cam: np.ndarray) -> str:
    """Grad-CAM overlay on the original slice, as base64 PNG the size of the slice."""
    return base64.b64encode(overlay_png(gray, cam)).decode("ascii")
