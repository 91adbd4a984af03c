"""The full parity check of the serving runtime: ONNX Runtime against TensorFlow (the
reference) on the whole val split, every training slice (the slices of the out-of-fold
predictions), the CT gate's non-CT negatives and synthetic slices, for each committed
bundle. Verdicts (both operating points and the CT gate) must be identical.

    python -m bench.parity [--limit N]
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from bench.common import RESULTS_DIR, table
from ml_model.config import PACKAGE_DIR, SHARED_DATA_DIR

BUNDLES = ("default", "custom")
COLUMNS = [
    "bundle",
    "slices",
    "n",
    "verdicts_identical",
    "max_abs_dp",
    "max_abs_dp_unsaturated",
    "median_abs_dp",
    "max_abs_dct_logit",
    "closest_p_to_a_threshold",
]


def run(limit: int | None = None, bundles: tuple[str, ...] = BUNDLES) -> dict[str, Any]:
    from ml_model.inference.bundle import Bundle
    from ml_model.inference.forward import KerasForward
    from ml_model.inference.forward_onnx import OnnxForward
    from ml_model.training.export import data_slices
    from ml_model.training.export_onnx import parity, synthetic_slices

    rows = []
    for name in bundles:
        model_dir = PACKAGE_DIR / "models" / name
        bundle = Bundle.load(model_dir)
        size = bundle.img_size
        slices = (
            data_slices(SHARED_DATA_DIR, size, bundle.window, limit, progress=False)
            if (SHARED_DATA_DIR / "val").is_dir()
            else {}
        )
        slices["synthetic"] = synthetic_slices(size)
        reference = KerasForward.from_bundle(bundle)
        candidate = OnnxForward.from_bundle(bundle)
        for slice_name, row in parity(model_dir, reference, candidate, slices).items():
            rows.append({"bundle": name, "slices": slice_name, **row})
    return {
        "rows": rows,
        "verdicts_identical": all(row["verdicts_identical"] for row in rows),
        "data": str(SHARED_DATA_DIR) if (SHARED_DATA_DIR / "val").is_dir() else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, help="at most this many slices per split")
    args = parser.parse_args()
    report = run(args.limit)
    print(table(report["rows"], COLUMNS))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / "parity.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
