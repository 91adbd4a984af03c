"""Hostile-input corpus against the production app: every bad upload gets its documented 4xx
with a clear ``detail``, never a 5xx, and the server keeps answering afterwards.

The corpus (``corpus.py``) is generated in memory; nothing binary is committed. Tests in
this module run in order: the last one checks the server after everything above.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from ml_model.config import EXPORT_WINDOW
from ml_model.imaging.transforms import decode_image
from tests.backend.hostile import corpus
from tests.backend.hostile.corpus import FILE_CASES, MIB, FileCase

BOUNDARY = "hostile-boundary-7d1f"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: tuple[str, bytes], boundary: str = BOUNDARY, end: bool = True) -> bytes:
    """A hand-made multipart body: each part is (Content-Disposition parameters, content)."""
    body = b"".join(
        f"--{boundary}\r\nContent-Disposition: form-data; {disposition}\r\n"
        "Content-Type: application/octet-stream\r\n\r\n".encode()
        + content
        + b"\r\n"
        for disposition, content in parts
    )
    return body + (f"--{boundary}--\r\n".encode() if end else b"")


def as_parsed(filename: str) -> str:
    """The name the multipart parser reports: it drops the directory of an absolute Windows
    path (``C:\\...``, ``\\\\server\\...``: old browsers sent those), keeps anything else,
    ``../`` included. The server never uses the name but to echo it back."""
    if filename[1:3] == ":\\" or filename.startswith("\\\\"):
        return filename.rsplit("\\", 1)[-1]
    return filename


def check_error(response: Any, status: int, phrase: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and phrase in detail, detail
    assert len(detail) < 400  # a sentence, not a dump


def check_prediction(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert isinstance(body["result"], str) and 0.0 <= body["prediction"] <= 1.0
    return body


# --- every file of the corpus through POST /predict ------------------------------------


def test_corpus_is_large_and_varied() -> None:
    assert len(FILE_CASES) >= 40
    assert len({case.id for case in FILE_CASES}) == len(FILE_CASES)
    assert {case.status for case in FILE_CASES} == {200, 400, 413, 415}
    assert sum(case.status != 200 for case in FILE_CASES) >= 40


@pytest.mark.parametrize("case", FILE_CASES, ids=[case.id for case in FILE_CASES])
def test_predict_answers_each_file_as_documented(client: TestClient, case: FileCase) -> None:
    response = client.post("/predict", files={"file": (case.filename, case.build())})
    if case.status == 200:
        check_prediction(response)
    else:
        assert case.detail is not None
        check_error(response, case.status, case.detail)


def test_batch_gives_each_file_its_own_entry(make_client: Any) -> None:
    """The whole corpus in one /predict/batch request: one entry per file, in order."""
    client = make_client(max_batch_files=len(FILE_CASES))
    files = [("files", (case.filename, case.build())) for case in FILE_CASES]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(FILE_CASES)
    for case, entry in zip(FILE_CASES, results, strict=True):
        assert entry["filename"] == as_parsed(case.filename), case.id
        if case.status == 200:
            assert "error" not in entry and 0.0 <= entry["prediction"] <= 1.0, case.id
        else:
            assert entry["status_code"] == case.status, (case.id, entry)
            assert case.detail is not None and case.detail in entry["error"], (case.id, entry)


# --- what the odd-but-valid files decode to ---------------------------------------------


def _first_frame(image_bytes: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(image_bytes)) as image:
        image.seek(0)
        return np.asarray(image.convert("L"))


@pytest.mark.parametrize("build", [corpus.animated_gif, corpus.apng, corpus.multipage_tiff])
def test_animated_and_multipage_files_use_the_first_frame(client: TestClient, build: Any) -> None:
    data = build()
    first = _first_frame(data)
    assert np.array_equal(decode_image(data, *EXPORT_WINDOW), first)
    with Image.open(io.BytesIO(data)) as image:  # the later frames really differ
        image.seek(1)
        assert not np.array_equal(np.asarray(image.convert("L")), first)
    alone = corpus.encode(Image.fromarray(first), "PNG")
    animated = check_prediction(client.post("/predict", files={"file": ("a", data)}))
    single = check_prediction(client.post("/predict", files={"file": ("b.png", alone)}))
    assert animated["prediction"] == pytest.approx(single["prediction"], abs=1e-6)


def test_exif_orientation_is_applied() -> None:
    data = corpus.exif_rotated_jpeg()
    with Image.open(io.BytesIO(data)) as stored:
        assert stored.size == (96, 80)
    assert decode_image(data, *EXPORT_WINDOW).shape == (96, 80)  # rows x columns: turned upright


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1, 1, (1, 1)), (900, 20, (900, 20)), (10_000, 10, (1024, 1)), (10, 10_000, (1, 1024))],
)
def test_extreme_shapes_get_a_heatmap_of_their_size_or_capped(
    client: TestClient, width: int, height: int, expected: tuple[int, int]
) -> None:
    """The heatmap is the image's size, or scaled down to HEATMAP_MAX_SIDE (1024) on its
    longest side, aspect ratio kept."""
    import base64

    data = corpus.encode(corpus.gray(width, height), "PNG")
    body = check_prediction(
        client.post("/predict", params={"explain": "true"}, files={"file": ("x.png", data)})
    )
    heatmap = Image.open(io.BytesIO(base64.b64decode(body["heatmap_png_base64"])))
    assert heatmap.size == expected


# --- hostile requests: multipart structure, fields, sizes ---------------------------------

REQUEST_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("two-files-in-file",
     {"files": [("file", ("a.png", corpus.png())), ("file", ("b.png", corpus.jpeg()))]},
     400, "2 parts named 'file' were sent; send exactly one file"),
    ("file-and-text-field-both-named-file",
     {"files": [("file", ("a.png", corpus.png()))], "data": {"file": "x"}},
     400, "2 parts named 'file' were sent"),
    ("wrong-boundary",
     {"content": multipart(('name="file"; filename="a.png"', corpus.png()), boundary="other"),
      "headers": {"content-type": MULTIPART}}, 400, "Invalid multipart data"),
    ("missing-boundary",
     {"content": multipart(('name="file"; filename="a.png"', corpus.png())),
      "headers": {"content-type": "multipart/form-data"}}, 400, "Missing boundary"),
    ("part-without-name",
     {"content": multipart(('filename="a.png"', corpus.png())),
      "headers": {"content-type": MULTIPART}}, 400, '"name" must be provided'),
    ("non-file-field-over-1-mib",
     {"files": [("file", ("a.png", corpus.png()))], "data": {"note": "x" * (MIB + 1)}},
     400, "Part exceeded maximum size"),
    ("over-1000-fields",
     {"files": [("file", ("a.png", corpus.png()))], "data": {f"f{i}": "x" for i in range(1001)}},
     400, "Too many fields"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "status", "phrase"),
    [case[1:] for case in REQUEST_CASES],
    ids=[case[0] for case in REQUEST_CASES],
)
def test_malformed_requests_get_a_clear_4xx(
    client: TestClient, kwargs: dict[str, Any], status: int, phrase: str
) -> None:
    check_error(client.post("/predict", **kwargs), status, phrase)


VALIDATION_CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("wrong-field-name", "/predict", {"files": {"image": ("a.png", corpus.png())}}, "file"),
    ("file-as-text-field", "/predict", {"data": {"file": "a.png"}}, "file"),
    ("no-body", "/predict", {}, "file"),
    ("json-body", "/predict", {"json": {"file": "iVBORw0KGgo="}}, "file"),
    ("unterminated-multipart", "/predict",
     {"content": multipart(('name="file"; filename="a.png"', corpus.png()), end=False),
      "headers": {"content-type": MULTIPART}}, "file"),
    ("rfc5987-filename-only", "/predict",
     {"content": multipart(("name=\"file\"; filename*=UTF-8''%E2%98%A0.png", corpus.png())),
      "headers": {"content-type": MULTIPART}}, "file"),
    ("bad-operating-point", "/predict?operating_point=reckless",
     {"files": {"file": ("a.png", corpus.png())}}, "operating_point"),
    ("bad-explain", "/predict?explain=perhaps", {"files": {"file": ("a.png", corpus.png())}},
     "explain"),
    ("batch-wrong-field-name", "/predict/batch", {"files": {"file": ("a.png", corpus.png())}},
     "files"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("url", "kwargs", "field"),
    [case[1:] for case in VALIDATION_CASES],
    ids=[case[0] for case in VALIDATION_CASES],
)
def test_missing_or_invalid_fields_are_422(
    client: TestClient, url: str, kwargs: dict[str, Any], field: str
) -> None:
    response = client.post(url, **kwargs)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert isinstance(errors, list) and errors
    assert any(field in error["loc"] for error in errors), errors


def test_quotes_and_separators_in_filenames(client: TestClient) -> None:
    name = 'a "quoted"; name=evil; ..\\..\\x.png'
    escaped = name.replace('"', "%22")  # how browsers escape quotes in multipart names
    body = multipart((f'name="file"; filename="{escaped}"', corpus.png()))
    check_prediction(client.post("/predict", content=body, headers={"content-type": MULTIPART}))
    batch = multipart((f'name="files"; filename="{escaped}"', b"not an image"))
    response = client.post("/predict/batch", content=batch, headers={"content-type": MULTIPART})
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["filename"] == escaped


def test_upload_over_the_limit_is_413_whether_declared_or_chunked(client: TestClient) -> None:
    limit_mb = client.app.state.settings.max_upload_mb  # type: ignore[attr-defined]
    size = int((limit_mb + 1) * MIB)
    declared = client.post("/predict", files={"file": ("big.png", b"\x89PNG" + b"\0" * size)})
    check_error(declared, 413, f"larger than the limit of {limit_mb:g} MiB")

    def chunks() -> Iterator[bytes]:
        yield multipart(('name="file"; filename="big.png"', b""), end=False)[:-2]
        for _ in range(size // (256 * 1024)):
            yield b"\0" * (256 * 1024)
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    chunked = client.post("/predict", content=chunks(), headers={"content-type": MULTIPART})
    check_error(chunked, 413, f"larger than the limit of {limit_mb:g} MiB")


def test_batch_file_count_limits(client: TestClient) -> None:
    most = client.app.state.settings.max_batch_files  # type: ignore[attr-defined]
    over = [("files", ("a.png", b"x"))] * (most + 1)
    check_error(client.post("/predict/batch", files=over), 413, f"at most {most} files")
    flood = [("files", ("a.png", b""))] * 1001  # Starlette's own cap on parts, before ours
    check_error(client.post("/predict/batch", files=flood), 400, "Too many files")


def test_wrong_methods_are_405(client: TestClient) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = client.request(method, "/predict")
        assert response.status_code == 405, (method, response.text)


# --- and after all of that -------------------------------------------------------------


def test_server_still_ready_and_predicting_after_the_corpus(client: TestClient) -> None:
    """Runs last in this module (pytest keeps definition order)."""
    assert client.get("/ready").status_code == 200
    assert client.get("/health").json() == {"status": "ok"}
    check_prediction(client.post("/predict", files={"file": ("ok.png", corpus.png())}))
    batch = client.post("/predict/batch", files=[("files", ("ok.png", corpus.png()))] * 2)
    assert batch.status_code == 200
    assert all("prediction" in entry for entry in batch.json()["results"])
    server_errors = re.findall(r'^http_requests_total\{.*status="5\d\d".*$', client.get(
        "/metrics").text, re.MULTILINE)  # fmt: skip
    assert server_errors == []  # over the whole session of the production app so far
