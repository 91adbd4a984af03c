"""Compute ceiling: a runtime's own forward throughput in-process, no HTTP.

Each runtime runs in a fresh interpreter (``python -m bench.ceiling --runtime NAME``), so
ONNX Runtime is measured without TensorFlow loaded beside it, and rounds alternate between
runtimes so background load hits them alike:

* ``onnx``: ``OnnxForward`` exactly as the server builds it (the serving default: batches
  on one single-thread session per CPU, a lone image on the multi-threaded session);
* ``tensorflow``: ``KerasForward`` (``INFERENCE_BACKEND=local``, the reference).

    python -m bench.ceiling [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

from bench.common import REPO_ROOT, sample_images
from ml_model.config import DEFAULT_MODEL_DIR

BATCH = 16  # the micro-batcher's largest batch
RUNTIMES = ("onnx", "tensorflow")


def _forward(runtime: str) -> tuple[Any, tuple[float, float]]:
    """The runtime's forward on the default bundle, and the bundle's DICOM window."""
    from ml_model.inference.bundle import Bundle
    from ml_model.inference.runtimes import load_runtime

    bundle = Bundle.load(DEFAULT_MODEL_DIR)
    forward, _ = load_runtime("local" if runtime == "tensorflow" else runtime, bundle)
    return forward, bundle.window


def measure(runtime: str, seconds: float = 6.0) -> dict[str, Any]:
    """Images/s at batch ``BATCH`` and the single-image latency, in this process."""
    started = time.perf_counter()
    forward, window = _forward(runtime)
    load_s = time.perf_counter() - started
    images = sample_images(BATCH, forward.img_size, window)
    forward(images)  # trace / allocate once
    forward(images[:1])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forward(images)
        done += BATCH
    batched = (time.perf_counter() - started) / done
    single = []
    for image in images:
        t = time.perf_counter()
        forward(image[np.newaxis])
        single.append(time.perf_counter() - t)
    by_batch = {}  # ms per image at smaller batches: where the per-image cost is lowest
    for size in (4, 8):
        forward(images[:size])
        t = time.perf_counter()
        for start in range(0, 2 * BATCH, size):
            forward(images[start % BATCH : start % BATCH + size])
        by_batch[f"ms_per_image_b{size}"] = (time.perf_counter() - t) / (2 * BATCH) * 1000
    return {
        "runtime": runtime,
        "batch": BATCH,
        "images_per_s": 1.0 / batched,
        "ms_per_image_batched": batched * 1000,
        "ms_single_image": float(np.median(single) * 1000),
        **by_batch,
        "load_s": load_s,
    }


def run(rounds: int = 3, runtimes: tuple[str, ...] = RUNTIMES) -> dict[str, Any]:
    """Median over ``rounds`` alternating fresh processes per runtime."""
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in runtimes}
    for _ in range(rounds):
        for name in runtimes:
            result = subprocess.run(
                [sys.executable, "-m", "bench.ceiling", "--runtime", name, "--json"],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
            raw[name].append(json.loads(result.stdout.strip().splitlines()[-1]))
    summary = {
        name: {
            key: statistics.median(row[key] for row in rows)
            for key in (
                "images_per_s",
                "ms_per_image_batched",
                "ms_single_image",
                "ms_per_image_b4",
                "ms_per_image_b8",
                "load_s",
            )
        }
        | {"runtime": name, "batch": BATCH}
        for name, rows in raw.items()
    }
    return {"model": _model_name(), "batch": BATCH, "runtimes": summary, "raw": raw}


def _model_name() -> str:
    from ml_model.inference.bundle import Bundle

    bundle = Bundle.load(DEFAULT_MODEL_DIR)
    return f"{bundle.card.name} {bundle.card.version}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=RUNTIMES, help="measure one runtime, here")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.runtime:
        result = measure(args.runtime)
        print(json.dumps(result) if args.json else result)
        return
    report = run(args.rounds)
    for row in report["runtimes"].values():
        print(row)


if __name__ == "__main__":
    main()
