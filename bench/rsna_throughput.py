"""Training and inference throughput of the RSNA 2.5D slice model (stage 1), and peak memory.

    python -m bench.rsna_throughput [--arch efficientnet_lite0] [--sizes 256,384]
        [--batch 64] [--steps 30] [--precisions float32,mixed] [--out results.json]

What it times is the slice model of ``ml_model.architectures.rsna_slice`` as stage 1 of
``ml_model.training.train_rsna`` fits it: both supervised heads (fracture, vertebrae), binary
cross-entropy, Adam, one optimiser step per batch (``train_on_batch``: the step's numbers come
back to the host, so each timed step has finished). Inference is the full model (all three
outputs) per batch. Inputs are random uint8 2.5D stacks: compute does not depend on values.

It runs on whichever Keras 3 backend is set (``KERAS_BACKEND``): TensorFlow here, JAX on a GPU
machine whose image has no TensorFlow. Peak memory is read from that backend's allocator (JAX:
``memory_stats()['peak_bytes_in_use']``; TensorFlow: ``get_memory_info('GPU:0')['peak']``;
on a CPU: the process's peak RSS). ``mixed`` is ``mixed_float16`` on a GPU (as
``train_rsna --mixed-precision``), ``mixed_bfloat16`` as named; both skipped on a CPU.

Hours per RSNA epoch = slices per epoch / training slices per second / 3600; the slices per
epoch of the full competition set are printed beside it (``RSNA_LABELLED_SLICES``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from typing import Any

import numpy as np

# RSNA 2022 train_images: 2,019 studies. Stage 1 learns from the slices that carry a slice label:
# every slice of the 1,058 patient-negative studies and of the 235 studies with boxes. At an
# assumed mean of 350 slices per study (an estimate: series run from ~150 to ~1,000 slices):
MEAN_SLICES_PER_STUDY = 350
RSNA_LABELLED_SLICES = (1_058 + 235) * MEAN_SLICES_PER_STUDY
WARM_UP_STEPS = 3


def _backend() -> str:
    import keras

    return str(keras.backend.backend())


def device_name() -> str:
    """The accelerator Keras will use, or "cpu"."""
    backend = _backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return f"{device.platform}:{getattr(device, 'device_kind', device)}"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"gpu:{details.get('device_name', 'GPU')}"
        return "cpu"
    if backend == "torch":
        import torch

        return f"gpu:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"
    return "cpu"


def on_gpu() -> bool:
    return device_name().startswith("gpu")


def reset_peak_memory() -> None:
    backend = _backend()
    if backend == "tensorflow" and on_gpu():
        import tensorflow as tf

        tf.config.experimental.reset_memory_stats("GPU:0")
    elif backend == "torch" and on_gpu():
        import torch

        torch.cuda.reset_peak_memory_stats()
    # JAX keeps one running peak per process: each configuration runs in its own process.


def peak_memory_mib() -> float:
    backend = _backend()
    if on_gpu():
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            return stats.get("peak_bytes_in_use", 0) / 2**20
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20
        if backend == "torch":
            import torch

            return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def policy_of(precision: str) -> str:
    """``mixed``: mixed_float16 (what ``train_rsna --mixed-precision`` sets); a Keras policy
    name (``float32``, ``mixed_bfloat16``) as it is."""
    return "mixed_float16" if precision == "mixed" else precision


def measure(arch: str, size: int, batch: int, steps: int, precision: str) -> dict[str, Any]:
    """One configuration: training and inference slices/s, peak memory."""
    import keras

    from ml_model.architectures.rsna_slice import build_slice_model, training_view
    from ml_model.card import VERTEBRAE

    keras.mixed_precision.set_global_policy(policy_of(precision))
    keras.utils.set_random_seed(0)
    reset_peak_memory()
    model = build_slice_model(arch, size, weights="none")
    view = training_view(model)
    view.compile(
        optimizer=keras.optimizers.Adam(1e-4),
        loss={name: "binary_crossentropy" for name in view.output_names},
    )
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (batch, size, size, 3)).astype(np.float32)
    y = {
        "fracture": rng.integers(0, 2, (batch, 1)).astype(np.float32),
        "vertebrae": rng.integers(0, 2, (batch, len(VERTEBRAE))).astype(np.float32),
    }
    for _ in range(WARM_UP_STEPS):
        view.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        view.train_on_batch(x, y)
    train_seconds = time.perf_counter() - started
    for _ in range(WARM_UP_STEPS):
        model.predict_on_batch(x)
    started = time.perf_counter()
    for _ in range(steps):
        model.predict_on_batch(x)
    infer_seconds = time.perf_counter() - started
    train_rate = batch * steps / train_seconds
    return {
        "arch": arch,
        "size": size,
        "batch": batch,
        "precision": precision,
        "steps": steps,
        "train_slices_per_s": round(train_rate, 1),
        "infer_slices_per_s": round(batch * steps / infer_seconds, 1),
        "peak_memory_mib": round(peak_memory_mib(), 0),
        "hours_per_rsna_epoch_labelled": round(RSNA_LABELLED_SLICES / train_rate / 3600, 2),
        "backend": _backend(),
        "device": device_name(),
        "params": int(model.count_params()),
    }


def _child(args: argparse.Namespace, size: int, precision: str) -> dict[str, Any] | None:
    """Run one configuration in a fresh process (its own allocator peak), return its row."""
    import subprocess

    command = [
        sys.executable, "-m", "bench.rsna_throughput", "--one",
        "--arch", args.arch, "--sizes", str(size), "--batch", str(args.batch),
        "--steps", str(args.steps), "--precisions", precision,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    rows = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not rows:
        print(f"size {size} {precision}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return dict(json.loads(rows[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--sizes", default="256,384", help="input sides, comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precisions", default="float32,mixed")
    parser.add_argument("--out", help="write the rows as JSON here")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    precisions = args.precisions.split(",")
    if args.one:
        print(json.dumps(measure(args.arch, sizes[0], args.batch, args.steps, precisions[0])))
        return 0
    gpu = on_gpu()
    print(f"backend {_backend()}, device {device_name()}", flush=True)
    rows = []
    for size in sizes:
        for precision in precisions:
            if precision.startswith("mixed") and not gpu:
                continue
            row = _child(args, size, precision)
            if row:
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'size':>5} {'batch':>5} {'precision':>9} {'train sl/s':>10} {'infer sl/s':>10} "
          f"{'peak MiB':>9} {'h/epoch*':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['size']:>5} {r['batch']:>5} {r['precision']:>9} {r['train_slices_per_s']:>10} "
              f"{r['infer_slices_per_s']:>10} {r['peak_memory_mib']:>9.0f} "
              f"{r['hours_per_rsna_epoch_labelled']:>8}")  # fmt: skip
    print(f"* one stage-1 epoch over the ~{RSNA_LABELLED_SLICES:,} slices of RSNA 2022 that carry "
          f"a slice label (1,293 studies x an assumed {MEAN_SLICES_PER_STUDY} slices)")  # fmt: skip
    if args.out:
        with open(args.out, "w") as handle:
            report = {"device": device_name(), "backend": _backend(), "rows": rows}
            json.dump(report, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
