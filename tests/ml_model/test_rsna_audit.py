"""The default bundle on real RSNA 2022 slices: the card's counts are what the product says."""

from __future__ import annotations

from pathlib import Path

import pytest

from ml_model.card import read_card
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.evaluation.rsna_audit import CARD_SECTION, audit, slice_truth, summary

RSNA_SAMPLE = Path(__file__).resolve().parents[3] / "shared" / "data" / "rsna-cspine-sample"


@pytest.mark.parametrize(
    ("boxed", "positive", "number", "truth"),
    [
        (frozenset({57, 58}), True, 57, True),  # inside the boxed range
        (frozenset({57, 58}), True, 3, False),  # a study with boxes: every other slice is normal
        (frozenset(), False, 3, False),  # a patient-negative study
        (frozenset(), True, 3, None),  # positive, no boxes: unknown
    ],
)
def test_slice_truth(
    boxed: frozenset[int], positive: bool, number: int, truth: bool | None
) -> None:
    assert slice_truth(boxed, positive, number) is truth


def test_the_default_cards_real_data_counts_are_measured() -> None:
    """Re-measures the default bundle on the RSNA sample and compares with its card (which the
    README quotes): a retrained bundle whose card was not re-audited fails here."""
    if not (RSNA_SAMPLE / "train_images").is_dir():
        pytest.skip(f"RSNA sample not found at {RSNA_SAMPLE} (see its README)")
    from ml_model.inference.core import InferenceCore

    rows = audit(InferenceCore(DEFAULT_MODEL_DIR), RSNA_SAMPLE)
    measured = summary(rows, command="")
    recorded = read_card(DEFAULT_MODEL_DIR)["real_data"][CARD_SECTION]
    assert measured["slices"] == recorded["slices"] == 34
    for key in ("no_fracture_slices", "accepted_by_ct_gate", "no_fracture_flagged"):
        assert measured[key] == recorded[key], key
