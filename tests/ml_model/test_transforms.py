"""The one image-to-tensor path: decode -> window -> resize."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model.config import EXPORT_WINDOW
from ml_model.imaging.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError
from ml_model.imaging.transforms import decode_image, image_to_array, resize
from ml_model.imaging.window import hu_window


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("hu", "level", "width", "expected"),
    [
        (-500.0, 400.0, 1800.0, 0),  # bottom of the bone window
        (1300.0, 400.0, 1800.0, 255),  # top of the bone window
        (400.0, 400.0, 1800.0, 128),  # the level maps to mid-grey
        (-2000.0, 400.0, 1800.0, 0),  # clipped below
        (5000.0, 400.0, 1800.0, 255),  # clipped above
        (40.0, 40.0, 400.0, 128),  # soft-tissue window
    ],
)
def test_hu_window(hu: float, level: float, width: float, expected: int) -> None:
    assert hu_window(np.array([hu]), level, width)[0] == expected


def test_hu_window_rejects_non_positive_width() -> None:
    with pytest.raises(ValueError, match="width"):
        hu_window(np.zeros(3), 0, 0)


GRADIENT = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("RGB", "PNG"),
        ("RGBA", "PNG"),
        ("P", "PNG"),
        ("L", "JPEG"),
        ("RGB", "BMP"),
        ("L", "TIFF"),
    ],
)
def test_decode_modes_give_the_same_grayscale(mode: str, fmt: str) -> None:
    data = encode(Image.fromarray(GRADIENT).convert(mode), fmt)
    gray = decode_image(data, *EXPORT_WINDOW)
    assert gray.shape == GRADIENT.shape and gray.dtype == np.uint8
    tolerance = 3 if fmt == "JPEG" else 1
    assert np.abs(gray.astype(int) - GRADIENT).mean() <= tolerance


def test_sixteen_bit_png_is_stretched_to_uint8() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15).astype(np.uint16)
    gray = decode_image(encode(Image.fromarray(pixels), "PNG"), *EXPORT_WINDOW)
    assert gray.min() == 0 and gray.max() == 255


def test_image_to_array_shape_and_channels() -> None:
    array = image_to_array(encode(Image.fromarray(GRADIENT), "PNG"), 32, *EXPORT_WINDOW)
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8
    assert np.array_equal(array[..., 0], array[..., 2])


def test_resize_is_identity_at_target_size() -> None:
    assert resize(GRADIENT, 64) is GRADIENT


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", ImageDecodeError, "empty"),
        (b"hello, not an image", UnsupportedImageError, "not a recognised image"),
        (encode(Image.fromarray(GRADIENT), "PNG")[:60], ImageDecodeError, "decoded"),
    ],
)
def test_decode_errors_say_what_is_wrong(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        decode_image(data, *EXPORT_WINDOW)


def test_decompression_bomb_is_an_error_not_a_warning() -> None:
    # A PNG header claiming 10000 x 5000 pixels: refused before any pixel is decoded.
    data = encode(Image.new("1", (10_000, 5_000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, *EXPORT_WINDOW)


# --- DICOM as scanners and PACS write it ------------------------------------------------

import dataclasses  # noqa: E402

from ml_model.imaging.dicom import AIR_HU, read_dicom, read_facts  # noqa: E402
from testing.dicom_writers import patch_element, scanner_ct_dicom  # noqa: E402

RNG = np.random.default_rng(7)
# A neck-like slice: air around, fat, muscle, bone well above the model's window.
HU = np.full((48, 64), -1000.0)
HU[8:40, 8:56] = -100.0
HU[12:36, 14:50] = 45.0 + RNG.normal(0, 8, (24, 36))
HU[20:28, 26:38] = 1100.0
SYNTAXES = {
    "explicit-le": None,
    "rle": "1.2.840.10008.1.2.5",
    "jpeg-ls": "1.2.840.10008.1.2.4.80",
    "jpeg-2000-lossless": "1.2.840.10008.1.2.4.90",
    "deflated": "1.2.840.10008.1.2.1.99",
    "big-endian": "1.2.840.10008.1.2.2",
}


def expected_gray(hu: np.ndarray = HU) -> np.ndarray:
    return hu_window(np.rint(hu), *EXPORT_WINDOW)


@pytest.mark.parametrize("syntax", list(SYNTAXES))
@pytest.mark.parametrize(
    ("storage", "bits"), [("int16", 16), ("int16", 12), ("uint16", 16), ("uint16", 12)]
)
def test_dicom_encodings_and_bit_depths_give_the_same_slice(
    syntax: str, storage: str, bits: int
) -> None:
    data = scanner_ct_dicom(HU, storage=storage, bits_stored=bits,
                            transfer_syntax=SYNTAXES[syntax])  # fmt: skip
    assert np.array_equal(decode_image(data, *EXPORT_WINDOW), expected_gray())


@pytest.mark.parametrize(("storage", "intercept"), [("uint8", -1024.0), ("int8", 0.0)])
def test_eight_bit_dicom(storage: str, intercept: float) -> None:
    hu = np.clip(HU, -1000, 1000)
    data = scanner_ct_dicom(hu, storage=storage, bits_stored=8, slope=8.0, intercept=intercept)
    stored_hu = np.rint((hu - intercept) / 8.0) * 8.0 + intercept
    assert np.array_equal(decode_image(data, *EXPORT_WINDOW), hu_window(stored_hu, *EXPORT_WINDOW))


def test_monochrome1_is_inverted_after_windowing() -> None:
    plain = decode_image(scanner_ct_dicom(HU), *EXPORT_WINDOW)
    inverted = decode_image(scanner_ct_dicom(HU, photometric="MONOCHROME1"), *EXPORT_WINDOW)
    assert np.array_equal(inverted, 255 - plain)


@pytest.mark.parametrize(("storage", "padding"), [("int16", -2000), ("uint16", 65535)])
def test_padding_is_air_not_an_artefact(storage: str, padding: int) -> None:
    outside = np.zeros(HU.shape, bool)
    outside[:, :4] = True  # outside the reconstruction circle
    data = scanner_ct_dicom(HU, storage=storage, padding=padding, padding_mask=outside)
    image = read_dicom(data)
    assert np.all(image.values[outside] == AIR_HU)
    for level, width in ((-70, 380), (400, 1800), (40, 400)):
        assert np.all(image.window(level, width)[outside] == 0)  # black in every window


@pytest.mark.parametrize("storage", ["int16", "uint16"])
def test_missing_rescale_tags(storage: str) -> None:
    """No RescaleSlope/Intercept: signed values are HU; unsigned ones with air near 0 carry
    the usual +1024 offset."""
    data = scanner_ct_dicom(HU, storage=storage, rescale=False)
    assert np.array_equal(decode_image(data, *EXPORT_WINDOW), expected_gray())


def test_missing_modality_is_decided_by_sop_class_and_rescale() -> None:
    from pydicom.uid import MRImageStorage, SecondaryCaptureImageStorage

    ct = scanner_ct_dicom(HU, modality=None)
    assert np.array_equal(decode_image(ct, *EXPORT_WINDOW), expected_gray())
    assert read_facts(ct).modality == "CT"
    # A secondary capture without Modality whose rescale reads like HU: a converted CT.
    converted = scanner_ct_dicom(HU, modality=None, storage="uint16")
    converted = converted.replace(b"1.2.840.10008.5.1.4.1.1.2\x00",
                                  SecondaryCaptureImageStorage.encode() + b"\x00")  # fmt: skip
    assert np.array_equal(decode_image(converted, *EXPORT_WINDOW), expected_gray())
    mr = scanner_ct_dicom(HU, modality=None)
    mr = mr.replace(b"1.2.840.10008.5.1.4.1.1.2\x00", MRImageStorage.encode() + b"\x00")
    with pytest.raises(UnsupportedImageError, match=r"MR image .*SOP class is MR Image Storage"):
        decode_image(mr, *EXPORT_WINDOW)


@pytest.mark.parametrize(
    ("image_type", "rescale_type", "is_hu"),
    [
        (None, None, True),  # the common CT: Modality CT says HU
        (r"ORIGINAL\PRIMARY\AXIAL", "HU", True),
        (r"DERIVED\SECONDARY\REFORMATTED", "HU", True),  # a derived image still in HU
        (r"ORIGINAL\PRIMARY\AXIAL", "US", True),  # a stray Rescale Type on a scan: HU
        (r"DERIVED\PRIMARY\PERFUSION\RCBF", "US", False),  # a map of blood flow, not HU
    ],
)
def test_a_derived_map_that_says_its_values_are_not_hu(
    image_type: str | None, rescale_type: str | None, is_hu: bool
) -> None:
    """A derived CT frame whose Rescale Type is not HU (an enhanced CT perfusion map in
    pydicom-data says US) is not windowed as HU: its values are shown as they are."""
    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(scanner_ct_dicom(HU)))
    if image_type is not None:
        dataset.ImageType = image_type.split("\\")
    if rescale_type is not None:
        dataset.RescaleType = rescale_type
    buffer = io.BytesIO()
    dataset.save_as(buffer)
    image = read_dicom(buffer.getvalue())
    assert image.is_hu is is_hu
    if not is_hu:
        assert image.values.dtype == np.uint8
        assert image.notes == (
            r"values not in HU (DERIVED\PRIMARY\PERFUSION\RCBF, Rescale Type US)",
        )


def test_non_image_dicom_is_refused_with_a_reason() -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    for name, what in (("test-SR.dcm", "Comprehensive SR Storage"),
                       ("rtplan.dcm", "RT Plan Storage")):  # fmt: skip
        data = Path(get_testdata_file(name)).read_bytes()  # type: ignore[arg-type]
        with pytest.raises(UnsupportedImageError, match=f"not an image \\({what}\\)"):
            decode_image(data, *EXPORT_WINDOW)
    # a presentation state without SOP class name lookups: refused by Modality
    data = scanner_ct_dicom(HU, modality="PR")
    assert pydicom.dcmread(io.BytesIO(data)).Modality == "PR"
    with pytest.raises(UnsupportedImageError, match="Modality PR"):
        decode_image(data, *EXPORT_WINDOW)


def test_malformed_elements() -> None:
    data = scanner_ct_dicom(HU, position=(0, 0, 5), instance=3)
    # what pydicom reads leniently and the slice does not need: the slice still decodes
    lenient = [
        ("InstanceNumber", b"abc"),
        ("InstanceNumber", b"9" * 5000),
        ("ImagePositionPatient", b"1.5"),
        ("ImagePositionPatient", b"a\\b\\c"),
        ("ImagePositionPatient", b"1\\\\3"),
        ("PixelSpacing", b"x\\y"),
        ("SliceThickness", b"thin"),
        ("SeriesDescription", b"\x00\x1b[31m"),
    ]
    for keyword, raw in lenient:
        damaged = patch_element(data, keyword, raw)
        assert np.array_equal(decode_image(damaged, *EXPORT_WINDOW), expected_gray()), keyword
        facts = read_facts(damaged)
        if keyword == "PixelSpacing":
            assert facts.pixel_spacing_mm is None
        if keyword == "SliceThickness":
            assert facts.slice_thickness_mm is None
        if keyword == "SeriesDescription":
            assert facts.series_description is None or "\x1b" not in facts.series_description
    # what the pixels need: a 400 naming the element
    damaged = patch_element(data, "RescaleIntercept", b"-10x4")
    with pytest.raises(ImageDecodeError, match=r"RescaleIntercept \(0028,1052\)") as caught:
        decode_image(damaged, *EXPORT_WINDOW)
    assert type(caught.value) is ImageDecodeError


def test_facts_are_typed_and_never_identify_the_patient() -> None:
    data = scanner_ct_dicom(HU, position=(1.0, 2.0, -42.5), identifiers=True,
                            transfer_syntax=SYNTAXES["jpeg-ls"])  # fmt: skip
    facts = read_facts(data)
    assert facts == read_dicom(data).facts
    assert facts.modality == "CT" and facts.series_description == "C-SPINE 1.0 BONE"
    assert facts.slice_location_mm == -42.5
    assert facts.pixel_spacing_mm == (0.5, 0.5) and facts.slice_thickness_mm == 1.0
    assert (facts.rows, facts.columns) == HU.shape
    assert facts.transfer_syntax == "JPEG-LS Lossless Image Compression"
    text = repr(dataclasses.asdict(facts))
    for secret in ("Doe", "PID-123456", "19700101", "20260102", "Example General", "ACC-98765",
                   "1.2.826", "2.25."):  # fmt: skip
        assert secret not in text


def test_damaged_dicom_raises_only_the_three_errors() -> None:
    """Random byte damage anywhere in a compressed and an uncompressed file: a slice or one
    of the three errors, nothing else (the hardening fuzzing goes further)."""
    rng = np.random.default_rng(0)
    for syntax in (None, SYNTAXES["jpeg-2000-lossless"], SYNTAXES["rle"]):
        data = bytearray(scanner_ct_dicom(HU, position=(0, 0, 1), transfer_syntax=syntax))
        for _ in range(60):
            damaged = bytearray(data)
            for position in rng.integers(132, len(damaged), size=int(rng.integers(1, 6))):
                damaged[position] = int(rng.integers(0, 256))
            cut = int(rng.integers(140, len(damaged) + 1))
            try:
                decode_image(bytes(damaged[:cut]), *EXPORT_WINDOW)
                read_facts(bytes(damaged[:cut]))
            except ImageDecodeError:
                pass
