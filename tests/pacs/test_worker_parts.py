"""The worker's parts that need no server: output UIDs, multipart parsing, state, settings."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs.clients import dataset_bytes, split_multipart
from pacs.dicom_out import build_sr, is_own_output, output_uids, sr_text_values
from pacs.settings import WorkerSettings
from pacs.state import StateDB


def tiny_ct(study_uid: str, series_uid: str, number: int) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P", "Test^P", "", "O"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyID, ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "1", "20260101", "120000", ""
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, number
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.zeros((4, 4), np.uint16).tobytes()
    return ds


def test_output_uids_are_deterministic_and_valid() -> None:
    first, again = output_uids("1.2.3", 8), output_uids("1.2.3", 8)
    assert first == again and first.sc_instance(2) == again.sc_instance(2)
    assert output_uids("1.2.3", 9).sr_series != first.sr_series  # an updated series
    uids = {first.sr_series, first.sr_instance, first.sc_series, first.sc_instance(1)}
    assert len(uids) == 4
    for uid in uids:
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()


def test_split_multipart_reads_parts_with_and_without_preamble() -> None:
    with_preamble = dataset_bytes(tiny_ct("1.2.3", "1.2.3.4", 1))
    raw = tiny_ct("1.2.3", "1.2.3.4", 2)
    buffer = io.BytesIO()
    raw.save_as(buffer, enforce_file_format=False)  # no preamble, as some PACS return it
    without = buffer.getvalue()
    assert without[128:132] != b"DICM"
    boundary = "b0undary-42"
    body = (
        b"".join(
            b"--"
            + boundary.encode()
            + b"\r\nContent-Type: application/dicom\r\n\r\n"
            + part
            + b"\r\n"
            for part in (with_preamble, without)
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    content_type = f'multipart/related; type="application/dicom"; boundary="{boundary}"'
    parts = split_multipart(body, content_type)
    assert parts == [with_preamble, without]
    numbers = [int(dcmread(io.BytesIO(part), force=True).InstanceNumber) for part in parts]
    assert numbers == [1, 2]


def test_sr_content_and_own_output_marks() -> None:
    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2, 3)]
    answer = {
        "result": "Potentially Fracture", "prediction": 0.8, "threshold": 0.5,
        "operating_point": "specific", "aggregation": "top2_mean",
        "top_slices": [{"name": f"{slices[2].SOPInstanceUID}.dcm", "prediction": 0.9}],
        "model": {"name": "m", "version": "v1"},
    }  # fmt: skip
    sr = build_sr(answer, slices, output_uids("1.2.3.4", 3), None)
    values = sr_text_values(dcmread(io.BytesIO(dataset_bytes(sr))))
    assert values["Finding"] == ["Potentially Fracture"]
    assert values["Most suspicious slice"] == [str(slices[2].SOPInstanceUID)]
    assert values["Operating point"] == ["specific"]
    assert values["Intended use"] == ["Decision support — not a diagnosis"]
    assert str(sr.StudyInstanceUID) == "1.2.3" and is_own_output(sr)
    assert not is_own_output(slices[0])


def test_sr_codes_a_finding_site_per_vertebra_for_a_study_bundle() -> None:
    """A study bundle's answer (``vertebrae``): one score per vertebra, each with the
    vertebra's SNOMED CT code as its Finding Site; a slice bundle's answer: none."""
    from pydicom.sr.codedict import codes

    from pacs.dicom_out import VERTEBRA_SITES

    names = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
    # The codes are DICOM's (PS3.16 CID 7602/7603 as pydicom ships them).
    for name, site in VERTEBRA_SITES.items():
        expected = getattr(codes.SCT, f"{name}Vertebra")
        assert (site.value, site.scheme_designator) == (expected.value, "SCT")
    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2)]
    vertebrae = dict(zip(names, (0.02, 0.91, 0.1, 0.03, 0.04, 0.05, 0.06), strict=True))
    answer = {
        "result": "Potentially Fracture", "prediction": 0.93, "threshold": 0.4,
        "operating_point": "sensitive", "aggregation": "study_head", "top_slices": [],
        "vertebrae": vertebrae, "model": {"name": "m", "version": "v1"},
    }  # fmt: skip
    read = dcmread(
        io.BytesIO(dataset_bytes(build_sr(answer, slices, output_uids("1.2.3.4", 2), None)))
    )
    values = sr_text_values(read)
    assert values["Vertebra fracture score"] == [str(v) for v in vertebrae.values()]
    assert values["Finding Site"] == [f"{name} vertebra" for name in names]
    scores = [
        item for item in read.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == "Vertebra fracture score"
    ]  # fmt: skip
    site = scores[1].ContentSequence[0]
    assert site.RelationshipType == "HAS CONCEPT MOD"
    assert site.ConceptNameCodeSequence[0].CodeValue == "363698007"  # Finding Site
    assert (
        site.ConceptCodeSequence[0].CodeValue,
        site.ConceptCodeSequence[0].CodingSchemeDesignator,
    ) == (
        "39976000",
        "SCT",
    )  # C2 vertebra
    plain = build_sr(answer | {"vertebrae": None}, slices, output_uids("1.2.3.4", 2), None)
    assert "Finding Site" not in sr_text_values(dcmread(io.BytesIO(dataset_bytes(plain))))


def test_sr_from_de_identified_sources_without_type2_elements_or_sop_class() -> None:
    """As the RSNA 2022 files are: no PatientBirthDate / PatientSex / AccessionNumber / ...,
    and the SOP Class UID only in the file meta. The SR still builds, with those present and
    empty, and references the file meta's class; the sources are not changed."""
    from pacs.dicom_out import SR_TYPE2_FROM_EVIDENCE

    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2)]
    for ds in slices:
        for keyword in (*SR_TYPE2_FROM_EVIDENCE[2:], "SOPClassUID"):
            delattr(ds, keyword)
    answer = {
        "result": "Normal", "prediction": 0.1, "threshold": 0.4, "operating_point": "sensitive",
        "top_slices": [{"name": f"{slices[0].SOPInstanceUID}.dcm", "prediction": 0.1}],
        "model": {"name": "m", "version": "v1"},
    }  # fmt: skip
    read = dcmread(
        io.BytesIO(dataset_bytes(build_sr(answer, slices, output_uids("1.2.3.4", 2), None)))
    )
    assert read.PatientID == "P" and read.PatientBirthDate == "" and read.AccessionNumber == ""
    evidence = read.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPClassUID == CTImageStorage
    assert all("SOPClassUID" not in ds and "PatientBirthDate" not in ds for ds in slices)


