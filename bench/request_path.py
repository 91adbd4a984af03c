"""Where a request's time goes: per-thread CPU of the live API under load, and each stage of
the request path timed alone.

1. The API (``bench.profiled_api``: ``make serve``'s app plus a thread-name map) takes
   ``--requests`` uploads at concurrency 16; the CPU time of every thread of the server
   (``/proc/PID/task/*/stat``) is read before and after, grouped by what runs there, and
   divided by the request count. The load generator's own CPU is reported too: on a small
   machine it shares the cores.
2. In this process, single-threaded, the median time of each stage of one request:
   multipart parsing (Starlette, as FastAPI parses), PNG decode, resize to the model input,
   the forward (ONNX Runtime, per image at batch 16 and alone) and the response JSON.

    python -m bench.request_path [--requests 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from bench.common import RESULTS_DIR, free_port, sample_pngs, server_process, table
from bench.serving import _drive
from ml_model.config import DEFAULT_MODEL_DIR

CONCURRENCY = 16
GROUPS = {
    "event loop": "HTTP parsing, multipart parsing, middleware, response JSON",
    "route threads": "read the upload, decode + resize, wait, verdict (FastAPI threadpool)",
    "micro-batcher": "the forward: the batch's calling thread (a lone image runs here)",
    "onnx lanes": "the forward: one single-thread ONNX Runtime session per CPU (batches)",
    "onnxruntime pool": "the forward: ONNX Runtime's intra-op threads (native)",
    "other": "other threads (metrics, logging, the bench's thread-name probe)",
}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of ``pid``."""
    tick = os.sysconf("SC_CLK_TCK")
    times = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        times[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return times


def group_of(name: str | None) -> str:
    if name is None:
        return "onnxruntime pool"
    if name == "MainThread":
        return "event loop"
    if name.startswith("AnyIO worker thread"):
        return "route threads"
    if name == "micro-batcher":
        return "micro-batcher"
    if name.startswith("onnx-lane"):
        return "onnx lanes"
    return "other"


def per_thread(requests: int) -> dict[str, Any]:
    """The API under concurrency-16 load: CPU ms per request by thread group."""
    files, _ = sample_pngs(requests)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        names_file = Path(folder, "threads.json")
        command = [
            sys.executable,
            "-m",
            "bench.profiled_api",
            "--port",
            str(port),
            "--threads-file",
            str(names_file),
        ]
        with server_process(command, f"{base}/ready") as server:
            pid = server.process.pid
            asyncio.run(_drive(f"{base}/predict", files[:32], CONCURRENCY))  # warm-up
            answer = httpx.post(f"{base}/predict", files={"file": ("s.png", files[0])}).json()
            client = psutil.Process()
            before, client_before = thread_cpu(pid), sum(client.cpu_times()[:2])
            started = time.perf_counter()
            load = asyncio.run(_drive(f"{base}/predict", files, CONCURRENCY))
            elapsed = time.perf_counter() - started
            after, client_after = thread_cpu(pid), sum(client.cpu_times()[:2])
            time.sleep(0.6)
            names = {int(k): v for k, v in json.loads(names_file.read_text()).items()}
    totals = dict.fromkeys(GROUPS, 0.0)
    for tid, seconds in after.items():
        totals[group_of(names.get(tid))] += seconds - before.get(tid, 0.0)
    server_cpu = sum(totals.values())
    rows = [
        {
            "threads": group,
            "what": GROUPS[group],
            "cpu_ms_per_request": 1000 * seconds / requests,
            "pct_of_server_cpu": 100 * seconds / server_cpu if server_cpu else 0.0,
        }
        for group, seconds in totals.items()
    ]
    return {
        "requests": requests,
        "throughput_rps": load["throughput_rps"],
        "server_cpu_ms_per_request": 1000 * server_cpu / requests,
        "server_cores_busy": server_cpu / elapsed,
        "client_cpu_ms_per_request": 1000 * (client_after - client_before) / requests,
        "rows": rows,
        "answer": answer,
    }


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _multipart_parser(data: bytes) -> Callable[[], Any]:
    from starlette.requests import Request

    request = httpx.Request(
        "POST", "http://x/predict", files={"file": ("slice.png", data, "image/png")}
    )
    body = request.read()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [(b"content-type", request.headers["content-type"].encode())],
    }
    loop = asyncio.new_event_loop()

    async def parse() -> None:
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            chunk, sent = (b"" if sent else body), True
            return {"type": "http.request", "body": chunk, "more_body": False}

        form = await Request(scope, receive).form()
        await form.close()

    return lambda: loop.run_until_complete(parse())


def stages(answer: dict[str, Any], repeats: int = 50) -> list[dict[str, Any]]:
    """Each stage of one request alone, single-threaded, in this process."""
    from backend.app.schemas import PredictionResponse
    from ml_model.imaging.transforms import decode_image, gray_to_model_input
    from ml_model.inference.bundle import Bundle
    from ml_model.inference.forward_onnx import OnnxForward

    files, _ = sample_pngs(16)
    data = files[0]
    bundle = Bundle.load(DEFAULT_MODEL_DIR)
    forward = OnnxForward.from_bundle(bundle)
    window = bundle.window
    gray = decode_image(data, *window)
    size = forward.img_size
    batch = np.stack([gray_to_model_input(decode_image(f, *window), size) for f in files])
    rows = [
        ("multipart parse (Starlette)", _median_ms(_multipart_parser(data), repeats)),
        (
            f"PNG decode ({gray.shape[1]}x{gray.shape[0]})",
            _median_ms(lambda: decode_image(data, *window), repeats),
        ),
        (
            f"resize to the model input ({size}x{size}x3)",
            _median_ms(lambda: gray_to_model_input(gray, size), repeats),
        ),
        (
            "forward, per image at batch 16 (ONNX Runtime)",
            _median_ms(lambda: forward(batch), max(5, repeats // 10)) / len(batch),
        ),
        ("forward, one image alone", _median_ms(lambda: forward(batch[:1]), repeats)),
        (
            "response model + JSON",
            _median_ms(
                lambda: PredictionResponse.model_validate(answer).model_dump_json(
                    exclude_unset=True
                ),
                repeats,
            ),
        ),
    ]
    return [{"stage": name, "ms": ms} for name, ms in rows]


def run(requests: int = 400) -> dict[str, Any]:
    threads = per_thread(requests)
    return {"threads": threads, "stages": stages(threads.pop("answer"))}


def print_report(report: dict[str, Any]) -> None:
    t = report["threads"]
    print(
        f"server: {t['server_cpu_ms_per_request']:.1f} CPU ms per request "
        f"({t['server_cores_busy']:.2f} cores busy at {t['throughput_rps']:.0f} req/s); "
        f"the load client: {t['client_cpu_ms_per_request']:.1f} CPU ms per request"
    )
    print(table(t["rows"], ["threads", "cpu_ms_per_request", "pct_of_server_cpu", "what"]))
    print()
    print(table(report["stages"], ["stage", "ms"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    args = parser.parse_args()
    report = run(args.requests)
    print_report(report)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "request_path.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
