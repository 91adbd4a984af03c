"""The PACS pipeline on a broker (issue 30), nothing mocked: a real RabbitMQ (Debian's
``rabbitmq-server``), a real Orthanc, the real API, one poller and two workers as their own
processes (``python -m pacs poller`` / ``python -m pacs`` with ``PACS_BROKER_URL``).

Acceptance: 20 CT series stored at once; one worker SIGKILLed while it holds a series; the
broker stopped and started again on its storage while series are under way. Every series
gets exactly one SR and one heatmap series, none lost, none twice; the killed worker's series
is delivered again. A series the API refuses goes to the dead queue with its reason.

Skipped, saying why, where rabbitmq-server, Orthanc or the shared data are absent.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from dicomweb_client.api import DICOMwebClient
from prometheus_client import REGISTRY, generate_latest
from pydicom.dataset import Dataset

from pacs.broker import OutcomeRecorder, Poller, Topology, job_ref, publish
from pacs.orthanc import free_port, start_orthanc
from pacs.rabbitmq import RabbitServer, start_rabbitmq
from pacs.settings import WorkerSettings
from pacs.state import SeriesLog, StateDB
from testing.ct_series import SCANNER, base_slices, ct_series
from testing.pacs_stack import WorkerProcess, running_api, wait_for
from tests.pacs.test_pacs_e2e import (
    assert_worklist_order,
    series_of,
    state_rows,
    uid_of,
    when,
    worklist_items,
)

SERIES = 20
SLICES = 4  # per series: small, so 20 series take a minute or two on 2 cores
DEADLINE_S = 300.0  # every SR back, from the store


def replay_calls(state: SeriesLog) -> None:
    """One of each state call an attempt makes, on ``state``."""
    state.done("a", "st", instance_count=3, result="Normal", sr_uid="1.1", sr_series_uid="1.2",
               sc_series_uid="1.3", superseded="0.9")  # fmt: skip
    state.retry("b", "st", "API answered 503", 1e9, "transient")
    state.block("c", "st", "API refused the worker's token (401)", "cfg", 2e9)
    state.fail("d", "st", "identity: two PatientID values", "identity")
    state.skip("e", "st", "no longer in the PACS (404)")


def test_outcomes_replayed_on_the_poller_state_equal_direct_calls(
    new_state: Callable[[], Path | str],
) -> None:
    """What a broker worker records and the poller replays leaves the state (a SQLite file,
    PostgreSQL) exactly as the single-process worker's direct calls do (no broker needed)."""
    direct = StateDB(new_state())
    replay_calls(direct)
    replayed = StateDB(new_state())
    outcomes: list[dict[str, Any]] = []

    class Capture(OutcomeRecorder):
        def _record(self, call: str, series_uid: str, study_uid: str, **kwargs: Any) -> None:
            super()._record(call, series_uid, study_uid, **kwargs)
            outcomes.append(json.loads(json.dumps(self.outcome)))  # as it crosses the broker

    replay_calls(Capture({"attempt": 1}))
    for outcome in outcomes:
        getattr(replayed, outcome["call"])(
            outcome["series_uid"], outcome["study_uid"], **outcome["kwargs"]
        )
    strip = {"updated_at"}  # when each call ran

    def rows(db: StateDB) -> list[dict[str, Any]]:
        return [{k: v for k, v in vars(row).items() if k not in strip} for row in db.all()]

    assert [o["call"] for o in outcomes] == ["done", "retry", "block", "fail", "skip"]
    assert sorted(rows(replayed), key=str) == sorted(rows(direct), key=str)


