"""Admission-control benchmark (issue 16): the real server, as ``make serve`` starts it, under
the amplification cases, alone and eight at once, plus slow clients, odd methods and SIGTERM.

    python -m tests.load.attack [--only alone,burst,methods,stalls,sigterm] [--json out.json]

Prints numbers, asserts nothing (the tests are ``tests/backend/hostile/test_admission.py``):

* start-up: seconds until the port accepts, ``/health`` 200 and ``/ready`` 200;
* each case of ``tests/backend/hostile/amplification.py`` alone: status, wall time, server RSS
  growth at its peak (sampled every 20 ms) and the response size;
* eight at once (a mix of the cases): statuses, peak RSS growth, ``/ready`` latency
  percentiles while they run, RSS a few seconds after (what went back to the OS);
* 5,000 requests with random method names: the size of ``/metrics`` before and after;
* a partial request header then silence, and a body that stalls: seconds until the server
  closes the connection (capped);
* SIGTERM with four stalled uploads open: seconds until the process exits.

Only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

from tests.backend.hostile.amplification import CASES, Amplification, case
from tests.load.soak import MODEL_DIR, REPO_ROOT, free_port, serve_command

MIB = 1024 * 1024
BURST = [  # eight at once: every amplification case, the worst twice
    "zip-1000-members-of-1-mib", "zip-1000-members-of-1-mib", "zip-494-mib-stored",
    "float-tiff-40-mp", "palette-png-40-mp", "rle-dicom-40-mp", "png-1.7-m-empty-chunks",
    "explain-2048-squared",
]  # fmt: skip
# ...and eight that pass the per-request limit: the process budget decides (503 + Retry-After).
ADMITTED_BURST = ["palette-png-40-mp"] * 5 + ["explain-2048-squared"] * 3
STALL_CAP_S = 90.0


class Sampler:
    """The server's RSS every ``interval`` s in a thread; ``peak`` since the last ``reset``."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        value: int = self.process.memory_info().rss
        return value

    def reset(self) -> int:
        self.peak = self.rss()
        return self.peak

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.rss())
            except psutil.Error:
                return
            time.sleep(self.interval)

    def __enter__(self) -> Sampler:
        self.reset()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# What a bare `pip install uvicorn` serves with (the image has no httptools); plain h11 on a
# checkout from before the bounded protocol existed (for "before" numbers).
H11_PROTOCOL = (
    "backend.app.core.http:BoundedH11Protocol"
    if (REPO_ROOT / "backend" / "app" / "core" / "http.py").is_file()
    else "h11"
)


@contextmanager
def server(
    log_path: Path, env: dict[str, str] | None = None, http: str | None = None
) -> Iterator[dict[str, Any]]:
    """Start the API as ``make serve`` does; yield base URL, pid, process and start-up times."""
    port = free_port()
    full_env = {**os.environ, "MODEL_DIR": MODEL_DIR, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})}
    full_env.pop("LOAD_MODEL_IN_BACKGROUND", None)  # the product's default
    command = serve_command(port)
    if http is not None and "--http" in command:
        command[command.index("--http") + 1] = http
    elif http is not None:
        command += ["--http", http]
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    times: dict[str, float] = {}
    try:
        while "ready" not in times:
            if process.poll() is not None:
                raise RuntimeError(log_path.read_text(errors="replace")[-3000:])
            now = time.perf_counter() - began
            if "port" not in times:
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        times["port"] = now
            for name, path in (("health", "/health"), ("ready", "/ready")):
                if name in times or "port" not in times:
                    continue
                try:
                    with urllib.request.urlopen(base + path, timeout=2) as response:
                        if response.status == 200:
                            times[name] = time.perf_counter() - began
                except urllib.error.HTTPError as error:
                    times.setdefault(f"{name}_first_status", float(error.code))
                except OSError:
                    pass
            if now > 300:
                raise TimeoutError("no /ready 200 in 300 s")
            time.sleep(0.05)
        yield {"base": base, "port": port, "pid": process.pid, "process": process, "times": times}
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def _form(item: Amplification, data: bytes) -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field(item.field, data, filename=item.filename,
                   content_type="application/octet-stream")  # fmt: skip
    return form


async def send(
    session: aiohttp.ClientSession, base: str, item: Amplification, data: bytes
) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        async with session.post(
            base + item.path, params=dict(item.params), data=_form(item, data)
        ) as response:
            body = await response.read()
            status = response.status
            retry_after = response.headers.get("Retry-After")
    except (aiohttp.ClientError, TimeoutError) as exc:
        return {"case": item.id, "status": type(exc).__name__,
                "s": round(time.perf_counter() - start, 2)}  # fmt: skip
    detail = ""
    if status != 200:
        try:
            detail = str(json.loads(body).get("detail", ""))[:160]
        except ValueError:
            detail = body[:160].decode(errors="replace")
    return {
        "case": item.id,
        "status": status,
        "s": round(time.perf_counter() - start, 2),
        "response_bytes": len(body),
        "retry_after": retry_after,
        "detail": detail,
    }


