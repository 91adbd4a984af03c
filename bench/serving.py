"""Serving benchmark: the product's API against the peers, same model, same client, same machine.

Servers, each started fresh (cold start = exec to the first 200 of its readiness URL):

* ``api``: this product exactly as ``make serve`` runs it (ONNX Runtime, micro-batching);
* ``api (TensorFlow)``: the same app with ``INFERENCE_BACKEND=local`` (the reference runtime);
* ``litserve + onnxruntime``: the peer a user would write (``bench.litserve_peer``: LitServe's
  own batching, the same model.onnx and session settings);
* ``seed``: a Flask server calling ``model.predict`` per request (``bench.seed_server``).

An async load generator (aiohttp) posts real PNG bytes at several concurrency levels and
records throughput, latency percentiles, the server's idle RSS (after start-up) and peak
RSS under load (its process tree: LitServe runs workers).

    python -m bench.serving [--requests 400] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from bench.common import (
    RESULTS_DIR,
    PeakRss,
    api_server_command,
    free_port,
    rss_mb,
    sample_pngs,
    server_process,
    table,
)

CONCURRENCY = (1, 16, 64)


def servers(port: int) -> dict[str, dict[str, Any]]:
    """name -> command, readiness path, environment and the concurrency levels to drive."""
    return {
        "api": {"command": api_server_command(port), "ready": "/ready", "env": {}},
        "api (TensorFlow)": {
            "command": api_server_command(port),
            "ready": "/ready",
            "env": {"INFERENCE_BACKEND": "local"},
        },
        "litserve + onnxruntime": {
            "command": [sys.executable, "-m", "bench.litserve_peer", "--port", str(port)],
            "ready": "/health",
            "env": {},
        },
        "seed": {
            "command": [sys.executable, "-m", "bench.seed_server", "--port", str(port)],
            "ready": "/ready",
            "env": {},
            "levels": (1, 16),
            "share": 0.3,  # slow: fewer requests
        },
    }


async def _drive(url: str, files: list[bytes], concurrency: int) -> dict[str, Any]:
    latencies: list[float] = []
    errors = 0
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for data in files:
        queue.put_nowait(data)

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while not queue.empty():
            data = queue.get_nowait()
            form = aiohttp.FormData()
            form.add_field("file", data, filename="slice.png", content_type="image/png")
            started = time.perf_counter()
            try:
                async with session.post(url, data=form) as response:
                    await response.read()
                    if response.status != 200:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(files),
        "errors": errors,
        "throughput_rps": len(files) / elapsed,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def load_test(
    base_url: str, pid: int, requests: int, levels: tuple[int, ...] = CONCURRENCY
) -> list[dict[str, Any]]:
    files, _ = sample_pngs(requests)
    rows = []
    asyncio.run(_drive(f"{base_url}/predict", files[:16], 4))  # warm connections and caches
    for concurrency in levels:
        # A single client sends fewer requests: its latency settles quickly.
        count = max(50, requests // 4) if concurrency == 1 else requests
        with PeakRss(pid) as peak:
            row = asyncio.run(_drive(f"{base_url}/predict", files[:count], concurrency))
        row["rss_mb"] = peak.peak_mb
        rows.append(row)
    return rows


def measure(name: str, requests: int) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    spec = servers(port)[name]
    with server_process(spec["command"], base + spec["ready"], env=spec["env"]) as server:
        time.sleep(1.0)  # let start-up garbage settle
        idle = rss_mb(server.process.pid)
        count = int(requests * spec.get("share", 1.0))
        rows = load_test(base, server.process.pid, count, spec.get("levels", CONCURRENCY))
    return {
        "server": name,
        "cold_start_s": server.cold_start_s,
        "idle_rss_mb": idle,
        "loaded_rss_mb": max(row["rss_mb"] for row in rows),
        "levels": rows,
    }


def _median_rows(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number over rounds (per concurrency level)."""
    first = runs[0]
    merged: dict[str, Any] = {"server": first["server"]}
    for key in ("cold_start_s", "idle_rss_mb", "loaded_rss_mb"):
        merged[key] = statistics.median(run[key] for run in runs)
    levels = []
    for index, row in enumerate(first["levels"]):
        level = dict(row)
        for key in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms", "rss_mb"):
            level[key] = statistics.median(run["levels"][index][key] for run in runs)
        level["errors"] = sum(run["levels"][index]["errors"] for run in runs)
        levels.append(level)
    merged["levels"] = levels
    return merged


def run(
    requests: int = 400, rounds: int = 1, names: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """Every server, ``rounds`` times in alternation; medians per server and level."""
    _, source = sample_pngs(1)
    names = names or tuple(servers(0))
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            result = measure(name, requests)
            raw[name].append(result)
            print(f"  {name}: {_brief(result)}", flush=True)
    return {
        "images": source,
        "rounds": rounds,
        "servers": {name: _median_rows(runs) for name, runs in raw.items()},
        "raw": raw,
    }


def _brief(result: dict[str, Any]) -> str:
    levels = ", ".join(
        f"c={row['concurrency']}: {row['throughput_rps']:.0f} req/s p50 {row['p50_ms']:.1f} ms"
        for row in result["levels"]
    )
    return (
        f"cold start {result['cold_start_s']:.1f} s, idle {result['idle_rss_mb']:.0f} MB; {levels}"
    )


def summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per server: the issue's table (c=16 req/s, c=1 p50, cold start, RSS)."""
    rows = []
    for name, result in report["servers"].items():
        by_level = {row["concurrency"]: row for row in result["levels"]}
        row: dict[str, Any] = {
            "server": name,
            "c1_p50_ms": by_level.get(1, {}).get("p50_ms"),
            "c16_rps": by_level.get(16, {}).get("throughput_rps"),
            "c16_p50_ms": by_level.get(16, {}).get("p50_ms"),
            "c64_rps": by_level.get(64, {}).get("throughput_rps"),
            "cold_start_s": result["cold_start_s"],
            "idle_rss_mb": result["idle_rss_mb"],
            "loaded_rss_mb": result["loaded_rss_mb"],
        }
        rows.append(row)
    return rows


SUMMARY_COLUMNS = [
    "server",
    "c1_p50_ms",
    "c16_rps",
    "c16_p50_ms",
    "c64_rps",
    "c16_pct_of_ceiling",
    "cold_start_s",
    "idle_rss_mb",
    "loaded_rss_mb",
]
LEVEL_COLUMNS = [
    "server",
    "concurrency",
    "requests",
    "errors",
    "throughput_rps",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "rss_mb",
]


def level_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"server": name, **row}
        for name, result in report["servers"].items()
        for row in result["levels"]
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--servers", nargs="*", help="a subset of the servers, by name")
    args = parser.parse_args()
    report = run(args.requests, args.rounds, tuple(args.servers) if args.servers else None)
    print(table(summary_rows(report), SUMMARY_COLUMNS))
    print(table(level_rows(report), LEVEL_COLUMNS))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "serving.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
