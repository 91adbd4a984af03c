"""A corpus of hostile, broken and odd uploads, all generated in memory (no binary fixtures).

Each :class:`FileCase` is one file with the status ``POST /predict`` must answer and a
phrase its ``detail`` must contain. 200 cases are odd but valid images (1x1, 16-bit,
CMYK, animated...) or valid images under hostile file names: the server classifies
them; the content decides, never the file name or extension.

Used by ``test_hostile_inputs.py`` and by the load test (``tests.load.soak``).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from PIL import Image

from tests.conftest import make_dicom


@dataclass(frozen=True)
class FileCase:
    id: str
    build: Callable[[], bytes]
    status: int
    detail: str | None = None  # a phrase of the 4xx detail; None for 200
    filename: str = "upload.png"


# --- builders --------------------------------------------------------------------------


def _slice(width: int = 96, height: int = 80, seed: int = 0) -> np.ndarray:
    """A CT-like uint8 slice: dark background, bright ring, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot((xx - width / 2) / (width / 3), (yy - height / 2) / (height / 3))
    body = np.where(radius < 1.0, 90.0, 10.0) + np.where(np.abs(radius - 0.6) < 0.1, 140.0, 0.0)
    return np.clip(body + rng.normal(0, 8, body.shape), 0, 255).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gray(width: int = 96, height: int = 80, seed: int = 0) -> Image.Image:
    return Image.fromarray(_slice(width, height, seed))


@cache
def png() -> bytes:
    return encode(gray(), "PNG")


@cache
def jpeg() -> bytes:
    return encode(gray(), "JPEG", quality=90)


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _png_from_chunks(width: int, height: int, *chunks: bytes, depth: int = 8) -> bytes:
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(chunks) + _chunk(b"IEND", b"")


def png_bad_ihdr_crc() -> bytes:
    data = bytearray(png())
    data[29] ^= 0xFF  # the IHDR CRC: bytes 29..32
    return bytes(data)


def png_bad_idat_crc() -> bytes:
    data = bytearray(png())
    start = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[start - 4 : start])
    data[start + 4 + length] ^= 0xFF  # first byte of the IDAT CRC; pixel data intact
    return bytes(data)


def png_corrupt_deflate() -> bytes:
    """Valid chunk structure and CRCs, but IDAT is not a zlib stream."""
    return _png_from_chunks(16, 16, _chunk(b"IDAT", b"\x78\x9c" + b"\xff" * 40))


def png_no_idat() -> bytes:
    return _png_from_chunks(16, 16)


def png_text_bomb() -> bytes:
    """A 4x4 PNG with a zTXt chunk inflating to 50 MB (Pillow caps text chunks)."""
    ztxt = _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * 50_000_000, 9))
    return _png_from_chunks(4, 4, ztxt, _chunk(b"IDAT", zlib.compress(b"\x00" * 5 * 4)))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming ``width`` x ``height`` with one row of data: a bomb's header."""
    return _png_from_chunks(width, height, _chunk(b"IDAT", zlib.compress(b"\x00" * (width + 1))))


def png_deflate_bomb() -> bytes:
    """A real decompression bomb: 7000 x 7000 black pixels (49 MP) in ~50 kB."""
    raw = zlib.compress(b"\x00" * (7_000 + 1) * 7_000, 9)
    return _png_from_chunks(7_000, 7_000, _chunk(b"IDAT", raw))


def jpeg_huge_dimensions() -> bytes:
    """SOF0 claiming 65535 x 65535 and nothing else."""
    sof = b"\xff\xc0\x00\x0b\x08\xff\xff\xff\xff\x01\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xd9"


def gif_huge_screen() -> bytes:
    screen = struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x02\x02\x44\x01\x00"
    return b"GIF89a" + screen + frame + b";"


def gif_zero_frames() -> bytes:
    return b"GIF89a" + struct.pack("<HHBBB", 10, 10, 0, 0, 0) + b";"


