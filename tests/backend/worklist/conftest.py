"""The worklist's databases for its tests: a SQLite file, and a real PostgreSQL server
(the session's ``postgres`` fixture, tests/conftest.py: a fresh database per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from backend.app.worklist.store import WorklistStore
from testing.postgres import PostgresServer

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database: a SQLite file, then a PostgreSQL database (every test twice)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'worklist.sqlite3'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()


@pytest.fixture
def store(database_url: str) -> Iterator[WorklistStore]:
    """The store over ``database_url``, its schema upgraded to head as at start-up."""
    opened = WorklistStore(database_url)
    opened.migrate()
    yield opened
    opened.close()
