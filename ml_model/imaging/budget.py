"""What decoding untrusted bytes will cost in memory, read from the headers alone.

A server must know before it decodes: a 247 KiB float TIFF just under the pixel limit used
to take 760 MiB, a 1.2 MiB RLE DICOM 680 MiB, a 389 KiB deflated DICOM 800 MiB.
Each format's estimator here (``formats.FORMATS`` picks one by the file's signature:
``formats.estimate_decode_cost``) reads only headers (Pillow opens lazily; the DICOM file meta,
its dataset header and, for compressed pixel data, the codestream's own header) and returns
the peak memory decoding one slice (one frame) will need. The caller decides what is too
much; where the headers cannot be read the estimate is ``None`` and the decoder gives the
reason. Structure limits (``raster.check_structure``) apply first, so reading the headers
is itself bounded.

The bytes-per-pixel figures are the measured peaks of decode -> grayscale -> model input
(Pillow's image, its numpy copy, the float conversions of high-bit-depth data), rounded up:
10 MP of each mode, RSS high-water mark of a fresh process.
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Collection
from dataclasses import dataclass

from PIL import Image

from ml_model.imaging.dicom import (
    MAX_DICOM_PIXEL_BYTES,
    NON_CT_MODALITIES,
    NON_IMAGE_MODALITIES,
    is_dicom,
)
from ml_model.imaging.errors import MAX_IMAGE_PIXELS, ImageTooLargeError

MIB = 1024 * 1024
# Per decode, whatever the size: the model input, resize buffers, Python objects.
FIXED_BYTES = 4 * MIB
# Measured peak bytes per pixel by Pillow mode (10 MP: L 3.8, RGB 7.6, CMYK 8.7, I;16 15.3,
# F 16.5, RGBA 18.1, transparent palette 15.3).
RASTER_BYTES_PER_PIXEL = {
    "1": 4, "L": 4, "P": 4, "RGB": 8, "YCbCr": 8, "CMYK": 10,
    "LA": 20, "La": 20, "PA": 20, "RGBA": 20, "RGBa": 20,
    "I;16": 18, "I;16B": 18, "I;16L": 18, "I;16N": 18, "I": 18, "F": 18,
}  # fmt: skip
DEFAULT_RASTER_BYTES_PER_PIXEL = 20
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
# A codestream side beyond JPEG's own maximum is damage, not an image: the codec refuses it
# (and nothing that size can be allocated); up to it, the codestream's size is believed.
MAX_CODESTREAM_SIDE = 65_535
_INFLATE_CHUNK = 64 * 1024
# What pydicom builds for each element or sequence item of a dataset it reads (measured:
# tracemalloc peak of reading 100,000 empty items of one sequence, 1,352 bytes each, explicit
# and implicit VR alike; rounded up). A header is counted before pydicom reads it: a 20 MiB
# file of empty items would otherwise build 3.5 GiB before any estimate is made.
BYTES_PER_ELEMENT = 1_400
IMPLICIT_VR_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_VR_BIG = "1.2.840.10008.1.2.2"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip


@dataclass(frozen=True)
class DecodeCost:
    """The memory decoding one slice (one frame) of a file will take at its peak."""

    format: str  # PNG, JPEG, TIFF..., DICOM
    width: int
    height: int
    bytes_per_pixel: int  # of the whole decode path, not of the stored pixels
    frames: int = 1  # frames the file declares; one is decoded at a time
    extra_bytes: int = 0  # e.g. a deflated DICOM's inflated dataset
    what: str = ""  # what extra_bytes is, when it is all of the cost (pixels not known)

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def bytes(self) -> int:
        return self.pixels * self.bytes_per_pixel + self.extra_bytes + FIXED_BYTES

    def describe(self) -> str:
        if self.pixels == 0 and self.what:
            return f"a {self.format} {self.what} ({self.extra_bytes / MIB:,.0f} MiB to read)"
        if self.pixels == 0:  # a deflated DICOM whose image size is not known yet
            return f"a {self.format} of {self.extra_bytes / MIB:,.0f} MiB once inflated"
        frames = f", {self.frames} frames" if self.frames > 1 else ""
        return f"a {self.width}x{self.height} {self.format}{frames}"


def raster_cost(data: bytes, accepted: Collection[str]) -> DecodeCost | None:
    """A raster file's cost from Pillow's lazy open (headers only); None unless Pillow calls
    it one of the ``accepted`` formats within the pixel limit. Run ``raster.check_structure``
    first: it bounds the walk of the headers."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                fmt, mode, (width, height) = image.format, image.mode, image.size
                transparent = mode == "P" and "transparency" in image.info
    except Exception:  # not an image, a bomb, damage: the decoder refuses it with a reason
        return None
    if fmt not in accepted or width * height > MAX_IMAGE_PIXELS:
        return None
    per_pixel = RASTER_BYTES_PER_PIXEL.get(mode, DEFAULT_RASTER_BYTES_PER_PIXEL)
    if transparent:
        per_pixel = RASTER_BYTES_PER_PIXEL["RGBA"]
    return DecodeCost(str(fmt), width, height, per_pixel)


