"""POST /report over the real model: a PDF with the verdict, "not a diagnosis", the
operating point, the top slices' heatmaps, the model and its known limits; one slice worded
as a slice, a series as a study; a refused input with no score; the exam's identifiers
(study/series UID, accession number, study date) unless turned off; and nothing that
identifies a patient (no DICOM patient field, no file name)."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from backend.app.report_pdf import known_limits, percent, text

REPO_ROOT = Path(__file__).resolve().parents[4]


def pdf_text(data: bytes) -> str:
    reader = PdfReader(io.BytesIO(data))
    return " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)


def post_report(client: TestClient, uploads: list[tuple[str, bytes]], **params: Any) -> Any:
    return client.post("/report", params=params, files=[("files", u) for u in uploads])


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's samples, written by the make target's script into a fresh folder."""
    out = tmp_path_factory.mktemp("samples")
    subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "make_samples.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def test_report_of_one_real_slice(client: TestClient, ct_slice_path: Path) -> None:
    upload = (ct_slice_path.name, ct_slice_path.read_bytes())
    response = post_report(client, [upload], operating_point="specific")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.content.startswith(b"%PDF-")

    # The same answer as /predict/study for that one slice (named with a slice number).
    study = client.post(
        "/predict/study",
        params={"operating_point": "specific", "explain": "true"},
        files=[("files", ("slice (1).png", upload[1]))],
    ).json()
    words = pdf_text(response.content)
    assert study["result"] in words
    assert "Decision support — not a diagnosis" in words
    # One slice is a slice: its own score and threshold, no aggregation, no "study".
    assert f"specific: slice threshold {percent(study['threshold'])}" in words
    assert "Result (one slice)" in words and "study threshold" not in words
    assert "highest slice probabilities" not in words and "Study score" not in words
    assert f"{study['model']['name']} (version {study['model']['version']})" in words
    if study["top_slices"]:
        assert "The slice," in words and "Top 1" not in words
        assert "where the model looked — not a fracture outline" in words
        assert len(PdfReader(io.BytesIO(response.content)).pages[0].images) >= 1
    # the model card's known limits, every one of them
    card = client.get("/model").json()
    for limit in known_limits(card):
        assert " ".join(text(limit).split()) in words
    assert ct_slice_path.stem not in words  # no file name


def test_report_of_a_dicom_names_no_patient(client: TestClient, samples: Path) -> None:
    dicom = samples / "CT_small.dcm"
    ds = pydicom.dcmread(dicom)
    response = post_report(client, [("1CT1_CompressedSamples.dcm", dicom.read_bytes())])
    assert response.status_code == 200, response.text
    words = pdf_text(response.content)
    assert "not a diagnosis" in words
    assert any(result in words for result in ("Potentially Fracture", "Normal", "Not a CT slice"))
    for identifier in (str(ds.PatientName), str(ds.PatientID), "CompressedSamples", "1CT1"):
        assert identifier not in words
        assert identifier.encode() not in response.content  # not in the metadata either


def test_report_of_a_series_zip_and_of_many_files(client: TestClient, samples: Path) -> None:
    zipped = post_report(client, [("series.zip", (samples / "series.zip").read_bytes())])
    assert zipped.status_code == 200, zipped.text
    assert "Result (one slice)" in pdf_text(zipped.content)  # a zip of one slice: a slice

    png = (samples / "CT_small.png").read_bytes()
    many = post_report(client, [(f"neck ({n}).png", png) for n in (1, 2, 3)])
    assert many.status_code == 200, many.text
    words = pdf_text(many.content)
    assert "3 scored" in words and "Result (study)" in words


def test_a_refused_slice_is_reported_without_a_score(client: TestClient, samples: Path) -> None:
    """pydicom's phantom slice is refused (not a neck CT slice): the report gives no score,
    neither the network's raw one nor the study's 0."""
    dicom = (samples / "CT_small.dcm").read_bytes()
    answer = client.post("/predict", files={"file": ("a.dcm", dicom)}).json()
    assert answer["result"] == "Not a CT slice"
    words = pdf_text(post_report(client, [("a.dcm", dicom)]).content)
    assert "no fracture call was made and no score is given" in words
    assert percent(answer["prediction"]) not in words
    assert "0%" not in words and "score 0" not in words.lower()
    assert "Slice score" not in words and "Study score" not in words


def test_the_report_names_its_exam_unless_turned_off(
    client: TestClient, make_client: Any, samples: Path
) -> None:
    dicom = samples / "CT_small.dcm"
    ds = pydicom.dcmread(dicom)
    words = pdf_text(post_report(client, [("a.dcm", dicom.read_bytes())]).content)
    assert f"Study instance UID {ds.StudyInstanceUID}" in words
    assert f"Series instance UID {ds.SeriesInstanceUID}" in words
    assert "Study date 2004-01-19" in words
    assert "Accession number" not in words  # empty in this file: left out
    quiet = make_client(report_identifiers=False)
    words = pdf_text(post_report(quiet, [("a.dcm", dicom.read_bytes())]).content)
    assert ds.StudyInstanceUID not in words and "2004" not in words and "Exam" not in words
    # a PNG has no identifiers: no exam section
    png = (samples / "CT_small.png").read_bytes()
    assert "Study instance UID" not in pdf_text(post_report(client, [("a.png", png)]).content)


def test_report_errors_are_the_study_routes(client: TestClient, samples: Path) -> None:
    png = (samples / "CT_small.png").read_bytes()
    unordered = post_report(client, [("a.png", png), ("b.png", png)])
    assert unordered.status_code == 400
    assert "slice number" in unordered.json()["detail"]
    assert client.post("/report").status_code == 422
    assert post_report(client, [("x.png", png)], operating_point="lenient").status_code == 422


def test_report_takes_the_study_size_limit(make_client: Any) -> None:
    small = make_client(max_study_mb=1, max_upload_mb=4)
    response = small.post("/report", files=[("files", ("big (1).png", b"\0" * (2 << 20)))])
    assert response.status_code == 413
    assert "study upload" in response.json()["detail"]


def test_report_is_in_the_openapi_schema(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/report"]["post"]
    assert "application/pdf" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} == {"operating_point"}
