"""PACS pipeline throughput on the broker (issue 30): N CT series stored in Orthanc at once, the
time until every SR is back, with 1, 2, 4 workers and 1-2 API replicas (docs/pacs-broker.md).

Everything real and on loopback: a development RabbitMQ (``pacs.rabbitmq``), the API replicas
as their own processes on their own ports (``make serve``'s uvicorn flags), one poller and the
workers as ``python -m pacs`` processes (``testing.pacs_stack``). No load balancer: worker i
sends to replica i % M (a configuration with fewer workers than replicas is skipped, its extra
replicas would get nothing). Each configuration gets a fresh Orthanc, fresh queues, a fresh
state file and fresh series (``testing.ct_series``: real neck slices from the shared data, one
normal and one fracture series alternating; synthetic PNGs where the data is absent).

    python -m bench.pacs_throughput [--series 50] [--slices 30] [--workers 1,2,4]
        [--replicas 1,2] [--concurrency 1] [--stable-seconds 2] [--keep]

Not part of ``make bench``; writes bench/results/pacs_throughput.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from bench.common import RESULTS_DIR, make_serve_flags, sample_pngs, table
from ml_model.config import SHARED_DATA_DIR
from pacs.orthanc import free_port, start_orthanc
from pacs.rabbitmq import RabbitServer, start_rabbitmq
from testing.ct_series import SliceSource, base_slices, ct_series
from testing.pacs_stack import ApiProcess, WorkerProcess, started_api, wait_for

POLL_SECONDS = 1
SR_POLL_SECONDS = 0.5  # how often the benchmark asks the PACS for the SRs (QIDO)
COLUMNS = ["workers", "replicas", "total_s", "series_per_min", "drain_series_per_min",
           "p50_latency_s", "p90_latency_s", "p50_stable_wait_s", "api_cpu_pct",
           "workers_cpu_pct", "other_cpu_pct", "api_cpu_s_per_series"]  # fmt: skip
QUEUED = re.compile(r"^(\S+ \S+) INFO \S+: series (\S+): queued \(attempt 1\)$", re.M)
OUTCOME = re.compile(r": series \S+: outcome (\w+) recorded$", re.M)


def slice_sources(slices: int, tmp: Path) -> tuple[list[list[SliceSource]], str]:
    """Two series' worth of slices (normal, fracture) and what they are."""
    if (SHARED_DATA_DIR / "train").is_dir():
        sources = [base_slices(SHARED_DATA_DIR, label, slices) for label in ("normal", "fracture")]
        return (
            sources,
            f"real neck CT slices ({SHARED_DATA_DIR}), one normal and one fracture series",
        )
    pngs, what = sample_pngs(slices)
    folder = tmp / "synthetic"
    folder.mkdir()
    synthetic = []
    for number, data in enumerate(pngs, start=1):
        path = folder / f"{number}.png"
        path.write_bytes(data)
        synthetic.append(SliceSource(path, "synthetic", number))
    return [synthetic], what


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their children (those alive)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = member.cpu_times()
                    total += times.user + times.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds every process on the machine used, all cores (anyone's work, ours too)."""
    times = psutil.cpu_times()._asdict()
    idle = ("idle", "iowait", "guest", "guest_nice")  # guest time is counted in user already
    return sum(seconds for name, seconds in times.items() if name not in idle)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass
class Stack:
    """The processes of one configuration, by role (their pids, for CPU)."""

    roles: dict[str, list[int]]

    def cpu(self) -> dict[str, float]:
        return {role: cpu_seconds(pids) for role, pids in self.roles.items()}


@contextlib.contextmanager
def pipeline(
    tmp: Path, tag: str, broker: RabbitServer, apis: list[ApiProcess], workers: int,
    concurrency: int, stable_seconds: float,
) -> Iterator[tuple[DICOMwebClient, Stack, WorkerProcess]]:  # fmt: skip
    """A fresh Orthanc, a poller and ``workers`` workers on fresh queues; worker i sends to
    replica i % M. Yields the PACS's DICOMweb client, the processes and the poller."""
    pacs = start_orthanc(tmp / f"orthanc-{tag}")
    env = {
        **os.environ,
        "PACS_URL": pacs.url,
        "PACS_BROKER_URL": broker.url,
        "PACS_BROKER_QUEUE": f"bench-{tag}",
        "PACS_STATE_DB": str(tmp / f"{tag}-poller.sqlite3"),
        "PACS_POLL_SECONDS": str(POLL_SECONDS),
        "PACS_STABLE_SECONDS": str(stable_seconds),
        "PACS_CONCURRENCY": str(concurrency),
        "PACS_BACKOFF_SECONDS": "1",
        "PACS_LOG_LEVEL": "INFO",
    }
    processes: list[WorkerProcess] = []
    try:
        poller = WorkerProcess({**env, "PACS_METRICS_PORT": str(free_port())},
                               tmp / f"{tag}-poller.log", "poller")  # fmt: skip
        processes.append(poller)
        for number in range(workers):
            api_url = apis[number % len(apis)].url
            worker_env = {**env, "API_URL": api_url, "PACS_METRICS_PORT": str(free_port())}
            processes.append(WorkerProcess(worker_env, tmp / f"{tag}-worker{number}.log"))
        wait_for("the poller", lambda: "queueing series on" in poller.log(), timeout=120)
        wait_for("the workers", lambda: all("taking series from" in worker.log()
                                            for worker in processes[1:]), timeout=120)  # fmt: skip
        stack = Stack({
            "api": [api.process.pid for api in apis],
            "workers": [worker.process.pid for worker in processes[1:]],
            "poller": [poller.process.pid],
            "orthanc": [pacs.process.pid],
            "broker": [broker.process.pid],
        })  # fmt: skip
        yield DICOMwebClient(pacs.dicomweb_url), stack, poller
    finally:
        for process in processes:
            process.stop()
        pacs.stop()
        for path in pacs.storage.iterdir():  # the stored series (GBs in all); keep the log
            if path.is_dir():
                shutil.rmtree(path)


def one_round(
    tmp: Path, broker: RabbitServer, apis: list[ApiProcess], workers: int, series: int,
    sources: list[list[SliceSource]], concurrency: int, stable_seconds: float,
) -> dict[str, Any]:  # fmt: skip
    """``series`` one-series studies stored at once; when each one's SR is back."""
    tag = f"w{workers}r{len(apis)}-{time.time_ns()}"
    studies: list[list[Dataset]] = [
        ct_series(
            sources[number % len(sources)],
            patient_id=f"BENCH-{number:03d}",
            description=f"CT C-spine axial {number}",
        )
        for number in range(series)
    ]
    study_of_series = {str(s[0].SeriesInstanceUID): str(s[0].StudyInstanceUID) for s in studies}
    with pipeline(tmp, tag, broker, apis, workers, concurrency, stable_seconds) as (
        client, stack, poller,
    ):  # fmt: skip
        cpu_before, busy_before = stack.cpu(), machine_busy_seconds()
        started = time.time()
        stored_at: dict[str, float] = {}
        for study in studies:
            client.store_instances(study)
            stored_at[str(study[0].StudyInstanceUID)] = time.time()
        sr_at: dict[str, float] = {}
        deadline = started + 120.0 + 20.0 * series
        while len(sr_at) < series:
            found = client.search_for_series(search_filters={"Modality": "SR"})  # this round's
            now = time.time()
            for item in found:
                sr_at.setdefault(str(item["0020000D"]["Value"][0]), now)
            if now > deadline:
                raise TimeoutError(f"{series - len(sr_at)} of {series} SRs not back in time")
            time.sleep(SR_POLL_SECONDS)
        wall = time.time() - started
        cpu_after, busy_after = stack.cpu(), machine_busy_seconds()
        poller_log = poller.log()
    queued_at = {
        study_of_series[uid]: datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for stamp, uid in QUEUED.findall(poller_log)
        if uid in study_of_series
    }
    latency = [sr_at[study] - stored_at[study] for study in stored_at]
    waited = [queued_at[s] - stored_at[s] for s in stored_at if s in queued_at]
    worked = [sr_at[s] - queued_at[s] for s in stored_at if s in queued_at]
    srs = sorted(sr_at.values())
    drain = (series - 1) / (srs[-1] - srs[0]) * 60 if series > 1 and srs[-1] > srs[0] else None
    cpu = {role: cpu_after[role] - cpu_before[role] for role in cpu_before}
    busy = busy_after - busy_before
    outcomes = OUTCOME.findall(poller_log)
    return {
        "workers": workers,
        "replicas": len(apis),
        "concurrency": concurrency,
        "series": series,
        "slices": len(studies[0]),
        "store_s": round(max(stored_at.values()) - started, 1),
        "total_s": round(wall, 1),
        "series_per_min": round(series / wall * 60, 1),
        "drain_series_per_min": round(drain, 1) if drain else None,
        "p50_latency_s": round(percentile(latency, 0.5), 1),
        "p90_latency_s": round(percentile(latency, 0.9), 1),
        "max_latency_s": round(max(latency), 1),
        "p50_stable_wait_s": round(percentile(waited, 0.5), 1) if waited else None,
        "p50_queue_and_work_s": round(percentile(worked, 0.5), 1) if worked else None,
        **{f"{role}_cpu_pct": round(100 * seconds / wall) for role, seconds in cpu.items()},
        "machine_cpu_pct": round(100 * busy / wall),
        "other_cpu_pct": round(100 * (busy - sum(cpu.values())) / wall),  # not this pipeline
        "api_cpu_s_per_series": round(cpu["api"] / series, 2),
        "stack_cpu_s_per_series": round(sum(cpu.values()) / series, 2),
        "outcomes": {call: outcomes.count(call) for call in sorted(set(outcomes))},
    }


def run(
    series: int, slices: int, worker_counts: list[int], replica_counts: list[int],
    concurrency: int, stable_seconds: float, keep: bool,
) -> dict[str, Any]:  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-pacs-throughput-"))
    sources, what = slice_sources(slices, tmp)
    broker = start_rabbitmq(tmp / "rabbitmq")
    rows, skipped = [], []
    try:
        for replicas in replica_counts:
            with contextlib.ExitStack() as stack:
                apis = []
                for number in range(replicas):
                    folder = tmp / f"api-r{replicas}-{number}"  # its log and worklist
                    folder.mkdir()
                    api = started_api(folder / "api.log", flags=make_serve_flags())
                    apis.append(stack.enter_context(api))
                for workers in worker_counts:
                    if workers < replicas:
                        skipped.append(f"{workers} worker(s) x {replicas} replicas")
                        continue
                    row = one_round(tmp, broker, apis, workers, series, sources, concurrency,
                                    stable_seconds)  # fmt: skip
                    print(table([row], COLUMNS), flush=True)
                    rows.append(row)
    except BaseException:
        print(f"logs in {tmp}", file=sys.stderr)
        raise
    finally:
        broker.stop()
    if not keep:
        shutil.rmtree(tmp)
    return {
        "series_source": what,
        "stable_seconds": stable_seconds,
        "poll_seconds": POLL_SECONDS,
        "routing": "worker i -> API replica i % M (no load balancer installed)",
        "skipped": skipped,
        "cpus": psutil.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "work_dir": str(tmp) if keep else None,
    }


def counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--slices", type=int, default=30, help="per series")
    parser.add_argument("--workers", type=counts, default=[1, 2, 4], help="e.g. 1,2,4")
    parser.add_argument("--replicas", type=counts, default=[1, 2], help="e.g. 1,2")
    parser.add_argument("--concurrency", type=int, default=1, help="series per worker at once")
    parser.add_argument("--stable-seconds", type=float, default=2.0, help="PACS_STABLE_SECONDS")
    parser.add_argument("--keep", action="store_true", help="keep the logs (kept on failure)")
    args = parser.parse_args()
    report = run(args.series, args.slices, args.workers, args.replicas, args.concurrency,
                 args.stable_seconds, args.keep)  # fmt: skip
    rows = report["rows"]
    print()
    print(f"{report['series_source']}; {report['routing']}; stable wait {args.stable_seconds} s")
    print(table(rows, COLUMNS))
    for note in report["skipped"]:
        print(f"skipped: {note} (no load balancer: the extra replicas would get nothing)")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "pacs_throughput.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
