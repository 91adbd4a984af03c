"""Dynamic micro-batching around one function: the forward pass.

Sync routes run in FastAPI's threadpool, each blocking on its own model call. Under
load that means N tiny forward passes fighting over the same cores. Here callers hand
their images to one worker thread instead; it takes whatever is queued (up to
``max_size`` images), runs the wrapped forward once over all of it and gives each caller
its own rows back through a ``Future``. Like Ray Serve's ``@serve.batch`` it wraps one
function (:class:`BatchedForward` is a forward too), not a service.

Waiting for company costs latency, so the worker only waits (at most ``max_wait_s``
after the batch's first request) while other requests are *on their way*: announced
with :meth:`MicroBatcher.incoming` (the route is decoding their upload) but not yet
submitted. A lone client never waits, and requests that queued up while the previous
batch was running are taken at once.

A batch that fails is re-run one request at a time, so one bad input only fails its
own caller. Each caller gets its own rows of every output (``ForwardOutput.rows``: a study
bundle's slice features too).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from ml_model.inference.forward import Forward, ForwardOutput, ModelUnavailableError

logger = logging.getLogger(__name__)

SHUTTING_DOWN_DETAIL = "the server is shutting down; retry on another instance"


@dataclass
class _Request:
    images: np.ndarray
    future: Future[ForwardOutput] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


class MicroBatcher:
    """One worker thread that groups queued ``run`` calls into batches of images."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], ForwardOutput],
        max_size: int = 16,
        max_wait_s: float = 0.002,
        name: str = "micro-batcher",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._forward = forward
        self.max_size = max_size
        self.max_wait_s = max(0.0, max_wait_s)
        self._cond = threading.Condition()
        self._queue: deque[_Request] = deque()
        self._announced = 0  # inside incoming(), not submitted yet
        self._local = threading.local()
        self._closed = False
        self.model_calls = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    # --- callers ---------------------------------------------------------------------

    @contextlib.contextmanager
    def incoming(self) -> Iterator[None]:
        """Announce a request that will call :meth:`run` soon from this thread.

        While it decodes its upload, a worker holding a batch waits for it (up to
        ``max_wait_s``); leaving the block without submitting withdraws it.
        """
        with self._cond:
            self._announced += 1
        self._local.announced = getattr(self._local, "announced", 0) + 1
        try:
            yield
        finally:
            if getattr(self._local, "announced", 0) > 0:
                self._withdraw()

    def _withdraw(self) -> None:
        self._local.announced -= 1
        with self._cond:
            self._announced -= 1
            self._cond.notify_all()

    def submit(self, images: np.ndarray) -> Future[ForwardOutput]:
        request = _Request(np.asarray(images))
        announced = getattr(self._local, "announced", 0) > 0
        with self._cond:
            if self._closed:
                raise ModelUnavailableError(SHUTTING_DOWN_DETAIL)
            self._queue.append(request)
            self.requests += 1
            if announced:
                self._local.announced -= 1
                self._announced -= 1
            self._cond.notify_all()
        return request.future

    def run(self, images: np.ndarray) -> ForwardOutput:
        """Blocking: this caller's rows of the batched model call."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[np.newaxis]
        return self.submit(images).result()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop taking requests, finish the queued ones, stop the worker thread."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("micro-batcher did not stop in time")

    # --- worker ----------------------------------------------------------------------

    def _take_batch(self) -> list[_Request] | None:
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            batch = [self._queue.popleft()]
            size = len(batch[0].images)
            deadline = batch[0].enqueued + self.max_wait_s
            while size < self.max_size:
                if self._queue:
                    following = len(self._queue[0].images)
                    if size + following > self.max_size:
                        break
                    batch.append(self._queue.popleft())
                    size += following
                    continue
                # Nothing queued: wait only for requests already on their way.
                remaining = deadline - time.monotonic()
                if self._announced <= 0 or self._closed or remaining <= 0:
                    break
                self._cond.wait(remaining)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            # A caller may have cancelled its future while it was queued: drop it (its
            # future can no longer take a result), and mark the others running so that
            # they cannot be cancelled any more.
            batch = [request for request in batch if request.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            try:
                self._execute(batch)
            except BaseException as exc:  # never leave a caller waiting forever
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise

    def _execute(self, batch: list[_Request]) -> None:
        try:
            if len(batch) == 1:
                images = batch[0].images
            else:
                images = np.concatenate([request.images for request in batch])
            self.model_calls += 1
            output = self._forward(images)
            if len(output) != len(images):
                raise RuntimeError(
                    f"the model returned {len(output)} results for {len(images)} images"
                )
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            # Isolate the failure: each request alone, so only the bad one fails.
            for request in batch:
                self._execute([request])
            return
        start = 0
        for request in batch:
            stop = start + len(request.images)
            request.future.set_result(output.rows(start, stop))
            start = stop


class BatchedForward:
    """A :class:`~ml_model.inference.forward.Forward` whose calls go through a
    :class:`MicroBatcher` in front of ``inner``."""

    def __init__(self, inner: Forward, max_size: int = 16, max_wait_s: float = 0.002) -> None:
        self.inner = inner
        self.batcher = MicroBatcher(inner, max_size, max_wait_s)

    def __call__(self, images: np.ndarray) -> ForwardOutput:
        return self.batcher.run(images)

    @property
    def has_features(self) -> bool:
        """Whether the inner forward's graph returns slice features (a study bundle's)."""
        return bool(getattr(self.inner, "has_features", True))

    def incoming(self) -> contextlib.AbstractContextManager[None]:
        """Announce an upcoming call from this thread (see :meth:`MicroBatcher.incoming`)."""
        return self.batcher.incoming()

    def is_ready(self) -> bool:
        return not self.batcher.closed and self.inner.is_ready()

    def close(self) -> None:
        self.batcher.close()
        self.inner.close()
