"""Fuzzing the real app with the real model (issue 16): mutated DICOM, zip and PNG bodies
through /predict, /predict/batch and /predict/study; not one may be answered 5xx.

A seeded mutator (reproducible: example ``i`` of seed ``s`` is always the same body) over
valid seeds, byte-level (bit flips, interesting integers, inserted, deleted, duplicated
and spliced spans, truncation, digit runs replaced by thousands of digits or by text) and
structure-aware (DICOM header values through pydicom: positions with one value or text,
instance numbers of 5,000 digits, odd rows, bits, frames, slopes...; zip member names,
sizes, methods and flags; PNG header fields with valid CRCs).

``make test`` runs ``FUZZ_EXAMPLES`` (default 1,000); the full run is

    FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/backend/hostile/test_fuzz.py

``FUZZ_SEED`` picks another sequence. A failure lists each example's index, target and
mutation so that it can be replayed with :func:`example`.
"""

from __future__ import annotations

import io
import os
import random
import re
import struct
import traceback
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from testing.dicom_writers import ct_dicom_bytes

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))
FUZZ_SEED = int(os.environ.get("FUZZ_SEED", "16"))
INTERESTING_32 = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000,
                  0xFFFFFFFF, 0x10000, 40_000_000)  # fmt: skip
NUMBER_TEXTS = ("9" * 5000, "abc", "", "-1", "1e999", "nan", "inf", "0", "1\\2", " ", "1.5.3",
                "-0", "99999999999999999999", "1e-999", "\x00", "١٢٣")  # fmt: skip
_DIGITS = re.compile(rb"[0-9]+")


# --- seeds ----------------------------------------------------------------------------------


def _png(pixels: np.ndarray, **options: Any) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **options)
    return buffer.getvalue()


@cache
def seeds() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (48, 64), dtype=np.uint8)
    pngs = [
        _png(gray),
        _png(gray.astype(np.uint16) * 200),
        _png(np.asarray(Image.fromarray(gray).convert("P"))),
        _png(np.dstack([gray, gray, gray])),
    ]
    series = "1.2.826.0.1.3680043.8.498.16"
    dicoms = [
        ct_dicom_bytes(rng.integers(0, 2000, (32, 32)).astype(np.uint16), 1.0, -1024.0,
                       z=float(z), instance=z + 1, series_uid=series)
        for z in range(3)
    ]  # fmt: skip
    zips = [
        _zip([(f"IM{i}.dcm", d) for i, d in enumerate(dicoms)]),
        _zip([(f"slice ({i + 1}).png", pngs[0]) for i in range(3)]),
        _zip([(f"a/b/slice ({i + 1}).png", pngs[1]) for i in range(2)], zipfile.ZIP_STORED),
    ]
    return {"png": pngs, "dicom": dicoms, "zip": zips}


