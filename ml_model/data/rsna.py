"""RSNA 2022 cervical-spine CT, as downloaded from the competition, into a compact cache.

Layout read (``root``)::

    train_images/<StudyInstanceUID>/<n>.dcm    one CT series per study (any transfer syntax)
    train.csv                                  StudyInstanceUID, patient_overall, C1..C7
    train_bounding_boxes.csv                   StudyInstanceUID, x, y, width, height, slice_number
    segmentations/<uid>.nii(.gz)               optional vertebra labels (1..7 = C1..C7)

    python -m ml_model.data.rsna --rsna <root> --cache <dir> --size 256 [--studies N]

**Slices.** Every slice goes through the product's one DICOM path
(:func:`ml_model.imaging.dicom.read_dicom`: HU, then the window) and the one resize
(:func:`ml_model.imaging.transforms.resize`), and is ordered head to foot by
ImagePositionPatient along the slice normal (the normal of the series' most common
ImageOrientationPatient, pointing to the head), not by file name: the file numbers of some
studies run foot to head. This is the rule of ``ml_model.inference.study.arrange_slices``,
done here from :func:`~ml_model.imaging.dicom.read_geometry` because the data layer sits
below inference (and a study's bytes are never all held at once). Without a usable position
on every slice the order falls back to InstanceNumber, then to the file number (positions are
then NaN). A file that cannot be read is reported with its reason and left out; a study with
no readable slice is reported and skipped; the run goes on.

**Slice labels** (``slice_label``: 1 fracture, 0 no fracture, -1 unknown):

* a study with boxes: its boxed slices (``slice_number`` in train_bounding_boxes.csv) are 1,
  every other slice 0. RSNA boxed every fracture of those studies, so their other slices are
  real no-fracture slices (the skull-base slices of the sample in ``shared/`` are such);
* a patient-negative study (patient_overall 0): every slice 0;
* a patient-positive study without boxes: every slice -1. Left out of the slice loss, not
  used as weak labels (most of such a study's slices show no fracture, but which ones is not
  known); the study head still learns from its patient and C1-C7 labels.

**Vertebra levels** (``levels`` (Z, 7) multi-hot C1..C7): from the segmentation where there
is one. RSNA's NIfTI arrays are (x, y, z) with y flipped and z running foot to head
(``nifti[:, ::-1, ::-1].transpose(2, 1, 0)`` gives the volume head to foot, as public
solutions read it); its slice k from the top is the k-th slice of the study in position order.
A segmentation whose slice count differs from the study's is not used (reported).
Without one, ``levels`` is zeros and ``levels_known`` False.

**Cache.** One compressed ``<cache>/<uid>.npz`` per study, written to a temporary name and
renamed, so an interrupted run leaves no half study behind and a restarted one skips the
studies already there (resume); ``cache.json`` holds what the arrays depend on (size,
window, version) and a cache made with other settings is refused. One study in memory at a
time (per worker process with ``--workers N``). Labels are read when a study is cached:
after editing the label CSVs, start a new cache. Default window: the bone window
(``config.BONE_WINDOW_*``); the slice model's card takes the cache's window.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.card import STUDY_OUTPUTS, VERTEBRAE
from ml_model.config import BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH
from ml_model.imaging.dicom import read_dicom, read_geometry, slice_normal
from ml_model.imaging.errors import ImageDecodeError
from ml_model.imaging.errors import short_message as _short
from ml_model.imaging.transforms import resize

CACHE_VERSION = 1
CACHE_META = "cache.json"
IMAGES_DIR = "train_images"
LABELS_FILE = "train.csv"
BOXES_FILE = "train_bounding_boxes.csv"
SEGMENTATIONS_DIR = "segmentations"
FRACTURE, NO_FRACTURE, UNKNOWN = 1, 0, -1
# Cache arrays and their dtypes (the npz keys).
ARRAYS = {
    "pixels": np.uint8,
    "positions_mm": np.float32,
    "slice_numbers": np.int32,
    "slice_label": np.int8,
    "levels": np.uint8,
    "levels_known": np.bool_,
    "spacing_mm": np.float32,
    "study_labels": np.float32,
}
_TMP_SUFFIX = ".tmp"  # <uid>.npz.tmp while being written
# NumPy reads every .npy header with ast.literal_eval, and CPython 3.11 keeps the AST builder's
# recursion counter per interpreter, not per call: two threads parsing at once can fail with
# "SystemError: AST constructor recursion depth mismatch" (the error of python/cpython#106905's
# reports; seen in CI with tf.data's parallel readers). The cache's reads take turns.
_CACHE_READ_LOCK = threading.Lock()


class RsnaDataError(ValueError):
    """The folder is not in the competition's layout, or its label files are malformed."""


