"""Study mode: ordering, series checks, aggregation and the CLI."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml_model import predict
from ml_model.config import DEFAULT_MODEL_DIR, EXPORT_WINDOW
from ml_model.imaging.transforms import decode_image, image_to_array
from ml_model.inference.core import InferenceCore
from ml_model.inference.study import (
    SliceFile,
    StudyError,
    aggregate,
    arrange_slices,
    order_slices,
    slice_number,
)
from ml_model.training.study_threshold import calibrate_study_threshold
from testing.dicom_writers import patch_element, scanner_ct_dicom
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


def geometry_series(
    positions: list[tuple[float, float, float]],
    orientation: tuple[float, ...] | list[tuple[float, ...]] = (1, 0, 0, 0, 1, 0),
) -> list[SliceFile]:
    """8 x 8 CT slices at the given ImagePositionPatient (and orientation), upload order."""
    orientations = orientation if isinstance(orientation, list) else [orientation] * len(positions)
    return [
        SliceFile(f"s{i:02d}.dcm", scanner_ct_dicom(np.full((8, 8), 40.0), position=p,
                  orientation=o, instance=i + 1, series_uid="1.2.3"))
        for i, (p, o) in enumerate(zip(positions, orientations, strict=True))
    ]  # fmt: skip


def test_positions_in_mm_along_the_slice_normal() -> None:
    axial = geometry_series([(0, 0, z) for z in (0.0, 5.0, 2.5, 7.5)])
    order = arrange_slices(axial)
    assert order.position_unit == "mm" and order.warnings == []
    assert [s.position for s in order.slices] == [7.5, 5.0, 2.5, 0.0]  # head first
    # An axial series whose column direction is flipped: its normal points to the feet, the
    # positions (along the head-pointing normal) are still z, head first.
    flipped = geometry_series([(0, 0, z) for z in (0.0, 5.0, 2.5)], (1, 0, 0, 0, -1, 0))
    assert [s.position for s in order_slices(flipped)] == [5.0, 2.5, 0.0]
    # A gantry-tilted series: ordered along the tilted normal, not along z alone.
    tilt = np.deg2rad(20)
    normal = np.array([0.0, -np.sin(tilt), np.cos(tilt)])
    tilted = [tuple(np.array([0.0, 30.0, 0.0]) + k * 2.0 * normal) for k in (2, 0, 3, 1)]
    orientation = (1, 0, 0, 0, float(np.cos(tilt)), float(np.sin(tilt)))
    order = arrange_slices(geometry_series(tilted, orientation))  # type: ignore[arg-type]
    assert [s.name for s in order.slices] == ["s02.dcm", "s00.dcm", "s03.dcm", "s01.dcm"]
    steps = np.diff([s.position for s in order.slices])
    assert steps == pytest.approx([-2.0, -2.0, -2.0], abs=1e-4)  # DS keeps 16 characters
    assert order.warnings == []


def test_gaps_duplicates_and_mixed_orientation_are_warnings() -> None:
    zs = [0.0, 2.0, 4.0, 4.0, 6.0, 14.0, 16.0]
    order = arrange_slices(geometry_series([(0, 0, z) for z in zs]))
    assert len(order.slices) == len(zs)  # nothing dropped
    (duplicate,) = [w for w in order.warnings if w.startswith("duplicate")]
    assert "4 mm" in duplicate
    (gap,) = [w for w in order.warnings if w.startswith("gap")]
    assert "gap of 8 mm" in gap and "usual spacing is 2 mm" in gap
    orientations: list[tuple[float, ...]] = [(1, 0, 0, 0, 1, 0)] * 4 + [(1, 0, 0, 0, 0.8, 0.6)]
    mixed = arrange_slices(geometry_series([(0, 0, float(z)) for z in range(5)], orientations))
    assert any(w.startswith("mixed orientation: 1 of 5") for w in mixed.warnings)
    sagittal = arrange_slices(geometry_series([(x, 0, 0) for x in (0.0, 1.0)], (0, 1, 0, 0, 0, -1)))
    assert any("not axial" in w for w in sagittal.warnings)


@pytest.mark.parametrize(
    ("keyword", "raw", "unit", "warning"),
    [
        ("ImagePositionPatient", b"1.5", "index", "ImagePositionPatient (0020,0032) has 1 value"),
        ("ImagePositionPatient", b"a\\b\\c", "index", "is not a number: 'a'"),
        ("ImagePositionPatient", b"1\\\\3", "index", "is not a number: ''"),
        ("ImagePositionPatient", b"1e999\\0\\0", "index", "not a finite number"),
        ("ImageOrientationPatient", b"1\\0", "mm", "has 2 values, 6 expected"),
        ("InstanceNumber", b"abc", "mm", "InstanceNumber (0020,0013) is not a number: 'abc'"),
        ("InstanceNumber", b"9" * 5000, "mm", "InstanceNumber (0020,0013)"),
    ],
    ids=[
        "ipp-one-value",
        "ipp-not-numbers",
        "ipp-empty-part",
        "ipp-infinite",
        "iop-two-values",
        "instance-abc",
        "instance-5000-digits",
    ],
)
def test_header_values_are_validated(keyword: str, raw: bytes, unit: str, warning: str) -> None:
    """One slice with a bad value: a warning naming it, and the study still ordered (by
    InstanceNumber when a position is unusable)."""
    items = geometry_series([(0, 0, float(z)) for z in range(4)])
    items[1] = SliceFile(items[1].name, patch_element(items[1].data, keyword, raw))
    order = arrange_slices(items)
    assert order.position_unit == unit
    assert len(order.slices) == 4
    assert any(warning in w and "s01.dcm" in w for w in order.warnings), order.warnings


def test_no_position_and_no_instance_is_a_study_error() -> None:
    items = geometry_series([(0, 0, float(z)) for z in range(3)])
    damaged = patch_element(items[0].data, "ImagePositionPatient", b"x")
    items[0] = SliceFile(items[0].name, patch_element(damaged, "InstanceNumber", b"y"))
    with pytest.raises(StudyError, match=r"neither is usable in: s00\.dcm"):
        arrange_slices(items)


def test_unreadable_and_non_image_files_are_left_out_with_a_reason() -> None:
    from pydicom.data import get_testdata_file

    sr = Path(get_testdata_file("test-SR.dcm")).read_bytes()  # type: ignore[arg-type]
    items = [*geometry_series([(0, 0, 1.0), (0, 0, 2.0)]), SliceFile("report.dcm", sr)]
    order = arrange_slices(items)
    assert [s.name for s in order.slices] == ["s01.dcm", "s00.dcm"]
    ((name, reason),) = order.errors
    assert name == "report.dcm" and "not an image (Comprehensive SR Storage)" in reason


def test_png_study_positions_are_indices() -> None:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(0, 0)).save(buffer, "PNG")
    items = [SliceFile(f"s ({n}).png", buffer.getvalue()) for n in (3, 1, 2, 2)]
    order = arrange_slices(items)
    assert order.position_unit == "index"
    assert [s.position for s in order.slices] == [1.0, 2.0, 2.0, 3.0]
    assert any(w.startswith("duplicate position 2:") for w in order.warnings)


def test_enhanced_ct_study_reads_each_frame(predictor: InferenceCore) -> None:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("eCT_Supplemental.dcm")).read_bytes()  # type: ignore[arg-type]
    study = predictor.study([SliceFile("enhanced.dcm", data)])
    assert sorted(study.names) == ["enhanced.dcm [frame 1/2]", "enhanced.dcm [frame 2/2]"]
    assert study.position_unit == "mm" and study.errors == []
    assert study.positions[0] > study.positions[1]  # head first, in mm
    assert [s.frame for s in study.sources] in ([1, 0], [0, 1])


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
    # Drift monitoring's reference: the synthetic study scores, half of them fractures.
    histogram = study["score_histogram"]
    assert histogram.n == 50
    above = [f for f, e in zip(histogram.fractions, histogram.edges, strict=False) if e >= 0.5]
    assert sum(above) == pytest.approx(0.5)


def real_series(shared_data: Path, fracture_slices: int) -> list[SliceFile]:
    """Ten normal originals and a few fracture originals, written as DICOM with positions."""
    normals = sorted((shared_data / "train" / "normal").glob("* ([0-9]*).png"))[:10]
    fractures = sorted((shared_data / "train" / "fracture").glob("* ([0-9]*).png"))
    paths = normals[:5] + fractures[:fracture_slices] + normals[5:]
    items = []
    for index, path in enumerate(paths):
        gray = decode_image(path.read_bytes(), *EXPORT_WINDOW)
        data = gray_to_export_window_dicom(
            gray, z=-3.0 * index, instance=index + 1, series_uid="1.2.826.0.1"
        )
        items.append(SliceFile(f"{index:03d}.dcm", data))
    return items


def test_dicom_written_slice_decodes_to_the_original(shared_data: Path) -> None:
    path = sorted((shared_data / "train" / "normal").glob("*.png"))[0]
    gray = decode_image(path.read_bytes(), *EXPORT_WINDOW)
    assert np.array_equal(decode_image(gray_to_export_window_dicom(gray), *EXPORT_WINDOW), gray)


def test_study_on_real_slices(shared_data: Path, predictor: InferenceCore) -> None:
    items = real_series(shared_data, fracture_slices=2)
    result = predictor.study(items)
    # Order follows z (head first), not upload order, and each score is the single-slice score.
    assert result.names == [f"{i:03d}.dcm" for i in range(len(items))]
    for item, p in zip(items, result.probabilities, strict=True):
        expected = predictor.scores(
            image_to_array(item.data, predictor.bundle.img_size, *predictor.bundle.window)
        ).probability[0]
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
