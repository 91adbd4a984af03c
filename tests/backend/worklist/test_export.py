"""``python -m backend.app.worklist export``: the reviewed studies' latest reads as an RSNA
2022 train.csv (read back by the project's RSNA reader) and its manifest, through the real
store on SQLite and PostgreSQL. The DICOM fetch from a real PACS is tests/pacs/
test_worklist_export.py."""

from __future__ import annotations

import csv
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backend.app.worklist.__main__ import main
from backend.app.worklist.store import NewReview, NewStudy, WorklistStore
from ml_model.data.rsna import read_labels

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
FRACTURE, NORMAL = "Potentially Fracture", "Normal"


def read_study(
    store: WorklistStore,
    study_uid: str | None,
    series_uid: str | None,
    *reads: tuple[bool, list[str], datetime],
    verdict: str = FRACTURE,
) -> int:
    """An analysed series in the worklist with ``reads`` (fracture, levels, when) in order;
    its entry id."""
    entry, _ = store.record(
        NewStudy(
            source="pacs" if study_uid else "upload",
            study_uid=study_uid,
            series_uid=series_uid,
            arrived_at=T0 - timedelta(hours=1),
            analysed_at=T0 - timedelta(hours=1),
            verdict=verdict,
            score=0.9 if verdict == FRACTURE else 0.1,
            threshold=0.5,
            operating_point="sensitive",
            top_slices=[],
            model_name="cspine",
            model_version="2026.12.1",
        )
    )
    for fracture, levels, when in reads:
        read = NewReview(fracture, levels, reader="ab12cd34", reviewed_at=when)
        assert store.review(entry.id, read) is not None
    return entry.id


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_the_latest_reads_as_rsna_labels(
    store: WorklistStore, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hour = timedelta(hours=1)
    read_study(store, "1.1", "1.1.1", (True, ["C2", "C3"], T0 + hour))
    read_study(store, "1.2", "1.2.1", (True, ["C1"], T0 + hour), (False, [], T0 + 2 * hour))
    read_study(store, "1.3", "1.3.1", (True, [], T0 + hour))  # a fracture, levels not given
    read_study(store, "1.4", "1.4.1", (False, [], T0 + 3 * hour), verdict=NORMAL)
    read_study(store, "1.4", "1.4.2", (True, ["C5"], T0 + 2 * hour))  # read before 1.4.1
    read_study(store, None, None, (True, ["C2"], T0 + hour))  # a PNG upload: no UID
    read_study(store, "1.6", "1.6.1", (True, ["C7"], T0 - timedelta(days=2)))  # before --since
    read_study(store, "1.7", "1.7.1")  # never reviewed
    monkeypatch.setenv("DATABASE_URL", database_url)
    out = tmp_path / "export"

    assert main(["export", str(out), "--since", "2026-12-01"]) == 0

    train = rows(out / "train.csv")
    assert list(train[0]) == [
        "StudyInstanceUID",
        "patient_overall",
        *[f"C{i}" for i in range(1, 8)],
    ]
    assert [list(row.values()) for row in train] == [
        ["1.1", "1", "0", "1", "1", "0", "0", "0", "0"],
        ["1.2", "0", "0", "0", "0", "0", "0", "0", "0"],  # the latest read counts
        ["1.3", "1", "0", "0", "0", "0", "0", "0", "0"],
        ["1.4", "0", "0", "0", "0", "0", "0", "0", "0"],  # series 1.4.1, read last
    ]
    manifest = {row["StudyInstanceUID"]: row for row in rows(out / "manifest.csv")}
    assert manifest["1.4"]["SeriesInstanceUID"] == "1.4.1"
    assert manifest["1.3"]["levels_given"] == "0" and manifest["1.1"]["levels"] == "C2 C3"
    assert (
        manifest["1.1"]["reader"] == "ab12cd34" and manifest["1.1"]["model"] == "cspine 2026.12.1"
    )
    assert manifest["1.1"]["verdict"] == FRACTURE and float(manifest["1.1"]["score"]) == 0.9
    assert datetime.fromisoformat(manifest["1.2"]["reviewed_at"]) == T0 + 2 * hour
    assert manifest["1.1"]["images"] == ""  # no --pacs-url: labels only
    assert not (out / "train_images").exists()

    # The project's RSNA reader takes the file as it is.
    labels = read_labels(out)
    assert sorted(labels) == ["1.1", "1.2", "1.3", "1.4"]
    assert labels["1.1"].targets.tolist() == [1, 0, 1, 1, 0, 0, 0, 0]
    assert labels["1.1"].positive and not labels["1.4"].positive

    # Without --since: every reviewed study with a UID.
    assert main(["export", str(tmp_path / "all")]) == 0
    assert [row["StudyInstanceUID"] for row in rows(tmp_path / "all" / "train.csv")] == [
        "1.1", "1.2", "1.3", "1.4", "1.6",
    ]  # fmt: skip
