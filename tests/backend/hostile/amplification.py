"""Amplification cases (issue 16): small or ordinary-looking uploads that used to cost the
server far more memory or CPU than their size, built in memory (nothing binary committed).

Each :class:`Amplification` is one request: the path, the multipart field, the file and what
it used to cost. Used by ``test_admission.py`` (the real app, in process) and by the
benchmark ``tests/load/attack.py`` (the real server, RSS and time measured).
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

from tests.backend.hostile.corpus import _chunk, encode

MIB = 1024 * 1024
# Just under the 40 MP pixel limit of ml_model.imaging.errors.
NEAR_LIMIT_SIDE = 6_324  # 6,324^2 = 39,992,976 pixels
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Amplification:
    id: str
    path: str
    field: str
    filename: str
    build: Callable[[], bytes]
    measured: str  # what it cost before the budget (issue 16)
    params: tuple[tuple[str, str], ...] = ()


# --- zips ----------------------------------------------------------------------------------


@cache
def zip_of_one_mib_members(count: int = 1_000) -> bytes:
    """``count`` members of exactly 1 MiB each (a PNG signature, then zeros): ~1.1 MiB."""
    member = PNG_SIGNATURE + b"\x00" * (MIB - len(PNG_SIGNATURE))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for index in range(count):
            archive.writestr(f"slice ({index + 1}).png", member)
    return buffer.getvalue()


@cache
def big_stored_study_zip(total_mib: int = 494, member_kib: int = 512) -> bytes:
    """A stored (uncompressed) zip of ``total_mib`` MiB: members of random bytes that start
    like PNG slices. Under the 512 MiB study body limit."""
    count = total_mib * 1024 // member_kib
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index in range(count):
            body = PNG_SIGNATURE + os.urandom(member_kib * 1024 - len(PNG_SIGNATURE))
            archive.writestr(f"slice ({index + 1}).png", body)
    return buffer.getvalue()


# --- rasters -------------------------------------------------------------------------------


@cache
def float_tiff_near_limit() -> bytes:
    """A 32-bit float TIFF just under 40 MP, deflated: ~250 KiB for 160 MB of pixels."""
    side = NEAR_LIMIT_SIDE
    pixels = np.zeros((side, side), np.float32)
    pixels[::97, ::89] = 1.0  # not constant: the stretch to uint8 runs in full
    return encode(Image.fromarray(pixels, "F"), "TIFF", compression="tiff_adobe_deflate")


@cache
def palette_png_near_limit() -> bytes:
    """A palette PNG just under 40 MP: a few KiB."""
    side = NEAR_LIMIT_SIDE
    image = Image.new("P", (side, side), 0)
    image.putpalette([v for i in range(256) for v in (i, i, i)])
    return encode(image, "PNG", optimize=False, compress_level=9)


@cache
def png_with_empty_chunks(chunks: int = 1_700_000) -> bytes:
    """A valid small PNG padded with ``chunks`` empty private ancillary chunks (~20 MiB)."""
    pixels = np.zeros((256, 256), np.uint8)
    pixels[64:192, 64:192] = 200
    valid = encode(Image.fromarray(pixels), "PNG")
    ihdr_end = len(PNG_SIGNATURE) + 8 + 13 + 4
    padding = _chunk(b"prVt", b"") * chunks
    return valid[:ihdr_end] + padding + valid[ihdr_end:]


@cache
def explain_png(side: int = 2_048) -> bytes:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (side, side), dtype=np.uint8)  # a heatmap PNG that is large
    return encode(Image.fromarray(pixels), "PNG")


# --- DICOM -----------------------------------------------------------------------------------


def _rle_segment(value: int, count: int) -> bytes:
    """A DICOM RLE (PackBits) segment of ``count`` bytes all equal to ``value``."""
    full, rest = divmod(count, 128)
    run = bytes([0x81, value])  # -127: repeat the next byte 128 times
    tail = bytes([(257 - rest) & 0xFF, value]) if rest > 1 else (bytes([0, value]) if rest else b"")
    segment = run * full + tail
    return segment + (b"\x00" if len(segment) % 2 else b"")


@cache
def rle_dicom_near_limit() -> bytes:
    """A 16-bit CT DICOM just under 40 MP, RLE-compressed: ~1.2 MiB."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    from tests.backend.hostile.corpus import dicom

    side = NEAR_LIMIT_SIDE
    pixels = side * side
    high, low = _rle_segment(0x04, pixels), _rle_segment(0x00, pixels)  # 1024 everywhere
    header = struct.pack("<16I", 2, 64, 64 + len(high), *([0] * 13))
    frame = header + high + low
    return dicom(
        TransferSyntaxUID=RLELossless,
        Rows=side,
        Columns=side,
        PixelData=encapsulate([frame]),
    )


CASES: list[Amplification] = [
    Amplification("zip-1000-members-of-1-mib", "/predict/study", "files", "study.zip",
                  zip_of_one_mib_members, "1.1 MiB upload -> +1 GiB RSS"),
    Amplification("zip-494-mib-stored", "/predict/study", "files", "study.zip",
                  big_stored_study_zip, "494 MiB upload -> +1.45 GiB RSS"),
    Amplification("float-tiff-40-mp", "/predict", "file", "slice.tif", float_tiff_near_limit,
                  "247 KiB -> +760 MiB RSS, 1.4 s CPU"),
    Amplification("palette-png-40-mp", "/predict", "file", "slice.png", palette_png_near_limit,
                  "5 KiB -> +278 MiB RSS"),
    Amplification("rle-dicom-40-mp", "/predict", "file", "slice.dcm", rle_dicom_near_limit,
                  "1.2 MiB -> +680 MiB RSS"),
    Amplification("png-1.7-m-empty-chunks", "/predict", "file", "slice.png",
                  png_with_empty_chunks, "20 MiB -> 5.2 s CPU"),
    Amplification("explain-2048-squared", "/predict", "file", "slice.png", explain_png,
                  "a 16.6 MB response", (("explain", "true"),)),
]  # fmt: skip


def case(case_id: str) -> Amplification:
    return next(item for item in CASES if item.id == case_id)
