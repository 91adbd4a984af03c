"""DICOM bytes -> Hounsfield units (or display values) -> a windowed uint8 slice, and the
header facts and slice geometry a viewer or a study needs (pydicom, imported lazily).

What a file is decides how its pixels are read:

* **non-image objects** (structured reports, RT plans/structures/doses, presentation
  states, segmentations, waveforms...) are refused (415) by SOP class or Modality;
* **CT** (``Modality`` CT, else a CT SOP class, else an HU-like rescale on a file without
  ``Modality``): stored values -> HU through RescaleSlope/Intercept (an enhanced CT's per-frame
  or shared Pixel Value Transformation); padding (PixelPaddingValue / RangeLimit) becomes
  air; a file without rescale tags is read as HU unless its air sits near 0, the usual
  +1024 offset; HU are then windowed (the model card's window for the model);
* **other images** (MR, US, CR, NM... when ``require_ct`` is off; secondary captures
  without a CT rescale): display values, through the file's own VOI window if it has one,
  else as stored (8-bit) or stretched (wider);
* MONOCHROME1 is inverted after windowing, as a viewer displays it.

Every failure is one of the three errors of :mod:`ml_model.imaging.errors` (untrusted
bytes): unreadable -> ImageDecodeError naming the element where one is at fault; not a CT
image or an encoding no installed codec reads -> UnsupportedImageError; too many pixels ->
ImageTooLargeError. Decoders: pydicom's own (native, deflated, big-endian, RLE) and the
pylibjpeg plugins (JPEG baseline/extended/lossless incl. Process 14 SV1, JPEG-LS, JPEG 2000).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_model.imaging.errors import (
    MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    UnsupportedImageError,
)
from ml_model.imaging.errors import short_message as _short
from ml_model.imaging.window import hu_window, rescale_to_uint8

# Largest decoded DICOM pixel buffer of one frame (rows x columns x samples x bytes per
# sample): a compressed (RLE, JPEG 2000) file can otherwise expand far past the upload limit.
MAX_DICOM_PIXEL_BYTES = 4 * MAX_IMAGE_PIXELS
# Most frames a multi-frame file may declare (its frames are read one at a time).
MAX_DICOM_FRAMES = 4096

AIR_HU = -1024.0

_DICOM_MAGIC_OFFSET = 128


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry ``DICM`` after a 128-byte preamble."""
    return data[_DICOM_MAGIC_OFFSET : _DICOM_MAGIC_OFFSET + 4] == b"DICM"


# DICOM modalities whose pixels are not CT: refused at the door with a reason, before any
# model sees them (a de-identified file without Modality is not refused for that alone).
NON_CT_MODALITIES = frozenset(
    {"MR", "US", "CR", "DX", "MG", "NM", "PT", "XA", "RF", "IO", "OP", "SM", "ES", "XC", "OCT",
     "RTIMAGE", "PX", "BMD", "GM", "OPT"}
)  # fmt: skip
# Modalities of objects that are not images at all (reports, plans, states, signals).
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "KO", "PR", "DOC", "RTPLAN", "RTSTRUCT", "RTDOSE", "RTRECORD", "SEG", "REG", "FID",
     "RWV", "ECG", "HD", "EPS", "AU", "PLAN", "EEG", "EMG", "EOG", "RESP", "POS", "M3D"}
)  # fmt: skip
# Image SOP classes by what their name starts with (pydicom's UID dictionary) -> modality.
_CT_SOP_NAMES = (
    "CT Image Storage",
    "Enhanced CT Image Storage",
    "Legacy Converted Enhanced CT Image Storage",
)
_SOP_MODALITY = (
    ("MR ", "MR"), ("Enhanced MR", "MR"), ("Legacy Converted Enhanced MR", "MR"),
    ("Ultrasound", "US"), ("Enhanced US", "US"), ("Computed Radiography", "CR"),
    ("Digital X-Ray", "DX"), ("Digital Mammography", "MG"), ("Breast Tomosynthesis", "MG"),
    ("Breast Projection", "MG"), ("Digital Intra-Oral", "IO"), ("Nuclear Medicine", "NM"),
    ("Positron Emission", "PT"), ("Enhanced PET", "PT"), ("Legacy Converted Enhanced PET", "PT"),
    ("X-Ray Angiographic", "XA"), ("Enhanced XA", "XA"), ("X-Ray 3D", "XA"),
    ("X-Ray Radiofluoroscopic", "RF"), ("Enhanced XRF", "RF"), ("RT Image", "RTIMAGE"),
    ("Ophthalmic", "OP"), ("VL ", "XC"), ("Video ", "XC"), ("Wide Field Ophthalmic", "OP"),
    ("Dermoscopic", "XC"), ("Photoacoustic", "PA"), ("Intravascular Optical", "IVOCT"),
)  # fmt: skip

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Longest text of a number we parse (a DS is at most 16 characters, an IS 12).
_MAX_NUMBER_TEXT = 64


