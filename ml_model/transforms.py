"""The one path from image bytes to a model input: decode -> window -> resize.

Training (through ``tf.data``), the CLI and the server all call
:func:`image_to_array`; nothing else turns pixels into tensors. Each step is a
small function so it can be tested and reused on its own.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_model.config import BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH, DEFAULT_IMG_SIZE

# Decompression-bomb guard: set explicitly, and enforced as an error (Pillow only
# warns between 1x and 2x of its limit). 40 MP is far above any CT slice.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Raster formats we accept; anything else Pillow might open (EPS, ICO...) is refused.
RASTER_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "GIF", "MPO"})

_DICOM_MAGIC_OFFSET = 128


class ImageDecodeError(ValueError):
    """The bytes are empty, truncated or not decodable as an image (HTTP 400)."""


class UnsupportedImageError(ImageDecodeError):
    """The bytes are not an image or DICOM we accept (HTTP 415)."""


class ImageTooLargeError(ImageDecodeError):
    """The image has more pixels than :data:`MAX_IMAGE_PIXELS` (HTTP 413)."""


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


def hu_window(
    hu: np.ndarray, level: float = BONE_WINDOW_LEVEL, width: float = BONE_WINDOW_WIDTH
) -> np.ndarray:
    """Map Hounsfield units to uint8 through a linear window (level +/- width/2)."""
    if width <= 0:
        raise ValueError(f"window width must be positive, got {width}")
    low = level - width / 2.0
    scaled = (np.asarray(hu, dtype=np.float32) - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Min-max stretch of a high-bit-depth grayscale array to uint8."""
    pixels = np.asarray(pixels, dtype=np.float32)
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    return np.rint((pixels - low) / (high - low) * 255.0).astype(np.uint8)


def decode_dicom(
    data: bytes, level: float = BONE_WINDOW_LEVEL, width: float = BONE_WINDOW_WIDTH
) -> np.ndarray:
    """DICOM bytes -> Hounsfield units (RescaleSlope/Intercept) -> windowed uint8 slice.

    Multi-frame files are refused: a series is sent as one file per slice.
    """
    import pydicom  # imported lazily: only DICOM uploads pay for it

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        # pydicom parses elements lazily, on first access: a malformed element raises
        # here (ValueError, NotImplementedError, BytesLengthException...), not in dcmread.
        has_pixels = "PixelData" in dataset
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        rows, cols = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
        slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    except MemoryError:
        raise
    except Exception as exc:  # InvalidDicomError, EOFError and the lazy-parsing errors above
        raise ImageDecodeError(f"the DICOM file could not be read: {exc}") from exc
    if not has_pixels:
        raise ImageDecodeError("the DICOM file has no pixel data")
    if frames > 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames) is not supported; send one file per slice"
        )
    if rows * cols > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(f"the DICOM image is {cols}x{rows} pixels, over the limit")
    try:
        pixels = dataset.pixel_array
    except Exception as exc:  # pydicom raises many types for codec problems
        raise UnsupportedImageError(
            f"the DICOM pixel data could not be decoded "
            f"(transfer syntax {dataset.file_meta.get('TransferSyntaxUID', 'unknown')}): {exc}"
        ) from exc
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1)
    if pixels.ndim != 2:
        raise UnsupportedImageError(f"unexpected DICOM pixel array shape {pixels.shape}")
    hu = pixels.astype(np.float32) * slope + intercept
    return hu_window(hu, level, width)


def decode_raster(data: bytes) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF bytes -> 2-D uint8 grayscale (EXIF orientation applied)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in RASTER_FORMATS:
                raise UnsupportedImageError(f"image format {image.format} is not accepted")
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageTooLargeError(
                    f"the image is {image.width}x{image.height} pixels, "
                    f"over the limit of {MAX_IMAGE_PIXELS:,}"
                )
            image.seek(0)  # animated GIF/APNG: the first frame is the image
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise UnsupportedImageError("the file is not a recognised image or DICOM") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, ImageDecodeError):
            raise
        raise ImageDecodeError(f"the image could not be decoded: {exc}") from exc
    return to_grayscale(image)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> 2-D uint8 luminance; 16/32-bit data is min-max stretched."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return rescale_to_uint8(np.asarray(image))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, the CT background.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("L"), dtype=np.uint8)


def decode_image(
    data: bytes, level: float = BONE_WINDOW_LEVEL, width: float = BONE_WINDOW_WIDTH
) -> np.ndarray:
    """Image or DICOM bytes -> 2-D uint8 grayscale at the file's own size."""
    if not data:
        raise ImageDecodeError("the file is empty")
    if is_dicom(data):
        return decode_dicom(data, level, width)
    return decode_raster(data)


def resize(gray: np.ndarray, size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """Resize a 2-D uint8 slice to ``size`` x ``size`` (bilinear, antialiased)."""
    if gray.shape == (size, size):
        return gray
    return np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))


def to_model_channels(gray: np.ndarray) -> np.ndarray:
    """Replicate grayscale into 3 channels: every backbone expects RGB input."""
    return np.repeat(gray[..., np.newaxis], 3, axis=-1)


def image_to_array(
    data: bytes,
    size: int = DEFAULT_IMG_SIZE,
    level: float = BONE_WINDOW_LEVEL,
    width: float = BONE_WINDOW_WIDTH,
) -> np.ndarray:
    """Bytes -> uint8 array of shape (size, size, 3): decode, window, resize."""
    return to_model_channels(resize(decode_image(data, level, width), size))


def load_image(path: str | Path, size: int = DEFAULT_IMG_SIZE) -> np.ndarray:
    """Read a file and run :func:`image_to_array`; errors name the file."""
    path = Path(path)
    try:
        return image_to_array(path.read_bytes(), size)
    except ImageDecodeError as exc:
        raise type(exc)(f"{path}: {exc}") from exc
