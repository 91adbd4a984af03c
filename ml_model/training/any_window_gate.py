"""Fitting the "CT in any window" gate (``ct_any_window.npz`` of a bundle), issue 26 part 2:

    python -m ml_model.training.any_window_gate --bundle ml_model/models/default \\
        --data ../shared/data/cervical-ct/train --rsna ../shared/data/rsna-cspine-sample

The bundle's own gate (``gate.npz``) answers "a CT slice in the model's window?" and is left
as it is. This second gate answers "a CT slice at all, in whatever window it was exported?"
and is only asked about what the first one refused: CT → "CT outside the model's range",
not CT → "Not a CT slice" (``inference/verdict.py``). It is the same kind of model as the
first (a class-balanced logistic head on the same frozen ImageNet features; its backbone is
the bundle gate's, not stored twice), fitted on:

* positives: CT slices rendered in every usual viewer window (bone L400-600 / W1800-2500,
  soft tissue L40-60 / W350-400, the bundle's window, brain L40 / W80, lung L-600 / W1500),
  encoded as PNG or JPEG (quality 75-95) and decoded as the product decodes an upload
  (``decode_image``, window estimate included): real HU sources (the RSNA sample's DICOMs,
  pydicom-data's CT frames; random crops) in all of them, and Kaggle slices re-windowed from
  their export window (L-70 / W380, -260..+120 HU) into the bundle's, soft-tissue, brain
  and bone windows: every unsaturated grey exactly, a saturated one staying saturated (air
  black, which it is in those windows too; bone white, where a real bone window shows its
  texture). Never into the lung window, which grades the -1000..-260 HU the export made
  black;
* negatives: the bundle gate's (``data.negatives.generate``, same count and seed), as
  decoded by the product (window estimate included), the held-out quarter never fitted.

The threshold comes from out-of-fold logits on both sides (folds by patient / series for CT,
by source for negatives). Unlike the first gate, refusing non-CT comes first: when the two
sides overlap the threshold lies 0.5 above the highest out-of-fold negative (a CT slice it
misses is answered "Not a CT slice", as before this gate existed).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_model.config import EXPORT_WINDOW
from ml_model.data.negatives import Negative
from ml_model.imaging.transforms import decode_image, gray_to_model_input
from ml_model.imaging.window import hu_window
from ml_model.inference.gate import CTGate
from ml_model.training.gate_fit import (
    GATE_C,
    OVERLAP_STEP,
    _held_out_negatives,
    fit_logistic,
    negative_folds,
)

FOLDS = 5
# name -> (level range, width range) in HU: the windows of issue 26.
WINDOW_FAMILIES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "bone": ((400.0, 600.0), (1800.0, 2500.0)),
    "soft": ((40.0, 60.0), (350.0, 400.0)),
    "bundle": ((-70.0, -70.0), (380.0, 380.0)),
    "brain": ((40.0, 40.0), (80.0, 80.0)),
    "lung": ((-600.0, -600.0), (1500.0, 1500.0)),
}
# The Kaggle export (EXPORT_WINDOW) kept -260..+120 HU: not the lung window (see above).
KAGGLE_FAMILIES = ("bundle", "soft", "brain", "bone")
HU_RENDERS_PER_FAMILY = 8
# The bundle gate's C (GATE_C = 0.1). Out of fold, C 0.03-0.3 accept CT renders alike (90-91 %);
# C 0.3 and 1.0 let one held-out other-modality image through.
ANY_WINDOW_C = GATE_C


def encode_decode(
    gray: np.ndarray, rng: np.random.Generator, window: tuple[float, float]
) -> np.ndarray:
    """``gray`` saved as PNG or JPEG (quality 75-95) and decoded as the product decodes an
    upload (through ``window``'s window estimate)."""
    buffer = io.BytesIO()
    if rng.random() < 0.4:
        Image.fromarray(gray).save(buffer, "PNG")
    else:
        Image.fromarray(gray).save(buffer, "JPEG", quality=int(rng.integers(75, 96)))
    return decode_image(buffer.getvalue(), *window)


def _draw(family: str, rng: np.random.Generator) -> tuple[float, float]:
    (l0, l1), (w0, w1) = WINDOW_FAMILIES[family]
    return float(rng.uniform(l0, l1)), float(rng.uniform(w0, w1))


def rewindow_export(gray: np.ndarray, level: float, width: float) -> np.ndarray:
    """A Kaggle slice (EXPORT_WINDOW greys) in the window (level, width): grey -> HU -> grey,
    a saturated grey staying saturated (0: at or below -260 HU, 255: at or above +120)."""
    low, high = EXPORT_WINDOW[0] - EXPORT_WINDOW[1] / 2, EXPORT_WINDOW[0] + EXPORT_WINDOW[1] / 2
    hu = low + np.arange(256, dtype=np.float64) * (high - low) / 255.0
    table = hu_window(hu, level, width)
    table[0], table[255] = 0, 255
    return table[np.asarray(gray, np.uint8)]


def _crop(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    side = int(rng.uniform(0.7, 1.0) * min(gray.shape))
    top = int(rng.integers(0, gray.shape[0] - side + 1))
    left = int(rng.integers(0, gray.shape[1] - side + 1))
    crop = gray[top : top + side, left : left + side]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def hu_positives(
    frames: Sequence[tuple[str, np.ndarray]], size: int, window: tuple[float, float], seed: int
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Model inputs of real HU frames ((group, HU) pairs) in every window family: images,
    their groups and their families."""
    rng = np.random.default_rng(seed)
    images, groups, families = [], [], []
    for group, hu in frames:
        for family in WINDOW_FAMILIES:
            for k in range(HU_RENDERS_PER_FAMILY):
                gray = hu_window(hu, *_draw(family, rng))
                gray = gray if k == 0 else _crop(gray, rng)
                images.append(gray_to_model_input(encode_decode(gray, rng, window), size))
                groups.append(group)
                families.append(family)
    return images, groups, families


def kaggle_positives(
    grays: Sequence[tuple[str, np.ndarray]], size: int, window: tuple[float, float], seed: int
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Model inputs of Kaggle slices ((series, export greys) pairs) re-windowed into one
    family of ``KAGGLE_FAMILIES`` each, in turn."""
    rng = np.random.default_rng(seed)
    images, groups, families = [], [], []
    for i, (group, gray) in enumerate(grays):
        family = KAGGLE_FAMILIES[i % len(KAGGLE_FAMILIES)]
        out = gray if family == "bundle" else rewindow_export(gray, *_draw(family, rng))
        images.append(gray_to_model_input(encode_decode(out, rng, window), size))
        groups.append(group)
        families.append(family)
    return images, groups, families


def choose_threshold(ct_floor: float, negative_ceiling: float) -> tuple[float, str]:
    """Midpoint when out-of-fold CT and negatives separate; else 0.5 above the highest
    out-of-fold negative (refusing non-CT comes first)."""
    if ct_floor > negative_ceiling:
        return (ct_floor + negative_ceiling) / 2.0, "midpoint: lowest out-of-fold CT vs highest"
    return negative_ceiling + OVERLAP_STEP, "0.5 above the highest out-of-fold negative (overlap)"


def fit_any_window_gate(
    positives: np.ndarray,
    groups: np.ndarray,
    families: np.ndarray,
    negatives: Sequence[Negative],
    negative_x: np.ndarray,
    backbone: dict[str, np.ndarray],
    c: float,
    log: Callable[[str], None] = print,
) -> CTGate:
    """Fit on feature rows; threshold out of fold (FOLDS folds by CT group and negative
    source); the card-like details (per family, per held-out negative kind) in the gate."""
    training = np.array([not n.held_out for n in negatives])
    names = sorted(set(groups.tolist()))
    fold_of_group = {name: i % FOLDS for i, name in enumerate(names)}
    ct_fold = np.array([fold_of_group[g] for g in groups])
    neg_fold = negative_folds(negatives, FOLDS)
    oof_ct = np.full(len(positives), np.nan)
    oof_neg = np.full(len(negatives), np.nan)
    for k in range(FOLDS):
        mean, scale, coef, icpt = fit_logistic(
            positives[ct_fold != k], negative_x[training & (neg_fold != k)], c
        )
        oof_ct[ct_fold == k] = ((positives[ct_fold == k] - mean) / scale) @ coef + icpt
        held = training & (neg_fold == k)
        oof_neg[held] = ((negative_x[held] - mean) / scale) @ coef + icpt
        log(f"any-window fold {k}: lowest CT {np.nanmin(oof_ct[ct_fold == k]):.2f}, "
            f"highest negative {np.max(oof_neg[held], initial=-np.inf):.2f}")  # fmt: skip
    floor = float(np.nanmin(oof_ct))
    ceiling = float(np.nanmax(oof_neg))
    threshold, rule = choose_threshold(floor, ceiling)
    mean, scale, coef, icpt = fit_logistic(positives, negative_x[training], c)
    logits = ((negative_x - mean) / scale) @ coef + icpt
    held_out = _held_out_negatives(negatives, logits, threshold)
    per_family = {
        family: {
            "renders": int((families == family).sum()),
            "out_of_fold_accepted": int((oof_ct[families == family] >= threshold).sum()),
        }
        for family in sorted(set(families.tolist()))
    }
    details = {
        "answers": "CT in any window (asked only when the bundle's gate refuses a slice)",
        "method": f"class-balanced logistic regression (C={c}) on the bundle gate's features",
        "threshold": threshold,
        "threshold_rule": rule,
        "lowest_out_of_fold_ct_logit": floor,
        "highest_out_of_fold_negative_logit": ceiling,
        "out_of_fold_ct_accepted": int((oof_ct >= threshold).sum()),
        "out_of_fold_ct": len(oof_ct),
        "out_of_fold_per_window": per_family,
        "ct_groups": len(names),
        "held_out_negatives": held_out,
    }
    return CTGate(mean, scale, coef, icpt, threshold, backbone, details)


def _hu_frames(rsna: Path | None) -> list[tuple[str, np.ndarray]]:
    """(group, HU) of every real CT frame here in HU: the RSNA sample (group: the study) and
    pydicom-data's CT files (group: the file; its perfusion map, not HU, is left out)."""
    from ml_model.imaging.dicom import DicomImage, read_dicom

    frames: list[tuple[str, np.ndarray]] = []
    for path in sorted(rsna.glob("train_images/*/*.dcm")) if rsna else []:
        image = read_dicom(path.read_bytes())
        if isinstance(image, DicomImage) and image.is_hu:
            frames.append((f"rsna/{path.parent.name}", image.values))
    try:
        from pydicom.data import get_testdata_file
    except ImportError:
        return frames
    for name, indices in (("CT_small.dcm", (None,)), ("eCT_Supplemental.dcm", (0, 1))):
        found = get_testdata_file(name)
        for frame in indices if found else ():
            image = read_dicom(Path(str(found)).read_bytes(), frame=frame)
            if isinstance(image, DicomImage) and image.is_hu:
                frames.append((f"pydicom/{name}", image.values))
    return frames


def refit_any_window_gate(
    bundle: Path, data: Path, rsna: Path | None, every: int = 2, cache: Path | None = None
) -> dict[str, Any]:
    """Fit the bundle's any-window gate and write ``ct_any_window.npz`` beside its gate."""
    from ml_model.card import load_card
    from ml_model.data.dataset import TRAINING_SPLITS, find_images, series_of
    from ml_model.data.negatives import generate
    from ml_model.imaging.window_estimate import bring_to_window
    from ml_model.inference.bundle import Bundle

    started = time.perf_counter()
    loaded = Bundle.load(bundle)
    card = load_card(bundle)
    training = card.training or {}
    seed = int(training.get("seed", 42))
    size, window = card.input.size, card.input.window.as_pair()
    records = find_images(data, splits=TRAINING_SPLITS)[::every]
    grays = [
        (f"kaggle/{series_of(r.group)}", decode_image(r.path.read_bytes(), *EXPORT_WINDOW))
        for r in records
    ]
    k_img, k_grp, k_fam = kaggle_positives(grays, size, window, seed)
    h_img, h_grp, h_fam = hu_positives(_hu_frames(rsna), size, window, seed + 1)
    negatives = generate(int(training.get("gate_negatives", 120)), seed=seed)
    neg_img = np.stack(
        [gray_to_model_input(bring_to_window(n.gray, *window)[0], size) for n in negatives]
    )
    extract = loaded.gate.features_np  # as the inference core computes them
    if cache is not None and cache.is_file():
        stored = np.load(cache)
        pos_x, neg_x = stored["pos"], stored["neg"]
    else:
        pos_x = extract(np.stack(k_img + h_img))
        neg_x = extract(neg_img)
        if cache is not None:
            np.savez(cache, pos=pos_x, neg=neg_x)
    print(f"features: {len(pos_x)} CT renders, {len(neg_x)} negatives, "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip
    gate = fit_any_window_gate(
        pos_x.astype(np.float64),
        np.array(k_grp + h_grp),
        np.array(k_fam + h_fam),
        negatives,
        neg_x.astype(np.float64),
        loaded.gate.backbone,
        ANY_WINDOW_C,
    )
    details = gate.details | {
        "positives": {"kaggle_rewindowed": len(k_img), "real_hu_renders": len(h_img)},
        "command": "python -m ml_model.training.any_window_gate --bundle "
        f"{bundle} --data {data}" + (f" --rsna {rsna}" if rsna else ""),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
    }
    gate = gate.with_threshold(gate.threshold, details)
    gate.save_any_window(bundle)
    return details


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", required=True, type=Path)
    parser.add_argument("--data", required=True, type=Path, help="Kaggle slices (train/)")
    parser.add_argument("--rsna", type=Path, help="RSNA 2022 sample (real HU DICOMs)")
    parser.add_argument("--every", type=int, default=2, help="every N-th Kaggle slice")
    parser.add_argument("--cache", type=Path, help="feature cache (.npz) to reuse")
    args = parser.parse_args(argv)
    details = refit_any_window_gate(args.bundle, args.data, args.rsna, args.every, args.cache)
    json.dump(details, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
