"""The answer the product shows for one slice or study: the only place it is decided."""

from __future__ import annotations

from typing import Literal

from ml_model.config import (
    RESULT_NEGATIVE,
    RESULT_OUT_OF_DISTRIBUTION,
    RESULT_OUTSIDE_RANGE,
    RESULT_POSITIVE,
)

# The answers the product gives (the API's `result`).
Result = Literal["Potentially Fracture", "Normal", "Not a CT slice", "CT outside the model's range"]
# Why a CT slice is outside the model's range (the API's `outside_reason`).
OutsideReason = Literal["window", "region"]
# What each reason means and what to send instead, in plain words: the one table of these
# texts on the server (CLI, PDF report); the web app says the same (frontend/src/lib/results.ts,
# OUTSIDE_REASON_TEXT; tests/backend/api/routes/test_report_route.py checks they agree).
OUTSIDE_REASONS: dict[str, str] = {
    "window": "This looks like a CT slice exported in a window the model cannot judge (bone, "
    "brain or lung), so no fracture call was made. Send the DICOM: the model puts its "
    "Hounsfield units through its own window.",
    "region": "This looks like a CT slice, but not an axial cervical-spine slice like those the "
    "model was trained on (another region, a reformat or overlays), so no fracture call was "
    "made. Send the axial neck series as DICOM.",
}


def triage_result(
    probability: float,
    threshold: float,
    in_distribution: bool | None = True,
    outside_reason: str | None = None,
) -> Result:
    """ "Potentially Fracture" if p >= threshold, "Normal" below it, and no fracture call at
    all for an input the CT gate refused (``None``: no gate applied): "CT outside the
    model's range" when the "CT in any window" gate took it for CT (``outside_reason``
    set), "Not a CT slice" otherwise."""
    if in_distribution is False:
        return RESULT_OUTSIDE_RANGE if outside_reason else RESULT_OUT_OF_DISTRIBUTION
    return RESULT_POSITIVE if probability >= threshold else RESULT_NEGATIVE


def outside_reason_of(in_models_window: bool) -> OutsideReason:
    """The reason a CT slice the bundle's gate refused is outside the model's range: in the
    model's own window (a DICOM's HU through it, or greys the window estimate reads as it)
    -> "region" (region, orientation or overlays); anything else -> "window"."""
    return "region" if in_models_window else "window"
