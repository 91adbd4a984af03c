"""The worker's parts that need no server: output UIDs, multipart parsing, state, settings."""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import socket
import sqlite3
import struct
import time
import warnings
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
import pytest
import requests
import urllib3
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import BytesLengthException
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pacs.clients import (
    ConfigError,
    IdentityError,
    PermanentError,
    SeriesRef,
    StudySpan,
    TransientError,
    dataset_bytes,
    failure_class,
    is_transient,
    split_multipart,
)
from pacs.dicom_out import build_sr, derived_output_series, output_uids, sr_text_values
from pacs.settings import WorkerSettings
from pacs.state import StateDB
from pacs.worker import worklist_entry


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
    assert str(sr.StudyInstanceUID) == "1.2.3"
    own = derived_output_series([("1.2.3.4", 3)])
    assert str(sr.SeriesInstanceUID) in own
    # Own output is known by derived UIDs only: a source labelled like an output is not one.
    slices[0].SeriesDescription, slices[0].Manufacturer = str(sr.SeriesDescription), "cspine-triage"
    assert str(slices[0].SeriesInstanceUID) not in own


def refused_answer(slices: list[Dataset], **fields: object) -> dict[str, object]:
    """An API answer that makes no fracture call (as /predict/study gives it: a study score
    of 0, no top slices), here with C1..C7 scores too, which the API leaves out of a refusal
    but the SR must not carry even if given."""
    return {
        "prediction": 0.0, "threshold": 0.5, "operating_point": "sensitive",
        "aggregation": "study_head", "top_slices": [], "model": {"name": "m", "version": "v1"},
        "vertebrae": dict.fromkeys(("C1", "C2", "C3", "C4", "C5", "C6", "C7"), 0.01),
    } | fields  # fmt: skip


@pytest.mark.parametrize("reason", ["window", "region"])
def test_sr_codes_ct_outside_the_models_range_with_its_reason(reason: str) -> None:
    """ "CT outside the model's range" is coded as the other answers are: the result as
    *Finding* (TEXT), and its reason as a TEXT item of the worker's scheme (the API's
    ``outside_reason``); no fracture or normal finding and no score of any kind."""
    from pacs.dicom_out import OUTSIDE_REASON

    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2)]
    answer = refused_answer(slices, result="CT outside the model's range", outside_reason=reason)
    read = dcmread(
        io.BytesIO(dataset_bytes(build_sr(answer, slices, output_uids("1.2.3.4", 2), None)))
    )
    values = sr_text_values(read)
    assert values["Finding"] == ["CT outside the model's range"]
    assert values["Reason outside the model's range"] == [reason]
    (item,) = [
        item for item in read.ContentSequence
        if item.ConceptNameCodeSequence[0].CodeMeaning == OUTSIDE_REASON.meaning
    ]  # fmt: skip
    assert (item.ValueType, item.RelationshipType) == ("TEXT", "CONTAINS")
    code = item.ConceptNameCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("outside-reason", "99CSPINE")
    assert not {"Study fracture score", "Vertebra fracture score", "Most suspicious slice"} & set(
        values
    )
    assert values["Decision threshold"] == ["0.5"] and values["Intended use"]


def test_sr_of_a_refusal_and_of_a_call() -> None:
    """ "Not a CT slice" is coded the same way, without a reason; a fracture call keeps its
    study score and no reason (even if an answer carried one)."""
    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2)]
    uids = output_uids("1.2.3.4", 2)
    not_ct = refused_answer(slices, result="Not a CT slice")
    values = sr_text_values(
        dcmread(io.BytesIO(dataset_bytes(build_sr(not_ct, slices, uids, None))))
    )
    assert values["Finding"] == ["Not a CT slice"]
    assert "Reason outside the model's range" not in values
    assert "Study fracture score" not in values and "Vertebra fracture score" not in values
    called = refused_answer(slices, result="Normal", prediction=0.2, outside_reason="region")
    values = sr_text_values(
        dcmread(io.BytesIO(dataset_bytes(build_sr(called, slices, uids, None))))
    )
    assert values["Finding"] == ["Normal"] and values["Study fracture score"] == ["0.2"]
    assert len(values["Vertebra fracture score"]) == 7
    assert "Reason outside the model's range" not in values


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


