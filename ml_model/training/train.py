"""Train a fracture classifier on a folder of labelled slices and export a model bundle.

    python -m ml_model.train --arch custom --data ../shared/data/cervical-ct --out runs/custom

Steps: find files -> split by base slice -> tf.data -> fit (best checkpoint, early
stopping, LR schedule, CSV log) -> pick operating points on validation -> plots ->
export (.keras, SavedModel, TFLite, model card).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model import __version__
from ml_model.architectures.layers import SPINE_CROP_LAYER
from ml_model.architectures.registry import (
    DEFAULT_IMG_SIZES,
    build_model,
    gradcam_layer,
    is_pretrained,
)
from ml_model.architectures.transfer import (
    WeightsUnavailableError,
    extract_features_from_dataset,
    freeze_backbone,
    head_model,
    unfreeze_top,
)
from ml_model.bundle import GATE_FILE
from ml_model.card import (
    OPERATING_POINTS,
    Crop,
    GateSettings,
    InputSpec,
    ModelCard,
    OperatingPointStats,
    StudySettings,
    Window,
    read_card,
)
from ml_model.config import EXPORT_WINDOW, EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH
from ml_model.data.dataset import (
    TRAINING_SPLITS,
    DatasetError,
    ImageRecord,
    array_dataset,
    find_images,
    grouped_split,
    groups_of,
    leave_one_series_out,
    load_arrays,
    make_dataset,
    naive_split,
    series_of,
)
from ml_model.data.negatives import Negative
from ml_model.data.negatives import generate as generate_negatives
from ml_model.evaluation.metrics import (
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
from ml_model.evaluation.report import held_out_report, series_report
from ml_model.imaging.transforms import gray_to_model_input
from ml_model.inference.gate import CTGate
from ml_model.training.cli import add_config_arguments, option
from ml_model.training.distribute import STRATEGIES, is_chief, make_strategy
from ml_model.training.export import export_bundle
from ml_model.training.gate_fit import GateFit, fit_gate
from ml_model.training.study_threshold import calibrate_study_threshold
from ml_model.training.window_roundtrip import roundtrip_copies

DATA_CAVEATS = [
    "Augmented copies: each distinct slice appears about 20 times (rotated/sharpened); "
    "splits and metrics are by base slice or series, file-level splits inflate scores.",
    "Three CT series (patients) only: B10 (1 fracture slice, 25 normal), B11 (7, 48), "
    "B12 (75, 18). Leave-one-series-out figures rest on one to a few dozen slices each.",
    "Level shortcut: in every series the fracture slices lie at the skull base to C2/C3 and "
    "the normal slices lower in the neck, so level and label cannot be told apart in this "
    "data. The spine crop removes brain, table and field of view, but the vertebral shape "
    "still tells the level: a normal C1/C2 slice may be called a fracture, a fracture low "
    "in the neck may be missed.",
    "Export window: the slices were exported at about level -70 / width 380 HU; other "
    "windows are out of the training distribution.",
]
SEED_TEST_NUMBERS = {"accuracy": 0.8605, "precision": 0.905, "recall": 0.795}
# Validation ECE above this triggers temperature scaling.
ECE_TOLERANCE = 0.05

INTENDED_USE = (
    "Decision support for triage of axial cervical-spine CT slices by a physician. "
    "Not a diagnostic device: every slice must still be read by a qualified reader."
)


# --optimizer's choices (SGD with momentum 0.9, as the seed).
OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "sgd": keras.optimizers.SGD,
    "adam": keras.optimizers.Adam,
    "rmsprop": keras.optimizers.RMSprop,
}


@dataclass
class TrainConfig:
    """Every training parameter in one place (defaults are the seed's); the command line's
    flags are built from these fields (:func:`parse_args`)."""

    arch: str = "custom"
    data: str = option("../shared/data/cervical-ct", "folder of labelled slices")
    out: str = option("runs/custom", "bundle folder (default runs/<arch>)")
    report_dir: str | None = option(None, "plots, history, checkpoint (default <out>/report)")
    epochs: int = 20
    batch_size: int = 16
    optimizer: str = option("sgd", choices=tuple(OPTIMIZERS))
    lr: float = 0.01
    img_size: int | None = option(None, "default: the arch's native size")
    seed: int = 42
    split: str = option(
        "grouped",
        "by base slice; naive: by file, for showing the inflation only",
        choices=("grouped", "naive"),
    )
    val_fraction: float = 0.2
    patience: int = 6
    weights: str = option("none", "imagenet | none | PATH")
    fine_tune_layers: int = option(30, "transfer models: backbone layers unfrozen in phase 2")
    fine_tune_epochs: int = option(0, "transfer models: phase-2 epochs (0 = head only)")
    cache_features: bool = option(
        False, "transfer models: train the head on embeddings computed once"
    )
    strategy: str = option("auto", choices=STRATEGIES)
    mixed_precision: bool = option(False, "float16 compute on GPU")
    tflite_float16: bool = option(False, "float16 TFLite weights")
    # The model takes the whole slice at input_size and crops it around the spine to
    # img_size in its own graph (0: no crop, the image as given).
    input_size: int = option(
        384, "whole-slice input side, cropped around the spine in the graph (0 = no crop)"
    )
    cv: str = option(
        "series",
        "series: leave-one-series-out out-of-fold calibration; none",
        choices=("series", "none"),
    )
    gate_negatives: int = option(120, "synthetic/photo negatives per kind for the CT gate")
    test_data: str | None = option(
        None, "held-back split scored once at the end, never used for any choice"
    )
    window_roundtrip: float = option(
        0.0,
        "experiment (docs/ct-windows.md part 4): per fit slice, the probability of one extra "
        "copy exported in a bone/soft-tissue window and brought back (0 = off)",
    )

    @property
    def network_size(self) -> int:
        """The network's input side: ``img_size``, else the architecture's native size."""
        return self.img_size or DEFAULT_IMG_SIZES.get(self.arch, 224)


def make_optimizer(name: str, lr: float) -> keras.optimizers.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    return OPTIMIZERS[name](learning_rate=lr)


def predict_batches(model: keras.Model, batches: Iterable[Any]) -> np.ndarray:
    """Raw P(fracture) (before calibration) over image batches, without model.predict's
    per-call overhead: the training-time forward (serving uses inference.forward)."""
    forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    return np.concatenate([forward(tf.cast(x, tf.float32)).numpy().reshape(-1) for x in batches])


def predict_dataset(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """:func:`predict_batches` over a batched (images, labels) dataset."""
    return predict_batches(model, (x for x, _ in dataset))


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

    if not is_pretrained(config.arch):
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


def predict_arrays(model: keras.Model, images: np.ndarray, batch: int = 64) -> np.ndarray:
    """:func:`predict_batches` over uint8 images, in bounded batches."""
    return predict_batches(model, (images[i : i + batch] for i in range(0, len(images), batch)))


def fit_on(
    config: TrainConfig,
    images: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    img_size: int,
    strategy: tf.distribute.Strategy,
    report_dir: Path | None = None,
    verbose: int = 2,
) -> tuple[keras.Model, dict[str, list[float]], np.ndarray]:
    """Fit one model on arrays; a split by base slice (``config.split``) picks the epoch.

    ``config.window_roundtrip`` > 0 adds round-tripped copies of fit slices (never of the
    epoch-choosing ones; ``window_roundtrip``). Returns the model, its history and the index
    of the epoch-choosing slices."""
    records = [ImageRecord(Path(""), int(y), str(g)) for y, g in zip(labels, groups, strict=True)]
    splitter = grouped_split if config.split == "grouped" else naive_split
    fit_idx, val_idx = splitter(records, config.val_fraction, config.seed)
    fit_images, fit_labels = images[fit_idx], labels[fit_idx]
    if config.window_roundtrip > 0:
        chosen, copies = roundtrip_copies(fit_images, config.window_roundtrip, config.seed)
        fit_images = np.concatenate([fit_images, copies])
        fit_labels = np.concatenate([fit_labels, fit_labels[chosen]])
    datasets = (
        array_dataset(fit_images, fit_labels, config.batch_size, True, config.seed),
        array_dataset(fit_images, fit_labels, config.batch_size, False),
        array_dataset(images[val_idx], labels[val_idx], config.batch_size, False),
    )
    model, history = fit_model(config, datasets, img_size, report_dir, verbose, strategy)
    return model, history, val_idx


def cross_validate_series(
    config: TrainConfig,
    records: list[ImageRecord],
    images: np.ndarray,
    labels: np.ndarray,
    img_size: int,
    strategy: tf.distribute.Strategy,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Leave one CT series out at a time: out-of-fold P(fracture) for every slice, and per
    fold the threshold that fold's model chose on its own epoch-choosing slices. (The CT
    gate does not depend on the network: ``gate_fit.fit_gate`` scores its own folds.)"""
    groups = groups_of(records)
    oof = np.full(len(records), np.nan)
    folds: dict[str, Any] = {}
    for name, tr, te in leave_one_series_out(records):
        print(f"-- fold: {name} held out ({len(te)} files)")
        keras.utils.set_random_seed(config.seed)
        model, _, val_idx = fit_on(
            config, images[tr], labels[tr], groups[tr], img_size, strategy, verbose=0
        )
        oof[te] = predict_arrays(model, images[te])
        inner = tr[val_idx]
        point = choose_operating_points(labels[inner], predict_arrays(model, images[inner]))
        folds[name] = {"threshold": point["sensitive"]["threshold"], "index": te}
        keras.backend.clear_session()
    return oof, folds


def train(config: TrainConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Run one training job; returns the model card written with the bundle.

    1. leave-one-series-out (``cv="series"``): a model per held-out CT series gives
       out-of-fold scores for every training slice and the per-series report;
    2. the bundle's model is fitted on every series;
    3. temperature, operating points, the study threshold and the CT gate's threshold
       are set on the out-of-fold scores, never on the slices that chose an epoch.
    """
    # Multi-worker collectives must be configured before any other TensorFlow op runs.
    strategy = make_strategy(config.strategy)
    keras.utils.set_random_seed(config.seed)
    out = Path(config.out) if is_chief() else Path(tempfile.mkdtemp(prefix="worker-bundle-"))
    report_dir = Path(config.report_dir) if config.report_dir else out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    img_size = config.network_size
    input_size = config.input_size or img_size
    data = load_training_data(config, input_size)
    fit = fit_models(config, data, img_size, strategy, report_dir)
    calibration = calibrate(fit, data)
    fitted = fit_bundle_gate(config, data, fit.folds)
    save_out_of_fold(report_dir, data, fit, fitted)
    metrics = score_and_report(fit.model, data, calibration, fit.history, report_dir)
    card = model_card(config, argv, img_size, input_size, data, fit, fitted, calibration, metrics)
    score_test_and_export(fit.model, config, out, card, data, calibration, fitted.gate, input_size)
    print(markdown_table(metrics, ["accuracy", "precision", "recall", "f1", "auc", "loss"]))
    print(f"bundle written to {out} (report in {report_dir}); {fit.seconds:.0f} s of training")
    return read_card(out)  # as written


@dataclass
class TrainingData:
    """The training split's slices (model inputs, labels, base-slice groups) and the CT
    gate's synthetic / photo negatives."""

    records: list[ImageRecord]
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    negatives: list[Negative]
    neg_images: np.ndarray


def load_training_data(config: TrainConfig, input_size: int) -> TrainingData:
    """A folder with train/ and val/ splits: only train/ is ever trained, tuned or
    calibrated on."""
    records = find_images(config.data, splits=TRAINING_SPLITS)
    images, labels = load_arrays(records, input_size, EXPORT_WINDOW)
    groups = groups_of(records)
    print(f"{len(records)} files, {len(set(groups))} base slices, series: "
          f"{sorted({series_of(g) for g in groups})}")  # fmt: skip
    negatives = generate_negatives(config.gate_negatives, seed=config.seed)
    neg_images = np.stack([gray_to_model_input(n.gray, input_size) for n in negatives])
    return TrainingData(records, images, labels, groups, negatives, neg_images)


@dataclass
class ModelFit:
    """The bundle's model, fitted on every series, and the cross-validation before it."""

    model: keras.Model
    history: dict[str, list[float]]
    val_idx: np.ndarray  # the slices that chose the epoch
    oof: np.ndarray  # out-of-fold P(fracture) per slice (NaN without folds)
    folds: dict[str, Any]
    seconds: float  # of training, folds included


def fit_models(
    config: TrainConfig,
    data: TrainingData,
    img_size: int,
    strategy: tf.distribute.Strategy,
    report_dir: Path,
) -> ModelFit:
    """Leave one series out (``cv="series"``: a model per held-out series, its out-of-fold
    scores), then fit the bundle's model on every series."""
    started = time.perf_counter()
    if config.cv == "series":
        oof, folds = cross_validate_series(
            config, data.records, data.images, data.labels, img_size, strategy
        )
    else:
        oof = np.full(len(data.records), np.nan)
        folds = {}
    keras.utils.set_random_seed(config.seed)
    model, history, val_idx = fit_on(
        config, data.images, data.labels, data.groups, img_size, strategy, report_dir
    )
    return ModelFit(model, history, val_idx, oof, folds, time.perf_counter() - started)


@dataclass
class Calibration:
    """Temperature and operating points, and the scores they were set on."""

    p: np.ndarray  # calibrated P(fracture) of the calibration slices
    y: np.ndarray
    groups: np.ndarray
    source: str  # which slices: out-of-fold, or (cv="none") the epoch-choosing ones
    out_of_fold: bool
    raw_ece: float
    temperature: float
    operating_points: dict[str, dict[str, float]]

    @property
    def threshold(self) -> float:
        """The default (sensitive) operating point's threshold."""
        return self.operating_points["sensitive"]["threshold"]


def calibrate(fit: ModelFit, data: TrainingData) -> Calibration:
    """Temperature scaling (when the ECE is over :data:`ECE_TOLERANCE`) and operating points
    on the out-of-fold scores when there are folds; else (cv="none") on the epoch-choosing
    validation slices, which the card then says."""
    have_oof = bool(np.isfinite(fit.oof).all())
    if have_oof:
        cal_p, cal_y, cal_groups, cal_source = (
            fit.oof,
            data.labels,
            data.groups,
            "leave-one-series-out out-of-fold",
        )
    else:
        cal_p = predict_arrays(fit.model, data.images[fit.val_idx])
        cal_y, cal_groups, cal_source = (
            data.labels[fit.val_idx],
            data.groups[fit.val_idx],
            "epoch-choosing validation slices",
        )
    raw_ece = expected_calibration_error(cal_y, cal_p)
    temperature = fit_temperature(cal_y, cal_p) if raw_ece > ECE_TOLERANCE else 1.0
    cal_p = apply_temperature(cal_p, temperature)
    print(f"{cal_source} ECE {raw_ece:.4f} -> temperature {temperature:.3f}")
    operating_points = choose_operating_points(cal_y, cal_p)
    return Calibration(
        cal_p, cal_y, cal_groups, cal_source, have_oof, raw_ece, temperature, operating_points
    )


def fit_bundle_gate(config: TrainConfig, data: TrainingData, folds: dict[str, Any]) -> GateFit:
    """The CT gate: its own features (not the network's), its own series folds; each
    cross-validation fold records the gate's threshold."""
    series = np.array([series_of(g) for g in data.groups])
    fitted = fit_gate(
        data.images,
        series,
        data.negatives,
        data.neg_images,
        config.seed,
        data.records,
        config.cv == "series",
    )
    for fold in folds.values():
        fold["gate_threshold"] = fitted.gate.threshold
    return fitted


def save_out_of_fold(report_dir: Path, data: TrainingData, fit: ModelFit, gate: GateFit) -> None:
    """Per training slice: its out-of-fold P(fracture) and CT gate logits, label and group."""
    np.savez(
        report_dir / "out_of_fold.npz",
        probability=fit.oof,
        gate_logit=gate.oof,
        gate_logit_reexported=gate.oof_reexported,
        label=data.labels,
        group=data.groups,
    )


def score_and_report(
    model: keras.Model,
    data: TrainingData,
    calibration: Calibration,
    history: dict[str, list[float]],
    report_dir: Path,
) -> dict[str, Any]:
    """Metrics at the default operating point (in-sample, and pooled out-of-fold when there
    are folds), with the plots and tables of the report folder."""
    p_train = apply_temperature(predict_arrays(model, data.images), calibration.temperature)
    threshold = calibration.threshold
    metrics: dict[str, Any] = {
        "train (in-sample)": compute_metrics(data.labels, p_train, threshold)
    }
    if calibration.out_of_fold:
        metrics["out_of_fold (pooled)"] = compute_metrics(data.labels, calibration.p, threshold)
    _write_reports(report_dir, history, metrics, calibration.y, calibration.p)
    return metrics


def model_card(
    config: TrainConfig,
    argv: list[str] | None,
    img_size: int,
    input_size: int,
    data: TrainingData,
    fit: ModelFit,
    fitted: GateFit,
    calibration: Calibration,
    metrics: dict[str, Any],
) -> ModelCard:
    """The model card the bundle is written with (without the held-back split's table)."""
    records, labels, groups = data.records, data.labels, data.groups
    oof, folds, train_seconds = fit.oof, fit.folds, fit.seconds
    gate, have_oof = fitted.gate, calibration.out_of_fold
    cal_p, cal_y, cal_groups = calibration.p, calibration.y, calibration.groups
    cal_source, raw_ece = calibration.source, calibration.raw_ece
    temperature, operating_points = calibration.temperature, calibration.operating_points

    calibration_section = {
        "source": cal_source,
        "raw_ece": raw_ece,
        "calibrated_ece": expected_calibration_error(cal_y, cal_p),
        "method": "temperature scaling" if temperature != 1.0 else "none needed",
        "tolerance": ECE_TOLERANCE,
    }
    study = calibrate_study_threshold(cal_p, cal_y, cal_groups, seed=config.seed)
    study["calibration"]["source"] = cal_source
    if not have_oof:  # drift monitoring's reference must be out-of-fold scores
        study.pop("score_histogram")
    series_table = None
    if have_oof:
        series_table = series_report(labels, oof, fitted.oof, groups, folds, config.seed)
        print(json.dumps({k: v["summary"] for k, v in series_table.items()}, indent=1))
    figures = CardFigures(img_size, input_size, temperature, operating_points, metrics)
    sections = CardSections(calibration_section, study, gate, series_table, train_seconds)
    return build_card(config, records, figures, sections, argv)


def score_test_and_export(
    model: keras.Model,
    config: TrainConfig,
    out: Path,
    card: ModelCard,
    data: TrainingData,
    calibration: Calibration,
    gate: CTGate,
    input_size: int,
) -> None:
    """Score the held-back split once (``test_data``: the card's ``test``), then write the
    bundle, its ONNX Runtime copy checked against TensorFlow."""
    images, neg_images = data.images, data.neg_images
    temperature, threshold = calibration.temperature, calibration.threshold
    # ONNX Runtime is checked against TensorFlow on every training slice (the slices of the
    # out-of-fold predictions), the held-back split and the gate's negatives.
    parity_slices = {
        "train (the out-of-fold slices)": images,
        "non-CT (gate negatives)": neg_images,
    }
    if config.test_data:
        test_records = find_images(config.test_data)
        test_images, test_labels = load_arrays(test_records, input_size, EXPORT_WINDOW)
        card.test = test_table(
            model, config, test_records, test_images, test_labels, temperature, threshold, gate
        )
        parity_slices["val"] = test_images
    export_bundle(
        model, out, card, gate, tflite_float16=config.tflite_float16, parity_slices=parity_slices
    )


def _builder_options(config: TrainConfig) -> dict[str, Any]:
    options: dict[str, Any] = {"input_size": config.input_size or None}
    return options | {"weights": config.weights} if is_pretrained(config.arch) else options


def _write_reports(
    report_dir: Path,
    history: dict[str, list[float]],
    metrics: dict[str, dict[str, Any]],
    y_val: np.ndarray,
    p_val: np.ndarray,
) -> None:
    plot_history(history, report_dir / "training_curves.png")
    shown = list(metrics)[-1]  # the out-of-fold scores when there are folds
    plot_confusion_matrix(
        metrics[shown]["confusion_matrix"],
        report_dir / "confusion_matrix.png",
        title=f"Confusion matrix: {shown}",
    )
    plot_roc(y_val, p_val, report_dir / "roc_curve.png")
    plot_reliability(y_val, p_val, report_dir / "reliability.png")
    keys = ["accuracy", "precision", "recall", "f1", "auc", "loss"]
    (report_dir / "metrics_table.md").write_text(markdown_table(metrics, keys))
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))


