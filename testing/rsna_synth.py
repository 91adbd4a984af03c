"""Synthetic RSNA 2022-format cervical-spine CT studies: the competition's layout, without its
350 GB, for tests, CI and the synthetic benchmark.

    python -m testing.rsna_synth --out DIR --studies 100 --seed 0 --label-mode independent \\
        [--size 128] [--slices 60] [--segmentations 0.3] [--boxed 0.75]

writes what a user gets when they download the competition data::

    train_images/<StudyInstanceUID>/<n>.dcm   one axial CT series per study
    train.csv                                 StudyInstanceUID, patient_overall, C1..C7
    train_bounding_boxes.csv                  StudyInstanceUID, x, y, width, height, slice_number
    segmentations/<uid>.nii.gz                vertebra labels (1..7 = C1..C7, 8 = T1) for a share
    synth_truth.json                          what the generator did (not part of the layout)

**Images.** Real geometry and Hounsfield units: air -1000 outside the body, a fat layer
(-100 HU) under the skin, soft tissue (~45 HU), the airway; at the top the skull base (skull
~1200 HU, brain, clivus, occipital condyles), at the bottom the upper thorax (lungs, T1).
Seven vertebra-like bodies C1..C7 are stacked head to foot with discs between them and a
cervical lordosis: C1 a ring with lateral masses and no body, C2 a dens rising into the C1
ring then a body, C3..C7 a body (cortical rim ~1000 HU around cancellous bone ~250 HU with
texture) with a posterior arch around the canal, transverse processes and a spinous process.
Each slice is stored as a scanner does (int16, RescaleIntercept -1024, slope 1, CT SOP
class, ImagePositionPatient / ImageOrientationPatient, PixelSpacing, SliceThickness,
InstanceNumber = n of n.dcm), in a mix of transfer syntaxes (explicit and implicit VR little
endian, RLE lossless, JPEG-LS lossless, a study mixing them per file); some studies and
files have no Modality (de-identified); the file numbers run head to foot in most studies,
foot to head in some and in no spatial order in others, so a reader must order by position.

**Labels** (``--label-mode``):

* ``independent``: a fracture-like lesion (a 4-7 mm lucent gap through the bone of one
  vertebra over 2-5 consecutive slices: the first of up to ``LESION_TRIES`` lines drawn
  through its cortex that breaks at least ``LESION_MIN_CORTEX_MM2`` of cortex on each slice,
  else the one that breaks most; a displaced fracture a reader could see, not a graze at a
  bone's edge) is implanted in each fractured vertebra
  of a positive patient; the fractured level is uniform over C1..C7 and independent of
  anything else, so a model can only score well by seeing the lesion. The boxes frame the
  lesion on its slices.
* ``level``: Kaggle-like. No lesion anywhere; "fracture" boxes are put on 2-5 top (C1-C2)
  slices of positive patients, so label == level. A model learns the level, and the
  level-matched specificity shows the gap.

About half the patients are positive (exactly ``round(positive * studies)``), a share of
them (``--boxed``) have boxes like the 235 boxed studies of the competition (the others are
patient-positive without boxes: slice labels unknown), and a share of all studies have a
segmentation. The NIfTI volume is written in the competition's convention, which the reader
undoes: array axes (x = column, y = row, z) with y flipped and z running foot to head, i.e.
``nifti[x, y, z] = mask[Z-1-z, H-1-y, x]`` where ``mask`` is (Z, H, W) head to foot; public
solutions read it back as ``nifti[:, ::-1, ::-1].transpose(2, 1, 0)``.

Deterministic by ``seed`` (UIDs included); study ``i`` draws from its own generator.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

LABEL_MODES = ("independent", "level")
VERTEBRAE = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
STUDY_COLUMNS = ("StudyInstanceUID", "patient_overall", *VERTEBRAE)
BOX_COLUMNS = ("StudyInstanceUID", "x", "y", "width", "height", "slice_number")
TRUTH_FILE = "synth_truth.json"
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
INTERCEPT = -1024.0

# Transfer syntaxes per study, cycled by study index (most files uncompressed, as in RSNA).
SYNTAXES = ("explicit", "implicit", "rle", "explicit", "jpegls", "implicit", "mixed")
# File numbering per study, cycled by study index: n of n.dcm head to foot, foot to head,
# or in no spatial order.
NUMBERINGS = ("head_first", "foot_first", "head_first", "shuffled", "head_first")
# Every third study has no Modality on any file; elsewhere a few files lack it.
NO_MODALITY_EVERY = 3
NO_MODALITY_FILE_SHARE = 0.05

# Hounsfield units.
AIR, LUNG, FAT, SOFT, CSF, BRAIN, DISC = -1000.0, -850.0, -100.0, 45.0, 15.0, 35.0, 80.0
CORTEX, CANCELLOUS, ARCH, SKULL = 1000.0, 250.0, 750.0, 1200.0
LESION_HU = 60.0  # fracture gap: blood and soft tissue where bone was
# A displaced fracture's gap: 4-7 mm and at least 3 pixels of the generated size (so that it
# survives resizing to the training size: a 1-pixel line would be a test of resampling),
# through the cortex (a line wholly inside cancellous bone is a bone bruise, not a fracture).
LESION_GAP_MM, LESION_GAP_PIXELS = (4.0, 7.0), 3.0
LESION_LENGTH_MM = 24.0
LESION_MIN_CORTEX_MM2 = 10.0  # cortical bone the line removes on each of its slices
LESION_TRIES = 30
NOISE_HU = 12.0
TRABECULAR_HU = 45.0
UID_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's root: never a real RSNA UID

Box = tuple[float, float, float, float]  # x, y, width, height in pixels


@dataclass(frozen=True)
class SynthStudy:
    """What the generator put into one study (slices head to foot)."""

    uid: str
    positive: bool
    fractured: tuple[str, ...]  # train.csv vertebrae at 1
    boxed: bool  # boxes written for it
    segmentation: bool  # segmentations/<uid>.nii.gz written
    numbering: str
    syntax: str
    modality_missing: bool  # no file of the study has Modality
    spacing_mm: float
    slice_numbers: tuple[int, ...]  # n of n.dcm, head to foot
    levels: np.ndarray  # (Z, 7) uint8: vertebrae C1..C7 with pixels in the slice
    lesion_slices: tuple[int, ...]  # slice numbers with an implanted lesion
    box_slices: tuple[int, ...]  # slice numbers written to train_bounding_boxes.csv

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "levels"}
        data["levels"] = self.levels.astype(int).tolist()
        return data


@dataclass
class SynthSet:
    root: Path
    seed: int
    label_mode: str
    studies: list[SynthStudy] = field(default_factory=list)
    seconds: float = 0.0


# --- anatomy ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anatomy:
    """One patient's neck: sizes in mm, depths (mm below the top slice) of each level."""

    fov_mm: float
    neck: tuple[float, float]  # semi-axes (left-right, front-back)
    fat_mm: float
    spine_y: float  # vertebral body centre, mm behind the image centre
    lordosis_mm: float
    scale: float
    skull_base: float  # depth where the head ends
    ranges: dict[int, tuple[float, float]]  # level (1..7 = C1..C7, 8 = T1, 9 = T2) -> depths
    dens_end: float  # depth where the C2 dens joins its body
    thorax: float  # depth where the upper thorax begins


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    top = rng.uniform(8.0, 18.0)
    c1 = rng.uniform(10.0, 13.0)
    ranges: dict[int, tuple[float, float]] = {1: (top, top + c1)}
    dens_start = top + 0.15 * c1
    dens_end = top + c1
    c2_end = dens_end + rng.uniform(20.0, 25.0)
    ranges[2] = (dens_start, c2_end)
    depth = c2_end
    for level in range(3, 10):
        depth += rng.uniform(3.0, 5.0)  # the disc above
        height = rng.uniform(11.0, 14.0) * (1.0 + 0.03 * (level - 3))
        ranges[level] = (depth, depth + height)
        depth += height
    return _Anatomy(
        fov_mm=rng.uniform(140.0, 160.0),
        neck=(rng.uniform(48.0, 58.0), rng.uniform(42.0, 50.0)),
        fat_mm=rng.uniform(3.0, 7.0),
        spine_y=rng.uniform(0.0, 8.0),
        lordosis_mm=rng.uniform(2.0, 6.0),
        scale=rng.uniform(0.9, 1.1),
        skull_base=top - rng.uniform(0.0, 3.0),
        ranges=ranges,
        dens_end=dens_end,
        thorax=ranges[8][0] + rng.uniform(0.0, 6.0),
    )


