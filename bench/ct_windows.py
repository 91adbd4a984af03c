"""CT slices in any window: how well the 8-bit window estimate does where the truth is known.

Real CT DICOMs (the RSNA sample's 34 slices and pydicom-data's CT files in HU) are
rendered to PNG and JPEG (quality 75 and 95) in the usual viewer windows; each render is
decoded as the product decodes an upload and ``imaging/window_estimate.estimate_window`` is
compared with the window it was rendered with. With ``--verdicts`` the default bundle
judges every render and its DICOM, and the unlabelled slices of ``ct-other-window`` (never
used to choose a constant: those come from physics and from these renders); the tables are
printed for all frames and again for the frames held out of the estimate's development
(:data:`DEV_PATIENTS`); with
``--kaggle N`` every N-th slice of the Kaggle archive checks that images already in the
bundle's window pass through untouched; with ``--negatives N`` the product's non-CT
negatives (N seeds) check that those it re-windows are still refused.

    python -m bench.ct_windows [--verdicts] [--kaggle 10] [--negatives 2]
"""

from __future__ import annotations

import argparse
import io
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from ml_model.config import (
    DEFAULT_MODEL_DIR,
    RESULT_NEGATIVE,
    RESULT_OUT_OF_DISTRIBUTION,
    RESULT_OUTSIDE_RANGE,
    RESULT_POSITIVE,
    SHARED_DATA_DIR,
)
from ml_model.imaging.dicom import DicomImage, read_dicom
from ml_model.imaging.formats import decode
from ml_model.imaging.window_estimate import bring_to_window, estimate_window
from ml_model.inference.bundle import Bundle

if TYPE_CHECKING:
    from ml_model.inference.core import InferenceCore

DATA = SHARED_DATA_DIR.parent
RSNA_SAMPLE = DATA / "rsna-cspine-sample" / "train_images"
OTHER_WINDOW = DATA / "ct-other-window"

# name -> (level, width); "kaggle" is the bundle's own window (read from its card).
VIEWER_WINDOWS: dict[str, tuple[float, float]] = {
    "bone L400/W1800": (400.0, 1800.0),
    "bone L500/W2000": (500.0, 2000.0),
    "bone L600/W2500": (600.0, 2500.0),
    "soft L40/W400": (40.0, 400.0),
    "soft L50/W350": (50.0, 350.0),
    "brain L40/W80": (40.0, 80.0),
    "lung L-600/W1500": (-600.0, 1500.0),
}
ENCODINGS = ("png", "jpeg95", "jpeg75")
# The RSNA patients the bone-window reading's constants were checked on while it was built
# (window_estimate: its other constants are physics); the tables are also printed for the
# other frames alone (held out: RSNA 1476, 21326, 5482 and pydicom-data's frames).
DEV_PATIENTS = ("13203", "14267")


@dataclass(frozen=True)
class Render:
    source: str
    window: str
    truth: tuple[float, float]
    encoding: str
    data: bytes


def ct_sources() -> list[tuple[str, bytes, int | None]]:
    """(name, DICOM bytes, frame) of every real CT frame available here."""
    sources: list[tuple[str, bytes, int | None]] = []
    for path in sorted(RSNA_SAMPLE.glob("*/*.dcm")):
        sources.append((f"rsna/{path.parent.name[-5:]}/{path.stem}", path.read_bytes(), None))
    try:
        from pydicom.data import get_testdata_file

        for name, frames in (("CT_small.dcm", (None,)), ("eCT_Supplemental.dcm", (0, 1))):
            found = get_testdata_file(name)
            if found is not None:
                for frame in frames:
                    sources.append(
                        (f"pydicom/{name}/{frame}", Path(str(found)).read_bytes(), frame)
                    )
    except ImportError:
        pass
    return sources


def encode(gray: np.ndarray, encoding: str) -> bytes:
    buffer = io.BytesIO()
    image = Image.fromarray(gray)
    if encoding == "png":
        image.save(buffer, "PNG")
    else:
        image.save(buffer, "JPEG", quality=int(encoding.removeprefix("jpeg")))
    return buffer.getvalue()


