"""The worklist's export for retraining with ``--pacs-url``: a reviewed series fetched from a
real Orthanc by WADO-RS into the RSNA 2022 layout, numbered head to foot, and read back by
the project's RSNA reader (``ml_model.data.rsna``). Skipped, saying why, without Orthanc."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from backend.app.worklist.__main__ import main
from backend.app.worklist.store import WorklistStore
from ml_model.data.rsna import CacheReport, find_studies, read_labels, read_study
from pacs.orthanc import start_orthanc
from testing.dicom_writers import ct_dicom_bytes
from tests.backend.worklist.test_export import T0, rows
from tests.backend.worklist.test_export import read_study as reviewed

STUDY, SERIES = "1.2.826.0.1.3680043.10.1", "1.2.826.0.1.3680043.10.1.2"
# Stored in an order that is neither head to foot nor by instance number.
POSITIONS_MM = [-12.0, 0.0, -36.0, -24.0, 12.0, -48.0]


def series() -> list[Dataset]:
    datasets: list[Dataset] = []
    for instance, z in enumerate(POSITIONS_MM, start=1):
        stored = np.full((32, 32), 1000 + int(z) + 100, dtype=np.uint16)
        data = ct_dicom_bytes(stored, z=z, instance=instance, series_uid=SERIES)
        dataset = pydicom.dcmread(io.BytesIO(data))
        dataset.StudyInstanceUID = STUDY
        dataset.PatientID = "EXPORT-TEST"
        datasets.append(dataset)
    return datasets


@pytest.mark.usefixtures("orthanc_installed")
def test_export_fetches_the_series_from_the_pacs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'worklist.sqlite3'}"
    store = WorklistStore(url)
    store.migrate()
    reviewed(store, STUDY, SERIES, (True, ["C2"], T0 + timedelta(hours=1)))
    reviewed(store, "1.2.826.0.1.3680043.10.9", "1.2.826.0.1.3680043.10.9.2", (False, [], T0))
    store.close()
    monkeypatch.setenv("DATABASE_URL", url)
    pacs = start_orthanc(tmp_path / "orthanc")
    try:
        DICOMwebClient(pacs.dicomweb_url).store_instances(series())
        out = tmp_path / "export"
        # The second study is not in the PACS: named in the manifest, the command ends 1.
        assert main(["export", str(out), "--pacs-url", pacs.dicomweb_url]) == 1
    finally:
        pacs.stop()

    manifest = {row["StudyInstanceUID"]: row for row in rows(out / "manifest.csv")}
    assert manifest[STUDY]["images"] == "6" and manifest[STUDY]["error"] == ""
    missing = manifest["1.2.826.0.1.3680043.10.9"]
    assert missing["images"] == "" and "404" in missing["error"]
    folder = out / "train_images" / STUDY
    assert sorted(p.name for p in folder.iterdir()) == [f"{n}.dcm" for n in range(1, 7)]
    written = [pydicom.dcmread(folder / f"{n}.dcm") for n in range(1, 7)]
    assert [float(ds.ImagePositionPatient[2]) for ds in written] == sorted(
        POSITIONS_MM, reverse=True
    )
    assert all(ds.SeriesInstanceUID == SERIES for ds in written)

    # The project's RSNA reader: the study, its labels, its slices head to foot as numbered.
    assert find_studies(out) == [STUDY]
    labels = read_labels(out)
    report = CacheReport()
    cached = read_study(out, STUDY, labels[STUDY], 32, (40.0, 400.0), report)
    assert cached is not None and report.read_errors == []
    assert cached.slice_numbers.tolist() == [1, 2, 3, 4, 5, 6]
    assert cached.positions_mm.tolist() == sorted(POSITIONS_MM, reverse=True)  # head to foot
    assert cached.study_labels.tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
