"""The answer the product shows for one slice or study: the only place it is decided."""

from __future__ import annotations

from typing import Literal

from ml_model.config import RESULT_NEGATIVE, RESULT_OUT_OF_DISTRIBUTION, RESULT_POSITIVE

# The three answers the product gives (the API's `result`).
Result = Literal["Potentially Fracture", "Normal", "Not a CT slice"]


def triage_result(
    probability: float, threshold: float, in_distribution: bool | None = True
) -> Result:
    """ "Potentially Fracture" if p >= threshold, "Normal" below it, and no fracture call at
    all ("Not a CT slice") for an input the CT gate refused (``None``: no gate applied)."""
    if in_distribution is False:
        return RESULT_OUT_OF_DISTRIBUTION
    return RESULT_POSITIVE if probability >= threshold else RESULT_NEGATIVE
