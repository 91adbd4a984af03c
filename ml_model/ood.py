"""Out-of-distribution guard: Mahalanobis distance of the penultimate-layer embedding.

The bundle stores the mean and a shrunk inverse covariance of the training
embeddings, and a distance threshold set on in-distribution data. An input whose
embedding lies past that threshold gets no fracture call: "Not a CT slice".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

OOD_FILE = "ood.json"


@dataclass(frozen=True)
class OODGuard:
    mean: np.ndarray
    precision: np.ndarray  # inverse covariance
    threshold: float
    details: dict[str, Any]

    def distance(self, embeddings: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``embeddings``."""
        centred = np.asarray(embeddings, dtype=np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", centred, self.precision, centred), 0))

    def in_distribution(self, embeddings: np.ndarray) -> np.ndarray:
        return self.distance(embeddings) <= self.threshold

    def save(self, model_dir: str | Path) -> None:
        payload = {
            "method": "mahalanobis",
            "threshold": self.threshold,
            "mean": self.mean.tolist(),
            "precision": self.precision.tolist(),
            **self.details,
        }
        Path(model_dir, OOD_FILE).write_text(json.dumps(payload))

    @classmethod
    def load(cls, model_dir: str | Path) -> OODGuard | None:
        path = Path(model_dir, OOD_FILE)
        if not path.is_file():
            return None
        payload = json.loads(path.read_text())
        details = {k: v for k, v in payload.items() if k not in ("mean", "precision", "threshold")}
        return cls(
            mean=np.asarray(payload["mean"], dtype=np.float64),
            precision=np.asarray(payload["precision"], dtype=np.float64),
            threshold=float(payload["threshold"]),
            details=details,
        )


def fit_guard(
    train_embeddings: np.ndarray,
    calibration_embeddings: np.ndarray,
    percentile: float = 99.5,
    margin: float = 1.25,
) -> OODGuard:
    """Fit mean/covariance on training embeddings and set the distance threshold.

    The threshold is ``margin`` x the larger of the ``percentile``-th distance on the
    calibration (validation) embeddings and the largest training distance, so that no
    known CT slice is refused; the margin leaves room for scanner variation.
    """
    train = np.asarray(train_embeddings, dtype=np.float64)
    # Ledoit-Wolf shrinkage: a stable inverse even with more dimensions than slices.
    estimator = LedoitWolf().fit(train)
    guard = OODGuard(estimator.location_, estimator.precision_, np.inf, {})
    calibration = guard.distance(calibration_embeddings)
    train_distances = guard.distance(train)
    base = max(float(np.percentile(calibration, percentile)), float(train_distances.max()))
    details = {
        "percentile": percentile,
        "margin": margin,
        "calibration_percentile_distance": float(np.percentile(calibration, percentile)),
        "calibration_max_distance": float(calibration.max()),
        "train_max_distance": float(train_distances.max()),
        "dimensions": int(train.shape[1]),
        "train_samples": int(train.shape[0]),
    }
    return OODGuard(guard.mean, guard.precision, base * margin, details)


def fit_bundle_guard(
    model_dir: str | Path, train_images: np.ndarray, calibration_images: np.ndarray
) -> OODGuard:
    """Fit the guard on a bundle's own features and write ``ood.json`` into the bundle."""
    from ml_model.predictor import Predictor  # the predictor imports this module

    predictor = Predictor(model_dir)
    batch = 64

    def features(images: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [predictor.run(images[i : i + batch]).features for i in range(0, len(images), batch)]
        )

    guard = fit_guard(features(train_images), features(calibration_images))
    guard.save(model_dir)
    return guard


def main(argv: list[str] | None = None) -> None:
    """Refit the guard of an existing bundle on the data it was trained on."""
    import argparse

    from ml_model.data import find_images, load_arrays
    from ml_model.export import read_card

    parser = argparse.ArgumentParser(description="Fit a bundle's out-of-distribution guard.")
    parser.add_argument("--model", required=True, help="bundle folder")
    parser.add_argument("--data", required=True, help="the folder the bundle was trained on")
    args = parser.parse_args(argv)
    card = read_card(args.model)
    train_groups = set(card["training"]["train_groups"])
    records = find_images(args.data)
    size = int(card["input"]["size"])
    train_images, _ = load_arrays([r for r in records if r.group in train_groups], size)
    val_images, _ = load_arrays([r for r in records if r.group not in train_groups], size)
    guard = fit_bundle_guard(args.model, train_images, val_images)
    print(f"OOD threshold {guard.threshold:.2f}", json.dumps(guard.details))


if __name__ == "__main__":
    main()