# --- DICOM ----------------------------------------------------------------------------------


def _file_meta(data: bytes) -> tuple[str, int] | None:
    """(transfer syntax UID, offset of the dataset) from the Part 10 file meta (group 2,
    explicit VR little endian), read by hand: nothing is inflated or parsed beyond it."""
    position, syntax = 132, ""
    while position + 8 <= len(data):
        group, element = struct.unpack("<HH", data[position : position + 4])
        if group != 2:
            return syntax, position
        vr = data[position + 4 : position + 6]
        if vr in _LONG_VRS:
            (length,) = struct.unpack("<I", data[position + 8 : position + 12])
            start = position + 12
        else:
            (length,) = struct.unpack("<H", data[position + 6 : position + 8])
            start = position + 8
        if element == 0x0010:
            syntax = data[start : start + length].decode("ascii", "replace").strip("\x00 ")
        position = start + length
    return None


def is_deflated_dicom(data: bytes) -> bool:
    """A DICOM file whose dataset is deflated (pydicom inflates all of it to read a header)."""
    try:
        meta = _file_meta(data) if is_dicom(data) else None
    except (struct.error, ValueError):
        return False
    return meta is not None and meta[0] == DEFLATED_TRANSFER_SYNTAX


def _inflated_size(data: bytes, start: int, limit: int, walk: _HeaderWalk | None = None) -> int:
    """Bytes a raw-deflate stream inflates to, counted in chunks and stopped past ``limit``;
    with ``walk``, each chunk's elements and items are counted as it comes (nothing kept),
    and inflating stops too once ``walk`` has counted past its own limit."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    for offset in range(start, len(data), _INFLATE_CHUNK):
        pending = data[offset : offset + _INFLATE_CHUNK]
        while pending and not inflater.eof:  # after the end: padding, never inflated
            chunk = inflater.decompress(pending, _INFLATE_CHUNK)
            total += len(chunk)
            if walk is not None:
                walk.feed(chunk)
            if total > limit or (walk is not None and walk.over):
                return total
            pending = inflater.unconsumed_tail
        if inflater.eof:
            break
    return total


def _integer(dataset: object, keyword: str, default: int) -> int:
    value = getattr(dataset, keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple):
        value = value[0] if value else default
    number = int(value)
    return number


def dicom_cost(data: bytes, inflate_limit: int) -> DecodeCost | None:
    """A DICOM file's cost from its file meta and dataset header (a deflated one: inflated in
    bounded chunks, at most ``inflate_limit`` bytes, nothing kept); None when unreadable or
    refused by the decoder's own cheap checks first."""
    import pydicom

    try:
        meta = _file_meta(data)
    except (struct.error, ValueError):
        meta = None
    if meta is not None and meta[0] == DEFLATED_TRANSFER_SYNTAX:
        return _deflated_cost(data, meta[1], inflate_limit)
    elements = _header_elements(data, meta, inflate_limit // BYTES_PER_ELEMENT)
    structure = elements * BYTES_PER_ELEMENT
    if structure > inflate_limit:  # pydicom would build them all to read the header
        return _header_cost("DICOM", elements)
    try:
        dataset = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows = _integer(dataset, "Rows", 0)
        columns = _integer(dataset, "Columns", 0)
        samples = max(_integer(dataset, "SamplesPerPixel", 1), 1)
        bits = max(_integer(dataset, "BitsAllocated", 16), 1)
        frames = max(_integer(dataset, "NumberOfFrames", 1), 1)
        syntax = str(dataset.file_meta.get("TransferSyntaxUID", "") or "")
        modality = str(dataset.get("Modality", "") or "").strip().upper()
    except Exception:  # an unreadable header: the decoder refuses it with the reason
        return None
    if rows <= 0 or columns <= 0 or modality in NON_CT_MODALITIES | NON_IMAGE_MODALITIES:
        return None  # the decoder refuses it before any pixel, saying why
    raw = samples * math.ceil(bits / 8)
    # The decoder's own cheap refusals come first (with their own messages).
    if rows * columns > MAX_IMAGE_PIXELS or rows * columns * raw > MAX_DICOM_PIXEL_BYTES:
        return None
    width, height = columns, rows
    stream = _codestream_size(data, syntax) if _is_compressed(syntax) else None
    if stream is not None:  # the codec allocates what its own header says, not the DICOM's
        stream_width, stream_height, stream_samples = stream
        plausible = max(stream_width, stream_height) <= MAX_CODESTREAM_SIDE
        if plausible and stream_width * stream_height * stream_samples > width * height * samples:
            width, height, samples = stream_width, stream_height, stream_samples
            raw = samples * math.ceil(bits / 8)
    return DecodeCost(
        "DICOM", width, height, _dicom_bytes_per_pixel(raw), frames, extra_bytes=structure
    )


def _header_cost(fmt: str, elements: int) -> DecodeCost:
    """The cost of a header of more ``elements`` than the limit allows: pydicom would build
    them all to read it, so that is all that is known (and enough to refuse it)."""
    what = f"header of over {elements - 1:,} elements and sequence items"
    return DecodeCost(fmt, 0, 0, 0, extra_bytes=elements * BYTES_PER_ELEMENT, what=what)


def _header_elements(data: bytes, meta: tuple[str, int] | None, stop_after: int) -> int:
    """The elements and sequence items of a DICOM dataset, counted by walking their headers
    (values skipped, nothing built), sequences and items descended into; the count stops just
    past ``stop_after``. ``meta``: (transfer syntax, dataset offset) of the file meta; without
    one the dataset starts the file and its VR encoding is guessed as pydicom does."""
    if meta is not None:
        syntax, position = meta
    else:
        position = 0
        explicit = len(data) >= 6 and data[4:6].isalpha() and data[4:6].isupper()
        syntax = "" if explicit else IMPLICIT_VR_LITTLE
    walk = _HeaderWalk(syntax, stop_after)
    walk.feed(memoryview(data)[position:])
    return walk.count


class _HeaderWalk:
    """Counts a dataset's elements and sequence items from its bytes, fed in pieces of any
    size (a file's dataset at once, a deflated one as it is inflated): each header is read,
    its value skipped (across pieces if need be), sequences and items descended into;
    nothing is kept but a header cut by the end of a piece. Counting stops just past
    ``stop_after`` (``over``); a truncated dataset ends the count (the decoder says so)."""

    def __init__(self, syntax: str, stop_after: int) -> None:
        self.implicit = syntax == IMPLICIT_VR_LITTLE
        order = ">" if syntax == EXPLICIT_VR_BIG else "<"
        self.tag_format, self.long_format = order + "HH", order + "I"
        self.short_format = order + "H"
        self.stop_after = stop_after
        self.count = 0
        self._skip = 0  # value bytes still to skip, carried over from the last piece
        self._head = b""  # the start of a header cut by the end of the last piece

    @property
    def over(self) -> bool:
        return self.count > self.stop_after

    def feed(self, piece: bytes | memoryview) -> None:
        if self.over:
            return
        if self._skip >= len(piece):
            self._skip -= len(piece)
            return
        data = self._head + bytes(piece) if self._head else piece
        position, end = self._skip, len(data)
        while self.count <= self.stop_after and position + 8 <= end:
            group, element = struct.unpack_from(self.tag_format, data, position)
            vr = bytes(data[position + 4 : position + 6])
            if self.implicit or group == 0xFFFE:  # an item or a delimiter has no VR
                size, length_at, length_format = 8, 4, self.long_format
            elif vr in _LONG_VRS:
                size, length_at, length_format = 12, 8, self.long_format
            else:
                size, length_at, length_format = 8, 6, self.short_format
            if position + size > end:
                break
            (length,) = struct.unpack_from(length_format, data, position + length_at)
            self.count += 1
            position += size
            if group == 0xFFFE:  # an item's content, if any, follows
                continue
            sequence = _dictionary_vr(group, element) == "SQ" if self.implicit else vr == b"SQ"
            if length != 0xFFFFFFFF and not sequence:
                position += length  # a value: skipped
        if self.over:
            return
        self._skip = max(position - end, 0)
        self._head = bytes(data[position:]) if position < end else b""


def _dictionary_vr(group: int, element: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return str(dictionary_VR((group << 16) | element))
    except KeyError:
        return ""


def _dicom_bytes_per_pixel(raw: int) -> int:
    """Measured (10 MP): 16-bit grey 16.0, RLE 16-bit 17.0, 8-bit RGB 18.0 bytes per pixel."""
    return 4 * raw + 12


# Rows, Columns, SamplesPerPixel, BitsAllocated (US) in explicit VR little endian.
_US_TAGS = {name: struct.pack("<HH", 0x0028, element) + b"US\x02\x00"
            for name, element in (("rows", 0x10), ("columns", 0x11), ("samples", 0x02),
                                  ("bits", 0x100))}  # fmt: skip


def _deflated_cost(data: bytes, start: int, limit: int) -> DecodeCost | None:
    """A deflated dataset: pydicom inflates all of it before reading even the header, so its
    size is learnt in bounded chunks first (a 389 KiB file inflated to 800 MB), and the
    image size is read from the start of the inflated stream without parsing it. Its
    elements and sequence items are counted as it inflates, as an uncompressed file's are
    (a 20 KiB file may hold millions of empty items)."""
    walk = _HeaderWalk(DEFLATED_TRANSFER_SYNTAX, limit // BYTES_PER_ELEMENT)
    try:
        inflated = _inflated_size(data, start, limit // 2, walk)  # twice that is over the limit
        head = zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], 256 * 1024)
    except zlib.error:
        return None  # damaged: the decoder says so
    structure = walk.count * BYTES_PER_ELEMENT
    if walk.over:
        return _header_cost("deflated DICOM", walk.count)
    found = {}
    for name, tag in _US_TAGS.items():
        at = head.find(tag)
        if at >= 0 and at + 10 <= len(head):
            (found[name],) = struct.unpack("<H", head[at + 8 : at + 10])
    rows, columns = found.get("rows", 0), found.get("columns", 0)
    if not rows or not columns:
        # Image size beyond the first 256 KiB: the pixels are at most the inflated bytes,
        # and decoding them takes at most 8 x their size (16-bit: 16 bytes per pixel).
        return DecodeCost("deflated DICOM", 0, 0, 0, extra_bytes=10 * inflated + structure)
    if rows * columns > MAX_IMAGE_PIXELS:
        return None  # the decoder refuses it, saying why
    raw = max(found.get("samples", 1), 1) * math.ceil(max(found.get("bits", 16), 1) / 8)
    return DecodeCost(  # the inflated buffer and the dataset parsed from it, then the pixels
        "deflated DICOM",
        columns,
        rows,
        _dicom_bytes_per_pixel(raw),
        extra_bytes=2 * inflated + structure,
    )


def _is_compressed(syntax: str) -> bool:
    native = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2",
              DEFLATED_TRANSFER_SYNTAX}  # fmt: skip
    return bool(syntax) and syntax not in native


def _codestream_size(data: bytes, syntax: str) -> tuple[int, int, int] | None:
    """(width, height, components) from the first fragment's JPEG / JPEG-LS / JPEG 2000
    header, or None."""
    import pydicom
    from pydicom.encaps import generate_fragments

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), specific_tags=["PixelData"])
        fragments = generate_fragments(dataset.PixelData)
        next(fragments, b"")  # the basic offset table (an item, perhaps empty) comes first
        fragment = next(fragments, b"")
    except Exception:
        return None
    try:
        return _jpeg_size(fragment) or _j2k_size(fragment)
    except (struct.error, IndexError):
        return None