def _ellipse(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ax: float, ay: float) -> Any:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def _bone(hu: np.ndarray, labels: np.ndarray, mask: np.ndarray, value: float, level: int) -> None:
    hu[mask] = value
    labels[mask] = level


def _body(hu: Any, labels: Any, x: Any, y: Any, cy: float, ax: float, ay: float,
          level: int) -> None:  # fmt: skip
    """A vertebral body (or dens, lateral mass): cortical rim around cancellous bone."""
    outer = _ellipse(x, y, 0.0, cy, ax, ay)
    _bone(hu, labels, outer, CORTEX, level)
    rim = 1.5
    inner = _ellipse(x, y, 0.0, cy, max(ax - rim, 0.5), max(ay - rim, 0.5))
    hu[inner] = CANCELLOUS


def _mass(hu: Any, labels: Any, x: Any, y: Any, cx: float, cy: float, ax: float, ay: float,
          level: int) -> None:  # fmt: skip
    """A lateral mass or condyle: rim and cancellous bone, off the midline."""
    _bone(hu, labels, _ellipse(x, y, cx, cy, ax, ay), CORTEX, level)
    hu[_ellipse(x, y, cx, cy, ax - 1.5, ay - 1.5)] = CANCELLOUS


def _posterior(hu: Any, labels: Any, x: Any, y: Any, body_back: float, s: float, level: int,
               f: float) -> None:  # fmt: skip
    """Posterior arch around the canal, transverse processes, spinous process."""
    canal = (10.0 * s, 6.5 * s)
    cy = body_back + 0.5 + canal[1]
    arch = _ellipse(x, y, 0.0, cy, canal[0] + 2.5, canal[1] + 2.5) & ~_ellipse(
        x, y, 0.0, cy, *canal
    )
    _bone(hu, labels, arch & (y > body_back - 1.0), ARCH, level)
    hu[_ellipse(x, y, 0.0, cy, *canal)] = CSF
    labels[_ellipse(x, y, 0.0, cy, *canal)] = 0
    spine_length = (8.0 + 2.0 * (level - 2)) * s
    spinous = (np.abs(x) < 1.8) & (y > cy + canal[1]) & (y < cy + canal[1] + spine_length)
    _bone(hu, labels, spinous, ARCH, level)
    if 0.3 <= f <= 0.7:
        ty = body_back - 2.0
        width = 9.0 * s + 5.0
        bar = (np.abs(y - ty) < 2.5) & (np.abs(x) > 6.0 * s) & (np.abs(x) < width + 6.0 * s)
        hole = _ellipse(np.abs(x), y, 6.0 * s + 4.0, ty, 1.8, 1.8)
        _bone(hu, labels, bar & ~hole, ARCH, level)
        hu[hole & bar] = SOFT
        labels[hole & bar] = 0


