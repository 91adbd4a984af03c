"""The PACS pipeline's processes on loopback, for its tests and benchmarks: the product's API
and ``python -m pacs`` (worker, poller), each with its log in a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from pacs.orthanc import free_port
from testing.ct_series import WINDOW_LEVEL, WINDOW_WIDTH

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "ml_model" / "models" / "default"


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except AssertionError:
            raise
        except Exception as exc:  # the server may be coming up or restarting
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class ApiProcess:
    """A started API: its URL and process."""

    url: str
    process: subprocess.Popen[bytes]


@contextmanager
def started_api(
    log_path: Path, flags: Sequence[str] = (), **extra_env: str
) -> Iterator[ApiProcess]:
    """The product's API (uvicorn, the bundled model) on a free loopback port, its worklist in
    a SQLite file beside ``log_path``; ``flags``: more uvicorn options (a benchmark passes
    ``make serve``'s), ``extra_env``: more settings, e.g. ``AUTH_TOKEN_HASHES``. Yields it once
    /ready, stops it afterwards."""
    port = free_port()
    # The window the training PNGs were exported with (see the data's README): with the
    # default bone window the bundled model's CT gate calls these DICOMs "Not a CT slice",
    # which gives no top slices and so no heatmaps to write.
    env = {
        **os.environ,
        "MODEL_DIR": str(MODEL_DIR),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "WINDOW_LEVEL": str(WINDOW_LEVEL),
        "WINDOW_WIDTH": str(WINDOW_WIDTH),
        "WORKLIST_SQLITE_PATH": str(log_path.parent / "worklist.sqlite3"),
        **extra_env,
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.app.main:app", "--host", "127.0.0.1",
             "--port", str(port), *flags],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert process.poll() is None, "API exited:\n" + log_path.read_text()[-3000:]
            return requests.get(f"{url}/ready", timeout=2).status_code == 200

        wait_for("the API's /ready", ready, timeout=240, every=1.0)
        yield ApiProcess(url, process)
    finally:
        stop_process(process)


@contextmanager
def running_api(log_path: Path, **extra_env: str) -> Iterator[str]:
    """:func:`started_api`, yielding its URL."""
    with started_api(log_path, **extra_env) as api:
        yield api.url


class WorkerProcess:
    """``python -m pacs [args]`` with its log in a file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str) -> None:
        self.log_path = log_path
        self.metrics_url = f"http://127.0.0.1:{env['PACS_METRICS_PORT']}/metrics"
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pacs", *args], cwd=REPO, env=env, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str, labels: str | None = None) -> float:
        """Sum of the samples of ``name`` (with exactly ``labels``, when given) on /metrics."""
        text = requests.get(self.metrics_url, timeout=2).text
        label_part = re.escape("{" + labels + "}") if labels else r"(?:\{[^}]*\})?"
        pattern = re.compile(rf"^{re.escape(name)}{label_part} ([0-9.e+-]+)$", re.MULTILINE)
        return sum(float(value) for value in pattern.findall(text))

    def stop(self) -> None:
        stop_process(self.process)
