"""Load and soak test: the API started exactly as ``make serve`` starts it, under mixed traffic.

    python -m tests.load.soak --requests 10000 --concurrency 32 [--warmup 500] [--json out.json]

Starts ``python -m uvicorn backend.app.main:app --host 127.0.0.1 --port <free port>`` with
``MODEL_DIR=ml_model/models/default`` from the repository root, waits for ``/ready``, then
sends, with aiohttp at the given concurrency, a deterministic mix of

* ``valid``   (50 %): ``POST /predict``, a CT-like PNG of varying size -> 200;
* ``invalid`` (25 %): ``POST /predict``, a file of the hostile corpus -> its documented 4xx;
* ``batch``   (25 %): ``POST /predict/batch``, 4 files one of which is bad -> 200 with
  exactly that entry an error.

A warm-up phase with the same mix runs first; the server's RSS (psutil) is read after
it and at the end, both idle and trimmed (``settled_rss``), and sampled during the run.
Reported: counts by status, 5xx, connection errors, responses that were not what the
request should get, RSS, latency percentiles per kind, throughput, and the server's log
checked for tracebacks.
Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from PIL import Image

from tests.backend.hostile.corpus import FILE_CASES, encode

REPO_ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = "ml_model/models/default"  # the Makefile's default, relative to the repo root
KINDS = ("valid", "valid", "invalid", "batch")  # 50 / 25 / 25 %
BATCH_SIZE = 4
# Which of the chunks' RSS growths is the leak figure: the lower quartile (the second
# smallest of five), so that up to three chunks may grow for good once and a leak, which
# grows every chunk, still shows.
STEP_QUANTILE = 0.25
READY_TIMEOUT_S = 300.0


# --- payloads ----------------------------------------------------------------------------


def ct_like_png(width: int, height: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = np.hypot((xx - width / 2) / (width / 3), (yy - height / 2) / (height / 3))
    body = np.where(radius < 1.0, 90.0, 10.0) + np.where(np.abs(radius - 0.6) < 0.1, 140.0, 0.0)
    pixels = np.clip(body + rng.normal(0, 8, body.shape), 0, 255).astype(np.uint8)
    return encode(Image.fromarray(pixels), "PNG")


@dataclass(frozen=True)
class Payloads:
    valid: list[bytes]
    invalid: list[tuple[str, bytes, int]]  # (case id, bytes, expected status)

    @classmethod
    def build(cls) -> Payloads:
        sizes = [(512, 512), (256, 256), (640, 480), (224, 224), (1024, 1024), (300, 500)]
        valid = [ct_like_png(w, h, seed) for seed, (w, h) in enumerate(sizes)]
        invalid = [
            (case.id, case.build(), case.status) for case in FILE_CASES if case.status != 200
        ]
        return cls(valid, invalid)


# --- the server, as `make serve` runs it -------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# The Makefile's UVICORN_FLAGS (tests/packaging/test_serve_flags.py holds them equal).
UVICORN_FLAGS = ["--http", "backend.app.core.http:BoundedHttpProtocol", "--timeout-keep-alive",
                 "5", "--timeout-graceful-shutdown", "20"]  # fmt: skip


def serve_command(port: int) -> list[str]:
    """``make serve``: ``$(PY) -m uvicorn backend.app.main:app --host $(HOST) --port $(PORT)
    $(UVICORN_FLAGS)``."""
    return [sys.executable, "-m", "uvicorn", "backend.app.main:app",
            "--host", "127.0.0.1", "--port", str(port), *UVICORN_FLAGS]  # fmt: skip


@contextmanager
def running_server(log_path: Path, port: int | None = None) -> Iterator[tuple[str, int]]:
    """Start the API, wait for /ready, yield (base URL, pid); stop it on exit."""
    port = port or free_port()
    env = {**os.environ, "MODEL_DIR": MODEL_DIR, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            serve_command(port), cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the server exited with {process.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(f"{base}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{base}/ready did not answer 200 in {READY_TIMEOUT_S:g} s")
            time.sleep(0.25)
        yield base, process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- traffic -----------------------------------------------------------------------------


@dataclass
class Phase:
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: Counter[str] = field(default_factory=Counter)
    connection_errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    duration_s: float = 0.0

    @property
    def requests(self) -> int:
        return sum(self.by_kind.values())

    @property
    def server_errors(self) -> int:
        return sum(count for status, count in self.statuses.items() if status >= 500)


def _form(files: list[tuple[str, str, bytes]]) -> aiohttp.FormData:
    form = aiohttp.FormData()
    for field_name, filename, data in files:
        form.add_field(field_name, data, filename=filename, content_type="application/octet-stream")
    return form


async def _one(
    session: aiohttp.ClientSession,
    base: str,
    index: int,
    payloads: Payloads,
    phase: Phase,
    kinds: tuple[str, ...] = KINDS,
) -> None:
    kind = kinds[index % len(kinds)]
    valid = payloads.valid[index % len(payloads.valid)]
    bad_id, bad, bad_status = payloads.invalid[index % len(payloads.invalid)]
    bad_at = (index // len(kinds)) % BATCH_SIZE  # where the bad file sits in a batch
    if kind == "valid":
        url, files, expected = "/predict", [("file", f"slice-{index}.png", valid)], 200
    elif kind == "invalid":
        url, files, expected = "/predict", [("file", f"bad-{index}.png", bad)], bad_status
    else:
        files = [("files", f"b{index}-{k}.png", bad if k == bad_at else valid)
                 for k in range(BATCH_SIZE)]  # fmt: skip
        url, expected = "/predict/batch", 200
    start = time.perf_counter()
    try:
        async with session.post(base + url, data=_form(files)) as response:
            body = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as exc:
        phase.connection_errors[type(exc).__name__] += 1
        phase.by_kind[kind] += 1
        return
    phase.latencies.setdefault(kind, []).append(time.perf_counter() - start)
    phase.by_kind[kind] += 1
    phase.statuses[status] += 1
    problem = None
    if status != expected:
        problem = f"{kind} {bad_id if kind == 'invalid' else ''}: {status} != {expected}"
    elif kind == "batch":
        results = json.loads(body)["results"]
        errors = [k for k, entry in enumerate(results) if "error" in entry]
        if len(results) != BATCH_SIZE or errors != [bad_at]:
            problem = f"batch with {bad_id} at {bad_at}: error entries at {errors}"
        elif results[bad_at]["status_code"] != bad_status:
            problem = f"batch entry for {bad_id}: {results[bad_at]['status_code']}"
    if problem and len(phase.unexpected) < 50:
        phase.unexpected.append(problem)
    elif problem:
        phase.unexpected.append("...")


async def run_phase(
    base: str,
    start: int,
    count: int,
    concurrency: int,
    payloads: Payloads,
    kinds: tuple[str, ...] = KINDS,
    phase: Phase | None = None,
) -> Phase:
    """Send requests ``start`` .. ``start + count - 1``; counted into ``phase`` if given."""
    phase = phase if phase is not None else Phase()
    next_index = start
    end = start + count

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal next_index
        while next_index < end:
            index = next_index
            next_index += 1
            await _one(session, base, index, payloads, phase, kinds)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    phase.duration_s += time.perf_counter() - began
    return phase


class RssSampler:
    """The server's resident memory, sampled every ``interval`` seconds in the background."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._task: asyncio.Task[None] | None = None

    def now(self) -> int:
        rss: int = self.process.memory_info().rss
        return rss

    def cpu_s(self) -> float:
        """CPU seconds the server has used (all threads): less noisy than wall time on a
        shared machine."""
        times = self.process.cpu_times()
        return float(times.user + times.system)

    async def _run(self) -> None:
        while True:
            self.samples.append(self.now())
            await asyncio.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()


