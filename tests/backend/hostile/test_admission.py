"""Admission control (issue 16) against the real app and the real model: the amplification
cases of ``amplification.py`` refused before they cost anything (413 with the reason) or
served within their budget, the process budget and the study cap answering 503 with
``Retry-After``, bounded metric labels, HEAD on the probes.

RSS and time per case are measured by the benchmark ``python -m tests.load.attack``.
"""

from __future__ import annotations

import base64
import hashlib
import io
import struct
import zipfile
import zlib
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from backend.app.core.admission import RequestLedger
from ml_model.imaging.formats import estimate_decode_cost
from tests.backend.hostile import amplification
from tests.backend.hostile.amplification import MIB, case
from tests.backend.hostile.corpus import encode


def post_case(client: TestClient, case_id: str) -> Any:
    item = case(case_id)
    return client.post(
        item.path, params=dict(item.params), files=[(item.field, (item.filename, item.build()))]
    )


def check_refused(response: Any, status: int, *phrases: str) -> str:
    assert response.status_code == status, response.text
    detail: str = response.json()["detail"]
    for phrase in phrases:
        assert phrase in detail, detail
    assert len(detail) < 400
    return detail


# --- each amplification case --------------------------------------------------------------


def test_a_zip_of_a_thousand_one_mib_members_is_refused_before_unpacking(
    client: TestClient,
) -> None:
    check_refused(post_case(client, "zip-1000-members-of-1-mib"), 413, "compression ratio")


