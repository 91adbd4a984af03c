"""The table of input formats (``ml_model/imaging/formats.py``): every row recognised by its
signature, with its extensions and MIME types, a memory estimate and a decoder that work on a
small file of that format; and what reads the table (decoding, the budget, the study upload)
agreeing with it."""

from __future__ import annotations

import io
import mimetypes
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from backend.app.services.study_upload import looks_like_slice
from ml_model.imaging import formats
from ml_model.imaging.budget import DecodeCost
from ml_model.imaging.dicom import DicomImage
from ml_model.imaging.errors import UnsupportedImageError
from ml_model.imaging.formats import FORMATS, InputFormat
from ml_model.imaging.transforms import decode_source
from testing.dicom_writers import ct_dicom_bytes

WINDOW = (0.0, 600.0)  # level, width: any window (a raster file ignores it)

HEIGHT, WIDTH = 12, 20
# A horizontal ramp: every decoder must give back a slice that grows left to right.
RAMP = np.tile(np.linspace(0, 240, WIDTH).astype(np.uint8), (HEIGHT, 1))


def _pillow(fmt: str) -> Callable[[], bytes]:
    def build() -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(RAMP).save(buffer, format=fmt)
        return buffer.getvalue()

    return build


def _dicom() -> bytes:
    return ct_dicom_bytes(RAMP.astype(np.uint16) * 8, intercept=-1024.0)


# A small file of each format, written by a real encoder (Pillow, pydicom).
SAMPLES: dict[str, Callable[[], bytes]] = {
    "DICOM": _dicom,
    "PNG": _pillow("PNG"),
    "JPEG": _pillow("JPEG"),
    "BMP": _pillow("BMP"),
    "TIFF": _pillow("TIFF"),
    "GIF": _pillow("GIF"),
}
BY_NAME = {fmt.name: fmt for fmt in FORMATS}


def test_every_format_has_a_sample_here() -> None:
    assert sorted(SAMPLES) == sorted(BY_NAME)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_each_format_is_recognised_by_its_signature_and_nothing_else(fmt: InputFormat) -> None:
    data = SAMPLES[fmt.name]()
    assert fmt.sniff(data)
    assert formats.sniff(data) is fmt
    assert looks_like_slice(data)  # the study upload reads the same table
    others = [other.name for other in FORMATS if other is not fmt and other.sniff(data)]
    assert others == []


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_each_format_has_extensions_and_mime_types(fmt: InputFormat) -> None:
    assert fmt.extensions and fmt.mime_types
    for extension in fmt.extensions:
        assert extension.startswith(".") and extension == extension.lower()
        assert extension in formats.EXTENSIONS
        guessed, _ = mimetypes.guess_type(f"slice{extension}", strict=False)
        if guessed is not None:  # Python knows it: the table must agree
            assert guessed in fmt.mime_types, (extension, guessed)
    for mime in fmt.mime_types:
        kind, _, subtype = mime.partition("/")
        assert kind in ("image", "application") and subtype


def test_no_extension_or_mime_type_belongs_to_two_formats() -> None:
    extensions = [extension for fmt in FORMATS for extension in fmt.extensions]
    mime_types = [mime for fmt in FORMATS for mime in fmt.mime_types]
    assert len(extensions) == len(set(extensions))
    assert len(mime_types) == len(set(mime_types))
    assert sorted(formats.EXTENSIONS) == sorted(extensions)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_each_format_has_an_estimator_that_bounds_its_decoding(fmt: InputFormat) -> None:
    data = SAMPLES[fmt.name]()
    cost = fmt.estimator(data, 1024 * 1024)
    assert isinstance(cost, DecodeCost)
    assert (cost.width, cost.height) == (WIDTH, HEIGHT)
    # At least the decoded slice and its copies on the way to the model input (4 bytes a pixel).
    assert cost.bytes_per_pixel >= 4
    assert formats.estimate_decode_cost(data) == cost  # the budget picks this row's estimator


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda fmt: fmt.name)
def test_each_format_has_a_decoder_that_reads_it(fmt: InputFormat) -> None:
    data = SAMPLES[fmt.name]()
    decoded = fmt.decoder(data, None)
    gray, dicom = decode_source(data, *WINDOW)
    if isinstance(decoded, DicomImage):
        assert dicom is not None and decoded.values.shape == (HEIGHT, WIDTH)
    else:
        assert dicom is None
        np.testing.assert_array_equal(gray, decoded)
    assert gray.dtype == np.uint8 and gray.shape == (HEIGHT, WIDTH)
    assert (np.diff(gray.astype(int), axis=1) >= -2).all()  # still a left-to-right ramp
    assert int(gray[:, -1].mean()) > int(gray[:, 0].mean()) + 100


def test_bytes_without_a_known_signature_are_refused_as_before() -> None:
    with pytest.raises(UnsupportedImageError, match="not a recognised image or DICOM"):
        decode_source(b"hello, this is no image" * 10, *WINDOW)
    assert formats.sniff(b"hello") is None and not looks_like_slice(b"hello")


def test_a_format_pillow_opens_but_the_table_lacks_is_refused_by_name() -> None:
    buffer = io.BytesIO()
    Image.fromarray(RAMP).save(buffer, format="ICO")
    assert formats.sniff(buffer.getvalue()) is None
    with pytest.raises(UnsupportedImageError, match="image format ICO is not accepted"):
        decode_source(buffer.getvalue(), *WINDOW)
    assert formats.estimate_decode_cost(buffer.getvalue()) is None


@pytest.mark.parametrize(("name", "kept"), [("PNG", 8), ("JPEG", 3), ("BMP", 8), ("TIFF", 8),
                                            ("GIF", 8)])  # fmt: skip
def test_a_damaged_file_is_named_by_its_signature(name: str, kept: int) -> None:
    data = SAMPLES[name]()[:kept]  # the signature, then (next to) nothing
    with pytest.raises(UnsupportedImageError, match=f"starts like a {name} image"):
        decode_source(data, *WINDOW)


def test_the_api_docs_name_every_format() -> None:
    text = formats.describe()
    assert all(fmt.name in text for fmt in FORMATS)
    assert formats.image_format_names() == "PNG/JPEG/BMP/TIFF/GIF"
