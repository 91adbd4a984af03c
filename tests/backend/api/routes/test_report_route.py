"""POST /report over the real model: a PDF with the verdict, "not a diagnosis", the
operating point, the top slices' heatmaps, the model and its known limits; one slice worded
as a slice, a series as a study; a refused input with no score ("CT outside the model's
range": its reason and what to send instead); the exam's identifiers
(study/series UID, accession number, study date) unless turned off; and nothing that
identifies a patient (no DICOM patient field, no file name)."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pypdf import PdfReader

from backend.app.report_pdf import known_limits, percent, text
from ml_model.config import RESULT_OUTSIDE_RANGE
from ml_model.imaging.dicom import DicomImage, read_dicom
from ml_model.imaging.window import hu_window
from ml_model.inference.verdict import OUTSIDE_REASONS

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
    assert any(
        result in words
        for result in ("Potentially Fracture", "Normal", "Not a CT slice", RESULT_OUTSIDE_RANGE)
    )
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


def assert_no_score(words: str, answer: dict[str, Any]) -> None:
    """No score of a refused input: neither the network's raw one nor the study's 0."""
    for score in (percent(answer["prediction"]), "0%"):  # not the threshold's "60%"
        assert not re.search(rf"(?<![\d.<>]){re.escape(score)}", words), score
    assert "score 0" not in words.lower()
    assert "Slice score" not in words and "Study score" not in words
    assert "Top 1" not in words and "fracture probability" not in words


def test_a_refused_slice_is_reported_without_a_score(client: TestClient) -> None:
    """A photo is refused (not a CT slice): the report gives no score."""
    from skimage import data as skimage_data

    photo = io.BytesIO()
    Image.fromarray(skimage_data.coffee()).save(photo, "JPEG")
    answer = client.post("/predict", files={"file": ("a.jpg", photo.getvalue())}).json()
    assert answer["result"] == "Not a CT slice"
    words = pdf_text(post_report(client, [("a.jpg", photo.getvalue())]).content)
    assert "Not a CT slice" in words
    assert "no fracture call was made and no score is given" in words
    assert "outside the model's range" not in words
    assert_no_score(words, answer)


def words_of(text_: str) -> str:
    return " ".join(text(text_).split())


def test_ct_of_another_region_is_reported_outside_the_range_with_its_reason(
    client: TestClient, samples: Path
) -> None:
    """pydicom's CT_small (a CT DICOM, not a neck): "CT outside the model's range", reason
    region, in the web app's words and what to send instead; no score, no model window (a
    DICOM is already put through it)."""
    dicom = (samples / "CT_small.dcm").read_bytes()
    answer = client.post("/predict", files={"file": ("a.dcm", dicom)}).json()
    assert (answer["result"], answer["outside_reason"]) == (RESULT_OUTSIDE_RANGE, "region")
    words = pdf_text(post_report(client, [("a.dcm", dicom)]).content)
    assert "Result (one slice) CT outside the model's range" in words
    assert words_of(OUTSIDE_REASONS["region"]) in words
    assert "Send the axial neck series as DICOM" in words and "No score is given" in words
    assert words_of(OUTSIDE_REASONS["window"]) not in words
    assert "does not look like an axial CT slice" not in words
    assert "model's own window" not in words
    assert_no_score(words, answer)


def brain_window_png(samples: Path) -> bytes:
    """pydicom's CT slice exported in a brain window (L40 / W80): CT in a window the model
    cannot judge."""
    image = read_dicom((samples / "CT_small.dcm").read_bytes())
    assert isinstance(image, DicomImage) and image.is_hu
    buffer = io.BytesIO()
    Image.fromarray(hu_window(image.values, 40.0, 80.0)).save(buffer, "PNG")
    return buffer.getvalue()


def test_ct_in_another_window_is_reported_outside_the_range_slice_and_study(
    client: TestClient, samples: Path
) -> None:
    """A CT slice exported in a brain window: "CT outside the model's range", reason window;
    the report says so, what to send instead (the DICOM, or the model's own window by its
    numbers) and gives no score; a series of such slices likewise, its slices counted with
    their reason."""
    png = brain_window_png(samples)
    answer = client.post("/predict", files={"file": ("a.png", png)}).json()
    assert (answer["result"], answer["outside_reason"]) == (RESULT_OUTSIDE_RANGE, "window")
    level, width = (client.get("/model").json()["input"]["window"][k] for k in ("level", "width"))
    own_window = f"model's own window: level {level:g} HU, width {width:g} HU"

    words = pdf_text(post_report(client, [("a.png", png)]).content)
    assert "Result (one slice) CT outside the model's range" in words
    assert words_of(OUTSIDE_REASONS["window"]) in words and "Send the DICOM" in words
    assert own_window in words
    assert_no_score(words, answer)

    uploads = [(f"neck ({n}).png", png) for n in (1, 2, 3)]
    study = client.post("/predict/study", files=[("files", u) for u in uploads]).json()
    assert (study["result"], study["outside_reason"]) == (RESULT_OUTSIDE_RANGE, "window")
    words = pdf_text(post_report(client, uploads).content)
    assert "Result (study) CT outside the model's range" in words
    assert "None of the 3 slices could be judged." in words
    assert words_of(OUTSIDE_REASONS["window"]) in words and own_window in words
    assert "3 CT outside the model's range (window 3) and 0 not a CT slice (left out)" in words
    assert "None: no slice was scored." in words
    assert_no_score(words, study)


def test_the_reasons_read_as_the_web_app_says_them() -> None:
    """The server's table of reasons (CLI, PDF) and the web app's own say the same."""
    source = (REPO_ROOT / "frontend" / "src" / "lib" / "results.ts").read_text()
    joined = re.sub(r'"\s*\+\s*"', "", source)  # "a " + "b" -> "a b"
    for reason, words in OUTSIDE_REASONS.items():
        assert re.search(rf'{reason}:\s*"{re.escape(words)}"', joined), reason


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
