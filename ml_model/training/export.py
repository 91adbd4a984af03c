"""Write a model bundle (``ml_model.bundle``): model.keras, gate.npz, a SavedModel for TF
Serving, model.tflite, model.onnx + gradcam.onnx (ONNX Runtime, checked against TensorFlow:
the card's ``runtimes.onnx``) and model_card.json; a study bundle (RSNA 2022) adds
study_head.npz, and its graphs return ``slice_features`` beside the two slice outputs.

Add the ONNX files to an existing bundle without retraining (parity on the val split and
the training slices of ``--data``; on synthetic slices only without it); with ``--all``, also
rewrite its SavedModel and TFLite file (after a change to in-graph code such as the spine crop):

    python -m ml_model.training.export --bundle ml_model/models/default \
        [--data ../shared/data/cervical-ct] [--all]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from ml_model.bundle import (
    KERAS_FILE,
    SAVED_MODEL_DIR,
    SERVING_INPUT,
    SERVING_OUTPUT,
    SERVING_SIGNATURE,
    STUDY_HEAD_FILE,
    TFLITE_FILE,
)
from ml_model.card import ModelCard, load_card, read_card, write_card
from ml_model.inference.forward import has_features, serving_function
from ml_model.inference.gate import CTGate
from ml_model.training.export_onnx import onnx_card_section, synthetic_slices


def export_saved_model(
    model: keras.Model, path: Path, img_size: int, temperature: float, gate: CTGate
) -> None:
    """SavedModel whose ``serving_default`` takes uint8 images (N, S, S, 3) and returns the
    calibrated ``probability`` and the CT gate's ``ct_logit`` (and a study bundle's
    ``slice_features``): the function ``ml_model.inference.forward.serving_function``
    builds, the one the product runs."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    serve, both = serving_function(model, temperature, gate)
    archive.track(both)
    archive.add_endpoint(
        name=SERVING_SIGNATURE,
        fn=serve,
        input_signature=[
            tf.TensorSpec([None, img_size, img_size, 3], tf.uint8, name=SERVING_INPUT)
        ],
    )
    archive.write_out(str(path), verbose=False)


def export_tflite(saved_model_path: Path, path: Path, float16: bool = False) -> None:
    """Convert the SavedModel's serving signature to TFLite (optionally float16 weights)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_path), signature_keys=[SERVING_SIGNATURE]
    )
    if float16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    path.write_bytes(converter.convert())


def rewrite_graphs(
    model: keras.Model, bundle: Path, temperature: float, gate: CTGate, tflite_float16: bool
) -> None:
    """Rewrite an existing bundle's SavedModel (built next to it, then swapped in) and
    TFLite file from ``model`` and ``gate``."""
    target = bundle / SAVED_MODEL_DIR
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=bundle))
    try:
        export_saved_model(
            model, scratch / target.name, int(model.input_shape[1]), temperature, gate
        )
        if target.exists():
            shutil.rmtree(target)
        (scratch / target.name).rename(target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    export_tflite(target, bundle / TFLITE_FILE, float16=tflite_float16)


def export_bundle(
    model: keras.Model,
    out_dir: str | Path,
    card: dict[str, Any] | ModelCard,
    gate: CTGate,
    tflite_float16: bool = False,
    parity_slices: Mapping[str, np.ndarray] | None = None,
    study_head: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write every bundle file into ``out_dir`` (the card validated first) and return it.

    ``parity_slices`` (named uint8 model inputs: the val split, the training slices) are
    where ONNX Runtime is checked against TensorFlow; synthetic slices are always added.
    A study bundle: ``model`` has several outputs (its graphs then return
    ``slice_features``), ``study_head`` holds the head's weights (written as
    study_head.npz, keys as ``ml_model.inference.study_head`` reads them) and the card has
    ``study.head``; all three or none."""
    if isinstance(card, ModelCard):
        has_head, temperature = card.study.head is not None, card.temperature
    else:
        has_head = (card.get("study") or {}).get("head") is not None
        temperature = float(card["temperature"])
    check_study_bundle(model, has_head, study_head)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    img_size = int(model.input_shape[1])
    model.save(out / KERAS_FILE)
    gate.save(out)
    if study_head is not None:
        write_study_head(out, study_head)
    export_saved_model(model, out / SAVED_MODEL_DIR, img_size, temperature, gate)
    export_tflite(out / SAVED_MODEL_DIR, out / TFLITE_FILE, float16=tflite_float16)
    write_card(out, card)  # validated before the slow part
    add_onnx(model, out, gate, parity_slices)
    return out


def check_study_bundle(
    model: keras.Model, card_has_head: bool, study_head: Mapping[str, np.ndarray] | None
) -> None:
    """A study bundle has a several-output model, the head's weights and ``study.head`` in
    its card, or none of them (ValueError naming what is missing)."""
    parts = {
        "a slice model with slice features (several outputs)": has_features(model),
        "study_head weights": study_head is not None,
        "the card's study.head": card_has_head,
    }
    if any(parts.values()) and not all(parts.values()):
        missing = [name for name, present in parts.items() if not present]
        raise ValueError(f"a study bundle needs all of {list(parts)}; missing: {missing}")


