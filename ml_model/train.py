"""Train a fracture classifier on a folder of labelled slices and export a model bundle.

    python -m ml_model.train --arch custom --data ../shared/data/cervical-ct --out runs/custom

Steps: find files -> split by base slice -> tf.data -> fit (best checkpoint, early
stopping, LR schedule, CSV log) -> pick operating points on validation -> plots ->
export (.keras, SavedModel, TFLite, model card).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model import __version__
from ml_model.data import (
    DatasetError,
    ImageRecord,
    describe_split,
    find_images,
    grouped_split,
    make_dataset,
    naive_split,
)
from ml_model.export import export_bundle
from ml_model.metrics import (
    apply_temperature,
    choose_operating_points,
    compute_metrics,
    expected_calibration_error,
    fit_temperature,
    markdown_table,
    plot_confusion_matrix,
    plot_history,
    plot_reliability,
    plot_roc,
)
from ml_model.models import DEFAULT_IMG_SIZES, build_model
from ml_model.ood import fit_bundle_guard
from ml_model.study import calibrate_study_threshold
from ml_model.transfer import (
    WeightsUnavailableError,
    extract_features_from_dataset,
    freeze_backbone,
    gradcam_layer,
    head_model,
    unfreeze_top,
)

DATA_CAVEATS = [
    "Augmented copies: each distinct slice appears about 20 times (rotated/sharpened); "
    "splits and metrics are by base slice, file-level splits inflate scores.",
    "All normal slices in the shared training data come from one CT series (CSFDV1B10).",
    "Level shortcut: fracture slices are high in the neck (skull base, C1/C2) and normal ones "
    "lower, so the model may have learned the vertebral level rather than the fracture.",
    "Small data: 50 distinct slices (25 per class) in the shared set; validation figures "
    "rest on a handful of slices and carry wide uncertainty.",
]
# Validation ECE above this triggers temperature scaling.
ECE_TOLERANCE = 0.05

INTENDED_USE = (
    "Decision support for triage of axial cervical-spine CT slices by a physician. "
    "Not a diagnostic device: every slice must still be read by a qualified reader."
)


@dataclass
class TrainConfig:
    """Every training parameter in one place (defaults are the seed's)."""

    arch: str = "custom"
    data: str = "../shared/data/cervical-ct"
    out: str = "runs/custom"
    report_dir: str | None = None  # default: <out>/report
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = "sgd"
    lr: float = 0.01
    img_size: int | None = None
    seed: int = 42
    split: str = "grouped"  # or "naive" (file-level, for showing the inflation only)
    val_fraction: float = 0.2
    patience: int = 6
    weights: str = "none"
    fine_tune_layers: int = 30
    fine_tune_epochs: int = 0
    cache_features: bool = False
    strategy: str = "auto"
    mixed_precision: bool = False
    tflite_float16: bool = False


def make_optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    optimizers: dict[str, type[keras.optimizers.Optimizer]] = {
        "sgd": keras.optimizers.SGD,
        "adam": keras.optimizers.Adam,
        "rmsprop": keras.optimizers.RMSprop,
    }
    if name not in optimizers:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(optimizers)}")
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    return optimizers[name](learning_rate=lr)


def make_strategy(name: str) -> tf.distribute.Strategy:
    """``auto``: all local GPUs when there are several. ``multiworker`` reads TF_CONFIG."""
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "auto":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()
    raise ValueError(f"unknown strategy {name!r}; choose auto, mirrored or multiworker")


def is_chief() -> bool:
    """Only the chief (worker 0, or a single process) writes the bundle in multi-worker runs."""
    task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
    return task.get("type", "worker") in ("worker", "chief") and int(task.get("index", 0)) == 0


