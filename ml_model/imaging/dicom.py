"""DICOM bytes -> Hounsfield units -> a windowed uint8 slice (pydicom, imported lazily)."""

from __future__ import annotations

import io
import math

import numpy as np

from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from ml_model.imaging.errors import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from ml_model.imaging.errors import short_message as _short
from ml_model.imaging.window import hu_window

# Largest decoded DICOM pixel buffer (rows x columns x samples x bytes per sample):
# a compressed (RLE, JPEG 2000) file can otherwise expand far past the upload limit.
MAX_DICOM_PIXEL_BYTES = 4 * MAX_IMAGE_PIXELS

_DICOM_MAGIC_OFFSET = 128


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


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
