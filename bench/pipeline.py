"""Training input pipeline: the project's tf.data pipeline against the seeds' approach.

The seeds used Keras' ImageDataGenerator.flow_from_directory (rescale + augmentation,
decoding with PIL in Python). Keras 3 keeps it only under keras.src.legacy; a plain PIL
loop stands in when even that is gone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.config import SHARED_DATA_DIR
from ml_model.data.dataset import find_images, make_dataset

BATCH = 16
IMG_SIZE = 224


def _rate(images: int, seconds: float) -> float:
    return images / seconds if seconds > 0 else float("inf")


def tf_data_rates(data: Path) -> dict[str, float]:
    """Images/s for one cold epoch (decode) and one cached epoch (augment only)."""
    records = find_images(data)
    # Warm-up on a few files: TensorFlow starts its thread pools and runtime on first use,
    # a one-off per process that is not the pipeline's per-epoch cost.
    warm = make_dataset(
        [r.path for r in records[:32]],
        [r.label for r in records[:32]],
        IMG_SIZE,
        BATCH,
        training=True,
    )
    for _ in warm:
        pass
    dataset = make_dataset(
        [r.path for r in records], [r.label for r in records], IMG_SIZE, BATCH, training=True
    )
    rates = {}
    for label in ("cold", "cached"):
        started = time.perf_counter()
        count = sum(int(x.shape[0]) for x, _ in dataset)
        rates[label] = _rate(count, time.perf_counter() - started)
    return rates


def seed_rates(data: Path) -> tuple[str, dict[str, float]]:
    """The seed approach, same folder, same batch size, same augmentation kinds."""
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        return "plain PIL loop", _pil_loop_rates(data)
    generator = ImageDataGenerator(
        rescale=1 / 255.0,
        rotation_range=18,
        zoom_range=0.1,
        width_shift_range=0.05,
        height_shift_range=0.05,
        brightness_range=(0.9, 1.1),
    )
    class_root = data / "train" if (data / "train").is_dir() else data
    flow = generator.flow_from_directory(
        str(class_root),
        target_size=(IMG_SIZE, IMG_SIZE),
        batch_size=BATCH,
        class_mode="binary",
        shuffle=True,
        seed=0,
    )
    next(flow)  # warm-up batch, as for tf.data
    rates = {}
    for label in ("cold", "cached"):  # the generator has no cache: both epochs decode
        started = time.perf_counter()
        count = 0
        for _ in range(len(flow)):
            x, _ = next(flow)
            count += len(x)
        rates[label] = _rate(count, time.perf_counter() - started)
    return "ImageDataGenerator.flow_from_directory", rates


def _pil_loop_rates(data: Path) -> dict[str, float]:
    from PIL import Image

    paths = [r.path for r in find_images(data)]
    started = time.perf_counter()
    for path in paths:
        np.asarray(Image.open(path).convert("RGB").resize((IMG_SIZE, IMG_SIZE))) / 255.0
    rate = _rate(len(paths), time.perf_counter() - started)
    return {"cold": rate, "cached": rate}


def run(data: Path = SHARED_DATA_DIR) -> dict[str, Any]:
    if not (data / "train").is_dir() and not (data / "fracture").is_dir():
        return {"skipped": f"no data at {data}"}
    # Same footing for both: every file read once, so neither pays first disk reads.
    # "cold" below means the pipeline decodes every image, not that the disk is cold.
    for record in find_images(data):
        record.path.read_bytes()
    ours = tf_data_rates(data)
    seed_name, seed = seed_rates(data)
    return {
        "project": ours,
        "seed_approach": seed_name,
        "seed": seed,
        "speedup_cold": ours["cold"] / seed["cold"],
        "speedup_cached": ours["cached"] / seed["cached"],
    }


if __name__ == "__main__":
    print(run())
