"""Evaluate a model bundle on a folder of labelled slices, as the product would answer.

    python -m ml_model.evaluate --model ml_model/models/default \
        --data ../shared/data/cervical-ct/val --out OUT [--runtime onnx]

Every file is read as the product reads it (``InferenceCore.judge_files``: the bundle's
window and input size, the runtime's forward). Writes OUT/metrics.json: the model's
metrics at the bundle's threshold, what the product answers (``refused``: slices the CT
gate turned away; ``product``: accuracy, recall and specificity of the answer strings, a
refused fracture counting as a miss), 95 % intervals over base slices, and the same per
CT series and per class. Also
OUT/shortcut.json + shortcut.png (where the model looks, and counterfactuals),
OUT/gate_report.json + gate_report.png (the CT gate per corpus, held-out non-CT included),
confusion_matrix.png, roc_curve.png, reliability.png and predictions.csv.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml_model.architectures.spine_crop import BONE_GREY, TISSUE_GREY
from ml_model.data.dataset import DatasetError, find_images, groups_of, labels_of, series_of
from ml_model.data.negatives import generate as generate_negatives
from ml_model.evaluation.metrics import plot_confusion_matrix, plot_reliability, plot_roc
from ml_model.evaluation.report import held_out_report
from ml_model.inference.core import DEFAULT_OPERATING_POINT, OPERATING_POINTS, InferenceCore
from ml_model.inference.explain import normalise_cam, overlay_png
from ml_model.inference.runtimes import add_runtime_argument

SOFT_TISSUE_GREY = 207  # muscle in the export window
AUDIT_SLICES = 12  # per class: Grad-CAM is one backward pass each


def evaluate(
    model_dir: str | Path,
    data: str | Path,
    out: str | Path,
    operating_point: str = DEFAULT_OPERATING_POINT,
    unseen_only: bool = False,
    runtime: str = "local",
) -> dict[str, Any]:
    """Score every image under ``data``; ``unseen_only`` drops series the model trained on."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    core = InferenceCore.on_runtime(model_dir, runtime)
    records = find_images(data)
    excluded = 0
    if unseen_only:
        seen = set((core.bundle.card.training or {}).get("series", []))
        kept = [r for r in records if series_of(r.group) not in seen]
        excluded = len(records) - len(kept)
        records = kept
        if not records:
            raise SystemExit("every image belongs to a CT series the model was trained on")
    judged = core.judge_files(
        [record.path.read_bytes for record in records], operating_point, progress=True
    )
    if judged.errors:
        listed = "\n  ".join(f"{records[i].path}: {exc}" for i, exc in judged.errors[:10])
        raise DatasetError(f"{len(judged.errors)} unreadable image file(s):\n  {listed}")
    images, output, verdicts = judged.images, judged.output, judged.verdicts
    labels = labels_of(records)
    probs = output.probability
    accepted = np.array([v.in_distribution for v in verdicts], bool)
    threshold = core.threshold(operating_point)
    groups = groups_of(records)

    report = held_out_report(labels, probs, accepted, groups, threshold)
    metrics: dict[str, Any] = {
        **report["model"],
        "intervals_95": report["intervals_95"],
        "refused": report["refused"],
        "product": report["product"],
        "operating_point": operating_point,
        "model": f"{core.bundle.card.name} {core.bundle.card.version}",
        "distinct_slices": len(set(groups)),
        "excluded_training_files": excluded,
        # Of "refused": CT slices outside the model's range, by reason (issue 26).
        "outside_range": dict(Counter(v.outside_reason for v in verdicts if v.outside_reason)),
    }
    series = np.array([series_of(g) for g in groups])
    metrics["per_series"] = {
        name: held_out_report(
            labels[series == name], probs[series == name], accepted[series == name],
            groups[series == name], threshold,
        )["summary"] | {"files": int((series == name).sum())}
        for name in sorted(set(series))
    }  # fmt: skip
    metrics["per_class"] = {
        name: {
            "files": int((labels == label).sum()),
            "refused": int((~accepted[labels == label]).sum()),
            "mean_probability": float(probs[labels == label].mean())
            if (labels == label).any()
            else None,
        }
        for label, name in ((0, "normal"), (1, "fracture"))
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(metrics["confusion_matrix"], out / "confusion_matrix.png")
    plot_roc(labels, probs, out / "roc_curve.png")
    plot_reliability(labels, probs, out / "reliability.png")
    results = [v.result for v in verdicts]
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "probability", "predicted", "result"])
        for record, p, result in zip(records, probs, results, strict=True):
            writer.writerow(
                [record.path, record.label, repr(float(p)), int(p >= threshold), result]
            )
    shortcut = shortcut_audit(core, images, labels, operating_point, out)
    (out / "shortcut.json").write_text(json.dumps(shortcut, indent=2) + "\n")
    gate = gate_report(core, output.ct_logit, labels, out)
    (out / "gate_report.json").write_text(json.dumps(gate, indent=2) + "\n")
    return metrics


