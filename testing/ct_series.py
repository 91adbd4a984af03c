"""Scanner-like CT series built from the shared PNG slices, for the PACS tests and benchmarks.

The PNGs were exported with a narrow window (level -70 HU, width 380 HU), so grey ``g``
goes back to ``HU = -260 + g * 380 / 255``; pixels are stored as ``HU + 1024`` in uint16
with RescaleIntercept -1024, as a scanner would. Files are built in memory or a temporary
folder and never kept: the images' licence does not allow committing anything made from
them.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

WINDOW_LEVEL = -70.0
WINDOW_WIDTH = 380.0
# The scanner the synthetic series name (Manufacturer, ManufacturerModelName).
SCANNER = "TestScanner"
SCANNER_MODEL = "TestScanner CT 64"
BASE_SLICE = re.compile(r"^(?P<series>[A-Za-z0-9]+) \((?P<number>\d+)\)\.png$")


@dataclass(frozen=True)
class SliceSource:
    path: Path
    series: str
    number: int


def base_slices(data_root: Path, label: str, count: int) -> list[SliceSource]:
    """``count`` consecutive original (not augmented) slices of one CT series of ``label``."""
    by_series: dict[str, list[SliceSource]] = {}
    manifest = data_root / "MANIFEST.csv"
    if manifest.is_file():
        with manifest.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if (
                    row["label"] == label
                    and row["seed_split"] == "train"
                    and not row["augmentation"]
                ):
                    source = SliceSource(
                        data_root / row["path"], row["ct_series"], int(row["slice_no"])
                    )
                    by_series.setdefault(source.series, []).append(source)
    else:
        for path in sorted((data_root / "train" / label).glob("*.png")):
            match = BASE_SLICE.match(path.name)
            if match:
                source = SliceSource(path, match["series"], int(match["number"]))
                by_series.setdefault(source.series, []).append(source)
    for series in sorted(by_series, key=lambda name: -len(by_series[name])):
        slices = sorted(by_series[series], key=lambda item: item.number)
        if len(slices) >= count:
            middle = (len(slices) - count) // 2
            return slices[middle : middle + count]
    raise LookupError(f"no {label} CT series with {count} original slices in {data_root}")


def gray_to_hu(gray: np.ndarray) -> np.ndarray:
    """Undo the export window: 8-bit grey -> Hounsfield units."""
    low = WINDOW_LEVEL - WINDOW_WIDTH / 2
    return low + gray.astype(np.float64) * WINDOW_WIDTH / 255.0


def ct_series(
    sources: list[SliceSource],
    *,
    patient_id: str,
    description: str,
    study_uid: str | None = None,
) -> list[Dataset]:
    """One CT series (one study) of scanner-like HU DICOMs from ``sources``."""
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    frame_uid = generate_uid()
    today = date.today().strftime("%Y%m%d")
    datasets = []
    for index, source in enumerate(sources, start=1):
        gray = np.asarray(Image.open(source.path).convert("L"))
        stored = np.clip(np.rint(gray_to_hu(gray)) + 1024, 0, 4095).astype(np.uint16)
        sop_uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128  # a Part 10 file as a scanner writes it
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.PatientName = f"Test^{patient_id}"
        ds.PatientID = patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study_uid
        ds.StudyID = "1"
        ds.StudyDate = today
        ds.StudyTime = "120000"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "CT cervical spine (synthetic test study)"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.SeriesDescription = description
        ds.Modality = "CT"
        ds.Manufacturer = SCANNER
        ds.ManufacturerModelName = SCANNER_MODEL
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = index
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-128.0, -128.0, -2.5 * source.number]
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [0.5, 0.5]
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 400
        ds.WindowWidth = 1800
        ds.PixelData = stored.tobytes()
        datasets.append(ds)
    return datasets
