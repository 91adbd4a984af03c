"""The window an 8-bit CT slice was rendered with, read from its grey histogram; the slice
brought back to another window when the physics allows it.

A PNG or JPEG of a CT slice has lost its Hounsfield units: grey ``g`` is
``(HU - level + width / 2) / width * 255``, clipped to 0..255. Two tissues every CT slice
of the neck shows at a known HU pin the line down: **fat** (about -100 HU) and **soft
tissue / muscle** (about +40 HU) are the two lowest-lying peaks of the body's histogram
above air. Their grey distance gives the width (140 HU over that many grey levels), their
position the level. **Air** (-1000 HU) is the check: where the estimated window puts air
inside 0..255, the histogram must have air there; where it puts air below 0, the slice must
have black (saturated) pixels. Saturation at 0 and 255 (air, the field-of-view disc outside
the reconstruction circle, dense bone) carries no HU and is never used as a landmark.

**Bone windows** (W 1,500-2,500, how most viewers export a C-spine slice) merge fat and
soft tissue into one peak (they lie 14-20 grey levels apart), so no tissue pair gives the
width. Where no pair reading is recoverable, the histogram is tested for a bone window's
shape: the largest peak (soft tissue) low in the greys, air black, bone mostly unsaturated
(its tail above +300 HU holds more pixels than white, and fewer than soft tissue), and the
greys between black and -200 HU sparse (only the air-tissue partial volume lies there; a
soft-tissue window read as a bone window would put fat there). Then the width is *assumed*
(:data:`BONE_WINDOW_WIDTH`) and the level put where soft tissue is: the soft-tissue peak is
measured, the width is not, so a bone window of W 1,800 or 2,500 is read 11 % too wide or
20 % too narrow, which re-windowing shows as contrast about soft tissue.

A window is *recoverable* into a target window when fat and soft tissue are both rendered
unsaturated (so HU can be read back over the range the target window shows) and the
source's grey step is fine enough (:data:`MAX_HU_PER_GREY`). A brain window (L40/W80)
saturates fat to black and bone to white: nothing brings them back. Re-windowing keeps a
saturated pixel saturated (black stays black: air; white stays white: bone).

Every constant here is physics (tissue HU) or was chosen on renders of real CT DICOMs whose
window is known (``bench/ct_windows.py``; the bone-window reading's checks on two RSNA
patients, ``bench.ct_windows.DEV_PATIENTS``, and the Kaggle training split; the identity
tolerance also on the Kaggle archive, the bundle's own training images), never on
unlabelled images. What it does and misses is measured in ``docs/ct-windows.md``.
Pure numpy: no model, no TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ml_model.imaging.window import hu_window

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
# Fat and soft tissue each spread about this much either side of their peak (noise,
# partial volume): a window shows a tissue when its peak is this far inside the window.
TISSUE_SPREAD_HU = 20.0
# The coarsest source a slice is brought back from: HU per grey level (W 3,060). Wider
# windows leave too few grey levels across the target window (banding).
MAX_HU_PER_GREY = 12.0
# Widths the landmark pair may imply (a narrower window cannot show both tissues, a wider
# one is not a CT display window).
MIN_WIDTH_HU, MAX_WIDTH_HU = 150.0, 4000.0
# Grey levels this close to 0 or 255 count as saturated (JPEG rings around a flat black or
# white area by a level or two).
SATURATION_MARGIN = 3
# A tissue peak holds at least this share of the body's (unsaturated) pixels.
MIN_PEAK_SHARE = 0.01
# Fat holds at least this share (subcutaneous fat of a neck slice): smaller peaks below soft
# tissue are air-tissue boundaries.
MIN_FAT_SHARE = 0.03
# An estimate below this confidence is not used to re-window anything.
MIN_CONFIDENCE = 0.5
# A window that shows fat and soft tissue leaves the body unsaturated: past this share of
# black and white pixels together the window is narrower than fat..soft tissue.
MAX_SATURATED_SHARE = 0.65
# A bone window (issue 26): fat and soft tissue merge into one peak (7-10 HU per grey), so
# no tissue pair gives the width. Where the histogram is a bone window's (air black, soft
# tissue in the lower greys, bone mostly unsaturated up to cortical bone) the width is
# assumed: the middle of the usual bone windows (W 1,500-2,500); the level then puts the
# soft-tissue peak at SOFT_TISSUE_HU. A wrong width scales HU about soft tissue (x 0.8-1.25
# for W 1,600-2,500), which the target window (380 HU about soft tissue) shows as contrast.
BONE_WINDOW_WIDTH = 2000.0
# A bone window shows cortical bone (about +1,000 HU) unsaturated ...
CORTICAL_BONE_HU = 1000.0
# ... and puts its low end well below fat (its black is air and the lung's partial volume).
BONE_WINDOW_MAX_LOW_HU = -300.0
# Bone is counted from here (above soft tissue and its spread, below cancellous bone).
BONE_TAIL_FROM_HU = 300.0
# Below this HU a body holds only the air-tissue partial volume: in a bone window its greys
# (above black, below fat) are sparse, an order of magnitude below the soft-tissue peak.
PARTIAL_VOLUME_TO_HU = -200.0
MAX_PARTIAL_VOLUME_DENSITY = 0.1
# The width is assumed, not read: the reading is just sure enough to be used.
BONE_WINDOW_CONFIDENCE = 0.6
# "Already in the target window": level within this share of the target's width, width
# within this ratio. Inside it the slice is passed through untouched (identity). The
# archive's sharpened copies read as W 280-300 at the right level: hence 1.5, not less.
SAME_LEVEL_SHARE, SAME_WIDTH_RATIO = 0.15, 1.5


@dataclass(frozen=True)
class WindowEstimate:
    """The window (level, width in HU) a slice was rendered with, how sure, and whether it
    can be brought into the target window; ``reason`` says why not (or what was found), as
    ``"kind: details"`` (kinds: recoverable, too narrow, no landmarks, unclear, fat black,
    soft tissue white, too wide)."""

    level: float | None
    width: float | None
    confidence: float
    recoverable: bool
    reason: str
    fat_grey: float | None = None
    tissue_grey: float | None = None

    @property
    def low(self) -> float | None:
        """The HU rendered as grey 0."""
        return None if self.level is None or self.width is None else self.level - self.width / 2

    @property
    def high(self) -> float | None:
        """The HU rendered as grey 255."""
        return None if self.level is None or self.width is None else self.level + self.width / 2

    def matches(self, level: float, width: float) -> bool:
        """The slice is already in the window (level, width), within the identity tolerance."""
        if self.level is None or self.width is None or self.confidence < MIN_CONFIDENCE:
            return False
        return abs(self.level - level) <= SAME_LEVEL_SHARE * width and abs(
            math.log(self.width / width)
        ) <= math.log(SAME_WIDTH_RATIO)


_SMOOTHING = (3.0, 5.0)  # Gaussian sigmas (grey levels) the peaks are looked for at
# (never finer: integer HU through a narrow window leave a comb of empty grey levels)
# The valley between fat and soft tissue must drop this far below the lower peak.
MIN_VALLEY_DEPTH = 0.15


@dataclass(frozen=True)
class _Peak:
    grey: float  # sub-grey position (centroid around the maximum)
    share: float  # of the unsaturated pixels within the peak's reach
    sigma: float  # the smoothing it was found at


def _smooth(hist: np.ndarray, sigma: float) -> np.ndarray:
    radius = math.ceil(3 * sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return np.convolve(hist, kernel / kernel.sum(), mode="same")


def _peaks(inner: np.ndarray, total: float) -> list[_Peak]:
    """Local maxima of the unsaturated histogram at several smoothings, duplicates merged
    (the finest smoothing that found a peak places it)."""
    lo, hi = SATURATION_MARGIN, 255 - SATURATION_MARGIN
    found: list[_Peak] = []
    for sigma in _SMOOTHING:
        smooth = _smooth(inner, sigma)
        reach = max(2, round(2 * sigma))
        for i in range(lo + 1, hi):
            if not (smooth[i] > smooth[i - 1] and smooth[i] >= smooth[i + 1]):
                continue
            a, b = max(lo + 1, i - reach), min(hi, i + reach + 1)
            share = float(inner[a:b].sum()) / total
            if share < MIN_PEAK_SHARE:
                continue
            centre = float((inner[a:b] * np.arange(a, b)).sum() / max(inner[a:b].sum(), 1.0))
            if any(abs(p.grey - centre) < 2 * p.sigma for p in found):
                continue
            found.append(_Peak(centre, share, sigma))
    return sorted(found, key=lambda p: p.grey)


def _valley_depth(inner: np.ndarray, a: _Peak, b: _Peak) -> float:
    """How clearly two peaks are apart: 1 - (lowest point between them / the lower peak),
    on the histogram smoothed at the coarser of their two scales."""
    smooth = _smooth(inner, max(a.sigma, b.sigma))
    i, j = round(a.grey), round(b.grey)
    if j - i < 2:
        return 0.0
    floor = float(smooth[i : j + 1].min())
    top = float(min(smooth[i], smooth[j]))
    return 0.0 if top <= 0 else max(0.0, 1.0 - floor / top)


def _grey(hu: float, level: float, width: float) -> float:
    return (hu - level + width / 2.0) / width * 255.0


def _air_agrees(hist: np.ndarray, level: float, width: float, total: float) -> bool:
    """Air where the window puts it: a share of black pixels when air is below 0, a share of
    pixels near the predicted grey when air falls inside the window."""
    air = _grey(AIR_HU, level, width)
    if air <= SATURATION_MARGIN + 2:
        return float(hist[: SATURATION_MARGIN + 1].sum()) / hist.sum() >= MIN_PEAK_SHARE
    a, b = max(0, int(air) - 8), min(256, int(air) + 9)
    return float(hist[a:b].sum()) / total >= MIN_PEAK_SHARE


def _recoverable(level: float, width: float) -> tuple[bool, str]:
    low, high = level - width / 2, level + width / 2
    if low > FAT_HU - TISSUE_SPREAD_HU:
        return False, f"fat black: fat (about {FAT_HU:.0f} HU) is black from {low:.0f} HU down"
    if high < SOFT_TISSUE_HU + TISSUE_SPREAD_HU:
        return False, f"soft tissue white: all is white from {high:.0f} HU up"
    if width / 255.0 > MAX_HU_PER_GREY:
        return False, f"too wide: W {width:.0f} leaves too few grey levels"
    return True, "recoverable: fat and soft tissue visible"


def _bone_window(hist: np.ndarray, tissue: _Peak) -> tuple[float, float] | None:
    """The bone-window reading (level, width) when the histogram is one: soft tissue in the
    lower part of the greys, air black, and bone mostly unsaturated (its tail between soft
    tissue and white holds more pixels than white itself); None otherwise. The width is
    :data:`BONE_WINDOW_WIDTH` (assumed, not measured), the level puts soft tissue at its HU."""
    width = BONE_WINDOW_WIDTH
    level = SOFT_TISSUE_HU - (tissue.grey / 255.0 - 0.5) * width
    low, high = level - width / 2.0, level + width / 2.0
    if not (AIR_HU < low <= BONE_WINDOW_MAX_LOW_HU and high >= CORTICAL_BONE_HU):
        return None  # soft tissue too high or too low in the greys for a bone window
    total = float(hist.sum())
    black = float(hist[: SATURATION_MARGIN + 1].sum()) / total
    white = float(hist[255 - SATURATION_MARGIN :].sum()) / total
    tail_from = math.ceil(_grey(BONE_TAIL_FROM_HU, level, width))
    tail = float(hist[tail_from : 255 - SATURATION_MARGIN].sum()) / total
    if black < MIN_PEAK_SHARE or tail < MIN_PEAK_SHARE or white > tail:
        return None  # no black air, no bone, or bone saturated: not a bone window
    # Between black and fat a bone window shows only the air-tissue partial volume: sparse.
    # (Read as a bone window, a soft-tissue window would put its fat here: dense.)
    gap_to = math.floor(_grey(PARTIAL_VOLUME_TO_HU, level, width))
    soft = float(hist[gap_to:tail_from].sum()) / total
    if tail > soft:
        return None  # more "bone" than soft tissue: the peak is not soft tissue
    gap = hist[SATURATION_MARGIN + 1 : gap_to]
    peak = float(_smooth(hist, 2.0)[round(tissue.grey)])
    if gap.size == 0 or float(gap.mean()) > MAX_PARTIAL_VOLUME_DENSITY * peak:
        return None
    return level, width


def estimate_window(gray: np.ndarray) -> WindowEstimate:
    """The window (level, width) an 8-bit slice was most likely rendered with, from its fat
    and soft-tissue peaks, checked against air, or else read as a bone window; see the
    module docstring."""
    gray = np.asarray(gray)
    if gray.dtype != np.uint8 or gray.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 slice, got {gray.dtype} {gray.shape}")
    hist = np.bincount(gray.ravel(), minlength=256).astype(np.float64)
    lo, hi = SATURATION_MARGIN, 255 - SATURATION_MARGIN
    inner = hist.copy()
    inner[: lo + 1] = 0.0
    inner[hi:] = 0.0
    total = float(inner.sum())
    if total < (1.0 - MAX_SATURATED_SHARE) * hist.sum():
        share = 1.0 - total / hist.sum()
        return WindowEstimate(
            None, None, 0.0, False,
            f"too narrow: {share:.0%} of the pixels are black or white",
        )  # fmt: skip
    peaks = _peaks(inner, total)
    best: tuple[float, float, float, _Peak, _Peak] | None = None
    # Soft tissue is the body's largest tissue: the peak holding most pixels; fat lies below.
    tissue = max(peaks, key=lambda p: p.share) if peaks else None
    for fat in peaks:
        if tissue is not None and fat.grey < tissue.grey and fat.share >= MIN_FAT_SHARE:
            width = (SOFT_TISSUE_HU - FAT_HU) * 255.0 / (tissue.grey - fat.grey)
            if not MIN_WIDTH_HU <= width <= MAX_WIDTH_HU:
                continue
            level = FAT_HU - (fat.grey / 255.0 - 0.5) * width
            if not _air_agrees(hist, level, width, total):
                continue
            depth = _valley_depth(inner, fat, tissue)
            if depth < MIN_VALLEY_DEPTH:
                continue
            mass = min(1.0, math.sqrt(fat.share * tissue.share) / 0.05)
            score = min(1.0, depth / 0.5) * mass
            if best is None or score > best[0]:
                best = (score, level, width, fat, tissue)
    paired: WindowEstimate | None = None
    if best is not None:
        score, level, width, fat, tissue = best
        ok, why = _recoverable(level, width)
        if score < MIN_CONFIDENCE:
            ok, why = False, f"unclear: the landmarks are faint (confidence {score:.2f})"
        paired = WindowEstimate(level, width, score, ok, why, fat.grey, tissue.grey)
        if ok:
            return paired
    bone = None if tissue is None else _bone_window(hist, tissue)
    if bone is not None and tissue is not None:
        level, width = bone
        ok, why = _recoverable(level, width)
        if ok:
            why = f"recoverable: a bone window (soft tissue at grey {tissue.grey:.0f}, W assumed)"
        return WindowEstimate(level, width, BONE_WINDOW_CONFIDENCE, ok, why, None, tissue.grey)
    if paired is not None:
        return paired
    reason = (
        "no landmarks: no separate fat and soft-tissue peaks (one is saturated, or the "
        "slice shows too little fat to read the window from), and not a bone window"
    )
    return WindowEstimate(None, None, 0.0, False, reason)


def window_table(
    source: tuple[float, float], target: tuple[float, float], contrast: float = 1.0
) -> np.ndarray:
    """The 256-entry lookup table: greys of the ``source`` window (level, width) -> HU
    (scaled by ``contrast`` about soft tissue when not 1) -> greys of the ``target`` window.
    A saturated grey stays saturated (0: air or below, 255: bone or above)."""
    (source_level, source_width), greys = source, np.arange(256, dtype=np.float64)
    hu = source_level - source_width / 2.0 + greys * source_width / 255.0
    if contrast != 1.0:
        hu = SOFT_TISSUE_HU + (hu - SOFT_TISSUE_HU) * contrast
    table = hu_window(hu, *target)
    table[0], table[255] = 0, 255
    return table


def rewindow(gray: np.ndarray, estimate: WindowEstimate, level: float, width: float) -> np.ndarray:
    """Greys of the estimated window -> HU -> greys of the window (level, width)
    (:func:`window_table`)."""
    if estimate.level is None or estimate.width is None:
        raise ValueError("no window estimated: nothing to re-window from")
    table = window_table((estimate.level, estimate.width), (level, width))
    return table[np.asarray(gray, dtype=np.uint8)]


def bring_to_window(
    gray: np.ndarray, level: float, width: float
) -> tuple[np.ndarray, WindowEstimate]:
    """An 8-bit slice in the window (level, width) when that can be done: untouched when it
    already is (or when no window can be estimated), re-windowed when the estimated window
    is recoverable, untouched otherwise (the estimate says why)."""
    estimate = estimate_window(gray)
    if estimate.matches(level, width) or not estimate.recoverable:
        return gray, estimate
    return rewindow(gray, estimate, level, width), estimate