async def one_alone(base: str, pid: int, item: Amplification, data: bytes) -> dict[str, Any]:
    """One case on an idle server: status, time, peak RSS growth, server CPU."""
    await asyncio.sleep(2.0)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with Sampler(pid) as sampler:
            before = sampler.reset()
            cpu = psutil.Process(pid).cpu_times()
            result = await send(session, base, item, data)
            await asyncio.sleep(0.1)
    after_cpu = psutil.Process(pid).cpu_times()
    result["rss_growth_mib"] = round((sampler.peak - before) / MIB, 1)
    result["server_cpu_s"] = round((after_cpu.user + after_cpu.system) - (cpu.user + cpu.system), 2)
    print(json.dumps(result), flush=True)
    return result


def alone(log_dir: Path, payloads: dict[str, bytes]) -> list[dict[str, Any]]:
    """Each case on a fresh server: memory one case left behind cannot hide the next's."""
    results = []
    for item in CASES:
        with server(log_dir / f"alone-{item.id}.log") as running:
            results.append(
                asyncio.run(one_alone(running["base"], running["pid"], item, payloads[item.id]))
            )
    return results


_POLLER = """
import http.client, json, os, sys, time
port, stop = int(sys.argv[1]), sys.argv[2]
latencies, statuses = [], {}
connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
while not os.path.exists(stop):
    start = time.perf_counter()
    try:
        connection.request("GET", "/ready")
        response = connection.getresponse()
        response.read()
        key = str(response.status)
    except OSError as exc:
        key = type(exc).__name__
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies.append((time.perf_counter() - start) * 1000.0)
    statuses[key] = statuses.get(key, 0) + 1
    time.sleep(0.02)
print(json.dumps({"ms": latencies, "statuses": statuses}))
"""


async def burst(
    base: str,
    port: int,
    pid: int,
    payloads: dict[str, bytes],
    log_dir: Path,
    names: list[str] = BURST,
) -> dict[str, Any]:
    """Eight amplification uploads at once while another process polls /ready every 20 ms
    (its own process: the uploads' client work never delays a probe)."""
    await asyncio.sleep(3.0)
    server_log = log_dir / "server.log"
    log_start = server_log.stat().st_size if server_log.exists() else 0
    stop = log_dir / "stop-poller"
    stop.unlink(missing_ok=True)
    poller = subprocess.Popen(
        [sys.executable, "-c", _POLLER, str(port), str(stop)], stdout=subprocess.PIPE
    )
    await asyncio.sleep(0.5)
    timeout = aiohttp.ClientTimeout(total=600)
    with Sampler(pid) as sampler:
        before = sampler.reset()
        began = time.perf_counter()
        async with aiohttp.ClientSession(timeout=timeout) as session:
            results = await asyncio.gather(
                *(send(session, base, case(name), payloads[name]) for name in names)
            )
        wall = time.perf_counter() - began
        peak = sampler.peak
    stop.touch()
    out, _ = poller.communicate(timeout=60)
    polled = json.loads(out)
    await asyncio.sleep(5.0)
    settled = psutil.Process(pid).memory_info().rss
    ms = np.asarray(polled["ms"] or [0.0])
    inside = []  # the server's own time per /ready (its access log), without the client's
    if server_log.exists():
        with open(server_log, "rb") as log:
            log.seek(log_start)
            for line in log.read().decode(errors="replace").splitlines():
                if '"path": "/ready"' in line:
                    with contextlib.suppress(ValueError):
                        inside.append(float(json.loads(line)["latency_ms"]))
    server_ms = np.asarray(inside or [0.0])
    summary = {
        "mix": dict(Counter(names)),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
        "results": results,
        "wall_s": round(wall, 2),
        "rss_before_mib": round(before / MIB, 1),
        "rss_peak_growth_mib": round((peak - before) / MIB, 1),
        "rss_5s_after_mib": round(settled / MIB, 1),
        "rss_kept_after_mib": round((settled - before) / MIB, 1),
        "ready_probes": polled["statuses"],
        "ready_ms": {f"p{q}": round(float(np.percentile(ms, q)), 1) for q in (50, 95, 99)}
        | {"max": round(float(ms.max()), 1)},
        "ready_server_ms": {
            f"p{q}": round(float(np.percentile(server_ms, q)), 1) for q in (50, 99)
        },
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "results"}), flush=True)
    for result in results:
        if result["status"] not in (200, 413):
            print("   ", json.dumps(result), flush=True)
    return summary


