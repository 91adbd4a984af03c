"""The one table of input formats the product reads: what each is called, how its bytes are
recognised, its file extensions and MIME types, what decoding it costs and how it is decoded.

Everything that needs to know which formats exist reads :data:`FORMATS`:

* decoding (``transforms.decode_source`` -> :func:`decode`) and the decode memory budget
  (``backend/app/services/admission.py`` -> :func:`estimate_decode_cost`);
* the study upload's "is this a slice at all" check (``services/study_upload.py`` -> :func:`sniff`);
* the folders the CLI and the data set scan (:data:`EXTENSIONS`);
* the API's docs of the upload fields (:func:`describe`, :func:`image_format_names`);
* the web app's file picker: ``frontend/src/generated/formats.ts``, written from this table by
  ``scripts/gen_formats.py`` (``make lint`` fails when it is stale).

Adding a format is one row here and, if no existing decoder reads it, a decoder and an
estimator (ARCHITECTURE.md, "Worked example: adding an input format").

Bytes no row's signature matches still go to Pillow, which identifies a file by its content
(a TIFF variant or BigTIFF, say): it reads them when Pillow calls them one of the rows'
``pillow_names`` and refuses anything else ("not a recognised image or DICOM"). The study
upload is stricter: a file there must carry one of the signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ml_model.imaging.budget import MIB, DecodeCost, dicom_cost, raster_cost
from ml_model.imaging.dicom import DicomImage, is_dicom, read_dicom
from ml_model.imaging.raster import PNG_SIGNATURE, check_structure, decode_raster

# bytes, the frame of a multi-frame file (None: the file must hold one) -> a 2-D uint8 slice
# (display values: the file's own rendering) or a DicomImage (HU, windowed by the caller).
Decoder = Callable[[bytes, int | None], np.ndarray | DicomImage]
# bytes, how far a compressed dataset may be inflated to learn its size -> the peak memory
# of decoding one slice, from headers only; None when the headers cannot be read (the
# decoder then says why).
Estimator = Callable[[bytes, int], DecodeCost | None]


def starts_with(*signatures: bytes) -> Callable[[bytes], bool]:
    """A sniff function: the bytes start with one of ``signatures``."""

    def sniff(data: bytes) -> bool:
        return data.startswith(signatures)

    return sniff


@dataclass(frozen=True)
class InputFormat:
    """One accepted input format: a row of :data:`FORMATS`."""

    name: str  # as the API's docs and error messages say it
    sniff: Callable[[bytes], bool]  # the file signature: True when the bytes are this format
    extensions: tuple[str, ...]  # lower case, with the dot; the first is the usual one
    mime_types: tuple[str, ...]
    decoder: Decoder
    estimator: Estimator
    pillow_names: tuple[str, ...] = ()  # what Pillow calls it (raster formats read by Pillow)
    note: str = ""  # what the API's docs add after the name


def _decode_pillow(data: bytes, frame: int | None = None) -> np.ndarray:
    """A raster file through Pillow (``frame`` does not apply: an animation's or a
    multi-page file's first frame is the image)."""
    found = sniff(data)
    return decode_raster(data, PILLOW_NAMES, found.name if found else None)


def _estimate_pillow(data: bytes, inflate_limit: int) -> DecodeCost | None:
    check_structure(data)  # bounds the header walk itself (413 on a structure bomb)
    return raster_cost(data, PILLOW_NAMES)


def _decode_dicom(data: bytes, frame: int | None = None) -> DicomImage:
    return read_dicom(data, frame=frame)


def _pillow_format(
    name: str,
    signatures: tuple[bytes, ...],
    extensions: tuple[str, ...],
    mime_types: tuple[str, ...],
    pillow_names: tuple[str, ...] = (),
    note: str = "",
) -> InputFormat:
    """A raster format Pillow reads (its Pillow name: ``name`` unless told)."""
    return InputFormat(
        name, starts_with(*signatures), extensions, mime_types, _decode_pillow,
        _estimate_pillow, pillow_names or (name,), note,
    )  # fmt: skip


# DICOM first: its signature sits after a 128-byte preamble that may start with anything.
# The raster rows' signatures are those the study upload has always accepted.
DICOM = InputFormat(
    "DICOM",
    is_dicom,
    (".dcm", ".dicom", ".dic"),
    ("application/dicom",),
    _decode_dicom,
    dicom_cost,
    note=(
        "Hounsfield units through the model card's window; uncompressed, deflated, "
        "big-endian, RLE, JPEG incl. lossless Process 14, JPEG-LS, JPEG 2000"
    ),
)
FORMATS: tuple[InputFormat, ...] = (
    DICOM,
    _pillow_format(
        "PNG", (PNG_SIGNATURE,), (".png",), ("image/png",),
        note="8/16-bit gray, RGB, RGBA, palette; APNG: the first frame",
    ),
    _pillow_format(
        "JPEG", (b"\xff\xd8\xff",), (".jpg", ".jpeg"), ("image/jpeg",), ("JPEG", "MPO")
    ),
    _pillow_format("BMP", (b"BM",), (".bmp",), ("image/bmp",)),
    _pillow_format(
        "TIFF", (b"II*\x00", b"MM\x00*"), (".tif", ".tiff"), ("image/tiff",),
        note="8/16-bit gray, RGB, RGBA, palette; multi-page: the first page",
    ),
    _pillow_format(
        "GIF", (b"GIF87a", b"GIF89a"), (".gif",), ("image/gif",),
        note="animated: the first frame",
    ),
)  # fmt: skip

# Pillow's names of the raster formats read; anything else Pillow might open (EPS, ICO...)
# is refused.
PILLOW_NAMES = frozenset(name for fmt in FORMATS for name in fmt.pillow_names)
# Every extension of every format (folders scanned by the CLI and the data set).
EXTENSIONS = tuple(extension for fmt in FORMATS for extension in fmt.extensions)


def sniff(data: bytes) -> InputFormat | None:
    """The format whose signature ``data`` carries, or None."""
    return next((fmt for fmt in FORMATS if fmt.sniff(data)), None)


def decode(data: bytes, frame: int | None = None) -> np.ndarray | DicomImage:
    """Bytes -> a 2-D uint8 slice or a DicomImage, by the format's own decoder (bytes
    without a known signature: Pillow's, which identifies them by content or refuses them)."""
    found = sniff(data)
    return (found.decoder if found else _decode_pillow)(data, frame)


def estimate_decode_cost(data: bytes, inflate_limit: int = 1024 * MIB) -> DecodeCost | None:
    """The peak memory of decoding ``data`` (one slice, or one frame), from headers only.

    ``None`` when the headers cannot be read or the decoder's own cheap checks (pixel limit,
    DICOM decoded-size limit) will refuse the file first: decoding then says why. Raises
    ``ImageTooLargeError`` for a raster file with more structure than a slice needs.
    ``inflate_limit``: a deflated DICOM is inflated (in bounded chunks, nothing kept) only
    this far to learn its size; past it the estimate says "more than the limit".
    """
    if not data:
        return None
    found = sniff(data)
    return (found.estimator if found else _estimate_pillow)(data, inflate_limit)


def image_format_names() -> str:
    """The image (not DICOM) formats for docs, e.g. "PNG/JPEG/BMP/TIFF/GIF"."""
    return "/".join(fmt.name for fmt in FORMATS if fmt is not DICOM)


def describe() -> str:
    """The accepted formats in words, for the API's docs of an upload field."""
    images = (fmt for fmt in FORMATS if fmt is not DICOM)
    parts = [f"{fmt.name} ({fmt.note})" if fmt.note else fmt.name for fmt in images]
    parts.append(f"{DICOM.name} ({', '.join(DICOM.extensions)}; {DICOM.note})")
    return ", ".join(parts[:-1]) + " or " + parts[-1] + "."
