#!/usr/bin/env python3
"""Write the samples the README's curl examples use (``make samples``).

    python scripts/make_samples.py            # write what is missing under samples/
    python scripts/make_samples.py --force    # write everything again

- ``samples/CT_small.dcm``: pydicom's own test file ``CT_small.dcm`` (a 128x128 CT slice,
  MIT-licensed like pydicom; its patient fields hold the placeholder
  ``CompressedSamples^CT1``, no real patient), copied as is.
- ``samples/CT_small.png``: the same slice through the default model card's
  ``input.window`` (the window the training slices were exported with, which the API
  applies to DICOM), as an 8-bit greyscale PNG.
- ``samples/series.zip``: a zip of the DICOM, the smallest "series" ``/predict/study`` and
  ``/report`` accept.

Never the Kaggle images: they are not ours to redistribute.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLES = REPO_ROOT / "samples"
DEFAULT_CARD = REPO_ROOT / "ml_model" / "models" / "default" / "model_card.json"
NAMES = ("CT_small.dcm", "CT_small.png", "series.zip")


def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """Hounsfield units -> uint8 through a linear window."""
    low = level - width / 2.0
    scaled = (hu - low) / width * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def export_window(card: Path = DEFAULT_CARD) -> tuple[float, float]:
    """The default model's DICOM window (level, width): its card's ``input.window``."""
    window = json.loads(card.read_text())["input"]["window"]
    return float(window["level"]), float(window["width"])


def write_samples(folder: Path = SAMPLES, force: bool = False) -> list[Path]:
    """Write the samples into ``folder``; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    dcm, png, archive = (folder / name for name in NAMES)
    written = []
    source = get_testdata_file("CT_small.dcm")
    if source is None:
        raise FileNotFoundError("pydicom's test file CT_small.dcm is missing")
    if force or not dcm.is_file():
        shutil.copyfile(str(source), dcm)
        written.append(dcm)
    if force or not png.is_file():
        ds = pydicom.dcmread(dcm)
        slope = float(getattr(ds, "RescaleSlope", 1.0))
        intercept = float(getattr(ds, "RescaleIntercept", 0.0))
        hu = ds.pixel_array.astype(np.float64) * slope + intercept
        Image.fromarray(window(hu, *export_window())).save(png, optimize=True)
        written.append(png)
    if force or not archive.is_file():
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as out:
            info = zipfile.ZipInfo("series/CT_small.dcm", date_time=(2020, 1, 1, 0, 0, 0))
            out.writestr(info, dcm.read_bytes(), compress_type=zipfile.ZIP_DEFLATED)
        archive.write_bytes(buffer.getvalue())
        written.append(archive)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="write every sample again")
    parser.add_argument("--out", type=Path, default=SAMPLES, help="folder (default: samples/)")
    args = parser.parse_args(argv)
    for path in write_samples(args.out, args.force):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