def gif_html_polyglot() -> bytes:
    """GIF magic followed by HTML: content sniffers might render it as a page."""
    return b"GIF89a/*<html><script>alert(document.domain)</script></html>*/"


def bmp_header(width: int, height: int) -> bytes:
    """A BMP header declaring ``width`` x ``height`` 24-bit pixels, and no pixels."""
    file_header = b"BM" + struct.pack("<IHHI", min(54 + 3 * width * height, 2**32 - 1), 0, 0, 54)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return file_header + info


def tiff_with_tag(tag: int, value: int, data: bytes | None = None) -> bytes:
    """An uncompressed little-endian TIFF with one SHORT/LONG tag overwritten."""
    data = bytearray(data or encode(gray(), "TIFF"))
    (offset,) = struct.unpack("<I", data[4:8])
    (count,) = struct.unpack("<H", data[offset : offset + 2])
    for k in range(count):
        entry = offset + 2 + 12 * k
        found, kind = struct.unpack("<HH", data[entry : entry + 4])
        if found == tag:
            packed = struct.pack("<H", value) if kind == 3 else struct.pack("<I", value)
            data[entry + 8 : entry + 8 + len(packed)] = packed
            return bytes(data)
    raise KeyError(tag)


def tiff_float(value: float) -> bytes:
    pixels = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    pixels[10, 10] = value
    return encode(Image.fromarray(pixels), "TIFF")


def multipage_tiff() -> bytes:
    return encode(gray(seed=1), "TIFF", save_all=True, append_images=[gray(seed=2)])


