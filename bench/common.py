"""Shared pieces of the benchmarks: sample images, servers on loopback, tables."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


def sample_images(count: int, size: int, window: tuple[float, float]) -> np.ndarray:
    """``count`` model inputs (uint8 (count, size, size, 3)) decoded from :func:`sample_pngs`
    (DICOM through ``window``: the bundle's)."""
    from ml_model.imaging.transforms import decode_image, gray_to_model_input

    files, _ = sample_pngs(count)
    return np.stack([gray_to_model_input(decode_image(data, *window), size) for data in files])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server: its process and how long it took from exec to ``ready_url``."""

    process: subprocess.Popen[bytes]
    cold_start_s: float


@contextlib.contextmanager
def server_process(
    command: Sequence[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[Server]:
    """Start a server process, wait until ``ready_url`` answers 200 (polled every 50 ms: the
    cold start is timed to that resolution), stop it and its children afterwards."""
    started = time.perf_counter()
    process = subprocess.Popen(
        list(command),
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"server exited with {process.returncode}: {command}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(ready_url).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{ready_url} not ready after {timeout:.0f} s")
                time.sleep(0.05)
        yield Server(process, time.perf_counter() - started)
    finally:
        _stop(process)


def _stop(process: subprocess.Popen[bytes]) -> None:
    import psutil

    try:
        children = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    for child in children:  # LitServe's workers
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()


@contextlib.contextmanager
def running_server(
    command: Sequence[str], ready_url: str, env: dict[str, str] | None = None, timeout: float = 180
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a server process, wait until ``ready_url`` answers 200, stop it afterwards."""
    with server_process(command, ready_url, env, timeout) as server:
        yield server.process


def api_server_command(port: int) -> list[str]:
    """Exactly what `make serve` runs (its UVICORN_FLAGS too), with quieter logs."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "backend.app.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *make_serve_flags(),
        "--log-level",
        "warning",
    ]


def make_serve_flags() -> list[str]:
    """The Makefile's ``UVICORN_FLAGS`` (none if it has none)."""
    import re
    import shlex

    text = (REPO_ROOT / "Makefile").read_text().replace("\\\n", " ")
    match = re.search(r"^UVICORN_FLAGS\s*:?=\s*(.*)$", text, re.M)
    return shlex.split(match.group(1)) if match else []


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (LitServe runs workers), MiB."""
    import psutil

    process = psutil.Process(pid)
    total = 0
    for member in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += member.memory_info().rss
    return total / 2**20


@dataclass
class PeakRss:
    """Samples :func:`rss_mb` every ``interval`` s in a thread while in the ``with`` block."""

    pid: int
    interval: float = 0.1
    peak_mb: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PeakRss:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak_mb = max(self.peak_mb, rss_mb(self.pid))
            self._stop.wait(self.interval)


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
