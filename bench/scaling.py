"""Scaling: /predict/batch and CLI prediction for 10, 100 and 1000 images.

Cost per image should stay flat as the count grows (linear total time).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import REPO_ROOT, api_server_command, free_port, running_server, sample_pngs

COUNTS = (10, 100, 1000)


def _batch_endpoint(base: str, files: list[bytes]) -> float:
    payload = [("files", (f"s{i:04d}.png", data, "image/png")) for i, data in enumerate(files)]
    started = time.perf_counter()
    response = httpx.post(f"{base}/predict/batch", files=payload, timeout=600)
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    return elapsed


def _cli(files: list[bytes]) -> float:
    with tempfile.TemporaryDirectory() as folder:
        for i, data in enumerate(files):
            Path(folder, f"s{i:04d}.png").write_bytes(data)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "ml_model.predict", folder, "--csv", f"{folder}/out.csv"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def run() -> dict[str, Any]:
    files, _ = sample_pngs(max(COUNTS))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"MAX_BATCH_FILES": str(max(COUNTS)), "MAX_UPLOAD_MB": "200"}
    rows = []
    with running_server(api_server_command(port), f"{base}/ready", env=env):
        _batch_endpoint(base, files[:4])
        for count in COUNTS:
            seconds = _batch_endpoint(base, files[:count])
            rows.append(
                {
                    "path": "POST /predict/batch",
                    "images": count,
                    "seconds": seconds,
                    "ms_per_image": seconds / count * 1000,
                }
            )
    for count in COUNTS:
        seconds = _cli(files[:count])
        rows.append(
            {
                "path": "python -m ml_model.predict",
                "images": count,
                "seconds": seconds,
                "ms_per_image": seconds / count * 1000,
            }
        )
    return {"rows": rows}


if __name__ == "__main__":
    print(run())
