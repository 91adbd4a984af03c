"""Fixtures of the PACS tests."""

from __future__ import annotations

import pytest

from pacs.orthanc import OrthancUnavailable, find_orthanc


@pytest.fixture(scope="module")
def orthanc_installed() -> None:
    """Skips, saying why, where Orthanc or its DICOMweb plugin is not installed."""
    try:
        find_orthanc()
    except OrthancUnavailable as exc:
        pytest.skip(str(exc))
