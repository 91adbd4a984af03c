"""Compare architectures with grouped k-fold cross-validation.

    python -m ml_model.compare --data ../shared/data/cervical-ct \
        --archs custom,efficientnet_lite0 --folds 5 --out runs/compare

Each fold holds out whole base slices. Inside each fold's training part a grouped
validation split drives early stopping and picks the sensitive operating point, so the
held-out fold is never seen before it is scored. Writes comparison.json, comparison.md
and comparison.png (mean +/- std per metric).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import tensorflow as tf

from ml_model.config import EXPORT_WINDOW
from ml_model.data.dataset import (
    TRAINING_SPLITS,
    ImageRecord,
    find_images,
    grouped_kfold,
    grouped_split,
    groups_of,
    load_arrays,
    naive_split,
    series_of,
)
from ml_model.data.negatives import generate as generate_negatives
from ml_model.evaluation.metrics import choose_operating_points, compute_metrics
from ml_model.evaluation.report import series_report
from ml_model.imaging.transforms import gray_to_model_input
from ml_model.training.gate_fit import GateFit, fit_gate
from ml_model.training.train import (
    TrainConfig,
    cross_validate_series,
    fit_model,
    image_datasets,
    make_strategy,
    predict_dataset,
)

REPORTED = ["accuracy", "precision", "recall", "specificity", "f1", "auc", "brier", "ece"]

# Per-architecture training recipes used by the comparison (CPU-friendly: transfer
# models train their head on cached ImageNet features).
RECIPES: dict[str, dict[str, Any]] = {
    "custom": {},
    "efficientnet_lite0": {
        "weights": "imagenet",
        "cache_features": True,
        "optimizer": "adam",
        "lr": 1e-3,
        "epochs": 40,
    },
    "efficientnet_lite2": {
        "weights": "imagenet",
        "cache_features": True,
        "optimizer": "adam",
        "lr": 1e-3,
        "epochs": 40,
    },
}


def inference_ms_per_image(model: keras.Model, img_size: int, batch: int = 32) -> float:
    """Batched CPU/GPU forward time per image (median of 5 runs after one warm-up)."""
    forward = tf.function(lambda x: model(x, training=False))
    images = tf.random.uniform((batch, img_size, img_size, 3), 0, 255)
    forward(images)
    times = []
    for _ in range(5):
        started = time.perf_counter()
        forward(images).numpy()
        times.append(time.perf_counter() - started)
    return float(np.median(times) / batch * 1000)


def run_fold(
    config: TrainConfig,
    train_records: list[ImageRecord],
    test_records: list[ImageRecord],
    split: str,
) -> dict[str, Any]:
    """Train on one fold's training part and score its held-out part."""
    keras.utils.set_random_seed(config.seed)
    img_size = config.network_size
    inner = grouped_split if split == "grouped" else naive_split
    fit_idx, val_idx = inner(train_records, config.val_fraction, config.seed)
    fit_records = [train_records[i] for i in fit_idx]
    val_records = [train_records[i] for i in val_idx]
    datasets = image_datasets(config, fit_records, val_records, img_size)
    started = time.perf_counter()
    model, _ = fit_model(config, datasets, img_size, verbose=0)
    train_seconds = time.perf_counter() - started

    val_probs = predict_dataset(model, datasets[2])
    threshold = choose_operating_points(np.array([r.label for r in val_records]), val_probs)[
        "sensitive"
    ]["threshold"]
    test_ds = image_datasets(config, test_records, test_records, img_size)[2]
    test_probs = predict_dataset(model, test_ds)
    metrics = compute_metrics(np.array([r.label for r in test_records]), test_probs, threshold)
    metrics["train_seconds"] = train_seconds
    metrics["inference_ms_per_image"] = inference_ms_per_image(model, img_size)
    keras.backend.clear_session()
    return metrics


def compare(
    data: str,
    archs: list[str],
    folds: int,
    out: Path,
    seed: int = 42,
    split: str = "grouped",
    epochs: int | None = None,
) -> dict[str, Any]:
    records = find_images(data)
    if split == "grouped":
        splits = grouped_kfold(records, folds, seed)
    else:  # file-level folds: only to show how much leakage inflates the numbers
        from sklearn.model_selection import StratifiedKFold

        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(records)), [r.label for r in records]))
    results: dict[str, Any] = {"folds": folds, "split": split, "seed": seed, "archs": {}}
    for arch in archs:
        recipe = dict(RECIPES.get(arch, {"weights": "none"}))
        if epochs is not None:
            recipe["epochs"] = epochs
        config = dataclasses.replace(TrainConfig(arch=arch, data=data, seed=seed), **recipe)
        per_fold = []
        for k, (train_idx, test_idx) in enumerate(splits):
            print(f"[{arch}] fold {k + 1}/{folds}", flush=True)
            per_fold.append(
                run_fold(
                    config, [records[i] for i in train_idx], [records[i] for i in test_idx], split
                )
            )
        keys = [*REPORTED, "train_seconds", "inference_ms_per_image"]
        results["archs"][arch] = {
            "recipe": recipe,
            "folds": per_fold,
            "mean": {k: float(np.nanmean([f[k] for f in per_fold])) for k in keys},
            "std": {k: float(np.nanstd([f[k] for f in per_fold])) for k in keys},
        }
        _write(results, out)  # after each arch, so a long run keeps what it has
    return results


