"""RSNA 2022 data: labels, study discovery, the resumable cache, folds and the 2.5D input."""

from __future__ import annotations

import gc
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ml_model.card import STUDY_OUTPUTS
from ml_model.data import rsna
from ml_model.data.rsna import (
    CacheMismatchError,
    StudyLabels,
    build_cache,
    cached_uids,
    find_studies,
    load_study,
    patient_folds,
    read_cached,
    read_labels,
    slice_labels,
)
from ml_model.imaging.transforms import neighbour_offset, stack_neighbours
from testing.rsna_synth import SynthSet, generate

SIZE = 48
WINDOW = (400.0, 1800.0)
REAL_SAMPLE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "rsna-cspine-sample"


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> SynthSet:
    return generate(tmp_path_factory.mktemp("rsna"), 7, seed=11, size=64, slices=20,
                    segmentations=0.5, boxed=0.75)  # fmt: skip


@pytest.fixture(scope="module")
def cache(synth: SynthSet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    report = build_cache(synth.root, folder, SIZE, WINDOW, progress=False)
    assert report.read_errors == [] and report.failed == []
    assert sorted(report.written) == sorted(s.uid for s in synth.studies)
    return folder


def labels(positive: bool, boxed: tuple[int, ...] = ()) -> StudyLabels:
    return StudyLabels("1.2.3", np.array([positive, positive, 0, 0, 0, 0, 0, 0], np.float32),
                       frozenset(boxed))  # fmt: skip


# --- labels -------------------------------------------------------------------------------


def test_slice_label_rules() -> None:
    numbers = [1, 2, 3, 4]
    assert slice_labels(labels(True, (2, 3)), numbers).tolist() == [0, 1, 1, 0]  # boxed study
    assert slice_labels(labels(False), numbers).tolist() == [0, 0, 0, 0]  # patient-negative
    assert slice_labels(labels(True), numbers).tolist() == [-1, -1, -1, -1]  # unknown
    assert slice_labels(labels(True), numbers).dtype == np.int8


def test_read_labels_from_the_csvs(synth: SynthSet) -> None:
    read = read_labels(synth.root)
    assert set(read) == {s.uid for s in synth.studies} == set(find_studies(synth.root))
    for study in synth.studies:
        got = read[study.uid]
        assert got.targets.shape == (len(STUDY_OUTPUTS),)
        assert got.positive == study.positive
        assert got.boxed_slices == frozenset(study.box_slices)
        assert {STUDY_OUTPUTS[i] for i in np.flatnonzero(got.targets[1:]) + 1} == set(
            study.fractured
        )


def test_malformed_labels_are_refused(tmp_path: Path) -> None:
    with pytest.raises(rsna.RsnaDataError, match="not the RSNA 2022 layout"):
        read_labels(tmp_path)
    (tmp_path / "train.csv").write_text("StudyInstanceUID,patient_overall\n1.2,1\n")
    with pytest.raises(rsna.RsnaDataError, match="missing column"):
        read_labels(tmp_path)


# --- the cache ----------------------------------------------------------------------------


def test_cache_orders_by_position_not_file_name(synth: SynthSet, cache: Path) -> None:
    assert {s.numbering for s in synth.studies} >= {"foot_first", "shuffled"}
    for study in synth.studies:
        cached = load_study(cache, study.uid)
        assert cached.slice_numbers.tolist() == list(study.slice_numbers)
        assert np.all(np.diff(cached.positions_mm) < 0)  # head to foot
        assert cached.spacing_mm == pytest.approx(study.spacing_mm, abs=1e-3)
        assert cached.pixels.shape == (len(study.slice_numbers), SIZE, SIZE)
        assert cached.pixels.dtype == np.uint8


def test_cached_labels(synth: SynthSet, cache: Path) -> None:
    seen = set()
    for study in synth.studies:
        cached = load_study(cache, study.uid)
        expected = slice_labels(read_labels(synth.root)[study.uid], study.slice_numbers)
        assert cached.slice_label.tolist() == expected.tolist()
        if study.boxed:
            boxed = {int(n) for n, v in zip(cached.slice_numbers, cached.slice_label,
                                            strict=True) if v == 1}  # fmt: skip
            assert boxed == set(study.box_slices)
            seen.add("boxed")
        elif study.positive:
            assert set(cached.slice_label.tolist()) == {-1}
            seen.add("unknown")
        else:
            assert set(cached.slice_label.tolist()) == {0}
            seen.add("negative")
        assert cached.study_labels[0] == float(study.positive)
    assert seen == {"boxed", "unknown", "negative"}


def test_levels_from_segmentations_match_the_truth(synth: SynthSet, cache: Path) -> None:
    segmented = [s for s in synth.studies if s.segmentation]
    assert segmented and any(s.numbering != "head_first" for s in segmented)
    for study in synth.studies:
        cached = load_study(cache, study.uid)
        assert cached.levels_known == study.segmentation
        if study.segmentation:
            np.testing.assert_array_equal(cached.levels, study.levels)
        else:
            assert not cached.levels.any()


def test_resume_skips_finished_studies(synth: SynthSet, cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    shutil.copytree(cache, folder)
    again = build_cache(synth.root, folder, SIZE, WINDOW, progress=False)
    assert again.written == [] and len(again.skipped) == len(synth.studies)
    # an interrupted run: one study never renamed into place, its temporary file left behind
    uid = synth.studies[2].uid
    (folder / f"{uid}.npz").unlink()
    (folder / f"{uid}.npz.tmp").write_bytes(b"half a study")
    assert uid not in cached_uids(folder)
    resumed = build_cache(synth.root, folder, SIZE, WINDOW, progress=False)
    assert resumed.written == [uid] and len(resumed.skipped) == len(synth.studies) - 1
    assert not (folder / f"{uid}.npz.tmp").exists()
    np.testing.assert_array_equal(load_study(folder, uid).pixels, load_study(cache, uid).pixels)


def test_a_cache_made_otherwise_is_refused(synth: SynthSet, cache: Path) -> None:
    with pytest.raises(CacheMismatchError, match="size"):
        build_cache(synth.root, cache, SIZE * 2, WINDOW, progress=False)
    with pytest.raises(CacheMismatchError):
        build_cache(synth.root, cache, SIZE, (-70.0, 380.0), progress=False)
    assert json.loads((cache / "cache.json").read_text())["size"] == SIZE


def test_cache_reads_from_many_threads(cache: Path) -> None:
    """tf.data's parallel readers read the cache from several threads at once. A garbage
    collection that lets another thread run (TensorFlow's finalizers do) used to make two
    NumPy header parses collide in CPython 3.11's shared AST state: "SystemError: AST
    constructor recursion depth mismatch" (a CI failure). Without the cache's read lock this
    fails within a second here."""

    def let_others_run(*_: object) -> None:
        time.sleep(0)

    gc.callbacks.append(let_others_run)  # the list the collector calls, not a copy
    thresholds = gc.get_threshold()
    gc.set_threshold(50)
    uid = cached_uids(cache)[0]
    errors: list[BaseException] = []
    stop = time.monotonic() + 3.0

    def reader(depth: int) -> None:  # each at its own stack depth, as in tf.data
        if depth:
            return reader(depth - 1)
        while time.monotonic() < stop and not errors:
            try:
                read_cached(cache, uid, ["slice_label", "levels", "spacing_mm"])
            except Exception as error:  # any failure is the finding
                errors.append(error)

    threads = [threading.Thread(target=reader, args=(depth,)) for depth in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        gc.callbacks.remove(let_others_run)
        gc.set_threshold(*thresholds)
    assert errors == []


def test_subset_and_bad_files(synth: SynthSet, tmp_path: Path) -> None:
    """--studies N; an unreadable file is reported and left out; a study with no readable
    slice is reported and skipped; the run goes on."""
    root = tmp_path / "rsna"
    shutil.copytree(synth.root, root)
    uids = find_studies(root)
    damaged, empty = root / "train_images" / uids[0], root / "train_images" / uids[1]
    (damaged / "999.dcm").write_bytes(b"not a DICOM file")
    for path in empty.glob("*.dcm"):
        path.write_bytes(b"\0" * 200)
    report = build_cache(root, tmp_path / "cache", SIZE, WINDOW, studies=3, progress=False)
    assert sorted(report.written) == sorted([uids[0], uids[2]])
    assert report.failed == [uids[1]]
    where = [w for w, _ in report.read_errors]
    assert str(damaged / "999.dcm") in where and str(empty) in where
    readable = len(list(damaged.glob("*.dcm"))) - 1
    assert len(load_study(tmp_path / "cache", uids[0]).slice_numbers) == readable
    assert cached_uids(tmp_path / "cache") == sorted([uids[0], uids[2]])


def test_cli(synth: SynthSet, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--rsna", str(synth.root), "--cache", str(tmp_path), "--size", "32", "--studies",
            "2", "--no-progress"]  # fmt: skip
    assert rsna.main(args) == 0
    assert "2 studies cached" in capsys.readouterr().out
    assert rsna.main([*args[:5], "64", "--no-progress"]) == 2  # another size: refused
    assert "error:" in capsys.readouterr().err


# --- folds --------------------------------------------------------------------------------


def test_patient_folds_are_stratified_and_deterministic() -> None:
    study_labels = {f"u{i}": labels(i % 3 == 0) for i in range(30)}
    uids = list(study_labels)
    folds = patient_folds(uids, study_labels, 5, seed=1)
    assert folds == patient_folds(uids[::-1], study_labels, 5, seed=1)
    assert set(folds) == set(uids) and set(folds.values()) == set(range(5))
    for fold in range(5):
        members = [u for u, f in folds.items() if f == fold]
        assert len(members) == 6
        assert sum(study_labels[u].positive for u in members) == 2
    assert folds != patient_folds(uids, study_labels, 5, seed=2)
    with pytest.raises(ValueError):
        patient_folds(uids[:3], study_labels, 5, seed=1)


# --- 2.5D input ---------------------------------------------------------------------------


def test_neighbour_offset() -> None:
    assert neighbour_offset(1.0, 2.0) == 2
    assert neighbour_offset(0.625, 2.0) == 3
    assert neighbour_offset(3.0, 2.0) == 1  # at least the next slice
    with pytest.raises(ValueError):
        neighbour_offset(0.0, 2.0)


def test_stack_neighbours() -> None:
    pixels = np.arange(5, dtype=np.uint8)[:, None, None] * np.ones((5, 4, 4), np.uint8)
    one = stack_neighbours(pixels, 2, 1)
    assert one.shape == (4, 4, 3) and one.dtype == np.uint8
    assert one[0, 0].tolist() == [1, 2, 3]
    many = stack_neighbours(pixels, np.array([0, 4, 2]), 2)
    assert many.shape == (3, 4, 4, 3)
    assert [m[0, 0].tolist() for m in many] == [[0, 0, 2], [2, 4, 4], [0, 2, 4]]  # clamped
    with pytest.raises(IndexError):
        stack_neighbours(pixels, 5, 1)


# --- the real sample ----------------------------------------------------------------------


def test_real_rsna_sample_ingests(tmp_path: Path) -> None:
    """34 real slices of 5 boxed studies: read with no error, ordered head to foot, every
    slice a no-fracture slice (the skull base, above each patient's boxed range)."""
    if not (REAL_SAMPLE / "train_images").is_dir():
        pytest.skip(f"the real RSNA sample is not at {REAL_SAMPLE} (see its README)")
    report = build_cache(REAL_SAMPLE, tmp_path, 64, WINDOW, progress=False)
    assert report.read_errors == [] and report.failed == []
    assert len(report.written) == 5 and report.slices == 34
    for uid in cached_uids(tmp_path):
        study = load_study(tmp_path, uid)
        assert study.slice_label.tolist() == [0] * len(study.slice_numbers)
        assert np.all(np.diff(study.positions_mm) < 0)
        assert study.study_labels[0] == 1.0 and not study.levels_known
        assert study.pixels.std() > 10  # real anatomy, not a blank


def test_worker_processes_write_the_same_cache(
    synth: SynthSet, cache: Path, tmp_path: Path
) -> None:
    report = build_cache(synth.root, tmp_path, SIZE, WINDOW, studies=3, progress=False, workers=2)
    assert sorted(report.written) == find_studies(synth.root)[:3] and report.read_errors == []
    for uid in report.written:
        np.testing.assert_array_equal(
            load_study(tmp_path, uid).pixels, load_study(cache, uid).pixels
        )