def test_a_zip_under_the_ratio_limit_is_held_to_the_request_budget(make_client: Any) -> None:
    """Every member's declared size counts, even members too small for the ratio check."""
    client = make_client(max_request_memory_mb=16, memory_budget_mb=64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for index in range(40):  # 40 x 256 KiB stored: 10 MiB unpacked, ratio 1
            archive.writestr(f"s ({index}).png", b"\x89PNG\r\n\x1a\n" + bytes(256 * 1024 - 8))
    data = buffer.getvalue()
    response = client.post("/predict/study", files={"files": ("s.zip", data)})
    check_refused(response, 413, "unpacking the zip", "over the limit of 16 MiB per request")


@pytest.mark.parametrize(
    ("case_id", "phrase"),
    [
        ("float-tiff-40-mp", "6324x6324 TIFF"),
        ("rle-dicom-40-mp", "6324x6324 DICOM"),
    ],
)
def test_images_that_would_take_too_much_memory_are_refused_from_their_headers(
    client: TestClient, case_id: str, phrase: str
) -> None:
    detail = check_refused(post_case(client, case_id), 413, phrase, "MiB per request")
    assert "decoding" in detail


def test_a_png_of_a_million_empty_chunks_is_refused_before_pillow_walks_it(
    client: TestClient,
) -> None:
    check_refused(post_case(client, "png-1.7-m-empty-chunks"), 413, "16,384 PNG chunks")


def test_a_palette_png_near_the_pixel_limit_is_decoded_within_the_budget(
    client: TestClient,
) -> None:
    response = post_case(client, "palette-png-40-mp")
    assert response.status_code == 200, response.text
    assert client.app.state.budget.used == 0  # type: ignore[attr-defined]


def test_explain_on_a_large_image_returns_a_capped_heatmap(client: TestClient) -> None:
    response = post_case(client, "explain-2048-squared")
    assert response.status_code == 200, response.text
    heatmap = Image.open(io.BytesIO(base64.b64decode(response.json()["heatmap_png_base64"])))
    assert heatmap.size == (1024, 1024)
    assert len(response.content) < 4 * MIB  # was 16.6 MB


def test_heatmap_cap_is_a_setting(make_client: Any) -> None:
    client = make_client(heatmap_max_side=256)
    data = encode(Image.fromarray(np.zeros((300, 600), np.uint8)), "PNG")
    body = client.post("/predict", params={"explain": "true"}, files={"file": ("a.png", data)})
    heatmap = Image.open(io.BytesIO(base64.b64decode(body.json()["heatmap_png_base64"])))
    assert heatmap.size == (256, 128)


def test_a_big_stored_study_zip_is_refused_with_its_size(make_client: Any) -> None:
    """The 494 MiB case, scaled down: the zip's bytes plus its unpacked members are over the
    request's limit, so nothing is unpacked (the benchmark runs the full size)."""
    client = make_client(max_request_memory_mb=40, memory_budget_mb=200, max_study_mb=30)
    data = amplification.big_stored_study_zip(total_mib=24, member_kib=512)
    response = client.post("/predict/study", files={"files": ("s.zip", data)})
    check_refused(response, 413, "unpacking the zip (48 files, 24 MiB)", "24 MiB this request")


def test_a_deflated_dicom_bomb_is_sized_without_inflating_it(client: TestClient) -> None:
    """A few hundred KiB that pydicom would inflate to gigabytes before reading a header."""
    data = deflated_dicom_bomb(700)
    assert len(data) < MIB
    detail = check_refused(
        client.post("/predict", files={"file": ("x.dcm", data)}), 413, "deflated DICOM"
    )
    assert "MiB once inflated" in detail
    from testing.dicom_writers import ct_dicom_bytes

    good = ct_dicom_bytes(np.full((32, 32), 1100, np.uint16), 1.0, -1024.0, z=0.0, instance=1)
    files = [("files", ("a.dcm", data)), ("files", ("b.dcm", good))]
    study = client.post("/predict/study", files=files)
    assert study.status_code == 200, study.text  # the bomb is an error entry, never parsed
    (error,) = study.json()["errors"]
    assert error["name"] == "a.dcm" and "deflated DICOM" in error["error"]


def test_a_codestream_larger_than_its_dicom_header_is_sized_by_the_codestream() -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless

    from tests.backend.hostile.corpus import dicom

    side = 6000
    j2k = encode(Image.fromarray(np.zeros((side, side), np.uint8)), "JPEG2000", irreversible=False)
    data = dicom(
        TransferSyntaxUID=JPEG2000Lossless,
        Rows=16,
        Columns=16,
        BitsAllocated=8,
        BitsStored=8,
        HighBit=7,
        PixelData=encapsulate([j2k]),
    )
    cost = estimate_decode_cost(data)
    assert cost is not None and (cost.width, cost.height) == (side, side)


def deflated_dicom_bomb(mib: int) -> bytes:
    """A deflated CT DICOM with ``mib`` MiB of zeros in a private element."""
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from testing.dicom_writers import ct_dicom_bytes

    dataset = pydicom.dcmread(io.BytesIO(ct_dicom_bytes(np.zeros((16, 16), np.uint16))))
    dataset.add_new(0x00091010, "OB", bytes(mib * MIB))
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- structure bombs of other formats -------------------------------------------------------


def _jpeg() -> bytes:
    return encode(Image.fromarray(np.zeros((64, 64), np.uint8)), "JPEG")


def _gif() -> bytes:
    return encode(Image.fromarray(np.zeros((64, 64), np.uint8)), "GIF")


def _tiff_with_strips(strips: int) -> bytes:
    width, height = 64, 64
    entries = []
    offsets_at = 8 + 2 + 12 * 8 + 4
    counts_at = offsets_at + 4 * strips
    pixels_at = counts_at + 4 * strips
    for tag, kind, count, value in (
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 1, 8), (259, 3, 1, 1),
        (262, 3, 1, 1), (273, 4, strips, offsets_at), (278, 4, 1, 1), (279, 4, strips, counts_at),
    ):  # fmt: skip
        entries.append(struct.pack("<HHII", tag, kind, count, value))
    return (
        b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 8) + b"".join(entries)
        + struct.pack("<I", 0) + struct.pack(f"<{strips}I", *([pixels_at] * strips))
        + struct.pack(f"<{strips}I", *([1] * strips)) + bytes(width * height)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "build", "phrase"),
    [
        ("jpeg-markers", lambda: _jpeg()[:2] + b"\xff\xfe\x00\x02" * 2_000_000 + _jpeg()[2:],
         "JPEG markers"),
        ("jpeg-padding", lambda: _jpeg()[:2] + b"\x00" * 2_000_000 + _jpeg()[2:], "padding"),
        ("gif-blocks", lambda: _gif()[:_gif().index(b",", 13)] + b"\x21\xfe\x01A\x00" * 2_000_000
         + _gif()[_gif().index(b",", 13):], "GIF extension blocks"),
        ("tiff-strips", lambda: _tiff_with_strips(2_000_000), "numbers in TIFF tags"),
    ],
)  # fmt: skip
def test_structure_bombs_of_every_raster_format_are_refused_at_once(
    client: TestClient, name: str, build: Any, phrase: str
) -> None:
    """Each took Pillow seconds of CPU (a TIFF with 4 M strips: 23 s and 1 GB)."""
    check_refused(client.post("/predict", files={"file": (name, build())}), 413, phrase)


# --- the process budget and the study cap -----------------------------------------------------


def test_a_full_process_budget_answers_503_with_retry_after(make_client: Any, images: Any) -> None:
    client = make_client(memory_budget_mb=700)
    budget = client.app.state.budget
    hog = RequestLedger(budget, budget.capacity)
    hog.reserve(budget.capacity - 2 * MIB, "another request")
    try:
        response = client.post("/predict", files={"file": ("a.png", images.png_bytes(512, 512))})
        check_refused(response, 503, "the server is busy", "retry in a few seconds")
        assert response.headers["retry-after"] == "5"
        declared = client.post("/predict/batch", files=[("files", ("a", bytes(4 * MIB)))])
        assert declared.status_code == 503  # refused from its Content-Length, before reading
    finally:
        hog.release_all()
    assert client.post("/predict", files={"file": ("a.png", images.png_bytes())}).status_code == 200
    assert budget.used == 0


