"""The synthetic RSNA 2022-format studies: layout, DICOM variety, HU, labels, determinism."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ml_model.imaging.dicom import read_dicom
from testing import rsna_synth
from testing.rsna_synth import SynthSet, generate, load_truth

STUDIES, SLICES, SIZE = 8, 24, 64


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    return generate(tmp_path_factory.mktemp("synth"), STUDIES, seed=3, size=SIZE, slices=SLICES,
                    segmentations=0.5, boxed=0.75)  # fmt: skip


@pytest.fixture(scope="module")
def level_synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    return generate(tmp_path_factory.mktemp("level"), 6, seed=4, label_mode="level",
                    size=SIZE, slices=SLICES, boxed=1.0)  # fmt: skip


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_competition_layout(synth: SynthSet) -> None:
    root = synth.root
    studies = rows(root / "train.csv")
    assert list(studies[0]) == list(rsna_synth.STUDY_COLUMNS)
    assert {r["StudyInstanceUID"] for r in studies} == {s.uid for s in synth.studies}
    assert list(rows(root / "train_bounding_boxes.csv")[0]) == list(rsna_synth.BOX_COLUMNS)
    for study in synth.studies:
        files = sorted(int(p.stem) for p in (root / "train_images" / study.uid).glob("*.dcm"))
        assert files == list(range(1, len(study.slice_numbers) + 1))
        assert (root / "segmentations" / f"{study.uid}.nii.gz").is_file() == study.segmentation
    assert sum(s.positive for s in synth.studies) == STUDIES // 2
    assert sum(s.segmentation for s in synth.studies) == STUDIES // 2


def test_dicom_variety(synth: SynthSet) -> None:
    """Several transfer syntaxes, files without Modality, file numbers not head to foot."""
    import pydicom

    syntaxes, without_modality = set(), 0
    for study in synth.studies:
        for path in (synth.root / "train_images" / study.uid).glob("*.dcm"):
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
            without_modality += "Modality" not in ds
            assert ds.SOPClassUID.name == "CT Image Storage"
            assert float(ds.RescaleIntercept) == -1024.0
    assert {"Explicit VR Little Endian", "Implicit VR Little Endian", "RLE Lossless"} <= syntaxes
    assert without_modality > 0
    numberings = {s.numbering for s in synth.studies}
    assert {"head_first", "foot_first", "shuffled"} <= numberings


def test_hounsfield_units(synth: SynthSet) -> None:
    """Air outside, soft tissue inside, bone on the vertebral levels."""
    study = synth.studies[0]
    middle = len(study.slice_numbers) // 2
    number = study.slice_numbers[middle]
    hu = read_dicom((synth.root / "train_images" / study.uid / f"{number}.dcm").read_bytes()).values
    assert abs(float(np.median(hu[:4, :4])) + 1000) < 40  # air in the corner
    centre = hu[SIZE // 2 - 20 : SIZE // 2 + 20, SIZE // 2 - 20 : SIZE // 2 + 20]
    assert -150 < float(np.median(centre)) < 150  # soft tissue
    with_bone = [
        read_dicom((synth.root / "train_images" / study.uid / f"{n}.dcm").read_bytes()).values.max()
        for n, levels in zip(study.slice_numbers, study.levels, strict=True)
        if levels.any()
    ]
    assert np.median(with_bone) > 600


def test_independent_lesions_are_the_boxes(synth: SynthSet) -> None:
    boxes: dict[str, set[int]] = {}
    for row in rows(synth.root / "train_bounding_boxes.csv"):
        boxes.setdefault(row["StudyInstanceUID"], set()).add(int(row["slice_number"]))
        assert 0 <= float(row["x"]) < SIZE and float(row["width"]) > 0
    for study in synth.studies:
        if not study.positive:
            assert not study.fractured and not study.lesion_slices and study.uid not in boxes
            continue
        assert study.fractured and study.lesion_slices
        if study.boxed:
            assert boxes[study.uid] == set(study.box_slices) == set(study.lesion_slices)
        else:
            assert study.uid not in boxes
        # every lesion lies on a slice showing a fractured vertebra
        for number in study.lesion_slices:
            levels = study.levels[study.slice_numbers.index(number)]
            shown = {rsna_synth.VERTEBRAE[i] for i in np.flatnonzero(levels)}
            assert shown & set(study.fractured)


def test_level_mode_boxes_c1_c2_without_lesions(level_synth: SynthSet) -> None:
    positives = [s for s in level_synth.studies if s.positive]
    assert positives
    for study in level_synth.studies:
        assert not study.lesion_slices
        assert set(study.fractured) <= {"C1", "C2"}
        for number in study.box_slices:
            levels = study.levels[study.slice_numbers.index(number)]
            assert levels[:2].any()  # C1 or C2 shows on every boxed slice
    assert all(s.box_slices for s in positives)


def test_deterministic_by_seed(tmp_path: Path) -> None:
    first, second = (generate(tmp_path / name, 2, seed=3, size=48, slices=12,
                              segmentations=0.5) for name in "ab")  # fmt: skip
    for one, two in zip(first.studies, second.studies, strict=True):
        assert one.uid == two.uid and one.slice_numbers == two.slice_numbers
        for name in ("1.dcm", f"{len(one.slice_numbers)}.dcm"):
            path = Path("train_images") / one.uid / name
            assert (first.root / path).read_bytes() == (second.root / path).read_bytes()
    for name in ("train.csv", "train_bounding_boxes.csv"):
        assert (first.root / name).read_text() == (second.root / name).read_text()
    other = generate(tmp_path / "c", 1, seed=5, size=48, slices=12)
    assert other.studies[0].uid not in {s.uid for s in first.studies}


def test_truth_file_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert rsna_synth.main(["--out", str(tmp_path), "--studies", "2", "--size", "48",
                            "--slices", "12", "--no-progress"]) == 0  # fmt: skip
    assert "2 studies" in capsys.readouterr().out
    truth = load_truth(tmp_path)
    assert truth["label_mode"] == "independent" and len(truth["studies"]) == 2
    assert np.asarray(truth["studies"][0]["levels"]).shape[1] == 7


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label_mode"):
        generate(tmp_path, 1, label_mode="kaggle")


@pytest.mark.parametrize("level", [1, 2, 4, 7])
def test_a_lesion_breaks_the_cortex_on_every_slice_it_is_boxed_on(level: int) -> None:
    """A fracture a reader can see: on each boxed slice the lucent line replaces at least
    LESION_MIN_CORTEX_MM2 of cortical bone of the fractured vertebra (not a graze of a few
    pixels at its edge, which no box would frame)."""
    size, spacing = 128, 2.0
    for seed in range(5):
        rng = np.random.default_rng([seed, level])
        anatomy = rsna_synth._anatomy(rng)
        pixel_mm = anatomy.fov_mm / size
        axis = (np.arange(size) - (size - 1) / 2) * pixel_mm
        x, y = np.meshgrid(axis, axis)
        depths = np.arange(0.0, anatomy.ranges[7][1] + 4.0, spacing)
        slices = [rsna_synth._slice(anatomy, float(d), x, y, rng) for d in depths]
        hu = np.stack([s[0] for s in slices])
        labels = np.stack([s[1] for s in slices])
        before = hu.copy()
        found = rsna_synth._implant(hu, labels, level, (x, y), pixel_mm, rng)
        assert found, (seed, level)
        cortical = (rsna_synth.ARCH + rsna_synth.CANCELLOUS) / 2
        for i, _ in found:
            broken = (before[i] >= cortical) & (hu[i] != before[i]) & (labels[i] == level)
            assert broken.sum() * pixel_mm**2 >= rsna_synth.LESION_MIN_CORTEX_MM2, (seed, i)