def _zip(members: list[tuple[str, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members:
            archive.writestr(name, data)
    return buffer.getvalue()


# --- byte-level mutations -------------------------------------------------------------------


def flip_bits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        at = rng.randrange(len(out))
        out[at] ^= 1 << rng.randrange(8)
    return bytes(out), "flip bits"


def interesting_int(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    out = bytearray(data)
    at = rng.randrange(max(len(out) - 4, 1))
    value = rng.choice(INTERESTING_32)
    fmt = rng.choice(("<I", ">I", "<H", ">H"))
    packed = struct.pack(fmt, value & (0xFFFF if "H" in fmt else 0xFFFFFFFF))
    out[at : at + len(packed)] = packed
    return bytes(out), f"int {value:#x} at {at}"


def insert_bytes(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data) + 1)
    blob = (
        rng.randbytes(rng.randint(1, 64))
        if rng.random() < 0.5
        else bytes([rng.randrange(256)]) * rng.randint(1, 4096)
    )
    return data[:at] + blob + data[at:], f"insert {len(blob)} at {at}"


def delete_span(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    size = rng.randint(1, max(1, min(256, len(data) - at)))
    return data[:at] + data[at + size :], f"delete {size} at {at}"


def duplicate_span(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    size = rng.randint(1, max(1, min(512, len(data) - at)))
    times = rng.randint(1, 16)
    return data[: at + size] + data[at : at + size] * times + data[at + size :], "duplicate"


def truncate(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    at = rng.randrange(len(data))
    return data[:at], f"truncate at {at}"


def digits(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    runs = list(_DIGITS.finditer(data))
    if not runs:
        return flip_bits(rng, data)
    run = rng.choice(runs)
    text = rng.choice(NUMBER_TEXTS).encode("utf-8")
    return data[: run.start()] + text + data[run.end() :], f"digits -> {text[:12]!r}"


def splice(rng: random.Random, data: bytes, other: bytes) -> tuple[bytes, str]:
    at, cut = rng.randrange(len(data)), rng.randrange(len(other))
    return data[:at] + other[cut:], "splice"


BYTE_MUTATIONS: list[Callable[[random.Random, bytes], tuple[bytes, str]]] = [
    flip_bits, interesting_int, insert_bytes, delete_span, duplicate_span, truncate, digits,
]  # fmt: skip


# --- structure-aware mutations ----------------------------------------------------------------

DICOM_VALUES: list[tuple[str, Callable[[random.Random], Any]]] = [
    ("ImagePositionPatient", lambda r: r.choice([["1"], ["a", "b", "c"], ["", "", ""],
                                                 ["1e999", "0", "0"], ["nan"] * 3, ["1", "2"],
                                                 ["9" * 5000, "0", "0"]])),
    ("ImageOrientationPatient", lambda r: r.choice([["1"] * 6, ["0"] * 6, ["a"] * 6,
                                                    ["1", "0", "0"], ["nan"] * 6])),
    ("InstanceNumber", lambda r: r.choice(["abc", "9" * 5000, "", "-5", "1.5", "1e9"])),
    ("Rows", lambda r: r.choice([0, 1, 65535, r.randrange(65536)])),
    ("Columns", lambda r: r.choice([0, 1, 65535, r.randrange(65536)])),
    ("BitsAllocated", lambda r: r.choice([0, 1, 7, 8, 12, 32, 64, 65535])),
    ("BitsStored", lambda r: r.choice([0, 1, 17, 64])),
    ("HighBit", lambda r: r.choice([0, 31, 255])),
    ("SamplesPerPixel", lambda r: r.choice([0, 2, 3, 4, 65535])),
    ("NumberOfFrames", lambda r: r.choice(["0", "-1", "3", "999999", "abc", "9" * 5000])),
    ("PixelRepresentation", lambda r: r.choice([0, 1, 2, 65535])),
    ("RescaleSlope", lambda r: r.choice(NUMBER_TEXTS[:9])),
    ("RescaleIntercept", lambda r: r.choice(NUMBER_TEXTS[:9])),
    ("PixelSpacing", lambda r: r.choice([["a", "b"], ["0", "0"], ["1"], ["1e999", "1"]])),
    ("SliceThickness", lambda r: r.choice(NUMBER_TEXTS[:9])),
    ("SliceLocation", lambda r: r.choice(NUMBER_TEXTS[:9])),
    ("PhotometricInterpretation", lambda r: r.choice(["RGB", "PALETTE COLOR", "YBR_FULL",
                                                      "MONOCHROME1", "", "X" * 64])),
    ("Modality", lambda r: r.choice(["MR", "", "CT\\MR", "X" * 40])),
    ("SeriesInstanceUID", lambda r: r.choice(["", "1.2.3", "x" * 200])),
    ("WindowCenter", lambda r: r.choice(NUMBER_TEXTS[:9])),
    ("PixelPaddingValue", lambda r: r.choice([0, 65535, -1])),
]  # fmt: skip


def dicom_values(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
    except Exception:
        return flip_bits(rng, data)
    changes = []
    for keyword, make in rng.sample(DICOM_VALUES, rng.randint(1, 3)):
        value = make(rng)
        try:
            with pydicom.config.disable_value_validation():
                setattr(dataset, keyword, value)
            changes.append(f"{keyword}={str(value)[:16]}")
        except Exception:  # pydicom refuses some values for some VRs
            continue
    buffer = io.BytesIO()
    try:
        with pydicom.config.disable_value_validation():
            dataset.save_as(buffer, enforce_file_format=False)
    except Exception:
        return flip_bits(rng, data)
    return buffer.getvalue(), "dicom " + ", ".join(changes)


def zip_structure(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    choice = rng.randrange(4)
    if choice == 0:  # member names
        names = ["slice (" + "9" * rng.choice((30, 400, 5000)) + ").png", "../x.png",
                 "/abs.png", "a\x00b.png", "C:/x.png", "__MACOSX/._a.png", "." * 300,
                 "slice (1).png/"]  # fmt: skip
        name = rng.choice(names)
        try:  # the zip may already be damaged by an earlier step
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                members = [(info.filename, archive.read(info)) for info in archive.infolist()]
            members[rng.randrange(len(members))] = (name, members[0][1])
            return _zip(members), f"zip name {name[:20]!r}"
        except Exception:
            return flip_bits(rng, data)
    out = bytearray(data)
    headers = [m.start() for m in re.finditer(rb"PK\x01\x02|PK\x03\x04", data)]
    if not headers:
        return flip_bits(rng, data)
    at = rng.choice(headers)
    central = data[at : at + 4] == b"PK\x01\x02"
    # central directory: method @10, sizes @20/@24, name length @28; local: method @8, @18/@22
    field = rng.choice((10, 20, 24, 28, 8) if central else (8, 18, 22, 26, 6))
    width = 2 if field in (6, 8, 10, 26, 28) else 4
    value = rng.choice(INTERESTING_32) & (0xFFFF if width == 2 else 0xFFFFFFFF)
    if field in (8, 10) and rng.random() < 0.5:
        value = rng.choice((0, 8, 12, 14, 93, 99))  # stored, deflate, bzip2, lzma, zstd, aes
    out[at + field : at + field + width] = value.to_bytes(width, "little")
    return bytes(out), f"zip field {field} = {value:#x}"


def png_header(rng: random.Random, data: bytes) -> tuple[bytes, str]:
    width, height = (rng.choice((0, 1, 64, 65535, 0x7FFFFFFF, rng.randrange(1 << 16)))
                     for _ in range(2))  # fmt: skip
    depth = rng.choice((1, 2, 4, 8, 16, 3, 0, 255))
    colour = rng.choice((0, 2, 3, 4, 6, 1, 7))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, rng.choice((0, 1)))
    body = b"IHDR" + ihdr
    chunk = struct.pack(">I", 13) + body + struct.pack(">I", zlib.crc32(body))
    return data[:8] + chunk + data[33:], f"ihdr {width}x{height} d{depth} c{colour}"


# --- one example ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    index: int
    kind: str
    mutation: str
    path: str
    files: list[tuple[str, tuple[str, bytes]]]

    def describe(self) -> str:
        return f"#{self.index} {self.kind} -> {self.path}: {self.mutation}"


def mutate(rng: random.Random, kind: str, data: bytes) -> tuple[bytes, str]:
    special = {"dicom": dicom_values, "zip": zip_structure, "png": png_header}[kind]
    steps = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if rng.random() < 0.4:
            data, what = special(rng, data)
        elif rng.random() < 0.1:
            other = rng.choice([d for group in seeds().values() for d in group])
            data, what = splice(rng, data, other)
        else:
            data, what = rng.choice(BYTE_MUTATIONS)(rng, data)
        steps.append(what)
        if not data:
            break
    return data, "; ".join(steps)


def example(index: int, seed: int = FUZZ_SEED) -> Example:
    """The ``index``-th example of ``seed``: always the same body, target and description."""
    rng = random.Random(seed * 1_000_003 + index)
    kind = ("png", "dicom", "zip")[index % 3]
    data = rng.choice(seeds()[kind])
    mutated, mutation = mutate(rng, kind, data)
    if kind == "zip":
        return Example(index, kind, mutation, "/predict/study", [("files", ("s.zip", mutated))])
    name = "slice (2).png" if kind == "png" else "slice.dcm"
    target = rng.random()
    if target < 0.6:
        return Example(index, kind, mutation, "/predict", [("file", (name, mutated))])
    if target < 0.75:
        files = [("files", ("ok.png", seeds()["png"][0])), ("files", (name, mutated))]
        return Example(index, kind, mutation, "/predict/batch", files)
    others = [d for d in seeds()[kind] if d is not data][:2]
    files = [("files", (f"slice ({i + 1}).{kind}", d)) for i, d in enumerate(others)]
    files.append(("files", (f"slice (3).{kind}", mutated)))
    return Example(index, kind, mutation, "/predict/study", files)


@pytest.mark.slow
def test_no_mutated_body_gets_a_5xx(client: TestClient) -> None:
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for index in range(FUZZ_EXAMPLES):
        case = example(index)
        try:
            response = client.post(case.path, files=case.files)
        except Exception as exc:  # TestClient re-raises what the app did not handle: a 500
            failures.append(f"{case.describe()}: {type(exc).__name__}: {exc}"[:400])
            failures.append("".join(traceback.format_exception(exc)[-3:])[:1200])
            continue
        statuses[response.status_code] += 1
        if response.status_code >= 500:
            failures.append(f"{case.describe()}: {response.status_code} {response.text[:200]}")
    print(f"{FUZZ_EXAMPLES} examples (seed {FUZZ_SEED}): {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:40])
    assert client.get("/ready").status_code == 200
    assert client.app.state.budget.used == 0  # type: ignore[attr-defined]
