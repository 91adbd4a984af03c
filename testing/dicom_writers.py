"""Writing CT DICOM files: turn a PNG series into a DICOM series for study mode, build test
inputs whose Hounsfield units are known, and store HU the way scanners and PACS do (signed
or offset unsigned, 12 or 16 bits, padding, MONOCHROME1, any common transfer syntax)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ct_dicom_bytes(
    stored: np.ndarray,
    slope: float = 1.0,
    intercept: float = 0.0,
    z: float | None = None,
    instance: int | None = None,
    series_uid: str | None = None,
    with_pixels: bool = True,
    orientation: Sequence[float] | None = AXIAL,
) -> bytes:
    """A CT DICOM (Part 10, explicit VR little endian) of uint16 ``stored`` values;
    HU = stored * slope + intercept. Position (with an axial ImageOrientationPatient unless
    ``orientation`` is None), instance number and series are optional."""
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
        if orientation is not None:
            ds.ImageOrientationPatient = list(orientation)
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


def scanner_ct_dicom(
    hu: np.ndarray,
    *,
    storage: str = "int16",
    bits_stored: int = 16,
    slope: float = 1.0,
    intercept: float | None = None,
    transfer_syntax: str | None = None,
    photometric: str = "MONOCHROME2",
    padding: int | None = None,
    padding_mask: np.ndarray | None = None,
    rescale: bool = True,
    modality: str | None = "CT",
    position: Sequence[float] | None = None,
    orientation: Sequence[float] | None = AXIAL,
    instance: int | None = None,
    series_uid: str | None = None,
    pixel_spacing: Sequence[float] | None = (0.5, 0.5),
    slice_thickness: float | None = 1.0,
    series_description: str | None = "C-SPINE 1.0 BONE",
    identifiers: bool = False,
) -> bytes:
    """HU (float array) stored the way a scanner does, then encoded as ``transfer_syntax``.

    ``storage``: ``int16`` / ``int8`` (signed, intercept 0) or ``uint16`` / ``uint8``
    (unsigned, intercept -1024); ``slope`` / ``intercept`` override the rescale (values that
    do not fit ``bits_stored`` are clipped).
    ``padding``: PixelPaddingValue written into the pixels where ``padding_mask`` is true.
    ``rescale`` False leaves RescaleSlope/Intercept out (the stored values stay as stated by
    ``storage``). ``modality`` None leaves Modality out. ``identifiers`` adds patient and
    institution elements (to check they never come back). Encoders: RLE (pydicom),
    JPEG-LS (pyjpegls), JPEG 2000 (pylibjpeg-openjpeg); deflated and big-endian by pydicom's
    writer.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import (
        UID,
        CTImageStorage,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ExplicitVRLittleEndian,
        generate_uid,
    )

    hu = np.asarray(hu, dtype=np.float64)
    signed = storage in ("int16", "int8")
    if intercept is None:
        intercept = 0.0 if signed else -1024.0
    bits_allocated = 8 if storage in ("uint8", "int8") else 16
    bits_stored = min(bits_stored, bits_allocated)
    stored = np.rint((hu - intercept) / slope)
    if signed:
        low, high = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    else:
        low, high = 0, 2**bits_stored - 1
    stored = np.clip(stored, low, high)
    if padding is not None and padding_mask is not None:
        stored = np.where(padding_mask, padding, stored)
    dtype = {"int16": "<i2", "uint16": "<u2", "uint8": "u1", "int8": "i1"}[storage]
    pixels = stored.astype(dtype)

    syntax = UID(transfer_syntax or ExplicitVRLittleEndian)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    if modality is not None:
        ds.Modality = modality
    if series_description is not None:
        ds.SeriesDescription = series_description
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    if rescale:
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleType = "HU"
    if padding is not None:
        ds.PixelPaddingValue = int(padding)
    if position is not None:
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.SliceLocation = float(position[2])
    if orientation is not None and position is not None:
        ds.ImageOrientationPatient = [float(v) for v in orientation]
    if instance is not None:
        ds.InstanceNumber = instance
    if pixel_spacing is not None:
        ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slice_thickness is not None:
        ds.SliceThickness = slice_thickness
    ds.WindowCenter, ds.WindowWidth = 400, 1800  # scanners write a display window; ignored
    if identifiers:
        ds.PatientName = "Doe^Jane"
        ds.PatientID = "PID-123456"
        ds.PatientBirthDate = "19700101"
        ds.StudyDate = "20260102"
        ds.InstitutionName = "Example General Hospital"
        ds.AccessionNumber = "ACC-98765"
    ds.PixelData = pixels.tobytes()

    buffer = io.BytesIO()
    if syntax == ExplicitVRBigEndian:
        big = pixels.astype(pixels.dtype.newbyteorder(">"))
        ds.PixelData = big.tobytes()
        ds.file_meta.TransferSyntaxUID = syntax
        pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=False,
                         enforce_file_format=True)  # fmt: skip
        return buffer.getvalue()
    if syntax == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, pixels)
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def patch_element(data: bytes, keyword: str, raw: bytes) -> bytes:
    """Replace the value of an element of an explicit VR little endian file by ``raw``
    bytes, as a damaged or careless writer would (the element must be present and have a
    2-byte length: DS, IS, CS, LO, US...)."""
    import struct

    from pydicom.datadict import dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"unknown keyword {keyword}")
    key = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + dictionary_VR(tag).encode()
    start = data.index(key, 132)
    (length,) = struct.unpack("<H", data[start + 6 : start + 8])
    if len(raw) % 2:
        raw += b" "
    if len(raw) > 0xFFFF:
        raise ValueError("a 2-byte length holds at most 65535 bytes")
    return data[: start + 6] + struct.pack("<H", len(raw)) + raw + data[start + 8 + length :]