def renders(
    windows: dict[str, tuple[float, float]],
) -> tuple[list[Render], dict[str, DicomImage]]:
    """Every CT frame in every window and encoding, and each frame's decoded DICOM. A frame
    whose values are not HU (its header says so: pydicom-data's perfusion map) has no render
    in an HU window: it is named and left out."""
    dicoms: dict[str, DicomImage] = {}
    out: list[Render] = []
    for name, data, frame in ct_sources():
        image = read_dicom(data, frame=frame)
        if not image.is_hu:
            print(f"left out: {name}: {'; '.join(image.notes) or 'values not in HU'}")
            continue
        dicoms[name] = image
        for window, (level, width) in windows.items():
            gray = image.window(level, width)
            for encoding in ENCODINGS:
                out.append(Render(name, window, (level, width), encoding, encode(gray, encoding)))
    return out, dicoms


def _why(reason: str) -> str:
    """The kind of a reason (``WindowEstimate.reason`` is ``"kind: details"``)."""
    return reason.split(":")[0]


def _pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.0f}" if values else "-"


def _negatives(bundle_dir: Path, seeds: int) -> None:
    """The product's synthetic and other-modality negatives (``data/negatives.generate``):
    how many the window estimate re-windows, and whether the CT gate still refuses those."""
    from ml_model.data.negatives import generate
    from ml_model.inference.core import InferenceCore

    core = InferenceCore(bundle_dir)
    total, changed, refused = 0, Counter[str](), Counter[str]()
    answers: Counter[str] = Counter()
    for seed in range(seeds):
        for negative in generate(per_kind=60, seed=seed):
            total += 1
            out, _ = bring_to_window(negative.gray, *core.bundle.window)
            answers[core.classify(core.model_input(out))[0].result] += 1
            if out is negative.gray:
                continue
            changed[negative.kind] += 1
            verdict = core.classify(core.model_input(out))[0]
            refused[negative.kind] += verdict.result == RESULT_OUT_OF_DISTRIBUTION
    print(
        f"negatives: {total} images, {sum(changed.values())} re-windowed, of which "
        f"{sum(refused.values())} still 'Not a CT slice'; per kind {dict(changed)}; "
        f"answers to all {total}: {dict(answers)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--verdicts", action="store_true", help="judge renders with the bundle")
    parser.add_argument("--kaggle", type=int, default=0, help="check every N-th Kaggle slice")
    parser.add_argument(
        "--negatives", type=int, default=0, help="re-windowed non-CT images over N seeds"
    )
    parser.add_argument("--bundle", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    bundle = Bundle.load(args.bundle)
    windows = {**VIEWER_WINDOWS, "bundle L{:.0f}/W{:.0f}".format(*bundle.window): bundle.window}
    items, dicoms = renders(windows)
    core = None
    if args.verdicts:
        from ml_model.inference.core import InferenceCore

        core = InferenceCore(args.bundle)
        # The DICOM path: HU through the bundle's window (what core.decode does for DICOM).
        truth_verdict = {
            name: core.classify(core.model_input(image.window(*bundle.window)))[0].result
            for name, image in dicoms.items()
        }
    every: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    held_out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        # The same lists fill both tables (appended once per row they belong to).
        row = _Row(every[item.window], held_out[item.window], _is_held_out(item.source))
        gray = decode(item.data, None)
        assert isinstance(gray, np.ndarray)
        estimate = estimate_window(gray)
        row["n"].append(1)
        if estimate.level is not None and estimate.width is not None:
            row["dl"].append(abs(estimate.level - item.truth[0]))
            row["dw"].append(abs(estimate.width / item.truth[1] - 1.0) * 100)
        row["rec"].append(estimate.recoverable)
        if not estimate.recoverable:
            row["why"].append(_why(estimate.reason))
        if core is not None:
            verdict = core.verdict(item.data).result
            row["ood"].append(verdict == RESULT_OUT_OF_DISTRIBUTION)
            row["outside"].append(verdict == RESULT_OUTSIDE_RANGE)
            same = verdict == truth_verdict[item.source]
            row["agree_all"].append(same)
            if estimate.recoverable:
                row["agree"].append(same)
            if verdict in (RESULT_POSITIVE, RESULT_NEGATIVE):  # answered fracture / normal
                row["answered_agree"].append(same)
    print(f"{len(dicoms)} CT frames x {len(windows)} windows x {len(ENCODINGS)} encodings")
    _tables(every, core is not None)
    print(f"\nHeld out (not {', '.join(DEV_PATIENTS)}): the same tables")
    _tables(held_out, core is not None)
    if core is not None:
        _other_window(core, truth_verdict)
    if args.negatives:
        _negatives(args.bundle, args.negatives)
    if args.kaggle:
        _kaggle(args.kaggle, bundle.window)


class _Row:
    """Appends to the row of every frame and, for a held-out frame, to its own row."""

    def __init__(self, every: dict[str, list], held: dict[str, list], held_out: bool) -> None:
        self.rows = (every, held) if held_out else (every,)

    def __getitem__(self, key: str) -> _Appender:
        return _Appender([row[key] for row in self.rows])


@dataclass(frozen=True)
class _Appender:
    lists: list[list]

    def append(self, value: object) -> None:
        for values in self.lists:
            values.append(value)


def _is_held_out(source: str) -> bool:
    return not any(f"/{patient}/" in source or f".{patient}/" in source for patient in DEV_PATIENTS)


def _tables(rows: dict[str, dict[str, list]], verdicts: bool) -> None:
    print(
        "| window | renders | estimated | level error HU (median / p90) | width error % "
        "(median / p90) | recoverable | Not a CT slice | verdict = DICOM's: recoverable "
        "| verdict = DICOM's: all |"
    )
    print("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |")
    for window, row in rows.items():
        n = len(row["n"])
        ood = f"{sum(row['ood'])}/{n}" if verdicts else "-"
        agree = f"{sum(row['agree'])}/{len(row['agree'])}" if verdicts and row["agree"] else "-"
        agree_all = f"{sum(row['agree_all'])}/{n}" if verdicts else "-"
        print(
            f"| {window} | {n} | {len(row['dl'])} | {_pct(row['dl'], 50)} / {_pct(row['dl'], 90)}"
            f" | {_pct(row['dw'], 50)} / {_pct(row['dw'], 90)} | {sum(row['rec'])}/{n} | {ood}"
            f" | {agree} | {agree_all} |"
        )
    if verdicts:
        print("\nThree answers per window (Not a CT slice / CT outside the model's range / "
              "fracture or normal, and of those the DICOM's verdict):")  # fmt: skip
        print("| window | renders | Not a CT slice | CT outside the model's range | answered "
              "| answered = DICOM's |")  # fmt: skip
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for window, row in rows.items():
            n, answered = len(row["n"]), row["answered_agree"]
            print(f"| {window} | {n} | {sum(row['ood'])} | {sum(row['outside'])} | "
                  f"{len(answered)} | {sum(answered)}/{len(answered)} |")  # fmt: skip
    print("\nWhy not recoverable (renders per reason):")
    for window, row in rows.items():
        print(f"- {window}: " + "; ".join(f"{k} ({v})" for k, v in Counter(row["why"]).items()))


def _other_window(core: InferenceCore, truth_verdict: dict[str, str]) -> None:
    """The unlabelled slices of ``ct-other-window`` (never used to choose anything)."""
    print("DICOM-path verdicts:", dict(Counter(truth_verdict.values())))
    verdicts: dict[str, Counter[str]] = defaultdict(Counter)
    reasons: dict[str, Counter[str]] = defaultdict(Counter)
    for path in sorted(OTHER_WINDOW.glob("*.png")):
        gray = decode(path.read_bytes(), None)
        assert isinstance(gray, np.ndarray)
        number = int(path.stem.split("(")[-1].rstrip(")"))
        part = "neck (100-134)" if number >= 100 else "thorax (1, 10-15)"
        reasons[part][_why(estimate_window(gray).reason)] += 1
        judged = core.verdict(path.read_bytes())
        verdicts[part][f"{judged.result} ({judged.outside_reason})"] += 1
    for part in sorted(verdicts):
        print(
            f"ct-other-window {part}: {sum(verdicts[part].values())} slices, verdicts "
            f"{dict(verdicts[part])}, estimates {dict(reasons[part])}"
        )


def _kaggle(step: int, window: tuple[float, float]) -> None:
    """Every ``step``-th slice of the Kaggle archive: how many the decode path changes."""
    files = sorted(SHARED_DATA_DIR.rglob("*.png"))[::step]
    changed, worst = 0, 0
    for path in files:
        gray = decode(path.read_bytes(), None)
        assert isinstance(gray, np.ndarray)
        out, _ = bring_to_window(gray, *window)
        diff = int(np.abs(out.astype(int) - gray.astype(int)).max())
        changed += diff > 1
        worst = max(worst, diff)
    print(
        f"Kaggle archive: {len(files)} slices, {changed} changed by more than 1 grey "
        f"level (largest change {worst})"
    )


if __name__ == "__main__":
    main()
