"""Time to notification: one CT series stored in the PACS -> flagged in the worklist -> the
webhook's signed call received (issue 29; docs/worklist.md, Notification).

Everything real and on loopback: a development Orthanc (``pacs.orthanc``), the API as ``make
serve`` runs it with a webhook configured, the PACS worker as its own process, and a webhook
receiver (``testing/webhook_receiver.py``) that checks the signature. The series is
``testing.ct_series``' scanner-like HU DICOMs of 30 real fracture slices of the shared data set
(``bench.pacs_throughput.slice_sources``), repeated to its length with fresh UIDs, stored with
one STOW-RS request; the clock starts when that request returns (the last
instance is in the PACS).

    python -m bench.time_to_notification [--slices 300] [--stable-seconds 10]

Printed: the STOW's own time, stored -> listed (flagged, ``GET /worklist``) and stored ->
webhook in seconds, and both less the worker's stable age (``PACS_STABLE_SECONDS``: a series
is taken once its instance count has not changed for that long); the issue's target is the
stable age + at most 15 s. Then, on the same servers, where the worker's time goes: the
series' WADO-RS download and the ``/predict/study`` call (explain, as the worker asks), each
timed once with the worker's own clients (``pacs.clients``). Not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from dicomweb_client.api import DICOMwebClient

from bench.common import api_server_command, free_port, server_process, table
from bench.pacs_throughput import slice_sources
from ml_model.config import EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from pacs.clients import ApiClient, PacsClient, dataset_bytes
from pacs.orthanc import start_orthanc
from pacs.settings import WorkerSettings
from testing.ct_series import ct_series
from testing.pacs_stack import WorkerProcess, wait_for
from testing.webhook_receiver import running_receiver

SECRET = "bench-webhook-secret"
POLL_SECONDS = 1
TIMEOUT_S = 900
SOURCE_SLICES = 30  # real slices, repeated to the series' length


def run(slices: int, stable_seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-time-to-notification-"))
    pacs = start_orthanc(tmp / "orthanc")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sources = slice_sources(SOURCE_SLICES, tmp)[0][-1]  # the fracture series: it is flagged
    series = ct_series(
        [sources[index % len(sources)] for index in range(slices)],
        patient_id="BENCH-TTN",
        description="CT C-spine axial",
    )
    series_uid = str(series[0].SeriesInstanceUID)
    try:
        with running_receiver(SECRET) as receiver:
            api_env = {
                "WINDOW_LEVEL": str(EXPORT_WINDOW_LEVEL),
                "WINDOW_WIDTH": str(EXPORT_WINDOW_WIDTH),
                "DATABASE_URL": "",  # the SQLite file below, never the caller's database
                "WORKLIST_SQLITE_PATH": str(tmp / "worklist.sqlite3"),
                "WEBHOOK_URL": receiver.url,
                "WEBHOOK_SECRET": SECRET,
            }
            with server_process(api_server_command(port), f"{base}/ready", api_env):
                env = {
                    **os.environ,
                    "PACS_URL": pacs.url,
                    "API_URL": base,
                    "PACS_STATE_DB": str(tmp / "state.sqlite3"),
                    "PACS_POLL_SECONDS": str(POLL_SECONDS),
                    "PACS_STABLE_SECONDS": str(stable_seconds),
                    "PACS_METRICS_PORT": "0",
                    "PACS_LOG_LEVEL": "INFO",
                }
                worker = WorkerProcess(env, tmp / "worker.log")
                try:
                    wait_for("the worker watching", lambda: "watching" in worker.log(), 120)
                    row = measure(base, pacs.dicomweb_url, series, series_uid, receiver)
                finally:
                    worker.stop()
                return {**row, **worker_steps(pacs.url, base, str(series[0].StudyInstanceUID),
                                              series_uid)}  # fmt: skip
    finally:
        pacs.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def measure(
    base: str, dicomweb_url: str, series: list[Any], series_uid: str, receiver: Any
) -> dict[str, Any]:
    """Store ``series``; poll the worklist and the receiver until the webhook's call is in."""
    client = DICOMwebClient(dicomweb_url)
    started = time.time()
    client.store_instances(series)
    stored = time.time()
    listed: float | None = None
    entry: dict[str, Any] = {}
    with httpx.Client(timeout=30) as http:
        while not receiver.accepted():
            if listed is None:
                items = http.get(f"{base}/worklist").json()["items"]
                found = [item for item in items if item["series_uid"] == series_uid]
                if found:
                    listed, entry = time.time(), found[0]
                    if not entry["flagged"]:
                        raise RuntimeError(f"the series was not flagged: {entry['verdict']}")
            if time.time() - stored > TIMEOUT_S:
                raise TimeoutError(f"no webhook call {TIMEOUT_S} s after the series was stored")
            time.sleep(0.1)
        histogram = http.get(f"{base}/metrics").text
    (call,) = receiver.accepted()
    if listed is None:  # listed and notified between two polls
        listed = call.received_at
    return {
        "slices": len(series),
        "stow_s": round(stored - started, 1),
        "stored_to_flagged_s": round(listed - stored, 1),
        "stored_to_webhook_s": round(call.received_at - stored, 1),
        "verdict": entry.get("verdict", call.body.get("verdict")),
        "signed": call.signed,
        "api_histogram_sum_s": _metric(histogram, "triage_time_to_notification_seconds_sum"),
    }


def worker_steps(pacs_url: str, api_url: str, study_uid: str, series_uid: str) -> dict[str, float]:
    """The worker's two long steps for the same series, timed once each (the worker stopped)."""
    settings = WorkerSettings(url=pacs_url, api_url=api_url)
    started = time.time()
    datasets = PacsClient(settings).retrieve_series(study_uid, series_uid)
    downloaded = time.time()
    ApiClient(settings).predict_study(
        [(f"{ds.SOPInstanceUID}.dcm", dataset_bytes(ds)) for ds in datasets]
    )
    return {
        "wado_download_s": round(downloaded - started, 1),
        "predict_study_s": round(time.time() - downloaded, 1),
    }


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return round(float(line.rsplit(" ", 1)[1]), 1)
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--stable-seconds", type=float, default=10.0)
    args = parser.parse_args()
    row = run(args.slices, args.stable_seconds)
    row["stable_s"] = args.stable_seconds
    row["flagged_beyond_stable_s"] = round(row["stored_to_flagged_s"] - args.stable_seconds, 1)
    row["webhook_beyond_stable_s"] = round(row["stored_to_webhook_s"] - args.stable_seconds, 1)
    print(table([row], list(row)))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
