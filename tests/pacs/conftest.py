"""Fixtures of the PACS tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest

from pacs.orthanc import OrthancUnavailable, find_orthanc
from pacs.rabbitmq import RabbitUnavailable, find_rabbitmq
from testing.postgres import PostgresServer


@pytest.fixture(scope="module")
def orthanc_installed() -> None:
    """Skips, saying why, where Orthanc or its DICOMweb plugin is not installed."""
    try:
        find_orthanc()
    except OrthancUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def rabbitmq_installed() -> None:
    """Skips, saying why, where Debian's rabbitmq-server is not installed."""
    try:
        find_rabbitmq()
    except RabbitUnavailable as exc:
        pytest.skip(str(exc))


STATE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=STATE_BACKENDS)
def new_state(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Path | str]:
    """A maker of empty states (``StateDB``'s location): SQLite files, then fresh databases
    on a real PostgreSQL server (each test twice; PostgreSQL skipped, saying why, where its
    server is not installed)."""
    if request.param == "sqlite":
        names = itertools.count()
        return lambda: tmp_path / f"state-{next(names)}.sqlite3"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database