def test_state_survives_a_restart_and_resumes_interrupted_work(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    state = StateDB(path)
    state.start("s1", "st", 8)
    state.done("s2", "st", instance_count=8, result="Normal", sr_uid="2.25.1",
               sr_series_uid="2.25.2", sc_series_uid="2.25.3")  # fmt: skip
    state.skip("s3", "st", "modality MR, not CT")
    state.close()
    state = StateDB(path)  # "s1" was under way when the worker stopped
    interrupted = state.get("s1")
    assert interrupted is not None and interrupted.status == "retry"
    assert interrupted.next_attempt == 0 and interrupted.attempts == 1
    assert state.start("s1", "st", 8) == 2  # counts as the second attempt
    done = state.get("s2")
    assert done is not None and done.status == "done" and done.result == "Normal"
    assert state.is_own_output("2.25.2") and state.is_own_output("2.25.3")
    assert not state.is_own_output("s3")
    state.close()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_URL", "https://pacs.example.org/")
    monkeypatch.setenv("PACS_DICOMWEB_PATH", "/dcm4chee-arc/aets/DCM4CHEE/rs")
    monkeypatch.setenv("API_URL", "http://api:8000")
    monkeypatch.setenv("PACS_PASSWORD", "secret")
    settings = WorkerSettings()
    assert settings.dicomweb_url == "https://pacs.example.org/dcm4chee-arc/aets/DCM4CHEE/rs"
    assert settings.api_url == "http://api:8000"
    assert "secret" not in repr(settings)
