"""The backend image's CMD and HEALTHCHECK, run outside Docker with the project venv.

The command is read from docker/backend.Dockerfile (only host and port change) and the
environment from docker-compose.yml (MODEL_DIR mapped back to the committed bundle), so a
change to either that breaks start-up fails here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.packaging.helpers import (
    BACKEND_DOCKERFILE,
    COMPOSE_FILE,
    MODEL_BUNDLE,
    REPO_ROOT,
    free_port,
    healthcheck_command,
    interpolate,
    parse_dockerfile,
)

READY_TIMEOUT_S = 90.0
CONTAINER_URL = "http://127.0.0.1:8000"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-4000:]


def _container_command(port: int) -> list[str]:
    """The image's CMD with the host/port swapped, run by this interpreter (the venv)."""
    cmd = parse_dockerfile(BACKEND_DOCKERFILE).final.last("CMD")
    assert cmd is not None
    argv = cmd.exec_form()
    assert argv is not None and argv[0] == "uvicorn"
    args = argv[1:]
    args[args.index("--host") + 1] = "127.0.0.1"
    args[args.index("--port") + 1] = str(port)
    return [sys.executable, "-m", "uvicorn", *args]


def _compose_backend_env() -> dict[str, str]:
    """docker-compose.yml's backend environment with defaults, MODEL_DIR on the host."""
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["backend"]
    env = {k: interpolate(str(v)) for k, v in service["environment"].items() if v is not None}
    assert env["MODEL_DIR"] == "/models/default"
    env["MODEL_DIR"] = str(MODEL_BUNDLE)
    return env


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    assert (REPO_ROOT / "backend" / "app" / "main.py").is_file(), "backend not written yet"
    port = free_port()
    env = {**os.environ, **_compose_backend_env(), "PYTHONUNBUFFERED": "1"}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    log = (tmp_path_factory.mktemp("uvicorn") / "server.log").open("w+b")
    process = subprocess.Popen(
        _container_command(port), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    server = Server(process, port, log)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        status = None
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.output()}")
            try:
                status, _ = _get(f"{server.url}/ready", timeout=2)
            except OSError:
                status = None  # not listening yet
            if status == 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail(
                f"/ready not 200 after {READY_TIMEOUT_S}s (last {status}):\n{server.output()}"
            )
        yield server
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.mark.slow
def test_container_command_serves_ready_and_health(server: Server):
    status, body = _get(f"{server.url}/ready")
    assert status == 200, body
    status, body = _get(f"{server.url}/health")
    assert status == 200, body


@pytest.mark.slow
def test_healthcheck_command_passes_against_the_server(server: Server):
    command = healthcheck_command(parse_dockerfile(BACKEND_DOCKERFILE).final)
    assert command[0] == "python" and CONTAINER_URL in command[-1]
    argv = [sys.executable, *command[1:-1], command[-1].replace(CONTAINER_URL, server.url)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    assert result.returncode == 0, result.stderr


def test_healthcheck_command_fails_when_nothing_listens():
    command = healthcheck_command(parse_dockerfile(BACKEND_DOCKERFILE).final)
    url = f"http://127.0.0.1:{free_port()}"
    argv = [sys.executable, *command[1:-1], command[-1].replace(CONTAINER_URL, url)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    assert result.returncode != 0
