"""Study mode: one CT series in, one answer out.

Slices are ordered along the neck (DICOM ``ImagePositionPatient`` z, else
``InstanceNumber``; for PNG/JPEG the slice number in the file name), checked to be
one series, scored in batches through the same image path as single slices, and
aggregated into a study score.

Aggregation: the mean of the top-k slice probabilities (k = 2 by default). A
fracture shows on a few neighbouring slices, so requiring two suspicious slices
resists a single noisy slice, while the plain mean would dilute a fracture across
hundreds of normal slices. The study threshold is chosen on synthetic studies built
from the grouped-validation slices (:func:`calibrate_study_threshold`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from ml_model.metrics import choose_operating_points
from ml_model.transforms import ImageDecodeError, image_to_array, is_dicom

DEFAULT_TOP_K = 2
BATCH_SIZE = 32

_PAREN_NUMBER = re.compile(r"\((\d+)\)")
_ANY_NUMBER = re.compile(r"(\d+)")


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
    position: float  # z in mm for DICOM with positions, else the slice/instance number
    series: str | None


@dataclass
class StudyPrediction:
    names: list[str]
    positions: list[float]
    probabilities: np.ndarray
    in_distribution: np.ndarray
    study_probability: float
    top_indices: list[int]
    errors: list[tuple[str, str]] = field(default_factory=list)


def slice_number(name: str) -> int | None:
    """The slice number in a file name: the ``(N)`` if present, else the last number."""
    stem = Path(name).stem
    match = _PAREN_NUMBER.search(stem)
    if match:
        return int(match.group(1))
    numbers = _ANY_NUMBER.findall(stem)
    return int(numbers[-1]) if numbers else None


def _dicom_position(item: SliceFile) -> tuple[float | None, float | None, str | None]:
    import pydicom

    try:
        header = pydicom.dcmread(io.BytesIO(item.data), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on bad headers
        raise StudyError(f"{item.name}: the DICOM header could not be read ({exc})") from exc
    position = getattr(header, "ImagePositionPatient", None)
    z = float(position[2]) if position is not None and len(position) == 3 else None
    instance = getattr(header, "InstanceNumber", None)
    series = getattr(header, "SeriesInstanceUID", None)
    return z, (float(instance) if instance is not None else None), (str(series) if series else None)


def order_slices(items: Sequence[SliceFile]) -> list[OrderedSlice]:
    """Sort slices head to foot and check they form one series."""
    if not items:
        raise StudyError("the study has no slices")
    dicom = [is_dicom(item.data) for item in items]
    if any(dicom) and not all(dicom):
        raise StudyError("a study must be all DICOM or all PNG/JPEG slices, not a mix")
    if all(dicom):
        headers = [_dicom_position(item) for item in items]
        series = {h[2] for h in headers}
        if len(series) > 1:
            raise StudyError(
                f"the files come from {len(series)} different series (SeriesInstanceUID); "
                "upload one series at a time"
            )
        if all(h[0] is not None for h in headers):
            # Patient z grows towards the head: sort descending, skull base first.
            keys = [-float(h[0]) for h in headers]  # type: ignore[arg-type]
            positions = [float(h[0]) for h in headers]  # type: ignore[arg-type]
        elif all(h[1] is not None for h in headers):
            keys = positions = [float(h[1]) for h in headers]  # type: ignore[arg-type]
        else:
            raise StudyError("DICOM slices need ImagePositionPatient or InstanceNumber to order")
        series_uid = headers[0][2]
    else:
        numbers = [slice_number(item.name) for item in items]
        missing = [item.name for item, n in zip(items, numbers, strict=True) if n is None]
        if missing:
            raise StudyError(f"no slice number in the file name of: {', '.join(missing[:5])}")
        keys = positions = [float(n) for n in numbers]  # type: ignore[arg-type]
        series_uid = None
    order = sorted(range(len(items)), key=lambda i: (keys[i], items[i].name))
    return [OrderedSlice(items[i].name, items[i].data, positions[i], series_uid) for i in order]


def aggregate(probabilities: np.ndarray, top_k: int = DEFAULT_TOP_K) -> float:
    """Study score: mean of the ``top_k`` highest slice probabilities."""
    probs = np.sort(np.asarray(probabilities, dtype=np.float64))[::-1]
    if probs.size == 0:
        raise StudyError("no slice could be scored")
    return float(probs[: max(1, min(top_k, probs.size))].mean())


def predict_study(
    predictor: Any,
    items: Sequence[SliceFile],
    top_k: int = DEFAULT_TOP_K,
    level: float = EXPORT_WINDOW_LEVEL,
    width: float = EXPORT_WINDOW_WIDTH,
    progress: bool = False,
) -> StudyPrediction:
    """Order, decode (the shared image path), score in batches and aggregate one series.

    Out-of-distribution slices are reported but left out of the study score.
    """
    from tqdm.auto import tqdm

    ordered = order_slices(items)
    names, positions, arrays, errors = [], [], [], []
    for item in ordered:
        try:
            arrays.append(image_to_array(item.data, predictor.img_size, level, width))
            names.append(item.name)
            positions.append(item.position)
        except ImageDecodeError as exc:
            errors.append((item.name, str(exc)))
    if not arrays:
        raise StudyError("no slice in the study could be decoded")
    probs, inside = [], []
    with tqdm(total=len(arrays), unit="slice", disable=not progress) as bar:
        for start in range(0, len(arrays), BATCH_SIZE):
            result = predictor.run(np.stack(arrays[start : start + BATCH_SIZE]))
            probs.append(result.probabilities)
            inside.append(result.in_distribution)
            bar.update(len(result.probabilities))
    probabilities = np.concatenate(probs)
    in_distribution = np.concatenate(inside)
    scored = np.where(in_distribution, probabilities, -np.inf)
    top = [int(i) for i in np.argsort(-scored, kind="stable")[:top_k] if np.isfinite(scored[i])]
    study_probability = aggregate(probabilities[in_distribution], top_k) if top else 0.0
    return StudyPrediction(
        names, positions, probabilities, in_distribution, study_probability, top, errors
    )


def calibrate_study_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    studies: int = 400,
    slices_per_study: int = 40,
    fracture_slices: int = 3,
    top_k: int = DEFAULT_TOP_K,
    seed: int = 0,
) -> dict[str, Any]:
    """Pick the study threshold on synthetic series made of validation-slice scores.

    A normal study samples ``slices_per_study`` normal slices; a fracture study swaps
    ``fracture_slices`` of them for copies of one fracture slice (a fracture spans a
    few neighbouring slices). Returns both operating points and the recipe.
    """
    rng = np.random.default_rng(seed)
    probs = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    normal = np.flatnonzero(labels == 0)
    fracture_groups = sorted({g for g, y in zip(groups, labels, strict=True) if y == 1})
    scores, truth = [], []
    for s in range(studies):
        chosen = list(rng.choice(normal, slices_per_study, replace=True))
        is_fracture = s % 2 == 1
        if is_fracture:
            group = fracture_groups[rng.integers(len(fracture_groups))]
            members = np.flatnonzero(groups == group)
            chosen[:fracture_slices] = rng.choice(members, fracture_slices, replace=True)
        scores.append(aggregate(probs[chosen], top_k))
        truth.append(int(is_fracture))
    points = choose_operating_points(np.array(truth), np.array(scores))
    return {
        "aggregation": f"top{top_k}_mean",
        "top_k": top_k,
        "operating_points": points,
        "calibration": {
            "synthetic_studies": studies,
            "slices_per_study": slices_per_study,
            "fracture_slices_per_positive_study": fracture_slices,
            "source": "grouped-validation slices of the training split",
        },
    }


def threshold_for(slices: int, top_k: int, slice_threshold: float, study_threshold: float) -> float:
    """The study threshold was calibrated on many-slice studies; a "study" of fewer slices
    than ``top_k`` is its slices' mean and is judged as a slice is."""
    return slice_threshold if slices < top_k else study_threshold