def _jpeg_size(stream: bytes) -> tuple[int, int, int] | None:
    """A JPEG or JPEG-LS codestream's frame header: SOF0..SOF15 except DHT/JPG/DAC, SOF55."""
    if not stream.startswith(b"\xff\xd8"):
        return None
    position = 2
    for _ in range(1024):
        if position + 4 > len(stream) or stream[position] != 0xFF:
            return None
        marker = stream[position + 1]
        (length,) = struct.unpack(">H", stream[position + 2 : position + 4])
        is_sof = 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)
        if is_sof or marker == 0xF7:
            height, width = struct.unpack(">HH", stream[position + 5 : position + 9])
            return width, height, stream[position + 9]
        if marker == 0xDA:
            return None
        position += 2 + length
    return None


def _j2k_size(stream: bytes) -> tuple[int, int, int] | None:
    """A JPEG 2000 codestream's SIZ (inside a JP2 file's ``jp2c`` box if need be)."""
    if stream[4:8] == b"jP  ":
        start = stream.find(b"jp2c")
        if start < 0:
            return None
        stream = stream[start + 4 : start + 4 + 64]
    if not stream.startswith(b"\xff\x4f\xff\x51"):
        return None
    xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", stream[8:24])
    (components,) = struct.unpack(">H", stream[40:42])
    return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0), components


def refuse_if_over(cost: DecodeCost | None, limit: int) -> None:
    """Raise ``ImageTooLargeError`` (413) when decoding would take more than ``limit`` bytes."""
    if cost is not None and cost.bytes > limit:
        raise ImageTooLargeError(over_limit_message(cost, limit))


def over_limit_message(cost: DecodeCost, limit: int) -> str:
    if cost.pixels == 0 or cost.extra_bytes > limit:
        return (
            f"the {cost.format} would take about {cost.bytes / MIB:,.0f} MiB of memory once "
            f"inflated, over the limit of {limit / MIB:,.0f} MiB per request"
        )
    return (
        f"decoding this file ({cost.describe()}) would take about {cost.bytes / MIB:,.0f} MiB "
        f"of memory, over the limit of {limit / MIB:,.0f} MiB per request"
    )
