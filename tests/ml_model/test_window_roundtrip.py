"""The window round trip of ``--window-roundtrip`` (issue 26 part 4, an experiment): a
training slice exported in a bone or soft-tissue window and brought back as the product
brings back an 8-bit export (``ml_model/training/window_roundtrip.py``)."""

from __future__ import annotations

import numpy as np
import pytest

from ml_model.config import EXPORT_WINDOW
from ml_model.imaging.window import hu_window
from ml_model.training.train import TrainConfig, parse_args
from ml_model.training.window_roundtrip import roundtrip_copies, roundtrip_in
from tests.ml_model.test_window_estimate import neck_phantom, skull_base_phantom

PHANTOMS = {"neck": neck_phantom, "skull base": skull_base_phantom}


def export_slice(phantom: str, seed: int = 0) -> np.ndarray:
    """A phantom as the Kaggle archive exported it (EXPORT_WINDOW greys)."""
    return hu_window(PHANTOMS[phantom](seed), *EXPORT_WINDOW)


# (window, level, width, contrast scale, how the neck phantom comes back)
WINDOWS = [
    ("bone L400/W1800", 400.0, 1800.0, 1.0, "estimated"),
    ("bone L500/W2000", 500.0, 2000.0, 0.8, "estimated"),
    ("bone L600/W2500", 600.0, 2500.0, 1.25, "estimated"),
    ("soft L40/W400", 40.0, 400.0, 1.0, "estimated"),
    ("soft L50/W350", 50.0, 350.0, 1.25, "estimated"),
]


@pytest.mark.parametrize(("name", "level", "width", "scale", "route"), WINDOWS)
@pytest.mark.parametrize("phantom", sorted(PHANTOMS))
def test_the_round_trip_keeps_shape_dtype_and_saturation(
    name: str, level: float, width: float, scale: float, route: str, phantom: str
) -> None:
    gray = export_slice(phantom)
    back, how = roundtrip_in(gray, level, width, scale)
    assert back.shape == gray.shape and back.dtype == np.uint8, name
    # Saturated in the export window (air black, bone white) stays so: physically possible.
    assert (back[gray == 0] == 0).all() and (back[gray == 255] == 255).all(), name
    assert how in ("estimated", "inverse")
    if phantom == "neck":  # fat and soft tissue show: the product's estimate reads it
        assert how == route, name
    # Soft tissue (+40 HU) comes back near its export grey (coarse steps, contrast error).
    tissue = hu_window(np.array([40.0]), *EXPORT_WINDOW)[0]
    near = np.abs(gray.astype(int) - int(tissue)) <= 3
    assert abs(float(np.median(back[near])) - float(tissue)) <= 20, name


def test_the_round_trip_is_not_the_identity() -> None:
    """A bone window's 7 HU per grey shows: fewer distinct greys than the export had."""
    gray = export_slice("neck")
    back, _ = roundtrip_in(gray, 500.0, 2000.0, 1.0)
    assert len(np.unique(back)) < len(np.unique(gray)) / 2


def test_a_refused_estimate_comes_back_through_the_true_window() -> None:
    """A flat grey slice has no landmarks: the estimate refuses, the inverse is taken."""
    gray = np.full((64, 64), 150, np.uint8)
    gray[:8] = 0
    back, how = roundtrip_in(gray, 500.0, 2000.0, 1.0)
    assert how == "inverse"
    assert abs(int(back[32, 32]) - 150) <= 8 and (back[:8] == 0).all()


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_copies_per_probability(p: float) -> None:
    images = np.stack([np.repeat(export_slice("neck", s)[..., None], 3, -1) for s in range(8)])
    before = images.copy()
    chosen, copies = roundtrip_copies(images, p, seed=3)
    assert (images == before).all()  # the originals are never changed
    assert copies.shape == (len(chosen), *images.shape[1:]) and copies.dtype == np.uint8
    if p == 0.0:
        assert len(chosen) == 0  # off: the fit arrays are exactly as before
    if p == 1.0:
        assert (chosen == np.arange(8)).all()
    again = roundtrip_copies(images, p, seed=3)
    assert (again[0] == chosen).all() and (again[1] == copies).all()  # deterministic by seed
    for k, i in enumerate(chosen):
        assert (copies[k][..., 0] == copies[k][..., 2]).all()
        assert (copies[k][..., 0][images[i][..., 0] == 255] == 255).all()


def test_off_by_default_and_checked() -> None:
    assert TrainConfig().window_roundtrip == 0.0
    assert parse_args(["--arch", "custom"]).window_roundtrip == 0.0
    assert parse_args(["--window-roundtrip", "0.5"]).window_roundtrip == 0.5
    with pytest.raises(ValueError, match="probability"):
        roundtrip_copies(np.zeros((1, 8, 8, 3), np.uint8), 1.5, seed=0)
