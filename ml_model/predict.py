"""Predict fracture / normal for image files or folders (searched recursively).

python -m ml_model.predict scans/ slice.png [--model DIR] [--runtime onnx] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from ml_model.card import CardError
from ml_model.config import DEFAULT_MODEL_DIR
from ml_model.imaging.formats import EXTENSIONS
from ml_model.inference.core import DEFAULT_OPERATING_POINT, OPERATING_POINTS, InferenceCore
from ml_model.inference.gate import GateFileError
from ml_model.inference.runtimes import add_runtime_argument
from ml_model.inference.study import SliceFile, StudyError
from ml_model.inference.verdict import OUTSIDE_REASONS

BATCH_SIZE = 32


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image/DICOM files, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in EXTENSIONS)
            )
        else:
            found.append(path)
    return found


# The columns of ``predict``'s rows (and its CSV).
PREDICT_COLUMNS = ("file", "result", "probability", "ct_gate", "outside_reason")


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    core: InferenceCore,
    files: list[Path],
    operating_point: str = DEFAULT_OPERATING_POINT,
    progress: bool = True,
) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """One row per readable file (file, result, probability, CT gate); unreadable files
    listed apart. Files are decoded and judged by the inference core, in batches."""
    rows: list[dict[str, object]] = []
    errors: list[tuple[Path, str]] = []
    with tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in _batches(files, BATCH_SIZE):
            judged = core.judge_files([path.read_bytes for path in batch], operating_point)
            errors.extend((batch[i], f"{batch[i]}: {exc}") for i, exc in judged.errors)
            for index, verdict in zip(judged.indices, judged.verdicts, strict=True):
                rows.append(
                    {
                        "file": str(batch[index]),
                        "result": verdict.result,
                        "probability": round(verdict.probability, 6),
                        "ct_gate": "accepted" if verdict.in_distribution else "refused",
                        # "CT outside the model's range": why (verdict.OUTSIDE_REASONS)
                        "outside_reason": verdict.outside_reason or "",
                    }
                )
            bar.update(len(batch))
    return rows, errors


def run_study(core: InferenceCore, folder: Path, operating_point: str, csv_path: str | None) -> int:
    """Score one series folder slice by slice and print the study verdict."""
    files = expand_paths([folder])
    if not files:
        raise SystemExit(f"no image or DICOM files in {folder}")
    items = [SliceFile(path.name, path.read_bytes()) for path in files]
    try:
        study = core.study(items, operating_point, progress=True)
    except StudyError as exc:
        raise SystemExit(f"cannot process the study: {exc}") from exc
    rows = [
        {
            "file": name,
            "position": position,
            "probability": round(float(p), 6),
            "in_distribution": bool(inside),
            "outside_reason": why,
        }
        for name, position, p, inside, why in zip(
            study.names,
            study.positions,
            study.probabilities,
            study.in_distribution,
            study.outside_reasons or [""] * len(study.names),
            strict=True,
        )
    ]
    if csv_path:
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        for row in rows:
            flag = "" if row["in_distribution"] else "  (not a CT slice)"
            if row["outside_reason"]:
                flag = f"  (CT outside the model's range: {row['outside_reason']})"
            print(f"{row['position']:>9.2f}  {row['probability']:.4f}  {row['file']}{flag}")
    for name, message in study.errors:
        print(f"skipped {name}: {message}", file=sys.stderr)
    for warning in study.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if study.vertebrae is not None:  # a study bundle's head: P(fracture) per vertebra
        print("vertebrae: " + "  ".join(f"{name} {p:.3f}" for name, p in study.vertebrae.items()))
    outside = sum(1 for row in rows if row["outside_reason"])
    if outside:  # left out like refused slices, counted with their own reason
        print(f"{outside} slice(s) are CT outside the model's range, left out of the score")
    if study.outside_reason:
        print(f"why: {OUTSIDE_REASONS[study.outside_reason]}")
    top = ", ".join(study.names[i] for i in study.top_indices)
    print(
        f"study: {study.result} (score {study.probability:.4f}, threshold {study.threshold:.4f}, "
        f"{len(rows)} slices; most suspicious: {top})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="image/DICOM files or folders")
    parser.add_argument("--study", help="a folder holding one CT series: one answer for all")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="bundle folder")
    add_runtime_argument(parser)
    parser.add_argument("--csv", help="write the rows to this CSV file")
    parser.add_argument(
        "--operating-point", default=DEFAULT_OPERATING_POINT, choices=OPERATING_POINTS
    )
    args = parser.parse_args(argv)
    files = [] if args.study else expand_paths(args.paths)
    if not args.study and not files:
        parser.error("no image files found")
    try:
        core = InferenceCore.on_runtime(args.model, args.runtime)
    except (CardError, GateFileError, OSError) as exc:
        parser.exit(2, f"cannot load the model bundle: {exc}\n")
    if args.study:
        return run_study(core, Path(args.study), args.operating_point, args.csv)
    rows, errors = predict_files(core, files, args.operating_point)
    for path, message in errors:
        print(f"skipped {path}: {message}", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(PREDICT_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
    else:
        for row in rows:
            why = f"\t{row['outside_reason']}" if row["outside_reason"] else ""
            print(f"{row['file']}\t{row['result']}\t{row['probability']:.4f}{why}")
        for reason in sorted({str(row["outside_reason"]) for row in rows} - {""}):
            print(f"CT outside the model's range ({reason}): {OUTSIDE_REASONS[reason]}")
    print(
        f"{len(rows)} predicted, {len(errors)} skipped "
        f"(threshold {core.threshold(args.operating_point):.4f}, "
        f"{args.operating_point})",
        file=sys.stderr,
    )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