# --- the whole run -----------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ms = np.asarray(values) * 1000.0
    return {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)} | {
        "max": round(float(ms.max()), 1)
    }


@dataclass
class SoakResult:
    requests: int
    warmup_requests: int
    concurrency: int
    statuses: dict[int, int]
    by_kind: dict[str, int]
    server_errors: int
    connection_errors: dict[str, int]
    unexpected: list[str]
    rss_after_warmup_mib: float
    rss_end_mib: float
    rss_peak_mib: float
    rss_growth: float  # (end - after warm-up) / after warm-up
    rss_settled_mib: list[float]  # idle and trimmed: after the warm-up and after each chunk
    rss_step_kib_per_request: float  # the lower quartile of the chunks' growths, per request
    rss_timeline_mib: list[float]  # sampled each second during the measured phase (<= 60)
    duration_s: float
    throughput_rps: float
    server_cpu_ms_per_request: float  # user + system CPU of the server process
    latency_ms: dict[str, dict[str, float]]
    startup_s: float
    server_log_lines: int
    server_log_problems: list[str]

    def summary(self) -> str:
        lines = [
            f"requests            {self.requests} (+{self.warmup_requests} warm-up), "
            f"concurrency {self.concurrency}",
            f"by kind             {self.by_kind}",
            f"statuses            {dict(sorted(self.statuses.items()))}",
            f"5xx                 {self.server_errors}",
            f"connection errors   {sum(self.connection_errors.values())} {self.connection_errors}",
            f"unexpected answers  {len(self.unexpected)} {self.unexpected[:5]}",
            f"RSS                 {self.rss_after_warmup_mib:.1f} MiB after warm-up -> "
            f"{self.rss_end_mib:.1f} MiB at the end ({self.rss_growth:+.1%}), "
            f"peak {self.rss_peak_mib:.1f} MiB",
            f"RSS idle            {self.rss_settled_mib} MiB after the warm-up and each "
            f"chunk; growth (lower quartile) {self.rss_step_kib_per_request:+.1f} KiB/request",
            f"duration            {self.duration_s:.1f} s, throughput "
            f"{self.throughput_rps:.1f} requests/s (server start {self.startup_s:.1f} s), "
            f"server CPU {self.server_cpu_ms_per_request:.1f} ms/request",
        ]
        lines += [f"latency {kind:<11} {values}" for kind, values in self.latency_ms.items()]
        lines.append(
            f"server log          {self.server_log_lines} lines, "
            f"{len(self.server_log_problems)} with a traceback or an error level"
        )
        return "\n".join(lines)


