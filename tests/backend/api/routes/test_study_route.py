"""POST /predict/study over the real model: ordering, series checks, zips and their limits.

Series are built from real shared CT slices written as DICOM with positions (the same
recipe as tests/ml_model/test_study.py); where the shared data set is absent the same
tests run on synthetic slices (which the CT gate refuses, so the call is
`Not a CT slice` there).
"""

from __future__ import annotations

import base64
import io
import random
import stat
import struct
import zipfile
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
    RESULT_POSITIVE,
    SHARED_DATA_DIR,
)
from ml_model.imaging.transforms import decode_image, image_to_array
from ml_model.inference.core import InferenceCore
from ml_model.inference.study import SliceFile
from tests.conftest import gray_to_export_window_dicom, make_dicom, synthetic_slice

SERIES_UID = "1.2.826.0.1.3680043.2.1125.1"
REAL = (SHARED_DATA_DIR / "train" / "normal").is_dir()
Upload = tuple[str, bytes]


@pytest.fixture(scope="module")
def grays() -> list[np.ndarray]:
    """Ten normal slices with two fracture slices in the middle (real where available)."""
    if REAL:
        train = SHARED_DATA_DIR / "train"
        normals = sorted((train / "normal").glob("* ([0-9]*).png"))[:10]
        fractures = sorted((train / "fracture").glob("* ([0-9]*).png"))[:2]
        paths = normals[:5] + fractures + normals[5:]
        return [decode_image(path.read_bytes(), *EXPORT_WINDOW) for path in paths]
    return [synthetic_slice(int(i in (5, 6)), seed=i, size=128) for i in range(12)]


def dicom_series(grays: list[np.ndarray], series_uid: str = SERIES_UID) -> list[Upload]:
    """Slice i at z = -3 i mm (head first), named by index."""
    return [
        (
            f"IM{index:04d}.dcm",
            gray_to_export_window_dicom(
                gray, z=-3.0 * index, instance=index + 1, series_uid=series_uid
            ),
        )
        for index, gray in enumerate(grays)
    ]


@pytest.fixture(scope="module")
def series(grays: list[np.ndarray]) -> list[Upload]:
    return dicom_series(grays)


def shuffled(items: list[Upload], seed: int) -> list[Upload]:
    copy = list(items)
    random.Random(seed).shuffle(copy)
    return copy


def post_study(client: TestClient, uploads: list[Upload], **params: Any) -> Any:
    return client.post(
        "/predict/study", params=params, files=[("files", upload) for upload in uploads]
    )