def gate_report(
    core: InferenceCore, ct_logits: np.ndarray, labels: np.ndarray, out: Path
) -> dict[str, Any]:
    """Accepted / refused per corpus, with margins: the evaluated CT slices (per class) and
    the held-out part of every negative kind (never used to fit the gate); gate_report.png
    shows the logits against the threshold."""
    import matplotlib.pyplot as plt

    threshold = core.bundle.gate_threshold
    training = core.bundle.card.training or {}
    negatives = [
        n
        for n in generate_negatives(
            int(training.get("gate_negatives", 120)), seed=int(training.get("seed", 42)),

        )
        if n.held_out
    ]  # fmt: skip
    corpora: dict[str, np.ndarray] = {
        f"CT {name}": ct_logits[labels == label]
        for label, name in ((0, "normal"), (1, "fracture"))
        if (labels == label).any()
    }
    if negatives:
        arrays = np.stack([core.model_input(n.gray) for n in negatives])
        logits = core.scores(arrays).ct_logit
        for kind in sorted({n.kind for n in negatives}):
            corpora[f"not CT: {kind}"] = logits[[n.kind == kind for n in negatives]]
    report: dict[str, Any] = {"threshold": threshold, "corpora": {}}
    for name, logits in corpora.items():
        accepted = int((logits >= threshold).sum())
        margin = (logits.min() - threshold) if name.startswith("CT") else (threshold - logits.max())
        report["corpora"][name] = {
            "n": len(logits),
            "accepted": accepted,
            "refused": int(len(logits) - accepted),
            "margin": float(margin),
        }
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(corpora) + 1.5))
    for row, (name, logits) in enumerate(corpora.items()):
        jitter = np.random.default_rng(row).uniform(-0.25, 0.25, len(logits))
        colour = "tab:green" if name.startswith("CT") else "tab:red"
        ax.scatter(logits, row + jitter, s=6, alpha=0.5, color=colour)
    ax.axvline(threshold, color="black", lw=1, label=f"threshold {threshold:.2f}")
    ax.set_yticks(range(len(corpora)), list(corpora))
    ax.set_xlabel("CT gate logit (right of the line: accepted as a CT slice)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "gate_report.png", dpi=110)
    plt.close(fig)
    return report


def bone_mask(image: np.ndarray) -> np.ndarray:
    """Saturated pixels inside the body: bone in the export window."""
    gray = image[..., 0]
    return (gray >= BONE_GREY) & (gray > TISSUE_GREY)


def bright_ellipse(size: int, grey: int = 230) -> np.ndarray:
    """A uniform bright ellipse on black: no anatomy at all."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    inside = ((yy - 0.5) / 0.32) ** 2 + ((xx - 0.5) / 0.42) ** 2 <= 1.0
    return np.repeat((inside * grey).astype(np.uint8)[..., np.newaxis], 3, axis=-1)


def shortcut_audit(
    core: InferenceCore, images: np.ndarray, labels: np.ndarray, operating_point: str, out: Path
) -> dict[str, Any]:
    """Where the model looks (Grad-CAM mass on bone vs bone's share of the image, per class)
    and what it says to counterfactuals: a fracture slice with its bone replaced by soft
    tissue, a normal slice with its upper half blanked, a uniform bright ellipse."""
    rng = np.random.default_rng(0)
    threshold = core.threshold(operating_point)
    audit: dict[str, Any] = {"threshold": threshold, "grad_cam": {}, "counterfactuals": {}}
    montage: list[np.ndarray] = []
    for label, name in ((1, "fracture"), (0, "normal")):
        pool = np.flatnonzero(labels == label)
        chosen = rng.choice(pool, min(AUDIT_SLICES, len(pool)), replace=False)
        mass: list[float] = []
        area: list[float] = []
        for i in chosen:
            cam = np.maximum(core.gradcam(images[i]), 0)
            heat = normalise_cam(cam, images[i].shape[1::-1])
            bone = bone_mask(images[i])
            mass.append(float((heat * bone).sum() / max(heat.sum(), 1e-9)))
            area.append(float(bone.mean()))
            if len(montage) < 8:
                montage.append(
                    np.asarray(Image.open(io.BytesIO(overlay_png(images[i][..., 0], cam))))
                )
        if mass:
            audit["grad_cam"][name] = {
                "slices": len(mass),
                "mass_on_bone": float(np.mean(mass)),
                "bone_area_share": float(np.mean(area)),
                "ratio": float(np.mean(mass)) / max(float(np.mean(area)), 1e-9),
            }
    size = core.bundle.img_size
    cases: dict[str, list[np.ndarray]] = {"uniform_bright_ellipse": [bright_ellipse(size)]}
    fractures, normals = np.flatnonzero(labels == 1)[:10], np.flatnonzero(labels == 0)[:10]
    cases["fracture_bone_to_soft_tissue"] = [
        np.where(bone_mask(images[i])[..., np.newaxis], SOFT_TISSUE_GREY, images[i]).astype(
            np.uint8
        )
        for i in fractures
    ]
    blanked = []
    for i in normals:
        image = images[i].copy()
        image[: size // 2] = 0
        blanked.append(image)
    cases["normal_upper_half_blanked"] = blanked
    for name, arrays in cases.items():
        if not arrays:
            continue
        case_verdicts = core.classify(np.stack(arrays), operating_point)
        results = [v.result for v in case_verdicts]
        audit["counterfactuals"][name] = {
            "n": len(arrays),
            "probabilities": [round(v.probability, 4) for v in case_verdicts],
            "results": results,
            "called_fracture": sum(r == "Potentially Fracture" for r in results),
        }
        montage.append(arrays[0])
    _save_montage(montage, out / "shortcut.png")
    return audit


def _save_montage(tiles: list[np.ndarray], path: Path, tile: int = 192) -> None:
    if not tiles:
        return
    resized = [np.asarray(Image.fromarray(t[..., :3]).resize((tile, tile))) for t in tiles]
    columns = 4
    while len(resized) % columns:
        resized.append(np.zeros_like(resized[0]))
    rows = [
        np.concatenate(resized[i : i + columns], axis=1) for i in range(0, len(resized), columns)
    ]
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


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
        help="skip images of CT series the model was trained on",
    )
    add_runtime_argument(parser)
    args = parser.parse_args(argv)
    metrics = evaluate(
        args.model, args.data, args.out, args.operating_point, args.unseen_only, args.runtime
    )
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    print(
        f"{metrics['n']} images ({metrics['distinct_slices']} distinct slices), "
        f"threshold {metrics['threshold']:.4f} ({metrics['operating_point']})"
    )
    for key in ("accuracy", "precision", "recall", "specificity", "f1", "auc", "loss", "ece"):
        print(f"  {key:<12}{metrics[key]:.4f}")
    print(f"  confusion   tn={tn} fp={fp} fn={fn} tp={tp}")
    product = metrics["product"]
    print(
        f"  product     accuracy {product['accuracy']:.4f} recall {product['recall']:.4f} "
        f"specificity {product['specificity']:.4f}; refused {metrics['refused']}"
    )
    for name, row in metrics["per_series"].items():
        print(
            f"  {name}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float))
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
