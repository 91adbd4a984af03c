"""The PACS pipeline on RabbitMQ: one poller queues stable series, N workers on any machines
take them (``PACS_BROKER_URL`` set; docs/pacs-broker.md).

Queues (quorum queues: replicated, durable, persistent messages, publisher confirms):

- ``<prefix>.series``: one job per due series, published by the poller. A worker acknowledges
  a job only after its outcome is published (confirmed); a worker that dies (or loses the
  broker) leaves its jobs unacknowledged and the broker delivers them again. After
  ``PACS_DELIVERY_LIMIT`` deliveries without an outcome (a series that kills every worker)
  the broker dead-letters the job.
- ``<prefix>.outcomes``: each attempt's outcome, consumed by the poller.
- ``<prefix>.dead`` (a fanout exchange and a queue of the same name, also bound to the
  outcomes queue): failures that will not change on retry (``permanent``, ``identity``,
  ``error`` after ``PACS_ERROR_MAX_ATTEMPTS``), with the reason in the headers, and jobs the broker
  dead-lettered. They stay in the dead queue for the operator.

One state, one writer: the poller owns the state (``PACS_STATE_DB``, SQLite, as in the
single-process mode, so ``python -m pacs list|requeue`` work unchanged against it; or, with
``PACS_STATE_URL``, PostgreSQL shared by several pollers). Pollers hold a lease on the state
(:meth:`pacs.state.StateDB.hold_lease`): the one holding it polls, queues and records
outcomes, renewing it at every poll and state write (fenced: a write under a lost lease is
refused); the others wait and take over once it expires (``PACS_LEASE_SECONDS``). A worker
keeps no state: it runs the single-process worker's attempt (``Worker._process``) against an
:class:`OutcomeRecorder`, which records the one state call the attempt makes (done, retry,
block, fail, skip) and sends it to the poller, which replays it on its state file. Back-off,
failure classes, bounded attempts and superseding are therefore the single-process rules.
A job carries its attempt number, the series' earlier result (for the Predecessor
Documents Sequence of a superseding SR) and when the poller saw the series arrive (the
worklist's ``arrived_at``).

Idempotence: output UIDs are derived from the source series (``pacs.dicom_out``), and an
attempt first asks the PACS whether the SR series is already there, so a job delivered twice
files nothing twice; two workers storing the same series at once store the same instance
UIDs, which the PACS keeps once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, fields
from functools import partial
from pathlib import Path
from typing import Any

import pika
from pika.adapters.blocking_connection import BlockingChannel
from pika.exceptions import AMQPError
from pika.spec import Basic, BasicProperties
from prometheus_client import Gauge
from sqlalchemy.exc import SQLAlchemyError

from pacs.clients import SeriesRef
from pacs.settings import WorkerSettings
from pacs.state import LeaseLost, SeriesState, StateDB
from pacs.worker import Worker

log = logging.getLogger("pacs.broker")

# The state calls an outcome may carry (replayed by the poller on its state file).
OUTCOME_CALLS = frozenset({"done", "skip", "retry", "block", "fail"})
PERSISTENT = 2  # AMQP delivery mode: written to disk by the broker

# The broker's queues as the poller sees them at each poll (a passive queue_declare: AMQP's
# Queue.DeclareOk carries the ready count and the consumers, not the unacknowledged count).
QUEUE_DEPTH = Gauge(
    "pacs_queue_depth",
    "Messages ready in the broker's queue (waiting for a consumer; taken but unacknowledged "
    "ones are not counted), read by the poller at each poll.",
    ["queue"],
)
QUEUE_CONSUMERS = Gauge(
    "pacs_queue_consumers", "Consumers of the broker's queue (read by the poller).", ["queue"]
)
POLLER_LEADER = Gauge(
    "pacs_poller_leader",
    "1 while this poller holds the lease on the state and polls; 0 while it waits.",
)


class Topology:
    """The names of the queues and exchange under ``prefix``, and their declaration."""

    def __init__(self, prefix: str, delivery_limit: int) -> None:
        self.series = f"{prefix}.series"
        self.outcomes = f"{prefix}.outcomes"
        self.dead = f"{prefix}.dead"  # both the fanout exchange and the queue kept for people
        self.delivery_limit = delivery_limit

    def declare(self, channel: BlockingChannel) -> None:
        """Declare everything (idempotent; every process does it on connecting)."""
        channel.exchange_declare(self.dead, exchange_type="fanout", durable=True)
        quorum = {"x-queue-type": "quorum"}
        channel.queue_declare(self.dead, durable=True, arguments=quorum)
        channel.queue_declare(self.outcomes, durable=True, arguments=quorum)
        channel.queue_bind(self.dead, self.dead)
        channel.queue_bind(self.outcomes, self.dead)
        channel.queue_declare(
            self.series,
            durable=True,
            arguments={
                **quorum,
                "x-delivery-limit": self.delivery_limit,
                "x-dead-letter-exchange": self.dead,
            },
        )

    def measure(self, channel: BlockingChannel) -> dict[str, int]:
        """Set ``pacs_queue_depth`` and ``pacs_queue_consumers`` of each queue from a passive
        queue_declare (declares nothing; the queues exist once ``declare`` ran); returns the
        depths."""
        depths = {}
        for queue in (self.series, self.outcomes, self.dead):
            declared = channel.queue_declare(queue, passive=True).method
            QUEUE_DEPTH.labels(queue).set(declared.message_count)
            QUEUE_CONSUMERS.labels(queue).set(declared.consumer_count)
            depths[queue] = declared.message_count
        return depths


def connect(url: str) -> pika.BlockingConnection:
    """A blocking connection with a heartbeat, so a dead peer is noticed within a minute."""
    parameters = pika.URLParameters(url)
    parameters.heartbeat = 30
    parameters.blocked_connection_timeout = 60
    return pika.BlockingConnection(parameters)


def publish(
    channel: BlockingChannel,
    body: dict[str, Any],
    *,
    exchange: str = "",
    routing_key: str = "",
    headers: dict[str, Any] | None = None,
) -> None:
    """A persistent JSON message; returns once the broker confirmed it (the channel is in
    confirm mode: an unroutable or refused message raises)."""
    channel.basic_publish(
        exchange,
        routing_key,
        json.dumps(body).encode(),
        BasicProperties(content_type="application/json", delivery_mode=PERSISTENT, headers=headers),
        mandatory=True,
    )


# ---- the worker side ---------------------------------------------------------------------
class OutcomeRecorder:
    """The state one job's attempt sees (:class:`pacs.state.SeriesLog`): ``start`` gives the
    attempt number the poller gave the job, ``get`` the earlier result it carried; the one
    recording call becomes the outcome sent to the poller."""

    def __init__(self, job: dict[str, Any]) -> None:
        self.job = job
        self.outcome: dict[str, Any] | None = None

    def _record(self, call: str, series_uid: str, study_uid: str, **kwargs: Any) -> None:
        self.outcome = {"call": call, "series_uid": series_uid, "study_uid": study_uid,
                        "kwargs": kwargs}  # fmt: skip

    def start(self, series_uid: str, study_uid: str, instance_count: int) -> int:
        return int(self.job.get("attempt", 1))

    def get(self, series_uid: str) -> SeriesState | None:
        earlier = self.job.get("earlier")
        if not earlier:
            return None
        known = {field.name for field in fields(SeriesState)}  # a newer poller's: its extras
        return SeriesState(**{key: value for key, value in earlier.items() if key in known})

    def done(
        self, series_uid: str, study_uid: str, *, instance_count: int, result: str,
        sr_uid: str, sr_series_uid: str, sc_series_uid: str | None, reason: str | None = None,
        superseded: str | None = None,
    ) -> None:  # fmt: skip
        self._record(
            "done", series_uid, study_uid, instance_count=instance_count, result=result,
            sr_uid=sr_uid, sr_series_uid=sr_series_uid, sc_series_uid=sc_series_uid,
            reason=reason, superseded=superseded,
        )  # fmt: skip

    def skip(
        self, series_uid: str, study_uid: str, reason: str, *, own_output: bool = False,
        instance_count: int | None = None,
    ) -> None:  # fmt: skip
        self._record("skip", series_uid, study_uid, reason=reason, own_output=own_output,
                     instance_count=instance_count)  # fmt: skip

    def retry(
        self, series_uid: str, study_uid: str, reason: str, next_attempt: float,
        failure_class: str = "transient",
    ) -> None:  # fmt: skip
        self._record("retry", series_uid, study_uid, reason=reason, next_attempt=next_attempt,
                     failure_class=failure_class)  # fmt: skip

    def block(
        self, series_uid: str, study_uid: str, reason: str, config: str, next_attempt: float
    ) -> None:
        self._record("block", series_uid, study_uid, reason=reason, config=config,
                     next_attempt=next_attempt)  # fmt: skip

    def fail(
        self, series_uid: str, study_uid: str, reason: str, failure_class: str = "permanent"
    ) -> None:
        self._record("fail", series_uid, study_uid, reason=reason, failure_class=failure_class)


def job_ref(job: dict[str, Any]) -> SeriesRef:
    """The series a job names."""
    return SeriesRef(
        study_uid=str(job["study_uid"]),
        series_uid=str(job["series_uid"]),
        modality=str(job.get("modality", "")),
        description=str(job.get("description", "")),
        instance_count=int(job["instance_count"]),
    )


def job_arrived_at(job: dict[str, Any]) -> float | None:
    """When the job's series arrived in the PACS, as the poller saw it (epoch seconds); None
    when the job does not say (a job of an older poller: the API dates it on receipt)."""
    value = job.get("arrived_at")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class BrokerWorker:
    """Takes jobs from the series queue, runs each attempt on a thread pool
    (``PACS_CONCURRENCY`` at once: the prefetch), publishes its outcome, then acknowledges."""

    def __init__(self, settings: WorkerSettings, worker: Worker) -> None:
        assert settings.broker_url, "PACS_BROKER_URL is not set"
        self.settings = settings
        self.url = settings.broker_url
        self.worker = worker  # its attempt logic and clients; its own state file is unused
        self.stop = worker.stop
        self.topology = Topology(settings.broker_queue, settings.delivery_limit)
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="series")
        self._in_flight: set[Future[Any]] = set()

    def run(self) -> bool:
        """Consume until ``stop``; reconnects (with back-off) when the broker goes away. Jobs
        whose connection was lost are left to the broker, which delivers them again."""
        failures = 0
        while not self.stop.is_set():
            try:
                self._consume()
                failures = 0
            except AMQPError as exc:
                failures += 1
                delay = min(self.settings.backoff_seconds * 2 ** min(failures - 1, 8),
                            self.settings.backoff_max_seconds)  # fmt: skip
                log.warning("broker connection lost (%r); reconnecting in %.0fs", exc, delay)
                self.stop.wait(delay)
        self._pool.shutdown(wait=False, cancel_futures=True)
        # Attempts still running after the grace period (waited for in _consume) are
        # abandoned: their jobs were not acknowledged, so the broker delivers them again.
        return all(future.done() for future in self._in_flight)

    def _consume(self) -> None:
        connection = connect(self.url)
        try:
            channel = connection.channel()
            self.topology.declare(channel)
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.settings.concurrency)
            channel.basic_consume(
                self.topology.series, partial(self._on_job, connection), auto_ack=False
            )
            log.info("taking series from %s (concurrency %d)", self.topology.series,
                     self.settings.concurrency)  # fmt: skip
            while not self.stop.is_set():
                connection.process_data_events(time_limit=1)
            channel.stop_consuming()
            # Stopping: the attempts under way may still finish and be acknowledged.
            deadline = time.monotonic() + self.settings.stop_grace_seconds
            while self._in_flight and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.5)
        finally:
            if connection.is_open:
                with contextlib.suppress(AMQPError):
                    connection.close()

    def _on_job(
        self,
        connection: pika.BlockingConnection,
        channel: BlockingChannel,
        method: Basic.Deliver,
        _properties: BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        try:
            job = json.loads(body)
            ref = job_ref(job)
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable job dead-lettered (%s): %.300r", exc, body)
            channel.basic_reject(tag, requeue=False)
            return
        log.info("series %s: taken (attempt %s%s)", ref.series_uid, job.get("attempt"),
                 ", delivered again" if method.redelivered else "")  # fmt: skip
        future = self._pool.submit(self._attempt, ref, job)
        self._in_flight.add(future)

        def finished(done: Future[dict[str, Any] | None]) -> None:
            callback = partial(self._finish, channel, tag, ref, done)
            try:
                connection.add_callback_threadsafe(callback)
            except AMQPError:  # that connection is gone: the broker delivers the job again
                self._in_flight.discard(done)

        future.add_done_callback(finished)

    def _attempt(self, ref: SeriesRef, job: dict[str, Any]) -> dict[str, Any] | None:
        recorder = OutcomeRecorder(job)
        self.worker._process(ref, recorder, job_arrived_at(job))
        return recorder.outcome

    def _finish(
        self,
        channel: BlockingChannel,
        tag: int,
        ref: SeriesRef,
        future: Future[dict[str, Any] | None],
    ) -> None:
        """On the connection's thread: publish the outcome, then acknowledge the job."""
        self._in_flight.discard(future)
        if not channel.is_open:
            log.warning("series %s: channel gone before the ack; it comes again", ref.series_uid)
            return
        try:
            outcome = future.result()
        except Exception as exc:  # _process catches what it expects: a bug, tried again
            log.error("series %s: unexpected error %r; job returned", ref.series_uid, exc)
            channel.basic_nack(tag, requeue=True)
            return
        if outcome is None:  # nothing recorded (cannot happen with the current attempt)
            kwargs = {"reason": "attempt recorded no outcome", "next_attempt": time.time(),
                      "failure_class": "error"}  # fmt: skip
            outcome = {"call": "retry", "series_uid": ref.series_uid,
                       "study_uid": ref.study_uid, "kwargs": kwargs}  # fmt: skip
        if outcome["call"] == "fail":  # final: the dead queue (and the poller through it)
            kwargs = outcome["kwargs"]
            publish(channel, outcome, exchange=self.topology.dead, headers={
                "x-reason": str(kwargs.get("reason", ""))[:500],
                "x-failure-class": str(kwargs.get("failure_class", "")),
            })  # fmt: skip
        else:
            publish(channel, outcome, routing_key=self.topology.outcomes)
        channel.basic_ack(tag)


