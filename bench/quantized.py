"""Is a quantised model worth offering? Static int8 (QDQ, per-channel weights) of the
convolutions and matrix products of the default bundle's model.onnx — the spine crop, the
CT gate's features and the calibration stay float32 — calibrated on training slices, then
measured against the exact model.onnx: images/s in-process (batch 16) and, on the whole
val split, max |Δp| and verdict flips. A variant is offered only if it never flips a
verdict on the val split and its gain is worth the accuracy cost. (bf16 is not tried: ONNX
Runtime's CPU provider has no bf16 convolutions on x86.)

    python -m bench.quantized [--calibration 64] [--out runs/quantized]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS_DIR, table
from ml_model.bundle import ONNX_FILE, SERVING_INPUT
from ml_model.config import DEFAULT_MODEL_DIR, SHARED_DATA_DIR

BATCH = 16


def quantize_int8(source: Path, target: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter([calibration[i : i + 8] for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {SERVING_INPUT: batch}

    quantize_static(
        str(source),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv", "MatMul", "Gemm"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def throughput(forward: Any, images: np.ndarray, seconds: float = 6.0) -> float:
    forward(images)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forward(images)
        done += len(images)
    return done / (time.perf_counter() - started)


def run(calibration_count: int = 64, out: Path = Path("runs/quantized")) -> dict[str, Any]:
    from ml_model.data.dataset import find_images, load_arrays
    from ml_model.inference.bundle import Bundle
    from ml_model.inference.core import InferenceCore
    from ml_model.inference.forward_onnx import OnnxForward
    from ml_model.training.export_onnx import compare_outputs

    out.mkdir(parents=True, exist_ok=True)
    bundle = Bundle.load(DEFAULT_MODEL_DIR)
    exact = OnnxForward.from_bundle(bundle)
    size, window = exact.img_size, bundle.window
    train = find_images(SHARED_DATA_DIR, splits=["train"])
    step = max(1, len(train) // calibration_count)
    calibration = load_arrays(train[::step][:calibration_count], size, window, False)[0]
    val = load_arrays(find_images(SHARED_DATA_DIR, splits=["val"]), size, window, False)[0]
    target = out / "model.int8.onnx"
    started = time.perf_counter()
    quantize_int8(DEFAULT_MODEL_DIR / ONNX_FILE, target, calibration)
    quantize_s = time.perf_counter() - started
    int8 = OnnxForward(target)
    core = InferenceCore(bundle, forward=exact)
    reference = exact(val)
    rows = [
        {"variant": "fp32 (model.onnx, exact)", "images_per_s": throughput(exact, val[:BATCH])},
        {
            "variant": "int8 static QDQ (Conv/MatMul)",
            "images_per_s": throughput(int8, val[:BATCH]),
            **compare_outputs(core, reference, int8(val)),
        },
    ]
    for row in rows:
        row["bytes"] = (
            (DEFAULT_MODEL_DIR / ONNX_FILE if "exact" in row["variant"] else target).stat().st_size
        )
    offered = (
        rows[1]["verdicts_identical"] and rows[1]["images_per_s"] > 1.3 * rows[0]["images_per_s"]
    )
    return {"rows": rows, "quantize_s": quantize_s, "int8_offered": offered, "val_n": len(val)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calibration", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("runs/quantized"))
    args = parser.parse_args()
    report = run(args.calibration, args.out)
    print(
        table(
            report["rows"],
            [
                "variant",
                "images_per_s",
                "bytes",
                "max_abs_dp",
                "max_abs_dp_unsaturated",
                "verdicts_differ",
            ],
        )
    )
    print(f"int8 offered: {report['int8_offered']}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "quantized.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
