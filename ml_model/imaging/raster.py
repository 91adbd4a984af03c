"""Raster bytes (PNG, JPEG, BMP, TIFF, GIF) -> a 2-D uint8 greyscale slice (Pillow).

Animated GIF/APNG and multi-page TIFF are read as their first frame.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Collection

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ml_model.imaging.errors import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from ml_model.imaging.errors import short_message as _short
from ml_model.imaging.window import rescale_to_uint8

# Enforced as an error below (Pillow only warns between 1x and 2x of its limit).
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

# The PNG file signature (also the PNG row's in ``formats.FORMATS``).
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# Structure a slice never needs, walked before Pillow parses it (Pillow's parsers loop in
# Python per chunk, marker or block: 1.7 M empty PNG chunks cost 5 s of CPU, 4 M empty
# JPEG markers 6 s, 4 M TIFF strip offsets 23 s and 1 GB). Real files use a few hundred.
MAX_PNG_CHUNKS = 16_384  # a 20 MiB PNG in 8 KiB IDAT chunks has 2,560
MAX_JPEG_SEGMENTS = 1_024  # markers before the first scan (a camera JPEG has ~20)
MAX_JPEG_JUNK_BYTES = 65_536  # bytes between markers that are not a marker (Pillow skips
# them one by one)
MAX_GIF_BLOCKS = 16_384  # extension blocks and sub-blocks before the first image
MAX_TIFF_ENTRIES = 4_096  # tags of the first IFD (the format allows 65,535)
MAX_TIFF_VALUES = 262_144  # numbers in those tags (strip offsets: one per strip)
_TIFF_NUMBER_SIZES = {3: 2, 4: 4, 5: 8, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8, 17: 8, 18: 8}


def _too_much(what: str, limit: int) -> ImageTooLargeError:
    return ImageTooLargeError(f"the file has more than {limit:,} {what}; a CT slice has far fewer")


def check_structure(data: bytes) -> None:
    """Refuse (413) a PNG, JPEG, GIF or TIFF whose structure (chunks, markers, blocks, tag
    values) is beyond what a slice needs, before any parser walks it. A damaged structure
    is left to the decoder, which reports it."""
    try:
        if data.startswith(PNG_SIGNATURE):
            _check_png(data)
        elif data.startswith(b"\xff\xd8"):
            _check_jpeg(data)
        elif data.startswith((b"GIF87a", b"GIF89a")):
            _check_gif(data)
        elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            _check_tiff(data)
    except (struct.error, IndexError):
        return  # truncated: the decoder says so


def _check_png(data: bytes) -> None:
    position, count = len(PNG_SIGNATURE), 0
    while position + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[position : position + 8])
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise _too_much("PNG chunks", MAX_PNG_CHUNKS)
        if kind == b"IEND":
            return
        position += 12 + length


def _check_jpeg(data: bytes) -> None:
    position, segments, junk = 2, 0, 0
    size = len(data)
    while position < size:
        if data[position] != 0xFF or position + 1 >= size or data[position + 1] in (0x00, 0xFF):
            following = data.find(b"\xff", position + 1)
            following = size if following < 0 else following
            junk += max(following - position, 1)
            if junk > MAX_JPEG_JUNK_BYTES:
                raise _too_much("bytes of padding between JPEG markers", MAX_JPEG_JUNK_BYTES)
            position = following if following > position else position + 1
            continue
        marker = data[position + 1]
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_much("JPEG markers before the image data", MAX_JPEG_SEGMENTS)
        if marker in (0xDA, 0xD9):  # start of scan, end of image: the rest is the codec's
            return
        if marker == 0xD8 or marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            position += 2
            continue
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        position += 2 + max(length, 2)


def _check_gif(data: bytes) -> None:
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    blocks = 0
    while position < len(data):
        introducer = data[position]
        if introducer != 0x21:  # an image (0x2C), the trailer or damage: done
            return
        position += 2
        while True:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _too_much("GIF extension blocks before the first image", MAX_GIF_BLOCKS)
            length = data[position]
            position += 1 + length
            if length == 0:
                break


def _check_tiff(data: bytes) -> None:
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    if big:
        (offset,) = struct.unpack(order + "Q", data[8:16])
        (entries,) = struct.unpack(order + "Q", data[offset : offset + 8])
        first, width, count_format = offset + 8, 20, "Q"
    else:
        (offset,) = struct.unpack(order + "I", data[4:8])
        (entries,) = struct.unpack(order + "H", data[offset : offset + 2])
        first, width, count_format = offset + 2, 12, "I"
    if entries > MAX_TIFF_ENTRIES:
        raise _too_much("TIFF tags in one directory", MAX_TIFF_ENTRIES)
    values = 0
    for index in range(entries):
        entry = first + index * width
        field = order + "H" + count_format
        kind, count = struct.unpack(field, data[entry + 2 : entry + 2 + struct.calcsize(field)])
        if kind in _TIFF_NUMBER_SIZES:
            values += count
            if values > MAX_TIFF_VALUES:
                raise _too_much("numbers in TIFF tags (strip offsets...)", MAX_TIFF_VALUES)


def _verify_png(data: bytes) -> None:
    """Check every chunk's CRC, IDAT included (Pillow's ``load`` skips those), and the chain.

    A direct walk with zlib.crc32: about 20x cheaper than a second ``Image.open().verify()``,
    which matters in the training input pipeline.
    """
    position = len(PNG_SIGNATURE)
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


def decode_raster(data: bytes, accepted: Collection[str], sniffed: str | None) -> np.ndarray:
    """PNG/JPEG/BMP/TIFF/GIF bytes -> 2-D uint8 grayscale (EXIF orientation applied).

    ``accepted``: the Pillow format names read (anything else Pillow might open, EPS or ICO,
    is refused); ``sniffed``: the format whose signature the bytes carry, if any, named when
    Pillow cannot open them (``formats.FORMATS`` gives both). Animated GIF/APNG and
    multi-page TIFF: the first frame is the image, the rest is ignored. PNG chunk checksums
    are verified (Pillow skips the pixel chunks').
    """
    check_structure(data)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
            if image.format not in accepted:
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
