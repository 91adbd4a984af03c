"""Names and defaults shared by training, evaluation, the CLI and the server."""

from pathlib import Path
from typing import Final

# Label 1 is the positive class: the model outputs P(fracture).
CLASS_NAMES: tuple[str, str] = ("normal", "fracture")
POSITIVE_CLASS = "fracture"

RESULT_POSITIVE: Final = "Potentially Fracture"
RESULT_NEGATIVE: Final = "Normal"
RESULT_OUT_OF_DISTRIBUTION: Final = "Not a CT slice"
# A CT slice the model cannot judge (another window, region or orientation; issue 26).
RESULT_OUTSIDE_RANGE: Final = "CT outside the model's range"

# The committed bundles take the whole slice at this size (cropped around the spine inside).
DEFAULT_IMG_SIZE = 384

# The window the training PNGs were exported with (Hounsfield units): fat near grey 107,
# muscle near 207, bone saturated (see the data README). Training decodes DICOM through it
# and writes it into the card (``input.window``); inference always reads the bundle's.
EXPORT_WINDOW_LEVEL = -70.0
EXPORT_WINDOW_WIDTH = 380.0
EXPORT_WINDOW: tuple[float, float] = (EXPORT_WINDOW_LEVEL, EXPORT_WINDOW_WIDTH)

# Bone window (Hounsfield units), for viewing.
BONE_WINDOW_LEVEL = 400.0
BONE_WINDOW_WIDTH = 1800.0

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = PACKAGE_DIR / "models" / "default"
# The shared real data set sits beside the checkout (see its README).
SHARED_DATA_DIR = PACKAGE_DIR.parent.parent / "shared" / "data" / "cervical-ct"