@dataclass(frozen=True)
class DicomFacts:
    """Acquisition facts of a DICOM slice worth showing next to it; never a patient
    identifier, a UID, a date or an institution."""

    modality: str | None
    series_description: str | None
    slice_location_mm: float | None
    pixel_spacing_mm: tuple[float, float] | None  # (row spacing, column spacing)
    slice_thickness_mm: float | None
    rows: int | None
    columns: int | None
    transfer_syntax: str | None  # the transfer syntax's name, e.g. "JPEG 2000 Image Compression"


@dataclass(frozen=True)
class SeriesIdentity:
    """Which exam, study and series a slice belongs to, and the scanner that made it: what the
    worklist records of a saved upload (UIDs and scanner) and what ties a printed report to its
    exam in the PACS (UIDs, accession number, study date as YYYY-MM-DD). Never the patient's
    name, ID or birth date. Each is None when the header lacks it."""

    study_uid: str | None
    series_uid: str | None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    accession_number: str | None = None
    study_date: str | None = None


@dataclass(frozen=True)
class DicomImage:
    """One decoded frame: HU (``is_hu``) or display values, and how to show them."""

    values: np.ndarray  # float32 HU, or a uint8 display rendering when not ``is_hu``
    is_hu: bool
    monochrome1: bool
    facts: DicomFacts
    # Informational notes (a guessed intercept, padding set to air): never errors.
    notes: tuple[str, ...] = ()

    def window(self, level: float, width: float) -> np.ndarray:
        """uint8 slice: HU through the window (level, width), inverted for MONOCHROME1;
        display values (not HU) are already rendered and ignore the window."""
        if not self.is_hu:
            return self.values
        gray = hu_window(self.values, level, width)
        return np.asarray(255 - gray, dtype=np.uint8) if self.monochrome1 else gray


@dataclass(frozen=True)
class SliceGeometry:
    """Where a slice (or each frame of an enhanced multi-frame file) lies, for ordering a
    study. Unusable header values are left out and described in ``problems``."""

    positions: tuple[tuple[float, float, float] | None, ...]  # ImagePositionPatient, per frame
    orientations: tuple[tuple[float, ...] | None, ...]  # ImageOrientationPatient (6), per frame
    instance: int | None
    series: str | None  # SeriesInstanceUID: for the one-series check only, never shown
    frames: int
    problems: tuple[str, ...] = ()


class _BadElement(Exception):
    """A header element whose value cannot be used; carries the sentence naming it."""


# --- reading header values --------------------------------------------------------------


def _tag_text(keyword: str) -> str:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _raw(dataset: Any, keyword: str) -> Any:
    """The value of ``keyword`` (None when absent or empty); a value pydicom cannot even
    parse raises _BadElement naming the element."""
    try:
        if keyword not in dataset:
            return None
        value = dataset[keyword].value
    except Exception as exc:  # pydicom parses lazily: many error types
        raise _BadElement(f"{_tag_text(keyword)} could not be read: {_short(exc, 120)}") from exc
    if value is None or value == "" or (isinstance(value, bytes | bytearray) and not value):
        return None
    return value


def _to_float(value: Any, keyword: str) -> float:
    """One number of a DS/IS/FD/US... value; text that is not a number names the element."""
    if isinstance(value, bool):
        raise _BadElement(f"{_tag_text(keyword)} is not a number: {value!r}")
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if not text or len(text) > _MAX_NUMBER_TEXT:
        shown = text if len(text) <= 20 else f"{text[:20]}... ({len(text)} characters)"
        raise _BadElement(f"{_tag_text(keyword)} is not a number: {shown!r}")
    try:
        return float(text)
    except ValueError:
        raise _BadElement(f"{_tag_text(keyword)} is not a number: {text!r}") from None


