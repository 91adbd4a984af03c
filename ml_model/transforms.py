"""The one path from image bytes to a model input: decode -> window -> resize.

Training (through ``tf.data``), the CLI and the server all call
:func:`image_to_array`; nothing else turns pixels into tensors. Each step is a
small function so it can be tested and reused on its own.

Untrusted bytes: every failure is one of the three errors below, never anything
else (the API maps them to 400, 415 and 413). Animated GIF/APNG and multi-page
TIFF are read as their first frame; multi-frame DICOM is refused.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_model.config import DEFAULT_IMG_SIZE, EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH

# Decompression-bomb guard: set explicitly, and enforced as an error (Pillow only
# warns between 1x and 2x of its limit). 40 MP is far above any CT slice.
MAX_IMAGE_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# Raster formats we accept; anything else Pillow might open (EPS, ICO...) is refused.
RASTER_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "GIF", "MPO"})

# Signatures of the accepted formats: a file that starts like one but cannot be opened
# gets a message naming the format instead of "not a recognised image".
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_SIGNATURES = (
    (_PNG_SIGNATURE, "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"BM", "BMP"),
)

# Largest decoded DICOM pixel buffer (rows x columns x samples x bytes per sample):
# a compressed (RLE, JPEG 2000) file can otherwise expand far past the upload limit.
MAX_DICOM_PIXEL_BYTES = 4 * MAX_IMAGE_PIXELS

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
    hu: np.ndarray, level: float = EXPORT_WINDOW_LEVEL, width: float = EXPORT_WINDOW_WIDTH
) -> np.ndarray:
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


# DICOM modalities whose pixels are not CT: refused at the door with a reason, before any
# model sees them (a de-identified file without Modality is not refused for that alone).
NON_CT_MODALITIES = frozenset(
    {"MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "IO", "OP", "SM", "ES", "XC", "OCT"}
)


def decode_dicom(
    data: bytes,
    level: float = EXPORT_WINDOW_LEVEL,
    width: float = EXPORT_WINDOW_WIDTH,
    require_ct: bool = True,
) -> np.ndarray:
    """DICOM bytes -> Hounsfield units (RescaleSlope/Intercept) -> windowed uint8 slice.

    Multi-frame files are refused: a series is sent as one file per slice. A slope
    that is not a positive finite number, or a non-finite intercept, is refused
    rather than guessed. Pixel data that cannot be decoded is a 415 when no installed
    codec handles its transfer syntax (e.g. JPEG-LS), else a 400 (damaged data).
    """
    import pydicom  # imported lazily: only DICOM uploads pay for it

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        # pydicom parses elements lazily, on first access: a malformed element raises
        # here (ValueError, NotImplementedError, BytesLengthException...), not in dcmread.
        has_pixels = "PixelData" in dataset
        modality = str(dataset.get("Modality", "") or "").strip().upper()
        frames = int(getattr(dataset, "NumberOfFrames", 1) or 1)
        rows, cols = int(getattr(dataset, "Rows", 0)), int(getattr(dataset, "Columns", 0))
        samples = int(getattr(dataset, "SamplesPerPixel", 1) or 1)
        bits = int(getattr(dataset, "BitsAllocated", 16) or 16)
        slope = _dicom_number(dataset, "RescaleSlope", 1.0)
        intercept = _dicom_number(dataset, "RescaleIntercept", 0.0)
        transfer_syntax = str(dataset.file_meta.get("TransferSyntaxUID", "unknown"))
    except MemoryError:
        raise
    except Exception as exc:  # InvalidDicomError, EOFError and the lazy-parsing errors above
        raise ImageDecodeError(f"the DICOM file could not be read: {_short(exc)}") from exc
    if require_ct and modality in NON_CT_MODALITIES:
        raise UnsupportedImageError(
            f"the DICOM file is a {modality} image, not CT; this product reads CT slices only"
        )
    if not has_pixels:
        raise ImageDecodeError("the DICOM file has no pixel data")
    if frames > 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames) is not supported; send one file per slice"
        )
    if rows * cols > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"the DICOM image is {cols}x{rows} pixels, over the limit of {MAX_IMAGE_PIXELS:,}"
        )
    if rows * cols * max(samples, 1) * math.ceil(max(bits, 1) / 8) > MAX_DICOM_PIXEL_BYTES:
        raise ImageTooLargeError(
            f"the DICOM pixel data ({cols}x{rows}, {samples} samples of {bits} bits) "
            f"is over the limit of {MAX_DICOM_PIXEL_BYTES:,} bytes decoded"
        )
    if not (math.isfinite(slope) and slope > 0):
        raise ImageDecodeError(f"the DICOM RescaleSlope must be a positive number, not {slope}")
    if not math.isfinite(intercept):
        raise ImageDecodeError(f"the DICOM RescaleIntercept must be a number, not {intercept}")
    try:
        pixels = dataset.pixel_array
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types for codec problems
        if not _has_pixel_decoder(transfer_syntax):
            raise UnsupportedImageError(
                f"the DICOM transfer syntax {_uid_name(transfer_syntax)} is not supported; "
                "send uncompressed, RLE, JPEG baseline or JPEG 2000 DICOM"
            ) from exc
        raise ImageDecodeError(
            f"the DICOM pixel data could not be decoded "
            f"(transfer syntax {_uid_name(transfer_syntax)}): {_short(exc)}"
        ) from exc
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        pixels = pixels[..., :3].mean(axis=-1, dtype=np.float32)
    if pixels.ndim != 2:
        raise UnsupportedImageError(f"unexpected DICOM pixel array shape {pixels.shape}")
    hu = pixels.astype(np.float32) * slope + intercept
    return hu_window(hu, level, width)


def _dicom_number(dataset: object, keyword: str, default: float) -> float:
    """A numeric (DS) element as float; ``default`` when absent or empty."""
    value = getattr(dataset, keyword, None)
    if value is None or value == "":
        return default
    return float(value)


def _has_pixel_decoder(transfer_syntax: str) -> bool:
    """Whether an installed pydicom plugin decodes pixel data of this transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except Exception:  # unknown or non-image transfer syntax UID
        return False


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _short(exc: BaseException, limit: int = 240) -> str:
    """A library's error message made fit for an API response: one line, bounded."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _sniff(data: bytes) -> str | None:
    """The accepted format whose signature ``data`` starts with, if any."""
    for signature, name in _SIGNATURES:
        if data.startswith(signature):
            return name
    return None


def _verify_png(data: bytes) -> None:
    """Check every chunk's CRC, IDAT included (Pillow's ``load`` skips those), and the chain.

    A direct walk with zlib.crc32: about 20x cheaper than a second ``Image.open().verify()``,
    which matters in the training input pipeline.
    """
    position = len(_PNG_SIGNATURE)
    view = memoryview(data)  # slices of a memoryview do not copy the chunk data
    while True:
        header = data[position : position + 8]
        if len(header) < 8:
            raise ImageDecodeError(
                "the image could not be decoded: the PNG file is damaged (truncated chunk)"
            )
        length, kind = struct.unpack(">I4s", header)
        end = position + 8 + length
        if end + 4 > len(data):
            raise ImageDecodeError(
                "the image could not be decoded: the PNG file is damaged (truncated chunk)"
            )
        (expected,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(view[position + 4 : end]) != expected:
            name = kind.decode("latin-1", "replace")
            raise ImageDecodeError(
                f"the image could not be decoded: the PNG file is damaged (bad CRC in {name})"
            )
        if kind == b"IEND":
            return
        position = end + 4


def decode_raster(data: bytes) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF bytes -> 2-D uint8 grayscale (EXIF orientation applied).

    Animated GIF/APNG and multi-page TIFF: the first frame is the image, the rest
    is ignored. PNG chunk checksums are verified (Pillow skips the pixel chunks').
    """
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
            if image.format == "PNG":
                _verify_png(data)
            image.seek(0)  # animated GIF/APNG, multi-page TIFF: the first frame is the image
            image.load()
            image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(
            f"the image is over the limit of {MAX_IMAGE_PIXELS:,} pixels ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        sniffed = _sniff(data)
        if sniffed is None:
            raise UnsupportedImageError("the file is not a recognised image or DICOM") from exc
        raise UnsupportedImageError(
            f"the file starts like a {sniffed} image but could not be opened: it is "
            "damaged, truncated or a variant this server cannot read"
        ) from exc
    except ImageDecodeError:
        raise
    # Pillow's parsers raise these on malformed input (Image.open itself treats the
    # last four as "not this format"); none of them means a server fault.
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, KeyError,
            TypeError, ZeroDivisionError) as exc:  # fmt: skip
        raise ImageDecodeError(f"the image could not be decoded: {_short(exc)}") from exc
    try:
        return to_grayscale(image)
    except ValueError as exc:  # a mode Pillow cannot convert to luminance (TIFF LAB...)
        if isinstance(exc, ImageDecodeError):
            raise
        raise UnsupportedImageError(f"image mode {image.mode} is not supported") from exc


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
    data: bytes, level: float = EXPORT_WINDOW_LEVEL, width: float = EXPORT_WINDOW_WIDTH
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
