"""Micro-batching benchmark: the real API under uvicorn on loopback, batching on vs off.

For each configuration a fresh ``uvicorn backend.app.main:app`` is started with its
environment; configurations are interleaved round by round so that background load on
the machine hits all of them alike. Measured per configuration:

* single-client latency: ``--requests`` sequential ``POST /predict`` with httpx
  (p50/p95 of the client-side time);
* throughput at concurrency 16 (``bench.serving``'s aiohttp load generator).

The seed-style Flask server (``bench.seed_server``) is measured at concurrency 16 too.

    python -m bench.batching [--rounds 3] [--requests 100] [--load-requests 320]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from typing import Any

import httpx
import numpy as np

from bench.common import (
    RESULTS_DIR,
    api_server_command,
    free_port,
    running_server,
    sample_pngs,
    table,
)
from bench.serving import _drive

CONFIGS: dict[str, dict[str, str]] = {
    "batching on (inter-op 2)": {"BATCHING": "true", "TF_INTER_OP_THREADS": "2"},
    "batching off (inter-op 2)": {"BATCHING": "false", "TF_INTER_OP_THREADS": "2"},
    "batching on (inter-op 1)": {"BATCHING": "true", "TF_INTER_OP_THREADS": "1"},
    "batching off (inter-op 1)": {"BATCHING": "false", "TF_INTER_OP_THREADS": "1"},
}
CONCURRENCY = 16


def single_client(base: str, files: list[bytes], requests: int) -> dict[str, float]:
    latencies = []
    with httpx.Client(timeout=60) as client:
        for data in files[:10]:  # warm the connection and the server's caches
            client.post(f"{base}/predict", files={"file": ("slice.png", data)})
        for i in range(requests):
            data = files[i % len(files)]
            started = time.perf_counter()
            response = client.post(f"{base}/predict", files={"file": ("slice.png", data)})
            latencies.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return {
        "p50_ms": float(np.percentile(latencies, 50)),
        "p95_ms": float(np.percentile(latencies, 95)),
    }


def loaded(base: str, files: list[bytes]) -> dict[str, Any]:
    asyncio.run(_drive(f"{base}/predict", files[:32], CONCURRENCY))  # warm-up
    return asyncio.run(_drive(f"{base}/predict", files, CONCURRENCY))


def measure_api(
    env: dict[str, str], files: list[bytes], load_files: list[bytes], requests: int
) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(api_server_command(port), f"{base}/ready", env=env):
        single = single_client(base, files, requests)
        load = loaded(base, load_files)
    return {**single, "rps_c16": load["throughput_rps"], "p50_c16_ms": load["p50_ms"]}


def measure_seed(files: list[bytes]) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "bench.seed_server", "--port", str(port)]
    with running_server(command, f"{base}/ready"):
        load = loaded(base, files)
    return {"rps_c16": load["throughput_rps"], "p50_c16_ms": load["p50_ms"]}


def run(rounds: int = 3, requests: int = 100, load_requests: int = 320) -> dict[str, Any]:
    files, source = sample_pngs(max(load_requests, requests))
    load_files = files[:load_requests]
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in [*CONFIGS, "seed"]}
    for round_index in range(rounds):
        for name, env in CONFIGS.items():
            row = measure_api(env, files, load_files, requests)
            row["round"] = round_index
            raw[name].append(row)
            print(name, row, flush=True)
        seed = measure_seed(load_files[: load_requests // 2])
        seed["round"] = round_index
        raw["seed"].append(seed)
        print("seed", seed, flush=True)
    summary = []
    for name, rows in raw.items():
        entry: dict[str, Any] = {"config": name}
        for key in ("p50_ms", "p95_ms", "rps_c16", "p50_c16_ms"):
            values = [row[key] for row in rows if key in row]
            if values:
                entry[key] = statistics.median(values)
        summary.append(entry)
    load = os.getloadavg()
    return {"images": source, "rounds": rounds, "loadavg": load, "summary": summary, "raw": raw}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--load-requests", type=int, default=320)
    args = parser.parse_args()
    report = run(args.rounds, args.requests, args.load_requests)
    print(f"\nmachine: {os.cpu_count()} cores; load average at the end {report['loadavg']}")
    print(table(report["summary"], ["config", "p50_ms", "p95_ms", "rps_c16", "p50_c16_ms"]))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "batching.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
