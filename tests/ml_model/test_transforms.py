"""The one image-to-tensor path: decode -> window -> resize."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

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
    gray = decode_image(data)
    assert gray.shape == GRADIENT.shape and gray.dtype == np.uint8
    tolerance = 3 if fmt == "JPEG" else 1
    assert np.abs(gray.astype(int) - GRADIENT).mean() <= tolerance


def test_sixteen_bit_png_is_stretched_to_uint8() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15).astype(np.uint16)
    gray = decode_image(encode(Image.fromarray(pixels), "PNG"))
    assert gray.min() == 0 and gray.max() == 255


def test_image_to_array_shape_and_channels() -> None:
    array = image_to_array(encode(Image.fromarray(GRADIENT), "PNG"), size=32)
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
        decode_image(data)


def test_decompression_bomb_is_an_error_not_a_warning() -> None:
    # A PNG header claiming 10000 x 5000 pixels: refused before any pixel is decoded.
    data = encode(Image.new("1", (10_000, 5_000)), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data)
