"""POST /predict/batch: order, filenames, per-file errors, limits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_model.imaging.transforms import image_to_array
from ml_model.inference.core import InferenceCore


def post_batch(client: TestClient, uploads: list[tuple[str, bytes]], **params: Any) -> Any:
    return client.post(
        "/predict/batch", params=params, files=[("files", upload) for upload in uploads]
    )


def test_batch_with_one_broken_file(
    client: TestClient, service: Any, predictor: InferenceCore, images: Any
) -> None:
    good = [images.png_bytes(seed=seed) for seed in range(3)]
    uploads = [
        ("a.png", good[0]),
        ("broken.png", good[1][:200]),
        ("b.png", good[1]),
        ("notes.txt", b"not an image at all"),
        ("empty.png", b""),
        ("c.png", good[2]),
    ]
    response = post_batch(client, uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert [item["filename"] for item in results] == [name for name, _ in uploads]
    errors = {item["filename"]: item for item in results if "error" in item}
    assert set(errors) == {"broken.png", "notes.txt", "empty.png"}
    assert errors["broken.png"]["status_code"] == 400
    assert errors["notes.txt"]["status_code"] == 415
    assert errors["empty.png"]["status_code"] == 400
    assert "empty" in errors["empty.png"]["error"]
    assert all(set(item) == {"filename", "error", "status_code"} for item in errors.values())

    goods = [item for item in results if "error" not in item]
    expected = predictor.scores(
        np.stack(
            [
                image_to_array(data, predictor.bundle.img_size, *predictor.bundle.window)
                for data in good
            ]
        )
    ).probability
    for item, probability in zip(goods, expected, strict=True):
        assert item["prediction"] == pytest.approx(float(probability), abs=1e-5)
        assert item["threshold"] == service.threshold("sensitive")
        assert item["operating_point"] == "sensitive"
        assert item["model"] == {
            "name": service.bundle.card.name,
            "version": service.bundle.card.version,
        }
    assert body["model"] == {
        "name": service.bundle.card.name,
        "version": service.bundle.card.version,
    }
    assert body["latency_ms"] >= 0


def test_batch_matches_single_predictions(client: TestClient, ct_slice_paths: list[Path]) -> None:
    uploads = [(path.name, path.read_bytes()) for path in ct_slice_paths]
    batch = post_batch(client, uploads, operating_point="specific").json()["results"]
    for (name, data), item in zip(uploads, batch, strict=True):
        single = client.post(
            "/predict", params={"operating_point": "specific"}, files={"file": (name, data)}
        ).json()
        assert item["filename"] == name
        assert item["prediction"] == pytest.approx(single["prediction"], abs=1e-5)
        assert item["threshold"] == single["threshold"]
        assert item["operating_point"] == "specific"


def test_all_files_broken_is_still_200(client: TestClient) -> None:
    response = post_batch(client, [("a.txt", b"text"), ("b.png", b"")])
    assert response.status_code == 200
    assert [item["status_code"] for item in response.json()["results"]] == [415, 400]


def test_too_many_files_is_413(make_client: Any, images: Any) -> None:
    client = make_client(max_batch_files=2)
    data = images.png_bytes(32, 32)
    assert post_batch(client, [("a.png", data)] * 2).status_code == 200
    response = post_batch(client, [("a.png", data)] * 3)
    assert response.status_code == 413
    assert "at most 2 files" in response.json()["detail"]


def test_oversized_file_in_batch_is_an_error_entry(make_client: Any, images: Any) -> None:
    client = make_client(max_upload_mb=0.05, max_batch_mb=1.0)  # 51 kB per file
    big = _noise_bmp(300, 300)  # 90 kB of incompressible pixels
    assert len(big) > 0.05 * 1024 * 1024
    response = post_batch(client, [("small.png", images.png_bytes(32, 32)), ("big.bmp", big)])
    assert response.status_code == 200, response.text
    small, too_big = response.json()["results"]
    assert "prediction" in small
    assert too_big["status_code"] == 413
    assert "larger than the limit" in too_big["error"]


def _noise_bmp(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (height, width), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


def test_batch_body_over_limit_is_413(make_client: Any) -> None:
    client = make_client(max_batch_mb=0.1)
    response = post_batch(
        client, [("a.bmp", _noise_bmp(300, 300)), ("b.bmp", _noise_bmp(300, 300))]
    )
    assert response.status_code == 413
    assert response.json()["detail"] == "the batch upload is larger than the limit of 0.1 MiB"


@pytest.mark.parametrize(
    "request_kwargs",
    [{}, {"files": {"file": ("a.png", b"x")}}],
    ids=["no-body", "single-file-field-name"],
)
def test_batch_missing_files_field_is_422(
    client: TestClient, request_kwargs: dict[str, Any]
) -> None:
    assert client.post("/predict/batch", **request_kwargs).status_code == 422