def test_the_study_cap_answers_503_with_retry_after(make_client: Any, images: Any) -> None:
    client = make_client(max_concurrent_studies=1)
    slots = client.app.state.study_slots
    study = [("files", ("s (1).png", images.png_bytes()))]
    assert slots.try_take()  # one study in flight
    try:
        response = client.post("/predict/study", files=study)
        check_refused(response, 503, "1 studies already")
        assert response.headers["retry-after"] == "5"
        single = client.post("/predict", files={"file": ("a.png", images.png_bytes())})
        assert single.status_code == 200  # slices are not studies
    finally:
        slots.give()
    ok = client.post("/predict/study", files=study)
    assert ok.status_code == 200, ok.text
    assert slots.busy == 0


def test_refusals_are_counted_by_a_fixed_set_of_reasons(make_client: Any) -> None:
    client = make_client(max_request_memory_mb=1, memory_budget_mb=64, max_batch_mb=10)
    data = encode(Image.fromarray(np.zeros((1000, 1000), np.uint8)), "PNG")  # ~8 MiB to decode
    # An image over the budget is an upload error (413), as a batch or a study lists it...
    check_refused(client.post("/predict", files={"file": ("a.png", data)}), 413, "decoding")
    # ...a body over it is an admission refusal.
    check_refused(client.post("/predict/batch", files=[("files", ("a", bytes(2 * MIB)))]), 413)
    text = client.get("/metrics").text
    assert 'triage_upload_errors_total{status="413"} 1.0' in text
    assert 'triage_admission_refusals_total{reason="request_memory"} 1.0' in text
    assert "triage_memory_in_flight_bytes 0.0" in text and "triage_studies_in_flight 0.0" in text


def test_a_request_over_its_own_limit_while_reading_is_413(make_client: Any) -> None:
    client = make_client(max_request_memory_mb=1, memory_budget_mb=64, max_batch_mb=10)
    response = client.post("/predict/batch", files=[("files", ("a", bytes(2 * MIB)))])
    check_refused(response, 413, "the upload needs about 2 MiB", "1 MiB per request")


# --- numbers in names, and bounded labels --------------------------------------------------------


def test_a_slice_number_of_thousands_of_digits_is_an_error_entry(
    client: TestClient, images: Any
) -> None:
    png = images.png_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("slice (" + "9" * 5000 + ").png", png)
        archive.writestr("slice (2).png", png)
        archive.writestr("slice (3).png", png)
    response = client.post("/predict/study", files={"files": ("s.zip", buffer.getvalue())})
    assert response.status_code == 200, response.text
    errors = response.json()["errors"]
    assert len(errors) == 1 and "5000-digit number" in errors[0]["error"]
    assert len(errors[0]["name"]) <= 200
    many = client.post(
        "/predict/study",
        files=[("files", ("a" + "1" * 400 + ".png", png)), ("files", ("b (2).png", png))],
    )
    assert many.status_code == 200, many.text


def test_a_content_length_that_is_not_a_number_is_not_a_500(client: TestClient) -> None:
    for value in ("9" * 5000, "-1", "1e9", "12 34"):
        response = client.post(
            "/predict", content=b"x", headers={"content-length": value, "content-type": "a/b"}
        )
        assert response.status_code == 400, (value, response.text)


def test_random_method_names_do_not_grow_the_metrics(make_client: Any) -> None:
    client = make_client()
    before = client.get("/metrics").text
    for index in range(200):
        method = "X" + hashlib.sha256(str(index).encode()).hexdigest()[:10].upper()
        assert client.request(method, "/predict").status_code == 405
    after = client.get("/metrics").text
    assert "XA" not in after and len(after.splitlines()) <= len(before.splitlines()) + 5


def test_head_on_the_probes(client: TestClient) -> None:
    health = client.head("/health")
    assert health.status_code == 200 and health.content == b""
    ready = client.head("/ready")
    assert ready.status_code == 200 and ready.content == b""


def test_a_stalled_body_is_answered_408(make_client: Any) -> None:
    """The app's own body deadline (the server's protocol closes the connection too)."""
    import asyncio

    app = make_client(body_timeout_s=0.2).app
    sent: list[Any] = []
    calls = 0

    async def receive() -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            return {"type": "http.request", "body": b"--b\r\n", "more_body": True}
        await asyncio.sleep(5)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/predict", "raw_path": b"/predict", "query_string": b"",
        "root_path": "", "client": ("127.0.0.1", 1), "server": ("testserver", 80),
        "headers": [(b"host", b"testserver"),
                    (b"content-type", b"multipart/form-data; boundary=b")],
    }  # fmt: skip
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert app.state.budget.used == 0