def test_state_survives_a_restart_and_resumes_interrupted_work(
    new_state: Callable[[], Path | str],
) -> None:
    path = new_state()
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


ANSWER = {
    "result": "Normal", "prediction": 0.1, "threshold": 0.4, "operating_point": "sensitive",
    "top_slices": [], "model": {"name": "m", "version": "v1"},
}  # fmt: skip


def test_worklist_entry_from_the_answer_and_the_headers() -> None:
    """The ``POST /worklist`` body: the UIDs, the scanner from the DICOM headers (stripped, at
    most 64 characters, None when empty), ``arrived_at`` in UTC (left out when unknown) and
    the API's answer less its heatmap images (the answer itself untouched)."""
    ds = tiny_ct("1.2.3", "1.2.3.4", 1)
    with warnings.catch_warnings():  # over LO's 64 characters, as some scanners write it
        warnings.simplefilter("ignore")
        ds.Manufacturer, ds.ManufacturerModelName = "  ACME Medical ", "M" * 80
    ref = SeriesRef("1.2.3", "1.2.3.4", "CT", "axial", 1)
    top = {"index": 0, "name": "a.dcm", "position": 1.0, "prediction": 0.2}
    with_heatmap = {**top, "heatmap_png_base64": "iVBOR"}
    answer = {**ANSWER, "top_slices": [with_heatmap], "slices": [top]}
    entry = worklist_entry(ref, answer, ds, 1_700_000_000.5)
    assert (entry["study_uid"], entry["series_uid"]) == ("1.2.3", "1.2.3.4")
    assert entry["arrived_at"] == "2023-11-14T22:13:20.500000+00:00"
    assert entry["manufacturer"] == "ACME Medical"
    assert entry["manufacturer_model"] == "M" * 64
    assert entry["study"] == {**answer, "top_slices": [top]}
    assert answer["top_slices"] == [with_heatmap] and "heatmap_png_base64" in with_heatmap
    del ds.Manufacturer
    ds.ManufacturerModelName = " "
    entry = worklist_entry(ref, ANSWER, ds, None)
    assert "arrived_at" not in entry
    assert entry["manufacturer"] is None and entry["manufacturer_model"] is None


def test_worklist_switch_and_the_configuration_fingerprint() -> None:
    """PACS_WORKLIST is on by default, and on keeps the fingerprint of a worker before it (no
    blocked series re-queued by the upgrade); off is another configuration."""
    on = WorkerSettings(
        api_url="http://api:8000", url="http://pacs:8042", api_token=None, api_token_file=None,
        user=None, password=None,
    )  # fmt: skip
    assert on.worklist is True
    older = hashlib.sha256("\0".join(("http://api:8000", "", "http://pacs:8042", "", "")).encode())
    assert on.config_fingerprint() == older.hexdigest()[:16]
    off = on.model_copy(update={"worklist": False})
    assert off.config_fingerprint() != on.config_fingerprint()


