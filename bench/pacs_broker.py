"""PACS pipeline on the broker: N CT series stored at once, time until every SR is back, with
1 and 2 workers (docs/pacs-broker.md).

Everything real and on loopback: a development RabbitMQ (``pacs.rabbitmq``), a development
Orthanc (``pacs.orthanc``), the API as ``make serve`` runs it, one poller and the workers as
their own processes. Each round uses fresh series and its own queues and state file. The
series are the shared data set's slices (synthetic where it is absent) as 16-bit CT DICOM.

    python -m bench.pacs_broker [--series 10] [--slices 4] [--workers 1 2] [--concurrency 1]

The time includes ``PACS_STABLE_SECONDS`` (2 here) and the 1 s poll; not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from bench.common import (
    REPO_ROOT,
    api_server_command,
    free_port,
    sample_pngs,
    server_process,
    table,
)
from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from ml_model.imaging.transforms import decode_image
from pacs.orthanc import start_orthanc
from pacs.rabbitmq import start_rabbitmq
from testing.dicom_writers import gray_to_export_window_dicom

STABLE_SECONDS = 2


def make_series(count: int, slices: int, tag: str) -> list[list[Dataset]]:
    """``count`` one-series studies of ``slices`` CT slices each (fresh UIDs)."""
    pngs, _ = sample_pngs(slices)
    grays = [decode_image(data, EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH) for data in pngs]
    studies = []
    for number in range(count):
        study_uid, series_uid = generate_uid(), generate_uid()
        series: list[Dataset] = []
        for index, gray in enumerate(grays):
            data = gray_to_export_window_dicom(
                gray, z=-2.5 * index, instance=index + 1, series_uid=series_uid
            )
            ds = dcmread(io.BytesIO(data))
            ds.StudyInstanceUID = study_uid
            ds.PatientID = f"BENCH-{tag}-{number:03d}"
            ds.PatientName = f"Bench^{tag}{number}"
            series.append(ds)
        studies.append(series)
    return studies


def worker_process(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "pacs", *args], cwd=REPO_ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip


def wait_logged(log: Path, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{log.name}: no {text!r} within {timeout:.0f}s")
        time.sleep(0.2)


def one_round(
    base_env: dict[str, str], tmp: Path, client: DICOMwebClient, workers: int, series: int,
    slices: int, concurrency: int,
) -> dict[str, Any]:  # fmt: skip
    """Poller + ``workers`` workers on fresh queues; ``series`` studies stored at once; the
    seconds until each has its SR."""
    tag = f"w{workers}"
    env = {**base_env, "PACS_BROKER_QUEUE": f"bench-{tag}-{time.time_ns()}",
           "PACS_STATE_DB": str(tmp / f"{tag}.sqlite3"),
           "PACS_CONCURRENCY": str(concurrency)}  # fmt: skip
    studies = make_series(series, slices, tag)
    poller_log = tmp / f"{tag}-poller.log"
    procs = [worker_process(["poller"], {**env, "PACS_METRICS_PORT": "0"}, poller_log)]
    logs = [tmp / f"{tag}-worker{n}.log" for n in range(workers)]
    procs += [worker_process([], {**env, "PACS_METRICS_PORT": "0"}, log) for log in logs]
    try:
        wait_logged(poller_log, "queueing series on")
        for log in logs:
            wait_logged(log, "taking series from")
        started = time.monotonic()
        client.store_instances([ds for study in studies for ds in study])
        stored = time.monotonic() - started
        waiting = {str(study[0].StudyInstanceUID) for study in studies}
        while waiting:
            for study_uid in list(waiting):
                found = client.search_for_series(
                    study_instance_uid=study_uid, search_filters={"Modality": "SR"}
                )
                if found:
                    waiting.discard(study_uid)
            if time.monotonic() - started > 60 * 30:
                raise TimeoutError(f"{len(waiting)} SRs not back after 30 min")
            time.sleep(0.5)
        seconds = time.monotonic() - started
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=60)
    return {
        "workers": workers,
        "concurrency": concurrency,
        "series": series,
        "slices": slices,
        "store_s": round(stored, 1),
        "all_srs_s": round(seconds, 1),
        "series_per_min": round(series / seconds * 60, 1),
        "s_per_series": round(seconds / series, 2),
    }


def run(
    series: int, slices: int, worker_counts: list[int], concurrency: int
) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacs-broker-"))
    broker = start_rabbitmq(tmp / "rabbitmq")
    pacs = start_orthanc(tmp / "orthanc")
    port = free_port()
    api_env = {"WINDOW_LEVEL": str(EXPORT_WINDOW_LEVEL), "WINDOW_WIDTH": str(EXPORT_WINDOW_WIDTH)}
    rows = []
    try:
        with server_process(api_server_command(port), f"http://127.0.0.1:{port}/ready", api_env):
            base_env = {
                **os.environ,
                "PACS_URL": pacs.url,
                "API_URL": f"http://127.0.0.1:{port}",
                "PACS_BROKER_URL": broker.url,
                "PACS_POLL_SECONDS": "1",
                "PACS_STABLE_SECONDS": str(STABLE_SECONDS),
                "PACS_LOG_LEVEL": "INFO",
            }
            client = DICOMwebClient(pacs.dicomweb_url)
            for workers in worker_counts:
                rows.append(one_round(base_env, tmp, client, workers, series, slices, concurrency))
    finally:
        pacs.stop()
        broker.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=10)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, default=1, help="per worker process")
    args = parser.parse_args()
    rows = run(args.series, args.slices, args.workers, args.concurrency)
    columns = list(rows[0])
    print(table(rows, columns))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
