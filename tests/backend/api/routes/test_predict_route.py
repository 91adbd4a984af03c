"""POST /predict over the real model bundle: formats, DICOM windowing, Grad-CAM, errors."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_model.config import (
    EXPORT_WINDOW,
    RESULT_NEGATIVE,
    RESULT_OUT_OF_DISTRIBUTION,
    RESULT_OUTSIDE_RANGE,
    RESULT_POSITIVE,
)
from ml_model.imaging.transforms import image_to_array, resize, to_model_channels
from ml_model.imaging.window import hu_window
from ml_model.inference.core import InferenceCore
from testing.dicom_writers import scanner_ct_dicom
from tests.ml_model.test_dicom_corpus import CORPUS, corpus_path

RESULTS = {RESULT_POSITIVE, RESULT_NEGATIVE, RESULT_OUT_OF_DISTRIBUTION, RESULT_OUTSIDE_RANGE}


def post_image(client: TestClient, data: bytes, filename: str = "slice.png", **params: Any) -> Any:
    return client.post("/predict", params=params, files={"file": (filename, data)})


def expected_probability(predictor: InferenceCore, data: bytes) -> float:
    return float(
        predictor.scores(
            image_to_array(data, predictor.bundle.img_size, *predictor.bundle.window)[np.newaxis]
        ).probability[0]
    )


def expected_result(body: dict[str, Any]) -> str:
    """The triage rule: no fracture call out of distribution (CT outside the model's range
    when a reason is given, issue 26), else the threshold decides."""
    if body["in_distribution"] is False:
        return RESULT_OUTSIDE_RANGE if body.get("outside_reason") else RESULT_OUT_OF_DISTRIBUTION
    return RESULT_POSITIVE if body["prediction"] >= body["threshold"] else RESULT_NEGATIVE


def check_prediction(body: dict[str, Any], service: Any, operating_point: str) -> None:
    # `outside_reason` only with "CT outside the model's range" (issue 26).
    assert ("outside_reason" in body) == (body["result"] == RESULT_OUTSIDE_RANGE)
    assert set(body) - {"outside_reason"} == {
        "result",
        "prediction",
        "threshold",
        "operating_point",
        "in_distribution",
        "ct_gate_margin",
        "ood_distance",
        "model",
        "latency_ms",
    }
    assert 0.0 <= body["prediction"] <= 1.0
    assert body["operating_point"] == operating_point
    assert body["threshold"] == service.threshold(operating_point)
    assert isinstance(body["in_distribution"], bool)
    assert body["ct_gate_margin"] >= 0.0
    assert body["ood_distance"] == body["ct_gate_margin"]  # the deprecated alias
    assert body["result"] == expected_result(body)
    assert body["model"] == {
        "name": service.bundle.card.name,
        "version": service.bundle.card.version,
    }
    assert body["latency_ms"] >= 0.0


# --- real CT slice -------------------------------------------------------------------


def test_real_ct_slice_matches_predictor(
    client: TestClient, service: Any, predictor: InferenceCore, ct_slice_path: Path
) -> None:
    data = ct_slice_path.read_bytes()
    response = post_image(client, data, ct_slice_path.name)
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(body, service, "sensitive")
    assert body["prediction"] == pytest.approx(expected_probability(predictor, data), abs=1e-6)


@pytest.mark.parametrize("operating_point", ["sensitive", "specific"])
def test_operating_points_use_card_thresholds(
    client: TestClient, service: Any, images: Any, operating_point: str
) -> None:
    response = post_image(client, images.png_bytes(), operating_point=operating_point)
    assert response.status_code == 200, response.text
    check_prediction(response.json(), service, operating_point)


def test_default_operating_point_is_sensitive(client: TestClient, images: Any) -> None:
    assert post_image(client, images.png_bytes()).json()["operating_point"] == "sensitive"


def test_same_image_same_probability_at_both_operating_points(
    client: TestClient, images: Any
) -> None:
    data = images.png_bytes(seed=3)
    sensitive = post_image(client, data, operating_point="sensitive").json()
    specific = post_image(client, data, operating_point="specific").json()
    assert sensitive["prediction"] == specific["prediction"]


def test_threshold_setting_overrides_the_default_operating_point(
    make_client: Any, service: Any, images: Any
) -> None:
    client = make_client(threshold=0.99)
    data = images.png_bytes()
    sensitive = post_image(client, data).json()
    assert sensitive["threshold"] == 0.99
    assert sensitive["result"] == expected_result(sensitive)
    specific = post_image(client, data, operating_point="specific").json()
    assert specific["threshold"] == service.threshold("specific")


# --- every accepted format and mode ----------------------------------------------------


def _image(images: Any, mode: str, width: int = 160, height: int = 120) -> Image.Image:
    gray = images.synthetic_slice(width, height)
    if mode == "L":
        return Image.fromarray(gray)
    if mode == "I;16":
        return Image.fromarray(gray.astype(np.uint16) * 257)
    if mode == "P":
        return Image.fromarray(gray).convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
    if mode == "LA":
        return Image.fromarray(gray).convert("LA")
    if mode == "RGBA":
        rgba = Image.fromarray(gray).convert("RGBA")
        rgba.putalpha(Image.fromarray(np.where(gray > 50, 255, 128).astype(np.uint8)))
        return rgba
    return Image.fromarray(gray).convert(mode)


FORMATS = [
    # (id, Pillow format, mode, save options)
    ("png-gray8", "PNG", "L", {}),
    ("png-gray16", "PNG", "I;16", {}),
    ("png-rgb", "PNG", "RGB", {}),
    ("png-rgba", "PNG", "RGBA", {}),
    ("png-gray-alpha", "PNG", "LA", {}),
    ("png-palette", "PNG", "P", {}),
    ("jpeg-gray", "JPEG", "L", {"quality": 95}),
    ("jpeg-rgb", "JPEG", "RGB", {"quality": 95}),
    ("bmp-gray", "BMP", "L", {}),
    ("bmp-rgb", "BMP", "RGB", {}),
    ("bmp-palette", "BMP", "P", {}),
    ("tiff-gray8", "TIFF", "L", {}),
    ("tiff-gray16", "TIFF", "I;16", {}),
    ("tiff-rgb", "TIFF", "RGB", {}),
    ("tiff-rgba-deflate", "TIFF", "RGBA", {"compression": "tiff_adobe_deflate"}),
]


@pytest.mark.parametrize(
    ("fmt", "mode", "options"), [f[1:] for f in FORMATS], ids=[f[0] for f in FORMATS]
)
def test_formats_match_predictor(
    client: TestClient,
    service: Any,
    predictor: InferenceCore,
    images: Any,
    fmt: str,
    mode: str,
    options: dict[str, Any],
) -> None:
    data = images.encode(_image(images, mode), fmt, **options)
    response = post_image(client, data, f"slice.{fmt.lower()}")
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction(body, service, "sensitive")
    assert body["prediction"] == pytest.approx(expected_probability(predictor, data), abs=1e-6)


def test_content_type_and_extension_are_not_trusted(client: TestClient, images: Any) -> None:
    """The bytes decide the format, not the client's name or content type."""
    data = images.encode(_image(images, "RGB"), "JPEG")
    named = client.post("/predict", files={"file": ("scan.dcm", data, "application/dicom")})
    plain = post_image(client, data, "slice.jpg")
    assert named.status_code == 200
    assert named.json()["prediction"] == plain.json()["prediction"]


