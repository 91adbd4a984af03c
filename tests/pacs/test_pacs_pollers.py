"""Several pollers under a lease (issue 30), nothing mocked: two pollers (``python -m pacs
poller``) on one PostgreSQL state (``PACS_STATE_URL``; a real server, ``testing/postgres.py``),
one RabbitMQ, one Orthanc, the real API and one worker, each its own process.

CT series stored at once; once the leading poller has queued them all and recorded the first
outcomes, it is SIGKILLed. The waiting poller takes the lease within ``PACS_LEASE_SECONDS``
(and a renewal period), records the outcomes of the series the dead one queued, and queues
none of them again: every series gets exactly one SR and one heatmap series, each was queued
once and analysed once, and the API's worklist lists each once.

Skipped, saying why, where rabbitmq-server, Orthanc, PostgreSQL or the shared data are absent.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from dicomweb_client.api import DICOMwebClient

from pacs.orthanc import start_orthanc
from pacs.rabbitmq import start_rabbitmq
from pacs.state import StateDB
from testing.postgres import PostgresServer
from tests.pacs.test_pacs_broker import Pipeline, ct_sources, pipeline_env
from tests.pacs.test_pacs_e2e import (
    WorkerProcess,
    running_api,
    series_of,
    uid_of,
    wait_for,
    worklist_items,
)

SERIES = 6
SLICES = 4
LEASE_S = 3.0  # PACS_LEASE_SECONDS of both pollers (a takeover within about this long)
DEADLINE_S = 120.0


def series_in_log(log: str, event: str) -> list[str]:
    """The series UIDs of the log's ``series <uid>: <event>`` lines, in order."""
    return re.findall(rf"series ([0-9.]+): {re.escape(event)}", log)


def test_second_poller_takes_over_from_a_killed_leader(
    rabbitmq_installed: None,
    orthanc_installed: None,
    shared_data: Path,
    postgres: PostgresServer,
    tmp_path: Path,
) -> None:
    sources = ct_sources(shared_data, SERIES, SLICES, "POLLERS")
    studies = {str(s[0].SeriesInstanceUID): str(s[0].StudyInstanceUID) for s in sources}
    state_url = postgres.new_database()
    broker = start_rabbitmq(tmp_path / "rabbitmq")
    pacs = start_orthanc(tmp_path / "orthanc")
    pipeline: Pipeline | None = None
    try:
        with running_api(tmp_path / "api.log") as api_url:
            pipeline = Pipeline(tmp_path, pipeline_env(
                pacs.url, api_url, broker.url, PACS_STATE_URL=state_url,
                PACS_LEASE_SECONDS=str(LEASE_S),
            ))  # fmt: skip
            start = pipeline.start

            def leading(poller: WorkerProcess) -> bool:
                return poller.metric("pacs_poller_leader") == 1

            try:
                first = start("poller-a", "poller")
                wait_for("poller A to hold the lease", lambda: leading(first), timeout=60)
                second = start("poller-b", "poller")
                wait_for("poller B to wait", lambda: "waiting for the lease" in second.log()
                         and second.metric("pacs_poller_leader") == 0, timeout=60)  # fmt: skip
                worker = start("worker")
                client = DICOMwebClient(pacs.dicomweb_url)
                started = time.monotonic()
                client.store_instances([ds for s in sources for ds in s])

                # A queued every series and recorded some outcomes, not all: killed.
                def mid_way() -> bool:
                    log = first.log()
                    queued = set(series_in_log(log, "queued (attempt"))
                    return queued == set(studies) and bool(series_in_log(log, "outcome"))

                wait_for("poller A mid-way", mid_way, timeout=DEADLINE_S, every=0.05)
                first.process.send_signal(signal.SIGKILL)
                first.process.wait(timeout=10)
                killed = time.monotonic()
                recorded_by_a = set(series_in_log(first.log(), "outcome"))
                assert recorded_by_a < set(studies), "A finished before it was killed"
                assert not leading(second)

                wait_for("poller B to take the lease", lambda: leading(second),
                         timeout=LEASE_S * 3, every=0.1)  # fmt: skip
                takeover_s = time.monotonic() - killed
                state = StateDB(state_url, resume=False)
                try:

                    def all_done() -> bool:
                        rows = {row.series_uid: row.status for row in state.all()}
                        return all(rows.get(uid) == "done" for uid in studies)

                    wait_for("every series done (the pollers' state)", all_done,
                             timeout=DEADLINE_S, every=0.5)  # fmt: skip
                    rows = {row.series_uid: row for row in state.all()}
                    holder = state.lease_holder()
                finally:
                    state.close()
                done_s = time.monotonic() - started
                print(f"pollers: B took the lease {takeover_s:.1f}s after A was killed; "
                      f"{SERIES} series done {done_s:.0f}s after the store")  # fmt: skip
            except BaseException:
                print(pipeline.logs())
                raise
            # Within the lease and the period B waits between tries (with a second of slack).
            assert takeover_s <= LEASE_S + LEASE_S / 3 + 1.0, takeover_s
            assert holder is not None and holder[1] == 2  # the second term: B's
            # Exactly one SR (one instance) and one heatmap series per study; the state says so.
            for series_uid, study_uid in studies.items():
                srs = series_of(client, study_uid, "SR")
                assert len(srs) == 1, (series_uid, srs)
                assert len(client.search_for_instances(study_uid, uid_of(srs[0]))) == 1
                heatmaps = series_of(client, study_uid, "OT")
                assert len(heatmaps) == 1, (series_uid, heatmaps)
                assert rows[series_uid].sr_series_uid == uid_of(srs[0])
                assert rows[series_uid].sc_series_uid == uid_of(heatmaps[0])
            assert len(client.search_for_series(search_filters={"Modality": "SR"})) == SERIES
            # Neither lost nor twice: each series queued once (by A), taken and analysed once; B
            # recorded the outcomes A never did, and queued nothing A had queued.
            a_log, b_log, worker_log = first.log(), second.log(), worker.log()
            assert sorted(series_in_log(a_log, "queued (attempt 1)")) == sorted(studies)
            assert series_in_log(b_log, "queued (attempt") == []
            assert sorted(series_in_log(worker_log, "taken (attempt 1)")) == sorted(studies)
            assert "results already in the PACS" not in worker_log
            assert set(studies) - recorded_by_a <= set(
                series_in_log(b_log, "outcome done recorded")
            )
            items = worklist_items(api_url)
            assert sorted(item["series_uid"] for item in items) == sorted(studies), items
    finally:
        if pipeline is not None:
            pipeline.stop()
        broker.stop()
        pacs.stop()
