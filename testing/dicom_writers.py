"""Writing CT DICOM files: turn a PNG series into a DICOM series for study mode, and
build test inputs whose Hounsfield units are known."""

from __future__ import annotations

import io

import numpy as np

from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH


def ct_dicom_bytes(
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = 0.0,
    z: float | None = None,
    instance: int | None = None,
    series_uid: str | None = None,
    with_pixels: bool = True,
) -> bytes:
    """A CT DICOM (Part 10, explicit VR little endian) of uint16 ``stored`` values;
    HU = stored * slope + intercept. Position, instance number and series are optional."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    stored = np.asarray(stored)
    if stored.ndim != 2 or stored.min() < 0 or stored.max() >= 2**16:
        raise ValueError("stored pixels must be a 2-D array of values in [0, 65535]")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    if z is not None:
        ds.ImagePositionPatient = [0.0, 0.0, z]
    if instance is not None:
        ds.InstanceNumber = instance
    if series_uid is not None:
        ds.SeriesInstanceUID = series_uid
    if with_pixels:
        ds.PixelData = stored.astype("<u2").tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def gray_to_export_window_dicom(gray: np.ndarray, **tags: object) -> bytes:
    """Store a uint8 slice as DICOM whose HU, seen through the export window, give it back."""
    low = EXPORT_WINDOW_LEVEL - EXPORT_WINDOW_WIDTH / 2
    return ct_dicom_bytes(
        np.asarray(gray, dtype=np.uint16),
        slope=EXPORT_WINDOW_WIDTH / 255,
        intercept=low,
        **tags,  # type: ignore[arg-type]
    )