def compare_series(
    data: str, archs: list[str], out: Path, seed: int = 42, epochs: int | None = None
) -> dict[str, Any]:
    """Leave-one-series-out for each architecture, with the training recipe's own code path
    (``ml_model.training.train.cross_validate_series``): per held-out series, model and product
    metrics with 95 % intervals over base slices."""
    records = find_images(data, splits=TRAINING_SPLITS)
    results: dict[str, Any] = {"split": "series", "seed": seed, "archs": {}}
    # The CT gate does not depend on the network: one fit (with its own series folds) per
    # input size serves every architecture.
    gates: dict[int, GateFit] = {}
    for arch in archs:
        recipe = dict(RECIPES.get(arch, {"weights": "none"}))
        if epochs is not None:
            recipe["epochs"] = epochs
        config = dataclasses.replace(TrainConfig(arch=arch, data=data, seed=seed), **recipe)
        img_size = config.network_size
        input_size = config.input_size or img_size
        images, labels = load_arrays(records, input_size, EXPORT_WINDOW)
        if input_size not in gates:
            negatives = generate_negatives(config.gate_negatives, seed=seed)
            series = np.array([series_of(g) for g in groups_of(records)])
            gates[input_size] = fit_gate(
                images, series, negatives,
                np.stack([gray_to_model_input(n.gray, input_size) for n in negatives]),
                seed, records,
            )  # fmt: skip
        gate = gates[input_size]
        started = time.perf_counter()
        oof, folds = cross_validate_series(
            config, records, images, labels, img_size, make_strategy("auto")
        )
        for fold in folds.values():
            fold["gate_threshold"] = gate.gate.threshold
        oof_gate = gate.oof
        report = series_report(labels, oof, oof_gate, groups_of(records), folds, seed)
        results["archs"][arch] = {
            "recipe": recipe,
            "seconds": round(time.perf_counter() - started, 1),
            "series": {name: {k: v for k, v in r.items()} for name, r in report.items()},
        }
        _write_series(results, out)  # after each arch, so a long run keeps what it has
    return results


def _write_series(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison_series.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = [
        "Leave-one-series-out: each CT series scored by a model that never saw it "
        "(threshold chosen by that model on its own epoch-choosing slices); "
        "[95 % interval over base slices]",
        "",
        "| arch | series | slices F/N | AUC | recall | specificity | product recall | "
        "product specificity | refused |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arch, r in results["archs"].items():
        for name, row in r["series"].items():
            ci = row["intervals_95"]
            m, slices = row["model"], row["base_slices"]
            lines.append(
                f"| {arch} | {name} | {slices['fracture']}/{slices['normal']} "
                f"| {m['auc']:.3f} [{ci['auc'][0]:.2f}, {ci['auc'][1]:.2f}] "
                f"| {m['recall']:.3f} [{ci['recall'][0]:.2f}, {ci['recall'][1]:.2f}] "
                f"| {m['specificity']:.3f} "
                f"[{ci['specificity'][0]:.2f}, {ci['specificity'][1]:.2f}] "
                f"| {row['product']['recall']:.3f} | {row['product']['specificity']:.3f} "
                f"| {row['refused']} |"
            )
    (out / "comparison_series.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(9, 4))
    archs = list(results["archs"])
    names = sorted({n for r in results["archs"].values() for n in r["series"]})
    width = 0.8 / max(1, len(archs))
    x = np.arange(len(names))
    for i, arch in enumerate(archs):
        rows = [results["archs"][arch]["series"].get(n) for n in names]
        auc = [r["model"]["auc"] if r else np.nan for r in rows]
        low = [r["model"]["auc"] - r["intervals_95"]["auc"][0] if r else 0 for r in rows]
        high = [r["intervals_95"]["auc"][1] - r["model"]["auc"] if r else 0 for r in rows]
        ax.bar(x + i * width, auc, width, yerr=[np.nan_to_num(low), np.nan_to_num(high)],
               label=arch, capsize=3)  # fmt: skip
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_xticks(x + width * (len(archs) - 1) / 2, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("AUC on the held-out series")
    ax.set_title("Leave-one-series-out (a new patient per fold), 95 % interval over slices")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison_series.png", dpi=120)
    plt.close(fig)


def _write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(results, indent=2) + "\n")
    keys = [*REPORTED, "train_seconds", "inference_ms_per_image"]
    lines = [
        f"{results['folds']}-fold CV, {results['split']} split, mean ± std over folds",
        "",
        "| arch | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for arch, r in results["archs"].items():
        cells = [f"{r['mean'][k]:.3f} ± {r['std'][k]:.3f}" for k in keys]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    (out / "comparison.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(10, 4))
    archs = list(results["archs"])
    width = 0.8 / max(1, len(archs))
    x = np.arange(len(REPORTED))
    for i, arch in enumerate(archs):
        r = results["archs"][arch]
        ax.bar(
            x + i * width,
            [r["mean"][k] for k in REPORTED],
            width,
            yerr=[r["std"][k] for k in REPORTED],
            label=arch,
            capsize=3,
        )
    ax.set_xticks(x + width * (len(archs) - 1) / 2, REPORTED)
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{results['folds']}-fold CV ({results['split']} split)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--archs", default="custom,efficientnet_lite0")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--split",
        choices=["series", "grouped", "naive"],
        default="series",
        help="series: leave one CT series (patient) out, the headline protocol",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args(argv)
    if args.split == "series":
        compare_series(args.data, args.archs.split(","), Path(args.out), args.seed, args.epochs)
        print((Path(args.out) / "comparison_series.md").read_text())
        return
    results = compare(
        args.data,
        args.archs.split(","),
        args.folds,
        Path(args.out),
        args.seed,
        args.split,
        args.epochs,
    )
    print((Path(args.out) / "comparison.md").read_text())
    del results


if __name__ == "__main__":
    main()
