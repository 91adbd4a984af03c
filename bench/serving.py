"""Serving benchmark: the project's API against a seed-style server, same model, same machine.

An async load generator (aiohttp) posts real PNG bytes at several concurrency levels
and records throughput, latency percentiles and the server's RSS.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from bench.common import api_server_command, free_port, rss_mb, running_server, sample_pngs

CONCURRENCY = (1, 4, 16, 64)


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
    asyncio.run(_drive(f"{base_url}/predict", files[:8], 2))  # warm connections and caches
    for concurrency in levels:
        row = asyncio.run(_drive(f"{base_url}/predict", files, concurrency))
        row["rss_mb"] = rss_mb(pid)
        rows.append(row)
    return rows


def run(requests: int = 400, seed_requests: int = 120) -> dict[str, Any]:
    _, source = sample_pngs(1)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with running_server(api_server_command(port), f"{base}/ready") as server:
        ours = load_test(base, server.pid, requests)
    seed_port = free_port()
    seed_base = f"http://127.0.0.1:{seed_port}"
    seed_command = [sys.executable, "-m", "bench.seed_server", "--port", str(seed_port)]
    with running_server(seed_command, f"{seed_base}/ready") as server:
        seed = load_test(seed_base, server.pid, seed_requests)
    ratios = {
        row["concurrency"]: row["throughput_rps"] / seed_row["throughput_rps"]
        for row, seed_row in zip(ours, seed, strict=True)
    }
    return {"images": source, "project": ours, "seed": seed, "throughput_ratio": ratios}


if __name__ == "__main__":
    print(run())
