"""Train the RSNA 2022 study model (2.5D slice CNN + study head) and export a study bundle.

    python -m ml_model.train_rsna --rsna <competition folder> --out <bundle> [--epochs n]
        [--arch efficientnet_lite0] [--size 256] [--studies N] [--folds K] [--holdout 0.2]
        [--cache DIR] [--strategy auto|mirrored|multiworker] [--mixed-precision] [--resume]

Which public solution this follows, and why: the **3rd place** (a 2D CNN over each slice,
then an RNN over the slice sequence). It is the one that fits this product's bundle: one
slice network (the SavedModel / ONNX graph every runtime serves, Grad-CAM included) and a
small sequence head that runs in numpy. The 1st place's C1-C7 segmentation stage is stood in
for by a vertebra-presence head on the same slice network (``rsna_slice``: which of C1..C7
a slice shows, learnt from the 87 segmentations); it tells the study head where along the
spine each slice is, and gives the level-matched specificity its levels. The 4th place's 3D
classifier per vertebra would need the vertebrae cut out first, i.e. the segmentation again.

Steps (every choice made on training patients only; the held-out patients are scored once):

1. cache (``ml_model.data.rsna.build_cache``): every slice once through the DICOM path,
   windowed and resized, one compressed file per study, resumable;
2. split: ``--holdout`` of the patients (stratified) are held out for the final report;
3. K-fold over the other (development) patients, for each fold:
   stage 1: the 2.5D slice CNN (``rsna_slice``) on labelled slices, class-balanced (every
   fracture slice, ``--negatives-per-positive`` times as many no-fracture slices drawn
   afresh each epoch, and slices whose only label is their vertebra level), streamed
   study by study from the cache (parallel readers, one study each);
   out-of-fold features: every slice of the fold's held-out studies through that CNN;
   then stage 2: for each fold a study head (``architectures.study_head``: BiGRU +
   attention) on the other folds' out-of-fold feature sequences (resampled to T slices;
   patient_overall and C1-C7 targets, the competition's weights in the loss) scores the
   fold's studies: out-of-fold study and slice scores. The head learns from features of
   studies the CNN never saw, as the 3rd place trained its RNN, because that is what the
   CNN gives in serving (features of its own training studies are overconfident);
4. on the out-of-fold scores: the study score (``AGGREGATIONS``: the head's
   patient_overall, or the mean of the top 1-3 slice probabilities, whichever ranks the
   patients best; the head's C1-C7 either way), and the operating points (sensitive /
   specific, patient_overall and each vertebra, and the slice score);
5. final models: stage 1 on all development patients, the study head on all their
   out-of-fold features (on in-sample features when there are no folds);
6. held-out evaluation through the numpy head the server runs: competition log loss, AUC /
   sensitivity / specificity per output with patient-bootstrap intervals, slice figures and
   the level-matched specificity at the out-of-fold thresholds;
7. the CT gate (``gate_fit.fit_gate``) on 2.5D inputs of development slices, out of fold
   by patient fold, against ``data.negatives``;
8. the bundle (``export.export_bundle``: model, SavedModel + ONNX with ``slice_features``,
   study_head.npz, gate, the card with every figure and its provenance).

A figure the data cannot give is null with its reason (the real 5-study sample: every
patient positive, every slice labelled 0). Distribution: ``--strategy`` (``training.
distribute``); every worker runs the stage-1 fits (collectives), the chief (worker 0) alone
extracts features, fits the heads and the gate, and writes the bundle. ``--resume``: each
finished fit is kept in ``<out>/report`` (``<phase>.weights.h5``) and an interrupted one
resumes after its last finished epoch (``<out>/report/backup/<phase>``: weights, optimizer
state, epochs done).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf

from ml_model import __version__
from ml_model.architectures.registry import gradcam_layer, is_pretrained
from ml_model.architectures.rsna_slice import (
    FRACTURE_OUTPUT,
    VERTEBRAE_OUTPUT,
    build_slice_model,
    slice_feature_dim,
    slice_features_tf,
    training_view,
)
from ml_model.architectures.study_head import (
    build_study_head,
    feature_standardisation,
    study_head_arrays,
)
from ml_model.architectures.transfer import WeightsUnavailableError
from ml_model.bundle import GATE_FILE, STUDY_HEAD_FILE
from ml_model.card import (
    STUDY_HEAD_AGGREGATION,
    STUDY_OUTPUTS,
    VERTEBRAE,
    ModelCard,
    read_card,
    score_histogram,
    top_k_mean,
)
from ml_model.config import BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH
from ml_model.data.negatives import generate as generate_negatives
from ml_model.data.rsna import (
    CacheReport,
    RsnaDataError,
    StudyLabels,
    build_cache,
    cached_uids,
    find_studies,
    load_study,
    patient_folds,
    read_cached,
    read_labels,
)
from ml_model.evaluation.rsna_metrics import (
    BOOTSTRAP_ROUNDS,
    DEFAULT_TARGET,
    NEGATIVE_WEIGHTS,
    POSITIVE_WEIGHTS,
    auc,
    binary_report,
    level_matched_specificity,
    operating_points,
    study_report,
)
from ml_model.imaging.transforms import gray_to_model_input, neighbour_offset, stack_neighbours
from ml_model.inference.study import aggregate
from ml_model.inference.study_head import StudyHead, resample_sequence
from ml_model.training.cli import add_config_arguments, option
from ml_model.training.distribute import (
    STRATEGIES,
    is_chief,
    make_strategy,
    use_mixed_precision,
    worker_index,
)
from ml_model.training.export import export_bundle
from ml_model.training.gate_fit import fit_gate

APPROACH = {
    "follows": "RSNA 2022 3rd place: a 2D CNN per slice, then an RNN over the slice sequence",
    "why": "one slice network serves every runtime (SavedModel, ONNX, Grad-CAM) and the "
    "study head is small enough for numpy in the server; the 1st place's C1-C7 "
    "segmentation stage is replaced by a vertebra-presence head on the slice network "
    "(learnt from the segmentations), which places each slice along the spine for the "
    "study head and gives the level-matched specificity its levels; the 4th place's 3D "
    "per-vertebra classifier needs that segmentation too",
    "slice_model": "2.5D: the slice and its neighbours context_mm above and below as the three "
    "channels -> registry backbone -> embedding -> P(fracture), P(C1..C7 in view)",
    "study_head": "slice features concat(logit P(fracture), logit P(C1..C7), embedding) "
    "resampled to T slices -> standardise -> BiGRU -> attention pooling -> 8 logits",
}
LABEL_POLICY = {
    "fracture_slices": "slices a fracture box was drawn on (train_bounding_boxes.csv)",
    "normal_slices": "every other slice of a study with boxes (RSNA boxed all of its "
    "fractures), and every slice of a patient-negative study",
    "unknown_slices": "slices of patient-positive studies without boxes: left out of the "
    "slice loss (not weak labels); their study still trains the study head",
    "levels": "C1..C7 per slice from segmentations/<uid>.nii(.gz) where present; the "
    "vertebra head learns only from those studies",
    "study_targets": "patient_overall and C1..C7 from train.csv",
}
INTENDED_USE = (
    "Decision support for triage of cervical-spine CT studies by a physician: a study "
    "probability of fracture and one per vertebra (C1-C7). Not a diagnostic device: every "
    "study must still be read by a qualified reader."
)
LICENCE = (
    "RSNA 2022 Cervical Spine Fracture Detection data: non-commercial research and "
    'education only; cite "Cervical Spine Fracture Detection Dataset, Copyright RSNA, 2023".'
)
FORWARD_BATCH = 64
SHUFFLE_BUFFER = 512
HEAD_BATCH = 16


@dataclass
class RsnaConfig:
    """Every parameter of an RSNA training run (what ``--help`` lists)."""

    rsna: str = option("", "the competition folder (train_images/, train.csv)", required=True)
    out: str = option("runs/rsna", "the bundle folder (report/ inside)")
    cache: str | None = option(None, "cache folder (default <out>/../rsna-cache-<size>)")
    arch: str = option(
        "efficientnet_lite0", "compact | custom | efficientnet_lite0 | ... (registry)"
    )
    weights: str = option("imagenet", "backbone weights: imagenet | none | PATH")
    size: int = option(256, "slice size in pixels")
    window_level: float = option(BONE_WINDOW_LEVEL)
    window_width: float = option(BONE_WINDOW_WIDTH)
    context_mm: float = option(2.0, "2.5D neighbour distance")
    embedding: int = option(16)
    epochs: int = option(4, "stage-1 epochs per fit")
    batch_size: int = option(32, "per replica")
    lr: float = option(1e-3)
    negatives_per_positive: float = option(1.0)
    max_slices_per_epoch: int | None = option(None)
    readers: int = option(4, "studies read in parallel")
    sequence_length: int = option(128)
    head_units: int = option(32)
    head_epochs: int = option(60)
    head_lr: float = option(3e-3)
    studies: int | None = option(None, "only the first N studies")
    folds: int = option(5, "patient folds (< 2: none)")
    holdout: float = option(0.2, "held-out patient share")
    target: float = option(DEFAULT_TARGET, "operating points' target")
    strategy: str = option("auto", choices=STRATEGIES)
    mixed_precision: bool = option(False, "float16 compute on GPU")
    resume: bool = option(False, "keep finished fits, resume the rest")
    seed: int = option(42)
    gate_negatives: int = option(120)
    gate_slices: int = option(1500)
    bootstrap_rounds: int = option(BOOTSTRAP_ROUNDS)
    tflite_float16: bool = option(False)
    progress: bool = option(True, "no progress bars")

    @property
    def window(self) -> tuple[float, float]:
        return (self.window_level, self.window_width)

    def cache_dir(self) -> Path:
        if self.cache:
            return Path(self.cache)
        return Path(self.out).resolve().parent / f"rsna-cache-{self.size}"


# Fields a resumed run must share with the run it resumes.
RESUME_KEYS = (
    "arch", "weights", "size", "window_level", "window_width", "context_mm", "embedding",
    "epochs", "batch_size", "lr", "negatives_per_positive", "max_slices_per_epoch", "studies",
    "folds", "holdout", "seed",
)  # fmt: skip


# ---------------------------------------------------------------------------- study sources


@dataclass(frozen=True)
class StudyIndex:
    """A study's labels without its pixels (what sampling and evaluation need)."""

    uid: str
    slice_label: np.ndarray  # int8 (Z,): 1, 0, -1 (unknown)
    levels: np.ndarray  # uint8 (Z, 7)
    levels_known: bool
    spacing_mm: float
    study_labels: np.ndarray  # float32 (8,), STUDY_OUTPUTS order

    @property
    def slices(self) -> int:
        return len(self.slice_label)

    def known_levels(self) -> np.ndarray:
        """(Z, 7) levels where known, zeros where not (they then count nowhere)."""
        return self.levels if self.levels_known else np.zeros_like(self.levels)