def _number(dataset: Any, keyword: str, finite: bool = True) -> float | None:
    """A single-valued numeric element as a (finite) float, or None when absent."""
    value = _raw(dataset, keyword)
    if value is None:
        return None
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        if len(value) == 0:
            return None
        value = value[0]
    number = _to_float(value, keyword)
    if finite and not math.isfinite(number):
        raise _BadElement(f"{_tag_text(keyword)} is not a finite number: {number}")
    return number


def _integer(dataset: Any, keyword: str) -> int | None:
    number = _number(dataset, keyword)
    if number is None:
        return None
    if number != int(number):
        raise _BadElement(f"{_tag_text(keyword)} is not a whole number: {number:g}")
    return int(number)


def _numbers(dataset: Any, keyword: str, count: int) -> tuple[float, ...] | None:
    """A multi-valued numeric element of exactly ``count`` finite values, or None."""
    value = _raw(dataset, keyword)
    if value is None:
        return None
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
    if len(values) != count:
        raise _BadElement(f"{_tag_text(keyword)} has {len(values)} values, {count} expected")
    numbers = tuple(_to_float(v, keyword) for v in values)
    if not all(math.isfinite(n) for n in numbers):
        raise _BadElement(f"{_tag_text(keyword)} has a value that is not a finite number")
    return numbers


def _text(dataset: Any, keyword: str, limit: int = 64) -> str | None:
    """A short text element, control characters removed; None when absent or unreadable
    (a label is never worth refusing a file for)."""
    try:
        value = _raw(dataset, keyword)
    except _BadElement:
        return None
    if value is None:
        return None
    text = _CONTROL.sub(" ", str(value)).strip()
    return text[:limit] or None


def _lenient(read: Any, *args: Any) -> Any:
    """``read(*args)``, or None where the value is unusable (facts shown, not relied on)."""
    try:
        return read(*args)
    except _BadElement:
        return None


def _item(dataset: Any, *path: str) -> Any:
    """The first item down a path of sequences (None where any is absent or empty)."""
    current = dataset
    for keyword in path:
        value = _raw(current, keyword)
        if not value:
            return None
        try:
            current = value[0]
        except (IndexError, TypeError, KeyError):
            return None
    return current


def _frame_item(dataset: Any, frame: int, group: str) -> Any:
    """An enhanced multi-frame file's functional group item for ``frame``: per-frame first,
    else shared (None when neither holds it)."""
    per_frame = _raw(dataset, "PerFrameFunctionalGroupsSequence")
    if per_frame is not None and 0 <= frame < len(per_frame):
        found = _item(per_frame[frame], group)
        if found is not None:
            return found
    return _item(dataset, "SharedFunctionalGroupsSequence", group)


# --- what the file is --------------------------------------------------------------------


def _sop_name(dataset: Any) -> tuple[str, str]:
    """(SOP Class UID, its name; the UID itself when unknown, '' when absent)."""
    from pydicom.uid import UID

    uid = _text(dataset, "SOPClassUID", 128)
    if uid is None:
        meta = getattr(dataset, "file_meta", None)
        uid = _text(meta, "MediaStorageSOPClassUID", 128) if meta is not None else None
    if uid is None:
        return "", ""
    try:
        return uid, str(UID(uid).name)
    except Exception:  # a malformed UID string
        return uid, uid


def _is_image_sop(name: str) -> bool:
    return "Image" in name or name.endswith("Volume Storage")


def _modality_from_sop(name: str) -> str | None:
    if name.startswith(_CT_SOP_NAMES):
        return "CT"
    for prefix, modality in _SOP_MODALITY:
        if name.startswith(prefix):
            return modality
    return None


def _has_hu_rescale(dataset: Any) -> bool:
    """A rescale that reads like HU: RescaleType HU, or an intercept at the usual offsets."""
    try:
        kind = _text(dataset, "RescaleType")
        intercept = _number(dataset, "RescaleIntercept")
    except _BadElement:
        return False
    return kind == "HU" or (intercept is not None and intercept <= -500)


