"""Admission control: a memory budget per request and for the process, and a cap on studies.

Every request gets a :class:`RequestLedger` of what it holds: its body as it arrives, a
zip's unpacked members, each image while it is being decoded (estimated from the headers
before any pixel is decoded: ``ml_model.imaging.budget``). The ledger draws on the
process-wide :class:`MemoryBudget`.

* A request that would hold more than ``MAX_REQUEST_MEMORY_MB`` is refused with 413 and
  the reason (what it needed, what it already held).
* A request that fits its own limit but not the memory left in the process is refused
  with 503 and ``Retry-After``: the server answers "busy" instead of swapping.
* Routes whose policy says ``study_slot`` (``core/policy.py``: ``/predict/study`` and
  ``/report``) take one of ``MAX_CONCURRENT_STUDIES`` slots; none free: 503 and
  ``Retry-After``.

The ledger of the request being handled is in a context variable (:func:`current_ledger`):
FastAPI copies the context into the threadpool, so sync routes and the inference core's
decode hook see it without passing it along. When the budget has been busy and empties,
freed memory is handed back to the operating system (``malloc_trim``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass

MIB = 1024 * 1024
RETRY_AFTER_S = 5
# When the budget empties after at least this much was released since the last time: give
# freed memory back to the system (a soak at concurrency 32 grew 760 -> 1,170 MiB of freed
# but retained heap; one trim at its end brought it back to 761).
TRIM_AFTER_BYTES = 32 * MIB


class AdmissionError(Exception):
    """A request refused for its memory or for the studies in flight (413 or 503)."""

    def __init__(self, status_code: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


def _cpus() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def mib(size: int) -> str:
    return f"{size / MIB:,.0f}"


class MemoryBudget:
    """Bytes held by requests in flight, process-wide (thread-safe); and the decodes that
    may run at once (``decoders``: one per CPU, so that a burst of large images queues for
    the cores instead of starving the event loop, which answers ``/ready``)."""

    def __init__(self, capacity: int, decoders: int | None = None) -> None:
        self.capacity = capacity
        self.used = 0
        self.released_since_trim = 0
        self._lock = threading.Lock()
        self.decoders = threading.BoundedSemaphore(decoders or _cpus())

    def try_take(self, size: int) -> bool:
        with self._lock:
            if self.used + size > self.capacity:
                return False
            self.used += size
            return True

    def give(self, size: int) -> bool:
        """Return ``size`` bytes; True when the budget is now empty and at least
        :data:`TRIM_AFTER_BYTES` went through it since the last trim (time to give freed
        memory back to the system)."""
        with self._lock:
            self.used = max(self.used - size, 0)
            self.released_since_trim += size
            if self.used == 0 and self.released_since_trim >= TRIM_AFTER_BYTES:
                self.released_since_trim = 0
                return True
            return False


class StudySlots:
    """At most ``capacity`` studies at once; taking a slot never waits."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self._lock = threading.Lock()

    def try_take(self) -> bool:
        with self._lock:
            if self.busy >= self.capacity:
                return False
            self.busy += 1
            return True

    def give(self) -> None:
        with self._lock:
            self.busy = max(self.busy - 1, 0)


@dataclass
class RequestLedger:
    """What one request holds of the process budget, under its own limit (thread-safe)."""

    budget: MemoryBudget
    limit: int
    held: int = 0
    trim_due: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def room(self) -> int:
        """Bytes this request may still take under its own limit."""
        return max(self.limit - self.held, 0)

    def over_limit(self, size: int, what: str) -> AdmissionError:
        held = f" on top of the {mib(self.held)} MiB this request holds" if self.held >= MIB else ""
        return AdmissionError(
            413,
            f"{what} needs about {mib(size)} MiB of memory{held}, over the limit of "
            f"{mib(self.limit)} MiB per request",
        )

    def reserve(self, size: int, what: str) -> None:
        """Take ``size`` bytes: 413 over this request's limit, 503 when the process is full."""
        if size <= 0:
            return
        with self._lock:
            if self.held + size > self.limit:
                raise self.over_limit(size, what)
            if not self.budget.try_take(size):
                raise AdmissionError(
                    503,
                    f"the server is busy: requests in flight hold {mib(self.budget.used)} of "
                    f"{mib(self.budget.capacity)} MiB of memory; retry in a few seconds",
                    retry_after=RETRY_AFTER_S,
                )
            self.held += size

    def release(self, size: int) -> None:
        with self._lock:
            size = min(size, self.held)
            self.held -= size
            if self.budget.give(size):
                self.trim_due = True

    def release_all(self) -> None:
        self.release(self.held)

    @contextlib.contextmanager
    def holding(self, size: int, what: str) -> Iterator[None]:
        """Hold ``size`` bytes for the duration of the block."""
        self.reserve(size, what)
        try:
            yield
        finally:
            self.release(size)

    @contextlib.contextmanager
    def decoding(self, size: int, what: str) -> Iterator[None]:
        """Hold ``size`` bytes and one of the process's decode slots (waiting for a slot:
        decoding is CPU work, a slot frees within a second or two)."""
        with self.holding(size, what), self.budget.decoders:
            yield


_LEDGER: contextvars.ContextVar[RequestLedger | None] = contextvars.ContextVar(
    "request_ledger", default=None
)


def current_ledger() -> RequestLedger | None:
    """The ledger of the request being handled (None outside a request: CLI, tests)."""
    return _LEDGER.get()


@contextlib.contextmanager
def ledger_context(ledger: RequestLedger) -> Iterator[None]:
    token = _LEDGER.set(ledger)
    try:
        yield
    finally:
        _LEDGER.reset(token)