# --- DICOM -------------------------------------------------------------------------------

# HU values the bone window (level 400, width 1800: -500..1300 HU) maps to known bytes.
# Through the export window (level -70, width 380 HU): the window the training PNGs use.
HU_TO_BYTE = [(-1000, 0), (-260, 0), (-70, 128), (120, 255), (2000, 255), (0, 174)]


def _hu_phantom(size: int) -> np.ndarray:
    """Vertical bands of the HU values above, each ``size // 6`` columns wide."""
    hu = np.zeros((size, size), dtype=np.float64)
    band = size // len(HU_TO_BYTE)
    for i, (value, _) in enumerate(HU_TO_BYTE):
        hu[:, i * band : (i + 1) * band] = value
    hu[:, len(HU_TO_BYTE) * band :] = HU_TO_BYTE[-1][0]
    return hu


class InputSpy:
    """Records what reaches the real model; the real model still answers."""

    def __init__(self, service: Any) -> None:
        self.real_run = service.forward
        self.inputs: list[np.ndarray] = []

    def __call__(self, images: np.ndarray) -> Any:
        self.inputs.append(np.array(images))
        return self.real_run(images)


def test_dicom_round_trip_export_window(
    client: TestClient, service: Any, predictor: InferenceCore, images: Any, monkeypatch: Any
) -> None:
    size = service.bundle.img_size  # model size: no resize, so every pixel is checkable
    hu = _hu_phantom(size)
    data = images.dicom_bytes(hu, slope=2.0, intercept=-1024.0)
    spy = InputSpy(service)
    monkeypatch.setattr(service, "forward", spy)

    response = post_image(client, data, "slice.dcm")

    assert response.status_code == 200, response.text
    (model_input,) = spy.inputs
    assert model_input.shape == (1, size, size, 3)
    assert model_input.dtype == np.uint8
    band = size // len(HU_TO_BYTE)
    for i, (value, byte) in enumerate(HU_TO_BYTE):
        assert np.all(model_input[0, :, i * band : (i + 1) * band] == byte), (value, byte)
    np.testing.assert_array_equal(model_input[0], to_model_channels(hu_window(hu, -70, 380)))
    expected = predictor.scores(
        to_model_channels(hu_window(hu, *EXPORT_WINDOW))[np.newaxis]
    ).probability[0]
    assert response.json()["prediction"] == pytest.approx(float(expected), abs=1e-6)


