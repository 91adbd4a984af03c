"""The window of an 8-bit CT export, estimated from its histogram, and the slice brought
back to the bundle's window (``ml_model/imaging/window_estimate.py``)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.dicom import read_dicom
from ml_model.imaging.transforms import decode_image
from ml_model.imaging.window import hu_window
from ml_model.imaging.window_estimate import (
    WindowEstimate,
    bring_to_window,
    estimate_window,
    rewindow,
)
from ml_model.inference.bundle import Bundle

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BUNDLE_WINDOW = Bundle.load(DEFAULT_MODEL_DIR).window  # the card's input.window


def neck_phantom(seed: int = 0, size: int = 256) -> np.ndarray:
    """HU of an axial neck-like slice: padding outside the field of view, air, a body of
    muscle (+40) inside a ring of subcutaneous fat (-100), a vertebra (cortex 1,000,
    marrow 250) and an airway; CT noise of 10 HU."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    body = (x / 0.46) ** 2 + (y / 0.40) ** 2
    hu[body <= 1.0] = -100.0
    hu[body <= 0.72] = 40.0
    vertebra = (x / 0.09) ** 2 + ((y - 0.1) / 0.08) ** 2
    hu[vertebra <= 1.0] = 1000.0
    hu[vertebra <= 0.6] = 250.0
    hu[(x / 0.04) ** 2 + ((y + 0.12) / 0.04) ** 2 <= 1.0] = -1000.0
    hu += rng.normal(0.0, 10.0, hu.shape)
    hu[x**2 + y**2 > 0.49**2] = -3024.0
    return hu