def _classify(dataset: Any, require_ct: bool) -> tuple[str | None, bool]:
    """(the modality, stated or inferred; whether the pixels are CT HU). Raises
    UnsupportedImageError for non-image objects and, with ``require_ct``, non-CT images."""
    modality = (_text(dataset, "Modality", 16) or "").upper() or None
    sop_uid, sop_name = _sop_name(dataset)
    known_sop = bool(sop_name) and sop_name != sop_uid
    non_image_sop = (
        known_sop and sop_name.endswith(("Storage", "Trial")) and not _is_image_sop(sop_name)
    )
    if modality in NON_IMAGE_MODALITIES or non_image_sop:
        what = sop_name if non_image_sop else f"Modality {modality}"
        raise UnsupportedImageError(
            f"the DICOM file is not an image ({what}); this product reads CT image slices only"
        )
    inferred = _modality_from_sop(sop_name) if known_sop else None
    if require_ct and modality in NON_CT_MODALITIES:
        raise UnsupportedImageError(
            f"the DICOM file is a {modality} image, not CT; this product reads CT slices only"
        )
    if modality is None and inferred is not None and inferred != "CT":
        if require_ct:
            raise UnsupportedImageError(
                f"the DICOM file is a {inferred} image (no Modality; its SOP class is "
                f"{sop_name}), not CT; this product reads CT slices only"
            )
        modality = inferred
    if modality is None and inferred == "CT":
        modality = "CT"
    if modality == "CT" or inferred == "CT":
        return modality, True
    if modality in (None, "OT") and _has_hu_rescale(dataset):
        return modality or "CT", True  # a de-identified or converted CT without Modality
    return modality, False


# --- header facts -----------------------------------------------------------------------


def _facts(dataset: Any, modality: str | None, frame: int = 0) -> DicomFacts:
    """The facts of :class:`DicomFacts`, each left out (None) where unusable."""
    from pydicom.uid import UID

    measures = _frame_item(dataset, frame, "PixelMeasuresSequence")
    spacing = _lenient(_numbers, dataset, "PixelSpacing", 2)
    thickness = _lenient(_number, dataset, "SliceThickness")
    if measures is not None:
        spacing = spacing or _lenient(_numbers, measures, "PixelSpacing", 2)
        thickness = (
            thickness if thickness is not None else _lenient(_number, measures, "SliceThickness")
        )
    location = _lenient(_number, dataset, "SliceLocation")
    if location is None:
        position, orientation = _plane(dataset, frame)
        if position is not None:
            location = _along_normal(position, orientation)
    syntax = None
    meta = getattr(dataset, "file_meta", None)
    uid = _text(meta, "TransferSyntaxUID", 128) if meta is not None else None
    if uid is not None:
        try:
            syntax = str(UID(uid).name)[:96]
        except Exception:
            syntax = uid[:96]
    rows = _lenient(_integer, dataset, "Rows")
    columns = _lenient(_integer, dataset, "Columns")
    return DicomFacts(
        modality=modality,
        series_description=_text(dataset, "SeriesDescription"),
        slice_location_mm=location,
        pixel_spacing_mm=(spacing[0], spacing[1]) if spacing else None,
        slice_thickness_mm=thickness,
        rows=rows if rows is not None and rows >= 0 else None,
        columns=columns if columns is not None and columns >= 0 else None,
        transfer_syntax=syntax,
    )


def _plane(
    dataset: Any, frame: int = 0
) -> tuple[tuple[float, float, float] | None, tuple[float, ...] | None]:
    """(ImagePositionPatient, ImageOrientationPatient) of a frame; None where unusable."""
    position = _lenient(_numbers, dataset, "ImagePositionPatient", 3)
    orientation = _lenient(_numbers, dataset, "ImageOrientationPatient", 6)
    if position is None:
        item = _frame_item(dataset, frame, "PlanePositionSequence")
        position = _lenient(_numbers, item, "ImagePositionPatient", 3) if item else None
    if orientation is None:
        item = _frame_item(dataset, frame, "PlaneOrientationSequence")
        orientation = _lenient(_numbers, item, "ImageOrientationPatient", 6) if item else None
    return position, orientation


def slice_normal(orientation: Sequence[float] | None) -> np.ndarray | None:
    """The unit normal (row direction x column direction) of an ImageOrientationPatient;
    None where the two directions are degenerate."""
    if orientation is None or len(orientation) != 6:
        return None
    row = np.asarray(orientation[:3], dtype=np.float64)
    column = np.asarray(orientation[3:], dtype=np.float64)
    normal = np.cross(row, column)
    length = float(np.linalg.norm(normal))
    if not math.isfinite(length) or length < 1e-3:
        return None
    return np.asarray(normal / length)