def test_poller_queues_again_a_series_without_outcome_past_the_timeout(tmp_path: Path) -> None:
    """A series ``processing`` (queued) is not queued again while its outcome may still come,
    and is once ``PACS_OUTCOME_TIMEOUT_SECONDS`` have passed (its job lost with the broker's
    data, say): nothing stays stuck."""
    settings = WorkerSettings(
        broker_url="amqp://guest:guest@127.0.0.1:1/%2F", stable_seconds=0,
        outcome_timeout_seconds=600, state_db=tmp_path / "poller.sqlite3",
    )  # fmt: skip
    state = StateDB(settings.state_db, resume=False)
    poller = Poller(settings, state)
    ref = job_ref({"series_uid": "1.2.826.0.1.30.2", "study_uid": "1.2.826.0.1.30",
                   "modality": "CT", "instance_count": 3})  # fmt: skip
    now = time.time()
    assert poller._due(ref, now)
    state.start(ref.series_uid, ref.study_uid, ref.instance_count)  # what _dispatch records
    assert not poller._due(ref, now + 1)
    assert not poller._due(ref, now + 590)
    assert poller._due(ref, now + 610)


def pipeline_env(pacs_url: str, api_url: str, broker_url: str, **settings: str) -> dict[str, str]:
    """The environment of a test's pipeline processes: the PACS, the API and the broker,
    polls every second, a series stable after 2 s, one series per worker at once."""
    return {
        **os.environ,
        "PACS_URL": pacs_url,
        "API_URL": api_url,
        "PACS_BROKER_URL": broker_url,
        "PACS_POLL_SECONDS": "1",
        "PACS_STABLE_SECONDS": "2",
        "PACS_CONCURRENCY": "1",
        "PACS_LOG_LEVEL": "INFO",
        **settings,
    }


