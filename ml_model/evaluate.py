"""Evaluate a model bundle on a folder of labelled slices.

    python -m ml_model.evaluate --model ml_model/models/default --data DIR --out OUT

Writes OUT/metrics.json (at the bundle's stored threshold), confusion_matrix.png,
roc_curve.png, reliability.png and per-image predictions.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

from ml_model.data import find_images, load_arrays
from ml_model.metrics import compute_metrics, plot_confusion_matrix, plot_reliability, plot_roc
from ml_model.predictor import DEFAULT_OPERATING_POINT, OPERATING_POINTS, Predictor


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    operating_point: str = DEFAULT_OPERATING_POINT,
    unseen_only: bool = False,
) -> dict[str, Any]:
    """Score every image under ``data``; ``unseen_only`` drops slices the model trained on."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(model_dir)
    records = find_images(data)
    excluded = 0
    if unseen_only:
        seen = set(predictor.card.get("training", {}).get("train_groups", []))
        kept = [r for r in records if r.group not in seen]
        excluded = len(records) - len(kept)
        records = kept
        if not records:
            raise SystemExit("every image belongs to a slice the model was trained on")
    images, labels = load_arrays(records, predictor.img_size)
    probs = predictor.predict(images)  # the Predictor bounds its own forward batches
    threshold = predictor.threshold(operating_point)

    metrics = compute_metrics(labels, probs, threshold)
    metrics.update(
        operating_point=operating_point,
        model=f"{predictor.name} {predictor.version}",
        distinct_slices=len({r.group for r in records}),
        excluded_training_files=excluded,
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png")
    plot_roc(labels, probs, out / "roc_curve.png")
    plot_reliability(labels, probs, out / "reliability.png")
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "probability", "predicted"])
        for record, p in zip(records, probs, strict=True):
            writer.writerow([record.path, record.label, repr(float(p)), int(p >= threshold)])
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="ml_model/models/default", help="bundle folder")
    parser.add_argument("--data", required=True, help="folder with fracture/ and normal/")
    parser.add_argument("--out", required=True, help="folder for metrics.json and plots")
    parser.add_argument(
        "--operating-point", default=DEFAULT_OPERATING_POINT, choices=OPERATING_POINTS
    )
    parser.add_argument(
        "--unseen-only",
        action="store_true",
        help="skip images whose base slice was in the model's training split",
    )
    args = parser.parse_args(argv)
    metrics = evaluate(args.model, args.data, args.out, args.operating_point, args.unseen_only)
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    print(
        f"{metrics['n']} images ({metrics['distinct_slices']} distinct slices), "
        f"threshold {metrics['threshold']:.4f} ({metrics['operating_point']})"
    )
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "loss", "ece"):
        print(f"  {key:<12}{metrics[key]:.4f}")
    print(f"  confusion   tn={tn} fp={fp} fn={fn} tp={tp}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