# ---- the poller side ---------------------------------------------------------------------
class Poller(Worker):
    """The single-process worker's poll (stability, own outputs, non-CT, back-off), but a
    due series is queued instead of processed; outcomes from the workers are replayed on the
    state file at each poll."""

    def __init__(self, settings: WorkerSettings, state: StateDB) -> None:
        assert settings.broker_url, "PACS_BROKER_URL is not set"
        super().__init__(settings, state)
        self.url = settings.broker_url
        self.topology = Topology(settings.broker_queue, settings.delivery_limit)
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.term: int | None = None  # the lease's term while this poller holds it
        self._next_poll = 0.0  # time.monotonic() of the next poll while holding the lease
        self._waiting = False  # "waiting for the lease" logged
        POLLER_LEADER.set(0)

    def _open(self) -> BlockingChannel:
        if self._channel is None or not self._channel.is_open:
            self.close()
            self._connection = connect(self.url)
            channel = self._connection.channel()
            self.topology.declare(channel)
            channel.confirm_delivery()
            self._channel = channel
            log.info("queueing series on %s", self.topology.series)
        return self._channel

    def close(self) -> None:
        """Close the broker connection (opened again at the next poll)."""
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(AMQPError):
                self._connection.close()
        self._connection = self._channel = None

    def run(self) -> bool:
        try:
            return super().run()
        finally:
            self.close()
            if self.term is not None:  # stopping: a waiting poller may take over at once
                with contextlib.suppress(SQLAlchemyError):
                    self.state.release_lease(self.holder)
                POLLER_LEADER.set(0)

    def poll_once(self) -> float:
        """Hold the lease (take it, or renew it), then, while held and when a poll is due,
        poll; returns the seconds until the next call: at most a third of the lease, so the
        holder renews it in time and a waiting poller tries as often."""
        renew = self.settings.lease_seconds / 3
        try:
            term = self.state.hold_lease(self.holder, self.settings.lease_seconds)
        except SQLAlchemyError as exc:  # the state's database away: nobody can write it
            log.warning("state database not reachable (%s); next try in %.0fs", exc, renew)
            self._wait_for_lease()
            return renew
        if term is None:
            self._wait_for_lease()
            return renew
        if term != self.term:
            log.info("lease taken (term %d, %s): polling", term, self.holder)
            self.term, self._next_poll, self._waiting = term, 0.0, False
        POLLER_LEADER.set(1)
        wait = self._next_poll - time.monotonic()
        if wait > 0:
            return min(wait, renew)
        try:
            delay = self._poll()
        except (LeaseLost, SQLAlchemyError) as exc:  # what this poll did not record is
            log.warning("lease lost mid-poll (%s)", exc)  # due again for the next holder
            self._wait_for_lease()
            return renew
        self._next_poll = time.monotonic() + delay
        return min(delay, renew)

    def _wait_for_lease(self) -> None:
        """Not (or no longer) the holder: no broker connection (outcomes taken and not yet
        acknowledged go back to the queue for the holder), no memory of what was seen."""
        if self.term is not None:
            log.warning("lease lost (term %d): waiting to take it again", self.term)
            self.term = None
            self.close()
            self._seen.clear()  # the next term watches the series settle afresh
        if not self._waiting:
            log.info("waiting for the lease (%s)", self.holder)
            self._waiting = True
        POLLER_LEADER.set(0)

    def _poll(self) -> float:
        """Outcomes first (so a finished series is not queued again), then the PACS, then
        the queues' depths (with what this poll queued)."""
        try:
            self._drain_outcomes()
            delay = super().poll_once()
            self.topology.measure(self._open())
            return delay
        except AMQPError as exc:  # nothing is lost: what was not queued is due next poll
            log.warning("broker not reachable (%r); next try in %.0fs", exc,
                        self.settings.poll_seconds)  # fmt: skip
            self.close()
            QUEUE_DEPTH.clear()  # unknown now: no sample rather than a stale one
            QUEUE_CONSUMERS.clear()
            return self.settings.poll_seconds

    def _drain_outcomes(self) -> None:
        channel = self._open()
        while True:
            method, properties, body = channel.basic_get(self.topology.outcomes, auto_ack=False)
            if method is None:
                return
            self._apply(body, properties)
            channel.basic_ack(method.delivery_tag)

    def _apply(self, body: bytes, properties: BasicProperties) -> None:
        """Replay one outcome on the state file (or record a job the broker dead-lettered)."""
        try:
            message = json.loads(body)
            series_uid, study_uid = str(message["series_uid"]), str(message["study_uid"])
        except (ValueError, KeyError, TypeError) as exc:
            log.error("unreadable outcome dropped (%s): %.300r", exc, body)
            return
        call = message.get("call")
        if call is None:  # a job the broker dead-lettered: delivered too often, no outcome
            deaths = (properties.headers or {}).get("x-death") or [{}]
            reason = (
                f"dead-lettered by the broker ({deaths[0].get('reason', '?')}): delivered over "
                f"{self.settings.delivery_limit} times without an outcome (a worker died on it "
                "each time)"
            )
            self._give_up(self.state, series_uid, study_uid, reason, "error")
            log.error("series %s: %s", series_uid, reason)
            return
        if call not in OUTCOME_CALLS:
            log.error("series %s: unknown outcome %r dropped", series_uid, call)
            return
        try:
            getattr(self.state, call)(series_uid, study_uid, **message.get("kwargs", {}))
        except (TypeError, ValueError) as exc:  # not what a worker of this version sends
            log.error("series %s: outcome %s dropped (%s): %.300r", series_uid, call, exc, body)
            return
        log.info("series %s: outcome %s recorded", series_uid, call)

    def _due(self, ref: SeriesRef, now: float, own: frozenset[str] = frozenset()) -> bool:
        current = self.state.get(ref.series_uid)
        if current is not None and current.status == "processing":
            waited = now - current.updated_at
            if waited < self.settings.outcome_timeout_seconds:
                return False  # queued or under way: its outcome comes through the broker
            log.warning("series %s: no outcome %.0fs after it was queued: queued again",
                        ref.series_uid, waited)  # fmt: skip
        return super()._due(ref, now, own)

    def _dispatch(self, ref: SeriesRef) -> None:
        """Queue the series (confirmed by the broker), then mark it under way. A poller that
        dies in between queues it again: a job delivered twice files nothing twice."""
        earlier = self.state.get(ref.series_uid)
        attempt = self.state.attempt_number(ref.series_uid)
        job = {**asdict(ref), "attempt": attempt, "arrived_at": self.arrived_at(ref),
               "earlier": asdict(earlier) if earlier is not None else None}  # fmt: skip
        publish(self._open(), job, routing_key=self.topology.series)
        self.state.start(ref.series_uid, ref.study_uid, ref.instance_count)
        log.info("series %s: queued (attempt %d)", ref.series_uid, attempt)


def stateless_worker(settings: WorkerSettings) -> Worker:
    """The single-process worker whose attempt logic a broker worker runs. Its state file is
    never written (outcomes go to the poller), so it is an in-memory one."""
    return Worker(settings, StateDB(Path(":memory:")))


__all__ = [
    "BrokerWorker",
    "OutcomeRecorder",
    "Poller",
    "Topology",
    "stateless_worker",
]