class StudySource(Protocol):
    """Where studies come from: the cache, or memory in tests."""

    def index(self, uid: str) -> StudyIndex: ...

    def pixels(self, uid: str) -> np.ndarray: ...


INDEX_ARRAYS = ("slice_label", "levels", "levels_known", "spacing_mm", "study_labels")


class CacheSource:
    """Studies of an ``ml_model.data.rsna`` cache, read one at a time."""

    def __init__(self, cache_dir: str | Path) -> None:
        self.cache_dir = Path(cache_dir)

    def index(self, uid: str) -> StudyIndex:
        data = read_cached(self.cache_dir, uid, INDEX_ARRAYS)  # the pixels stay compressed
        return StudyIndex(
            uid,
            data["slice_label"].astype(np.int8),
            data["levels"].astype(np.uint8),
            bool(data["levels_known"]),
            float(data["spacing_mm"]),
            data["study_labels"].astype(np.float32),
        )

    def pixels(self, uid: str) -> np.ndarray:
        return load_study(self.cache_dir, uid).pixels


@dataclass
class MemorySource:
    """Studies held in memory (tests): objects with the cache's fields
    (``pixels``, ``slice_label``, ``levels``, ``levels_known``, ``spacing_mm``,
    ``study_labels``)."""

    studies: Mapping[str, Any]

    def index(self, uid: str) -> StudyIndex:
        s = self.studies[uid]
        return StudyIndex(
            uid,
            np.asarray(s.slice_label, np.int8),
            np.asarray(s.levels, np.uint8),
            bool(s.levels_known),
            float(s.spacing_mm),
            np.asarray(s.study_labels, np.float32),
        )

    def pixels(self, uid: str) -> np.ndarray:
        return np.asarray(self.studies[uid].pixels, np.uint8)


# ---------------------------------------------------------------------------- stage 1 data