@dataclass
class Pipeline:
    """A test's ``python -m pacs …`` processes, each with its own metrics port and its log in
    ``folder``, all with ``env``."""

    folder: Path
    env: dict[str, str]
    processes: list[WorkerProcess] = field(default_factory=list)

    def start(self, name: str, *args: str) -> WorkerProcess:
        env = {**self.env, "PACS_METRICS_PORT": str(free_port())}
        process = WorkerProcess(env, self.folder / f"{name}.log", *args)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(process.log()[-6000:] for process in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()


@dataclass
class Run:
    client: DICOMwebClient
    broker: RabbitServer
    studies: dict[str, str]  # source series UID -> study UID
    refused: tuple[str, str]  # (study UID, series UID) of the series the API refuses
    killed_series: str
    poller: WorkerProcess
    workers: list[WorkerProcess]
    state_db: Path
    topology: Topology
    srs_at_restart: int = 0  # SRs in the PACS when the broker was stopped
    api_url: str = ""

    def logs(self) -> str:
        return "\n".join(proc.log() for proc in [self.poller, *self.workers])


def ct_sources(shared_data: Path, count: int, slices: int, patient: str) -> list[list[Dataset]]:
    """``count`` CT series of ``slices`` slices each, fracture and normal in turn, each its own
    patient (``<patient>-<n>``) and study."""
    return [
        ct_series(
            base_slices(shared_data, "fracture" if i % 2 else "normal", slices),
            patient_id=f"{patient}-{i:02d}",
            description=f"CT C-spine axial {i}",
        )
        for i in range(count)
    ]


def broken_series(shared_data: Path) -> list[Dataset]:
    """A CT series whose pixel data is cut short: nothing the API can decode (a 4xx)."""
    datasets = ct_series(base_slices(shared_data, "normal", 2), patient_id="BROKER-BROKEN",
                         description="CT with truncated pixel data")  # fmt: skip
    for ds in datasets:
        ds.PixelData = b"\0" * 64
    return datasets


@pytest.fixture(scope="module")
def run(
    rabbitmq_installed: None,
    orthanc_installed: None,
    shared_data: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("broker")
    sources = ct_sources(shared_data, SERIES, SLICES, "BROKER")
    broken = broken_series(shared_data)
    studies = {str(s[0].SeriesInstanceUID): str(s[0].StudyInstanceUID) for s in sources}
    refused = (str(broken[0].StudyInstanceUID), str(broken[0].SeriesInstanceUID))
    broker = start_rabbitmq(tmp / "rabbitmq")
    pacs = start_orthanc(tmp / "orthanc")
    with running_api(tmp / "api.log") as api_url:
        pipeline = Pipeline(tmp, pipeline_env(
            pacs.url, api_url, broker.url, PACS_STATE_DB=str(tmp / "poller.sqlite3"),
            PACS_BACKOFF_SECONDS="1", PACS_BACKOFF_MAX_SECONDS="4",
        ))  # fmt: skip
        start = pipeline.start
        poller = start("poller", "poller")
        first, second = start("worker-a"), start("worker-b")
        result = Run(DICOMwebClient(pacs.dicomweb_url), broker, studies, refused, "", poller,
                     [first, second], tmp / "poller.sqlite3",
                     Topology("pacs", 5), api_url=api_url)  # fmt: skip
        try:
            started = time.monotonic()
            result.client.store_instances([ds for s in sources for ds in s] + broken)

            # Worker A is killed while it holds a series (taken, no outcome yet): the last
            # one it took, once that is one the API analyses (the refused one fails at once).
            def last_taken() -> str | None:
                lines = [line for line in first.log().splitlines() if ": taken (attempt" in line]
                return lines[-1].split("series ", 1)[1].split(":", 1)[0] if lines else None

            wait_for("worker A to take a series", lambda: last_taken() not in (None, refused[1]),
                     timeout=120, every=0.05)  # fmt: skip
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(timeout=10)
            result.killed_series = str(last_taken())

            # The broker is restarted while series are under way (a few SRs back first).
            def some_done() -> bool:
                return len(result.client.search_for_series(search_filters={"Modality": "SR"})) >= 3

            wait_for("the first SRs", some_done, timeout=DEADLINE_S, every=0.5)
            result.srs_at_restart = len(
                result.client.search_for_series(search_filters={"Modality": "SR"})
            )
            broker.stop()
            time.sleep(2)
            result.broker = start_rabbitmq(tmp / "rabbitmq", broker.port, broker.dist_port)
            result.workers.append(start("worker-c"))  # A's replacement

            def all_done() -> bool:
                rows = state_rows(result.state_db)
                statuses = [rows.get(uid, {}).get("status") for uid in [*studies, refused[1]]]
                return all(status in ("done", "failed") for status in statuses)

            wait_for("every series done (poller's state)", all_done,
                     timeout=DEADLINE_S - (time.monotonic() - started), every=1.0)  # fmt: skip
            print(f"broker pipeline: {SERIES} series done {time.monotonic() - started:.0f}s "
                  "after the store")  # fmt: skip
            yield result
        except BaseException:
            print(result.logs()[-12000:])
            raise
        finally:
            pipeline.stop()
            result.broker.stop()
            pacs.stop()


def test_every_series_exactly_one_sr_and_heatmap_series(run: Run) -> None:
    """None lost, none twice: one SR (one instance) and one heatmap series per study, the SR
    naming that heatmap series; the poller's state says done for each."""
    rows = state_rows(run.state_db)
    for series_uid, study_uid in run.studies.items():
        srs = series_of(run.client, study_uid, "SR")
        assert len(srs) == 1, (series_uid, srs)
        assert len(run.client.search_for_instances(study_uid, uid_of(srs[0]))) == 1
        heatmaps = series_of(run.client, study_uid, "OT")
        assert len(heatmaps) == 1, (series_uid, heatmaps)
        row = rows[series_uid]
        assert row["status"] == "done", row
        assert row["sr_series_uid"] == uid_of(srs[0])
        assert row["sc_series_uid"] == uid_of(heatmaps[0])
    everything = run.client.search_for_series(search_filters={"Modality": "SR"})
    assert len(everything) == SERIES  # and none for the refused series


def test_killed_worker_and_broker_restart_lose_nothing(run: Run) -> None:
    """The series the killed worker held was delivered again and finished by another; the
    workers and the poller saw the broker go and reconnected."""
    assert 3 <= run.srs_at_restart < SERIES  # the restart came with series under way
    others = "\n".join(worker.log() for worker in run.workers[1:])
    assert f"series {run.killed_series}: taken (attempt 1, delivered again)" in others
    assert state_rows(run.state_db)[run.killed_series]["status"] == "done"
    assert "broker connection lost" in run.workers[1].log()
    assert "broker not reachable" in run.poller.log()


def test_worklist_lists_every_analysed_series_once(run: Run) -> None:
    """The broker workers add each analysed series to the API's worklist, once however often
    its job was delivered (the killed worker's series too), with the arrival the poller saw
    (carried in the job: before the analysis); none for the refused series; server order."""
    items = worklist_items(run.api_url)
    assert sorted(item["series_uid"] for item in items) == sorted(run.studies), items
    for item in items:
        assert item["study_uid"] == run.studies[item["series_uid"]], item
        assert item["manufacturer"] == SCANNER and item["source"] == "pacs", item
        assert (when(item["analysed_at"]) - when(item["arrived_at"])).total_seconds() >= 1.9
    assert_worklist_order(items)
    observed = sum(worker.metric("pacs_time_to_worklist_seconds_count")
                   for worker in run.workers if worker.process.poll() is None)  # fmt: skip
    assert observed >= 1  # the killed worker's own count went with it


def test_refused_series_dead_lettered_with_reason(run: Run) -> None:
    """A series the API refuses: ``failed`` (permanent) in the poller's state, and in the
    dead queue with the reason; nothing else there."""
    study_uid, series_uid = run.refused
    row = state_rows(run.state_db)[series_uid]
    assert row["status"] == "failed" and row["failure_class"] == "permanent", row
    assert "API refused the series" in row["reason"]
    # The poller's gauges (read at each poll): nothing waiting, the one dead message kept.
    wait_for("the poller's queue depths", lambda: run.poller.metric(
        "pacs_queue_depth", f'queue="{run.topology.dead}"') == 1, timeout=10)  # fmt: skip
    assert run.poller.metric("pacs_queue_depth", f'queue="{run.topology.series}"') == 0
    connection = pika.BlockingConnection(pika.URLParameters(run.broker.url))
    try:
        channel = connection.channel()
        dead = []
        while True:
            method, properties, body = channel.basic_get(run.topology.dead, auto_ack=False)
            if method is None:
                break
            dead.append((json.loads(body), properties.headers or {}))
    finally:
        connection.close()  # unacknowledged: they stay in the queue
    assert [message["series_uid"] for message, _ in dead] == [series_uid]
    message, headers = dead[0]
    assert message["study_uid"] == study_uid and message["call"] == "fail"
    assert headers["x-failure-class"] == "permanent"
    assert "API refused the series" in headers["x-reason"]


def test_job_no_worker_survives_is_dead_lettered_after_the_delivery_limit(
    rabbitmq_installed: None, tmp_path: Path
) -> None:
    """A job taken and never acknowledged (its worker dies each time) is delivered
    ``PACS_DELIVERY_LIMIT`` + 1 times, then the broker moves it to the dead queue; the poller
    records the series ``failed`` (class error) saying so."""
    broker = start_rabbitmq(tmp_path / "rabbitmq")
    settings = WorkerSettings(
        broker_url=broker.url, broker_queue="poison", delivery_limit=2,
        state_db=tmp_path / "poller.sqlite3", metrics_port=0,
    )  # fmt: skip
    topology = Topology(settings.broker_queue, settings.delivery_limit)
    job = {"series_uid": "1.2.826.0.1.30.1", "study_uid": "1.2.826.0.1.30", "modality": "CT",
           "description": "", "instance_count": 3, "attempt": 1, "earlier": None}  # fmt: skip
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        topology.declare(channel)
        channel.confirm_delivery()
        publish(channel, job, routing_key=topology.series)
        connection.close()
        deliveries = 0
        for _ in range(6):  # each time: taken, then the connection dies without an ack
            connection = pika.BlockingConnection(pika.URLParameters(broker.url))
            method, _, body = connection.channel().basic_get(topology.series, auto_ack=False)
            connection.close()
            if method is None:
                break
            assert json.loads(body)["series_uid"] == job["series_uid"]
            deliveries += 1
        assert deliveries == settings.delivery_limit + 1
        state = StateDB(settings.state_db, resume=False)
        poller = Poller(settings, state)

        def recorded() -> object:
            poller._drain_outcomes()  # what each poll does first
            return state.get(str(job["series_uid"]))

        try:
            wait_for("the dead-lettered job at the poller", recorded, timeout=10)
        finally:
            poller.close()
        row = state.get(str(job["series_uid"]))
        assert row is not None and row.status == "failed" and row.failure_class == "error"
        assert "delivery_limit" in (row.reason or "") and "over 2 times" in (row.reason or "")
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        method, properties, body = connection.channel().basic_get(topology.dead, auto_ack=True)
        connection.close()
        assert method is not None and json.loads(body)["series_uid"] == job["series_uid"]
        assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    finally:
        broker.stop()


def test_poller_exports_the_queue_depths(rabbitmq_installed: None, tmp_path: Path) -> None:
    """``pacs_queue_depth{queue}`` on the poller's metrics, read at each poll from the real
    broker: N jobs published, the series queue reads N; jobs taken (acknowledged, or held
    unacknowledged by a consumer) are no longer counted, and the consumer shows in
    ``pacs_queue_consumers``; a dead-lettered outcome counts in the dead queue. While the
    broker is away there is no sample rather than a stale one."""
    broker = start_rabbitmq(tmp_path / "rabbitmq")
    settings = WorkerSettings(
        broker_url=broker.url, broker_queue="depth", url="http://127.0.0.1:1",  # no PACS
        state_db=tmp_path / "poller.sqlite3", metrics_port=0,
    )  # fmt: skip
    state = StateDB(settings.state_db, resume=False)
    poller = Poller(settings, state)
    topology = poller.topology

    def sample(queue: str, name: str = "pacs_queue_depth") -> float | None:
        poller._poll()  # outcomes, the PACS (refused here), then the queues
        return REGISTRY.get_sample_value(name, {"queue": queue})

    jobs = 5
    try:
        assert sample(topology.series) == 0
        connection = pika.BlockingConnection(pika.URLParameters(broker.url))
        channel = connection.channel()
        channel.confirm_delivery()
        for i in range(jobs):
            publish(channel, {"series_uid": f"1.2.826.0.1.30.9.{i}", "study_uid": "1.2.826.0.1.30",
                              "instance_count": 3}, routing_key=topology.series)  # fmt: skip
        assert sample(topology.series) == jobs
        assert f'pacs_queue_depth{{queue="{topology.series}"}} {jobs}.0' in (
            generate_latest(REGISTRY).decode()  # what the metrics port serves
        )
        for _ in range(2):  # taken and acknowledged
            method, _, _ = channel.basic_get(topology.series, auto_ack=True)
            assert method is not None
        assert sample(topology.series) == jobs - 2
        channel.basic_qos(prefetch_count=1)  # a worker holding one job, unacknowledged
        held: list[int] = []
        channel.basic_consume(topology.series, lambda ch, m, p, b: held.append(m.delivery_tag))
        connection.process_data_events(time_limit=1)
        assert len(held) == 1
        assert sample(topology.series) == jobs - 3
        assert sample(topology.series, "pacs_queue_consumers") == 1
        assert sample(topology.dead) == 0
        publish(channel, {"call": "fail", "series_uid": "1.2.826.0.1.30.9.0",
                          "study_uid": "1.2.826.0.1.30", "kwargs": {"reason": "test"}},
                exchange=topology.dead)  # fmt: skip
        assert sample(topology.dead) == 1  # kept for the operator
        assert sample(topology.outcomes) == 0  # its copy to the poller, replayed at the poll
        connection.close()  # the held job goes back to the queue
        assert sample(topology.series) == jobs - 2
        assert sample(topology.series, "pacs_queue_consumers") == 0
        broker.stop()
        assert sample(topology.series) is None
        assert sample(topology.dead) is None
    finally:
        poller.close()
        broker.stop()