def _vertebra(hu: Any, labels: Any, x: Any, y: Any, anatomy: _Anatomy, level: int,
              depth: float) -> None:  # fmt: skip
    """The bone of ``level`` at ``depth``: its body within its range, its posterior
    elements from a fifth of the way down to partway into the disc below (laminae and
    spinous processes slope down), so disc slices show the arch of the level above."""
    start, end = anatomy.ranges[level]
    s = anatomy.scale * (1.0 + 0.04 * max(level - 3, 0))
    lordosis = anatomy.lordosis_mm * math.sin(math.pi * min(max(depth / 130.0, 0.0), 1.0))
    cy = anatomy.spine_y - lordosis
    if level == 1:
        if not start <= depth <= end:
            return
        f = (depth - start) / (end - start)
        ring = _ellipse(x, y, 0.0, cy + 6.0, 17.0 * s, 14.0 * s) & ~_ellipse(
            x, y, 0.0, cy + 6.0, 14.5 * s, 11.5 * s
        )
        if 0.15 <= f <= 0.85:
            _bone(hu, labels, ring, ARCH, 1)
            _bone(hu, labels, _ellipse(x, y, 0.0, cy - 10.5 * s, 4.0, 2.0), CORTEX, 1)
        for side in (-1.0, 1.0):
            _mass(hu, labels, x, y, side * 11.0 * s, cy + 5.0, 5.5 * s, 7.0 * s, 1)
        return
    if level == 2 and depth < anatomy.dens_end:
        if depth >= start:
            _body(hu, labels, x, y, cy - 3.0, 5.0 * s, 5.0 * s, 2)  # the dens
        return
    body_start = anatomy.dens_end if level == 2 else start
    ay = 7.0 * s
    if depth <= end:
        f = (depth - body_start) / (end - body_start)
        cupping = 1.0 + 0.08 * abs(2.0 * f - 1.0)  # bodies widen towards the endplates
        _body(hu, labels, x, y, cy, 8.5 * s * cupping, ay * cupping, level)
    arch_start = body_start + 0.2 * (end - body_start)
    arch_end = _arch_end(anatomy, level)
    if arch_start <= depth <= arch_end:
        f = (depth - arch_start) / (arch_end - arch_start)
        _posterior(hu, labels, x, y, cy + ay, s, level, f)


