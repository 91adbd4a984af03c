"""The pollers' lease on the state (``StateDB.hold_lease``), on a SQLite file and on a real
PostgreSQL server: taken, renewed, expired, taken over with the next term; a write of a
poller whose lease is gone is refused and writes nothing (fencing); two pollers starting
together create the schema once; the ``Poller`` polls only while it holds the lease."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from pacs.broker import Poller
from pacs.settings import WorkerSettings
from pacs.state import LeaseLost, StateDB

LEASE_S = 1.0


def test_lease_taken_renewed_expired_and_taken_over(new_state: Callable[[], Path | str]) -> None:
    location = new_state()
    first, second = StateDB(location, resume=False), StateDB(location, resume=False)
    try:
        assert first.lease_holder() is None
        assert first.hold_lease("A", LEASE_S) == 1
        assert second.hold_lease("B", LEASE_S) is None  # held: B waits
        time.sleep(LEASE_S * 0.6)
        assert first.hold_lease("A", LEASE_S) == 1  # renewed: the same term
        time.sleep(LEASE_S * 0.6)
        assert second.hold_lease("B", LEASE_S) is None  # past the first expiry: renewed
        first.start("s1", "st", 4)  # a fenced write renews it too
        time.sleep(LEASE_S * 0.6)
        assert second.hold_lease("B", LEASE_S) is None
        holder = first.lease_holder()
        assert holder is not None and holder[:2] == ("A", 1) and 0 < holder[2] <= LEASE_S
        time.sleep(LEASE_S * 1.2)  # A stops renewing (dead, hung): B takes over
        assert second.hold_lease("B", LEASE_S * 10) == 2
        assert first.hold_lease("A", LEASE_S) is None
        holder = second.lease_holder()
        assert holder is not None and holder[:2] == ("B", 2)
        assert second.hold_lease("B", LEASE_S * 10) == 2
    finally:
        first.close()
        second.close()


def test_a_write_under_a_lost_lease_is_refused(new_state: Callable[[], Path | str]) -> None:
    """A poller that hung past its lease and wakes cannot overwrite what the new holder
    recorded: its write raises ``LeaseLost`` and changes nothing, and it stays refused."""
    location = new_state()
    stale, taker = StateDB(location, resume=False), StateDB(location, resume=False)
    try:
        assert stale.hold_lease("A", LEASE_S) == 1
        stale.start("s1", "st", 4)
        time.sleep(LEASE_S * 1.2)
        assert taker.hold_lease("B", 30) == 2
        taker.done("s1", "st", instance_count=4, result="Normal", sr_uid="2.25.1",
                   sr_series_uid="2.25.2", sc_series_uid="2.25.3")  # fmt: skip
        with pytest.raises(LeaseLost):
            stale.retry("s1", "st", "TransientError: API answered 503", time.time() + 2)
        with pytest.raises(LeaseLost):
            stale.skip("s2", "st", "modality MR, not CT")
        row = taker.get("s1")
        assert row is not None and row.status == "done"
        assert stale.get("s2") is None
        # An expired lease nobody took is not renewed by a write either: taken afresh first.
        assert taker.hold_lease("B", LEASE_S) == 2
        time.sleep(LEASE_S * 1.2)
        with pytest.raises(LeaseLost):
            taker.fail("s1", "st", "identity", "identity")
        assert taker.hold_lease("B", LEASE_S) == 3  # a new term: it may have missed writes
        taker.requeue()  # fenced, and held
    finally:
        stale.close()
        taker.close()


def test_a_released_lease_is_taken_at_once(new_state: Callable[[], Path | str]) -> None:
    location = new_state()
    first, second = StateDB(location, resume=False), StateDB(location, resume=False)
    try:
        assert first.hold_lease("A", 30) == 1
        first.release_lease("A")  # a poller stopping
        assert second.hold_lease("B", 30) == 2
        first.start("s1", "st", 4)  # not fenced any more (released), e.g. an operator's
    finally:
        first.close()
        second.close()


def test_pollers_starting_together_create_the_schema_once(
    new_state: Callable[[], Path | str],
) -> None:
    location = new_state()
    with ThreadPoolExecutor(4) as pool:
        opened = list(pool.map(lambda _: StateDB(location, resume=False), range(4)))
    terms = [state.hold_lease(f"P{i}", 30) for i, state in enumerate(opened)]
    assert sorted(terms, key=str) == [1, None, None, None]
    for state in opened:
        state.close()


def test_poller_polls_only_while_it_holds_the_lease(new_state: Callable[[], Path | str]) -> None:
    """Two pollers on one state: the first to try holds the lease (``pacs_poller_leader``
    1), the other waits (0); once the holder stops renewing, the other takes over within the
    lease; the first then finds itself waiting."""
    location = new_state()
    settings = WorkerSettings(
        broker_url="amqp://guest:guest@127.0.0.1:1/%2F", url="http://127.0.0.1:1",
        lease_seconds=LEASE_S, metrics_port=0,
    )  # fmt: skip
    states = [StateDB(location, resume=False) for _ in range(2)]
    first, second = (Poller(settings, state) for state in states)

    def leader() -> float | None:
        return REGISTRY.get_sample_value("pacs_poller_leader")

    try:
        assert first.poll_once() <= LEASE_S / 3  # broker and PACS away: it still renews
        assert first.term == 1 and leader() == 1
        assert second.poll_once() <= LEASE_S / 3
        assert second.term is None and leader() == 0
        assert first.holder != second.holder
        started = time.monotonic()
        while second.term is None:  # the first stops renewing (dead, hung)
            time.sleep(second.poll_once())
        assert time.monotonic() - started <= LEASE_S + LEASE_S / 3 + 0.5
        assert second.term == 2 and leader() == 1
        first.poll_once()
        assert first.term is None and leader() == 0
    finally:
        for poller in (first, second):
            poller.close()
        for state in states:
            state.close()
