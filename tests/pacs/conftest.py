"""Fixtures of the PACS tests."""

from __future__ import annotations

import pytest

from pacs.orthanc import OrthancUnavailable, find_orthanc
from pacs.rabbitmq import RabbitUnavailable, find_rabbitmq


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
