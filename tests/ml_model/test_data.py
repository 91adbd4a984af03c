"""Data discovery on both layouts, base-slice ids and grouped splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model.config import EXPORT_WINDOW
from ml_model.data.dataset import (
    DatasetError,
    base_slice_id,
    describe_split,
    find_images,
    grouped_kfold,
    grouped_split,
    leave_one_series_out,
    load_arrays,
    make_dataset,
    naive_split,
    series_of,
)
from tests.conftest import WriteDataset


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("CSFDV1B12 (5).png", "CSFDV1B12 (5)"),
        ("CSFDV1B12 (5)-sharpened1-rotated3.png", "CSFDV1B12 (5)"),
        ("CSFDV1B10 (18)-rotated3-rotated2.png", "CSFDV1B10 (18)"),
        ("CSFDV1B12 (15)-rotated1.png", "CSFDV1B12 (15)"),
        ("plain_name.jpg", "plain_name"),
    ],
)
def test_base_slice_id(filename: str, expected: str) -> None:
    assert base_slice_id(filename) == expected


@pytest.mark.parametrize("layout", ["flat", "kaggle"])
def test_find_images_reads_both_layouts(write_dataset: WriteDataset, layout: str) -> None:
    root = write_dataset(layout, slices_per_class=3, copies=2)
    records = find_images(root)
    extra = 2 if layout == "kaggle" else 0  # the val/ folder holds one image per class
    assert len(records) == 2 * 3 * 2 + extra
    assert {r.label for r in records} == {0, 1}
    assert all(r.path.parent.name == ("fracture" if r.label else "normal") for r in records)


def test_find_images_can_pick_a_split(write_dataset: WriteDataset) -> None:
    root = write_dataset("kaggle", slices_per_class=2, copies=1)
    assert len(find_images(root, splits=["val"])) == 2


def test_unknown_class_folder_is_named(write_dataset: WriteDataset) -> None:
    root = write_dataset("flat")
    (root / "maybe").mkdir()
    with pytest.raises(DatasetError, match=r"unknown class folder .*maybe"):
        find_images(root)


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        find_images(tmp_path / "nope")
    (tmp_path / "fracture").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        find_images(tmp_path)


def test_unreadable_file_is_named_before_training(write_dataset: WriteDataset) -> None:
    root = write_dataset("flat", slices_per_class=1, copies=1)
    (root / "fracture" / "broken (9).png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    with pytest.raises(DatasetError, match=r"broken \(9\)\.png"):
        load_arrays(find_images(root), 32, EXPORT_WINDOW, progress=False)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_grouped_split_never_shares_a_slice(write_dataset: WriteDataset, seed: int) -> None:
    records = find_images(write_dataset("flat", slices_per_class=5, copies=4))
    train, val = grouped_split(records, 0.2, seed)
    assert {records[i].group for i in train}.isdisjoint({records[i].group for i in val})
    summary = describe_split(records, train, val)
    assert summary["overlap"]["slices_on_both_sides"] == 0
    assert summary["val"]["fracture_slices"] >= 1 and summary["val"]["normal_slices"] >= 1


def test_grouped_kfold_covers_every_file_once(write_dataset: WriteDataset) -> None:
    records = find_images(write_dataset("flat", slices_per_class=5, copies=2))
    folds = grouped_kfold(records, n_splits=5, seed=3)
    val_all = np.concatenate([val for _, val in folds])
    assert sorted(val_all) == list(range(len(records)))
    for train, val in folds:
        assert {records[i].group for i in train}.isdisjoint({records[i].group for i in val})


def test_naive_split_leaks_slices(write_dataset: WriteDataset) -> None:
    """The file-level split shows why it inflates scores: copies land on both sides."""
    records = find_images(write_dataset("flat", slices_per_class=5, copies=4))
    train, val = naive_split(records, 0.3, seed=0)
    assert describe_split(records, train, val)["overlap"]["slices_on_both_sides"] > 0


def test_real_data_grouped_split(shared_data: Path) -> None:
    records = find_images(shared_data, splits=["train"])
    assert len(records) == 3632
    assert len({r.group for r in records}) == 174
    train, val = grouped_split(records, 0.2, seed=42)
    assert {records[i].group for i in train}.isdisjoint({records[i].group for i in val})


def test_real_data_leave_one_series_out(shared_data: Path) -> None:
    """A fold per CT series (patient): no series on both sides, every file held out once."""
    records = find_images(shared_data, splits=["train"])
    folds = leave_one_series_out(records)
    assert [name for name, _, _ in folds] == ["CSFDV1B10", "CSFDV1B11", "CSFDV1B12"]
    held = np.concatenate([test for _, _, test in folds])
    assert sorted(held.tolist()) == list(range(len(records)))
    for name, train, test in folds:
        assert {series_of(records[i].group) for i in test} == {name}
        assert name not in {series_of(records[i].group) for i in train}


def test_make_dataset_batches_decoded_images(write_dataset: WriteDataset) -> None:
    records = find_images(write_dataset("flat", slices_per_class=2, copies=2))
    dataset = make_dataset(
        [r.path for r in records], [r.label for r in records], 48, batch_size=3, training=True
    )
    images, labels = next(iter(dataset))
    assert tuple(images.shape) == (3, 48, 48, 3) and tuple(labels.shape) == (3,)
    assert float(images.numpy().max()) <= 255.0 + 1e-3


def test_dataset_matches_the_shared_transform(write_dataset: WriteDataset) -> None:
    """tf.data decodes through the same function as the CLI and server."""
    from ml_model.imaging.transforms import load_image

    records = find_images(write_dataset("flat", slices_per_class=1, copies=2))
    dataset = make_dataset(
        [r.path for r in records], [r.label for r in records], 40, batch_size=8, training=False
    )
    images, _ = next(iter(dataset))
    expected = np.stack([load_image(r.path, 40, *EXPORT_WINDOW) for r in records]).astype(
        np.float32
    )
    assert np.array_equal(images.numpy(), expected)


def test_rgb_and_gray_copies_decode_alike(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 255, (50, 50), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "b.png")
    from ml_model.imaging.transforms import load_image

    assert np.array_equal(
        load_image(tmp_path / "a.png", 50, *EXPORT_WINDOW),
        load_image(tmp_path / "b.png", 50, *EXPORT_WINDOW),
    )


def test_random_affine_without_ranges_is_identity() -> None:
    from ml_model.data.dataset import RandomAffine

    images = np.random.default_rng(0).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32)
    out = RandomAffine(0.0, 0.0, 0.0, seed=1)(images, training=True)
    np.testing.assert_allclose(out.numpy(), images, atol=1e-3)


def test_random_affine_stays_in_range_and_is_off_at_inference() -> None:
    from ml_model.data.dataset import RandomAffine

    images = np.zeros((4, 32, 32, 3), np.float32)
    images[:, 12:20, 12:20] = 255.0  # a centred square
    layer = RandomAffine(0.05, 0.1, 0.05, seed=3)
    out = layer(images, training=True).numpy()
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 255.0 + 1e-3
    assert not np.allclose(out, images)  # something moved
    # The square stays near the centre: the ranges are mild.
    assert out[:, 14:18, 14:18].mean() > 200
    assert np.array_equal(layer(images, training=False), images)
