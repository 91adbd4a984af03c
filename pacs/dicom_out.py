"""What the worker writes into the PACS: a Comprehensive SR with the API's study verdict and a
Secondary Capture series with the top slices' heatmaps, both made with highdicom.

Output UIDs are derived from the source series (its UID and instance count), so the same
input always gives the same output UIDs: storing twice stores the same objects, and the
worker can tell from the PACS alone whether a series already has its results.
"""

from __future__ import annotations

import base64
import io
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from pacs import INTENDED_USE, MANUFACTURER, OUTSIDE_REASONS, REFUSALS, SERIES_DESCRIPTION_PREFIX

SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = f"{SERIES_DESCRIPTION_PREFIX} triage report (decision support)"
SC_SERIES_DESCRIPTION = f"{SERIES_DESCRIPTION_PREFIX} heatmaps - NOT FOR DIAGNOSIS"
BANNER = "DERIVED HEATMAP - NOT FOR DIAGNOSIS"

UTF8 = "ISO_IR 192"  # the character set of everything the worker writes
_UID_NAMESPACE = uuid.UUID("6f1e0c2a-8d4b-5c3e-9a7f-2b1d4e6c8a90")  # this worker's outputs
_LOCAL = "99CSPINE"  # private coding scheme for concepts DICOM has no code for
REPORT = hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
STUDY_SCORE = hd.sr.CodedConcept("study-score", _LOCAL, "Study fracture score")
# Why the answer is "CT outside the model's range": the API's `outside_reason` as text.
OUTSIDE_REASON = hd.sr.CodedConcept("outside-reason", _LOCAL, "Reason outside the model's range")
THRESHOLD = hd.sr.CodedConcept("threshold", _LOCAL, "Decision threshold")
OPERATING_POINT = hd.sr.CodedConcept("operating-point", _LOCAL, "Operating point")
AGGREGATION = hd.sr.CodedConcept("aggregation", _LOCAL, "Slice score aggregation")
ALGORITHM_NAME = hd.sr.CodedConcept("111001", "DCM", "Algorithm Name")
ALGORITHM_VERSION = hd.sr.CodedConcept("111003", "DCM", "Algorithm Version")
INTENDED_USE_CONCEPT = hd.sr.CodedConcept("intended-use", _LOCAL, "Intended use")
TOP_SLICE = hd.sr.CodedConcept("top-slice", _LOCAL, "Most suspicious slice")
SLICE_SCORE = hd.sr.CodedConcept("slice-score", _LOCAL, "Slice fracture score")
HEATMAP_SERIES = hd.sr.CodedConcept("heatmap-series", _LOCAL, "Heatmap series")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
VERTEBRA_SCORE = hd.sr.CodedConcept("vertebra-score", _LOCAL, "Vertebra fracture score")
# The finding site of each vertebra's score (a study bundle's C1..C7): SNOMED CT body
# structures as DICOM PS3.16 lists them in CID 7602 "Vertebra" / CID 7603 "Cervical
# Vertebra" (pydicom's ``codes.SCT.C1Vertebra`` .. ``C7Vertebra``; the same codes label
# TotalSegmentator's vertebrae_C1..C7 in DICOM SEG): C1 = atlas 14806007, C2 = axis
# 39976000, C3 113205007, C4 5329002, C5 36978003, C6 36054005, C7 87391001.
VERTEBRA_SITES = {
    "C1": hd.sr.CodedConcept("14806007", "SCT", "C1 vertebra"),
    "C2": hd.sr.CodedConcept("39976000", "SCT", "C2 vertebra"),
    "C3": hd.sr.CodedConcept("113205007", "SCT", "C3 vertebra"),
    "C4": hd.sr.CodedConcept("5329002", "SCT", "C4 vertebra"),
    "C5": hd.sr.CodedConcept("36978003", "SCT", "C5 vertebra"),
    "C6": hd.sr.CodedConcept("36054005", "SCT", "C6 vertebra"),
    "C7": hd.sr.CodedConcept("87391001", "SCT", "C7 vertebra"),
}


