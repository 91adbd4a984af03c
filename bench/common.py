"""Shared pieces of the benchmarks: sample images, servers on loopback, tables."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from ml_model.config import SHARED_DATA_DIR

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"


def sample_pngs(count: int) -> tuple[list[bytes], str]:
    """``count`` 224x224 PNG uploads: real slices when the shared data is there, else synthetic."""
    real = sorted((SHARED_DATA_DIR / "train").rglob("*-rotated1.png"))
    if real:
        files = [real[i % len(real)].read_bytes() for i in range(count)]
        return files, f"real CT slices from {SHARED_DATA_DIR}"
    rng = np.random.default_rng(0)
    files = []
    for _ in range(min(count, 50)):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (224, 224), dtype=np.uint8)).save(buffer, "PNG")
        files.append(buffer.getvalue())
    return [files[i % len(files)] for i in range(count)], "synthetic 224x224 PNGs"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    command: Sequence[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until ``ready_url`` answers 200, stop it afterwards."""
    process = subprocess.Popen(
        list(command),
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}: {command}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready_url} not ready after {timeout:.0f} s")
            time.sleep(0.5)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def api_server_command(port: int) -> list[str]:
    """Exactly what `make serve` runs."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "backend.app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]


def rss_mb(pid: int) -> float:
    import psutil

    return psutil.Process(pid).memory_info().rss / 2**20


def table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A plain-text table for the terminal."""
    cells = [[_fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    body = "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells)
    return f"{line}\n{'-' * len(line)}\n{body}"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return "" if value is None else str(value)