def _along_normal(position: Sequence[float], orientation: Sequence[float] | None) -> float:
    """A position's coordinate along the slice normal (z when the orientation is unknown)."""
    normal = slice_normal(orientation)
    if normal is None:
        return float(position[2])
    return float(np.dot(np.asarray(position, dtype=np.float64), normal))


def _open(data: bytes, stop_before_pixels: bool = False) -> Any:
    import pydicom

    if not data:
        raise ImageDecodeError("the file is empty")
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels)
    except Exception as exc:  # InvalidDicomError, EOFError, struct errors...
        raise ImageDecodeError(f"the DICOM file could not be read: {_short(exc)}") from exc


def read_facts(data: bytes) -> DicomFacts:
    """DICOM bytes -> the header facts worth showing (header only, pixels not decoded).
    Raises ImageDecodeError when the header cannot be read."""
    dataset = _open(data, stop_before_pixels=True)
    try:
        modality, _ = _classify(dataset, require_ct=False)
    except UnsupportedImageError:
        modality = _text(dataset, "Modality", 16)
    try:
        return _facts(dataset, modality)
    except Exception as exc:  # defensive: facts never fail a request
        raise ImageDecodeError(f"the DICOM header could not be read: {_short(exc)}") from exc


def read_series_identity(data: bytes) -> SeriesIdentity | None:
    """The identity of DICOM bytes (header only); None when ``data`` is not a readable DICOM
    file or holds none of it."""
    if not is_dicom(data):
        return None
    try:
        dataset = _open(data, stop_before_pixels=True)
    except ImageDecodeError:
        return None
    date = _text(dataset, "StudyDate", 8)
    found = SeriesIdentity(
        study_uid=_text(dataset, "StudyInstanceUID", 64),
        series_uid=_text(dataset, "SeriesInstanceUID", 64),
        manufacturer=_text(dataset, "Manufacturer", 64),
        manufacturer_model=_text(dataset, "ManufacturerModelName", 64),
        accession_number=_text(dataset, "AccessionNumber", 16),
        study_date=f"{date[:4]}-{date[4:6]}-{date[6:]}"
        if date and re.fullmatch(r"\d{8}", date)
        else date,
    )
    return found if any(vars(found).values()) else None


def read_geometry(data: bytes) -> SliceGeometry:
    """DICOM bytes -> where the slice (each frame of a multi-frame file) lies. Unusable
    values are left out and described; raises ImageDecodeError only for an unreadable
    header, UnsupportedImageError for a non-image object."""
    dataset = _open(data, stop_before_pixels=True)
    try:
        _classify(dataset, require_ct=False)
        problems: list[str] = []

        def checked(read: Any, *args: Any) -> Any:
            try:
                return read(*args)
            except _BadElement as exc:
                problems.append(str(exc))
                return None

        frames = checked(_integer, dataset, "NumberOfFrames") or 1
        frames = min(max(frames, 1), MAX_DICOM_FRAMES)
        instance = checked(_integer, dataset, "InstanceNumber")
        series = _text(dataset, "SeriesInstanceUID", 128)
        positions: list[tuple[float, float, float] | None] = []
        orientations: list[tuple[float, ...] | None] = []
        base_position = checked(_numbers, dataset, "ImagePositionPatient", 3)
        base_orientation = checked(_numbers, dataset, "ImageOrientationPatient", 6)
        for frame in range(frames):
            position, orientation = base_position, base_orientation
            if frames > 1 or position is None or orientation is None:
                plane_position = _frame_item(dataset, frame, "PlanePositionSequence")
                plane_orientation = _frame_item(dataset, frame, "PlaneOrientationSequence")
                if plane_position is not None:
                    position = checked(_numbers, plane_position, "ImagePositionPatient", 3)
                if plane_orientation is not None and orientation is None:
                    orientation = checked(_numbers, plane_orientation, "ImageOrientationPatient", 6)
            positions.append(position)
            orientations.append(orientation)
        return SliceGeometry(
            positions=tuple(positions),
            orientations=tuple(orientations),
            instance=instance,
            series=series,
            frames=frames,
            problems=tuple(dict.fromkeys(problems)),
        )
    except ImageDecodeError:
        raise
    except Exception as exc:  # defensive: a malformed header is the client's, not a 500
        raise ImageDecodeError(f"the DICOM header could not be read: {_short(exc)}") from exc


