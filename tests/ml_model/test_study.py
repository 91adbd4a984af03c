"""Study mode: ordering, series checks, aggregation and the CLI."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model import predict
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.transforms import decode_image, image_to_array
from ml_model.inference.core import InferenceCore
from ml_model.inference.study import (
    SliceFile,
    StudyError,
    aggregate,
    order_slices,
    slice_number,
)
from ml_model.training.study_threshold import calibrate_study_threshold
from tests.conftest import gray_to_export_window_dicom, make_dicom, synthetic_slice


@pytest.fixture(scope="module")
def predictor() -> InferenceCore:
    return InferenceCore(DEFAULT_MODEL_DIR)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("CSFDV1B12 (5).png", 5),
        ("CSFDV1B12 (15)-rotated1.png", 15),
        ("slice_012.png", 12),
        ("IM-0001-0042.jpg", 42),
        ("scan.png", None),
    ],
)
def test_slice_number(name: str, expected: int | None) -> None:
    assert slice_number(name) == expected


@pytest.mark.parametrize(
    ("probs", "k", "expected"),
    [
        ([0.1, 0.9, 0.2, 0.8], 2, 0.85),
        ([0.1, 0.9, 0.2, 0.8], 1, 0.9),
        ([0.3], 2, 0.3),  # fewer slices than k
        ([0.5, 0.5, 0.5], 3, 0.5),
    ],
)
def test_aggregate_top_k_mean(probs: list[float], k: int, expected: float) -> None:
    assert aggregate(np.array(probs), k) == pytest.approx(expected)


def dicom_series(count: int, series: str = "1.2.3", shuffle_seed: int = 0) -> list[SliceFile]:
    items = [
        SliceFile(
            f"file{i}.dcm",
            make_dicom(
                np.full((8, 8), i, np.uint16), z=10.0 * i, instance=count - i, series_uid=series
            ),
        )
        for i in range(count)
    ]
    random.Random(shuffle_seed).shuffle(items)
    return items


def test_dicom_ordered_by_position_head_first() -> None:
    ordered = order_slices(dicom_series(6))
    assert [s.position for s in ordered] == [50.0, 40.0, 30.0, 20.0, 10.0, 0.0]


def test_dicom_falls_back_to_instance_number() -> None:
    items = [
        SliceFile(f"f{n}.dcm", make_dicom(np.zeros((4, 4), np.uint16), instance=n, series_uid="9"))
        for n in (3, 1, 2)
    ]
    assert [s.position for s in order_slices(items)] == [1.0, 2.0, 3.0]


def test_mixed_series_refused() -> None:
    items = dicom_series(3, "1.2.3") + dicom_series(2, "4.5.6")
    with pytest.raises(StudyError, match="different series"):
        order_slices(items)


def test_mixed_dicom_and_png_refused(tmp_path: Path) -> None:
    png = tmp_path / "s (1).png"
    Image.fromarray(synthetic_slice(0, 0)).save(png)
    with pytest.raises(StudyError, match="mix"):
        order_slices([*dicom_series(2), SliceFile(png.name, png.read_bytes())])


def test_png_without_number_refused() -> None:
    with pytest.raises(StudyError, match="no slice number"):
        order_slices([SliceFile("scan.png", b"x" * 200)])


def test_calibration_separates_synthetic_studies() -> None:
    labels = np.array([0] * 40 + [1] * 10)
    probs = np.where(labels == 1, 0.9, 0.1)
    groups = np.array([f"n{i}" for i in range(40)] + [f"f{i // 5}" for i in range(10)])
    study = calibrate_study_threshold(probs, labels, groups, studies=50)
    sensitive = study["operating_points"]["sensitive"]
    assert sensitive["recall"] == 1.0 and sensitive["specificity"] == 1.0
    assert 0.1 < sensitive["threshold"] < 0.9


def real_series(shared_data: Path, fracture_slices: int) -> list[SliceFile]:
    """Ten normal originals and a few fracture originals, written as DICOM with positions."""
    normals = sorted((shared_data / "train" / "normal").glob("* ([0-9]*).png"))[:10]
    fractures = sorted((shared_data / "train" / "fracture").glob("* ([0-9]*).png"))
    paths = normals[:5] + fractures[:fracture_slices] + normals[5:]
    items = []
    for index, path in enumerate(paths):
        gray = decode_image(path.read_bytes())
        data = gray_to_export_window_dicom(
            gray, z=-3.0 * index, instance=index + 1, series_uid="1.2.826.0.1"
        )
        items.append(SliceFile(f"{index:03d}.dcm", data))
    return items


def test_dicom_written_slice_decodes_to_the_original(shared_data: Path) -> None:
    path = sorted((shared_data / "train" / "normal").glob("*.png"))[0]
    gray = decode_image(path.read_bytes())
    assert np.array_equal(decode_image(gray_to_export_window_dicom(gray)), gray)


def test_study_on_real_slices(shared_data: Path, predictor: InferenceCore) -> None:
    items = real_series(shared_data, fracture_slices=2)
    result = predictor.study(items)
    # Order follows z (head first), not upload order, and each score is the single-slice score.
    assert result.names == [f"{i:03d}.dcm" for i in range(len(items))]
    for item, p in zip(items, result.probabilities, strict=True):
        expected = predictor.scores(image_to_array(item.data, predictor.img_size)).probability[0]
        assert p == pytest.approx(expected, abs=1e-5)
    assert result.probability == pytest.approx(aggregate(result.probabilities))
    assert set(result.top_indices) == set(np.argsort(-result.probabilities)[:2].tolist())
    shuffled = list(items)
    random.Random(3).shuffle(shuffled)
    again = predictor.study(shuffled)
    assert again.names == result.names
    assert again.probability == pytest.approx(result.probability)


def test_study_cli(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    items = real_series(shared_data, fracture_slices=1)
    for item in items:
        (tmp_path / item.name).write_bytes(item.data)
    assert predict.main(["--study", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "study:" in out and "most suspicious" in out
