"""The same bytes get the same answer through every door: /predict, /predict/batch,
/predict/study, the CLI (files and --study) and ml_model.evaluate."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skdata

from ml_model import predict
from ml_model.config import DEFAULT_MODEL_DIR, SHARED_DATA_DIR
from ml_model.evaluation import evaluate


def _png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="PNG")
    return buffer.getvalue()


def _cases() -> dict[str, bytes]:
    cases = {
        "astronaut": _png(np.asarray(Image.fromarray(skdata.astronaut()).convert("L"))),
        "flat_grey": _png(np.full((256, 256), 128, np.uint8)),
        "line_chart": _png(
            np.where(np.add.outer(np.arange(256), np.arange(256)) % 64 < 2, 0, 255).astype(np.uint8)
        ),
    }
    for label in ("fracture", "normal"):
        folder = SHARED_DATA_DIR / "val" / label
        if folder.is_dir():
            cases[f"ct_{label}"] = sorted(folder.glob("*.png"))[0].read_bytes()
    return cases


CASES = _cases()


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_door_gives_the_same_answer(name: str, client: TestClient, tmp_path: Path) -> None:
    data = CASES[name]
    single = client.post("/predict", files={"file": (f"{name}.png", data, "image/png")}).json()
    batch = client.post(
        "/predict/batch", files=[("files", (f"{name}.png", data, "image/png"))]
    ).json()
    study = client.post(
        "/predict/study", files=[("files", (f"{name} (1).png", data, "image/png"))]
    ).json()

    folder = tmp_path / "series"
    folder.mkdir()
    (folder / f"{name} (1).png").write_bytes(data)
    rows_csv = tmp_path / "rows.csv"
    assert (
        predict.main([str(folder), "--model", str(DEFAULT_MODEL_DIR), "--csv", str(rows_csv)]) == 0
    )
    with rows_csv.open() as handle:
        cli = next(csv.DictReader(handle))["result"]

    labelled = tmp_path / "labelled" / "normal"
    labelled.mkdir(parents=True)
    (labelled / f"{name} (1).png").write_bytes(data)
    evaluate.evaluate(DEFAULT_MODEL_DIR, labelled.parent, tmp_path / "eval")
    with (tmp_path / "eval" / "predictions.csv").open() as handle:
        evaluated = next(csv.DictReader(handle))["result"]

    answers = {
        "/predict": single["result"],
        "/predict/batch": batch["results"][0]["result"],
        "/predict/study (one slice)": study["result"],
        "CLI": cli,
        "evaluate": evaluated,
    }
    assert len(set(answers.values())) == 1, answers
    if name in ("astronaut", "flat_grey", "line_chart"):
        assert single["result"] == "Not a CT slice"
