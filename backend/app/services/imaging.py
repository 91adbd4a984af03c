"""Upload helpers: reading a part under its size limit, the heatmap as base64 PNG."""

from __future__ import annotations

import base64
from typing import BinaryIO

import numpy as np

from ml_model.inference.explain import overlay_png


class UploadProblem(Exception):
    """An uploaded file that cannot be classified; carries the HTTP status and detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def read_upload(stream: BinaryIO, limit: int) -> bytes:
    """Read an uploaded file held in memory, refusing more than ``limit`` bytes."""
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise UploadProblem(
            413, f"the file is larger than the limit of {limit / (1024 * 1024):g} MiB per file"
        )
    return data


def heatmap_base64(gray: np.ndarray, cam: np.ndarray) -> str:
    """Grad-CAM overlay on the original slice, as base64 PNG the size of the slice."""
    return base64.b64encode(overlay_png(gray, cam)).decode("ascii")
