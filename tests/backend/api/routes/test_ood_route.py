"""The CT gate in /predict and /predict/batch, over the real bundle.

Everyday photos (scikit-image's sample images) must get `Not a CT slice` and no fracture
call; real CT slices of the shared data set must pass the gate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skimage_data

from ml_model.config import RESULT_NEGATIVE, RESULT_OUT_OF_DISTRIBUTION, RESULT_POSITIVE
from ml_model.imaging.transforms import image_to_array
from ml_model.inference.core import InferenceCore

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")
FORMATS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("PNG", "png", {}),
    ("JPEG", "jpg", {"quality": 90}),
)


def photo_bytes(images: Any, name: str, fmt: str, options: dict[str, Any]) -> bytes:
    return bytes(images.encode(Image.fromarray(getattr(skimage_data, name)()), fmt, **options))


@pytest.mark.parametrize("fmt", FORMATS, ids=[f[0] for f in FORMATS])
@pytest.mark.parametrize("name", PHOTOS)
def test_photos_are_not_ct_slices(
    client: TestClient, predictor: InferenceCore, images: Any, name: str, fmt: tuple[Any, ...]
) -> None:
    pillow_format, extension, options = fmt
    data = photo_bytes(images, name, pillow_format, options)
    response = client.post("/predict", files={"file": (f"{name}.{extension}", data)})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert body["in_distribution"] is False
    assert body["ct_gate_margin"] > 1.0
    # The probability is still reported (for transparency), and is the model's own.
    expected = predictor.classify(
        image_to_array(data, predictor.bundle.img_size, *predictor.bundle.window)
    )[0]
    assert body["prediction"] == pytest.approx(expected.probability, abs=1e-6)
    assert body["ct_gate_margin"] == pytest.approx(expected.ct_gate_margin, rel=1e-5)
    assert body["ood_distance"] == body["ct_gate_margin"]  # the deprecated alias


def test_real_ct_slices_pass_the_guard(
    client: TestClient, predictor: InferenceCore, ct_slice_paths: list[Path]
) -> None:
    for path in ct_slice_paths:
        data = path.read_bytes()
        body = client.post("/predict", files={"file": (path.name, data)}).json()
        assert body["in_distribution"] is True, path.name
        assert body["result"] in (RESULT_POSITIVE, RESULT_NEGATIVE)
        expected = predictor.classify(
            image_to_array(data, predictor.bundle.img_size, *predictor.bundle.window)
        )[0]
        assert body["ct_gate_margin"] == pytest.approx(expected.ct_gate_margin, rel=1e-5)
        assert body["ct_gate_margin"] <= 1.0
        assert body["ood_distance"] == body["ct_gate_margin"]
        assert body["result"] == expected.result


def test_batch_refuses_photos_and_keeps_slices(
    client: TestClient, images: Any, ct_slice_paths: list[Path]
) -> None:
    slice_path = ct_slice_paths[0]
    uploads = [
        ("slice.png", slice_path.read_bytes()),
        ("rocket.jpg", photo_bytes(images, "rocket", "JPEG", {})),
        ("notes.txt", b"not an image"),
        ("astronaut.png", photo_bytes(images, "astronaut", "PNG", {})),
    ]
    response = client.post("/predict/batch", files=[("files", upload) for upload in uploads])
    assert response.status_code == 200, response.text
    ct, rocket, notes, astronaut = response.json()["results"]
    assert ct["in_distribution"] is True
    assert ct["result"] in (RESULT_POSITIVE, RESULT_NEGATIVE)
    for photo in (rocket, astronaut):
        assert photo["result"] == RESULT_OUT_OF_DISTRIBUTION
        assert photo["in_distribution"] is False
        assert photo["ct_gate_margin"] > ct["ct_gate_margin"]
        assert photo["ood_distance"] == photo["ct_gate_margin"]
        assert 0.0 <= photo["prediction"] <= 1.0
    assert notes["status_code"] == 415
    assert set(ct) == {
        "filename",
        "result",
        "prediction",
        "threshold",
        "operating_point",
        "in_distribution",
        "ct_gate_margin",
        "ood_distance",
        "model",
    }


def test_out_of_distribution_is_refused_at_every_threshold(make_client: Any, images: Any) -> None:
    """Even a threshold of 0 (everything positive) makes no fracture call on a photo."""
    client = make_client(threshold=0.0)
    data = photo_bytes(images, "chelsea", "PNG", {})
    body = client.post("/predict", files={"file": ("cat.png", data)}).json()
    assert body["threshold"] == 0.0
    assert body["result"] == RESULT_OUT_OF_DISTRIBUTION


def test_explain_still_draws_a_heatmap_out_of_distribution(client: TestClient, images: Any) -> None:
    data = photo_bytes(images, "coffee", "JPEG", {})
    body = client.post("/predict?explain=true", files={"file": ("c.jpg", data)}).json()
    assert body["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert body["heatmap_png_base64"]


def test_synthetic_noise_is_out_of_distribution(client: TestClient, images: Any) -> None:
    noise = np.random.default_rng(1).integers(0, 256, (224, 224), dtype=np.uint8)
    data = images.encode(Image.fromarray(noise), "PNG")
    body = client.post("/predict", files={"file": ("noise.png", data)}).json()
    assert body["result"] == RESULT_OUT_OF_DISTRIBUTION


def test_openapi_documents_the_guard(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    response = components["PredictionResponse"]
    assert RESULT_OUT_OF_DISTRIBUTION in response["properties"]["result"]["enum"]
    assert "transparency" in response["properties"]["prediction"]["description"]
    assert {"in_distribution", "ct_gate_margin", "ood_distance"} <= set(response["required"])
    # The old name stays one release, marked deprecated, and says what replaces it.
    assert response["properties"]["ood_distance"]["deprecated"] is True
    assert "ct_gate_margin" in response["properties"]["ood_distance"]["description"]
    assert "deprecated" not in response["properties"]["ct_gate_margin"]
    examples = response["examples"]
    assert any(example["result"] == RESULT_OUT_OF_DISTRIBUTION for example in examples)
    assert all({"in_distribution", "ct_gate_margin"} <= set(example) for example in examples)
    assert all(example["ood_distance"] == example["ct_gate_margin"] for example in examples)
    batch_items = components["BatchResponse"]["examples"][0]["results"]
    assert any(item.get("result") == RESULT_OUT_OF_DISTRIBUTION for item in batch_items)
    assert "in_distribution" in components["BatchItemPrediction"]["properties"]