def test_rss_is_handed_back_after_a_busy_spell() -> None:
    from backend.app.core.admission import MemoryBudget

    budget = MemoryBudget(1024 * MIB)
    ledger = RequestLedger(budget, 1024 * MIB)
    ledger.reserve(100 * MIB, "a large upload")
    ledger.release_all()
    assert ledger.trim_due  # the middleware calls malloc_trim in a thread
    small = RequestLedger(budget, 1024 * MIB)
    small.reserve(MIB, "a slice")
    small.release_all()
    assert not small.trim_due  # 1 MiB since the last trim: not worth one yet


def test_zip_errors_of_every_kind_are_4xx(client: TestClient, images: Any) -> None:
    """Damaged members (bad CRC, bad LZMA data) are error entries, not 500s."""
    png = images.png_bytes()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("s (1).png", png, compress_type=zipfile.ZIP_LZMA)
        archive.writestr("s (2).png", png, compress_type=zipfile.ZIP_BZIP2)
        archive.writestr("s (3).png", png)
    data = bytearray(buffer.getvalue())
    for start in range(3):  # damage the compressed data of the first two members
        at = data.find(b"s (" + str(start + 1).encode() + b").png") + 20
        data[at : at + 16] = b"\x00" * 16
    response = client.post("/predict/study", files={"files": ("s.zip", bytes(data))})
    assert response.status_code in (200, 400), response.text


_EMPTY_ITEM = b"\xfe\xff\x00\xe0\x00\x00\x00\x00"  # an item tag, length 0


def _empty_items_sequence(count: int) -> bytes:
    """ReferencedImageSequence (0008,1140), explicit VR, of ``count`` empty items."""
    return b"\x08\x00\x40\x11SQ\x00\x00" + struct.pack("<I", 8 * count) + _EMPTY_ITEM * count


def _with_empty_items(count: int, deflated: bool = False) -> bytes:
    """A CT slice whose dataset also holds a sequence of ``count`` empty items (8 bytes each
    in the dataset, ~1.4 KB each once pydicom builds them), the dataset deflated (transfer
    syntax 1.2.840.10008.1.2.1.99: 2,000,000 items are then a file of 24 KiB) or not. Written
    by pydicom with one item, the others spliced in: the bytes pydicom writes for ``count``."""
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from testing.dicom_writers import ct_dicom_bytes

    good = ct_dicom_bytes(np.full((32, 32), 1100, np.uint16), 1.0, -1024.0, z=0.0, instance=1)
    dataset = pydicom.dcmread(io.BytesIO(good))
    dataset.ReferencedImageSequence = Sequence([Dataset()])
    if deflated:
        dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    data, one, many = buffer.getvalue(), _empty_items_sequence(1), _empty_items_sequence(count)
    if not deflated:
        return data.replace(one, many, 1)
    (meta_length,) = struct.unpack_from("<I", data, 140)  # FileMetaInformationGroupLength
    start = 144 + meta_length  # the dataset, after the file meta
    inflated = zlib.decompress(data[start:], -zlib.MAX_WBITS).replace(one, many, 1)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return data[:start] + deflater.compress(inflated) + deflater.flush()


@pytest.mark.parametrize("deflated", [False, True], ids=["explicit", "deflated"])
def test_a_sequence_of_many_empty_items_is_counted_before_it_is_read(
    client: TestClient, deflated: bool
) -> None:
    """A 15 MiB DICOM (under the upload limit) of 2,000,000 empty sequence items would build
    gigabytes in pydicom: the header walk counts them first and the file is refused (413)
    at once, alone or inside a study; a few thousand items are admitted, their cost counted.
    Deflated, the same 2,000,000 items are a 24 KiB file: they are counted as it inflates."""
    import time

    from ml_model.imaging.budget import BYTES_PER_ELEMENT

    small = _with_empty_items(5_000, deflated)
    cost = estimate_decode_cost(small)
    assert cost is not None and cost.extra_bytes >= 5_000 * BYTES_PER_ELEMENT
    assert client.post("/predict", files={"file": ("s.dcm", small)}).status_code == 200

    data = _with_empty_items(2_000_000, deflated)
    assert len(data) < (MIB if deflated else 16 * MIB)
    started = time.monotonic()
    detail = check_refused(
        client.post("/predict", files={"file": ("x.dcm", data)}), 413, "elements and sequence"
    )
    assert time.monotonic() - started < 5, detail
    study = client.post(
        "/predict/study", files=[("files", ("a.dcm", data)), ("files", ("b.dcm", small))]
    )
    assert study.status_code == 200, study.text
    (error,) = study.json()["errors"]
    assert error["name"] == "a.dcm" and "sequence items" in error["error"]
