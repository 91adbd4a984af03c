"""Compute ceiling: the model's own batched forward throughput in-process (batch 32)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.inference.core import Predictor

BATCH = 32


def run(batches: int = 20) -> dict[str, Any]:
    predictor = Predictor(DEFAULT_MODEL_DIR)
    size = predictor.img_size
    images = np.random.default_rng(0).integers(0, 255, (BATCH, size, size, 3), dtype=np.uint8)
    predictor.run(images)  # trace once
    started = time.perf_counter()
    for _ in range(batches):
        predictor.run(images)
    elapsed = time.perf_counter() - started
    single = []
    for image in images[:16]:
        t = time.perf_counter()
        predictor.run(image)
        single.append(time.perf_counter() - t)
    return {
        "model": f"{predictor.name} {predictor.version}",
        "batch": BATCH,
        "images_per_s": batches * BATCH / elapsed,
        "ms_per_image_batched": elapsed / (batches * BATCH) * 1000,
        "ms_single_image": float(np.median(single) * 1000),
    }


if __name__ == "__main__":
    print(run())