class CacheMismatchError(RsnaDataError):
    """The cache folder was made with other settings (size, window, version)."""


# --- labels -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyLabels:
    """A study's labels from the competition's CSVs."""

    uid: str
    targets: np.ndarray  # (8,) float32: STUDY_OUTPUTS order (patient_overall, C1..C7)
    boxed_slices: frozenset[int]  # slice numbers (n of n.dcm) with a fracture box

    @property
    def positive(self) -> bool:
        return bool(self.targets[0] >= 0.5)


def _rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """The rows of a CSV file that must have ``columns`` (a clear error when not)."""
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise RsnaDataError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as exc:
        raise RsnaDataError(f"{path}: cannot be read ({exc})") from exc


def read_labels(root: str | Path) -> dict[str, StudyLabels]:
    """train.csv (required) and train_bounding_boxes.csv (optional: without it no study has
    boxes) -> labels per StudyInstanceUID."""
    root = Path(root)
    path = root / LABELS_FILE
    if not path.is_file():
        raise RsnaDataError(f"{path} not found: not the RSNA 2022 layout")
    boxed: dict[str, set[int]] = {}
    boxes = root / BOXES_FILE
    if boxes.is_file():
        for number, row in enumerate(_rows(boxes, ("StudyInstanceUID", "slice_number")), 2):
            try:
                slice_no = int(float(row["slice_number"]))
            except ValueError:
                raise RsnaDataError(
                    f"{boxes}:{number}: slice_number {row['slice_number']!r} is not a number"
                ) from None
            boxed.setdefault(row["StudyInstanceUID"].strip(), set()).add(slice_no)
    labels: dict[str, StudyLabels] = {}
    for number, row in enumerate(_rows(path, ("StudyInstanceUID", *STUDY_OUTPUTS)), 2):
        uid = row["StudyInstanceUID"].strip()
        try:
            targets = np.array([float(row[c]) for c in STUDY_OUTPUTS], dtype=np.float32)
        except ValueError:
            raise RsnaDataError(f"{path}:{number}: a label of {uid} is not a number") from None
        labels[uid] = StudyLabels(uid, targets, frozenset(boxed.get(uid, ())))
    return labels


def slice_labels(study: StudyLabels, slice_numbers: Iterable[int]) -> np.ndarray:
    """int8 label per slice (1 fracture, 0 no fracture, -1 unknown; see the module doc)."""
    numbers = np.fromiter(slice_numbers, dtype=np.int64)
    if study.boxed_slices:
        boxed = np.isin(numbers, np.fromiter(study.boxed_slices, dtype=np.int64))
        return np.where(boxed, FRACTURE, NO_FRACTURE).astype(np.int8)
    value = UNKNOWN if study.positive else NO_FRACTURE
    return np.full(numbers.shape, value, dtype=np.int8)


def find_studies(root: str | Path) -> list[str]:
    """StudyInstanceUIDs with a ``train_images/<uid>/`` folder, sorted."""
    images = Path(root) / IMAGES_DIR
    if not images.is_dir():
        raise RsnaDataError(f"{images} not found: not the RSNA 2022 layout")
    return sorted(p.name for p in images.iterdir() if p.is_dir())


