"""GET /model: the bundle's model card, unchanged."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from ml_model.bundle import CARD_FILE
from ml_model.config import DEFAULT_MODEL_DIR


def test_model_card_is_the_bundles(client: TestClient, service: Any) -> None:
    response = client.get("/model")
    assert response.status_code == 200
    card = json.loads((DEFAULT_MODEL_DIR / CARD_FILE).read_text())
    assert response.json() == card
    assert response.json() == service.bundle.card.model_dump(mode="json", exclude_unset=True)


def test_model_card_thresholds_are_the_ones_predict_uses(client: TestClient, images: Any) -> None:
    card = client.get("/model").json()
    for point in ("sensitive", "specific"):
        expected = card.get("operating_points", {}).get(point, {}).get("threshold", 0.5)
        predicted = client.post(
            "/predict",
            params={"operating_point": point},
            files={"file": ("a.png", images.png_bytes())},
        ).json()
        assert predicted["threshold"] == expected
