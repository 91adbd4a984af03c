"""The worklist's store on SQLite and on a real PostgreSQL server (every test runs on both):
the schema Alembic builds, the order, the filters, opening, reads kept as history, and
concurrent writers."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.app.worklist.models import Base
from backend.app.worklist.store import Filters, NewReview, NewStudy, WorklistStore

T0 = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)  # a Monday: ISO week 2026-W49
FRACTURE, NORMAL, NOT_CT = "Potentially Fracture", "Normal", "Not a CT slice"


def entry(n: int, verdict: str = NORMAL, hours: float = 0.0, **changes: Any) -> NewStudy:
    arrived = T0 + timedelta(hours=hours)
    values: dict[str, Any] = {
        "source": "pacs",
        "study_uid": f"1.2.826.0.1.{n}",
        "series_uid": f"1.2.826.0.1.{n}.1",
        "arrived_at": arrived,
        "analysed_at": arrived + timedelta(seconds=20),
        "verdict": verdict,
        "score": 0.9 if verdict == FRACTURE else 0.1,
        "threshold": 0.5,
        "operating_point": "sensitive",
        "top_slices": [{"index": 3, "name": "IM3.dcm", "position": -9.0, "prediction": 0.9}],
        "model_name": "cspine",
        "model_version": "2026.12.1",
        "manufacturer": "GE MEDICAL SYSTEMS",
        "manufacturer_model": "Revolution",
    }
    values.update(changes)
    return NewStudy(**values)


def test_alembic_head_is_the_models_schema(store: WorklistStore) -> None:
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        tables = set(inspect(connection).get_table_names())
    assert {"worklist_studies", "worklist_reviews", "alembic_version"} <= tables


def test_migrating_again_changes_nothing(store: WorklistStore) -> None:
    row, _ = store.record(entry(1))
    store.migrate()
    assert store.get(row.id) is not None


def test_a_study_is_recorded_with_every_field(store: WorklistStore) -> None:
    sent = entry(1, FRACTURE, identifiers={"accession_number": "A1"})
    row, created = store.record(sent)
    assert created
    got = store.get(row.id)
    assert got is not None
    assert (got.study_uid, got.series_uid) == (sent.study_uid, sent.series_uid)
    assert got.arrived_at == sent.arrived_at and got.arrived_at.tzinfo is not None
    assert got.analysed_at == sent.analysed_at
    assert (got.verdict, got.flagged, got.score, got.threshold) == (FRACTURE, True, 0.9, 0.5)
    assert got.operating_point == "sensitive"
    assert got.top_slices == sent.top_slices
    assert (got.model_name, got.model_version) == ("cspine", "2026.12.1")
    assert (got.manufacturer, got.manufacturer_model) == ("GE MEDICAL SYSTEMS", "Revolution")
    assert got.identifiers == {"accession_number": "A1"}
    assert got.status == "new" and got.opened_at is None and got.reviews == []


def test_the_same_series_again_updates_its_entry(store: WorklistStore) -> None:
    first, _ = store.record(entry(1, NORMAL))
    store.review(first.id, NewReview(fracture=False))
    again, created = store.record(entry(1, FRACTURE, hours=5, model_version="2026.12.2"))
    assert not created and again.id == first.id
    assert (again.verdict, again.flagged, again.model_version) == (FRACTURE, True, "2026.12.2")
    assert again.arrived_at == T0  # the first arrival: the study's age
    assert again.status == "reviewed" and len(again.reviews) == 1  # reads kept
    assert store.page(Filters(), 0, 10)[1] == 1


def test_uploads_without_uids_are_separate_entries(store: WorklistStore) -> None:
    a, _ = store.record(entry(1, source="upload", study_uid=None, series_uid=None))
    b, created = store.record(entry(1, source="upload", study_uid=None, series_uid=None))
    assert created and a.id != b.id


def test_flagged_first_then_the_longest_waiting(store: WorklistStore) -> None:
    ids = {}
    for n, verdict, hours in [
        (1, NORMAL, 0),
        (2, FRACTURE, 3),
        (3, NOT_CT, 1),
        (4, FRACTURE, 2),
        (5, NORMAL, -1),
    ]:
        ids[n] = store.record(entry(n, verdict, hours))[0].id
    rows, total = store.page(Filters(), 0, 10)
    assert [row.id for row in rows] == [ids[4], ids[2], ids[5], ids[1], ids[3]]
    assert total == 5
    page2, total2 = store.page(Filters(), 2, 2)
    assert [row.id for row in page2] == [ids[5], ids[1]] and total2 == 5


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(), [2, 4, 1, 3]),
        (Filters(verdicts=(FRACTURE,)), [2, 4]),
        (Filters(verdicts=(NORMAL, NOT_CT)), [1, 3]),
        (Filters(statuses=("opened",)), [4]),
        (Filters(statuses=("new", "reviewed")), [2, 1, 3]),
        (Filters(arrived_from=T0 + timedelta(hours=1)), [4, 3]),
        (Filters(arrived_to=T0 + timedelta(hours=1)), [2, 1]),
        (
            Filters(
                verdicts=(FRACTURE,),
                arrived_from=T0 + timedelta(hours=1),
                arrived_to=T0 + timedelta(hours=3),
            ),
            [4],
        ),
    ],
    ids=["none", "flagged", "two verdicts", "opened", "two statuses", "from", "to", "all"],
)
def test_filters(store: WorklistStore, filters: Filters, expected: list[int]) -> None:
    rows = {
        n: store.record(entry(n, verdict, hours))[0].id
        for n, verdict, hours in [
            (1, NORMAL, 0),
            (2, FRACTURE, 0.5),
            (3, NOT_CT, 1),
            (4, FRACTURE, 2),
        ]
    }
    store.open(rows[4])
    store.review(rows[3], NewReview(fracture=False))
    got, total = store.page(filters, 0, 50)
    assert [row.id for row in got] == [rows[n] for n in expected]
    assert total == len(expected)


def test_opening_marks_a_new_study_once(store: WorklistStore) -> None:
    row, _ = store.record(entry(1))
    opened = store.open(row.id)
    assert opened is not None and opened.status == "opened" and opened.opened_at is not None
    again = store.open(row.id)
    assert again is not None and again.opened_at == opened.opened_at
    store.review(row.id, NewReview(fracture=True, levels=["C2"]))
    assert store.open(row.id).status == "reviewed"  # type: ignore[union-attr]
    assert store.open(row.id + 100) is None


def test_a_second_read_is_history_and_the_latest_counts(store: WorklistStore) -> None:
    row, _ = store.record(entry(1, FRACTURE))
    store.review(row.id, NewReview(fracture=True, levels=["C2", "C5"], note="dens", reader="aaaa"))
    after = store.review(row.id, NewReview(fracture=False, reader="bbbb"))
    assert after is not None and after.status == "reviewed"
    reads = [(r.fracture, r.levels, r.note, r.reader) for r in after.reviews]
    assert reads == [(True, ["C2", "C5"], "dens", "aaaa"), (False, [], None, "bbbb")]
    assert all(r.reviewed_at.tzinfo is not None for r in after.reviews)
    [reviewed] = store.reviewed()
    assert (reviewed.flagged, reviewed.fracture) == (True, False)
    assert store.review(row.id + 100, NewReview(fracture=True)) is None


def test_two_concurrent_reads_of_one_study_are_both_kept(store: WorklistStore) -> None:
    row, _ = store.record(entry(1, FRACTURE))
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def read(k: int) -> None:
        start.wait()
        try:
            store.review(row.id, NewReview(fracture=k % 2 == 0, reader=f"r{k}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    got = store.get(row.id)
    assert got is not None and sorted(r.reader or "" for r in got.reviews) == [
        f"r{k}" for k in range(8)
    ]


def test_concurrent_first_records_of_one_series_make_one_entry(store: WorklistStore) -> None:
    start = threading.Barrier(6)
    results: list[tuple[int, bool]] = []

    def record() -> None:
        start.wait()
        row, created = store.record(entry(1, FRACTURE))
        results.append((row.id, created))

    threads = [threading.Thread(target=record) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 6 and len({row_id for row_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


def test_a_new_store_on_the_same_database_sees_everything(database_url: str) -> None:
    first = WorklistStore(database_url)
    first.migrate()
    row, _ = first.record(entry(1, FRACTURE))
    first.review(row.id, NewReview(fracture=True, levels=["C1"]))
    first.close()
    second = WorklistStore(database_url)
    second.migrate()
    try:
        got = second.get(row.id)
        assert got is not None and got.status == "reviewed"
        assert [r.levels for r in got.reviews] == [["C1"]]
    finally:
        second.close()
