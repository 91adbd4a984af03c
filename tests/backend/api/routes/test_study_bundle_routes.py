"""/predict/study, /report and /predict on a study bundle (RSNA 2022 format): C1-C7 in the
answer, in the PDF, and in the OpenAPI schema; the tiny bundle of ``testing.study_bundle``
served by the production app (ONNX Runtime, as by default)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pypdf import PdfReader

from backend.app.core.config import Settings
from backend.app.main import create_app
from ml_model.card import VERTEBRAE
from ml_model.inference.core import InferenceCore
from ml_model.inference.forward_onnx import OnnxForward
from ml_model.inference.study import SliceFile
from testing import study_bundle as tiny
from tests.conftest import gray_to_export_window_dicom, synthetic_slice

SERIES_UID = "1.2.826.0.1.3680043.2.1125.78"


@pytest.fixture(scope="module")
def bundle() -> Path:
    return tiny.study_bundle()


@pytest.fixture(scope="module")
def study_client(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(model_dir=bundle, frontend_dist=tmp_path_factory.mktemp("no-dist"))
    with TestClient(create_app(settings)) as client:
        yield client


def uploads(count: int = 8) -> list[tuple[str, bytes]]:
    """A DICOM series 1.5 mm apart, head to foot, sent in reverse."""
    files = [
        (
            f"IM{i:03d}.dcm",
            gray_to_export_window_dicom(
                synthetic_slice(i % 2, seed=i, size=48),
                z=-1.5 * i,
                instance=i + 1,
                series_uid=SERIES_UID,
            ),
        )
        for i in range(count)
    ]
    return files[::-1]


def test_study_answers_with_c1_to_c7(study_client: TestClient, bundle: Path) -> None:
    sent = uploads()
    response = study_client.post(
        "/predict/study",
        params={"explain": "true"},
        files=[("files", upload) for upload in sent],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["vertebrae"]) == list(VERTEBRAE)
    assert all(0.0 <= p <= 1.0 for p in body["vertebrae"].values())
    assert body["aggregation"] == "study_head"
    assert [s["name"] for s in body["slices"]] == [name for name, _ in reversed(sent)]
    assert all(top["heatmap_png_base64"] for top in body["top_slices"])
    # The core's own answer on the same files (the route only shapes it).
    core = InferenceCore(bundle, forward=OnnxForward.from_bundle(bundle, threads=1, lanes=1))
    verdict = core.study([SliceFile(name, data) for name, data in sent])
    assert verdict.vertebrae is not None
    for name in VERTEBRAE:
        assert body["vertebrae"][name] == pytest.approx(verdict.vertebrae[name], abs=1e-6)
    assert body["prediction"] == pytest.approx(verdict.probability, abs=1e-6)
    assert body["result"] == verdict.result


def test_single_slices_on_a_study_bundle_are_answered(study_client: TestClient) -> None:
    """/predict has one slice and no neighbours: its input repeats it in the 3 channels."""
    name, data = uploads(1)[0]
    response = study_client.post("/predict", files={"file": (name, data)})
    assert response.status_code == 200, response.text
    assert 0.0 <= response.json()["prediction"] <= 1.0


def test_report_lists_the_vertebrae(study_client: TestClient) -> None:
    response = study_client.post("/report", files=[("files", upload) for upload in uploads()])
    assert response.status_code == 200, response.text
    reader = PdfReader(io.BytesIO(response.content))
    words = " ".join(" ".join((page.extract_text() or "").split()) for page in reader.pages)
    assert "Vertebrae (C1-C7)" in words
    for name in VERTEBRAE:
        assert f"{name} " in words
    assert "the study head's probability of a fracture in C1-C7" in words


def test_openapi_describes_the_vertebrae(study_client: TestClient) -> None:
    schema = study_client.get("/openapi.json").json()["components"]["schemas"]
    field = schema["StudyResponse"]["properties"]["vertebrae"]
    assert {"$ref": "#/components/schemas/VertebraProbabilities"} in field["anyOf"]
    assert {"type": "null"} in field["anyOf"]
    assert "vertebrae" in schema["StudyResponse"]["required"]
    assert sorted(schema["VertebraProbabilities"]["required"]) == list(VERTEBRAE)
    card = schema["ModelCard"]
    assert card["properties"]["input"]["$ref"].endswith("/InputSpec")
    assert "context" in schema["InputSpec"]["properties"]
    assert "head" in schema["StudySettings"]["properties"]


def test_model_card_route_serves_the_study_sections(study_client: TestClient) -> None:
    card = study_client.get("/model").json()
    assert card["input"]["context"] == {"slices": 3, "spacing_mm": tiny.CONTEXT_MM}
    assert card["study"]["head"]["outputs"] == ["patient_overall", *VERTEBRAE]
