"""Training on what a re-windowed 8-bit export looks like to the model (issue 26 part 4,
``--window-roundtrip P``; an experiment, off by default, docs/ct-windows.md "Part 4").

The product brings a PNG/JPEG exported in a bone or soft-tissue window back to the bundle's
window (``imaging/window_estimate.bring_to_window``): what the model then sees has coarser
grey steps (a bone window spends 255 greys on 2,000 HU, about 7 HU per step, where the
bundle's spends 1.5) and, for a bone window, a contrast error about soft tissue (the width
is assumed). A training slice (export window, EXPORT_WINDOW) round-tripped here:

1. greys -> HU -> a random bone (L 400-600 / W 1,800-2,500) or soft-tissue (L 40-60 /
   W 350-400) window, quantised to 8 bit; a saturated grey stays saturated (air black, bone
   white: physically possible renders only; ``any_window_gate.rewindow_export``);
2. back through the product's own ``bring_to_window``;
3. where the estimate refuses (not recoverable, or no window read), back through the true
   window's inverse with the assumed-width error instead: HU scaled about soft tissue by a
   factor 0.8-1.25 (what W 2,000 assumed for W 1,600-2,500 does).

With cached features (``--cache-features``, the default recipe) the backbone sees fixed
images once, so per-batch augmentation never reaches the head: the round trip is applied
when the fit arrays are built instead, one extra round-tripped copy of each fit slice with
probability P (deterministic by seed), the epoch-choosing slices untouched.
"""

from __future__ import annotations

import numpy as np

from ml_model.config import EXPORT_WINDOW
from ml_model.imaging.window_estimate import bring_to_window, window_table
from ml_model.training.any_window_gate import WINDOW_FAMILIES, rewindow_export

ROUNDTRIP_FAMILIES = ("bone", "soft")
# The contrast error of an assumed width: W 2,000 read for W 1,600..2,500.
CONTRAST_SCALE = (0.8, 1.25)


def _inverse_with_scale(gray: np.ndarray, level: float, width: float, scale: float) -> np.ndarray:
    """Greys of (level, width) -> HU, scaled by ``scale`` about soft tissue -> the export
    window's greys; saturated greys stay saturated."""
    return window_table((level, width), EXPORT_WINDOW, contrast=scale)[gray]


def roundtrip_in(
    gray: np.ndarray, level: float, width: float, scale: float
) -> tuple[np.ndarray, str]:
    """A 2-D uint8 slice in the export window, exported in the window (level, width) and
    brought back: through the product's estimate ("estimated"), or where that refuses
    through the true window with the contrast error ``scale`` ("inverse")."""
    rendered = rewindow_export(gray, level, width)
    back, estimate = bring_to_window(rendered, *EXPORT_WINDOW)
    if estimate.recoverable:
        return back, "estimated"
    return _inverse_with_scale(rendered, level, width, scale), "inverse"


def roundtrip(gray: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """:func:`roundtrip_in` through a random bone or soft-tissue window and contrast error."""
    family = ROUNDTRIP_FAMILIES[int(rng.integers(len(ROUNDTRIP_FAMILIES)))]
    (l0, l1), (w0, w1) = WINDOW_FAMILIES[family]
    level, width = float(rng.uniform(l0, l1)), float(rng.uniform(w0, w1))
    scale = float(np.exp(rng.uniform(*np.log(CONTRAST_SCALE))))
    return roundtrip_in(gray, level, width, scale)


def roundtrip_copies(images: np.ndarray, p: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Model inputs (N, S, S, 3 uint8, the export window): which of them get a round-tripped
    copy (each with probability ``p``) and the copies, deterministic by ``seed``."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"window round-trip probability must be in [0, 1], got {p}")
    rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(images)) < p)
    copies = np.empty((len(chosen), *images.shape[1:]), dtype=np.uint8)
    for k, i in enumerate(chosen):
        gray, _ = roundtrip(images[i, :, :, 0], rng)
        copies[k] = gray[:, :, None]
    return chosen, copies