def epoch_sample(
    indexes: Sequence[StudyIndex],
    negatives_per_positive: float,
    max_slices: int | None,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """One epoch's slices, class-balanced: every fracture slice, ``negatives_per_positive``
    times as many no-fracture slices (all of them when there is no fracture slice), and up
    to half as many again of unknown-label slices whose level is known (they train the
    vertebra head only). Returns sorted slice indices per study (position in ``indexes``)."""
    study_of: list[np.ndarray] = []
    slice_of: list[np.ndarray] = []
    label_of: list[np.ndarray] = []
    for k, index in enumerate(indexes):
        labels = index.slice_label.astype(np.int64)
        if not index.levels_known:
            labels = np.where(labels < 0, -2, labels)  # unknown and no level: unusable
        study_of.append(np.full(len(labels), k))
        slice_of.append(np.arange(len(labels)))
        label_of.append(labels)
    if not study_of:
        return {}
    studies, slices, labels = (np.concatenate(a) for a in (study_of, slice_of, label_of))
    positive = np.flatnonzero(labels == 1)
    negative = np.flatnonzero(labels == 0)
    level_only = np.flatnonzero(labels == -1)
    n_neg = (
        len(negative)
        if len(positive) == 0
        else min(len(negative), math.ceil(negatives_per_positive * len(positive)))
    )
    chosen = [positive, rng.choice(negative, n_neg, replace=False)]
    n_level = min(len(level_only), (len(positive) + n_neg) // 2)
    chosen.append(rng.choice(level_only, n_level, replace=False))
    picked = np.concatenate(chosen).astype(np.int64)
    if max_slices is not None and len(picked) > max_slices:
        picked = rng.choice(picked, max_slices, replace=False)
    sample: dict[int, np.ndarray] = {}
    for k in np.unique(studies[picked]):
        sample[int(k)] = np.sort(slices[picked[studies[picked] == k]])
    return sample


def sample_size(
    indexes: Sequence[StudyIndex], negatives_per_positive: float, max_slices: int | None
) -> int:
    """How many slices :func:`epoch_sample` draws (the same every epoch)."""
    sample = epoch_sample(indexes, negatives_per_positive, max_slices, np.random.default_rng(0))
    return int(sum(len(v) for v in sample.values()))


def slice_targets(index: StudyIndex, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fracture (n, 1), vertebrae (n, 7)) float32 targets; -1 marks what is not known."""
    fracture = index.slice_label[rows].astype(np.float32)[:, None]
    if index.levels_known:
        vertebrae = index.levels[rows].astype(np.float32)
    else:
        vertebrae = np.full((len(rows), len(VERTEBRAE)), -1.0, np.float32)
    return fracture, vertebrae


class EpochPlan:
    """Which slices of which studies each epoch draws (:func:`epoch_sample`, seeded by
    (seed, epoch)) and the order of its studies; computed once per epoch and shared by the
    parallel readers (thread-safe)."""

    def __init__(self, indexes: Sequence[StudyIndex], config: RsnaConfig, seed: int) -> None:
        self.indexes = indexes
        self.config = config
        self.seed = seed
        self._plans: dict[int, tuple[dict[int, np.ndarray], np.ndarray]] = {}
        self._lock = threading.Lock()

    def plan(self, epoch: int) -> tuple[dict[int, np.ndarray], np.ndarray]:
        """(slice rows per study, study order) of ``epoch``."""
        with self._lock:
            if epoch not in self._plans:
                rng = np.random.default_rng([self.seed, epoch])
                sample = epoch_sample(self.indexes, self.config.negatives_per_positive,
                                      self.config.max_slices_per_epoch, rng)  # fmt: skip
                order = rng.permutation(np.array(sorted(sample), dtype=np.int64))
                self._plans[epoch] = (sample, order)
                for old in [e for e in self._plans if e < epoch - 2]:
                    del self._plans[old]
            return self._plans[epoch]

    def studies(self, first_epoch: int = 0) -> Iterator[tuple[int, int]]:
        """Endless (epoch, study position) pairs, epoch after epoch."""
        epoch = first_epoch
        while True:
            for k in self.plan(epoch)[1]:
                yield epoch, int(k)
            epoch += 1

    def examples(
        self, source: StudySource, epoch: int, k: int
    ) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """One study's (2.5D stack, targets) examples of ``epoch``, in a random order."""
        index = self.indexes[k]
        rows = self.plan(epoch)[0][k]
        offset = neighbour_offset(index.spacing_mm, self.config.context_mm)
        stacks = stack_neighbours(source.pixels(index.uid), rows, offset)
        fracture, vertebrae = slice_targets(index, rows)
        rng = np.random.default_rng([self.seed, epoch, k])
        for i in rng.permutation(len(rows)):
            yield stacks[i], {FRACTURE_OUTPUT: fracture[i], VERTEBRAE_OUTPUT: vertebrae[i]}


SHIFT_FRACTION = 0.08  # random translation, each axis, of the training slices
CONTRAST_RANGE = (0.85, 1.15)


def augment_slice(image: tf.Tensor, size: int) -> tf.Tensor:
    """A training slice (uint8 (S, S, 3)) as float: mirrored left-right at random, shifted up
    to 8 % each way (edge pixels repeated) and its contrast scaled by 0.85-1.15 around its
    mean. Nothing that moves a slice along the spine: the channels stay in their order."""
    pixels = tf.image.random_flip_left_right(tf.cast(image, tf.float32))
    pad = max(1, round(size * SHIFT_FRACTION))
    padded = tf.pad(pixels, [[pad, pad], [pad, pad], [0, 0]], mode="SYMMETRIC")
    shifted = tf.image.random_crop(padded, (size, size, 3))
    scale = tf.random.uniform((), *CONTRAST_RANGE)
    mean = tf.reduce_mean(shifted)
    return tf.clip_by_value((shifted - mean) * scale + mean, 0.0, 255.0)


def slice_dataset(
    source: StudySource,
    indexes: Sequence[StudyIndex],
    config: RsnaConfig,
    global_batch: int,
    seed: int,
    first_epoch: int = 0,
) -> tuple[tf.data.Dataset, int]:
    """(endless batched dataset, steps per epoch): each epoch's :class:`EpochPlan` read study
    by study by ``config.readers`` parallel readers, shuffled, augmented, batched. Each worker
    streams its own draw (seeded by its task index); auto-sharding is off, a generator
    cannot be sharded."""
    size = config.size
    signature = (
        tf.TensorSpec((size, size, 3), tf.uint8),
        {
            FRACTURE_OUTPUT: tf.TensorSpec((1,), tf.float32),
            VERTEBRAE_OUTPUT: tf.TensorSpec((len(VERTEBRAE),), tf.float32),
        },
    )
    plan = EpochPlan(indexes, config, seed)
    studies = tf.data.Dataset.from_generator(
        lambda: plan.studies(first_epoch),
        output_signature=(tf.TensorSpec((), tf.int64), tf.TensorSpec((), tf.int64)),
    )

    def study_examples(epoch: tf.Tensor, k: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.from_generator(
            lambda e, i: plan.examples(source, int(e), int(i)),
            args=(epoch, k),
            output_signature=signature,
        )

    # config.readers studies are read at once (npz decompression runs outside the GIL),
    # their slices interleaved; each reader holds one study.
    readers = max(1, config.readers)
    dataset = studies.interleave(
        study_examples, cycle_length=readers, num_parallel_calls=readers, deterministic=True
    )

    def augment(image: tf.Tensor, targets: dict[str, tf.Tensor]) -> tuple[tf.Tensor, Any]:
        return augment_slice(image, size), targets

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    dataset = (
        dataset.shuffle(SHUFFLE_BUFFER, seed=seed)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(global_batch)
        .prefetch(tf.data.AUTOTUNE)
        .with_options(options)
    )
    count = sample_size(indexes, config.negatives_per_positive, config.max_slices_per_epoch)
    return dataset, max(1, math.ceil(count / global_batch))


# ---------------------------------------------------------------------------- stage 1 fit


def masked_binary_crossentropy(y_true: Any, y_pred: Any) -> Any:
    """Per-example mean binary cross-entropy over the targets that are known (>= 0);
    an example with none contributes 0."""
    ops = keras.ops
    y = ops.cast(y_true, "float32")
    p = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1.0 - 1e-7)
    known = ops.cast(y >= 0.0, "float32")
    y = ops.clip(y, 0.0, 1.0)
    bce = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
    return ops.sum(bce * known, axis=-1) / ops.maximum(ops.sum(known, axis=-1), 1.0)


LOSS_NAMES = ("loss", f"{FRACTURE_OUTPUT}_loss", f"{VERTEBRAE_OUTPUT}_loss")


@dataclass
class SliceFit:
    """A fitted slice model and what its fit measured."""

    model: keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)
    slices_per_second: list[float] = field(default_factory=list)
    slices_per_epoch: int = 0
    resumed: bool = False


class EpochBackup:
    """The state of an unfinished fit after each epoch (model weights, optimizer variables,
    epochs done) in one folder, so an interrupted fit resumes where it stopped. Written by
    every worker into its own work folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def save(self, model: keras.Model, optimizer: keras.optimizers.Optimizer, epochs: int) -> None:
        scratch = self.folder.with_name(self.folder.name + ".tmp")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        model.save_weights(scratch / "model.weights.h5")
        values: dict[str, Any] = {f"v{i}": np.asarray(v) for i, v in enumerate(optimizer.variables)}
        np.savez(scratch / "optimizer.npz", **values)
        (scratch / "state.json").write_text(json.dumps({"epochs_done": epochs}))
        self.clear()
        scratch.rename(self.folder)

    def restore(self, model: keras.Model, optimizer: keras.optimizers.Optimizer) -> int:
        """Epochs done by the interrupted fit (0 without a backup)."""
        state = self.folder / "state.json"
        if not state.is_file():
            return 0
        model.load_weights(self.folder / "model.weights.h5")
        with np.load(self.folder / "optimizer.npz") as saved:
            for i, variable in enumerate(optimizer.variables):
                variable.assign(saved[f"v{i}"])
        return int(json.loads(state.read_text())["epochs_done"])


def _train_step(
    trainer: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    strategy: tf.distribute.Strategy,
    global_batch: int,
) -> Callable[[Any], tf.Tensor]:
    """One synchronous step on the next distributed batch: per-replica masked losses scaled
    by the global batch, gradients all-reduced by the optimizer (``apply_gradients`` in
    replica context), the losses (total, fracture, vertebrae) summed over replicas."""
    scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

    def replica_step(images: tf.Tensor, targets: dict[str, tf.Tensor]) -> tf.Tensor:
        with tf.GradientTape() as tape:
            outputs = trainer(images, training=True)
            parts = [
                masked_binary_crossentropy(targets[name], outputs[name])
                for name in (FRACTURE_OUTPUT, VERTEBRAE_OUTPUT)
            ]
            per_example = [tf.nn.compute_average_loss(p, global_batch_size=global_batch)
                           for p in parts]  # fmt: skip
            loss = tf.add_n(per_example)
            if trainer.losses:
                loss += tf.nn.scale_regularization_loss(tf.add_n(trainer.losses))
            to_differentiate = optimizer.scale_loss(loss) if scaled else loss
        variables = trainer.trainable_variables
        gradients = tape.gradient(to_differentiate, variables)
        optimizer.apply_gradients(zip(gradients, variables, strict=True))
        return tf.stack([loss, *per_example])

    @tf.function
    def step(iterator: Any) -> tf.Tensor:
        images, targets = next(iterator)
        losses = strategy.run(replica_step, args=(images, targets))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    return step


def fit_slice_stage(
    config: RsnaConfig,
    source: StudySource,
    uids: Sequence[str],
    strategy: tf.distribute.Strategy,
    work: Path,
    phase: str,
    verbose: bool = True,
) -> SliceFit:
    """Stage 1 on the studies ``uids``: build under ``strategy``, stream class-balanced 2.5D
    slices, ``config.epochs`` epochs of synchronous steps (a custom loop: Keras 3.15's
    ``model.fit`` fails under MultiWorkerMirroredStrategy with several workers, it reduces
    the scalar logs along axis 0). Logs loss and slices/s per epoch (and
    ``<work>/history_<phase>.csv``). A phase finished before
    (``<work>/<phase>.weights.h5``) is loaded with ``config.resume`` instead of refitted; an
    interrupted one resumes after its last finished epoch (``<work>/backup/<phase>``)."""
    indexes = [source.index(uid) for uid in uids]
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = build_slice_model(config.arch, config.size, config.embedding, config.weights)
        trainer = training_view(model)
        optimizer: keras.optimizers.Optimizer = keras.optimizers.Adam(config.lr)
        if keras.mixed_precision.global_policy().compute_dtype == "float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(trainer.trainable_variables)
    done = work / f"{phase}.weights.h5"
    if config.resume and done.is_file():
        model.load_weights(done)
        print(f"{phase}: resumed from {done}")
        return SliceFit(model, resumed=True)
    backup = EpochBackup(work / "backup" / phase)
    first = backup.restore(trainer, optimizer) if config.resume else 0
    if not config.resume:
        backup.clear()
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    seed = config.seed + 7919 * worker_index()
    dataset, steps = slice_dataset(source, indexes, config, global_batch, seed, first)
    count = sample_size(indexes, config.negatives_per_positive, config.max_slices_per_epoch)
    print(f"{phase}: {len(uids)} studies, {count} slices per epoch, {steps} steps of "
          f"{global_batch} ({strategy.num_replicas_in_sync} replica(s))"
          + (f", resuming after epoch {first}" if first else ""))  # fmt: skip
    step = _train_step(trainer, optimizer, strategy, global_batch)
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    history: dict[str, list[float]] = {name: [] for name in LOSS_NAMES}
    rates: list[float] = []
    csv = work / f"history_{phase}.csv"
    if first == 0:
        csv.write_text("epoch," + ",".join(LOSS_NAMES) + ",slices_per_second\n")
    for epoch in range(first, config.epochs):
        started = time.perf_counter()
        totals = [step(iterator) for _ in range(steps)]
        mean = np.mean([t.numpy() for t in totals], axis=0)
        seconds = time.perf_counter() - started
        rates.append(steps * global_batch / seconds if seconds > 0 else 0.0)
        for name, value in zip(LOSS_NAMES, mean, strict=True):
            history[name].append(float(value))
        with csv.open("a") as handle:
            handle.write(f"{epoch}," + ",".join(f"{v:.6f}" for v in mean) + f",{rates[-1]:.1f}\n")
        backup.save(trainer, optimizer, epoch + 1)
        if verbose:
            print(f"  {phase} epoch {epoch + 1}/{config.epochs}: loss {mean[0]:.4f} "
                  f"(fracture {mean[1]:.4f}, vertebrae {mean[2]:.4f}), "
                  f"{rates[-1]:.1f} slices/s, {seconds:.0f} s")  # fmt: skip
    model.save_weights(done)
    backup.clear()
    with contextlib.suppress(OSError):
        backup.folder.parent.rmdir()  # the backup folder, once no fit is left unfinished
    return SliceFit(model, history, rates, count)


# ---------------------------------------------------------------------------- features


@dataclass
class StudyScores:
    """One study through a slice model: features (Z, F), P(fracture) (Z,), P(C1..C7) (Z, 7)."""

    features: np.ndarray
    fracture: np.ndarray
    vertebrae: np.ndarray


def score_studies(
    model: keras.Model,
    source: StudySource,
    uids: Sequence[str],
    config: RsnaConfig,
    desc: str = "slice features",
) -> tuple[dict[str, StudyScores], float]:
    """Every slice of every study through the slice model (one study in memory at a time);
    returns the scores per study and slices/s."""

    @tf.function(reduce_retracing=True)
    def forward(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        outputs = model(x, training=False)
        return (
            slice_features_tf(outputs),
            tf.cast(outputs[FRACTURE_OUTPUT], tf.float32)[:, 0],
            tf.cast(outputs[VERTEBRAE_OUTPUT], tf.float32),
        )

    scores: dict[str, StudyScores] = {}
    iterator: Any = uids
    if config.progress:
        from tqdm import tqdm

        iterator = tqdm(uids, desc=desc, unit="study", file=sys.stderr)
    started, slices = time.perf_counter(), 0
    for uid in iterator:
        index = source.index(uid)
        pixels = source.pixels(uid)
        offset = neighbour_offset(index.spacing_mm, config.context_mm)
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        for start in range(0, len(pixels), FORWARD_BATCH):
            rows = np.arange(start, min(start + FORWARD_BATCH, len(pixels)))
            stacks = stack_neighbours(pixels, rows, offset)
            feats, fracture, vertebrae = forward(tf.constant(stacks, tf.float32))
            parts.append((feats.numpy(), fracture.numpy(), vertebrae.numpy()))
        scores[uid] = StudyScores(*(np.concatenate([p[i] for p in parts]) for i in range(3)))
        slices += len(pixels)
    seconds = time.perf_counter() - started
    return scores, (slices / seconds if seconds > 0 else 0.0)


# ---------------------------------------------------------------------------- stage 2


def competition_bce(y_true: Any, logits: Any) -> Any:
    """Per-study binary cross-entropy from logits, weighted as the competition weighs
    (patient_overall 14 / 7, each vertebra 2 / 1 for positive / negative)."""
    ops = keras.ops
    y = ops.cast(y_true, "float32")
    positive = ops.convert_to_tensor(POSITIVE_WEIGHTS.astype(np.float32))
    negative = ops.convert_to_tensor(NEGATIVE_WEIGHTS.astype(np.float32))
    weights = y * positive + (1.0 - y) * negative
    bce = ops.binary_crossentropy(y, ops.cast(logits, "float32"), from_logits=True)
    return ops.sum(weights * bce, axis=-1) / ops.sum(weights, axis=-1)


@contextlib.contextmanager
def float32_policy() -> Iterator[None]:
    """Build and fit the small study head in float32 whatever the global policy."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def sequences(scores: Mapping[str, StudyScores], uids: Sequence[str], length: int) -> np.ndarray:
    """(B, T, F) feature sequences of the studies, each resampled to T slices."""
    return np.stack([resample_sequence(scores[uid].features, length) for uid in uids])


def fit_study_head(
    config: RsnaConfig, x: np.ndarray, y: np.ndarray, verbose: int = 0
) -> dict[str, np.ndarray]:
    """Stage 2 on (B, T, F) sequences and (B, 8) targets; returns the head's
    ``study_head.npz`` arrays (the numpy head evaluates and serves them)."""
    with float32_policy():
        keras.utils.set_random_seed(config.seed)
        mean, scale = feature_standardisation(x)
        head = build_study_head(
            x.shape[2], x.shape[1], config.head_units, config.head_units, mean=mean, scale=scale
        )
        head.compile(optimizer=keras.optimizers.Adam(config.head_lr), loss=competition_bce)
        head.fit(
            x.astype(np.float32),
            y.astype(np.float32),
            batch_size=HEAD_BATCH,
            epochs=config.head_epochs,
            shuffle=True,
            verbose=verbose,
        )
        return study_head_arrays(head)


def head_data(
    scores: Mapping[str, StudyScores],
    indexes: Mapping[str, StudyIndex],
    uids: Sequence[str],
    length: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Stage 2's (B, T, F) sequences and (B, 8) targets (STUDY_OUTPUTS) of ``uids``."""
    return sequences(scores, uids, length), np.stack([indexes[u].study_labels for u in uids])


# The study score's candidates, (aggregation, top_k): the head's patient_overall, or the mean
# of the top k slice probabilities. The one with the best out-of-fold patient AUC is kept
# (ties: the earlier); the head gives C1..C7 whichever is kept.
AGGREGATIONS = ((STUDY_HEAD_AGGREGATION, 1), *((top_k_mean(k), k) for k in (1, 2, 3)))


def study_outputs(aggregation: str, top_k: int, head: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """A study's (8,) outputs (STUDY_OUTPUTS) under ``aggregation``: the head's, with
    patient_overall the top-k mean of the slice probabilities unless it is the head's."""
    if aggregation == STUDY_HEAD_AGGREGATION:
        return head
    return np.concatenate([[aggregate(slices, top_k)], head[1:]])


def choose_aggregation(
    labels: np.ndarray, heads: Sequence[np.ndarray], slices: Sequence[np.ndarray]
) -> tuple[str, int, dict[str, float | None]]:
    """(aggregation, top_k, patient AUC of every candidate) on out-of-fold studies: the
    head's outputs and slice probabilities of each, ``labels`` their patient_overall."""
    aucs: dict[str, float | None] = {}
    for name, k in AGGREGATIONS:
        scores = [study_outputs(name, k, h, p)[0] for h, p in zip(heads, slices, strict=True)]
        aucs[name] = auc(labels, np.array(scores))[0]
    ranked = {name: -1.0 if value is None else value for name, value in aucs.items()}
    best = max(AGGREGATIONS, key=lambda candidate: ranked[candidate[0]])
    return best[0], best[1], aucs


# ---------------------------------------------------------------------------- evaluation


@dataclass
class Scored:
    """Study and slice scores of a set of studies (out-of-fold, or held-out)."""

    uids: list[str] = field(default_factory=list)
    study_labels: list[np.ndarray] = field(default_factory=list)
    study_probs: list[np.ndarray] = field(default_factory=list)
    slice_labels: list[np.ndarray] = field(default_factory=list)
    slice_probs: list[np.ndarray] = field(default_factory=list)
    slice_levels: list[np.ndarray] = field(default_factory=list)
    slice_patients: list[np.ndarray] = field(default_factory=list)
    vertebra_probs: list[np.ndarray] = field(default_factory=list)
    vertebra_labels: list[np.ndarray] = field(default_factory=list)

    def add(self, index: StudyIndex, study_prob: np.ndarray, scores: StudyScores) -> None:
        self.uids.append(index.uid)
        self.study_labels.append(index.study_labels)
        self.study_probs.append(np.asarray(study_prob, np.float64))
        self.slice_labels.append(index.slice_label.astype(np.int64))
        self.slice_probs.append(scores.fracture.astype(np.float64))
        self.slice_levels.append(index.known_levels())
        self.slice_patients.append(np.full(index.slices, index.uid))
        if index.levels_known:
            self.vertebra_probs.append(scores.vertebrae)
            self.vertebra_labels.append(index.levels)

    def __len__(self) -> int:
        return len(self.uids)

    def arrays(self) -> dict[str, np.ndarray]:
        def cat(parts: list[np.ndarray], empty: tuple[int, ...]) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(empty)

        return {
            "uid": np.array(self.uids),
            "study_label": np.stack(self.study_labels) if self.uids else np.zeros((0, 8)),
            "study_probability": np.stack(self.study_probs) if self.uids else np.zeros((0, 8)),
            "slice_label": cat(self.slice_labels, (0,)).astype(np.int64),
            "slice_probability": cat(self.slice_probs, (0,)),
            "slice_levels": cat(self.slice_levels, (0, len(VERTEBRAE))),
            "slice_patient": cat(self.slice_patients, (0,)).astype(str),
        }


def choose_points(scored: Scored, target: float) -> dict[str, Any]:
    """Operating points on out-of-fold scores: per study output and for the slice score."""
    a = scored.arrays()
    per_output = {}
    for i, name in enumerate(STUDY_OUTPUTS):
        points, details = operating_points(
            a["study_label"][:, i], a["study_probability"][:, i], target
        )
        per_output[name] = {**points, "details": details}
    points, details = operating_points(a["slice_label"], a["slice_probability"], target)
    return {"study": per_output, "slice": {**points, "details": details}}


def no_points(reason: str) -> dict[str, Any]:
    """Fallback operating points (0.5) when there are no out-of-fold scores."""
    point = {"threshold": 0.5, "recall": None, "specificity": None}
    entry = {"sensitive": dict(point), "specific": dict(point), "details": {"reason": reason}}
    return {"study": {name: dict(entry) for name in STUDY_OUTPUTS}, "slice": dict(entry)}


def evaluate(scored: Scored, points: Mapping[str, Any], rounds: int, seed: int) -> dict[str, Any]:
    """Every figure of a scored set at both operating points (thresholds from ``points``)."""
    a = scored.arrays()
    report: dict[str, Any] = {"studies": len(scored), "patients": len(set(scored.uids))}
    for name in ("sensitive", "specific"):
        thresholds = {o: float(points["study"][o][name]["threshold"]) for o in STUDY_OUTPUTS}
        slice_threshold = float(points["slice"][name]["threshold"])
        report[name] = {
            "study": study_report(a["study_label"], a["study_probability"], thresholds,
                                  np.array(scored.uids), rounds, seed),
            "slices": binary_report(a["slice_label"], a["slice_probability"], slice_threshold,
                                    a["slice_patient"], rounds, seed),
            "level_matched": level_matched_specificity(
                a["slice_probability"], a["slice_label"], a["slice_levels"], slice_threshold,
                a["slice_patient"], rounds, seed),
        }  # fmt: skip
    report["competition_log_loss"] = report["sensitive"]["study"]["competition_log_loss"]
    report["vertebra_presence_auc"] = vertebra_presence(scored)
    return report


def vertebra_presence(scored: Scored) -> dict[str, Any]:
    """Slice-level AUC of the vertebra-presence head, per vertebra (studies with levels)."""
    if not scored.vertebra_probs:
        return {"value": None, "reason": "no study with known levels"}
    probs = np.concatenate(scored.vertebra_probs)
    labels = np.concatenate(scored.vertebra_labels)
    out: dict[str, Any] = {}
    for i, name in enumerate(VERTEBRAE):
        value, reason = auc(labels[:, i], probs[:, i])
        out[name] = value if reason is None else {"value": None, "reason": reason}
    return out


def summary_table(report: Mapping[str, Any], point: str = "sensitive") -> str:
    """A markdown table of the study outputs (AUC, sensitivity, specificity with CIs)."""

    def cell(value: Any, ci: Any) -> str:
        if value is None:
            return "n/a"
        text = f"{value:.3f}"
        return text + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    rows = ["| output | AUC | sensitivity | specificity |", "| --- | --- | --- | --- |"]
    for name, r in report[point]["study"]["outputs"].items():
        ci = r.get("ci_95", {})
        rows.append(
            f"| {name} | {cell(r['auc'], ci.get('auc'))} | "
            f"{cell(r['sensitivity'], ci.get('sensitivity'))} | "
            f"{cell(r['specificity'], ci.get('specificity'))} |"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------- the split


def holdout_split(
    uids: Sequence[str], labels: Mapping[str, StudyLabels], holdout: float, seed: int
) -> tuple[list[str], list[str]]:
    """(held-out, development) patients: the first of round(1 / holdout) stratified patient
    folds is held out (at least one patient when there are two or more; none at 0)."""
    if holdout <= 0 or len(uids) < 2:
        return [], list(uids)
    k = min(max(2, round(1 / holdout)), len(uids))
    folds = patient_folds(list(uids), dict(labels), k, seed)
    return [u for u in uids if folds[u] == 0], [u for u in uids if folds[u] != 0]


def gate_positives(
    source: StudySource,
    uids: Sequence[str],
    groups: Mapping[str, str],
    config: RsnaConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """2.5D model inputs of about ``gate_slices`` slices spread evenly over the studies
    (uint8 (N, S, S, 3)) and each one's group for the gate's out-of-fold scores."""
    per_study = max(1, math.ceil(config.gate_slices / max(len(uids), 1)))
    images, series = [], []
    for uid in uids:
        index = source.index(uid)
        rows = np.unique(np.linspace(0, index.slices - 1, min(per_study, index.slices)).round())
        offset = neighbour_offset(index.spacing_mm, config.context_mm)
        images.append(stack_neighbours(source.pixels(uid), rows.astype(int), offset))
        series += [groups[uid]] * len(rows)
    return np.concatenate(images), np.array(series)


def sample_rows(images: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` rows spread over ``images``."""
    return images[:: max(1, len(images) // limit)][:limit]


# ---------------------------------------------------------------------------- provenance


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def provenance(
    config: RsnaConfig, uids: Sequence[str], indexes: Mapping[str, StudyIndex], cache: CacheReport
) -> dict[str, Any]:
    """Where the data came from and what was read of it."""
    root = Path(config.rsna)
    labels = np.stack([indexes[u].study_labels for u in uids])
    slice_labels = np.concatenate([indexes[u].slice_label for u in uids])
    return {
        "description": "RSNA 2022 Cervical Spine Fracture Detection (Kaggle), competition "
        "layout: train_images/<StudyInstanceUID>/<n>.dcm, train.csv, "
        "train_bounding_boxes.csv, segmentations/",
        "licence": LICENCE,
        "root": str(root),
        "train_csv_sha256": _sha256(root / "train.csv"),
        "boxes_csv_sha256": _sha256(root / "train_bounding_boxes.csv"),
        "studies_sha256": hashlib.sha256("\n".join(uids).encode()).hexdigest(),
        "studies": len(uids),
        "patients_positive": int((labels[:, 0] >= 0.5).sum()),
        "studies_with_levels": int(sum(indexes[u].levels_known for u in uids)),
        "slices": len(slice_labels),
        "slices_fracture": int((slice_labels == 1).sum()),
        "slices_normal": int((slice_labels == 0).sum()),
        "slices_unknown": int((slice_labels == -1).sum()),
        "cache": {
            "folder": str(config.cache_dir()),
            "written": len(cache.written),
            "skipped_already_cached": len(cache.skipped),
            "failed": cache.failed,
            "read_errors": len(cache.read_errors),
            "read_error_examples": [list(e) for e in cache.read_errors[:20]],
            "seconds": round(cache.seconds, 1),
        },
    }


def check_resume(work: Path, config: RsnaConfig) -> None:
    """Record the run's settings; a ``--resume`` with other settings is refused (its kept
    fits would not be this run's), a fresh run drops the kept fits."""
    settings = {key: getattr(config, key) for key in RESUME_KEYS}
    path = work / "run.json"
    if config.resume and path.is_file():
        before = json.loads(path.read_text())
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            raise SystemExit(f"error: --resume with other settings than the run in {work}: "
                             f"{changed} (start without --resume)")  # fmt: skip
    if not config.resume:
        for stale in work.glob("stage1-*.weights.h5"):
            stale.unlink()
        shutil.rmtree(work / "backup", ignore_errors=True)
    path.write_text(json.dumps(settings, indent=1))


def gpu_memory_mb() -> float | None:
    """Peak memory of the first GPU so far (None without one)."""
    if not tf.config.list_logical_devices("GPU"):
        return None
    with contextlib.suppress(Exception):
        return round(tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20, 1)
    return None


# ---------------------------------------------------------------------------- the pipeline


def load_data(config: RsnaConfig) -> tuple[
    CacheSource, list[str], dict[str, StudyLabels], dict[str, StudyIndex], CacheReport
]:  # fmt: skip
    """Cache the studies (resumable) and index the usable ones (a label row, >= 1 slice)."""
    window = config.window
    report = build_cache(config.rsna, config.cache_dir(), config.size, window, config.studies,
                         progress=config.progress)  # fmt: skip
    print(report.summary())
    labels = read_labels(config.rsna)
    wanted = find_studies(config.rsna)
    if config.studies is not None:
        wanted = wanted[: config.studies]
    cached = set(cached_uids(config.cache_dir()))
    source = CacheSource(config.cache_dir())
    indexes = {u: source.index(u) for u in wanted if u in cached and u in labels}
    uids = [u for u in wanted if u in indexes and indexes[u].slices > 0]
    if not uids:
        raise RsnaDataError(f"no usable study in {config.rsna} (see the read errors above)")
    return source, uids, labels, indexes, report


def train_rsna(config: RsnaConfig, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the whole pipeline (module doc); returns the card (empty on non-chief workers)."""
    strategy = make_strategy(config.strategy)  # before any other TensorFlow op
    mixed = use_mixed_precision(config.mixed_precision)
    chief = is_chief()
    out = Path(config.out)
    work = out / "report" if chief else out / "report" / f"worker-{worker_index()}"
    work.mkdir(parents=True, exist_ok=True)
    check_resume(work, config)
    started = time.perf_counter()
    source, uids, labels, indexes, cache = load_data(config)
    test, dev = holdout_split(uids, labels, config.holdout, config.seed)
    folds_k = min(config.folds, len(dev))
    folds = patient_folds(dev, labels, folds_k, config.seed) if folds_k >= 2 else {}
    print(f"{len(uids)} studies: {len(dev)} development ({folds_k if folds else 0} folds), "
          f"{len(test)} held out")  # fmt: skip
    seq_len = config.sequence_length

    # 3. K-fold: every development study's slices scored by a slice model that never saw
    # it (out-of-fold features), then out-of-fold study scores from heads fitted on the
    # other folds' out-of-fold features.
    oof_scores: dict[str, StudyScores] = {}
    for fold in range(folds_k if folds else 0):
        train_uids = [u for u in dev if folds[u] != fold]
        held = [u for u in dev if folds[u] == fold]
        fit = fit_slice_stage(config, source, train_uids, strategy, work, f"stage1-fold{fold}")
        if chief:
            scored, _ = score_studies(fit.model, source, held, config, f"fold {fold} features")
            oof_scores.update(scored)
        del fit
        keras.backend.clear_session()
    oof_heads: dict[str, np.ndarray] = {}
    for fold in range(folds_k if chief and folds else 0):
        train_uids = [u for u in dev if folds[u] != fold]
        head = StudyHead.from_arrays(
            fit_study_head(config, *head_data(oof_scores, indexes, train_uids, seq_len))
        )
        for uid in (u for u in dev if folds[u] == fold):
            oof_heads[uid] = head(oof_scores[uid].features)

    # 4. The study score's aggregation and the operating points, on the out-of-fold scores
    # only.
    aggregation, top_k, aggregation_aucs = choose_aggregation(
        np.array([indexes[u].study_labels[0] for u in oof_heads]),
        list(oof_heads.values()),
        [oof_scores[u].fracture for u in oof_heads],
    ) if oof_heads else (STUDY_HEAD_AGGREGATION, 1, {})  # fmt: skip
    print(f"study score: {aggregation} (out-of-fold patient AUC per candidate: "
          f"{json.dumps(aggregation_aucs)})")  # fmt: skip
    oof = Scored()
    for uid, outputs in oof_heads.items():
        fracture = oof_scores[uid].fracture
        oof.add(indexes[uid], study_outputs(aggregation, top_k, outputs, fracture), oof_scores[uid])
    points = choose_points(oof, config.target) if len(oof) else no_points(
        "no out-of-fold scores (fewer than two development patients or --folds < 2): "
        "thresholds 0.5"
    )  # fmt: skip

    # 5. Final models on every development patient: the slice model on their slices, the
    # study head on their out-of-fold features (what a slice model gives on a study it
    # never saw, as in serving; in-sample features only without folds).
    final = fit_slice_stage(config, source, dev, strategy, work, "stage1-final")
    if not chief:
        print(f"worker {worker_index()}: done (the chief writes the bundle)")
        return {}
    scores, inference_rate = score_studies(
        final.model, source, test if oof_scores else dev + test, config, "final features"
    )
    head_arrays = fit_study_head(config, *head_data(oof_scores or scores, indexes, dev, seq_len))
    head = StudyHead.from_arrays(head_arrays)

    # 6. Held-out evaluation through the numpy head.
    held_out = Scored()
    for uid in test:
        outputs = head(scores[uid].features)
        held_out.add(indexes[uid], study_outputs(aggregation, top_k, outputs, scores[uid].fracture),
                     scores[uid])  # fmt: skip
    rounds, seed = config.bootstrap_rounds, config.seed
    metrics: dict[str, Any] = {}
    if len(held_out):
        metrics["held_out"] = evaluate(held_out, points, rounds, seed)
    if len(oof):
        metrics["out_of_fold"] = evaluate(oof, points, rounds, seed)
    headline = metrics.get("held_out") or metrics.get("out_of_fold")
    metrics["competition_log_loss"] = {
        name: metrics[name]["competition_log_loss"] for name in ("held_out", "out_of_fold")
        if name in metrics
    }  # fmt: skip
    if headline is None:
        metrics["note"] = "no held-out or out-of-fold studies: nothing to report"
    train_seconds = time.perf_counter() - started

    # 7. The CT gate.
    groups = {u: f"fold{folds[u]}" for u in dev} if folds else {u: u for u in dev}
    gate_images, gate_series = gate_positives(source, dev, groups, config)
    negatives = generate_negatives(config.gate_negatives, seed=config.seed)
    negative_images = np.stack([gray_to_model_input(n.gray, config.size) for n in negatives])
    gate = fit_gate(gate_images, gate_series, negatives, negative_images, config.seed).gate

    # 8. The card and the bundle.
    gate_section = gate.details | {
        "threshold": gate.threshold,
        "file": GATE_FILE,
        "positives_grouping": "patient folds" if folds else "studies",
    }
    run = {
        "seconds": round(train_seconds, 1),
        "mixed_precision": mixed,
        "replicas": strategy.num_replicas_in_sync,
        "stage1_slices_per_second": _mean(final.slices_per_second),
        "stage1_slices_per_epoch": final.slices_per_epoch,
        "inference_slices_per_second": round(inference_rate, 1) or None,
        "gpu_peak_memory_mb": gpu_memory_mb(),
        "device": _device(),
    }
    split = {"held_out": len(test), "development": len(dev), "folds": folds_k if folds else 0}
    data = provenance(config, uids, indexes, cache)
    chosen = {
        "aggregation": aggregation,
        "top_k": top_k,
        "candidates": aggregation_aucs,
        "score_histogram": score_histogram(
            [outputs[0] for outputs in oof.study_probs],
            "out-of-fold study scores (patient_overall) of the development patients",
        ),
    }
    card = build_card(config, argv, points, metrics, head, chosen, data, gate_section, run, split)
    _write_reports(work, metrics, oof, held_out)
    parity = {
        "training slices (2.5D)": sample_rows(gate_images, 48),
        "non-CT (gate negatives)": sample_rows(negative_images, 16),
    }
    if test:
        held_images, _ = gate_positives(source, test, {u: u for u in test}, config)
        parity["held-out slices (2.5D)"] = sample_rows(held_images, 48)
    export_bundle(final.model, out, card, gate, tflite_float16=config.tflite_float16,
                  parity_slices=parity, study_head=head_arrays)  # fmt: skip
    if headline is not None:
        print(summary_table(headline))
        print(f"competition log loss: {json.dumps(metrics['competition_log_loss'])}")
    print(f"bundle written to {out} (report in {work}); {train_seconds:.0f} s")
    return read_card(out)  # as written


def _mean(values: Sequence[float]) -> float | None:
    """Mean slices/s over the epochs after the first (tracing, warm-up), else all."""
    kept = list(values[1:]) or list(values)
    return round(float(np.mean(kept)), 1) if kept else None


def _device() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return "CPU"
    with contextlib.suppress(Exception):
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"{len(gpus)} x {details.get('device_name', 'GPU')}"
    return f"{len(gpus)} x GPU"


def _write_reports(work: Path, metrics: dict[str, Any], oof: Scored, held_out: Scored) -> None:
    (work / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json))
    for name, scored in (("out_of_fold", oof), ("held_out", held_out)):
        if len(scored):
            arrays: dict[str, Any] = scored.arrays()
            np.savez(work / f"{name}.npz", **arrays)
    tables = [f"## {name}\n\n{summary_table(metrics[name])}" for name in ("held_out", "out_of_fold")
              if name in metrics]  # fmt: skip
    (work / "metrics_table.md").write_text("\n\n".join(tables) + "\n")


def _json(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _card_points(points: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: dict(points[name]) for name in ("sensitive", "specific")}


def build_card(
    config: RsnaConfig,
    argv: list[str] | None,
    points: Mapping[str, Any],
    metrics: dict[str, Any],
    head: StudyHead,
    chosen: dict[str, Any],
    data: dict[str, Any],
    gate: dict[str, Any],
    run: dict[str, Any],
    split: dict[str, int],
) -> ModelCard:
    """The bundle's model card, typed and validated here (written by ``export_bundle``):
    ``chosen`` the study score's aggregation, top_k and every candidate's out-of-fold patient
    AUC, ``gate`` its section, ``run`` the training run's measured facts (time, throughput,
    device), ``split`` the held-out / development / fold counts."""
    now = datetime.now(UTC)
    study_points = points["study"]
    caveats = [
        "Slice labels come from fracture boxes: unboxed slices of boxed studies are taken as "
        "no fracture; patient-positive studies without boxes give no slice label.",
        "Levels (and so the level-matched specificity and the vertebra head) come only from "
        "studies with a segmentation.",
        "Operating points and the study score's aggregation (study.aggregation) are chosen "
        "on out-of-fold scores of the development patients; the "
        "held-out patients were never used for any choice.",
    ]
    for part in ("held_out", "out_of_fold"):
        lm = metrics.get(part, {}).get("sensitive", {}).get("level_matched", {})
        if lm.get("gap") is not None and lm["gap"] > 0.05:
            caveats.append(
                f"{part}: specificity at the fracture slices' levels is {lm['gap']:.2f} below "
                "the overall specificity: the slice score follows the vertebral level."
            )
    if data["patients_positive"] in (0, data["studies"]):
        caveats.append(
            "Every patient of this data has the same patient_overall label: no "
            "patient-level AUC, sensitivity or specificity can be computed."
        )
    return ModelCard.model_validate({
        "name": f"{config.arch}-rsna-cspine-study",
        "version": now.strftime("%Y.%m.%d"),
        "architecture": config.arch,
        "created": now.isoformat(timespec="seconds"),
        "package_version": __version__,
        "input": {
            "size": config.size,
            "channels": 3,
            "serving_dtype": "uint8",
            "window": {"level": config.window_level, "width": config.window_width},
            "preprocessing": "DICOM -> HU -> the card's window -> resize to input.size; the "
            "three channels are the slice and its neighbours input.context.spacing_mm above and "
            "below (head->foot order by ImagePositionPatient); scaling is inside the model",
            "crop": None,
            "context": {"slices": 3, "spacing_mm": config.context_mm},
        },
        "output": "P(fracture) of the slice (sigmoid), its features for the study head; "
        "the study head: P(patient_overall), P(C1..C7)",
        "temperature": 1.0,
        "default_operating_point": "sensitive",
        "operating_points": _card_points(points["slice"]),
        "gradcam_layer": gradcam_layer(config.arch),
        "study": {
            "aggregation": chosen["aggregation"],
            "top_k": chosen["top_k"],
            "operating_points": _card_points(study_points["patient_overall"]),
            "head": {
                "file": STUDY_HEAD_FILE,
                "sequence_length": head.sequence_length,
                "feature_dim": head.feature_dim,
                "outputs": list(STUDY_OUTPUTS),
            },
            "score_histogram": chosen["score_histogram"],
            "output_operating_points": {
                name: _card_points(study_points[name]) for name in STUDY_OUTPUTS
            },
            "calibration": {
                "source": "out-of-fold scores of the development patients",
                "aggregation_candidates": {
                    "metric": "out-of-fold patient_overall AUC",
                    "auc": chosen["candidates"],
                },
                "details": {name: study_points[name]["details"] for name in STUDY_OUTPUTS},
                "slice": points["slice"]["details"],
            },
        },
        "metrics": metrics,
        "gate": gate,
        "rsna": {"approach": APPROACH, "labels": LABEL_POLICY, "split": split},
        "training": {
            "argv": list(argv) if argv is not None else None,
            **{k: v for k, v in asdict(config).items() if k not in ("out", "rsna", "progress")},
            "weights": config.weights
            if is_pretrained(config.arch)
            else f"none (the {config.arch} CNN has no pretrained weights)",
            "feature_dim": slice_feature_dim(config.embedding),
            **run,
        },
        "data": data,
        "caveats": caveats,
        "intended_use": INTENDED_USE,
    })  # fmt: skip


# ---------------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> RsnaConfig:
    parser = argparse.ArgumentParser(
        prog="python -m ml_model.train_rsna", description=__doc__.split("\n\n")[0]
    )
    add_config_arguments(parser, RsnaConfig)
    values = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    return RsnaConfig(**values)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_args(argv)
    try:
        train_rsna(config, argv)
    except (WeightsUnavailableError, RsnaDataError) as exc:
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    main()
