"""What a bundle says on real RSNA 2022 slices whose slice-level truth is known.

    python -m ml_model.evaluation.rsna_audit --bundle ml_model/models/default \\
        --rsna ../shared/data/rsna-cspine-sample [--write-card]

Every slice of every study in an RSNA-layout folder is decoded by the product's one path
(``InferenceCore``) and judged at both operating points. The slice truth comes from the
competition's labels (``ml_model.data.rsna``): a slice in a study's boxed range is a
fracture slice; every other slice of a study with boxes, and every slice of a
patient-negative study, is a no-fracture slice. The sample in ``shared/`` holds the top
slices (skull base, above C1) of five patients whose fractures are boxed lower down: a model
that learned the fracture calls them normal, a model that learned the Kaggle archive's level
shortcut (skull base = "fracture") flags them. With ``--write-card`` the counts go into the
bundle's card as ``real_data.rsna_sample`` (the README quotes them, and a test re-measures
them against the card).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ml_model.card import OPERATING_POINTS, read_card, write_card
from ml_model.config import DEFAULT_MODEL_DIR, RESULT_POSITIVE
from ml_model.data.rsna import find_studies, read_labels
from ml_model.inference.core import InferenceCore

CARD_SECTION = "rsna_sample"


@dataclass(frozen=True)
class SliceRow:
    """One scored slice: its study, file, truth and the product's answers."""

    study: str
    file: str
    fracture: bool  # the slice lies in its study's boxed range
    probability: float
    accepted: bool  # the CT gate took it as a CT slice
    flagged: dict[str, bool]  # per operating point: answered "Potentially Fracture"


def slice_truth(boxed: frozenset[int], patient_positive: bool, number: int) -> bool | None:
    """A slice's truth from the competition's labels (None: unknown, a positive patient
    without boxes)."""
    if boxed:
        return number in boxed
    return None if patient_positive else False


def audit(core: InferenceCore, root: Path) -> list[SliceRow]:
    """Score every slice of every study under ``root``/train_images whose truth is known."""
    labels = read_labels(root)
    rows: list[SliceRow] = []
    for uid in find_studies(root):
        study = labels.get(uid)
        if study is None:
            continue
        for path in sorted((root / "train_images" / uid).glob("*.dcm"), key=_number):
            truth = slice_truth(study.boxed_slices, bool(study.targets[0] >= 0.5), _number(path))
            if truth is None:
                continue
            output = core.scores(core.model_input(core.decode(path.read_bytes())))
            flagged: dict[str, bool] = {
                point: core.judge(output, point)[0].result == RESULT_POSITIVE
                for point in OPERATING_POINTS
            }
            rows.append(
                SliceRow(
                    uid,
                    path.name,
                    truth,
                    float(output.probability[0]),
                    bool(core.accepts(output)[0]),
                    flagged,
                )
            )
    return rows


def _number(path: Path) -> int:
    return int(path.stem) if path.stem.isdigit() else -1


def summary(rows: list[SliceRow], command: str) -> dict[str, Any]:
    """The card section: counts of no-fracture slices flagged at each operating point."""
    normal = [r for r in rows if not r.fracture]
    flagged = {p: sum(r.flagged[p] for r in normal) for p in OPERATING_POINTS}
    return {
        "what": "real RSNA 2022 slices with slice-level truth from the competition's boxes",
        "studies": len({r.study for r in rows}),
        "slices": len(rows),
        "no_fracture_slices": len(normal),
        "accepted_by_ct_gate": sum(r.accepted for r in normal),
        "no_fracture_flagged": flagged,
        "share_no_fracture_flagged": {
            p: (round(n / len(normal), 4) if normal else None) for p, n in flagged.items()
        },
        "median_probability": float(np.median([r.probability for r in normal])) if normal else None,
        "measured": datetime.now(UTC).strftime("%Y-%m-%d"),
        "command": command,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", default=str(DEFAULT_MODEL_DIR), help="bundle folder")
    parser.add_argument("--rsna", required=True, help="RSNA 2022 layout (train_images/, CSVs)")
    parser.add_argument("--write-card", action="store_true", help="store the counts in the card")
    args = parser.parse_args(argv)
    core = InferenceCore(args.bundle)
    rows = audit(core, Path(args.rsna))
    if not rows:
        raise SystemExit(f"no slice with known truth under {args.rsna}/train_images")
    for row in rows:
        marks = " ".join(f"{p}={'FLAG' if row.flagged[p] else '-'}" for p in OPERATING_POINTS)
        truth = "fracture" if row.fracture else "no fracture"
        where = f"{row.study.rsplit('.', 1)[-1]}/{row.file}"
        gate = "CT" if row.accepted else "not CT"
        print(f"{where:>14} {truth:<11} p={row.probability:.3f} {gate}  {marks}")
    command = "python -m ml_model.evaluation.rsna_audit " + shlex.join(
        ["--bundle", args.bundle, "--rsna", args.rsna]
    )
    section = summary(rows, command)
    print(json.dumps(section, indent=2))
    if args.write_card:
        card = read_card(args.bundle)
        card.setdefault("real_data", {})[CARD_SECTION] = section
        write_card(args.bundle, card)
        print(f"written to {args.bundle}/model_card.json (real_data.{CARD_SECTION})")
    return 0


__all__ = ["SliceRow", "audit", "slice_truth", "summary"]

if __name__ == "__main__":
    sys.exit(main())
