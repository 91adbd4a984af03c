"""``python -m pacs``: run the PACS worker until SIGTERM / Ctrl-C.

Settings come from the environment (see ``pacs.settings.WorkerSettings``), e.g.

    PACS_URL=http://127.0.0.1:8042 API_URL=http://127.0.0.1:8000 python -m pacs

Operator commands on the same state file (``PACS_STATE_DB``), safe while the worker runs:

    python -m pacs list [--status failed ...]        # series, status, class, attempts, reason
    python -m pacs requeue [--status failed ...] [SERIES_UID ...]
                            # failed/skipped/blocked series due again at the next poll

On a broker (``PACS_BROKER_URL`` set; docs/pacs-broker.md): ``python -m pacs poller`` queues
the stable series and keeps the state (one poller on the state file; with ``PACS_STATE_URL``,
several on any machines, one of them holding the lease); ``python -m pacs`` (N, on any
machine) takes them. ``list`` and ``requeue`` then run against the pollers' state.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from datetime import UTC, datetime
from types import FrameType

from prometheus_client import start_http_server

from pacs.broker import BrokerWorker, Poller, stateless_worker
from pacs.settings import WorkerSettings
from pacs.state import STATUSES, SeriesState, StateDB
from pacs.worker import Worker


def list_columns(row: SeriesState) -> tuple[str, ...]:
    """One series as ``list`` prints it: UID, status, failure class, attempts (and how many
    ended in an unexpected error), next attempt (UTC, for ``retry`` and ``blocked``), result,
    reason (the last failure's while a retried attempt is under way)."""
    due = row.status in ("retry", "blocked") and row.next_attempt > 0
    when = datetime.fromtimestamp(row.next_attempt, UTC).strftime("%H:%M:%SZ") if due else "-"
    attempts = f"attempts {row.attempts}" + (f", errors {row.errors}" if row.errors else "")
    return (row.series_uid, row.status, row.failure_class or "-", attempts, f"next {when}",
            row.result or "-", row.reason or "")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pacs", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    listing = commands.add_parser("list", help="the series in the state file")
    listing.add_argument("--status", nargs="+", choices=STATUSES, default=list(STATUSES))
    requeue = commands.add_parser("requeue", help="failed/skipped/blocked series due again")
    requeue.add_argument(
        "--status", nargs="+", choices=("failed", "skipped", "blocked"),
        default=["failed", "skipped", "blocked"],
    )  # fmt: skip
    requeue.add_argument("series", nargs="*", help="only these SeriesInstanceUIDs")
    commands.add_parser("poller", help="queue stable series on the broker (PACS_BROKER_URL)")
    args = parser.parse_args(argv)
    settings = WorkerSettings()
    if args.command == "list":
        state = StateDB(settings.state_location, resume=False)
        for row in state.all():
            if row.status in args.status:
                print("\t".join(list_columns(row)))
        state.close()
        return 0
    if args.command == "requeue":
        state = StateDB(settings.state_location, resume=False)
        count = state.requeue(tuple(args.status), tuple(args.series))
        state.close()
        print(f"{count} series re-queued")
        return 0
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("dicomweb_client", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("pika").setLevel(logging.CRITICAL)  # pacs.broker logs what it sees
    log = logging.getLogger("pacs")
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.metrics_host)
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)
    if args.command == "poller" and not settings.broker_url:
        parser.error("the poller needs PACS_BROKER_URL (or BROKER_URL)")
    if args.command is None and settings.state_url and not settings.broker_url:
        parser.error("PACS_STATE_URL is the broker pollers' shared state: the single-process "
                     "worker keeps its state in PACS_STATE_DB")  # fmt: skip
    worker: Worker
    runner: Worker | BrokerWorker
    if args.command == "poller":  # the lease holder writes the state; jobs under way stay so
        state = StateDB(settings.state_location, resume=False)
        worker = runner = Poller(settings, state)
    elif settings.broker_url:  # a broker worker keeps no state file
        worker = stateless_worker(settings)
        state = worker.state
        runner = BrokerWorker(settings, worker)
    else:
        state = StateDB(settings.state_db)
        worker = runner = Worker(settings, state)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: finishing the series under way, then stopping", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        finished = runner.run()
    except BaseException:
        state.close()
        raise
    if not finished:
        # Threads blocked in a call are abandoned, not joined: every state write is its own
        # committed transaction, and their series are still ``processing``, due at next start.
        logging.shutdown()
        os._exit(0)
    state.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