def make_zip(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


def check_study(body: dict[str, Any], service: Any, expected_names: list[str]) -> None:
    assert set(body) == {
        "result",
        "prediction",
        "threshold",
        "operating_point",
        "aggregation",
        "slice_count",
        "slices",
        "top_slices",
        "errors",
        "position_unit",
        "warnings",
        "vertebrae",
        "model",
        "latency_ms",
    }
    assert body["vertebrae"] is None  # a slice bundle: no study head, no C1-C7
    assert body["position_unit"] == "mm"  # DICOM with ImagePositionPatient
    assert body["warnings"] == []
    assert [item["name"] for item in body["slices"]] == expected_names
    assert body["slice_count"] == len(expected_names)
    assert body["aggregation"] == service.bundle.card.study.aggregation
    assert body["threshold"] == service.study_threshold(
        body["slice_count"], body["operating_point"]
    )
    assert body["model"] == {
        "name": service.bundle.card.name,
        "version": service.bundle.card.version,
    }
    positions = [item["position"] for item in body["slices"]]
    assert positions == sorted(positions, reverse=True)  # head (larger z) first
    inside = [item for item in body["slices"] if item["in_distribution"]]
    top_k = service.bundle.card.study.top_k
    assert len(body["top_slices"]) == min(top_k, len(inside))
    for top in body["top_slices"]:
        assert set(top) == {"index", "name", "position", "prediction"}
        assert body["slices"][top["index"]]["name"] == top["name"]
        assert body["slices"][top["index"]]["prediction"] == top["prediction"]
    if inside:
        best = sorted((item["prediction"] for item in inside), reverse=True)[:top_k]
        assert body["prediction"] == pytest.approx(float(np.mean(best)))
        positive = body["prediction"] >= body["threshold"]
        assert body["result"] == (RESULT_POSITIVE if positive else RESULT_NEGATIVE)
    else:
        assert body["result"] == RESULT_OUT_OF_DISTRIBUTION


# --- series ---------------------------------------------------------------------------


def test_study_matches_ml_model_study(
    client: TestClient, service: Any, predictor: InferenceCore, series: list[Upload]
) -> None:
    response = post_study(client, shuffled(series, 1))
    assert response.status_code == 200, response.text
    body = response.json()
    check_study(body, service, [name for name, _ in series])
    assert body["errors"] == []
    assert body["operating_point"] == "sensitive"
    # The same numbers as the library's own study path on the same files.
    direct = predictor.study([SliceFile(name, data) for name, data in series])
    assert body["prediction"] == pytest.approx(direct.probability, abs=1e-5)
    for item, probability in zip(body["slices"], direct.probabilities, strict=True):
        assert item["prediction"] == pytest.approx(float(probability), abs=1e-5)
    for item, (_, data) in zip(body["slices"], series, strict=True):
        single = predictor.scores(
            image_to_array(data, predictor.bundle.img_size, *predictor.bundle.window)
        ).probability[0]
        assert item["prediction"] == pytest.approx(float(single), abs=1e-5)
    if REAL:
        assert all(item["in_distribution"] for item in body["slices"])
        assert body["result"] == RESULT_POSITIVE
        assert {top["index"] for top in body["top_slices"]} & {5, 6}  # a fracture slice


def test_upload_order_does_not_matter(client: TestClient, series: list[Upload]) -> None:
    answers = [post_study(client, shuffled(series, seed)).json() for seed in (2, 3)]
    answers.append(post_study(client, list(reversed(series))).json())
    first = answers[0]
    for other in answers[1:]:
        assert other["slices"] == first["slices"]
        assert other["prediction"] == first["prediction"]
        assert other["top_slices"] == first["top_slices"]
        assert other["result"] == first["result"]


def test_normal_series_is_normal(client: TestClient, grays: list[np.ndarray]) -> None:
    normals = grays[:5] + grays[7:]
    body = post_study(client, dicom_series(normals)).json()
    expected = RESULT_NEGATIVE if REAL else RESULT_OUT_OF_DISTRIBUTION
    assert body["result"] == expected


def test_operating_point_picks_the_study_threshold(
    client: TestClient, service: Any, series: list[Upload]
) -> None:
    body = post_study(client, series, operating_point="specific").json()
    assert body["operating_point"] == "specific"
    assert body["threshold"] == service.study_threshold(body["slice_count"], "specific")


def test_png_series_ordered_by_slice_number(client: TestClient, grays: list[np.ndarray]) -> None:
    def png(gray: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(gray).save(buffer, "PNG")
        return buffer.getvalue()

    uploads = [(f"CSFDV1B99 ({index + 1}).png", png(gray)) for index, gray in enumerate(grays)]
    body = post_study(client, shuffled(uploads, 4)).json()
    assert [item["position"] for item in body["slices"]] == [float(i + 1) for i in range(12)]
    assert body["position_unit"] == "index"


def test_mixed_series_refused(client: TestClient, grays: list[np.ndarray]) -> None:
    uploads = dicom_series(grays[:4]) + dicom_series(grays[4:6], series_uid="1.2.3.999")
    response = post_study(client, shuffled(uploads, 0))
    assert response.status_code == 400
    assert "2 different series" in response.json()["detail"]


def test_mixed_dicom_and_png_refused(client: TestClient, series: list[Upload]) -> None:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(0, 0)).save(buffer, "PNG")
    response = post_study(client, [*series[:3], ("s (1).png", buffer.getvalue())])
    assert response.status_code == 400
    assert "not a mix" in response.json()["detail"]


def test_undecodable_files_are_listed_not_fatal(client: TestClient, series: list[Upload]) -> None:
    no_pixels = make_dicom(
        np.zeros((4, 4), np.uint16), z=-100.0, instance=99, series_uid=SERIES_UID, with_pixels=False
    )
    uploads = [*series, ("broken.dcm", no_pixels), ("notes.txt", b"hello"), ("empty.dcm", b"")]
    response = post_study(client, uploads)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["slice_count"] == len(series)
    errors = {item["name"]: item["error"] for item in body["errors"]}
    assert set(errors) == {"broken.dcm", "notes.txt", "empty.dcm"}
    assert "no pixel data" in errors["broken.dcm"]
    assert "not a recognised image" in errors["notes.txt"]
    assert "empty" in errors["empty.dcm"]


def test_nothing_decodable_is_400(client: TestClient) -> None:
    response = post_study(client, [("a.txt", b"text"), ("b.txt", b"more text")])
    assert response.status_code == 400
    assert "no slices" in response.json()["detail"]


def test_explain_adds_heatmaps_to_top_slices_only(
    client: TestClient, series: list[Upload], grays: list[np.ndarray]
) -> None:
    body = post_study(client, series, explain="true").json()
    assert body["top_slices"] or not REAL
    for top in body["top_slices"]:
        png = base64.b64decode(top["heatmap_png_base64"], validate=True)
        image = Image.open(io.BytesIO(png))
        assert image.size == grays[top["index"]].shape[::-1]
    assert all("heatmap_png_base64" not in item for item in body["slices"])


def test_photos_as_a_study_are_not_ct(client: TestClient, images: Any) -> None:
    from skimage import data as skimage_data

    names = ("astronaut", "coffee", "chelsea")
    uploads = [
        (f"holiday ({i}).jpg", images.encode(Image.fromarray(getattr(skimage_data, n)()), "JPEG"))
        for i, n in enumerate(names, start=1)
    ]
    body = post_study(client, uploads).json()
    assert body["result"] == RESULT_OUT_OF_DISTRIBUTION
    assert body["top_slices"] == []
    assert body["prediction"] == 0.0
    assert not any(item["in_distribution"] for item in body["slices"])


def test_ct_outside_the_models_range_as_a_study(client: TestClient) -> None:
    """A series the model cannot judge but that is CT (pydicom's CT_small, another region):
    the study and its slice say "CT outside the model's range" with the reason, no slice is
    scored into the study (issue 26)."""
    from pydicom.data import get_testdata_file

    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    body = post_study(client, [("ct_small.dcm", data)]).json()
    assert (body["result"], body["outside_reason"]) == ("CT outside the model's range", "region")
    assert body["top_slices"] == [] and body["prediction"] == 0.0
    (row,) = body["slices"]
    assert row["in_distribution"] is False and row["outside_reason"] == "region"


# --- zips --------------------------------------------------------------------------------


def test_zip_of_a_series_equals_the_files(client: TestClient, series: list[Upload]) -> None:
    members = [(f"patient/study/series 1/{name}", data) for name, data in shuffled(series, 5)]
    members += [
        ("__MACOSX/patient/._IM0001.dcm", b"resource fork"),
        ("patient/.DS_Store", b"finder"),
        ("patient/DICOMDIR", b"index"),
        ("patient/README.txt", b"exported by a PACS"),
    ]
    data = make_zip(members)
    response = client.post("/predict/study", files=[("files", ("study.zip", data))])
    assert response.status_code == 200, response.text
    body = response.json()
    plain = post_study(client, series).json()
    assert body["slices"] == plain["slices"]
    assert body["prediction"] == plain["prediction"]
    assert [item["name"] for item in body["errors"]] == ["README.txt"]


def test_zip_detected_by_content_not_name(client: TestClient, series: list[Upload]) -> None:
    data = make_zip(series[:3], zipfile.ZIP_STORED)
    response = client.post("/predict/study", files=[("files", ("upload.bin", data))])
    assert response.status_code == 200, response.text
    assert response.json()["slice_count"] == 3


def test_same_base_name_in_two_folders(client: TestClient, series: list[Upload]) -> None:
    (name_a, a), (_, b) = series[0], series[1]
    body = client.post(
        "/predict/study",
        files=[("files", ("s.zip", make_zip([(f"x/{name_a}", a), (f"y/{name_a}", b)])))],
    ).json()
    assert sorted(item["name"] for item in body["slices"]) == [f"x/{name_a}", f"y/{name_a}"]


@pytest.mark.parametrize(
    "name",
    [
        "../evil.dcm",
        "series/../../evil.dcm",
        "/etc/evil.dcm",
        "C:/Windows/evil.dcm",
        "C:evil.dcm",
        "..\\..\\evil.dcm",
        "\\\\server\\share\\evil.dcm",
    ],
)
def test_zip_path_traversal_refused(client: TestClient, series: list[Upload], name: str) -> None:
    data = make_zip([*series[:2], (name, series[2][1])])
    response = client.post("/predict/study", files=[("files", ("s.zip", data))])
    assert response.status_code == 400, response.text
    assert "refused" in response.json()["detail"]


def test_zip_symlink_refused(client: TestClient, series: list[Upload]) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in series[:2]:
            archive.writestr(name, data)
        link = zipfile.ZipInfo("IM9999.dcm")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    response = client.post("/predict/study", files=[("files", ("s.zip", buffer.getvalue()))])
    assert response.status_code == 400
    assert "symlink" in response.json()["detail"]


def test_zip_with_too_many_members_refused(make_client: Any, series: list[Upload]) -> None:
    client = make_client(max_zip_members=5)
    members = [*series[:4], ("folder/", b""), ("__MACOSX/x", b"x")]  # 6 entries
    response = client.post("/predict/study", files=[("files", ("s.zip", make_zip(members)))])
    assert response.status_code == 413
    assert "at most 5" in response.json()["detail"]
    ok = client.post("/predict/study", files=[("files", ("s.zip", make_zip(series[:5])))])
    assert ok.status_code == 200, ok.text


def test_zip_too_large_uncompressed_refused(make_client: Any, series: list[Upload]) -> None:
    client = make_client(max_zip_uncompressed_mb=0.1)
    total = sum(len(data) for _, data in series)
    assert total > 0.1 * 1024 * 1024
    response = client.post("/predict/study", files=[("files", ("s.zip", make_zip(series)))])
    assert response.status_code == 413
    assert "unpacks to" in response.json()["detail"]


def test_zip_bomb_ratio_refused(client: TestClient, series: list[Upload]) -> None:
    bomb = make_zip([*series[:2], ("IM9999.dcm", b"\0" * (20 * 1024 * 1024))])
    assert len(bomb) < 2 * 1024 * 1024  # 20 MiB of zeros squeeze to a few kB
    response = client.post("/predict/study", files=[("files", ("s.zip", bomb))])
    assert response.status_code == 413
    assert "compression ratio" in response.json()["detail"]


def _understate_sizes(data: bytes, member: str, fake_size: int) -> bytes:
    """Rewrite a member's declared uncompressed size (local and central headers)."""
    raw = bytearray(data)
    encoded = member.encode()
    local = raw.find(b"PK\x03\x04")
    while local != -1:
        name_len = struct.unpack_from("<H", raw, local + 26)[0]
        if raw[local + 30 : local + 30 + name_len] == encoded:
            struct.pack_into("<I", raw, local + 22, fake_size)
        local = raw.find(b"PK\x03\x04", local + 4)
    central = raw.find(b"PK\x01\x02")
    while central != -1:
        name_len = struct.unpack_from("<H", raw, central + 28)[0]
        if raw[central + 46 : central + 46 + name_len] == encoded:
            struct.pack_into("<I", raw, central + 24, fake_size)
        central = raw.find(b"PK\x01\x02", central + 4)
    return bytes(raw)


def test_zip_lying_about_sizes_is_not_trusted(client: TestClient, series: list[Upload]) -> None:
    """A member declaring 1 kB that inflates to 8 MiB: never read past 1 kB."""
    big = b"\0" * (8 * 1024 * 1024)
    data = _understate_sizes(make_zip([*series[:2], ("IM9999.dcm", big)]), "IM9999.dcm", 1024)
    response = client.post("/predict/study", files=[("files", ("s.zip", data))])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["slice_count"] == 2
    (error,) = body["errors"]
    assert error["name"] == "IM9999.dcm"


def test_corrupt_zip_is_400(client: TestClient) -> None:
    data = b"PK\x03\x04" + b"\0" * 100
    response = client.post("/predict/study", files=[("files", ("s.zip", data))])
    assert response.status_code == 400
    assert "zip" in response.json()["detail"]


def test_zip_among_files_refused(client: TestClient, series: list[Upload]) -> None:
    response = post_study(client, [*series[:2], ("more.zip", make_zip(series[2:4]))])
    assert response.status_code == 400
    assert "one zip" in response.json()["detail"]


# --- limits ------------------------------------------------------------------------------


def test_too_many_files_refused(make_client: Any, series: list[Upload]) -> None:
    client = make_client(max_study_files=3)
    assert post_study(client, series[:3]).status_code == 200
    response = post_study(client, series[:4])
    assert response.status_code == 413
    assert "at most 3 slices" in response.json()["detail"]
    zipped = client.post("/predict/study", files=[("files", ("s.zip", make_zip(series[:4])))])
    assert zipped.status_code == 413


def test_study_body_limit(make_client: Any, series: list[Upload]) -> None:
    client = make_client(max_study_mb=0.2)
    response = post_study(client, series)
    assert response.status_code == 413
    assert "study upload is larger than the limit of 0.2 MiB" in response.json()["detail"]


def test_oversized_slice_is_an_error_entry(
    make_client: Any, series: list[Upload], grays: list[np.ndarray]
) -> None:
    limit_mb = (max(len(data) for _, data in series[:3]) + 10_000) / 2**20
    client = make_client(max_upload_mb=limit_mb)
    side = int(np.sqrt(limit_mb * 2**20 / 2)) + 64  # 16-bit pixels: over the limit
    large = np.asarray(Image.fromarray(grays[0]).resize((side, side)))
    big = gray_to_export_window_dicom(large, z=30.0, instance=100, series_uid=SERIES_UID)
    assert len(big) > limit_mb * 2**20
    response = post_study(client, [*series[:3], ("big.dcm", big)])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["slice_count"] == 3
    assert [item["name"] for item in body["errors"]] == ["big.dcm"]
    assert "larger than the limit of" in body["errors"][0]["error"]


def test_study_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from backend.app.core.config import Settings

    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    defaults = Settings()
    assert defaults.max_study_files == 1000
    assert defaults.max_study_mb == 512
    monkeypatch.setenv("MAX_STUDY_FILES", "50")
    monkeypatch.setenv("MAX_STUDY_MB", "64")
    monkeypatch.setenv("MAX_ZIP_MEMBERS", "70")
    monkeypatch.setenv("MAX_ZIP_UNCOMPRESSED_MB", "128")
    settings = Settings()
    assert (settings.max_study_files, settings.max_study_bytes) == (50, 64 * 1024 * 1024)
    assert (settings.max_zip_members, settings.max_zip_uncompressed_bytes) == (70, 128 * 2**20)


def test_study_in_openapi(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/predict/study"]["post"]
    assert {"200", "400", "413", "422", "503"} <= set(operation["responses"])
    assert {p["name"] for p in operation["parameters"]} == {"operating_point", "explain", "save"}
    study = schema["components"]["schemas"]["StudyResponse"]
    assert study["examples"][0]["aggregation"] == "top2_mean"


# --- geometry: millimetres, warnings, enhanced multi-frame CT --------------------------


def test_study_reports_millimetres_and_geometry_warnings(
    client: TestClient, series: list[Upload]
) -> None:
    """Slices 3 mm apart with one left out and one sent twice: the answer says so."""
    uploads = [item for index, item in enumerate(series) if index != 4]
    uploads.append(("IM0002-copy.dcm", series[2][1]))
    body = post_study(client, shuffled(uploads, 2)).json()
    assert body["position_unit"] == "mm"
    positions = [item["position"] for item in body["slices"]]
    assert positions == sorted(positions, reverse=True)
    assert positions[:3] == [0.0, -3.0, -6.0]
    assert any(w.startswith("duplicate position -6 mm") for w in body["warnings"]), body
    assert any("gap of 6 mm" in w and "usual spacing is 3 mm" in w for w in body["warnings"])


def test_enhanced_multiframe_ct_study(client: TestClient) -> None:
    from pydicom.data import get_testdata_file

    data = Path(get_testdata_file("eCT_Supplemental.dcm")).read_bytes()  # type: ignore[arg-type]
    single = client.post("/predict", files={"file": ("enhanced.dcm", data)})
    assert single.status_code == 415
    assert "multi-frame DICOM (2 frames)" in single.json()["detail"]
    response = post_study(client, [("enhanced.dcm", data)], explain="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["position_unit"] == "mm" and body["slice_count"] == 2
    names = {item["name"] for item in body["slices"]}
    assert names == {"enhanced.dcm [frame 1/2]", "enhanced.dcm [frame 2/2]"}
    assert body["slices"][0]["position"] > body["slices"][1]["position"]


def test_study_of_bad_header_values_is_never_a_500(
    client: TestClient, series: list[Upload]
) -> None:
    from testing.dicom_writers import patch_element

    damaged = [
        (name, patch_element(data, "ImagePositionPatient", b"1.5") if index == 1 else data)
        for index, (name, data) in enumerate(series)
    ]
    body = post_study(client, damaged).json()
    assert body["position_unit"] == "index"  # ordered by InstanceNumber
    assert any("ImagePositionPatient (0020,0032) has 1 value" in w for w in body["warnings"])
