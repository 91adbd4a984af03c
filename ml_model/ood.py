"""Out-of-distribution guard: how far an input's features lie from the training CT slices.

The score is a Mahalanobis distance of the model's features (embedding plus pooled
last-conv activations). For wide backbones the features are first projected on their
top principal components, and the distance *off* that subspace (the reconstruction
residual) is measured too: natural photos differ from CT mostly in directions the CT
training set never varies in. Each distance is divided by its threshold (set on
in-distribution data), so ``score <= 1`` means "looks like a CT slice".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf

OOD_FILE = "ood.npz"
# Past this many features, measure in the top principal components plus the residual.
MAX_DIMENSIONS = 128


@dataclass(frozen=True)
class OODGuard:
    mean: np.ndarray
    precision: np.ndarray  # inverse covariance (in the projected space, if any)
    mahalanobis_threshold: float
    details: dict[str, Any]
    projection_mean: np.ndarray | None = None
    projection: np.ndarray | None = None  # (features, components)
    residual_threshold: float | None = None

    threshold = 1.0  # scores are normalised by their thresholds

    def _parts(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        features = np.asarray(features, dtype=np.float64)
        residual = None
        if self.projection is not None and self.projection_mean is not None:
            centred = features - self.projection_mean
            features = centred @ self.projection
            residual = np.linalg.norm(centred - features @ self.projection.T, axis=1)
        offset = features - self.mean
        squared = np.einsum("ij,jk,ik->i", offset, self.precision, offset)
        return np.sqrt(np.maximum(squared, 0)), residual

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Normalised OOD score of each row: > 1 means out of distribution."""
        mahalanobis, residual = self._parts(features)
        score = mahalanobis / self.mahalanobis_threshold
        if residual is not None and self.residual_threshold:
            score = np.maximum(score, residual / self.residual_threshold)
        return score

    def in_distribution(self, features: np.ndarray) -> np.ndarray:
        return self.distance(features) <= self.threshold

    def save(self, model_dir: str | Path) -> None:
        arrays = {"mean": self.mean, "precision": self.precision}
        if self.projection is not None and self.projection_mean is not None:
            arrays |= {"projection": self.projection, "projection_mean": self.projection_mean}
        details = {
            "method": "mahalanobis" + ("+pca_residual" if self.projection is not None else ""),
            "mahalanobis_threshold": self.mahalanobis_threshold,
            "residual_threshold": self.residual_threshold,
            **self.details,
        }
        stored: dict[str, Any] = {k: v.astype(np.float32) for k, v in arrays.items()}
        stored["details"] = np.array(json.dumps(details))
        np.savez_compressed(Path(model_dir, OOD_FILE), **stored)

    @classmethod
    def load(cls, model_dir: str | Path) -> OODGuard | None:
        path = Path(model_dir, OOD_FILE)
        if not path.is_file():
            return None
        with np.load(path, allow_pickle=False) as stored:
            details = json.loads(str(stored["details"]))
            arrays = {k: stored[k].astype(np.float64) for k in stored.files if k != "details"}
        return cls(
            mean=arrays["mean"],
            precision=arrays["precision"],
            mahalanobis_threshold=float(details.pop("mahalanobis_threshold")),
            residual_threshold=details.pop("residual_threshold"),
            details=details,
            projection_mean=arrays.get("projection_mean"),
            projection=arrays.get("projection"),
        )


def _threshold(
    train: np.ndarray, calibration: np.ndarray, percentile: float, margin: float
) -> float:
    """``margin`` x the larger of the calibration percentile and the training maximum,
    so no known CT slice is refused; the margin leaves room for scanner variation."""
    return margin * max(float(np.percentile(calibration, percentile)), float(train.max()))


def fit_guard(
    train_features: np.ndarray,
    calibration_features: np.ndarray,
    percentile: float = 99.5,
    margin: float = 1.25,
) -> OODGuard:
    """Fit the guard on training features; thresholds from training + validation features."""
    train = np.asarray(train_features, dtype=np.float64)
    projection_mean = projection = None
    if train.shape[1] > MAX_DIMENSIONS:
        projection_mean = train.mean(axis=0)
        _, _, vt = np.linalg.svd(train - projection_mean, full_matrices=False)
        projection = vt[:MAX_DIMENSIONS].T
        projected = (train - projection_mean) @ projection
    else:
        projected = train
    # Ledoit-Wolf shrinkage: a stable inverse even with few slices per dimension.
    estimator = LedoitWolf().fit(projected)
    raw = OODGuard(estimator.location_, estimator.precision_, 1.0, {}, projection_mean, projection)
    train_maha, train_residual = raw._parts(train)
    cal_maha, cal_residual = raw._parts(calibration_features)
    maha_threshold = _threshold(train_maha, cal_maha, percentile, margin)
    residual_threshold = None
    if train_residual is not None and cal_residual is not None:
        residual_threshold = _threshold(train_residual, cal_residual, percentile, margin)
    details = {
        "percentile": percentile,
        "margin": margin,
        "train_max_mahalanobis": float(train_maha.max()),
        "calibration_max_mahalanobis": float(cal_maha.max()),
        "dimensions": int(train.shape[1]),
        "projected_dimensions": int(projected.shape[1]),
        "train_samples": int(train.shape[0]),
    }
    return OODGuard(
        estimator.location_,
        estimator.precision_,
        maha_threshold,
        details,
        projection_mean,
        projection,
        residual_threshold,
    )


def fit_bundle_guard(
    model_dir: str | Path, train_images: np.ndarray, calibration_images: np.ndarray
) -> OODGuard:
    """Fit the guard on a bundle's own features and write ``ood.json`` into the bundle."""
    from ml_model.predictor import Predictor  # the predictor imports this module

    predictor = Predictor(model_dir)  # runs its forward pass in bounded batches itself
    guard = fit_guard(
        predictor.run(train_images).features, predictor.run(calibration_images).features
    )
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
    print(f"OOD guard fitted: {json.dumps(guard.details)}")


if __name__ == "__main__":
    main()
