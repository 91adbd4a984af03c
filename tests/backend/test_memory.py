"""backend.app.core.memory: the malloc arena cap, applied on glibc, never over an explicit
MALLOC_ARENA_MAX; and the release of freed memory, which collects reference cycles first.
Their effect on RSS is measured by tests/load (the soak)."""

from __future__ import annotations

import gc
import platform
import sys
import weakref

import pytest

from backend.app.core.memory import limit_malloc_arenas, release_free_memory


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


class _Frame:
    """Stands for what a failed decode leaves behind: a buffer in a reference cycle."""

    def __init__(self) -> None:
        self.buffer = bytearray(8 * 1024 * 1024)
        self.itself = self


def test_release_frees_buffers_held_in_reference_cycles() -> None:
    held = _Frame()
    alive = weakref.ref(held)
    del held
    gc.disable()  # what a busy server amounts to: no full collection due yet
    try:
        assert alive() is not None
        release_free_memory()
        assert alive() is None
    finally:
        gc.enable()