def _log_problems(log_path: Path) -> tuple[int, list[str]]:
    lines = log_path.read_text(errors="replace").splitlines()
    problems = [
        line[:300]
        for line in lines
        if "Traceback" in line or '"level": "ERROR"' in line or '"level": "CRITICAL"' in line
        or line.startswith(("ERROR:", "CRITICAL:"))
    ]  # fmt: skip
    return len(lines), problems


# Sequential 1024 x 1024 uploads after each phase, before RSS is read: each one empties the
# memory budget, so the server collects garbage and trims the heap (release_free_memory in
# backend/app/core/memory.py) every few of them, whatever the phase's tail left. RSS is the
# lowest read after each: the trimmed state, comparable after any phase. Read once, right
# after a phase, it was before or after that trim by chance (the short soak's growth read
# -12.9 % to +3.4 % in four local runs, +13.2 % in CI).
SETTLE_REQUESTS = 8


async def settled_rss(base: str, sampler: RssSampler, payloads: Payloads) -> int:
    """The server's RSS once idle and trimmed."""
    large = max(payloads.valid, key=len)
    reads = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        for index in range(SETTLE_REQUESTS):
            form = _form([("file", f"settle-{index}.png", large)])
            async with session.post(base + "/predict", data=form) as response:
                await response.read()
            await asyncio.sleep(0.2)  # the trim runs in a thread after the response is sent
            reads.append(sampler.now())
    return min(reads)


@dataclass
class Driven:
    phase: Phase
    settled: list[int]  # RSS idle and trimmed: after the warm-up and after each chunk
    samples: list[int]
    cpu_s: float