def skull_base_phantom(seed: int = 0, size: int = 256) -> np.ndarray:
    """HU of a slice without a separate fat layer (the top of a neck scan): one soft-tissue
    lump (+40, spread 30 HU) around a dense bone ring (cortex 1,200 HU) and marrow, an
    airway, air and padding. In a bone window it shows only soft tissue and bone."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:size, :size] / size - 0.5
    hu = np.full((size, size), -1000.0)
    body = (x / 0.44) ** 2 + (y / 0.40) ** 2
    hu[body <= 1.0] = 40.0 + rng.normal(0.0, 30.0, (size, size))[body <= 1.0]
    ring = (x / 0.2) ** 2 + (y / 0.18) ** 2
    hu[(ring <= 1.0) & (ring > 0.7)] = 1200.0
    hu[(x / 0.08) ** 2 + ((y - 0.05) / 0.07) ** 2 <= 1.0] = 300.0
    hu[(x / 0.04) ** 2 + ((y + 0.25) / 0.04) ** 2 <= 1.0] = -1000.0
    hu += rng.normal(0.0, 10.0, hu.shape)
    hu[x**2 + y**2 > 0.49**2] = -3024.0
    return hu


# (window, level, width): the windows a viewer exports in that the estimate recovers.
RECOVERABLE = [
    ("bundle", *BUNDLE_WINDOW),
    ("soft L40/W400", 40.0, 400.0),
    ("soft L50/W350", 50.0, 350.0),
    ("bone L400/W1800", 400.0, 1800.0),
    ("bone L500/W2000", 500.0, 2000.0),
    ("bone L600/W2500", 600.0, 2500.0),
]
LEVEL_TOLERANCE_HU, WIDTH_TOLERANCE = 40.0, 0.15


@pytest.mark.parametrize(("name", "level", "width"), RECOVERABLE)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_window_of_a_phantom_is_estimated(
    name: str, level: float, width: float, seed: int
) -> None:
    estimate = estimate_window(hu_window(neck_phantom(seed), level, width))
    assert estimate.level is not None and estimate.width is not None, (name, estimate)
    assert abs(estimate.level - level) <= LEVEL_TOLERANCE_HU, (name, estimate)
    assert abs(estimate.width / width - 1.0) <= WIDTH_TOLERANCE, (name, estimate)
    assert estimate.recoverable, (name, estimate)


# Bone windows of a slice without a fat peak: read as a bone window of the assumed width
# (window_estimate.BONE_WINDOW_WIDTH, 2,000), the level from the soft-tissue peak. The
# tolerance is the assumption's: W 1,800-2,500 read as 2,000 (x 0.8-1.11).
BONE_WINDOWS = RECOVERABLE[3:]
BONE_LEVEL_TOLERANCE_HU, BONE_WIDTH_TOLERANCE = 120.0, 0.25


def _read_as_bone_window(estimate: WindowEstimate) -> bool:
    return estimate.recoverable and estimate.reason.startswith("recoverable: a bone window")


@pytest.mark.parametrize(("name", "level", "width"), BONE_WINDOWS)
@pytest.mark.parametrize("seed", [0, 1])
def test_a_bone_window_without_a_fat_peak_is_read_as_one(
    name: str, level: float, width: float, seed: int
) -> None:
    hu = skull_base_phantom(seed)
    estimate = estimate_window(hu_window(hu, level, width))
    assert estimate.level is not None and estimate.width is not None, (name, estimate)
    assert _read_as_bone_window(estimate), (name, estimate)
    assert abs(estimate.level - level) <= BONE_LEVEL_TOLERANCE_HU, (name, estimate)
    assert abs(estimate.width / width - 1.0) <= BONE_WIDTH_TOLERANCE, (name, estimate)
    # Brought to the bundle's window, soft tissue lands where the DICOM path puts it.
    brought, _ = bring_to_window(hu_window(hu, level, width), *BUNDLE_WINDOW)
    soft = np.abs(hu - 40.0) < 60.0
    truth = hu_window(hu, *BUNDLE_WINDOW)
    assert abs(np.median(brought[soft].astype(int)) - np.median(truth[soft])) <= 15, name


@pytest.mark.parametrize(
    ("name", "level", "width"),
    [("soft L40/W400", 40.0, 400.0), ("soft L50/W350", 50.0, 350.0), ("bundle", *BUNDLE_WINDOW)],
)
def test_a_narrow_window_without_a_fat_peak_is_not_read_as_a_bone_window(
    name: str, level: float, width: float
) -> None:
    """Fat-less soft-tissue renders have one peak too; bone saturates white there and the
    greys above black are dense, so they are never taken for a bone window."""
    estimate = estimate_window(hu_window(skull_base_phantom(), level, width))
    assert not _read_as_bone_window(estimate), (name, estimate)


@pytest.mark.parametrize(("level", "width"), [(40.0, 80.0), (35.0, 80.0)])
def test_a_brain_window_without_a_fat_peak_is_not_recoverable(level: float, width: float) -> None:
    estimate = estimate_window(hu_window(skull_base_phantom(), level, width))
    assert not estimate.recoverable, estimate


@pytest.mark.parametrize(("name", "level", "width"), RECOVERABLE[1:])
def test_a_recoverable_window_is_brought_to_the_bundles(
    name: str, level: float, width: float
) -> None:
    hu = neck_phantom()
    truth = hu_window(hu, *BUNDLE_WINDOW)
    brought, estimate = bring_to_window(hu_window(hu, level, width), *BUNDLE_WINDOW)
    assert estimate.recoverable
    body = (hu > -500) & (hu < 500)  # where the bundle's window shows detail
    error = np.abs(brought.astype(int) - truth.astype(int))[body]
    assert np.median(error) <= 12, (name, np.median(error))


def test_the_bundles_window_passes_through_untouched() -> None:
    gray = hu_window(neck_phantom(), *BUNDLE_WINDOW)
    brought, estimate = bring_to_window(gray, *BUNDLE_WINDOW)
    assert estimate.matches(*BUNDLE_WINDOW)
    assert brought is gray


@pytest.mark.parametrize(("level", "width"), [(40.0, 80.0), (35.0, 80.0)])
def test_a_brain_window_is_not_recoverable(level: float, width: float) -> None:
    gray = hu_window(neck_phantom(), level, width)
    brought, estimate = bring_to_window(gray, *BUNDLE_WINDOW)
    assert not estimate.recoverable
    assert estimate.reason
    assert brought is gray


def test_saturated_pixels_stay_saturated() -> None:
    gray = hu_window(neck_phantom(), 40.0, 400.0)
    estimate = estimate_window(gray)
    out = rewindow(np.array([[0, 255]], dtype=np.uint8), estimate, *BUNDLE_WINDOW)
    assert out.tolist() == [[0, 255]]


def test_a_png_in_a_soft_tissue_window_is_decoded_into_the_bundles() -> None:
    """The decode path every caller shares (``transforms.decode_image``) re-windows."""
    hu = neck_phantom()
    buffer = io.BytesIO()
    Image.fromarray(hu_window(hu, 40.0, 400.0)).save(buffer, "PNG")
    decoded = decode_image(buffer.getvalue(), *BUNDLE_WINDOW)
    body = (hu > -500) & (hu < 500)
    error = np.abs(decoded.astype(int) - hu_window(hu, *BUNDLE_WINDOW).astype(int))[body]
    assert np.median(error) <= 12


def test_noise_and_flat_images_are_left_alone() -> None:
    rng = np.random.default_rng(0)
    for gray in (
        rng.integers(0, 256, (128, 128), dtype=np.uint8),
        np.full((64, 64), 128, dtype=np.uint8),
        np.zeros((64, 64), dtype=np.uint8),
    ):
        brought, estimate = bring_to_window(gray, *BUNDLE_WINDOW)
        assert brought is gray
        assert not estimate.recoverable


def test_the_kaggle_archive_passes_through_untouched() -> None:
    """Slices already in the bundle's window (its own validation split) are not changed, so
    the card's test table stays what it measured."""
    val = SHARED / "cervical-ct" / "val"
    files = sorted(val.rglob("*.png"))[::4]
    if not files:
        pytest.skip(f"the Kaggle archive is not at {val} (see its README)")
    for path in files:
        gray = np.asarray(Image.open(path).convert("L"))
        brought, _ = bring_to_window(gray, *BUNDLE_WINDOW)
        assert brought is gray, path


def test_real_ct_in_a_brain_window_is_never_recoverable() -> None:
    sample = SHARED / "rsna-cspine-sample" / "train_images"
    files = sorted(sample.glob("*/*.dcm"))
    if not files:
        pytest.skip(f"the RSNA sample is not at {sample} (see its README)")
    for path in files:
        image = read_dicom(path.read_bytes())
        assert not estimate_window(image.window(40.0, 80.0)).recoverable, path