def split_records(
    records: list[ImageRecord], config: TrainConfig
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    splitter = grouped_split if config.split == "grouped" else naive_split
    train_idx, val_idx = splitter(records, config.val_fraction, config.seed)
    summary = describe_split(records, train_idx, val_idx)
    print(f"{config.split} split:", json.dumps(summary))
    return [records[i] for i in train_idx], [records[i] for i in val_idx]


def dataset_images(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([x.numpy() for x, _ in dataset])


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Probabilities over a batched dataset without model.predict's per-call overhead."""
    forward = tf.function(lambda x: model(x, training=False))
    return np.concatenate([forward(x).numpy().reshape(-1) for x, _ in dataset])


def _compile(model: keras.Model, optimizer: str, lr: float) -> None:
    model.compile(
        optimizer=make_optimizer(optimizer, lr),
        loss="binary_crossentropy",
        metrics=[
            "accuracy",
            keras.metrics.AUC(name="auc"),
            keras.metrics.Precision(name="precision"),
            keras.metrics.Recall(name="recall"),
        ],
    )


def _callbacks(config: TrainConfig, report_dir: Path | None, phase: str) -> list[Any]:
    callbacks: list[Any] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3),
    ]
    if report_dir is not None:
        callbacks += [
            # Best weights on validation loss, kept on disk in case a long run is cut short.
            keras.callbacks.ModelCheckpoint(
                str(report_dir / f"best_{phase}.keras"), monitor="val_loss", save_best_only=True
            ),
            keras.callbacks.CSVLogger(str(report_dir / f"history_{phase}.csv")),
        ]
    return callbacks


def _merge(history: dict[str, list[float]], more: dict[str, list[float]]) -> None:
    for key, values in more.items():
        history.setdefault(key, []).extend(values)


def image_datasets(
    config: TrainConfig,
    train_records: list[ImageRecord],
    val_records: list[ImageRecord],
    img_size: int,
) -> tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset]:
    """(augmented train, plain train, validation) datasets through the shared transform."""

    def dataset(rows: list[ImageRecord], training: bool) -> tf.data.Dataset:
        return make_dataset(
            [r.path for r in rows],
            [r.label for r in rows],
            img_size,
            config.batch_size,
            training,
            config.seed,
        )

    return (
        dataset(train_records, True),
        dataset(train_records, False),
        dataset(val_records, False),
    )


def fit_model(
    config: TrainConfig,
    datasets: tuple[tf.data.Dataset, tf.data.Dataset, tf.data.Dataset],
    img_size: int,
    report_dir: Path | None = None,
    verbose: int = 2,
    strategy: tf.distribute.Strategy | None = None,
) -> tuple[keras.Model, dict[str, list[float]]]:
    """Build and fit one model; returns it (best weights restored) and its history.

    custom: one phase, as the seed. Transfer models: phase 1 trains the head on a frozen
    backbone (on cached embeddings with ``cache_features``: one backbone pass instead of
    one per epoch); phase 2 unfreezes the top ``fine_tune_layers`` at a tenth of the
    learning rate for ``fine_tune_epochs`` (BatchNorm stays frozen, in inference mode).
    """
    train_ds, train_plain_ds, val_ds = datasets
    if config.mixed_precision and tf.config.list_logical_devices("GPU"):
        keras.mixed_precision.set_global_policy("mixed_float16")
    strategy = strategy or make_strategy(config.strategy)
    history: dict[str, list[float]] = {}
    with strategy.scope():
        model = build_model(config.arch, img_size, **_builder_options(config))

    def fit_images(target: keras.Model, phase: str, epochs: int, lr: float) -> None:
        with strategy.scope():
            _compile(target, config.optimizer, lr)
        fitted = target.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            callbacks=_callbacks(config, report_dir, phase),
            verbose=verbose,
        )
        _merge(history, fitted.history)

    if config.arch == "custom":
        fit_images(model, "train", config.epochs, config.lr)
        return model, history

    freeze_backbone(model)
    if config.cache_features:
        x_train, y_train = extract_features_from_dataset(model, train_plain_ds)
        x_val, y_val = extract_features_from_dataset(model, val_ds)
        head = head_model(model)  # shares the model's head layers
        with strategy.scope():
            _compile(head, config.optimizer, config.lr)
        fitted = head.fit(
            x_train,
            y_train.astype("float32"),
            validation_data=(x_val, y_val.astype("float32")),
            batch_size=config.batch_size,
            epochs=config.epochs,
            shuffle=True,
            callbacks=_callbacks(config, report_dir, "head"),
            verbose=verbose,
        )
        _merge(history, fitted.history)
    else:
        fit_images(model, "head", config.epochs, config.lr)
    if config.fine_tune_epochs > 0:
        unfreeze_top(model, config.fine_tune_layers)
        fit_images(model, "fine_tune", config.fine_tune_epochs, config.lr / 10)
    return model, history


