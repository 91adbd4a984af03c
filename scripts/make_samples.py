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
- ``samples/local/{fracture,normal}/``: only when the shared data set is beside the checkout
  (``ml_model.config.SHARED_DATA_DIR``), one real neck slice of each class from its ``val/``
  split to drop on the web app. The folder is git-ignored: the Kaggle images are not ours to
  redistribute, so they are never committed.
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
sys.path.insert(0, str(REPO_ROOT))
from ml_model.config import SHARED_DATA_DIR  # noqa: E402  (a plain script: the repo on the path)

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


def copy_local_slices(folder: Path, data: Path = SHARED_DATA_DIR) -> list[Path]:
    """One un-augmented val slice per class from the shared data into ``folder/local``
    (nothing when the data is absent). Returns the paths written."""
    written = []
    for label in ("fracture", "normal"):
        originals = sorted(
            path
            for path in (data / "val" / label).glob("*.png")
            if "-rotated" not in path.stem and "-sharpened" not in path.stem
        )
        if not originals:
            continue
        target = folder / "local" / label / originals[0].name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(originals[0], target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="write every sample again")
    parser.add_argument("--out", type=Path, default=SAMPLES, help="folder (default: samples/)")
    args = parser.parse_args(argv)
    for path in write_samples(args.out, args.force):
        print(f"wrote {path}")
    local = copy_local_slices(args.out)
    for path in local:
        print(f"copied {path} (a real neck slice from the shared data; git-ignored)")
    if not local:
        print(f"no shared data at {SHARED_DATA_DIR}: no real neck slice copied")
    return 0


if __name__ == "__main__":
    sys.exit(main())