def test_dicom_window_comes_from_settings(
    make_client: Any, service: Any, images: Any, monkeypatch: Any
) -> None:
    hu = _hu_phantom(96)  # not the model size: windowed, then resized like a PNG
    client = make_client(window_level=40.0, window_width=400.0)  # a soft-tissue window
    core = client.app.state.inference  # type: ignore[attr-defined]
    spy = InputSpy(core)
    monkeypatch.setattr(core, "forward", spy)

    response = post_image(client, images.dicom_bytes(hu), "slice.dcm")

    assert response.status_code == 200, response.text
    expected = to_model_channels(resize(hu_window(hu, 40.0, 400.0), service.bundle.img_size))
    np.testing.assert_array_equal(spy.inputs[0][0], expected)


def test_dicom_heatmap_has_dicom_size(client: TestClient, images: Any) -> None:
    hu = _hu_phantom(96)[:, :80]
    response = post_image(client, images.dicom_bytes(hu), "slice.dcm", explain="true")
    assert response.status_code == 200, response.text
    heatmap = images.decode_png(base64.b64decode(response.json()["heatmap_png_base64"]))
    assert heatmap.size == (80, 96)


# --- DICOM preview, header facts, the real corpus ---------------------------------------

NECK = np.full((600, 700), -1000.0)  # larger than the preview's 512: it is scaled down
NECK[100:500, 100:600] = -100.0  # fat
NECK[150:450, 200:500] = 45.0  # muscle
NECK[250:350, 300:400] = 1100.0  # bone, far above the model's window


def preview_of(body: dict[str, Any]) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(body["preview_png_base64"])))
    assert image.format == "PNG" and image.mode == "L"
    return np.asarray(image)