@pytest.mark.parametrize(
    ("charset", "name", "expected"),
    [
        (["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう", "山田^太郎"),
        (["", "ISO 2022 IR 149"], "Hong^Gildong=洪^吉洞=홍^길동", "홍^길동"),
        ("", "Smith^John", "Smith^John"),
        ("ISO-IR 100", "Müller^Jörg", "Müller^Jörg"),
        ("ISO IR 100", "Müller^Jörg", "Müller^Jörg"),
        ("ISO IR 192", "Müller^Jörg", "Müller^Jörg"),
        ("UTF-8", "Smith^John", "Smith^John"),
    ],
)
def test_sr_from_sources_with_real_world_character_sets(
    charset: str | list[str], name: str, expected: str
) -> None:
    """Sources pydicom reads (ISO 2022 code extensions, an empty or misspelled Specific
    Character Set) give an SR in UTF-8 with the patient's name re-encoded, not an error."""
    slices = []
    with warnings.catch_warnings():  # pydicom warns about misspelled character sets
        warnings.simplefilter("ignore")
        for number in (1, 2):
            ds = tiny_ct("1.2.3", "1.2.3.4", number)
            ds.SpecificCharacterSet, ds.PatientName = charset, name
            # read back as the worker reads WADO parts
            slices.append(dcmread(io.BytesIO(dataset_bytes(ds)), force=True))
        sr = build_sr(ANSWER, slices, output_uids("1.2.3.4", 2), None)
    read = dcmread(io.BytesIO(dataset_bytes(sr)))
    assert read.SpecificCharacterSet == "ISO_IR 192"
    assert expected in str(read.PatientName)
    assert read.PatientID == "P"


def test_identity_problem_names_what_disagrees() -> None:
    from pacs.worker import identity_problem

    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2, 3)]
    assert identity_problem(slices, "1.2.3", "1.2.3.4") is None
    slices[2].PatientID = "OTHER"
    assert "2 PatientID values" in str(identity_problem(slices, "1.2.3", "1.2.3.4"))
    slices[2].PatientID = "P"
    assert "is not the 9.9" in str(identity_problem(slices, "9.9", "1.2.3.4"))
    slices[1].SeriesInstanceUID = "1.2.3.5"
    assert "SeriesInstanceUID" in str(identity_problem(slices, "1.2.3", "1.2.3.4"))


def test_state_requeue_and_configuration_change(new_state: Callable[[], Path | str]) -> None:
    """Failed/skipped/blocked rows come back on request; blocked ones by themselves when the
    configuration fingerprint changes; own outputs never."""
    state = StateDB(new_state())
    state.fail("f", "st", "API refused the series (400)", "permanent")
    state.skip("k", "st", "modality MR, not CT")
    state.skip("o", "st", "own output", own_output=True)
    state.block("b", "st", "API refused the worker's token (401)", "old", 1e12)
    assert state.requeue_config("old") == 0
    assert state.requeue_config("new") == 1
    row = state.get("b")
    assert row is not None and row.status == "retry" and row.next_attempt == 0
    assert state.counts()["failed"] == 1 and state.counts()["blocked"] == 0
    assert state.requeue(("failed",), ("f",)) == 1
    assert state.requeue() == 1  # "k"; "o" is the worker's own output
    assert {row.series_uid: row.status for row in state.all()} == {
        "f": "retry",
        "k": "retry",
        "o": "skipped",
        "b": "retry",
    }
    state.close()