def write_study_head(out_dir: Path, weights: Mapping[str, np.ndarray]) -> Path:
    """The study head's weights as ``study_head.npz`` (written whole, then renamed)."""
    path = out_dir / STUDY_HEAD_FILE
    scratch = out_dir / f".{STUDY_HEAD_FILE}.tmp.npz"
    arrays = {name: np.asarray(value) for name, value in weights.items()}
    np.savez(scratch, **arrays)  # type: ignore[arg-type]  # numpy stub
    scratch.replace(path)
    return path


def add_onnx(
    model: keras.Model,
    bundle: str | Path,
    gate: CTGate,
    parity_slices: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Write the bundle's ONNX files from ``model`` and record them and their parity with
    TensorFlow in its card (``runtimes.onnx``); returns that section."""
    card = load_card(bundle)
    slices = dict(parity_slices or {})
    slices["synthetic"] = synthetic_slices(card.input.size)
    section = onnx_card_section(model, bundle, card.temperature, gate, card.gradcam_layer, slices)
    written = read_card(bundle)
    written.setdefault("runtimes", {})["onnx"] = section
    write_card(bundle, written)
    if not section["parity"]["verdicts_identical"]:
        print(f"WARNING: ONNX Runtime and TensorFlow disagree on a verdict: {section['parity']}")
    return section


def tflite_predict(path: str | Path, images: np.ndarray) -> np.ndarray:
    """Run the TFLite model on uint8 images one at a time; returns P(fracture) per image."""
    interpreter = tf.lite.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner(SERVING_SIGNATURE)
    outputs = [runner(**{SERVING_INPUT: image[np.newaxis]})[SERVING_OUTPUT] for image in images]
    return np.concatenate(outputs).reshape(-1)


def saved_model_outputs(path: str | Path, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every output of the SavedModel's serving signature for uint8 images."""
    loaded = tf.saved_model.load(str(path))
    fn = loaded.signatures[SERVING_SIGNATURE]
    outputs = fn(**{SERVING_INPUT: tf.constant(images, tf.uint8)})
    return {name: value.numpy() for name, value in outputs.items()}


def saved_model_predict(path: str | Path, images: np.ndarray) -> np.ndarray:
    """P(fracture) from the SavedModel's serving signature for uint8 images."""
    return saved_model_outputs(path, images)[SERVING_OUTPUT].reshape(-1)


def data_slices(
    data: Path,
    img_size: int,
    window: tuple[float, float],
    limit: int | None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """The val split and the training slices of a data folder (``limit`` of each at most,
    spread over the folder; DICOM through the bundle's ``window``), and the CT gate's
    non-CT negatives."""
    from ml_model.data.dataset import find_images, load_arrays

    slices: dict[str, np.ndarray] = {}
    for split, name in (("val", "val"), ("train", "train (the out-of-fold slices)")):
        records = find_images(data, splits=[split])
        if limit is not None and len(records) > limit:
            step = len(records) / limit
            records = [records[int(i * step)] for i in range(limit)]
        slices[name] = load_arrays(records, img_size, window, progress)[0]
    try:
        from ml_model.data.negatives import generate
        from ml_model.imaging.transforms import gray_to_model_input
    except ImportError:  # pragma: no cover - scikit-image is a training pin
        return slices
    negatives = generate(per_kind=4, seed=0)
    slices["non-CT (gate negatives)"] = np.stack(
        [gray_to_model_input(n.gray, img_size) for n in negatives]
    )
    return slices


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Add model.onnx and gradcam.onnx to an existing bundle (no retraining); "
        "the card records their parity with TensorFlow. --all: saved_model/ and model.tflite too."
    )
    parser.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    parser.add_argument(
        "--data",
        type=Path,
        help="a data folder with train/ and val/: parity on both (else synthetic slices only)",
    )
    parser.add_argument("--limit", type=int, help="at most this many slices per split")
    parser.add_argument(
        "--all",
        action="store_true",
        help="also rewrite saved_model/ and model.tflite (after a change to in-graph code)",
    )
    args = parser.parse_args(argv)

    from ml_model.architectures.layers import load_model

    card = load_card(args.bundle)
    model = load_model(args.bundle / KERAS_FILE)
    gate = CTGate.load(args.bundle, card.gate.threshold)
    if args.all:
        float16 = bool((card.training or {}).get("tflite_float16", False))
        rewrite_graphs(model, args.bundle, card.temperature, gate, float16)
    window = card.input.window.as_pair()
    slices = data_slices(args.data, card.input.size, window, args.limit) if args.data else {}
    section = add_onnx(model, args.bundle, gate, slices)
    sizes = {
        name: section[key]
        for name, key in (("model.onnx", "bytes"), ("gradcam.onnx", "gradcam_bytes"))
    }
    print(f"{args.bundle}: {sizes}")
    for name, row in section["parity"]["slices"].items():
        print(
            f"  {name}: n={row['n']} max|Δp|={row['max_abs_dp']:.2e} "
            f"(unsaturated {row['max_abs_dp_unsaturated']}) "
            f"max|Δct_logit|={row['max_abs_dct_logit']:.2e} "
            f"verdicts identical: {row['verdicts_identical']}"
        )
    print(f"  gradcam: {section['parity'].get('gradcam')}")


if __name__ == "__main__":
    main()
