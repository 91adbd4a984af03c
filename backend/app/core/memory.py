"""Keep the server's resident memory from creeping up under sustained concurrent load.

glibc's malloc gives threads up to 8 x CPU-count arenas, and each arena keeps its own
high-water mark of freed memory. The API decodes uploads on ~40 threadpool threads,
so under concurrent traffic (uploads of a few MB, decoded images, TensorFlow buffers)
RSS climbs in steps: the 10,000-request soak (``tests/load/soak.py``) went from 0.8 to
1.06-1.37 GiB (+29 %, +32 %) and was still climbing. Nothing leaks (the same run with
a fixed mmap threshold stays flat, at 4x the CPU cost); the memory is retained.
Capping the arenas at 2 kept growth within a few percent, at the same CPU per request
(3 interleaved A/B runs of 2,000 requests each).

An explicit ``MALLOC_ARENA_MAX`` in the environment wins (glibc reads it at start);
nothing happens off glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_ARENA_MAX = -8  # from glibc's malloc.h
DEFAULT_ARENA_MAX = 2


def limit_malloc_arenas(arenas: int = DEFAULT_ARENA_MAX) -> bool:
    """Cap glibc malloc arenas for threads that start from now on; True if applied."""
    if not sys.platform.startswith("linux") or "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
    except (OSError, AttributeError):
        return False
    del gnu_get_libc_version
    return bool(libc.mallopt(M_ARENA_MAX, arenas))
