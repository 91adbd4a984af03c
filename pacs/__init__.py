"""PACS worker: picks new CT series up from a DICOMweb PACS, asks the product's API for a
study verdict (``POST /predict/study``) and stores the answer back in the same study as a
DICOM Structured Report and a Secondary Capture series of heatmaps.

It is a separate service: it talks HTTP to the PACS (QIDO-RS, WADO-RS, STOW-RS) and to the
API, and imports nothing from ``backend`` or ``ml_model``. The verdict is the API's; the
worker only carries it.

    python -m pacs            # run the worker (settings: pacs.settings.WorkerSettings)
    python -m pacs.orthanc    # a local development Orthanc on loopback ports
"""

from __future__ import annotations

# What the worker writes carries these, so it can recognise its own outputs in the PACS.
MANUFACTURER = "cspine-triage"
SERIES_DESCRIPTION_PREFIX = "CSPINE-TRIAGE"
INTENDED_USE = "Decision support — not a diagnosis"
VERDICTS = ("Potentially Fracture", "Normal", "Not a CT slice", "CT outside the model's range")
# The answers that make no fracture call (the API's refusals): no score goes with them.
REFUSALS = ("Not a CT slice", "CT outside the model's range")
# Why a study is "CT outside the model's range" (the API's `outside_reason`).
OUTSIDE_REASONS = ("window", "region")

__all__ = [
    "INTENDED_USE",
    "MANUFACTURER",
    "OUTSIDE_REASONS",
    "REFUSALS",
    "SERIES_DESCRIPTION_PREFIX",
    "VERDICTS",
]
