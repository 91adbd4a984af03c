"""GET /metrics: Prometheus request counts by status, latency histogram, predictions by result."""

from __future__ import annotations

from typing import Any

from PIL import Image
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(metrics: dict[Any, float], name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_latency_and_predictions(make_client: Any, images: Any) -> None:
    client = make_client()  # a fresh app: a fresh registry, counts start at zero
    good = images.png_bytes()
    for _ in range(2):
        assert client.post("/predict", files={"file": ("a.png", good)}).status_code == 200
    assert client.post("/predict", files={"file": ("a.txt", b"text")}).status_code == 415
    batch = client.post(
        "/predict/batch",
        params={"operating_point": "specific"},
        files=[("files", ("a.png", good)), ("files", ("b.png", b""))],
    )
    assert batch.status_code == 200
    single_result = client.post("/predict", files={"file": ("a.png", good)}).json()["result"]

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    metrics = samples(response.text)

    requests = "http_requests_total"
    assert value(metrics, requests, handler="/predict", method="POST", status="200") == 3
    assert value(metrics, requests, handler="/predict", method="POST", status="415") == 1
    assert value(metrics, requests, handler="/predict/batch", method="POST", status="200") == 1

    histogram = "http_request_duration_highr_seconds_count"
    assert value(metrics, histogram) >= 5
    assert (
        value(metrics, "http_request_duration_seconds_count", handler="/predict", method="POST")
        == 4
    )

    predictions = "triage_predictions_total"
    results = ("Potentially Fracture", "Normal", "Not a CT slice")
    sensitive = sum(
        value(metrics, predictions, result=result, operating_point="sensitive")
        for result in results
    )
    assert sensitive == 3
    assert value(metrics, predictions, result=single_result, operating_point="sensitive") == 3
    specific = sum(
        value(metrics, predictions, result=result, operating_point="specific") for result in results
    )
    assert specific == 1
    assert value(metrics, "triage_upload_errors_total", status="415") == 1
    assert value(metrics, "triage_upload_errors_total", status="400") == 1
    assert value(metrics, "triage_model_ready") == 1


def test_main_app_exposes_metrics(client: Any) -> None:
    client.get("/health")
    text = client.get("/metrics").text
    assert "http_requests_total" in text
    assert "triage_predictions_total" in text or "# HELP triage_predictions_total" in text


def test_out_of_distribution_results_are_counted(make_client: Any, images: Any) -> None:
    """A photo is refused as `Not a CT slice`; the counter carries that label value."""
    from skimage import data as skimage_data

    client = make_client()
    photo = images.encode(Image.fromarray(skimage_data.coffee()), "JPEG")
    body = client.post("/predict", files={"file": ("coffee.jpg", photo)}).json()
    assert body["result"] == "Not a CT slice"
    metrics = samples(client.get("/metrics").text)
    refused = {"result": "Not a CT slice", "operating_point": "sensitive"}
    assert value(metrics, "triage_predictions_total", **refused) == 1


def test_ct_outside_the_models_range_is_answered_and_counted(make_client: Any) -> None:
    """A CT DICOM of another region (pydicom's CT_small): "CT outside the model's range"
    with the reason `region` in the response, and its own label value in the counter."""
    from pathlib import Path

    from pydicom.data import get_testdata_file

    client = make_client()
    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    body = client.post("/predict", files={"file": ("ct_small.dcm", data)}).json()
    assert (body["result"], body["outside_reason"]) == ("CT outside the model's range", "region")
    assert body["in_distribution"] is False
    metrics = samples(client.get("/metrics").text)
    outside = {"result": "CT outside the model's range", "operating_point": "sensitive"}
    assert value(metrics, "triage_predictions_total", **outside) == 1
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert (
        "CT outside the model's range"
        in schema["PredictionResponse"]["properties"]["result"]["enum"]
    )
    assert schema["OutsideReason"]["enum"] == ["window", "region"]