def test_state_file_of_an_older_worker_gains_the_new_columns_and_requeues(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE series (series_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL, "
            "status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_attempt REAL NOT "
            "NULL DEFAULT 0, instance_count INTEGER, reason TEXT, result TEXT, sr_uid TEXT, "
            "sr_series_uid TEXT, sc_series_uid TEXT, own_output INTEGER NOT NULL DEFAULT 0, "
            "updated_at REAL NOT NULL)"
        )
        rows = [("s", "failed", "TransientError: API unreachable"),
                ("t", "skipped", "API refused the series (401): authentication required"),
                ("m", "skipped", "modality MR, not CT")]  # fmt: skip
        for uid, status, reason in rows:
            db.execute("INSERT INTO series VALUES (?,'st',?,8,0,8,?,NULL,NULL,NULL,NULL,0,0)",
                       (uid, status, reason))  # fmt: skip
    state = StateDB(path)
    # What the old worker made final for a cause that can clear comes back; the rest stays.
    assert {row.series_uid: (row.status, row.attempts) for row in state.all()} == {
        "s": ("retry", 0), "t": ("retry", 0), "m": ("skipped", 8)
    }  # fmt: skip
    state.close()
    state = StateDB(path)  # opened again: nothing more to do
    assert state.counts()["retry"] == 2
    state.close()


def test_retry_after_seconds_and_http_date() -> None:
    import requests

    from pacs.clients import RETRY_AFTER_MAX_SECONDS, retry_after

    def answer(value: str | None) -> requests.Response:
        response = requests.Response()
        if value is not None:
            response.headers["Retry-After"] = value
        return response

    assert retry_after(answer("7")) == 7.0
    assert retry_after(answer(None)) is None and retry_after(answer("soon")) is None
    assert retry_after(answer("99999")) == RETRY_AFTER_MAX_SECONDS
    assert retry_after(answer("Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0  # in the past


def test_settings_token_from_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    monkeypatch.setenv("PACS_API_TOKEN_FILE", str(token))
    settings = WorkerSettings()
    assert settings.bearer_token() == "s3cret"
    changed = settings.config_fingerprint()
    token.write_text("other")
    assert settings.config_fingerprint() != changed
    monkeypatch.setenv("PACS_API_TOKEN", "x")
    with pytest.raises(ValueError, match="not both"):
        WorkerSettings()


@pytest.mark.parametrize("keyword", ["PatientID", "PatientName", "StudyID", "PatientSex"])
@pytest.mark.parametrize("empty", [True, False])
def test_sr_and_heatmaps_without_type2_patient_elements(keyword: str, empty: bool) -> None:
    """Anonymised sources with a Type 2 element empty or left out still give an SR and a
    heatmap, the element present and empty in both."""
    import base64

    from PIL import Image

    from pacs.dicom_out import build_heatmaps

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    slices = [tiny_ct("1.2.3", "1.2.3.4", number) for number in (1, 2)]
    for ds in slices:
        if empty:
            setattr(ds, keyword, "")
        else:
            delattr(ds, keyword)
    top = {"name": f"{slices[0].SOPInstanceUID}.dcm", "prediction": 0.2,
           "heatmap_png_base64": base64.b64encode(png.getvalue()).decode()}  # fmt: skip
    answer = {**ANSWER, "top_slices": [top]}
    uids = output_uids("1.2.3.4", 2)
    heatmaps = build_heatmaps(answer, slices, uids)
    sr = build_sr(answer, slices, uids, uids.sc_series)
    for written in (*heatmaps, sr):
        read = dcmread(io.BytesIO(dataset_bytes(written)))
        assert keyword in read and str(read.get(keyword)) == ""


def _http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} answered", response=response)


# What an attempt may raise, and its class: the network's troubles (however they reach the
# worker: through requests, from urllib3 or http.client while a WADO-RS download streams, or
# straight from a socket) are transient, never final; an answer that came and is wrong, and
# what the worker did not expect of the data, are ``error`` (bounded attempts, then failed).
CLASSIFICATION = [
    ("our TransientError", TransientError("PACS retrieve: not finished within 3s"), "transient"),
    ("connection refused", requests.ConnectionError("[Errno 111] refused"), "transient"),
    ("connect timeout", requests.ConnectTimeout("timed out"), "transient"),
    ("read timeout", requests.ReadTimeout("read timed out"), "transient"),
    ("chunked body cut", requests.exceptions.ChunkedEncodingError("broken"), "transient"),
    ("TLS", requests.exceptions.SSLError("EOF in violation of protocol"), "transient"),
    ("HTTP 500", _http_error(500), "transient"),
    ("HTTP 502", _http_error(502), "transient"),
    ("HTTP 503", _http_error(503), "transient"),
    ("HTTP 408", _http_error(408), "transient"),
    ("HTTP 429", _http_error(429), "transient"),
    ("urllib3 body cut", urllib3.exceptions.ProtocolError("IncompleteRead(10 bytes)"),
     "transient"),
    ("urllib3 read timeout", urllib3.exceptions.ReadTimeoutError(None, "/x", "timed out"),  # type: ignore[arg-type]
     "transient"),
    ("http.client body cut", http.client.IncompleteRead(b"partial", 100), "transient"),
    ("server hung up", http.client.RemoteDisconnected("closed"), "transient"),
    ("socket reset", ConnectionResetError(errno.ECONNRESET, "reset by peer"), "transient"),
    ("broken pipe", BrokenPipeError(errno.EPIPE, "broken pipe"), "transient"),
    ("socket timeout", TimeoutError("timed out"), "transient"),
    ("DNS", socket.gaierror(socket.EAI_NONAME, "Name or service not known"), "transient"),
    ("no route", OSError(errno.EHOSTUNREACH, "No route to host"), "transient"),
    ("network down", OSError(errno.ENETUNREACH, "Network is unreachable"), "transient"),
    ("HTTP 400 from the PACS", _http_error(400), "error"),
    ("HTTP 404 from the PACS", _http_error(404), "error"),
    ("a 200 that is not JSON", requests.exceptions.JSONDecodeError("Expecting value", "<", 0),
     "error"),
    ("pydicom cannot write a value", OSError("ushort format requires 0 <= number <= 65535"),
     "error"),
    ("unwritable file", PermissionError(errno.EACCES, "Permission denied"), "error"),
    ("bad element length", BytesLengthException("Expected total bytes to be a multiple"),
     "error"),
    ("a bug", KeyError("prediction"), "error"),
    ("struct", struct.error("unpack requires a buffer of 8 bytes"), "error"),
    ("refused by the API", PermanentError("API refused the series (422)"), "permanent"),
    ("two patients", IdentityError("identity: 2 PatientID values"), "identity"),
    ("token refused", ConfigError("API refused the worker's token (401)"), "config"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("exc", "expected"), [case[1:] for case in CLASSIFICATION], ids=[c[0] for c in CLASSIFICATION]
)
def test_failure_classification_table(exc: BaseException, expected: str) -> None:
    assert failure_class(exc) == expected
    assert is_transient(exc) == (expected == "transient")


def test_a_multipart_answer_cut_short_is_a_truncated_download() -> None:
    """No close delimiter: the last part is a truncated instance, and the download is
    retried (transient), not read as a damaged instance."""
    part = dataset_bytes(tiny_ct("1.2.3", "1.2.3.4", 1))
    head = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
    whole = head + part + b"\r\n--b--\r\n"
    content_type = 'multipart/related; type="application/dicom"; boundary=b'
    assert split_multipart(whole, content_type) == [part]
    with pytest.raises(TransientError, match="truncated download"):
        split_multipart(whole[: len(head) + len(part) // 2], content_type)


def test_error_attempts_setting_and_its_older_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().error_max_attempts == 3
    monkeypatch.setenv("PACS_MAX_ATTEMPTS", "8")  # the older name still bounds errors
    assert WorkerSettings().error_max_attempts == 8
    monkeypatch.setenv("PACS_ERROR_MAX_ATTEMPTS", "2")
    assert WorkerSettings().error_max_attempts == 2


def test_a_retried_attempt_keeps_the_last_failure_and_list_shows_attempts(
    new_state: Callable[[], Path | str],
) -> None:
    """The row counts attempts and, apart, those ended by an unexpected error (what
    PACS_ERROR_MAX_ATTEMPTS bounds: transient failures do not use them up); a retried
    attempt keeps the last failure's class and reason; a re-queue starts afresh."""
    from pacs.__main__ import list_columns

    state = StateDB(new_state())
    for attempt in (1, 2):  # the API away twice
        assert state.start("s1", "st", 4) == attempt
        state.retry("s1", "st", "TransientError: API answered 503", time.time() + 2)
    assert state.start("s1", "st", 4) == 3
    state.retry("s1", "st", "KeyError: 'prediction'", time.time() + 2, "error")
    row = state.get("s1")
    assert row is not None and (row.attempts, row.errors) == (3, 1)
    _uid, status, klass, attempts, due, _result, reason = list_columns(row)
    assert (status, klass, attempts, reason) == ("retry", "error", "attempts 3, errors 1",
                                                  "KeyError: 'prediction'")  # fmt: skip
    assert due.startswith("next ") and due.endswith("Z")
    assert state.start("s1", "st", 4) == 4  # under way again: why it is tried again is kept
    row = state.get("s1")
    assert row is not None and row.status == "processing" and row.errors == 1
    assert (row.failure_class, row.reason) == ("error", "KeyError: 'prediction'")
    assert list_columns(row)[3:5] == ("attempts 4, errors 1", "next -")
    state.fail("s1", "st", "KeyError: 'prediction' (after 4 attempts, 2 errors)", "error")
    row = state.get("s1")
    assert row is not None and (row.attempts, row.errors) == (4, 2)
    assert state.requeue(("failed",)) == 1
    assert state.start("s1", "st", 4) == 1  # re-queued: a fresh start, no old reason
    row = state.get("s1")
    assert row is not None and (row.failure_class, row.reason, row.errors) == (None, None, 0)
    state.close()


def test_an_older_state_file_gets_the_errors_column(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    state = StateDB(path)
    state.start("s1", "st", 4)
    state.retry("s1", "st", "KeyError", time.time(), "error")
    state.close()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE series DROP COLUMN errors")  # as a worker before it wrote
    state = StateDB(path)
    row = state.get("s1")
    assert row is not None and row.status == "retry" and row.errors == 0
    state.close()


def test_a_broker_job_of_a_newer_poller_is_read() -> None:
    """A job's ``earlier`` row with a field this worker does not know is read without it."""
    from dataclasses import asdict

    from pacs.broker import OutcomeRecorder
    from pacs.state import SeriesState

    earlier = SeriesState("s1", "st", "retry", 2, 0.0, 4, "KeyError", None, None, None, None,
                          False, "error", errors=1)  # fmt: skip
    job = {"attempt": 3, "earlier": {**asdict(earlier), "a_later_field": 1}}
    assert OutcomeRecorder(job).get("s1") == earlier


D = date  # the span table below reads better short
_WHOLE = StudySpan(D(1900, 1, 1), D(9998, 12, 31))


@pytest.mark.parametrize(
    ("span", "seen", "pieces"),
    [
        # dates apart: cut after the median date seen, so no piece holds every series seen
        (_WHOLE, [(D(2025, 1, 1), None), (D(2025, 1, 2), 0), (D(2025, 1, 3), 0)],
         ["19000101-20250102", "20250103-99981231"]),
        # the median is the last date: cut before it
        (_WHOLE, [(D(2025, 1, 1), None), (D(2025, 1, 3), 0), (D(2025, 1, 3), 5)],
         ["19000101-20250101", "20250102-99981231"]),
        # one date: the days before, the day, the days after
        (_WHOLE, [(D(2025, 1, 3), 10)] * 3,
         ["19000101-20250102", "20250103-20250103", "20250104-99981231"]),
        # within one day: by StudyTime
        (StudySpan(D(2025, 1, 3), D(2025, 1, 3)), [(D(2025, 1, 3), 3600), (D(2025, 1, 3), 7200)],
         ["20250103-20250103 000000-010000", "20250103-20250103 010001-235959"]),
        (StudySpan(D(2025, 1, 3), D(2025, 1, 3)), [(D(2025, 1, 3), 0)] * 2,
         ["20250103-20250103 000000-000000", "20250103-20250103 000001-235959"]),
        # nothing to cut by: no time within the day, or one second
        (StudySpan(D(2025, 1, 3), D(2025, 1, 3)), [(D(2025, 1, 3), None)], []),
        (StudySpan(D(2025, 1, 3), D(2025, 1, 3), 60, 60), [(D(2025, 1, 3), 60)] * 4, []),
        (_WHOLE, [], []),
    ],
)  # fmt: skip
def test_a_capped_span_is_cut_between_the_series_seen(
    span: StudySpan, seen: list[tuple[date, int | None]], pieces: list[str]
) -> None:
    found = [" ".join(piece.query().values()) for piece in span.split(seen)]
    assert found == pieces