@dataclass(frozen=True)
class OutputUids:
    """UIDs of what the worker writes for one version of one source series."""

    sr_series: str
    sr_instance: str
    sc_series: str
    seed: str

    def sc_instance(self, index: int) -> str:
        return _derived_uid(self.seed, f"sc-instance-{index}")


def _derived_uid(seed: str, kind: str) -> str:
    """A ``2.25.<UUID>`` UID from a name-based (SHA-1) UUID: the same inputs, the same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, f'{seed}:{kind}').int}"


def output_uids(series_uid: str, instance_count: int) -> OutputUids:
    """Deterministic output UIDs for ``series_uid`` holding ``instance_count`` instances."""
    seed = f"{MANUFACTURER}:{series_uid}:{instance_count}"
    return OutputUids(
        _derived_uid(seed, "sr-series"),
        _derived_uid(seed, "sr-instance"),
        _derived_uid(seed, "sc-series"),
        seed,
    )


def derived_output_series(sources: Iterable[tuple[str, int]]) -> frozenset[str]:
    """The SR and heatmap series UIDs this worker derives for each (series UID, instance
    count): a listed series among them is its own output. Only UIDs count, never editable
    text such as SeriesDescription or Manufacturer, so no source can pass for an output."""
    found: set[str] = set()
    for series_uid, instance_count in sources:
        uids = output_uids(series_uid, instance_count)
        found.update((uids.sr_series, uids.sc_series))
    return frozenset(found)


def build_sr(
    study: dict[str, Any],
    sources: Sequence[Dataset],
    uids: OutputUids,
    sc_series_uid: str | None,
    previous: Dataset | None = None,
) -> hd.sr.ComprehensiveSR:
    """The Comprehensive SR for one ``/predict/study`` answer about ``sources``' series.

    ``previous``: the SR this one supersedes (the same series before it grew; its SOP class
    and instance, study and series UIDs), named in the Predecessor Documents Sequence.

    ``study`` is the API's StudyResponse JSON; top slices are matched to source instances
    by file name (the worker names each file ``<SOPInstanceUID>.dcm``). A study bundle's
    answer (``vertebrae``: C1..C7) adds one score per vertebra, each with its SNOMED CT
    finding site (:data:`VERTEBRA_SITES`). A refusal ("Not a CT slice", "CT outside the
    model's range" with its reason) has no scores (:func:`verdict_items`).
    """
    sources = [evidence_header(source) for source in sources]
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    items = verdict_items(study)
    items += [
        hd.sr.NumContentItem(
            THRESHOLD, float(study["threshold"]), NO_UNITS, relationship_type="CONTAINS"
        ),
        hd.sr.TextContentItem(
            OPERATING_POINT, str(study["operating_point"]), relationship_type="CONTAINS"
        ),
        hd.sr.TextContentItem(
            ALGORITHM_NAME, str(study["model"]["name"]), relationship_type="CONTAINS"
        ),
        hd.sr.TextContentItem(
            ALGORITHM_VERSION, str(study["model"]["version"]), relationship_type="CONTAINS"
        ),
        hd.sr.TextContentItem(INTENDED_USE_CONCEPT, INTENDED_USE, relationship_type="CONTAINS"),
    ]
    if study.get("aggregation"):
        items.append(
            hd.sr.TextContentItem(
                AGGREGATION, str(study["aggregation"]), relationship_type="CONTAINS"
            )
        )
    if study["result"] not in REFUSALS:
        items += vertebra_items(study.get("vertebrae"))
    for top in study.get("top_slices", []):
        source = by_uid.get(sop_uid_from_name(str(top["name"])))
        if source is None:
            continue
        image = hd.sr.ImageContentItem(
            TOP_SLICE,
            referenced_sop_class_uid=source.SOPClassUID,
            referenced_sop_instance_uid=source.SOPInstanceUID,
            relationship_type="CONTAINS",
        )
        image.ContentSequence = hd.sr.ContentSequence(
            [
                hd.sr.NumContentItem(
                    SLICE_SCORE,
                    float(top["prediction"]),
                    NO_UNITS,
                    relationship_type="HAS PROPERTIES",
                )
            ]
        )
        items.append(image)
    if sc_series_uid:
        items.append(
            hd.sr.UIDRefContentItem(HEATMAP_SERIES, sc_series_uid, relationship_type="CONTAINS")
        )
    root = hd.sr.ContainerContentItem(REPORT)
    root.ContentSequence = hd.sr.ContentSequence(items)
    sr = hd.sr.ComprehensiveSR(
        evidence=list(sources),
        content=root,
        series_instance_uid=uids.sr_series,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=uids.sr_instance,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=[previous] if previous is not None else None,
    )
    sr.SpecificCharacterSet = UTF8  # the intended-use text has a dash; names re-encoded
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.ManufacturerModelName = str(study["model"]["name"])[:64]
    sr.SoftwareVersions = str(study["model"]["version"])[:64]
    return sr


def verdict_items(study: dict[str, Any]) -> list[hd.sr.ContentItem]:
    """The answer as *Finding* (the API's ``result``, as text), then: a fracture call's study
    score; for "CT outside the model's range" its reason (:data:`OUTSIDE_REASON`, the API's
    ``outside_reason`` as text: ``window`` or ``region``); for a refusal no score at all (the
    score of slices the model cannot judge means nothing, and a 0 reads as a sure normal)."""
    result = str(study["result"])
    items: list[hd.sr.ContentItem] = [
        hd.sr.TextContentItem(FINDING, result, relationship_type="CONTAINS")
    ]
    if result not in REFUSALS:
        items.append(
            hd.sr.NumContentItem(
                STUDY_SCORE, float(study["prediction"]), NO_UNITS, relationship_type="CONTAINS"
            )
        )
    elif study.get("outside_reason") in OUTSIDE_REASONS:
        items.append(
            hd.sr.TextContentItem(
                OUTSIDE_REASON, str(study["outside_reason"]), relationship_type="CONTAINS"
            )
        )
    return items


# Type 2 elements (present, possibly empty) that an SR copies from its evidence: de-identified
# data (the RSNA 2022 series, for one) often leaves them out altogether.
SR_TYPE2_FROM_EVIDENCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
    "StudyDate", "StudyTime", "ReferringPhysicianName",
)  # fmt: skip


def evidence_header(source: Dataset) -> Dataset:
    """``source`` as an SR's (or heatmap's) evidence: every absent
    :data:`SR_TYPE2_FROM_EVIDENCE` element present and empty, the SOP Class UID from the file
    meta when the data set has none (as in the RSNA 2022 files), and its text in UTF-8
    (``ISO_IR 192``): pydicom decodes whatever Specific Character Set the source declares
    (ISO 2022 code extensions, an empty value, a misspelling it can patch), and highdicom
    accepts only valid ones, so the copied names are re-encoded rather than the SR refused.
    The source itself is left as it is; pixel data is not copied."""
    missing = [keyword for keyword in SR_TYPE2_FROM_EVIDENCE if keyword not in source]
    meta = getattr(source, "file_meta", None)
    sop_class = None if "SOPClassUID" in source else getattr(meta, "MediaStorageSOPClassUID", None)
    header = Dataset()
    header.SpecificCharacterSet = UTF8
    with warnings.catch_warnings():  # pydicom warns about each misspelled character set
        warnings.simplefilter("ignore")
        for element in source:  # iterating decodes with the source's own character set
            if element.keyword not in ("PixelData", "SpecificCharacterSet"):
                header.add(element)
    if meta is not None:
        header.file_meta = meta
    for keyword in missing:
        setattr(header, keyword, "")
    if sop_class is not None:
        header.SOPClassUID = sop_class
    return header


def vertebra_items(vertebrae: dict[str, Any] | None) -> list[hd.sr.ContentItem]:
    """One NUM item per vertebra of a study bundle's answer (none for a slice bundle's):
    its fracture score, with a ``Finding Site`` (SCT 363698007) naming the vertebra."""
    items: list[hd.sr.ContentItem] = []
    if not vertebrae:
        return items
    for name, site in VERTEBRA_SITES.items():
        if vertebrae.get(name) is None:
            continue
        score = hd.sr.NumContentItem(
            VERTEBRA_SCORE, float(vertebrae[name]), NO_UNITS, relationship_type="CONTAINS"
        )
        score.ContentSequence = hd.sr.ContentSequence([hd.sr.FindingSite(site)])
        items.append(score)
    return items


def build_heatmaps(
    study: dict[str, Any], sources: Sequence[Dataset], uids: OutputUids
) -> list[hd.sc.SCImage]:
    """One Secondary Capture image per top slice that came with a heatmap."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    images: list[hd.sc.SCImage] = []
    if any(top.get("heatmap_png_base64") for top in study.get("top_slices", [])):
        by_uid = {uid: evidence_header(ds) for uid, ds in by_uid.items()}
    for top in study.get("top_slices", []):
        encoded = top.get("heatmap_png_base64")
        source = by_uid.get(sop_uid_from_name(str(top["name"])))
        if not encoded or source is None:
            continue
        pixels = _with_banner(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB"))
        index = len(images) + 1
        image = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=pixels,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=uids.sc_series,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=uids.sc_instance(index),
            instance_number=index,
            manufacturer=MANUFACTURER,
            patient_orientation=("L", "P"),
        )
        image.SpecificCharacterSet = UTF8
        image.SeriesDescription = SC_SERIES_DESCRIPTION
        image.ImageComments = (
            f"Grad-CAM heatmap over the slice the model scored {float(top['prediction']):.3f} "
            f"({study['model']['name']} {study['model']['version']}). Derived image for "
            "decision support, NOT FOR DIAGNOSIS."
        )
        image.DerivationDescription = "Grad-CAM heatmap overlaid on the referenced CT slice"
        image.BurnedInAnnotation = "NO"  # the banner is a warning, no patient identity
        image.LossyImageCompression = "00"
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.SOPClassUID
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        image.SourceImageSequence = [reference]
        images.append(image)
    return images