async def odd_methods(base: str, count: int = 5_000) -> dict[str, Any]:
    rng = random.Random(0)
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/metrics") as response:
            before = len(await response.read())
        statuses: Counter[int] = Counter()
        for _ in range(count):
            method = "".join(rng.choices(string.ascii_uppercase, k=12))
            async with session.request(method, base + "/predict") as response:
                await response.read()
                statuses[response.status] += 1
        start = time.perf_counter()
        async with session.get(base + "/metrics") as response:
            after = len(await response.read())
            metrics_status = response.status
        scrape_s = time.perf_counter() - start
    result = {
        "requests": count,
        "statuses": dict(statuses),
        "metrics_bytes_before": before,
        "metrics_bytes_after": after,
        "metrics_status": metrics_status,
        "scrape_s": round(scrape_s, 3),
    }
    print(json.dumps(result), flush=True)
    return result


def _closed_after(sock: socket.socket, cap: float) -> float | None:
    """Seconds until the peer closes (or resets) the connection; None past ``cap``."""
    start = time.perf_counter()
    sock.settimeout(1.0)
    while time.perf_counter() - start < cap:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return round(time.perf_counter() - start, 1)
        if not data:
            return round(time.perf_counter() - start, 1)
    return None


def _stalled_upload(port: int, sent_mib: int = 64, declared_mib: int = 256) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    boundary = "stall"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
        'filename="s.zip"\r\nContent-Type: application/zip\r\n\r\n'
    ).encode()
    sock.sendall(
        (
            "POST /predict/study HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            f"Content-Length: {declared_mib * MIB}\r\n\r\n"
        ).encode()
        + head
    )
    chunk = b"\0" * MIB
    for _ in range(sent_mib):
        sock.sendall(chunk)
    return sock


def stalls(port: int, pid: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")
        result["partial_header_closed_after_s"] = _closed_after(sock, STALL_CAP_S)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        result["silent_connection_closed_after_s"] = _closed_after(sock, STALL_CAP_S)
    before = psutil.Process(pid).memory_info().rss
    sock = _stalled_upload(port)
    time.sleep(1.0)
    result["stalled_body_rss_growth_mib"] = round(
        (psutil.Process(pid).memory_info().rss - before) / MIB, 1
    )
    result["stalled_body_closed_after_s"] = _closed_after(sock, STALL_CAP_S)
    sock.close()
    time.sleep(1.0)
    result["rss_after_stalled_body_closed_mib"] = round(
        (psutil.Process(pid).memory_info().rss - before) / MIB, 1
    )
    print(json.dumps(result), flush=True)
    return result


def sigterm(log_dir: Path) -> dict[str, Any]:
    with server(log_dir / "sigterm.log") as running:
        socks = [_stalled_upload(running["port"], sent_mib=16) for _ in range(4)]
        time.sleep(1.0)
        process: subprocess.Popen[bytes] = running["process"]
        start = time.perf_counter()
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=120)
            exit_s: float | None = round(time.perf_counter() - start, 1)
        except subprocess.TimeoutExpired:
            code, exit_s = None, None
        for sock in socks:
            sock.close()
    result = {"sigterm_exit_s": exit_s, "exit_code": code}
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="alone,burst,methods,stalls,sigterm")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--bursts", type=int, default=3, help="eight-at-once rounds")
    parser.add_argument("--keep-logs", type=Path, default=None, help="copy server logs here")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    payloads = {item.id: item.build() for item in CASES}
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="attack-") as folder:
        log_dir = Path(folder)
        if "alone" in parts:
            report["alone"] = alone(log_dir, payloads)
        if parts & {"burst", "methods", "stalls"}:
            with server(log_dir / "server.log") as running:
                report["startup_s"] = {k: round(v, 2) for k, v in running["times"].items()}
                print(json.dumps({"startup_s": report["startup_s"]}), flush=True)
                base, pid = running["base"], running["pid"]
                report["rss_idle_mib"] = round(psutil.Process(pid).memory_info().rss / MIB, 1)
                if "burst" in parts:
                    for _ in range(args.bursts):
                        for mix in (BURST, ADMITTED_BURST):
                            report.setdefault("burst", []).append(
                                asyncio.run(
                                    burst(base, running["port"], pid, payloads, log_dir, mix)
                                )
                            )
                if "methods" in parts:
                    report["methods"] = asyncio.run(odd_methods(base))
                if "stalls" in parts:
                    report["stalls"] = stalls(running["port"], pid)
            log_text = (log_dir / "server.log").read_text(errors="replace")
            if args.keep_logs:
                args.keep_logs.write_text(log_text)
            report["server_log_tracebacks"] = log_text.count("Traceback")
        if "methods" in parts:  # h11 (no httptools, as in the image) accepts any method token
            with server(log_dir / "h11.log", http=H11_PROTOCOL) as running:
                report["methods_h11"] = asyncio.run(odd_methods(running["base"]))
        if "sigterm" in parts:
            report["sigterm"] = sigterm(log_dir)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