def test_dicom_answer_has_a_preview_and_header_facts(
    client: TestClient, service: Any, predictor: InferenceCore
) -> None:
    data = scanner_ct_dicom(NECK, storage="uint16", position=(0.0, 0.0, -31.25),
                            transfer_syntax="1.2.840.10008.1.2.4.90", identifiers=True)  # fmt: skip
    response = post_image(client, data, "slice.dcm")
    assert response.status_code == 200, response.text
    body = response.json()
    check_prediction({k: v for k, v in body.items() if k not in ("preview_png_base64", "dicom")},
                     service, "sensitive")  # fmt: skip
    assert body["prediction"] == pytest.approx(expected_probability(predictor, data), abs=1e-6)
    assert body["dicom"] == {
        "modality": "CT",
        "series_description": "C-SPINE 1.0 BONE",
        "slice_location_mm": -31.25,
        "pixel_spacing_mm": [0.5, 0.5],
        "slice_thickness_mm": 1.0,
        "rows": 600,
        "columns": 700,
        "transfer_syntax": "JPEG 2000 Image Compression (Lossless Only)",
    }
    preview = preview_of(body)
    assert preview.shape == (439, 512)  # longest side 512, aspect kept
    # the default preview is what the model sees (the card's window), scaled
    model_view = np.asarray(Image.fromarray(service.decode(data)).resize((512, 439)))
    assert np.abs(preview.astype(int) - model_view).mean() < 2
    for secret in ("Doe", "PID-123456", "19700101", "20260102", "Example General", "ACC-98765"):
        assert secret not in response.text


def test_preview_windows(client: TestClient) -> None:
    data = scanner_ct_dicom(NECK)
    greys = {}
    for window in ("model", "bone", "soft_tissue"):
        body = post_image(client, data, "s.dcm", preview_window=window).json()
        preview = preview_of(body)  # 512 x 439: the phantom scaled by 512 / 700
        points = {"fat": (90, 90), "muscle": (200, 200), "bone": (220, 255)}
        greys[window] = {tissue: int(preview[y, x]) for tissue, (y, x) in points.items()}
    # the model's window: fat grey, muscle bright, bone saturated (the training PNGs' look)
    assert greys["model"] == {"fat": 107, "muscle": 205, "bone": 255}
    # bone window (400/1800): bone below saturation, soft tissue dark
    assert greys["bone"] == {"fat": 57, "muscle": 77, "bone": 227}
    # soft-tissue window (40/400)
    assert greys["soft_tissue"] == {"fat": 38, "muscle": 131, "bone": 255}
    bad = post_image(client, data, "s.dcm", preview_window="lung")
    assert bad.status_code == 422


def test_no_preview_for_raster_uploads(client: TestClient, images: Any) -> None:
    body = post_image(client, images.png_bytes(), "slice.png", preview_window="bone").json()
    assert "preview_png_base64" not in body and "dicom" not in body


@pytest.mark.parametrize("case", CORPUS, ids=[c.file for c in CORPUS])
def test_real_dicom_corpus_through_the_app(client: TestClient, case: Any) -> None:
    """Every file of pydicom's and pydicom-data's corpus: 200 with a preview, or its 4xx
    with the reason; never a 500."""
    response = post_image(client, corpus_path(case).read_bytes(), case.file)
    assert response.status_code == case.status, response.text
    body = response.json()
    if case.status == 200:
        assert body["result"] in RESULTS
        assert max(preview_of(body).shape) <= 512
        assert body["dicom"]["rows"], body["dicom"]
    else:
        assert case.expect in body["detail"]


# --- Grad-CAM ----------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(224, 224), (300, 200), (97, 131)])
def test_explain_returns_heatmap_png_of_input_size(
    client: TestClient, service: Any, images: Any, width: int, height: int
) -> None:
    response = post_image(client, images.png_bytes(width, height), explain="true")
    assert response.status_code == 200, response.text
    body = response.json()
    heatmap = images.decode_png(base64.b64decode(body["heatmap_png_base64"], validate=True))
    assert heatmap.size == (width, height)
    assert heatmap.mode == "RGB"
    check_prediction(
        {k: v for k, v in body.items() if k != "heatmap_png_base64"}, service, "sensitive"
    )


def test_real_slice_heatmap(client: TestClient, images: Any, ct_slice_path: Path) -> None:
    data = ct_slice_path.read_bytes()
    response = post_image(client, data, explain="true")
    assert response.status_code == 200, response.text
    heatmap = images.decode_png(base64.b64decode(response.json()["heatmap_png_base64"]))
    assert heatmap.size == Image.open(ct_slice_path).size


