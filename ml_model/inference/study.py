"""Study mode: one CT series in, one answer out.

Slices are ordered along the neck (DICOM ``ImagePositionPatient`` z, else
``InstanceNumber``; for PNG/JPEG the slice number in the file name) and checked to be
one series here; ``core.InferenceCore.study`` scores them through the same path as
single slices and aggregates them into a study score.

Aggregation: the mean of the top-k slice probabilities (k = 2 by default). A
fracture shows on a few neighbouring slices, so requiring two suspicious slices
resists a single noisy slice, while the plain mean would dilute a fracture across
hundreds of normal slices. The study threshold is chosen on synthetic studies built
from out-of-fold slice scores (``ml_model.training.study_threshold``).
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ml_model.imaging.dicom import is_dicom

DEFAULT_TOP_K = 2

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


def threshold_for(slices: int, top_k: int, slice_threshold: float, study_threshold: float) -> float:
    """The study threshold was calibrated on many-slice studies; a "study" of fewer slices
    than ``top_k`` is its slices' mean and is judged as a slice is."""
    return slice_threshold if slices < top_k else study_threshold
