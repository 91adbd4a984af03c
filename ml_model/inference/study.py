"""Study mode: one CT series in, one answer out.

Slices are ordered head to foot here and checked to be one series; ``core.InferenceCore.study``
scores them through the same path as single slices and aggregates them into a study score.

Ordering: DICOM slices along the slice normal (ImageOrientationPatient row x column) by
ImagePositionPatient, positions reported in millimetres along the normal pointing to the
head (z for axial slices); an enhanced multi-frame CT is read frame by frame with each
frame's position from its per-frame functional groups. Without usable geometry, DICOM
slices are ordered by InstanceNumber and PNG/JPEG slices by the slice number in the file
name (positions are then indices, not mm). Mixed orientations, spacing gaps, duplicate
positions and unusable header values become warnings in the answer, not failures.

Aggregation (a slice bundle): the mean of the top-k slice probabilities (k = 2 by default).
A study bundle's learned head replaces it (``core.InferenceCore.study``; the top-k slices
are still the ones shown). A
fracture shows on a few neighbouring slices, so requiring two suspicious slices
resists a single noisy slice, while the plain mean would dilute a fracture across
hundreds of normal slices. The study threshold is chosen on synthetic studies built
from out-of-fold slice scores (``ml_model.training.study_threshold``).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ml_model.imaging.dicom import is_dicom, read_geometry, slice_normal
from ml_model.imaging.errors import ImageDecodeError

DEFAULT_TOP_K = 2
# Most slices one study may expand to (files, or the frames of enhanced multi-frame files).
MAX_STUDY_SLICES = 4096
# Two slices closer than this along the normal are at the same position (mm).
DUPLICATE_TOLERANCE_MM = 0.01
# A step this many times the usual spacing is a gap (slices missing).
GAP_FACTOR = 1.5
# Orientation cosines differing by more than this are another orientation.
ORIENTATION_TOLERANCE = 0.01
# Listed per kind of warning; the rest are counted.
MAX_LISTED = 5

_PAREN_NUMBER = re.compile(r"\((\d+)\)")
_ANY_NUMBER = re.compile(r"(\d+)")

PositionUnit = Literal["mm", "index"]


class StudyError(ValueError):
    """The upload is not one orderable series (HTTP 400)."""


@dataclass(frozen=True)
class SliceFile:
    name: str
    data: bytes


@dataclass(frozen=True)
class OrderedSlice:
    name: str
    data: bytes
    position: float  # mm along the head-pointing slice normal, else the slice/instance number
    series: str | None
    frame: int | None = None  # which frame of a multi-frame DICOM file


@dataclass
class StudyOrder:
    """Slices head to foot, the unit of their positions, and what looked wrong."""

    slices: list[OrderedSlice]
    position_unit: PositionUnit
    warnings: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # files left out, and why


def slice_number(name: str) -> int | None:
    """The slice number in a file name: the ``(N)`` if present, else the last number."""
    stem = Path(name).stem
    match = _PAREN_NUMBER.search(stem)
    if match:
        return int(match.group(1))
    numbers = _ANY_NUMBER.findall(stem)
    return int(numbers[-1]) if numbers else None


@dataclass(frozen=True)
class _Entry:
    """One DICOM slice (a file, or one frame of one) and its geometry."""

    name: str
    data: bytes
    frame: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    series: str | None


def _listed(items: list[str], what: str) -> list[str]:
    """At most MAX_LISTED warnings of a kind, then one counting the rest."""
    if len(items) <= MAX_LISTED:
        return items
    return [*items[:MAX_LISTED], f"... and {len(items) - MAX_LISTED} more {what}"]


def _mm(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".") + " mm"


def _dicom_entries(
    items: Sequence[SliceFile], warnings: list[str], errors: list[tuple[str, str]]
) -> list[_Entry]:
    entries: list[_Entry] = []
    problems: list[str] = []
    for item in items:
        try:
            geometry = read_geometry(item.data)
        except ImageDecodeError as exc:  # unreadable header, or not an image: left out
            errors.append((item.name, str(exc)))
            continue
        problems += [f"{item.name}: {problem}; ignored" for problem in geometry.problems]
        if geometry.frames == 1:
            entries.append(
                _Entry(item.name, item.data, None, geometry.positions[0],
                       geometry.orientations[0], geometry.instance, geometry.series)
            )  # fmt: skip
            continue
        if any(position is None for position in geometry.positions):
            errors.append(
                (item.name, f"multi-frame DICOM ({geometry.frames} frames) without a position "
                 "for every frame (per-frame PlanePositionSequence); send one file per slice")
            )  # fmt: skip
            continue
        for frame in range(geometry.frames):
            entries.append(
                _Entry(f"{item.name} [frame {frame + 1}/{geometry.frames}]", item.data, frame,
                       geometry.positions[frame], geometry.orientations[frame],
                       geometry.instance, geometry.series)
            )  # fmt: skip
        if len(entries) > MAX_STUDY_SLICES:
            raise StudyError(f"the study holds more than {MAX_STUDY_SLICES} slices (frames)")
    warnings += _listed(problems, "unusable header values")
    return entries


def _reference_orientation(entries: list[_Entry], warnings: list[str]) -> tuple[np.ndarray, bool]:
    """The slice normal most slices share (pointing to the head), and whether any slice
    has a usable orientation at all; warns about mixed and non-axial orientations."""
    oriented = [e for e in entries if slice_normal(e.orientation) is not None]
    if not oriented:
        warnings.append(
            "no usable ImageOrientationPatient: slices ordered by their z coordinate "
            "(assumed axial)"
        )
        return np.array([0.0, 0.0, 1.0]), False
    counts = Counter(tuple(np.round(e.orientation, 2)) for e in oriented)  # type: ignore[arg-type]
    reference = np.asarray(counts.most_common(1)[0][0], dtype=np.float64)
    differing = [
        e.name
        for e in oriented
        if np.max(np.abs(np.asarray(e.orientation) - reference)) > ORIENTATION_TOLERANCE
    ]
    if differing:
        warnings.append(
            f"mixed orientation: {len(differing)} of {len(entries)} slices are oriented "
            f"differently from the rest (ImageOrientationPatient), e.g. "
            f"{', '.join(differing[:3])}; all are ordered along the most common slice normal"
        )
    normal = slice_normal(tuple(reference))
    assert normal is not None  # the reference is one of the usable orientations
    if normal[2] < 0:
        normal = -normal  # point to the head: positions grow towards the head
    if abs(normal[2]) < 0.9:
        warnings.append(
            f"the slices are not axial (slice normal {np.round(normal, 2).tolist()}); "
            "the model was trained on axial slices"
        )
    return normal, True


def _spacing_warnings(names: list[str], positions: list[float], unit: PositionUnit) -> list[str]:
    """Duplicate positions, and (in mm) gaps well over the usual spacing."""
    duplicates, gaps = [], []
    steps = [positions[i] - positions[i + 1] for i in range(len(positions) - 1)]  # mm: head first
    for i, step in enumerate(steps):
        if abs(step) < DUPLICATE_TOLERANCE_MM:
            shown = _mm(positions[i]) if unit == "mm" else f"{positions[i]:g}"
            duplicates.append(f"duplicate position {shown}: {names[i]} and {names[i + 1]}")
    if unit == "mm":
        spaced = [s for s in steps if s >= DUPLICATE_TOLERANCE_MM]
        usual = float(np.median(spaced)) if spaced else 0.0
        for i, step in enumerate(steps):
            if usual > 0 and step > GAP_FACTOR * usual:
                gaps.append(
                    f"gap of {_mm(step)} between {names[i]} ({_mm(positions[i])}) and "
                    f"{names[i + 1]} ({_mm(positions[i + 1])}); the usual spacing is "
                    f"{_mm(usual)}: slices may be missing"
                )
    return _listed(duplicates, "duplicate positions") + _listed(gaps, "gaps")


def arrange_slices(items: Sequence[SliceFile]) -> StudyOrder:
    """Sort slices head to foot, check they form one series, and say what looked wrong."""
    if not items:
        raise StudyError("the study has no slices")
    dicom = [is_dicom(item.data) for item in items]
    if any(dicom) and not all(dicom):
        raise StudyError("a study must be all DICOM or all PNG/JPEG slices, not a mix")
    warnings: list[str] = []
    errors: list[tuple[str, str]] = []
    unit: PositionUnit
    if all(dicom):
        entries = _dicom_entries(items, warnings, errors)
        series = {e.series for e in entries}
        if len(series) > 1:
            raise StudyError(
                f"the files come from {len(series)} different series (SeriesInstanceUID); "
                "upload one series at a time"
            )
        if not entries:
            return StudyOrder([], "index", warnings, errors)
        located = [e for e in entries if e.position is not None]
        if len(located) == len(entries):
            normal, _ = _reference_orientation(entries, warnings)
            positions = [float(np.dot(e.position, normal)) for e in entries]  # type: ignore[arg-type]
            keys = [-p for p in positions]
            unit = "mm"
        elif all(e.instance is not None for e in entries):
            if located:
                warnings.append(
                    f"{len(entries) - len(located)} of {len(entries)} slices have no usable "
                    "ImagePositionPatient: ordered by InstanceNumber (positions are instance "
                    "numbers, not mm)"
                )
            positions = [float(e.instance) for e in entries]  # type: ignore[arg-type]
            keys = [p + (e.frame or 0) / (MAX_STUDY_SLICES + 1) for p, e in zip(
                positions, entries, strict=True)]  # fmt: skip
            unit = "index"
        else:
            missing = [e.name for e in entries if e.position is None and e.instance is None]
            raise StudyError(
                "DICOM slices need ImagePositionPatient or InstanceNumber to order; "
                f"neither is usable in: {', '.join(missing[:5])}"
            )
        order = sorted(range(len(entries)), key=lambda i: (keys[i], entries[i].name))
        slices = [
            OrderedSlice(entries[i].name, entries[i].data, positions[i] + 0.0,
                         entries[i].series, entries[i].frame)
            for i in order
        ]  # fmt: skip
    else:
        numbers = [slice_number(item.name) for item in items]
        missing = [item.name for item, n in zip(items, numbers, strict=True) if n is None]
        if missing:
            raise StudyError(f"no slice number in the file name of: {', '.join(missing[:5])}")
        order = sorted(range(len(items)), key=lambda i: (numbers[i], items[i].name))
        slices = [
            OrderedSlice(items[i].name, items[i].data, float(numbers[i]), None)  # type: ignore[arg-type]
            for i in order
        ]
        unit = "index"
    warnings += _spacing_warnings([s.name for s in slices], [s.position for s in slices], unit)
    return StudyOrder(slices, unit, warnings, errors)


def order_slices(items: Sequence[SliceFile]) -> list[OrderedSlice]:
    """Sort slices head to foot and check they form one series (see :func:`arrange_slices`)."""
    return arrange_slices(items).slices


def series_spacing_mm(slices: Sequence[OrderedSlice], unit: PositionUnit) -> float | None:
    """The series' usual slice spacing in mm (the median step between neighbouring distinct
    positions, head to foot); None without positions in mm or with fewer than two."""
    if unit != "mm" or len(slices) < 2:
        return None
    positions = np.array([s.position for s in slices], dtype=np.float64)
    steps = positions[:-1] - positions[1:]
    steps = steps[steps >= DUPLICATE_TOLERANCE_MM]
    return float(np.median(steps)) if steps.size else None


def aggregate(probabilities: np.ndarray, top_k: int = DEFAULT_TOP_K) -> float:
    """Study score: mean of the ``top_k`` highest slice probabilities."""
    probs = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    if probs.size == 0:
        raise StudyError("no slice could be scored")
    return float(probs[: max(1, min(top_k, probs.size))].mean())


def threshold_for(slices: int, top_k: int, slice_threshold: float, study_threshold: float) -> float:
    """The study threshold was calibrated on many-slice studies; a "study" of fewer slices
    than ``top_k`` is its slices' mean and is judged as a slice is."""
    return slice_threshold if slices < top_k else study_threshold
