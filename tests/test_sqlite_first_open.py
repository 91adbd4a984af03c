"""The product's two SQLite files (the PACS worker's state, the API's worklist) opened for the
first time by several connections at once: pollers or API processes starting together.

Each connection switches the file to WAL; SQLite answers the losers of that race "database is
locked" at once, without waiting for the busy timeout (a CI failure of
``tests/pacs/test_poller_lease.py``). Here every round starts four connections on a fresh file
behind a barrier: without the retry about one round in six fails, so 25 rounds fail nearly
always."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from backend.app.worklist.store import create_store_engine
from pacs.state import state_engine

ROUNDS = 25
CONNECTIONS = 4


def open_together(engines: list[Engine]) -> tuple[list[BaseException], list[str]]:
    """Each engine connects at the same moment; (errors, journal modes)."""
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []
    modes: list[str] = []

    def connect(engine: Engine) -> None:
        barrier.wait()
        try:
            with engine.connect() as db:
                modes.append(db.execute(text("PRAGMA journal_mode")).scalar_one())
        except Exception as error:  # any failure to open is the finding
            errors.append(error)

    threads = [threading.Thread(target=connect, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors, modes


@pytest.mark.parametrize(
    "open_engine",
    [
        pytest.param(lambda path: state_engine(path), id="pacs-state"),
        pytest.param(lambda path: create_store_engine(f"sqlite:///{path}"), id="worklist"),
    ],
)
def test_connections_opening_a_new_file_together(
    open_engine: Callable[[Path], Engine], tmp_path: Path
) -> None:
    for round_ in range(ROUNDS):
        engines = [open_engine(tmp_path / f"round-{round_}.sqlite3") for _ in range(CONNECTIONS)]
        try:
            errors, modes = open_together(engines)
        finally:
            for engine in engines:
                engine.dispose()
        assert errors == [], f"round {round_}: {errors[0]}"
        assert modes == ["wal"] * CONNECTIONS