# --- pixels -------------------------------------------------------------------------------


def _rescale(dataset: Any, frame: int) -> tuple[float | None, float | None]:
    """(slope, intercept): the top-level Modality LUT module, else an enhanced file's
    Pixel Value Transformation for the frame (None where absent)."""
    slope = _number(dataset, "RescaleSlope", finite=False)
    intercept = _number(dataset, "RescaleIntercept", finite=False)
    if slope is None and intercept is None:
        item = _frame_item(dataset, frame, "PixelValueTransformationSequence")
        if item is not None:
            slope = _number(item, "RescaleSlope", finite=False)
            intercept = _number(item, "RescaleIntercept", finite=False)
    return slope, intercept


def _declared_not_hu(dataset: Any, frame: int) -> str | None:
    """Why a CT frame's values are not Hounsfield units by its own header (None: they are):
    a Rescale Type other than HU on a DERIVED frame (an enhanced CT perfusion map declares
    US, unspecified: its values are blood flow in ml/100ml/s). On an ORIGINAL frame a stray
    Rescale Type is not trusted over Modality CT."""
    kind = _text(dataset, "RescaleType", 16)
    if kind is None:
        item = _frame_item(dataset, frame, "PixelValueTransformationSequence")
        kind = _text(item, "RescaleType", 16) if item is not None else None
    if kind is None or kind.upper() == "HU":
        return None
    item = _frame_item(dataset, frame, "CTImageFrameTypeSequence")
    types = _lenient(_raw, item, "FrameType") if item is not None else None
    if types is None:
        types = _lenient(_raw, dataset, "ImageType")
    values = [str(v).strip().upper() for v in ([types] if isinstance(types, str) else types or [])]
    if not values or values[0] != "DERIVED":
        return None
    frame_type = "\\".join(values)[:64]
    return f"values not in HU ({frame_type}, Rescale Type {kind})"


def _padding_mask(dataset: Any, stored: np.ndarray, signed: bool, bits: int) -> np.ndarray | None:
    """Pixels equal to PixelPaddingValue (or within it and PixelPaddingRangeLimit)."""
    try:
        pad = _integer(dataset, "PixelPaddingValue")
        limit = _integer(dataset, "PixelPaddingRangeLimit")
    except _BadElement:
        return None  # a padding value we cannot read: no padding, the pixels decide
    if pad is None:
        return None

    def as_stored(value: int) -> int:  # US/SS ambiguity: pydicom may read a signed pad as US
        if signed and value >= 2 ** (bits - 1):
            return value - 2**bits
        return value

    pad = as_stored(pad)
    if limit is None:
        mask = stored == pad
    else:
        low, high = sorted((pad, as_stored(limit)))
        mask = (stored >= low) & (stored <= high)
    return mask if mask.any() else None


def _guess_intercept(stored: np.ndarray, valid: np.ndarray | None) -> tuple[float, str]:
    """No rescale tags on a CT: HU as stored, unless there is no air below -500 (then the
    stored values carry the usual +1024 offset: air near 0)."""
    values = stored if valid is None else stored[valid]
    if values.size and float(np.mean(values < -500)) < 0.005 and float(values.min()) > -200:
        return AIR_HU, "no RescaleIntercept: air is stored near 0, read with intercept -1024"
    return 0.0, "no RescaleIntercept: the stored values are read as HU"