def test_explain_pixel_limit(make_client: Any, images: Any) -> None:
    client = make_client(max_explain_pixels=100 * 100)
    at_limit = post_image(client, images.png_bytes(100, 100), explain="true")
    assert at_limit.status_code == 200
    over = post_image(client, images.png_bytes(101, 100), explain="true")
    assert over.status_code == 413
    assert "explain=true" in over.json()["detail"]
    assert post_image(client, images.png_bytes(101, 100)).status_code == 200  # no heatmap


def test_no_heatmap_unless_asked(client: TestClient, images: Any) -> None:
    assert "heatmap_png_base64" not in post_image(client, images.png_bytes()).json()
    body = post_image(client, images.png_bytes(), explain="false").json()
    assert "heatmap_png_base64" not in body


# --- errors ------------------------------------------------------------------------------


def _truncated_png(images: Any) -> bytes:
    data = images.png_bytes(200, 200, seed=1)
    return data[: len(data) // 2]


def _dicom_without_pixels(images: Any) -> bytes:
    return images.dicom_bytes(np.full((4, 4), -1024.0), with_pixels=False)


def _dicom_bad_intercept(images: Any) -> bytes:
    """RescaleIntercept that is not a number (pydicom only notices on access)."""
    data = images.dicom_bytes(np.full((4, 4), 100.0), intercept=-1024.0)
    assert data.count(b"-1024") == 1
    return data.replace(b"-1024", b"-10x4")


def _dicom_bad_vr(images: Any) -> bytes:
    """Columns (0028,0011) with an unknown value representation."""
    data = images.dicom_bytes(np.full((4, 4), 100.0))
    header = b"\x28\x00\x11\x00US"
    assert data.count(header) == 1
    return data.replace(header, b"\x28\x00\x11\x00\x55\xca")


def _pdf(images: Any) -> bytes:
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"


def _ico(images: Any) -> bytes:
    return images.encode(Image.fromarray(images.synthetic_slice(32, 32)), "ICO")


ERROR_CASES = [
    # (id, build bytes, status, text the detail must contain)
    ("empty", lambda images: b"", 400, "empty"),
    ("truncated-png", _truncated_png, 400, "could not be decoded"),
    ("dicom-without-pixels", _dicom_without_pixels, 400, "no pixel data"),
    ("dicom-bad-intercept", _dicom_bad_intercept, 400, "DICOM file could not be read"),
    ("dicom-bad-vr", _dicom_bad_vr, 400, "DICOM file could not be read"),
    ("text", lambda images: b"patient notes, not an image\n" * 10, 415, "not a recognised image"),
    ("pdf", _pdf, 415, "not a recognised image"),
    ("icon-format", _ico, 415, "ICO"),
    ("pixel-bomb-42mp", lambda images: images.png_header_only(7_000, 6_000), 413, "pixels"),
    ("pixel-bomb-100mp", lambda images: images.png_header_only(10_000, 10_000), 413, "pixels"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("build", "status", "detail"), [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES]
)
def test_bad_files_get_clear_errors(
    client: TestClient, images: Any, build: Any, status: int, detail: str
) -> None:
    response = post_image(client, build(images), "bad.png")
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert detail in response.json()["detail"]


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({}, 422),  # no body at all
        ({"files": {"image": ("slice.png", b"x")}}, 422),  # wrong field name
        ({"data": {"file": "not a file"}}, 422),  # a plain form field, not a file
        ({"content": b"raw bytes", "headers": {"content-type": "image/png"}}, 422),
    ],
    ids=["no-body", "wrong-field", "text-field", "raw-body"],
)
def test_missing_file_field_is_422(
    client: TestClient, request_kwargs: dict[str, Any], status: int
) -> None:
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize("query", ["operating_point=balanced", "explain=maybe"])
def test_bad_query_is_422(client: TestClient, images: Any, query: str) -> None:
    response = client.post(f"/predict?{query}", files={"file": ("a.png", images.png_bytes())})
    assert response.status_code == 422, response.text
