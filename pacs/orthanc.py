"""A development Orthanc (Debian's ``orthanc`` + ``orthanc-dicomweb``) as a plain process.

    python -m pacs.orthanc                         # storage in a temporary folder
    python -m pacs.orthanc --storage /tmp/pacs --http-port 8042 --dicom-port 4242

It listens on loopback only for HTTP (remote access off, no authentication: a development
server, never a hospital's). Orthanc 1.10's DICOM port has no bind address, so C-STORE is
refused unless the caller is the ``DEVSCU`` AE title from 127.0.0.1. Used by ``make pacs``
and by the end-to-end test.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

PLUGIN_CANDIDATES = (
    "/usr/share/orthanc/plugins/libOrthancDicomWeb.so",
    "/usr/lib/orthanc/libOrthancDicomWeb.so*",
    "/usr/local/share/orthanc/plugins/libOrthancDicomWeb.so",
)


class OrthancUnavailable(RuntimeError):
    """Orthanc or its DICOMweb plugin is not installed, or it did not start."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_orthanc() -> tuple[str, str]:
    """The Orthanc executable and its DICOMweb plugin, or OrthancUnavailable saying why."""
    binary = os.environ.get("ORTHANC_BIN") or shutil.which("Orthanc")
    if not binary:
        raise OrthancUnavailable(
            "Orthanc is not installed (apt-get install orthanc orthanc-dicomweb)"
        )
    patterns = (
        [os.environ["ORTHANC_DICOMWEB_PLUGIN"]]
        if os.environ.get("ORTHANC_DICOMWEB_PLUGIN")
        else list(PLUGIN_CANDIDATES)
    )
    for pattern in patterns:
        for candidate in sorted(glob.glob(pattern)):
            if Path(candidate).is_file():
                return binary, candidate
    raise OrthancUnavailable(
        "the Orthanc DICOMweb plugin is not installed (apt-get install orthanc-dicomweb)"
    )


def orthanc_config(
    storage: Path,
    http_port: int,
    dicom_port: int,
    plugin: str,
    extra: dict[str, object] | None = None,
) -> dict[str, object]:
    """The JSON configuration of a loopback development Orthanc (``extra``: more options, e.g.
    ``LimitFindResults``, over these)."""
    return {
        "Name": "cspine-dev-pacs",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpsVerifyPeers": True,
        "DicomServerEnabled": True,
        "DicomAet": "CSPINEPACS",
        "DicomPort": dicom_port,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": True,
        "DicomModalities": {"devscu": ["DEVSCU", "127.0.0.1", 11112]},
        "Plugins": [plugin],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "StableAge": 5,
        "SaveJobs": False,
        "OverwriteInstances": False,
        **(extra or {}),
    }


@dataclass
class OrthancServer:
    """A running Orthanc process."""

    process: subprocess.Popen[bytes]
    storage: Path
    http_port: int
    dicom_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def stop(self, kill: bool = False) -> None:
        """SIGKILL (``kill``) or SIGTERM, then wait for the process to end."""
        if self.process.poll() is None:
            if kill:
                self.process.kill()
            else:
                self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def start_orthanc(
    storage: Path,
    http_port: int = 0,
    dicom_port: int = 0,
    timeout: float = 60.0,
    extra_config: dict[str, object] | None = None,
) -> OrthancServer:
    """Start Orthanc on loopback with its storage in ``storage``; wait until DICOMweb answers.
    ``extra_config``: more configuration options (see :func:`orthanc_config`)."""
    binary, plugin = find_orthanc()
    storage.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    dicom_port = dicom_port or free_port()
    config_path = storage / "orthanc.json"
    config_path.write_text(
        json.dumps(orthanc_config(storage, http_port, dicom_port, plugin, extra_config), indent=2)
    )
    log_path = storage / "orthanc.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [binary, str(config_path)], stdout=log, stderr=subprocess.STDOUT, cwd=storage
        )
    server = OrthancServer(process, storage, http_port, dicom_port, log_path)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"{server.url}/plugins/dicom-web", timeout=2):
                return True
        except (urllib.error.URLError, OSError):
            return False

    try:
        wait_until_ready(process, ready, timeout, "Orthanc", log_path, OrthancUnavailable)
    except OrthancUnavailable:
        server.stop(kill=True)
        raise
    return server


def wait_until_ready(
    process: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float,
    name: str,
    log_path: Path,
    error: type[Exception],
) -> None:
    """Poll ``ready`` until true; ``error`` (with the log's tail) when the process exits
    first or ``timeout`` passes. A development server's start-up (Orthanc, RabbitMQ)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise error(
                f"{name} exited with {process.returncode}; see {log_path}:\n"
                + log_path.read_text(errors="replace")[-2000:]
            )
        if ready():
            return
        time.sleep(0.3)
    raise error(f"{name} did not answer within {timeout:.0f}s; see {log_path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", type=Path, help="storage folder (default: a temp dir)")
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    args = parser.parse_args(argv)
    storage = args.storage or Path(tempfile.mkdtemp(prefix="cspine-orthanc-"))
    try:
        server = start_orthanc(storage, args.http_port, args.dicom_port)
    except OrthancUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Orthanc {server.url}  (explorer {server.url}/app/explorer.html)")
    print(f"DICOMweb {server.dicomweb_url}")
    print(f"DICOM    CSPINEPACS@127.0.0.1:{server.dicom_port} (calling AE DEVSCU only)")
    print(f"storage  {storage}  (log {server.log_path})")
    print("Ctrl-C stops it.", flush=True)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if server.process.poll() is None:
            server.process.terminate()  # the wait below returns once Orthanc has stopped

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    code = server.process.wait()
    print(f"Orthanc stopped ({code}); storage kept in {storage}")
    return 0 if code in (0, -signal.SIGTERM) else code


if __name__ == "__main__":
    sys.exit(main())