def _display(dataset: Any, stored: np.ndarray, pad: np.ndarray | None, bits: int) -> np.ndarray:
    """Display values of a non-CT image: the file's own window if it has one, else stored
    8-bit values as they are and wider ones stretched over their range."""
    values = stored.astype(np.float32)
    try:
        slope, intercept = _rescale(dataset, 0)
        center = _number(dataset, "WindowCenter")
        width = _number(dataset, "WindowWidth")
    except _BadElement:
        slope = intercept = center = width = None
    if (slope is not None and intercept is not None and slope != 0
            and math.isfinite(slope) and math.isfinite(intercept)):  # fmt: skip
        values = values * np.float32(slope) + np.float32(intercept)
    valid = values if pad is None else values[~pad]
    if center is not None and width is not None and width > 0:
        gray = hu_window(values, center, width)
    elif bits <= 8 and slope in (None, 1.0) and intercept in (None, 0.0):
        gray = np.clip(values, 0, 255).astype(np.uint8)
    elif valid.size and np.isfinite(valid).all():
        low, high = float(valid.min()), float(valid.max())
        gray = (
            np.zeros(values.shape, np.uint8)
            if high <= low
            else np.clip(np.rint((values - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)
        )
    else:
        gray = rescale_to_uint8(np.nan_to_num(values))
    return gray


def read_dicom(data: bytes, require_ct: bool = True, frame: int | None = None) -> DicomImage:
    """DICOM bytes -> one decoded frame (HU or display values) with its header facts.

    ``frame``: which frame of a multi-frame file (None: the file must hold one frame; a
    multi-frame file is refused with a reason). Raises only the three errors of
    ``ml_model.imaging.errors``.
    """
    try:
        return _read_dicom(data, require_ct, frame)
    except (ImageDecodeError, UnsupportedImageError, ImageTooLargeError):
        raise
    except _BadElement as exc:
        raise ImageDecodeError(f"the DICOM file could not be read: {exc}") from exc
    except MemoryError as exc:
        raise ImageTooLargeError(
            "the DICOM pixel data needs more memory to decode than this server allows"
        ) from exc
    except Exception as exc:  # pydicom parses lazily: whatever else a malformed file raises
        raise ImageDecodeError(f"the DICOM file could not be read: {_short(exc)}") from exc


def _read_dicom(data: bytes, require_ct: bool, frame: int | None) -> DicomImage:
    dataset = _open(data)
    modality, is_hu = _classify(dataset, require_ct)
    try:
        has_pixels = "PixelData" in dataset or "FloatPixelData" in dataset
    except Exception:
        has_pixels = False
    if not has_pixels:
        raise ImageDecodeError("the DICOM file has no pixel data")
    frames = _integer(dataset, "NumberOfFrames") or 1
    if frames < 1 or frames > MAX_DICOM_FRAMES:
        raise ImageDecodeError(
            f"the DICOM file could not be read: {_tag_text('NumberOfFrames')} is {frames}"
        )
    if frame is None and frames > 1:
        raise UnsupportedImageError(
            f"multi-frame DICOM ({frames} frames) is not supported as one slice; send one "
            "file per slice, or send an enhanced CT as a study (read frame by frame)"
        )
    index = frame or 0
    if not 0 <= index < frames:
        raise ImageDecodeError(f"the DICOM file has {frames} frames; frame {index} asked for")
    rows = _integer(dataset, "Rows") or 0
    cols = _integer(dataset, "Columns") or 0
    samples = _integer(dataset, "SamplesPerPixel") or 1
    bits = _integer(dataset, "BitsAllocated") or 16
    if rows * cols > MAX_IMAGE_PIXELS:
        raise ImageTooLargeError(
            f"the DICOM image is {cols}x{rows} pixels, over the limit of {MAX_IMAGE_PIXELS:,}"
        )
    if rows * cols * max(samples, 1) * math.ceil(max(bits, 1) / 8) > MAX_DICOM_PIXEL_BYTES:
        raise ImageTooLargeError(
            f"the DICOM pixel data ({cols}x{rows}, {samples} samples of {bits} bits) "
            f"is over the limit of {MAX_DICOM_PIXEL_BYTES:,} bytes decoded"
        )
    photometric = (_text(dataset, "PhotometricInterpretation", 16) or "").upper()
    signed = (_integer(dataset, "PixelRepresentation") or 0) == 1
    not_hu = _declared_not_hu(dataset, index) if is_hu else None
    if not_hu is not None:
        is_hu = False  # a derived map's values (blood flow, …) through an HU window mean nothing
    slope, intercept = _rescale(dataset, index) if is_hu else (None, None)
    if slope is not None and not (math.isfinite(slope) and slope > 0):
        raise ImageDecodeError(f"the DICOM RescaleSlope must be a positive number, not {slope}")
    if intercept is not None and not math.isfinite(intercept):
        raise ImageDecodeError(f"the DICOM RescaleIntercept must be a number, not {intercept}")
    stored = _pixels(dataset, frame if frames > 1 else None)
    if stored.ndim == 3 and stored.shape[-1] in (3, 4):
        is_hu = False  # colour pixels are never HU
        stored = stored[..., :3].mean(axis=-1, dtype=np.float32)
    elif photometric == "PALETTE COLOR":
        is_hu = False
        stored = _palette(stored, dataset)
    if stored.ndim != 2:
        raise UnsupportedImageError(f"unexpected DICOM pixel array shape {stored.shape}")
    stored_bits = _lenient(_integer, dataset, "BitsStored") or bits
    pad = _padding_mask(dataset, stored, signed, bits)
    notes: list[str] = []
    facts = _facts(dataset, modality, index)
    monochrome1 = photometric == "MONOCHROME1"
    if not is_hu:
        gray = _display(dataset, stored, pad, stored_bits)
        if monochrome1:
            gray = np.asarray(255 - gray, dtype=np.uint8)
        if pad is not None:
            gray = np.where(pad, np.uint8(0), gray).astype(np.uint8)
        return DicomImage(gray, False, False, facts, () if not_hu is None else (not_hu,))
    if slope is None and intercept is None:
        intercept, note = _guess_intercept(stored, None if pad is None else ~pad)
        notes.append(note)
    hu = stored.astype(np.float32) * np.float32(slope or 1.0) + np.float32(intercept or 0.0)
    if pad is not None:
        hu[pad] = AIR_HU
        notes.append("padding pixels (PixelPaddingValue) read as air")
    if not np.isfinite(hu).all():
        raise ImageDecodeError("the DICOM pixel values are not finite after rescaling")
    return DicomImage(hu, True, monochrome1, facts, tuple(notes))


def _pixels(dataset: Any, frame: int | None) -> np.ndarray:
    """Decoded stored values of the file (or of one frame): 415 when no installed codec
    reads the transfer syntax, else 400."""
    from pydicom.pixels import pixel_array

    try:
        if frame is None:
            return np.asarray(dataset.pixel_array)
        return np.asarray(pixel_array(dataset, index=frame))
    except MemoryError:
        raise
    except Exception as exc:  # pydicom raises many types for codec problems
        meta = getattr(dataset, "file_meta", None)
        syntax = _text(meta, "TransferSyntaxUID", 128) if meta is not None else None
        syntax = syntax or "unknown"
        if syntax == "unknown" or not _has_pixel_decoder(syntax):
            raise UnsupportedImageError(
                f"the DICOM transfer syntax {_uid_name(syntax)} is not supported; send "
                "uncompressed, deflated, RLE, JPEG (baseline, extended, lossless), JPEG-LS "
                "or JPEG 2000 DICOM"
            ) from exc
        raise ImageDecodeError(
            f"the DICOM pixel data could not be decoded "
            f"(transfer syntax {_uid_name(syntax)}): {_short(exc)}"
        ) from exc


def _palette(indices: np.ndarray, dataset: Any) -> np.ndarray:
    """PALETTE COLOR indices -> luminance through the file's colour LUT (the indices when
    the LUT cannot be applied)."""
    from pydicom.pixels import apply_color_lut

    try:
        rgb = np.asarray(apply_color_lut(indices, dataset), dtype=np.float32)
    except Exception:  # a damaged or missing LUT: show the indices
        return indices.astype(np.float32)
    if rgb.ndim != 3:
        return indices.astype(np.float32)
    peak = float(rgb.max()) or 1.0
    return np.asarray(rgb.mean(axis=-1) / peak * 255.0, dtype=np.float32)


def decode_dicom(
    data: bytes, level: float, width: float, require_ct: bool = True, frame: int | None = None
) -> np.ndarray:
    """DICOM bytes -> a windowed uint8 slice (see :func:`read_dicom` and the module doc)."""
    return read_dicom(data, require_ct, frame).window(level, width)


def _has_pixel_decoder(transfer_syntax: str) -> bool:
    """Whether an installed pydicom plugin decodes pixel data of this transfer syntax."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(transfer_syntax).is_available)
    except Exception:  # unknown or non-image transfer syntax UID
        return False


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    if not re.fullmatch(r"[0-9.]{1,64}", uid):
        return uid[:64]
    try:
        name = UID(uid).name
    except Exception:
        return uid[:64]
    return f"{name} ({uid})" if name and name != uid else uid[:64]
