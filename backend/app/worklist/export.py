"""Reviewed studies as a labelled set in the RSNA 2022 layout, so a site's own reads can
train its next model (``python -m backend.app.worklist export OUT``)::

    OUT/train.csv                               StudyInstanceUID, patient_overall, C1..C7
    OUT/manifest.csv                            what each row came from (see MANIFEST_COLUMNS)
    OUT/train_images/<StudyInstanceUID>/<n>.dcm with --pacs-url: the series, head to foot

The labels are each study's latest read: fracture → patient_overall 1 and the read's levels 1
(a fracture read without levels leaves C1..C7 at 0: ``levels_given`` in the manifest says
so); no fracture → all 0. One row per study: when several series of a study were reviewed,
the one read last counts. Entries without a StudyInstanceUID (PNG uploads) cannot be placed
in the layout and are left out (counted). The worklist keeps no images, so the DICOMs come
from the PACS by WADO-RS (``GET {url}/studies/{study}/series/{series}``, Explicit VR Little
Endian asked for), numbered 1..N head to foot by ImagePositionPatient — the product's own
ordering (``ml_model.inference.study.arrange_slices``), which ``ml_model.data.rsna`` applies
again when it reads them. This is a small DICOMweb fetch of its own: the PACS worker's client
(``pacs/clients.py``) lives in the worker's image, not the API's.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.message import Message
from pathlib import Path

import httpx

from backend.app.worklist.models import Review, WorklistStudy
from backend.app.worklist.store import WorklistStore
from ml_model.card import VERTEBRAE
from ml_model.inference.study import SliceFile, StudyError, order_slices

TRAIN_COLUMNS = ("StudyInstanceUID", "patient_overall", *VERTEBRAE)
MANIFEST_COLUMNS = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "worklist_id",
    "reader",
    "reviewed_at",
    "fracture",
    "levels",
    "levels_given",
    "model",
    "verdict",
    "score",
    "threshold",
    "operating_point",
    "arrived_at",
    "images",
    "error",
)
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'


@dataclass
class ExportReport:
    studies: int = 0
    without_uid: int = 0  # entries with no StudyInstanceUID (uploads of PNG slices)
    superseded: int = 0  # other reviewed series of a study whose later-read series counts
    images: int = 0
    failed: list[str] = field(default_factory=list)  # "study: why" of series not fetched

    def summary(self) -> str:
        text = f"{self.studies} studies"
        if self.images:
            text += f", {self.images} images"
        if self.without_uid:
            text += f"; {self.without_uid} left out without a StudyInstanceUID"
        if self.superseded:
            text += f"; {self.superseded} other series of the same studies left out"
        if self.failed:
            text += f"; {len(self.failed)} series not fetched: " + "; ".join(self.failed)
        return text


def labels_of(read: Review) -> dict[str, int]:
    """A read as RSNA's labels: patient_overall and C1..C7."""
    fracture = bool(read.fracture)
    levels = set(read.levels or []) if fracture else set()
    return {"patient_overall": int(fracture)} | {c: int(c in levels) for c in VERTEBRAE}


def chosen_reads(
    rows: Sequence[tuple[WorklistStudy, Review]], report: ExportReport
) -> list[tuple[WorklistStudy, Review]]:
    """One (entry, latest read) per StudyInstanceUID: the series read last."""
    chosen: dict[str, tuple[WorklistStudy, Review]] = {}
    for study, read in rows:
        if not study.study_uid:
            report.without_uid += 1
            continue
        kept = chosen.get(study.study_uid)
        if kept is not None:
            report.superseded += 1
            if (kept[1].reviewed_at, kept[1].id) > (read.reviewed_at, read.id):
                continue
        chosen[study.study_uid] = (study, read)
    return [chosen[uid] for uid in sorted(chosen)]


def wado_parts(response: httpx.Response) -> list[bytes]:
    """The DICOM files of a WADO-RS ``multipart/related`` answer."""
    header = Message()
    header["Content-Type"] = response.headers.get("content-type", "")
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str):
        raise ValueError(f"not a multipart answer: {header['Content-Type']!r}")
    files = []
    for part in response.content.split(b"--" + boundary.encode())[1:]:
        if part.startswith(b"--"):
            break  # the closing delimiter
        _headers, _, data = part.partition(b"\r\n\r\n")
        files.append(data.removesuffix(b"\r\n"))
    return files


def fetch_series(
    client: httpx.Client, pacs_url: str, study_uid: str, series_uid: str
) -> list[bytes]:
    url = f"{pacs_url.rstrip('/')}/studies/{study_uid}/series/{series_uid}"
    response = client.get(url, headers={"Accept": WADO_ACCEPT})
    response.raise_for_status()
    return wado_parts(response)


def write_series(folder: Path, files: list[bytes]) -> int:
    """``files`` as ``1.dcm``..``N.dcm``, head to foot; the count written."""
    items = [SliceFile(f"{index}.dcm", data) for index, data in enumerate(files)]
    names: list[str] = []
    for item in order_slices(items):  # a multi-frame file appears once per frame
        if item.name not in names:
            names.append(item.name)
    by_name = {item.name: item.data for item in items}
    folder.mkdir(parents=True, exist_ok=True)
    for number, name in enumerate(names, start=1):
        (folder / f"{number}.dcm").write_bytes(by_name[name])
    return len(names)


def export_reviewed(
    store: WorklistStore,
    out: Path,
    since: datetime | None = None,
    pacs_url: str | None = None,
    timeout_s: float = 120.0,
) -> ExportReport:
    """Write ``out`` (see the module's docstring); ``since``: only studies whose latest read
    is at or after it. A series the PACS does not give is named in the report (its labels
    are still written) and the command ends non-zero."""
    report = ExportReport()
    reads = chosen_reads(store.latest_reads(read_since=since), report)
    out.mkdir(parents=True, exist_ok=True)
    client = httpx.Client(timeout=timeout_s) if pacs_url else None
    try:
        with (
            (out / "train.csv").open("w", newline="") as train_file,
            (out / "manifest.csv").open("w", newline="") as manifest_file,
        ):
            train = csv.DictWriter(train_file, TRAIN_COLUMNS)
            manifest = csv.DictWriter(manifest_file, MANIFEST_COLUMNS)
            train.writeheader()
            manifest.writeheader()
            for study, read in reads:
                uid = str(study.study_uid)
                train.writerow({"StudyInstanceUID": uid, **labels_of(read)})
                images, error = "", ""
                if client is not None and pacs_url is not None:
                    try:
                        files = fetch_series(client, pacs_url, uid, str(study.series_uid))
                        count = write_series(out / "train_images" / uid, files)
                        images, report.images = str(count), report.images + count
                    except (httpx.HTTPError, ValueError, StudyError) as exc:
                        error = f"{type(exc).__name__}: {exc}"
                        report.failed.append(f"{uid}: {error}")
                manifest.writerow(
                    {
                        "StudyInstanceUID": uid,
                        "SeriesInstanceUID": study.series_uid or "",
                        "worklist_id": study.id,
                        "reader": read.reader or "",
                        "reviewed_at": read.reviewed_at.isoformat(),
                        "fracture": int(read.fracture),
                        "levels": " ".join(read.levels or []),
                        "levels_given": int(bool(read.levels)),
                        "model": f"{study.model_name} {study.model_version}",
                        "verdict": study.verdict,
                        "score": study.score,
                        "threshold": study.threshold,
                        "operating_point": study.operating_point,
                        "arrived_at": study.arrived_at.isoformat(),
                        "images": images,
                        "error": error,
                    }
                )
                report.studies += 1
    finally:
        if client is not None:
            client.close()
    return report
