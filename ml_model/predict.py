"""Predict fracture / normal for image files or folders (searched recursively).

python -m ml_model.predict scans/ slice.png [--model DIR] [--csv OUT.csv]
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ml_model.config import DEFAULT_MODEL_DIR, IMAGE_EXTENSIONS
from ml_model.predictor import DEFAULT_OPERATING_POINT, OPERATING_POINTS, Predictor
from ml_model.study import DEFAULT_TOP_K, SliceFile, StudyError, predict_study, threshold_for
from ml_model.transforms import ImageDecodeError, load_image
from ml_model.verdict import triage_result

BATCH_SIZE = 32


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for image/DICOM files, sorted."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                )
            )
        else:
            found.append(path)
    return found


def _batches(items: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_files(
    predictor: Predictor,
    files: list[Path],
    operating_point: str = DEFAULT_OPERATING_POINT,
    progress: bool = True,
) -> tuple[list[dict[str, object]], list[tuple[Path, str]]]:
    """One row per readable file (file, result, probability); unreadable files listed apart."""
    threshold = predictor.threshold(operating_point)
    rows: list[dict[str, object]] = []
    errors: list[tuple[Path, str]] = []
    with tqdm(total=len(files), unit="img", disable=not progress, file=sys.stderr) as bar:
        for batch in _batches(files, BATCH_SIZE):
            readable, arrays = [], []
            for path in batch:
                try:
                    arrays.append(load_image(path, predictor.img_size))
                    readable.append(path)
                except (ImageDecodeError, OSError) as exc:
                    errors.append((path, str(exc)))
            if arrays:
                prediction = predictor.run(np.stack(arrays))
                for path, p, inside in zip(
                    readable, prediction.probabilities, prediction.in_distribution, strict=True
                ):
                    rows.append(
                        {
                            "file": str(path),
                            "result": triage_result(float(p), threshold, bool(inside)),
                            "probability": round(float(p), 6),
                            "ct_gate": "accepted" if inside else "refused",
                        }
                    )
            bar.update(len(batch))
    return rows, errors


def run_study(
    predictor: Predictor, folder: Path, operating_point: str, csv_path: str | None
) -> int:
    """Score one series folder slice by slice and print the study verdict."""
    files = expand_paths([folder])
    if not files:
        raise SystemExit(f"no image or DICOM files in {folder}")
    items = [SliceFile(path.name, path.read_bytes()) for path in files]
    try:
        study = predict_study(predictor, items, progress=True)
    except StudyError as exc:
        raise SystemExit(f"cannot process the study: {exc}") from exc
    top_k = int(predictor.card.get("study", {}).get("top_k", DEFAULT_TOP_K))
    threshold = threshold_for(
        len(study.names),
        top_k,
        predictor.threshold(operating_point),
        predictor.study_threshold(operating_point),
    )
    verdict = triage_result(study.study_probability, threshold, bool(study.in_distribution.any()))
    rows = [
        {
            "file": name,
            "position": position,
            "probability": round(float(p), 6),
            "in_distribution": bool(inside),
        }
        for name, position, p, inside in zip(
            study.names, study.positions, study.probabilities, study.in_distribution, strict=True
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
            print(f"{row['position']:>9.2f}  {row['probability']:.4f}  {row['file']}{flag}")
    for name, message in study.errors:
        print(f"skipped {name}: {message}", file=sys.stderr)
    top = ", ".join(study.names[i] for i in study.top_indices)
    print(
        f"study: {verdict} (score {study.study_probability:.4f}, threshold {threshold:.4f}, "
        f"{len(rows)} slices; most suspicious: {top})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="image/DICOM files or folders")
    parser.add_argument("--study", help="a folder holding one CT series: one answer for all")
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR), help="bundle folder")
    parser.add_argument("--csv", help="write the rows to this CSV file")
    parser.add_argument(
        "--operating-point", default=DEFAULT_OPERATING_POINT, choices=OPERATING_POINTS
    )
    args = parser.parse_args(argv)
    if args.study:
        return run_study(Predictor(args.model), Path(args.study), args.operating_point, args.csv)
    files = expand_paths(args.paths)
    if not files:
        parser.error("no image files found")
    predictor = Predictor(args.model)
    rows, errors = predict_files(predictor, files, args.operating_point)
    for path, message in errors:
        print(f"skipped {path}: {message}", file=sys.stderr)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["file", "result", "probability", "ct_gate"])
            writer.writeheader()
            writer.writerows(rows)
    else:
        for row in rows:
            print(f"{row['file']}\t{row['result']}\t{row['probability']:.4f}")
    print(
        f"{len(rows)} predicted, {len(errors)} skipped "
        f"(threshold {predictor.threshold(args.operating_point):.4f}, "
        f"{args.operating_point})",
        file=sys.stderr,
    )
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