def patient_folds(
    uids: Sequence[str], labels: dict[str, StudyLabels], k: int, seed: int
) -> dict[str, int]:
    """Fold (0..k-1) per study, stratified by patient_overall (unlabelled studies form their
    own stratum). One RSNA study is one patient, so the folds are patient-grouped."""
    if k < 2:
        raise ValueError(f"k must be at least 2, not {k}")
    if len(uids) < k:
        raise ValueError(f"{len(uids)} studies cannot fill {k} folds")
    rng = np.random.default_rng(seed)
    strata: dict[int, list[str]] = {}
    for uid in sorted(set(uids)):
        study = labels.get(uid)
        strata.setdefault(-1 if study is None else int(study.positive), []).append(uid)
    folds: dict[str, int] = {}
    offset = 0
    for key in sorted(strata):
        members = [strata[key][i] for i in rng.permutation(len(strata[key]))]
        for i, uid in enumerate(members):
            folds[uid] = (offset + i) % k
        offset += len(members)  # the next stratum starts where this one left off
    return folds


# --- segmentations ------------------------------------------------------------------------


def segmentation_path(root: str | Path, uid: str) -> Path | None:
    """``segmentations/<uid>.nii`` or ``.nii.gz``, where present."""
    folder = Path(root) / SEGMENTATIONS_DIR
    for name in (f"{uid}.nii", f"{uid}.nii.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def segmentation_volume(path: str | Path) -> np.ndarray:
    """A competition NIfTI -> integer labels (Z, H, W), slice 0 the top (head) one."""
    import nibabel as nib

    image: Any = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim != 3:
        raise RsnaDataError(f"{path}: a 3-D volume was expected, not shape {data.shape}")
    return np.rint(data[:, ::-1, ::-1].transpose(2, 1, 0)).astype(np.int16)


def levels_from_segmentation(volume: np.ndarray) -> np.ndarray:
    """(Z, 7) uint8: which of C1..C7 (label values 1..7) have pixels on each slice."""
    return np.stack(
        [(volume == v).any(axis=(1, 2)) for v in range(1, len(VERTEBRAE) + 1)], axis=1
    ).astype(np.uint8)


# --- one study ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slice:
    number: int
    pixels: np.ndarray  # uint8 (S, S)
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    thickness: float | None


def _file_number(path: Path) -> int | None:
    return int(path.stem) if path.stem.isdigit() else None


def _read_slice(path: Path, size: int, window: tuple[float, float]) -> _Slice:
    """One file through the product's DICOM path; raises ImageDecodeError or OSError."""
    number = _file_number(path)
    if number is None:
        raise ImageDecodeError(f"the file name is not <slice number>.dcm: {path.name}")
    data = path.read_bytes()
    geometry = read_geometry(data)
    image = read_dicom(data)
    if not image.is_hu:
        raise ImageDecodeError("the slice is not read as CT Hounsfield units")
    gray = resize(image.window(*window), size)
    return _Slice(number, gray, geometry.positions[0], geometry.orientations[0],
                  geometry.instance, image.facts.slice_thickness_mm)  # fmt: skip


def _head_normal(slices: Sequence[_Slice]) -> np.ndarray:
    """The slice normal of the most common orientation, pointing to the head (z up)."""
    oriented = [s.orientation for s in slices if slice_normal(s.orientation) is not None]
    if not oriented:
        return np.array([0.0, 0.0, 1.0])
    common = Counter(tuple(np.round(o, 2)) for o in oriented).most_common(1)[0][0]  # type: ignore[arg-type]
    normal = slice_normal(common)
    assert normal is not None  # rounded from a usable orientation
    return -normal if normal[2] < 0 else normal


def _order_slices(slices: Sequence[_Slice]) -> tuple[list[_Slice], np.ndarray, str]:
    """Slices head to foot, their positions in mm along the head-pointing normal (NaN when
    not ordered by position) and what the order rests on ('position', 'instance', 'file')."""
    if slices and all(s.position is not None for s in slices):
        normal = _head_normal(slices)
        along = [float(np.dot(s.position, normal)) for s in slices]  # type: ignore[arg-type]
        order = sorted(range(len(slices)), key=lambda i: (-along[i], slices[i].number))
        positions = np.array([along[i] for i in order], dtype=np.float32)
        return [slices[i] for i in order], positions, "position"
    nan = np.full(len(slices), np.nan, dtype=np.float32)
    if slices and all(s.instance is not None for s in slices):
        return sorted(slices, key=lambda s: (s.instance, s.number)), nan, "instance"
    return sorted(slices, key=lambda s: s.number), nan, "file"


def _spacing(positions: np.ndarray, slices: Sequence[_Slice]) -> float:
    """Median step between neighbouring slices (mm), else the slice thickness, else 1."""
    steps = -np.diff(positions.astype(np.float64))
    steps = steps[np.isfinite(steps) & (steps > 1e-3)]
    if steps.size:
        return float(np.median(steps))
    thickness = [s.thickness for s in slices if s.thickness and math.isfinite(s.thickness)]
    return float(np.median(thickness)) if thickness else 1.0


@dataclass
class CachedStudy:
    """One study of the cache (slices head to foot)."""

    uid: str
    pixels: np.ndarray  # uint8 (Z, S, S): windowed, resized
    positions_mm: np.ndarray  # float32 (Z,): along the head-pointing normal (NaN: unknown)
    slice_numbers: np.ndarray  # int32 (Z,): n of n.dcm
    slice_label: np.ndarray  # int8 (Z,): 1 fracture, 0 no fracture, -1 unknown
    levels: np.ndarray  # uint8 (Z, 7): C1..C7 on the slice (zeros when not known)
    levels_known: bool
    spacing_mm: float
    study_labels: np.ndarray  # float32 (8,): STUDY_OUTPUTS order


@dataclass
class CacheReport:
    """What a :func:`build_cache` run did."""

    written: list[str] = field(default_factory=list)  # studies cached by this run
    skipped: list[str] = field(default_factory=list)  # already cached (resumed)
    failed: list[str] = field(default_factory=list)  # no readable slice, or no label row
    read_errors: list[tuple[str, str]] = field(default_factory=list)  # (file or folder, why)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (study, what)
    slices: int = 0  # slices written by this run
    seconds: float = 0.0

    def summary(self) -> str:
        lines = [
            f"{len(self.written)} studies cached ({self.slices} slices), "
            f"{len(self.skipped)} already cached, {len(self.failed)} failed, "
            f"{len(self.read_errors)} read errors, in {self.seconds:.1f} s"
        ]
        lines += [f"  read error: {where}: {why}" for where, why in self.read_errors[:50]]
        if len(self.read_errors) > 50:
            lines.append(f"  ... and {len(self.read_errors) - 50} more read errors")
        lines += [f"  warning: {where}: {what}" for where, what in self.warnings[:20]]
        if len(self.warnings) > 20:
            lines.append(f"  ... and {len(self.warnings) - 20} more warnings")
        return "\n".join(lines)


def read_study(
    root: Path,
    uid: str,
    labels: StudyLabels,
    size: int,
    window: tuple[float, float],
    report: CacheReport,
) -> CachedStudy | None:
    """One study folder -> its cache entry (None when no slice could be read)."""
    folder = root / IMAGES_DIR / uid
    slices: list[_Slice] = []
    files = sorted(folder.glob("*.dcm"))
    for path in files:
        try:
            slices.append(_read_slice(path, size, window))
        except (ImageDecodeError, OSError) as exc:
            report.read_errors.append((str(path), _short(exc)))
        except MemoryError:
            raise
        except Exception as exc:  # one bad file never stops the run
            report.read_errors.append((str(path), f"unexpected {type(exc).__name__}: "
                                       f"{_short(exc)}"))  # fmt: skip
    if not slices:
        why = "no readable slice" if files else "no <n>.dcm file"
        report.read_errors.append((str(folder), f"{why}; study skipped"))
        return None
    ordered, positions, basis = _order_slices(slices)
    if basis != "position":
        report.warnings.append((uid, f"no usable ImagePositionPatient: ordered by {basis}"))
    numbers = np.array([s.number for s in ordered], dtype=np.int32)
    levels = np.zeros((len(ordered), len(VERTEBRAE)), dtype=np.uint8)
    levels_known = False
    segmentation = segmentation_path(root, uid)
    if segmentation is not None:
        try:
            volume = segmentation_volume(segmentation)
        except Exception as exc:  # nibabel raises many types for a damaged file
            report.read_errors.append((str(segmentation), _short(exc)))
        else:
            if volume.shape[0] == len(files) == len(ordered) and basis == "position":
                levels, levels_known = levels_from_segmentation(volume), True
            else:
                report.warnings.append((uid, f"segmentation has {volume.shape[0]} slices, the "
                                        f"study {len(ordered)} readable of {len(files)} "
                                        f"(ordered by {basis}): levels not used"))  # fmt: skip
    return CachedStudy(
        uid=uid,
        pixels=np.stack([s.pixels for s in ordered]).astype(np.uint8),
        positions_mm=positions,
        slice_numbers=numbers,
        slice_label=slice_labels(labels, numbers.tolist()),
        levels=levels,
        levels_known=levels_known,
        spacing_mm=_spacing(positions, ordered),
        study_labels=labels.targets.astype(np.float32),
    )


# --- the cache ----------------------------------------------------------------------------


def cache_settings(size: int, window: tuple[float, float]) -> dict[str, Any]:
    """What the cached arrays depend on (``cache.json``): a cache is reused only for these."""
    return {
        "size": int(size),
        "window_level": float(window[0]),
        "window_width": float(window[1]),
        "version": CACHE_VERSION,
    }


def read_cache_settings(cache_dir: str | Path) -> dict[str, Any]:
    """The cache's ``cache.json`` (size, window_level, window_width, version)."""
    path = Path(cache_dir) / CACHE_META
    if not path.is_file():
        raise RsnaDataError(f"{path} not found: not an RSNA cache (ml_model.data.rsna)")
    return dict(json.loads(path.read_text()))


def _atomic_write(path: Path, write: Any) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(path.name + _TMP_SUFFIX)
    with tmp.open("wb") as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _prepare(cache_dir: Path, settings: dict[str, Any]) -> None:
    """Create the cache, or check an existing one was made with the same settings."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta = cache_dir / CACHE_META
    if meta.is_file():
        found = json.loads(meta.read_text())
        if found != settings:
            raise CacheMismatchError(
                f"{cache_dir} was made with {found}, this run asks for {settings}: use "
                "another --cache folder (or delete this one)"
            )
        return
    if any(cache_dir.glob("*.npz")):
        raise CacheMismatchError(
            f"{cache_dir} holds .npz files but no {CACHE_META}: not a cache of this "
            "version; use another --cache folder"
        )
    _atomic_write(meta, lambda handle: handle.write(json.dumps(settings, indent=2).encode()))


def write_study(cache_dir: str | Path, study: CachedStudy) -> Path:
    """``<cache>/<uid>.npz``, atomically (a temporary file renamed into place)."""
    path = Path(cache_dir) / f"{study.uid}.npz"
    arrays: dict[str, Any] = {
        name: np.asarray(getattr(study, name), dtype=dtype) for name, dtype in ARRAYS.items()
    }
    _atomic_write(path, lambda handle: np.savez_compressed(handle, **arrays))
    return path


def read_cached(cache_dir: str | Path, uid: str, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Some arrays of one cached study (the others are not decompressed); safe from any
    thread."""
    path = Path(cache_dir) / f"{uid}.npz"
    wanted = list(names)
    with _CACHE_READ_LOCK, np.load(path, allow_pickle=False) as data:
        missing = [name for name in wanted if name not in data.files]
        if missing:
            raise RsnaDataError(f"{path}: missing array(s) {', '.join(missing)}")
        return {name: data[name] for name in wanted}


def load_study(cache_dir: str | Path, uid: str) -> CachedStudy:
    """One cached study."""
    data = read_cached(cache_dir, uid, ARRAYS)
    return CachedStudy(
        uid=uid,
        pixels=data["pixels"],
        positions_mm=data["positions_mm"],
        slice_numbers=data["slice_numbers"],
        slice_label=data["slice_label"],
        levels=data["levels"],
        levels_known=bool(data["levels_known"]),
        spacing_mm=float(data["spacing_mm"]),
        study_labels=data["study_labels"],
    )


def cached_uids(cache_dir: str | Path) -> list[str]:
    """The studies of a cache (finished ones only: never a temporary file), sorted."""
    return sorted(p.name.removesuffix(".npz") for p in Path(cache_dir).glob("*.npz"))


def _cache_study(root: Path, cache_dir: Path, uid: str, labels: StudyLabels | None, size: int,
                 window: tuple[float, float]) -> CacheReport:  # fmt: skip
    """Read and write one study; what happened, as a report of its own (a worker's result)."""
    report = CacheReport()
    if labels is None:
        report.failed.append(uid)
        report.read_errors.append((str(root / IMAGES_DIR / uid),
                                   f"no row in {LABELS_FILE}; study skipped"))  # fmt: skip
        return report
    study = read_study(root, uid, labels, size, window, report)
    if study is None:
        report.failed.append(uid)
    else:
        write_study(cache_dir, study)
        report.written.append(uid)
        report.slices += len(study.slice_numbers)
    return report


def _merge(report: CacheReport, part: CacheReport) -> None:
    report.written += part.written
    report.failed += part.failed
    report.read_errors += part.read_errors
    report.warnings += part.warnings
    report.slices += part.slices


def build_cache(
    root: str | Path,
    cache_dir: str | Path,
    size: int,
    window: tuple[float, float],
    studies: int | None = None,
    progress: bool = True,
    workers: int = 1,
) -> CacheReport:
    """Cache every study of ``root`` (the first ``studies`` in UID order when given),
    skipping those already cached; see the module doc. ``workers`` > 1 reads that many
    studies at once in separate processes (one study in memory per process)."""
    start = time.perf_counter()
    root, cache_dir = Path(root), Path(cache_dir)
    labels = read_labels(root)
    uids = find_studies(root)
    if studies is not None:
        uids = uids[: max(studies, 0)]
    _prepare(cache_dir, cache_settings(size, window))
    report = CacheReport()
    done = set(cached_uids(cache_dir))
    report.skipped = [uid for uid in uids if uid in done]
    todo = [uid for uid in uids if uid not in done]
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(uids), initial=len(report.skipped), desc="caching RSNA studies",
                   unit="study", file=sys.stderr)  # fmt: skip
    try:
        for part in _run_studies(root, cache_dir, todo, labels, size, window, workers):
            _merge(report, part)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(errors=len(report.read_errors), refresh=False)
    finally:
        if bar is not None:
            bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _run_studies(root: Path, cache_dir: Path, uids: Sequence[str],
                 labels: dict[str, StudyLabels], size: int, window: tuple[float, float],
                 workers: int) -> Iterator[CacheReport]:  # fmt: skip
    """One report per study, in order (serially) or as they finish (worker processes)."""
    if workers <= 1 or len(uids) <= 1:
        for uid in uids:
            yield _cache_study(root, cache_dir, uid, labels.get(uid), size, window)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: the caller may hold TensorFlow's threads
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(_cache_study, root, cache_dir, uid, labels.get(uid), size,
                               window) for uid in uids]  # fmt: skip
        for future in as_completed(futures):
            yield future.result()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_model.data.rsna",
        description="Cache RSNA 2022 cervical-spine CT studies for training (resumable).",
    )
    parser.add_argument("--rsna", required=True, help="the competition folder (train_images/...)")
    parser.add_argument("--cache", required=True, help="cache folder (one .npz per study)")
    parser.add_argument("--size", type=int, default=256, help="slice size in pixels")
    parser.add_argument("--studies", type=int, default=None, help="only the first N studies")
    parser.add_argument("--window-level", type=float, default=BONE_WINDOW_LEVEL)
    parser.add_argument("--window-width", type=float, default=BONE_WINDOW_WIDTH)
    parser.add_argument("--workers", type=int, default=1, help="studies read in parallel")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        report = build_cache(
            args.rsna, args.cache, args.size, (args.window_level, args.window_width),
            args.studies, progress=not args.no_progress, workers=args.workers,
        )  # fmt: skip
    except RsnaDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
