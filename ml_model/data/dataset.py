"""Finding labelled slices on disk, splitting them by base slice, and the tf.data pipeline.

Layouts read (PNG/JPEG/BMP/TIFF/DICOM, any size, gray or RGB):
    <root>/{fracture,normal}/...
    <root>/{train,val}/{fracture,normal}/...                  (the shared folder)
    <root>/cervical fracture/{train,val}/{fracture,normal}/...  (the Kaggle archive)
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from ml_model.config import CLASS_NAMES, EXPORT_WINDOW
from ml_model.imaging.errors import ImageDecodeError
from ml_model.imaging.formats import EXTENSIONS
from ml_model.imaging.transforms import load_image

KAGGLE_ROOT = "cervical fracture"
SPLIT_NAMES = ("train", "val", "validation", "test")
# What training, calibration and the CT gate may read: never the archive's val split.
TRAINING_SPLITS = ("train",)

# "CSFDV1B12 (5)-sharpened1-rotated3.png" -> "CSFDV1B12 (5)": augmented copies share it.
_BASE_SLICE = re.compile(r"^(.*?\(\d+\))")


class DatasetError(ValueError):
    """The data folder does not have the expected layout or holds unreadable files."""


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    label: int  # 1 = fracture
    group: str  # base-slice id


def series_of(group: str) -> str:
    """The CT series (a patient) of a base-slice id: ``CSFDV1B12 (5)`` -> ``CSFDV1B12``."""
    return group.split("(")[0].strip() or group


def leave_one_series_out(
    records: Sequence[ImageRecord],
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(held-out series, train index, test index) for every series: a new patient per fold."""
    series = np.array([series_of(r.group) for r in records])
    return [
        (name, np.flatnonzero(series != name), np.flatnonzero(series == name))
        for name in sorted(set(series))
    ]


def base_slice_id(filename: str) -> str:
    """The file name up to and including ``(N)``; the stem when there is no ``(N)``."""
    stem = Path(filename).stem
    match = _BASE_SLICE.match(stem)
    return match.group(1).strip() if match else stem


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_level_dirs(root: Path, splits: Sequence[str] | None) -> list[Path]:
    """Directories whose children are the class folders."""
    if (root / KAGGLE_ROOT).is_dir():
        root = root / KAGGLE_ROOT
    names = {p.name.lower() for p in _subdirs(root)}
    if names & set(CLASS_NAMES):
        return [root]
    split_dirs = [p for p in _subdirs(root) if p.name.lower() in SPLIT_NAMES]
    if splits is not None:
        split_dirs = [p for p in split_dirs if p.name.lower() in splits]
    if not split_dirs:
        raise DatasetError(
            f"{root}: expected class folders {'/'.join(CLASS_NAMES)}/ (or train/ and val/ "
            f"folders holding them), found {sorted(names) or 'nothing'}"
        )
    return split_dirs


def find_images(root: str | Path, splits: Sequence[str] | None = None) -> list[ImageRecord]:
    """List labelled image files under ``root`` in a stable (sorted) order.

    ``splits`` picks split folders (e.g. ``["train"]``) in split layouts; default all.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"data folder {root} does not exist")
    records: list[ImageRecord] = []
    for level in _class_level_dirs(root, splits):
        for class_dir in _subdirs(level):
            name = class_dir.name.lower()
            if name not in CLASS_NAMES:
                raise DatasetError(
                    f"unknown class folder {class_dir}: expected only {'/'.join(CLASS_NAMES)}/"
                )
            label = CLASS_NAMES.index(name)
            for path in sorted(class_dir.rglob("*")):
                if path.is_file() and path.suffix.lower() in EXTENSIONS:
                    records.append(ImageRecord(path, label, base_slice_id(path.name)))
    if not records:
        raise DatasetError(f"no images ({', '.join(EXTENSIONS)}) found under {root}")
    _check_groups_have_one_label(records)
    return records


def _check_groups_have_one_label(records: Iterable[ImageRecord]) -> None:
    labels: dict[str, set[int]] = {}
    for record in records:
        labels.setdefault(record.group, set()).add(record.label)
    mixed = sorted(group for group, seen in labels.items() if len(seen) > 1)
    if mixed:
        raise DatasetError(f"base slices found under both classes: {mixed[:5]}")


def labels_of(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([r.label for r in records], dtype=np.int64)


def groups_of(records: Sequence[ImageRecord]) -> np.ndarray:
    return np.array([r.group for r in records])


def grouped_kfold(
    records: Sequence[ImageRecord], n_splits: int = 5, seed: int = 42
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold by base slice: no slice's copies land on both sides."""
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    x = np.zeros(len(records))
    return list(splitter.split(x, labels_of(records), groups_of(records)))