def data_fingerprint(root: str | Path) -> dict[str, str]:
    """sha256 of the data MANIFEST (in the folder or its parent), else of the file list."""
    root = Path(root)
    for candidate in (root / "MANIFEST.csv", root.parent / "MANIFEST.csv"):
        if candidate.is_file():
            return {
                "manifest": candidate.name,
                "sha256": hashlib.sha256(candidate.read_bytes()).hexdigest(),
            }
    listing = "\n".join(
        f"{p.relative_to(root)}:{p.stat().st_size}" for p in sorted(root.rglob("*")) if p.is_file()
    )
    return {"manifest": "file list", "sha256": hashlib.sha256(listing.encode()).hexdigest()}


def test_table(
    model: keras.Model,
    config: TrainConfig,
    records: list[ImageRecord],
    images: np.ndarray,
    labels: np.ndarray,
    temperature: float,
    threshold: float,
    gate: CTGate,
) -> dict[str, Any]:
    """The seeds' test table on a held-back split (its ``records`` and loaded ``images``),
    scored once after every choice is made."""
    probs = apply_temperature(predict_arrays(model, images), temperature)
    accepted = gate.logits(gate.features(images)) >= gate.threshold
    report = held_out_report(labels, probs, accepted, groups_of(records), threshold, config.seed)
    return report | {"data": str(config.test_data), "seed_reported": SEED_TEST_NUMBERS}