async def _drive(
    base: str,
    pid: int,
    requests: int,
    warmup: int,
    concurrency: int,
    payloads: Payloads,
    kinds: tuple[str, ...],
    chunks: int,
) -> Driven:
    await run_phase(base, 0, warmup, concurrency, payloads, kinds)
    phase = Phase()
    bounds = np.linspace(warmup, warmup + requests, chunks + 1).round().astype(int)
    with RssSampler(pid) as sampler:
        settled = [await settled_rss(base, sampler, payloads)]
        cpu_s = 0.0
        for start, end in itertools.pairwise(bounds.tolist()):
            cpu_before = sampler.cpu_s()
            await run_phase(base, start, end - start, concurrency, payloads, kinds, phase)
            cpu_s += sampler.cpu_s() - cpu_before
            settled.append(await settled_rss(base, sampler, payloads))
    return Driven(phase, settled, sampler.samples, cpu_s)


def run_soak(
    requests: int,
    concurrency: int,
    warmup: int | None = None,
    kinds: tuple[str, ...] = KINDS,
    chunks: int = 5,
) -> SoakResult:
    """``requests`` after ``warmup``, in ``chunks`` with RSS read idle and trimmed after each:
    a leak grows RSS by about the same amount in every chunk, while what a process keeps
    for good once (a thread's stack, a cache filled, the runtime's buffers for a larger batch
    than any before) grows it in a few; the lower quartile of the chunks' growths tells them
    apart."""
    warmup = warmup if warmup is not None else min(max(requests // 10, 100), 500)
    payloads = Payloads.build()
    with tempfile.TemporaryDirectory(prefix="soak-") as folder:
        log_path = Path(folder) / "server.log"
        started = time.perf_counter()
        with running_server(log_path) as (base, pid):
            startup_s = time.perf_counter() - started
            driven = asyncio.run(
                _drive(base, pid, requests, warmup, concurrency, payloads, kinds, chunks)
            )
        log_lines, log_problems = _log_problems(log_path)
    mib = 1024 * 1024
    phase, settled = driven.phase, driven.settled
    rss_warm, rss_end = settled[0], settled[-1]
    step = float(np.quantile(np.diff(settled), STEP_QUANTILE)) / (requests / chunks) / 1024
    return SoakResult(
        requests=phase.requests,
        warmup_requests=warmup,
        concurrency=concurrency,
        statuses=dict(phase.statuses),
        by_kind=dict(phase.by_kind),
        server_errors=phase.server_errors,
        connection_errors=dict(phase.connection_errors),
        unexpected=phase.unexpected,
        rss_after_warmup_mib=rss_warm / mib,
        rss_end_mib=rss_end / mib,
        rss_peak_mib=max([*driven.samples, *settled]) / mib,
        rss_growth=(rss_end - rss_warm) / rss_warm,
        rss_settled_mib=[round(v / mib, 1) for v in settled],
        rss_step_kib_per_request=round(step, 2),
        rss_timeline_mib=[
            round(v / mib, 1) for v in driven.samples[:: max(1, len(driven.samples) // 60)]
        ],
        duration_s=phase.duration_s,
        throughput_rps=phase.requests / phase.duration_s,
        server_cpu_ms_per_request=1000.0 * driven.cpu_s / max(phase.requests, 1),
        latency_ms={kind: _percentiles(v) for kind, v in sorted(phase.latencies.items())},
        startup_s=startup_s,
        server_log_lines=log_lines,
        server_log_problems=log_problems[:20],
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=None, help="default: 10%%, 100..500")
    parser.add_argument("--chunks", type=int, default=10, help="RSS read idle after each")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    parser.add_argument(
        "--mix",
        default=",".join(KINDS),
        help="request kinds, cycled: valid, invalid, batch (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    kinds = tuple(kind.strip() for kind in args.mix.split(","))
    if not kinds or not set(kinds) <= {"valid", "invalid", "batch"}:
        parser.error("--mix takes valid, invalid and batch")
    if args.chunks < 1 or args.requests < args.chunks:
        parser.error("--chunks takes 1 .. --requests")
    result = run_soak(args.requests, args.concurrency, args.warmup, kinds, args.chunks)
    print(result.summary())
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2))
    healthy = (
        result.server_errors == 0
        and not result.connection_errors
        and not result.unexpected
        and not result.server_log_problems
    )
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
