"""Study endpoint benchmark: one 300-slice series of 512x512 DICOMs through POST /predict/study.

The slices are the shared data set's CT slices (synthetic ones where it is absent),
upscaled to 512x512 and stored as 16-bit CT DICOM (Hounsfield units through the bone
window give the slice back) with positions 1 mm apart and one SeriesInstanceUID, uploaded
in shuffled order as 300 multipart files and, separately, as one zip. The server is the
real ``uvicorn backend.app.main:app`` on loopback.

    python -m bench.study [--slices 300] [--size 512] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
import zipfile
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.common import RESULTS_DIR, api_server_command, free_port, running_server, sample_pngs
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.transforms import decode_image
from ml_model.inference.bundle import Bundle
from testing.dicom_writers import gray_to_export_window_dicom


def build_series(slices: int, size: int) -> tuple[list[tuple[str, bytes]], str]:
    pngs, source = sample_pngs(slices)
    series_uid = "1.2.826.0.1.3680043.2.1125.300"
    files = []
    window = Bundle.load(DEFAULT_MODEL_DIR).window
    for index, data in enumerate(pngs):
        gray = decode_image(data, *window)
        big = np.asarray(Image.fromarray(gray).resize((size, size), Image.Resampling.BILINEAR))
        files.append(
            (
                f"IM{index:04d}.dcm",
                gray_to_export_window_dicom(
                    big, z=-1.0 * index, instance=index + 1, series_uid=series_uid
                ),
            )
        )
    random.Random(0).shuffle(files)
    return files, source


def zipped(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        for name, data in files:
            archive.writestr(f"study/series1/{name}", data)
    return buffer.getvalue()


def post(client: httpx.Client, url: str, files: list[tuple[str, tuple[str, bytes]]]) -> Any:
    started = time.perf_counter()
    response = client.post(url, files=files)
    wall = (time.perf_counter() - started) * 1000
    response.raise_for_status()
    body = response.json()
    return wall, body


def run(slices: int = 300, size: int = 512, repeats: int = 3) -> dict[str, Any]:
    files, source = build_series(slices, size)
    archive = zipped(files)
    upload_mb = sum(len(data) for _, data in files) / 2**20
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[dict[str, float]]] = {"files": [], "zip": []}
    with (
        running_server(api_server_command(port), f"{base}/ready"),
        httpx.Client(timeout=600) as client,
    ):
        url = f"{base}/predict/study"
        post(client, url, [("files", item) for item in files[:20]])  # warm-up
        for _ in range(repeats):
            wall, body = post(client, url, [("files", item) for item in files])
            assert body["slice_count"] == slices, body.get("errors")
            results["files"].append({"wall_ms": wall, "server_ms": body["latency_ms"]})
            wall, body = post(client, url, [("files", ("study.zip", archive))])
            assert body["slice_count"] == slices
            results["zip"].append({"wall_ms": wall, "server_ms": body["latency_ms"]})
            print({k: v[-1] for k, v in results.items()}, flush=True)
    summary = {
        kind: {key: statistics.median(row[key] for row in rows) for key in ("wall_ms", "server_ms")}
        for kind, rows in results.items()
    }
    return {
        "slices": slices,
        "size": size,
        "images": source,
        "upload_mb": round(upload_mb, 1),
        "zip_mb": round(len(archive) / 2**20, 1),
        "result": body["result"],
        "summary": summary,
        "raw": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = run(args.slices, args.size, args.repeats)
    print(json.dumps({k: v for k, v in report.items() if k != "raw"}, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "study.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