def train(config: TrainConfig) -> dict[str, Any]:
    """Run one training job; returns the model card written with the bundle."""
    # Multi-worker collectives must be configured before any other TensorFlow op runs.
    strategy = make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out) if is_chief() else Path(tempfile.mkdtemp(prefix="worker-bundle-"))
    report_dir = Path(config.report_dir) if config.report_dir else out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    img_size = config.img_size or DEFAULT_IMG_SIZES.get(config.arch, 224)

    records = find_images(config.data)
    train_records, val_records = split_records(records, config)
    datasets = image_datasets(config, train_records, val_records, img_size)
    _, train_eval_ds, val_ds = datasets

    started = time.perf_counter()
    model, history = fit_model(config, datasets, img_size, report_dir, strategy=strategy)
    train_seconds = time.perf_counter() - started

    # The unaugmented training set gives honest train-side metrics.
    y_train = np.array([r.label for r in train_records])
    y_val = np.array([r.label for r in val_records])
    p_train = predict_dataset(model, train_eval_ds)
    p_val = predict_dataset(model, val_ds)
    raw_ece = expected_calibration_error(y_val, p_val)
    temperature = 1.0
    if raw_ece > ECE_TOLERANCE:
        # Badly calibrated sigmoid: temperature scaling fitted on validation, stored in the
        # card and applied by the Predictor; thresholds are then picked on calibrated scores.
        temperature = fit_temperature(y_val, p_val)
        p_train, p_val = (
            apply_temperature(p_train, temperature),
            apply_temperature(p_val, temperature),
        )
    print(f"validation ECE {raw_ece:.4f} -> temperature {temperature:.3f}")

    operating_points = choose_operating_points(y_val, p_val)
    threshold = operating_points["sensitive"]["threshold"]
    metrics = {
        "train": compute_metrics(y_train, p_train, threshold),
        "validation": compute_metrics(y_val, p_val, threshold),
    }
    _write_reports(report_dir, history, metrics, y_val, p_val)

    card = build_card(
        config,
        img_size,
        records,
        train_records,
        val_records,
        operating_points,
        metrics,
        train_seconds,
    )
    card["temperature"] = temperature
    card["calibration"] = {
        "raw_validation_ece": raw_ece,
        "calibrated_validation_ece": expected_calibration_error(y_val, p_val),
        "method": "temperature scaling" if temperature != 1.0 else "none needed",
        "tolerance": ECE_TOLERANCE,
    }
    card["study"] = calibrate_study_threshold(
        p_val, y_val, np.array([r.group for r in val_records]), seed=config.seed
    )
    export_bundle(model, out, card, tflite_float16=config.tflite_float16)
    guard = fit_bundle_guard(out, dataset_images(train_eval_ds), dataset_images(val_ds))
    print(f"out-of-distribution guard: {guard.details}")
    print(markdown_table(metrics, ["accuracy", "precision", "recall", "f1", "auc", "loss"]))
    print(f"bundle written to {out} (report in {report_dir})")
    return card


def _builder_options(config: TrainConfig) -> dict[str, Any]:
    return {} if config.arch == "custom" else {"weights": config.weights}


