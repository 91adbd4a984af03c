"""What decoding untrusted bytes can fail with: three errors, never anything else (the API
maps them to 400, 415 and 413), and the pixel limit they enforce (the structure limits are
``raster.py``'s, the memory estimates ``budget.py``'s)."""

from __future__ import annotations

# Decompression-bomb guard: 40 MP is far above any CT slice.
MAX_IMAGE_PIXELS = 40_000_000


class ImageDecodeError(ValueError):
    """The bytes are empty, truncated or not decodable as an image (HTTP 400)."""


class UnsupportedImageError(ImageDecodeError):
    """The bytes are not an image or DICOM we accept (HTTP 415)."""


class ImageTooLargeError(ImageDecodeError):
    """The image is over a decoding limit (HTTP 413): more pixels than
    :data:`MAX_IMAGE_PIXELS`, more structure (PNG chunks, JPEG markers, GIF blocks, TIFF
    values) than a slice has, or more memory to decode than a request may use."""


def short_message(exc: BaseException, limit: int = 240) -> str:
    """A library's error message made fit for an API response: one line, bounded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