def _arch_end(anatomy: _Anatomy, level: int) -> float:
    """Depth where the posterior elements of ``level`` end (C1 has none below its ring)."""
    end = anatomy.ranges[level][1]
    below = anatomy.ranges.get(level + 1, (end + 4.0, 0.0))[0]
    return end if level == 1 else end + 0.6 * max(below - end, 0.0)


def _slice(anatomy: _Anatomy, depth: float, x: Any, y: Any, rng: np.random.Generator
           ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(HU, vertebra labels) of the slice ``depth`` mm below the top one, before noise."""
    hu = np.full(x.shape, AIR, dtype=np.float32)
    labels = np.zeros(x.shape, dtype=np.uint8)
    ax, ay = anatomy.neck
    cy_spine = anatomy.spine_y
    if depth < anatomy.skull_base:  # head: skull, brain, clivus, occipital condyles
        hx, hy = min(70.0, anatomy.fov_mm / 2 - 2), min(75.0, anatomy.fov_mm / 2 - 2)
        head = _ellipse(x, y, 0.0, 0.0, hx, hy)
        hu[head] = SKULL
        hu[_ellipse(x, y, 0.0, 0.0, hx - 6.0, hy - 6.0)] = BRAIN
        hu[_ellipse(x, y, 0.0, cy_spine - 6.0, 7.0, 11.0)] = SKULL * 0.7
        if depth > anatomy.skull_base - 6.0:
            for side in (-1.0, 1.0):
                _mass(hu, labels, x, y, side * 12.0, cy_spine + 6.0, 6.0, 7.5, 0)
        return hu, labels
    thorax = depth >= anatomy.thorax
    if thorax:
        ax, ay = min(ax * 1.45, anatomy.fov_mm / 2 - 1), ay * 1.1
    hu[_ellipse(x, y, 0.0, 0.0, ax, ay)] = FAT
    hu[_ellipse(x, y, 0.0, 0.0, ax - anatomy.fat_mm, ay - anatomy.fat_mm)] = SOFT
    airway_r = 6.0 if depth > anatomy.ranges[4][0] else 4.5
    hu[_ellipse(x, y, 0.0, cy_spine - 19.0, airway_r, airway_r * 0.8)] = AIR
    if thorax and depth > anatomy.thorax + 10.0:
        for side in (-1.0, 1.0):
            hu[_ellipse(x, y, side * ax * 0.55, cy_spine - 4.0, ax * 0.3, ay * 0.55)] = LUNG
    for level, (start, _) in anatomy.ranges.items():
        above = anatomy.ranges.get(level - 1)
        if level >= 3 and above is not None and above[1] < depth < start:  # the disc above
            lordosis = anatomy.lordosis_mm * math.sin(math.pi * min(depth / 130.0, 1.0))
            hu[_ellipse(x, y, 0.0, cy_spine - lordosis, 8.5 * anatomy.scale,
                        7.0 * anatomy.scale)] = DISC  # fmt: skip
    for level, (start, _) in anatomy.ranges.items():
        if start <= depth <= _arch_end(anatomy, level):
            _vertebra(hu, labels, x, y, anatomy, level, depth)
    bone = labels > 0
    hu[bone] += rng.normal(0.0, TRABECULAR_HU, int(bone.sum())).astype(np.float32)
    return hu, labels


def _finish(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Partial volume (a light 3x3 blur) and scanner noise; stored int16 values."""
    blurred = hu.copy()
    blurred[1:-1, 1:-1] = (
        4.0 * hu[1:-1, 1:-1] + hu[:-2, 1:-1] + hu[2:, 1:-1] + hu[1:-1, :-2] + hu[1:-1, 2:]
    ) / 8.0
    blurred += rng.normal(0.0, NOISE_HU, hu.shape).astype(np.float32)
    return np.clip(np.rint(blurred - INTERCEPT), -32768, 32767).astype(np.int16)


# --- lesions and boxes --------------------------------------------------------------------


def _box(mask: np.ndarray, pad: int = 2) -> Box | None:
    """(x, y, width, height) in pixels around ``mask``, padded; None when empty."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    size = mask.shape[0]
    x0, y0 = max(cols.min() - pad, 0), max(rows.min() - pad, 0)
    x1, y1 = min(cols.max() + pad + 1, size), min(rows.max() + pad + 1, size)
    return float(x0), float(y0), float(x1 - x0), float(y1 - y0)


def _level_slices(labels: np.ndarray, level: int) -> np.ndarray:
    return np.flatnonzero((labels == level).any(axis=(1, 2)))


def _run(candidates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """2-5 consecutive slice indices from the middle of ``candidates``."""
    length = int(rng.integers(2, 6))
    lo, hi = int(candidates.min()), int(candidates.max())
    inner_lo, inner_hi = lo + (hi - lo) // 4, hi - (hi - lo) // 4
    first = int(rng.integers(inner_lo, max(inner_hi - length + 2, inner_lo + 1)))
    run = np.arange(first, first + length)
    return run[(run >= lo) & (run <= hi)]


def _implant(hu: np.ndarray, labels: np.ndarray, level: int, grid: tuple[Any, Any],
             pixel_mm: float, rng: np.random.Generator) -> list[tuple[int, Box]]:  # fmt: skip
    """A lucent line through the bone of ``level`` over consecutive slices; returns
    (slice index, box) per slice it shows on."""
    x, y = grid
    slices = _level_slices(labels, level)
    if slices.size == 0:
        return []
    run = _run(slices, rng)
    common = np.logical_and.reduce([labels[i] == level for i in run])
    if not common.any():
        run = run[:1]
        common = labels[run[0]] == level
    cortical = [hu[i] >= (ARCH + CANCELLOUS) / 2 for i in run]
    cortex = common & np.logical_and.reduce(cortical)
    points = np.argwhere(cortex if cortex.any() else common)
    # The line that breaks the most cortex on its thinnest slice, of LESION_TRIES drawn: a
    # fracture a reader (or a box) can see, not a graze of a few pixels at a bone's edge.
    best: tuple[float, list[np.ndarray]] = (-1.0, [])
    for _ in range(LESION_TRIES):
        row, col = points[rng.integers(len(points))]
        px, py = x[row, col], y[row, col]
        angle = rng.uniform(0.0, math.pi)
        nx, ny = math.cos(angle), math.sin(angle)
        width = max(rng.uniform(*LESION_GAP_MM), LESION_GAP_PIXELS * pixel_mm)
        across = np.abs((x - px) * nx + (y - py) * ny) < width / 2
        along = np.abs(-(x - px) * ny + (y - py) * nx) < LESION_LENGTH_MM / 2
        cuts = [across & along & (labels[i] == level) for i in run]
        broken = min(float((c & b).sum()) for c, b in zip(cuts, cortical, strict=True))
        if broken * pixel_mm**2 > best[0]:
            best = (broken * pixel_mm**2, cuts)
        if best[0] >= LESION_MIN_CORTEX_MM2:
            break
    found: list[tuple[int, Box]] = []
    for i, cut in zip(run, best[1], strict=True):
        if not cut.any():
            continue
        hu[i][cut] = LESION_HU + rng.normal(0.0, 10.0, int(cut.sum())).astype(np.float32)
        box = _box(cut)
        if box is not None:
            found.append((int(i), box))
    return found


def _level_boxes(labels: np.ndarray, level: int, rng: np.random.Generator
                 ) -> list[tuple[int, Box]]:  # fmt: skip
    """Kaggle-like "fracture" boxes: 2-5 slices at ``level`` boxed around its bone."""
    slices = _level_slices(labels, level)
    if slices.size == 0:
        return []
    found: list[tuple[int, Box]] = []
    for i in _run(slices, rng):
        box = _box(labels[i] == level)
        if box is not None:
            found.append((int(i), box))
    return found


# --- DICOM and NIfTI ----------------------------------------------------------------------


def _uid(seed: int, *parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(UID_PREFIX, ["rsna_synth", str(seed), *map(str, parts)]))


def _dicom(stored: np.ndarray, *, study_uid: str, series_uid: str, sop_uid: str, number: int,
           position: Sequence[float], pixel_mm: float, thickness: float, syntax: str,
           modality: bool) -> bytes:  # fmt: skip
    """One CT slice as a scanner writes it (int16, intercept -1024) in ``syntax``."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        CTImageStorage,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        JPEGLSLossless,
        RLELossless,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = study_uid.rsplit(".", 1)[-1]
    if modality:
        ds.Modality = "CT"
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [round(float(v), 4) for v in position]
    ds.ImageOrientationPatient = list(AXIAL)
    ds.PixelSpacing = [round(pixel_mm, 6), round(pixel_mm, 6)]
    ds.SliceThickness = round(thickness, 4)
    ds.KVP = 120
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = f"{INTERCEPT:g}"
    ds.RescaleSlope = "1"
    ds.WindowCenter, ds.WindowWidth = 400, 1800
    ds.PixelData = stored.astype("<i2").tobytes()
    if syntax == "implicit":
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif syntax == "rle":
        ds.compress(RLELossless, stored)
    elif syntax == "jpegls":
        ds.compress(JPEGLSLossless, stored)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_segmentation(path: Path, labels: np.ndarray, pixel_mm: float, spacing_mm: float) -> None:
    """Vertebra labels (Z, H, W) head to foot -> NIfTI in the competition's convention
    (see the module doc): ``nifti[x, y, z] = labels[Z-1-z, H-1-y, x]``."""
    import nibabel as nib

    volume = np.ascontiguousarray(labels[::-1, ::-1, :].transpose(2, 1, 0))
    affine = np.diag([-pixel_mm, -pixel_mm, spacing_mm, 1.0])
    nib.save(nib.Nifti1Image(volume.astype(np.uint8), affine), str(path))


# --- one study ----------------------------------------------------------------------------


def _numbers(numbering: str, count: int, rng: np.random.Generator) -> np.ndarray:
    """n of n.dcm for slices head to foot."""
    numbers = np.arange(1, count + 1)
    if numbering == "foot_first":
        return numbers[::-1].copy()
    if numbering == "shuffled":
        return rng.permutation(numbers)
    return numbers


def _study(root: Path, index: int, seed: int, *, label_mode: str, size: int, slices: int,
           positive: bool, boxed: bool, segmentation: bool,
           box_rows: list[list[Any]]) -> SynthStudy:  # fmt: skip
    rng = np.random.default_rng([seed, index])
    uid = _uid(seed, "study", index)
    count = max(8, slices + int(rng.integers(-(slices // 10), slices // 10 + 1)))
    probe = _anatomy(rng)
    length = max(rng.uniform(150.0, 170.0), probe.ranges[7][1] + 8.0)
    spacing = length / count
    pixel_mm = probe.fov_mm / size
    axis = (np.arange(size) - (size - 1) / 2) * pixel_mm
    x, y = np.meshgrid(axis, axis)
    depths = np.arange(count) * spacing
    hu = np.empty((count, size, size), dtype=np.float32)
    labels = np.empty((count, size, size), dtype=np.uint8)
    for i, depth in enumerate(depths):
        hu[i], labels[i] = _slice(probe, float(depth), x, y, rng)

    fractured: list[int] = []
    if positive:
        pool = [1, 2] if label_mode == "level" else list(range(1, 8))
        first = int(rng.choice(pool))
        fractured = [first]
        if rng.random() < 0.3:
            fractured.append(int(rng.choice([v for v in pool if v != first])))
    boxes: list[tuple[int, Box]] = []
    lesions: list[int] = []
    for level in fractured:
        if label_mode == "independent":
            found = _implant(hu, labels, level, (x, y), pixel_mm, rng)
            lesions += [i for i, _ in found]
        else:
            found = _level_boxes(labels, level, rng)
        boxes += found

    numbering = NUMBERINGS[index % len(NUMBERINGS)]
    syntax = SYNTAXES[index % len(SYNTAXES)]
    modality_missing = index % NO_MODALITY_EVERY == 1
    numbers = _numbers(numbering, count, rng)
    z_top = rng.uniform(-60.0, 40.0)
    origin = (-(size - 1) / 2 * pixel_mm + rng.uniform(-5, 5), -(size - 1) / 2 * pixel_mm)
    folder = root / "train_images" / uid
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = _uid(seed, "series", index)
    file_syntaxes = ("explicit", "implicit", "rle", "jpegls")
    for i in range(count):
        stored = _finish(hu[i], rng)
        file_syntax = file_syntaxes[i % 4] if syntax == "mixed" else syntax
        modality = not modality_missing and rng.random() >= NO_MODALITY_FILE_SHARE
        data = _dicom(
            stored, study_uid=uid, series_uid=series_uid, sop_uid=_uid(seed, "sop", index, i),
            number=int(numbers[i]), position=(*origin, z_top - depths[i]), pixel_mm=pixel_mm,
            thickness=spacing, syntax=file_syntax, modality=modality,
        )  # fmt: skip
        (folder / f"{int(numbers[i])}.dcm").write_bytes(data)

    if segmentation:
        (root / "segmentations").mkdir(exist_ok=True)
        write_segmentation(root / "segmentations" / f"{uid}.nii.gz", labels, pixel_mm, spacing)
    if boxed:
        for i, (bx, by, bw, bh) in sorted(boxes, key=lambda item: numbers[item[0]]):
            box_rows.append([uid, f"{bx:.5f}", f"{by:.5f}", f"{bw:.5f}", f"{bh:.5f}",
                             int(numbers[i])])  # fmt: skip
    levels = np.stack([(labels == v).any(axis=(1, 2)) for v in range(1, 8)], axis=1)
    return SynthStudy(
        uid=uid,
        positive=positive,
        fractured=tuple(VERTEBRAE[v - 1] for v in sorted(set(fractured))),
        boxed=boxed and bool(boxes),
        segmentation=segmentation,
        numbering=numbering,
        syntax=syntax,
        modality_missing=modality_missing,
        spacing_mm=float(spacing),
        slice_numbers=tuple(int(n) for n in numbers),
        levels=levels.astype(np.uint8),
        lesion_slices=tuple(sorted({int(numbers[i]) for i in lesions})),
        box_slices=tuple(sorted({int(numbers[i]) for i, _ in boxes})) if boxed else (),
    )


def _chosen(rng: np.random.Generator, population: Sequence[int], share: float) -> set[int]:
    """Exactly round(share * len(population)) members, drawn at random."""
    count = round(min(max(share, 0.0), 1.0) * len(population))
    return {int(v) for v in rng.permutation(np.asarray(population, dtype=int))[:count]}


def generate(
    out: str | Path,
    studies: int = 100,
    seed: int = 0,
    label_mode: str = "independent",
    size: int = 128,
    slices: int = 60,
    segmentations: float = 0.3,
    boxed: float = 0.75,
    positive: float = 0.5,
    progress: bool = False,
) -> SynthSet:
    """Write ``studies`` synthetic studies in the competition layout under ``out``."""
    if label_mode not in LABEL_MODES:
        raise ValueError(f"label_mode must be one of {LABEL_MODES}, not {label_mode!r}")
    if studies < 1 or size < 32 or slices < 8:
        raise ValueError("need at least 1 study, 32-pixel slices and 8 slices per study")
    start = time.perf_counter()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1_000_003])
    indices = list(range(studies))
    positives = _chosen(rng, indices, positive)
    with_boxes = _chosen(rng, sorted(positives), boxed)
    with_segmentation = _chosen(rng, indices, segmentations)
    result = SynthSet(root, seed, label_mode)
    box_rows: list[list[Any]] = []
    iterator: Any = indices
    if progress:
        from tqdm import tqdm

        iterator = tqdm(indices, desc="synthetic RSNA studies", unit="study")
    for index in iterator:
        result.studies.append(
            _study(root, index, seed, label_mode=label_mode, size=size, slices=slices,
                   positive=index in positives, boxed=index in with_boxes,
                   segmentation=index in with_segmentation, box_rows=box_rows)
        )  # fmt: skip
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(STUDY_COLUMNS)
        for study in result.studies:
            writer.writerow([study.uid, int(study.positive),
                             *(int(v in study.fractured) for v in VERTEBRAE)])  # fmt: skip
    with (root / "train_bounding_boxes.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(BOX_COLUMNS)
        writer.writerows(box_rows)
    result.seconds = time.perf_counter() - start
    truth = {
        "seed": seed,
        "label_mode": label_mode,
        "size": size,
        "studies": [s.to_json() for s in result.studies],
    }
    (root / TRUTH_FILE).write_text(json.dumps(truth))
    return result


def load_truth(root: str | Path) -> dict[str, Any]:
    """The generator's ``synth_truth.json`` of a synthetic set."""
    return dict(json.loads((Path(root) / TRUTH_FILE).read_text()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testing.rsna_synth", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="folder to write the layout into")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-mode", choices=LABEL_MODES, default="independent")
    parser.add_argument("--size", type=int, default=128, help="slice size in pixels")
    parser.add_argument("--slices", type=int, default=60, help="slices per study (+-10%%)")
    parser.add_argument("--segmentations", type=float, default=0.3,
                        help="share of studies with a segmentations/<uid>.nii.gz")  # fmt: skip
    parser.add_argument("--boxed", type=float, default=0.75,
                        help="share of positive patients with fracture boxes")  # fmt: skip
    parser.add_argument("--positive", type=float, default=0.5, help="share of positive patients")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    result = generate(
        args.out, args.studies, args.seed, args.label_mode, args.size, args.slices,
        args.segmentations, args.boxed, args.positive, progress=not args.no_progress,
    )  # fmt: skip
    slices = sum(len(s.slice_numbers) for s in result.studies)
    positives = sum(s.positive for s in result.studies)
    print(
        f"{len(result.studies)} studies ({positives} positive, "
        f"{sum(s.boxed for s in result.studies)} boxed, "
        f"{sum(s.segmentation for s in result.studies)} segmented), {slices} slices, "
        f"label mode {args.label_mode}, in {result.seconds:.1f} s -> {result.root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
