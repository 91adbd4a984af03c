"""The request's memory budget applied to what it decodes (``core/admission.py`` holds the
budget; ``ml_model.imaging.formats.estimate_decode_cost`` estimates a file's decoding memory
from its headers, by its format's estimator in ``ml_model/imaging/budget.py``).

:func:`decode_guard` is the inference core's decode hook (``InferenceCore.with_decode_guard``):
every decode, in every route and inside the core's study loop, first estimates its peak
memory, refuses the file (413, ``ImageTooLargeError``: a batch or a study lists it among its
errors) when that is over what the request may still hold, and otherwise holds it in the
budget while decoding (503 with ``Retry-After`` when the process has no room).
"""

from __future__ import annotations

import contextlib
import os
import threading

from backend.app.core.admission import AdmissionError, current_ledger
from ml_model.imaging.budget import DecodeCost, is_deflated_dicom
from ml_model.imaging.errors import ImageTooLargeError
from ml_model.imaging.formats import estimate_decode_cost

# A Grad-CAM overlay holds ~100 bytes per pixel while it is drawn (float colour maps).
HEATMAP_BYTES_PER_PIXEL = 100
# Niceness of the threads that decode (the event loop's thread keeps 0).
WORKER_NICENESS = 5


def _refusal(cost: DecodeCost) -> ImageTooLargeError | None:
    ledger = current_ledger()
    if ledger is None or cost.bytes <= ledger.room:
        return None
    return ImageTooLargeError(ledger.over_limit(cost.bytes, f"decoding {cost.describe()}").detail)


def decode_guard(data: bytes) -> contextlib.AbstractContextManager[object]:
    """Hold a file's estimated decoding memory in the current request's budget (no-op outside
    a request). Raises ``ImageTooLargeError`` (413) over the request's limit, or a structure
    limit; ``AdmissionError`` (503) when the process budget is full."""
    ledger = current_ledger()
    if ledger is None:
        return contextlib.nullcontext()
    lower_thread_priority()
    cost = estimate_decode_cost(data, ledger.limit)
    if cost is None:  # headers unreadable: the decoder refuses it, cheaply, with the reason
        return contextlib.nullcontext()
    refusal = _refusal(cost)
    if refusal is not None:
        raise refusal
    return ledger.decoding(cost.bytes, f"decoding {cost.describe()}")


_niced = threading.local()


def lower_thread_priority() -> None:
    """Run this worker thread's CPU work (decoding, drawing) at a lower priority than the
    event loop's thread, once per thread: a burst of large images then queues behind the
    loop, which keeps answering probes and reading uploads (Linux; elsewhere a no-op)."""
    if getattr(_niced, "done", False):
        return
    _niced.done = True
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WORKER_NICENESS)


def precheck_slice(data: bytes) -> str | None:
    """Why a study slice must not even be ordered, or None. Ordering parses each DICOM
    header, and pydicom inflates a deflated dataset whole to do so (a 389 KiB file: 800 MB):
    such files are sized in bounded chunks first."""
    ledger = current_ledger()
    if ledger is None or not is_deflated_dicom(data):
        return None
    try:
        cost = estimate_decode_cost(data, ledger.limit)
    except ImageTooLargeError as exc:
        return str(exc)
    refusal = _refusal(cost) if cost is not None else None
    return str(refusal) if refusal is not None else None


def heatmap_hold(pixels: int) -> contextlib.AbstractContextManager[object]:
    """Hold the memory of drawing one heatmap of ``pixels`` pixels (no-op outside a request)."""
    ledger = current_ledger()
    if ledger is None:
        return contextlib.nullcontext()
    return ledger.holding(pixels * HEATMAP_BYTES_PER_PIXEL, "drawing the heatmap")


def reserve(size: int, what: str) -> None:
    """Hold ``size`` bytes for the rest of the request (a zip's unpacked members)."""
    ledger = current_ledger()
    if ledger is not None:
        ledger.reserve(size, what)


__all__ = ["AdmissionError", "decode_guard", "heatmap_hold", "precheck_slice", "reserve"]