def animated_gif() -> bytes:
    frames = [gray(seed=s).convert("P") for s in (1, 2, 3)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def apng() -> bytes:
    frames = [gray(seed=s) for s in (1, 2, 3)]
    return encode(frames[0], "PNG", save_all=True, append_images=frames[1:], duration=100)


def exif_rotated_jpeg() -> bytes:
    image = gray(96, 80).convert("RGB")
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    return encode(image, "JPEG", exif=exif)


def palette_with_transparency() -> bytes:
    return encode(gray().convert("P"), "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    pixels = (_slice().astype(np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(pixels), "PNG")


def mpo() -> bytes:
    image = gray().convert("RGB")
    return encode(image, "MPO", save_all=True, append_images=[image])


# --- DICOM -----------------------------------------------------------------------------


def dicom(**overrides: Any) -> bytes:
    """A 16 x 16 CT DICOM, then ``overrides`` applied as attributes (None deletes)."""
    import pydicom

    base = make_dicom(np.full((16, 16), 1200, dtype=np.uint16), 1.0, -1024.0)
    if not overrides:
        return base
    dataset = pydicom.dcmread(io.BytesIO(base))
    transfer_syntax = overrides.pop("TransferSyntaxUID", None)
    if transfer_syntax is not None:
        dataset.file_meta.TransferSyntaxUID = transfer_syntax
    for keyword, value in overrides.items():
        if value is None:
            delattr(dataset, keyword)
        else:
            setattr(dataset, keyword, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=False)
    return buffer.getvalue()


def dicom_encapsulated(transfer_syntax: str, **overrides: Any) -> bytes:
    """A DICOM with a compressed transfer syntax whose one fragment is garbage."""
    from pydicom.encaps import encapsulate

    return dicom(
        TransferSyntaxUID=transfer_syntax,
        PixelData=encapsulate([b"\x00not a codestream\xff" * 8]),
        **overrides,
    )


def dicom_rescale(slope: str = "1", intercept: str = "-1024") -> bytes:
    """A DICOM whose RescaleSlope/Intercept text is replaced (including invalid DS text)."""
    data = dicom()
    for keyword, text in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        tag = b"\x28\x00\x53\x10" if keyword == "RescaleSlope" else b"\x28\x00\x52\x10"
        start = data.index(tag + b"DS")
        (length,) = struct.unpack("<H", data[start + 6 : start + 8])
        value = text.encode() + (b" " if len(text) % 2 else b"")
        data = (
            data[: start + 6] + struct.pack("<H", len(value)) + value + data[start + 8 + length :]
        )
    return data


def dicom_multiframe() -> bytes:
    pixels = np.full((3, 16, 16), 1200, dtype="<u2")
    return dicom(NumberOfFrames=3, PixelData=pixels.tobytes())


def dicom_decoded_size_over_limit() -> bytes:
    """4096 x 4096 RGB of 32-bit samples (201 MB decoded) as a tiny RLE file."""
    from pydicom.uid import RLELossless

    return dicom_encapsulated(
        RLELossless,
        Rows=4096,
        Columns=4096,
        SamplesPerPixel=3,
        PhotometricInterpretation="RGB",
        PlanarConfiguration=0,
        BitsAllocated=32,
        BitsStored=32,
        HighBit=31,
    )


def _uid(name: str) -> str:
    import pydicom.uid

    return str(getattr(pydicom.uid, name))


# --- the corpus ------------------------------------------------------------------------

MIB = 1024 * 1024

FILE_CASES: list[FileCase] = [
    # empty, tiny, truncated, damaged
    FileCase("empty", lambda: b"", 400, "the file is empty"),
    FileCase("one-byte", lambda: b"\x89", 415, "not a recognised image"),
    FileCase("truncated-png", lambda: png()[: len(png()) // 2], 400, "could not be decoded"),
    FileCase("truncated-jpeg", lambda: jpeg()[: len(jpeg()) // 2], 400, "could not be decoded",
             "slice.jpg"),
    FileCase("png-signature-only", lambda: png()[:8], 415, "starts like a PNG image"),
    FileCase("png-bad-ihdr-crc", png_bad_ihdr_crc, 415, "starts like a PNG image"),
    FileCase("png-bad-idat-crc", png_bad_idat_crc, 400, "PNG file is damaged"),
    FileCase("png-corrupt-deflate", png_corrupt_deflate, 400, "could not be decoded"),
    FileCase("png-without-idat", png_no_idat, 400, "could not be decoded"),
    FileCase("png-ztxt-text-bomb", png_text_bomb, 400, "could not be decoded"),
    FileCase("jpeg-only-zero-width-header", lambda: jpeg_huge_dimensions().replace(
        b"\xff\xff\xff\xff", b"\x00\x10\x00\x00"), 415, "starts like a JPEG image", "z.jpg"),
    FileCase("bmp-declared-larger-than-data", lambda: bmp_header(5000, 5000), 400,
             "could not be decoded", "big.bmp"),
    FileCase("gif-zero-frames", gif_zero_frames, 415, "starts like a GIF image", "a.gif"),
    FileCase("tiff-unknown-compression", lambda: tiff_with_tag(259, 50000), 400,
             "could not be decoded", "a.tif"),
    FileCase("tiff-jpeg2000-compression", lambda: tiff_with_tag(259, 34712), 415,
             "starts like a TIFF image", "a.tif"),
    FileCase("tiff-zero-width", lambda: tiff_with_tag(256, 0), 415, "starts like a TIFF image",
             "a.tif"),
    FileCase("tiff-lab-colour", lambda: encode(Image.new("LAB", (32, 32)), "TIFF"), 415,
             "image mode LAB is not supported", "lab.tif"),
    FileCase("tiff-float-nan", lambda: tiff_float(float("nan")), 400, "NaN or infinite",
             "nan.tif"),
    FileCase("tiff-float-infinity", lambda: tiff_float(float("inf")), 400, "NaN or infinite",
             "inf.tif"),
    # decompression bombs and huge declared sizes
    FileCase("png-100-megapixel-header", lambda: png_header_only(10_000, 10_000), 413,
             "over the limit of 40,000,000"),
    FileCase("png-42-megapixel-header", lambda: png_header_only(7_000, 6_000), 413,
             "over the limit of 40,000,000"),
    FileCase("png-49-megapixel-deflate-bomb", png_deflate_bomb, 413,
             "over the limit of 40,000,000"),
    FileCase("jpeg-65535x65535-header", jpeg_huge_dimensions, 413, "over the limit of 40,000,000",
             "huge.jpg"),
    FileCase("gif-65535x65535-screen", gif_huge_screen, 413, "over the limit of 40,000,000",
             "huge.gif"),
    FileCase("bmp-100000x100000-header", lambda: bmp_header(100_000, 100_000), 413,
             "over the limit of 40,000,000", "huge.bmp"),
    FileCase("tiff-100000x100000-tags", lambda: tiff_with_tag(256, 100_000, tiff_with_tag(
             257, 100_000)), 413, "over the limit of 40,000,000", "huge.tif"),
    # formats we do not accept, and things that are not images at all
    FileCase("webp", lambda: encode(gray().convert("RGB"), "WEBP"), 415,
             "image format WEBP is not accepted", "slice.webp"),
    FileCase("avif", lambda: encode(gray().convert("RGB"), "AVIF"), 415,
             "image format AVIF is not accepted", "slice.avif"),
    FileCase("jpeg-2000", lambda: encode(gray(), "JPEG2000"), 415,
             "image format JPEG2000 is not accepted", "slice.jp2"),
    FileCase("ico", lambda: encode(gray(32, 32), "ICO"), 415, "image format ICO is not accepted",
             "favicon.ico"),
    FileCase("postscript", lambda: encode(gray().convert("RGB"), "EPS"), 415,
             "image format EPS is not accepted", "slice.eps"),
    FileCase("netpbm", lambda: encode(gray(), "PPM"), 415, "image format PPM is not accepted",
             "slice.pgm"),
    FileCase("svg-with-script", lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/'
             b'svg" width="10" height="10"><script>alert(1)</script></svg>', 415,
             "not a recognised image", "slice.svg"),
    FileCase("html", lambda: b"<!doctype html><html><body><script>alert(1)</script></body></html>",
             415, "not a recognised image", "slice.html"),
    FileCase("gif-magic-html-polyglot", gif_html_polyglot, 415, "starts like a GIF image",
             "slice.gif"),
    FileCase("zip", lambda: b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + b"\x00" * 40, 415,
             "not a recognised image", "slices.zip"),
    FileCase("elf-executable", lambda: b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56, 415,
             "not a recognised image", "slice.png"),
    FileCase("pdf", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n", 415,
             "not a recognised image", "report.pdf"),
    FileCase("text-named-dcm", lambda: b"patient notes, not a DICOM\n" * 20, 415,
             "not a recognised image", "slice.dcm"),
    FileCase("one-mib-of-nul", lambda: b"\x00" * MIB, 415, "not a recognised image", "nul.png"),
    # DICOM
    FileCase("dicom-without-pixel-data", lambda: dicom(PixelData=None), 400, "no pixel data",
             "slice.dcm"),
    # JPEG-LS decodes (pyjpegls, via highdicom): garbage in it is damaged data, a 400.
    FileCase("dicom-jpeg-ls-garbage", lambda: dicom_encapsulated(_uid("JPEGLSLossless")), 400,
             "pixel data could not be decoded", "slice.dcm"),
    FileCase("dicom-jpeg-2000-garbage", lambda: dicom_encapsulated(_uid("JPEG2000Lossless")), 400,
             "pixel data could not be decoded", "slice.dcm"),
    FileCase("dicom-rle-garbage", lambda: dicom_encapsulated(_uid("RLELossless")), 400,
             "pixel data could not be decoded", "slice.dcm"),
    FileCase("dicom-unknown-transfer-syntax", lambda: dicom(TransferSyntaxUID="1.2.3.4.5"), 415,
             "transfer syntax 1.2.3.4.5 is not supported", "slice.dcm"),
    FileCase("dicom-multi-frame", dicom_multiframe, 415, "multi-frame DICOM (3 frames)",
             "slice.dcm"),
    FileCase("dicom-65535x65535", lambda: dicom(Rows=65535, Columns=65535), 413,
             "65535x65535 pixels, over the limit", "slice.dcm"),
    FileCase("dicom-decoded-size-over-limit", dicom_decoded_size_over_limit, 413,
             "bytes decoded", "slice.dcm"),
    FileCase("dicom-preamble-only", lambda: b"\x00" * 128 + b"DICM", 400, "no pixel data",
             "slice.dcm"),
    FileCase("dicom-truncated-pixel-data", lambda: dicom()[:-100], 400,
             "pixel data could not be decoded", "slice.dcm"),
    FileCase("dicom-truncated-header", lambda: dicom()[:180], 400, "DICOM", "slice.dcm"),
    FileCase("dicom-without-preamble", lambda: dicom()[132:], 415, "not a recognised image",
             "slice.dcm"),
    FileCase("dicom-zero-rows", lambda: dicom(Rows=0), 400, "pixel data could not be decoded",
             "slice.dcm"),
    FileCase("dicom-bits-allocated-3", lambda: dicom(BitsAllocated=3), 400,
             "pixel data could not be decoded", "slice.dcm"),
    FileCase("dicom-zero-rescale-slope", lambda: dicom_rescale(slope="0"), 400,
             "RescaleSlope must be a positive number", "slice.dcm"),
    FileCase("dicom-negative-rescale-slope", lambda: dicom_rescale(slope="-1"), 400,
             "RescaleSlope must be a positive number", "slice.dcm"),
    FileCase("dicom-nan-rescale-slope", lambda: dicom_rescale(slope="NaN"), 400,
             "RescaleSlope must be a positive number", "slice.dcm"),
    FileCase("dicom-infinite-rescale-intercept", lambda: dicom_rescale(intercept="1e999"), 400,
             "RescaleIntercept must be a number", "slice.dcm"),
    FileCase("dicom-text-rescale-intercept", lambda: dicom_rescale(intercept="-10x4"), 400,
             "DICOM file could not be read", "slice.dcm"),
    # odd but valid: classified (200); the content decides, not the name
    FileCase("png-named-jpg", png, 200, filename="slice.jpg"),
    FileCase("jpeg-named-dcm", jpeg, 200, filename="slice.dcm"),
    FileCase("one-by-one-pixel", lambda: encode(Image.new("L", (1, 1), 128), "PNG"), 200),
    FileCase("10000x10-pixels", lambda: encode(gray(10_000, 10), "PNG"), 200),
    FileCase("10x10000-pixels", lambda: encode(gray(10, 10_000), "PNG"), 200),
    FileCase("sixteen-bit-png", sixteen_bit_png, 200),
    FileCase("one-bit-png", lambda: encode(gray().convert("1"), "PNG"), 200),
    FileCase("cmyk-jpeg", lambda: encode(gray().convert("CMYK"), "JPEG"), 200, filename="c.jpg"),
    FileCase("palette-with-transparency", palette_with_transparency, 200),
    FileCase("animated-gif-first-frame", animated_gif, 200, filename="a.gif"),
    FileCase("apng-first-frame", apng, 200),
    FileCase("multi-page-tiff-first-page", multipage_tiff, 200, filename="a.tif"),
    FileCase("exif-rotated-jpeg", exif_rotated_jpeg, 200, filename="r.jpg"),
    FileCase("mpo-camera-jpeg", mpo, 200, filename="m.jpg"),
    FileCase("filename-path-traversal", png, 200, filename="../../../../etc/passwd"),
    FileCase("filename-windows-path", png, 200, filename="C:\\Windows\\System32\\slice.png"),
    FileCase("filename-unicode", png, 200, filename="Schädel 頸椎 💀 ß.png"),
    FileCase("filename-very-long", png, 200, filename="a" * 2000 + ".png"),
]  # fmt: skip


def file_case(case_id: str) -> FileCase:
    return next(case for case in FILE_CASES if case.id == case_id)