@dataclass(frozen=True)
class CardFigures:
    """The model's sizes and what calibration chose, for its card."""

    img_size: int  # the network's view (the spine crop's output when cropping)
    input_size: int  # the model's input: the whole slice
    temperature: float
    operating_points: dict[str, dict[str, float]]
    metrics: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class CardSections:
    """The card's reports: calibration, the study threshold, the CT gate, the per-series
    table (leave-one-series-out only) and the training time."""

    calibration: dict[str, Any]
    study: dict[str, Any]  # calibrate_study_threshold's
    gate: CTGate
    leave_one_series_out: dict[str, Any] | None
    train_seconds: float


def build_card(
    config: TrainConfig,
    records: list[ImageRecord],
    figures: CardFigures,
    sections: CardSections,
    argv: list[str] | None,
) -> ModelCard:
    """The bundle's model card, typed (validated here, written by ``export_bundle``); the
    held-back split's ``test`` table is added once scored."""
    now = datetime.now(UTC)
    crop = None
    if config.input_size:
        crop = Crop(method="spine", output_size=figures.img_size, layer=SPINE_CROP_LAYER)
    gate = sections.gate
    return ModelCard(
        name=f"{config.arch}-cervical-fracture",
        version=now.strftime("%Y.%m.%d"),
        architecture=config.arch,
        created=now.isoformat(timespec="seconds"),
        package_version=__version__,
        input=InputSpec(
            size=figures.input_size,
            channels=3,
            serving_dtype="uint8",
            window=Window(level=EXPORT_WINDOW_LEVEL, width=EXPORT_WINDOW_WIDTH),
            preprocessing="decode -> grayscale (DICOM: HU through the card's window) -> "
            "bilinear resize to input.size -> 3 channels; the spine crop, scaling and "
            "calibration are inside the model",
            crop=crop,
        ),
        output="P(fracture) from a sigmoid",
        temperature=figures.temperature,
        default_operating_point="sensitive",
        operating_points={
            name: OperatingPointStats.model_validate(point)
            for name, point in figures.operating_points.items()
            if name in OPERATING_POINTS
        },
        gradcam_layer=gradcam_layer(config.arch),
        study=StudySettings.model_validate(sections.study),
        gate=GateSettings.model_validate(
            gate.details | {"threshold": gate.threshold, "file": GATE_FILE}
        ),
        metrics=figures.metrics,
        training={
            "argv": list(argv) if argv is not None else None,
            **{k: v for k, v in asdict(config).items() if k not in ("out", "report_dir", "data")},
            "seconds": round(sections.train_seconds, 1),
            "series": sorted({series_of(r.group) for r in records}),
        },
        data={
            "description": "Axial cervical-spine CT slices, fracture vs normal "
            "(Kaggle 'Spine Fracture Prediction from C.T. Dataset', train split).",
            "files": len(records),
            "distinct_slices": len({r.group for r in records}),
            **data_fingerprint(config.data),
        },
        caveats=DATA_CAVEATS,
        intended_use=INTENDED_USE,
        calibration=sections.calibration,
        leave_one_series_out=sections.leave_one_series_out,
    )


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """The command line -> a :class:`TrainConfig`; ``--out`` defaults to runs/<arch>."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_config_arguments(parser, TrainConfig)
    parser.set_defaults(out=None)
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.setdefault("out", f"runs/{args.arch}")
    return TrainConfig(**values)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    try:
        train(config, argv)
    except (WeightsUnavailableError, DatasetError) as exc:
        # One clear message (what is missing and how to fix it), not a stack trace.
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
