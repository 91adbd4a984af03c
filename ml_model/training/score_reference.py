"""Give a trained slice bundle its drift reference: re-run the leave-one-series-out folds of
the card's own recipe, check that they reproduce the card's out-of-fold figures, and write
``study.score_histogram`` (what ``GET /monitoring`` compares live study scores with, PSI).

A bundle keeps its network, not the three fold networks its out-of-fold scores came from, so
a card trained before training wrote the histogram has none. Training the folds again with
the card's arguments and seed gives the out-of-fold slice scores again; they are used only
when they match what the card recorded of the first run (pooled AUC, per-series AUC,
temperature, the slice and study thresholds), within the tolerances below, set before any
re-run was looked at. The bundle's network, thresholds and every other figure stay as they
are. Only the training split is read, as in training (never the held-back ``val``).

    python -m ml_model.training.score_reference --bundle ml_model/models/default
    python -m ml_model.training.score_reference --bundle ... --check   # compare, write nothing
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.card import read_card, write_card
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.data.dataset import series_of
from ml_model.evaluation.metrics import (
    apply_temperature,
    choose_operating_points,
    compute_metrics,
    fit_temperature,
)
from ml_model.training.distribute import make_strategy
from ml_model.training.study_threshold import calibrate_study_threshold
from ml_model.training.train import cross_validate_series, load_training_data, parse_args

# How far a re-run may be from the card's first run and still stand for it.
AUC_TOLERANCE = 0.01
THRESHOLD_TOLERANCE = 0.02
TEMPERATURE_TOLERANCE = 0.05  # relative
POOLED = "out_of_fold (pooled)"


@dataclass(frozen=True)
class Figure:
    """One figure of the card's first run beside the re-run's."""

    name: str
    card: float
    rerun: float
    tolerance: float
    relative: bool = False

    @property
    def difference(self) -> float:
        gap = abs(self.rerun - self.card)
        return gap / abs(self.card) if self.relative else gap

    @property
    def agrees(self) -> bool:
        return self.difference <= self.tolerance

    def line(self) -> str:
        unit = " (relative)" if self.relative else ""
        mark = "ok" if self.agrees else "DIFFERS"
        return (
            f"  {self.name:<34} card {self.card:.4f}  re-run {self.rerun:.4f}  "
            f"|diff| {self.difference:.4f} <= {self.tolerance}{unit}: {mark}"
        )


def compare(
    card: dict[str, Any], oof: np.ndarray, labels: np.ndarray, groups: np.ndarray
) -> tuple[list[Figure], dict[str, Any]]:
    """The card's first-run figures beside the re-run's, and the re-run's study settings
    (calibrated with the card's temperature, as the card's were)."""
    temperature = float(card["temperature"])
    calibrated = apply_temperature(oof, temperature)
    points = choose_operating_points(labels, calibrated)
    pooled = compute_metrics(labels, oof, float(card["operating_points"]["sensitive"]["threshold"]))
    figures = [
        Figure("pooled out-of-fold AUC", card["metrics"][POOLED]["auc"], pooled["auc"],
               AUC_TOLERANCE),
        Figure("temperature", temperature, fit_temperature(labels, oof), TEMPERATURE_TOLERANCE,
               relative=True),
    ]  # fmt: skip
    series = np.array([series_of(g) for g in groups])
    for name, held_out in sorted(card.get("leave_one_series_out", {}).items()):
        mask = series == name
        if "auc" in held_out.get("model", {}) and len(set(labels[mask])) == 2:
            rerun_auc = compute_metrics(labels[mask], oof[mask], 0.5)["auc"]
            figures.append(
                Figure(f"{name} AUC", held_out["model"]["auc"], rerun_auc, AUC_TOLERANCE)
            )
    for point, stats in card["operating_points"].items():
        figures.append(Figure(f"slice threshold ({point})", stats["threshold"],
                              points[point]["threshold"], THRESHOLD_TOLERANCE))  # fmt: skip
    study = calibrate_study_threshold(
        calibrated,
        labels,
        groups,
        studies=card["study"]["calibration"]["synthetic_studies"],
        slices_per_study=card["study"]["calibration"]["slices_per_study"],
        fracture_slices=card["study"]["calibration"]["fracture_slices_per_positive_study"],
        top_k=card["study"]["top_k"],
        seed=int(card["training"]["seed"]),
    )
    for point, stats in card["study"]["operating_points"].items():
        figures.append(Figure(f"study threshold ({point})", stats["threshold"],
                              study["operating_points"][point]["threshold"],
                              THRESHOLD_TOLERANCE))  # fmt: skip
    return figures, study


def rerun_out_of_fold(card: dict[str, Any], data: str | None) -> tuple[np.ndarray, Any]:
    """The card's leave-one-series-out folds trained again: out-of-fold P(fracture) of every
    training slice, and the training data they were read from."""
    argv = list(card["training"]["argv"])
    if data is not None:
        argv += ["--data", data]
    config = parse_args(argv)
    if config.cv != "series":
        raise SystemExit(f"error: the card's training used cv={config.cv!r}: no folds to re-run")
    strategy = make_strategy(config.strategy)
    training = load_training_data(config, int(card["input"]["size"]))
    oof, _folds = cross_validate_series(
        config, training.records, training.images, training.labels, config.network_size, strategy
    )
    return oof, training


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_MODEL_DIR)
    parser.add_argument(
        "--data", default=None, help="the training data (default: the card's --data)"
    )
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args(argv)
    card = read_card(args.bundle)
    if card.get("study", {}).get("head"):
        raise SystemExit("error: a study bundle's reference comes from train_rsna, not this")
    oof, training = rerun_out_of_fold(card, args.data)
    figures, study = compare(card, oof, training.labels, training.groups)
    print(f"{card['name']} {card['version']}: the card's first run beside the re-run folds")
    print("\n".join(figure.line() for figure in figures))
    disagree = [figure.name for figure in figures if not figure.agrees]
    if disagree:
        raise SystemExit(
            "error: the re-run folds do not reproduce the card's out-of-fold figures "
            f"({', '.join(disagree)}): no reference written"
        )
    histogram = study["score_histogram"]
    histogram.source += (
        f"; the card's leave-one-series-out folds re-run on {datetime.now(UTC):%Y-%m-%d} "
        "(ml_model.training.score_reference), reproducing its out-of-fold figures: "
        + ", ".join(f"{f.name} {f.card:.4f} vs {f.rerun:.4f}" for f in figures)
    )
    print(f"reference: {histogram.n} synthetic studies, edges {np.round(histogram.edges, 3)}")
    if args.check:
        return
    card["study"]["score_histogram"] = histogram.model_dump()
    write_card(args.bundle, card)
    print(f"written: {args.bundle}/model_card.json study.score_histogram")


if __name__ == "__main__":
    main()