def sop_uid_from_name(name: str) -> str:
    """The SOP Instance UID in a file name the worker gave (``<uid>.dcm``)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if base.lower().endswith(".dcm") else base


def _with_banner(image: Image.Image) -> np.ndarray:
    """The heatmap with a black strip on top saying it is not for diagnosis."""
    size = max(10, image.height // 32)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=size)
    except (OSError, TypeError):  # Pillow without FreeType
        font = ImageFont.load_default()
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, image.width, size + 6), fill=(0, 0, 0))
    draw.text((4, 2), BANNER, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def sr_text_values(dataset: Dataset) -> dict[str, list[str]]:
    """Every TEXT/NUM/UIDREF/IMAGE/CODE value of an SR, by concept meaning (for checks and
    logs; a CODE item's value is its code's meaning)."""
    values: dict[str, list[str]] = {}

    def walk(items: Sequence[Dataset]) -> None:
        for item in items:
            concept = item.get("ConceptNameCodeSequence")
            name = str(concept[0].CodeMeaning) if concept else ""
            kind = item.get("ValueType", "")
            if kind == "TEXT":
                values.setdefault(name, []).append(str(item.TextValue))
            elif kind == "NUM":
                values.setdefault(name, []).append(str(item.MeasuredValueSequence[0].NumericValue))
            elif kind == "CODE":
                values.setdefault(name, []).append(str(item.ConceptCodeSequence[0].CodeMeaning))
            elif kind == "UIDREF":
                values.setdefault(name, []).append(str(item.UID))
            elif kind == "IMAGE":
                values.setdefault(name, []).append(
                    str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
                )
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(dataset.get("ContentSequence", []))
    return values
