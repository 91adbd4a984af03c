"""One bundle, one answer: a bundle whose card window is NOT the training default gives the
same probability for the same CT DICOMs through every path that reads DICOM — the API's
``/predict``, ``/predict/batch`` and ``/predict/study`` (the real app, its lifespan loading
the bundle), ``python -m ml_model.predict`` and ``python -m ml_model.evaluate``.

Every path takes the window from the bundle (``Bundle.load``); before that, evaluation
decoded DICOM with the training defaults (level -70 / width 380) and disagreed here.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from backend.app.core.config import Settings
from backend.app.main import create_app
from ml_model.config import (
    DEFAULT_MODEL_DIR,
    EXPORT_WINDOW_LEVEL,
    EXPORT_WINDOW_WIDTH,
    SHARED_DATA_DIR,
)
from ml_model.evaluation.evaluate import main as evaluate_main
from ml_model.imaging.transforms import decode_image
from ml_model.inference.core import InferenceCore
from ml_model.predict import main as predict_main
from tests.conftest import gray_to_export_window_dicom, synthetic_slice

# Soft tissue: far from the export window the default bundle was trained at.
WINDOW = {"level": 40.0, "width": 400.0}
SERIES_UID = "1.2.826.0.1.3680043.2.1125.2024"
SLICES = 12
# Every path runs ONNX Runtime on one bundle: only float summation order may differ
# (lanes vs one session), and the CLI rounds to 6 decimals.
TOLERANCE = 2e-6


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default bundle with its card's window set to 40 / 400 HU (the other files linked:
    the graph takes windowed uint8 pixels, so only the card holds the window)."""
    folder = tmp_path_factory.mktemp("soft-tissue-bundle")
    for path in DEFAULT_MODEL_DIR.iterdir():
        if path.name != "model_card.json":
            (folder / path.name).symlink_to(path)
    card = json.loads((DEFAULT_MODEL_DIR / "model_card.json").read_text())
    assert (card["input"]["window"]["level"], card["input"]["window"]["width"]) == (
        EXPORT_WINDOW_LEVEL,
        EXPORT_WINDOW_WIDTH,
    )
    card["input"]["window"] = WINDOW
    (folder / "model_card.json").write_text(json.dumps(card, indent=2))
    return folder


@pytest.fixture(scope="module")
def dicoms(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Twelve CT DICOMs of one series (3 mm apart): real slices of the shared data set
    where present, else synthetic ones; labelled folders for ``evaluate``."""
    train = SHARED_DATA_DIR / "train"
    if (train / "normal").is_dir():
        normals = sorted((train / "normal").glob("* ([0-9]*).png"))[: SLICES - 4]
        fractures = sorted((train / "fracture").glob("* ([0-9]*).png"))[:4]
        grays = [
            (label, decode_image(p.read_bytes(), EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH))
            for label, paths in ((0, normals), (1, fractures))
            for p in paths
        ]
    else:
        grays = [(i % 2, synthetic_slice(i % 2, seed=i, size=128)) for i in range(SLICES)]
    root = tmp_path_factory.mktemp("dicoms")
    files = []
    for index, (label, gray) in enumerate(grays):
        folder = root / ("fracture" if label else "normal")
        folder.mkdir(exist_ok=True)
        path = folder / f"IM{index:04d} ({index + 1}).dcm"
        path.write_bytes(
            gray_to_export_window_dicom(
                gray, z=-3.0 * index, instance=index + 1, series_uid=SERIES_UID
            )
        )
        files.append(path)
    return files


@pytest.fixture(scope="module")
def client(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(model_dir=bundle, frontend_dist=tmp_path_factory.mktemp("no-dist"))
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_every_path_reads_the_window_from_the_bundle(
    bundle: Path, dicoms: list[Path], client: TestClient, tmp_path: Path
) -> None:
    names = [path.name for path in dicoms]
    single = []
    for path in dicoms:
        response = client.post("/predict", files={"file": (path.name, path.read_bytes())})
        assert response.status_code == 200, response.text
        single.append(response.json()["prediction"])
    reference = dict(zip(names, single, strict=True))

    response = client.post(
        "/predict/batch", files=[("files", (p.name, p.read_bytes())) for p in dicoms]
    )
    assert response.status_code == 200, response.text
    batch = {item["filename"]: item["prediction"] for item in response.json()["results"]}

    response = client.post(
        "/predict/study", files=[("files", (p.name, p.read_bytes())) for p in dicoms]
    )
    assert response.status_code == 200, response.text
    study = {item["name"]: item["prediction"] for item in response.json()["slices"]}

    predicted = tmp_path / "predict.csv"
    assert predict_main([*map(str, dicoms), "--model", str(bundle), "--runtime", "onnx",
                         "--csv", str(predicted)]) == 0  # fmt: skip
    with predicted.open() as handle:
        cli = {Path(row["file"]).name: float(row["probability"]) for row in csv.DictReader(handle)}

    out = tmp_path / "evaluation"
    evaluate_main(["--model", str(bundle), "--data", str(dicoms[0].parent.parent),
                   "--out", str(out), "--runtime", "onnx"])  # fmt: skip
    with (out / "predictions.csv").open() as handle:
        evaluated = {
            Path(row["file"]).name: float(row["probability"]) for row in csv.DictReader(handle)
        }

    for path_name, answers in (
        ("/predict/batch", batch),
        ("/predict/study", study),
        ("python -m ml_model.predict", cli),
        ("python -m ml_model.evaluate", evaluated),
    ):
        assert sorted(answers) == sorted(names), path_name
        differ = {
            name: (reference[name], answers[name])
            for name in names
            if abs(reference[name] - answers[name]) > TOLERANCE
        }
        assert not differ, f"{path_name} differs from /predict: {differ}"
    # The window decides: the default bundle (the training window) answers otherwise.
    default = InferenceCore.on_runtime(DEFAULT_MODEL_DIR, "onnx")
    trained = default.judge_files([path.read_bytes for path in dicoms]).output.probability
    assert np.max(np.abs(trained - np.array(single))) > 1e-2