def _write_reports(
    report_dir: Path,
    history: dict[str, list[float]],
    metrics: dict[str, dict[str, Any]],
    y_val: np.ndarray,
    p_val: np.ndarray,
) -> None:
    plot_history(history, report_dir / "training_curves.png")
    plot_confusion_matrix(
        metrics["validation"]["confusion_matrix"],
        report_dir / "confusion_matrix.png",
        title="Validation confusion matrix",
    )
    plot_roc(y_val, p_val, report_dir / "roc_curve.png")
    plot_reliability(y_val, p_val, report_dir / "reliability.png")
    keys = ["accuracy", "precision", "recall", "f1", "auc", "loss"]
    (report_dir / "metrics_table.md").write_text(markdown_table(metrics, keys))
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def build_card(
    config: TrainConfig,
    img_size: int,
    records: list[ImageRecord],
    train_records: list[ImageRecord],
    val_records: list[ImageRecord],
    operating_points: dict[str, dict[str, float]],
    metrics: dict[str, dict[str, Any]],
    train_seconds: float,
) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "name": f"{config.arch}-cervical-fracture",
        "version": now.strftime("%Y.%m.%d"),
        "architecture": config.arch,
        "created": now.isoformat(timespec="seconds"),
        "package_version": __version__,
        "input": {
            "size": img_size,
            "channels": 3,
            "serving_dtype": "uint8",
            "preprocessing": "decode -> grayscale (DICOM: HU bone window 400/1800) -> "
            "bilinear resize -> 3 channels; scaling is inside the model",
        },
        "output": "P(fracture) from a sigmoid",
        "temperature": 1.0,
        "default_operating_point": "sensitive",
        "operating_points": operating_points,
        "gradcam_layer": gradcam_layer(config.arch),
        "metrics": metrics,
        "training": {
            **{k: v for k, v in asdict(config).items() if k not in ("out", "report_dir", "data")},
            "seconds": round(train_seconds, 1),
            "train_groups": sorted({r.group for r in train_records}),
            "validation_groups": sorted({r.group for r in val_records}),
        },
        "data": {
            "description": "Axial cervical-spine CT slices, fracture vs normal "
            "(Kaggle 'Spine Fracture Prediction from C.T. Dataset' subset).",
            "files": len(records),
            "distinct_slices": len({r.group for r in records}),
            "train_files": len(train_records),
            "validation_files": len(val_records),
        },
        "caveats": DATA_CAVEATS,
        "intended_use": INTENDED_USE,
    }


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=defaults.arch)
    parser.add_argument("--data", default=defaults.data, help="folder of labelled slices")
    parser.add_argument("--out", default=None, help="bundle folder (default runs/<arch>)")
    parser.add_argument("--report-dir", default=None, help="plots, history, checkpoint")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument(
        "--optimizer", default=defaults.optimizer, choices=["sgd", "adam", "rmsprop"]
    )
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument(
        "--img-size", type=int, default=None, help="default: the arch's native size"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--split", default=defaults.split, choices=["grouped", "naive"])
    parser.add_argument("--val-fraction", type=float, default=defaults.val_fraction)
    parser.add_argument("--patience", type=int, default=defaults.patience)
    parser.add_argument("--weights", default=defaults.weights, help="imagenet | none | PATH")
    parser.add_argument(
        "--fine-tune-layers",
        type=int,
        default=defaults.fine_tune_layers,
        help="transfer models: backbone layers unfrozen in phase 2",
    )
    parser.add_argument(
        "--fine-tune-epochs",
        type=int,
        default=defaults.fine_tune_epochs,
        help="transfer models: phase-2 epochs (0 = head only)",
    )
    parser.add_argument(
        "--cache-features",
        action="store_true",
        help="transfer models: train the head on embeddings computed once",
    )
    parser.add_argument(
        "--strategy", default=defaults.strategy, choices=["auto", "mirrored", "multiworker"]
    )
    parser.add_argument("--mixed-precision", action="store_true", help="float16 compute on GPU")
    parser.add_argument("--tflite-float16", action="store_true", help="float16 TFLite weights")
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.setdefault("out", f"runs/{args.arch}")
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    try:
        train(config)
    except (WeightsUnavailableError, DatasetError) as exc:
        # One clear message (what is missing and how to fix it), not a stack trace.
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
