"""Out-of-distribution guard: natural photos are refused, every real slice passes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model.config import DEFAULT_MODEL_DIR, RESULT_OUT_OF_DISTRIBUTION
from ml_model.data import find_images, load_arrays
from ml_model.ood import OODGuard, fit_guard
from ml_model.predictor import Predictor
from ml_model.transforms import image_to_array

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(DEFAULT_MODEL_DIR)


def photo_bytes(name: str) -> bytes:
    pixels = getattr(skimage_data, name)()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_fit_guard_threshold_covers_training_data() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(500, 8))
    guard = fit_guard(train, rng.normal(size=(100, 8)))
    assert guard.in_distribution(train).all()
    assert not guard.in_distribution(np.full((1, 8), 10.0)).any()


def test_guard_round_trips_through_json(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    guard = fit_guard(rng.normal(size=(200, 4)), rng.normal(size=(50, 4)))
    guard.save(tmp_path)
    loaded = OODGuard.load(tmp_path)
    assert loaded is not None
    points = rng.normal(size=(10, 4))
    np.testing.assert_allclose(loaded.distance(points), guard.distance(points))
    assert loaded.threshold == guard.threshold
    assert OODGuard.load(tmp_path / "missing") is None


def test_default_bundle_has_a_guard(predictor: Predictor) -> None:
    assert predictor.ood_guard is not None


@pytest.mark.parametrize("name", ["astronaut", "chelsea", "coffee", "rocket"])
def test_natural_photos_are_refused(predictor: Predictor, name: str) -> None:
    image = image_to_array(photo_bytes(name), predictor.img_size)
    prediction = predictor.run(image)
    assert not prediction.in_distribution[0]
    assert predictor.result(0.99, 0.5, bool(prediction.in_distribution[0])) == (
        RESULT_OUT_OF_DISTRIBUTION
    )


def test_every_real_slice_passes(predictor: Predictor, shared_data: Path) -> None:
    images, _ = load_arrays(find_images(shared_data), predictor.img_size, progress=False)
    inside = np.concatenate(
        [predictor.run(images[i : i + 100]).in_distribution for i in range(0, len(images), 100)]
    )
    assert inside.all(), f"{(~inside).sum()} real slices refused"