def grouped_split(
    records: Sequence[ImageRecord], val_fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """One stratified train/validation split by base slice (the first of k folds)."""
    n_splits = max(2, round(1.0 / val_fraction))
    return grouped_kfold(records, n_splits, seed)[0]


def naive_split(
    records: Sequence[ImageRecord], val_fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray]:
    """File-level stratified split: leaks augmented copies across sides (for comparison only)."""
    index = np.arange(len(records))
    train, val = train_test_split(
        index, test_size=val_fraction, stratify=labels_of(records), random_state=seed
    )
    return np.sort(train), np.sort(val)


def describe_split(
    records: Sequence[ImageRecord], train: np.ndarray, val: np.ndarray
) -> dict[str, dict[str, int]]:
    """Files and distinct base slices per class on each side, plus slices on both sides."""
    summary: dict[str, dict[str, int]] = {}
    for side, index in (("train", train), ("val", val)):
        side_records = [records[i] for i in index]
        counts: Counter[str] = Counter()
        for label, name in enumerate(CLASS_NAMES):
            chosen = [r for r in side_records if r.label == label]
            counts[f"{name}_files"] = len(chosen)
            counts[f"{name}_slices"] = len({r.group for r in chosen})
        summary[side] = dict(counts)
    shared = {records[i].group for i in train} & {records[i].group for i in val}
    summary["overlap"] = {"slices_on_both_sides": len(shared)}
    return summary


def load_arrays(
    records: Sequence[ImageRecord],
    img_size: int,
    window: tuple[float, float],
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every record (uint8 N x S x S x 3) up front, DICOM through ``window`` (level,
    width: the bundle's, or training's export window); errors name each bad file."""
    from tqdm.auto import tqdm

    images = np.empty((len(records), img_size, img_size, 3), dtype=np.uint8)
    bad: list[str] = []
    for i, record in enumerate(tqdm(records, desc="decode", unit="img", disable=not progress)):
        try:
            images[i] = load_image(record.path, img_size, *window)
        except (ImageDecodeError, OSError) as exc:
            bad.append(str(exc))
    if bad:
        listed = "\n  ".join(bad[:10])
        raise DatasetError(f"{len(bad)} unreadable image file(s):\n  {listed}")
    return images, labels_of(records)


class RandomAffine(keras.layers.Layer):
    """Rotation, zoom and translation as ONE projective warp per image.

    Three separate Keras layers resample each image three times; composing the
    matrices first resamples once, about 3x cheaper on CPU with the same range of
    transforms (rotation +/- ``rotation`` x 360 degrees, zoom 1 +/- ``zoom``,
    shift +/- ``translation`` x size).
    """

    def __init__(
        self,
        rotation: float = 0.05,
        zoom: float = 0.1,
        translation: float = 0.05,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.rotation, self.zoom, self.translation = rotation, zoom, translation
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images: tf.Tensor, training: bool = True) -> tf.Tensor:
        if not training:
            return images
        batch = tf.shape(images)[0]
        height = tf.cast(tf.shape(images)[1], tf.float32)
        width = tf.cast(tf.shape(images)[2], tf.float32)

        def uniform(limit: float) -> tf.Tensor:
            return keras.random.uniform(
                (batch,), -limit, limit, seed=self.seed_generator, dtype="float32"
            )

        angle = uniform(self.rotation) * 2.0 * np.pi
        scale = 1.0 + uniform(self.zoom)
        shift_x, shift_y = uniform(self.translation) * width, uniform(self.translation) * height
        cos, sin = tf.cos(angle) * scale, tf.sin(angle) * scale
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
        transforms = tf.stack(
            [
                cos, -sin, cx - cos * cx + sin * cy - shift_x,
                sin, cos, cy - sin * cx - cos * cy - shift_y,
                tf.zeros_like(cos), tf.zeros_like(cos),
            ],
            axis=1,
        )  # fmt: skip
        return tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=transforms,
            output_shape=tf.shape(images)[1:3],
            fill_value=0.0,
            interpolation="BILINEAR",
            fill_mode="CONSTANT",
        )


def augmentation(seed: int = 42) -> keras.Sequential:
    """Train-time augmentation on [0, 255] float images; applied to training batches only."""
    return keras.Sequential(
        [
            # +/- 18 degrees: the data already holds rotated copies, so keep extra rotation mild.
            RandomAffine(rotation=0.05, zoom=0.1, translation=0.05, seed=seed),
            keras.layers.RandomBrightness(0.1, value_range=(0.0, 255.0), seed=seed),
            keras.layers.RandomContrast(0.1, value_range=(0.0, 255.0), seed=seed),
        ],
        name="augmentation",
    )


def make_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int] | np.ndarray,
    img_size: int,
    batch_size: int,
    training: bool,
    seed: int = 42,
    cache: bool = True,
) -> tf.data.Dataset:
    """Files -> decode/window/resize (shared transform) -> cache -> batch -> augment -> prefetch.
    Training's input: DICOM through the export window, the one the card records."""
    autotune = tf.data.AUTOTUNE
    dataset = tf.data.Dataset.from_tensor_slices(
        ([str(p) for p in paths], np.asarray(labels, dtype=np.float32))
    )

    def decode(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.numpy_function(
            lambda p: load_image(p.decode(), img_size, *EXPORT_WINDOW),
            [path],
            tf.uint8,
            stateful=False,
        )
        image.set_shape((img_size, img_size, 3))
        return tf.cast(image, tf.float32), label

    dataset = dataset.map(decode, num_parallel_calls=autotune, deterministic=True)
    if cache:
        dataset = dataset.cache()
    return _shuffle_batch_augment(dataset, len(paths), batch_size, training, seed)


def array_dataset(
    images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool, seed: int = 42
) -> tf.data.Dataset:
    """Same batching/augmentation as :func:`make_dataset` for already-decoded arrays."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.float32)))
    # Shuffle uint8 images (4x less memory than float32), cast per batch.
    return _shuffle_batch_augment(dataset, len(images), batch_size, training, seed, cast=True)


def _shuffle_batch_augment(
    dataset: tf.data.Dataset,
    size: int,
    batch_size: int,
    training: bool,
    seed: int,
    cast: bool = False,
) -> tf.data.Dataset:
    if training:
        dataset = dataset.shuffle(size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if cast:
        dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y))
    if training:
        augment = augmentation(seed)
        dataset = dataset.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
