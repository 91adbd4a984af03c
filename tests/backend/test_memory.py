"""The malloc arena cap (backend.app.core.memory): applied on glibc, never over an explicit
MALLOC_ARENA_MAX. Its effect on RSS is measured by tests/load (the soak)."""

from __future__ import annotations

import platform
import sys

import pytest

from backend.app.core.memory import limit_malloc_arenas


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc only",
)
def test_arena_cap_is_applied_on_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert limit_malloc_arenas() is True


def test_an_explicit_malloc_arena_max_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert limit_malloc_arenas() is False
