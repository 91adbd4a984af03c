"""Dynamic micro-batching: concurrent requests share one model call.

Sync routes run in FastAPI's threadpool, each blocking on its own model call. Under
load that means N tiny forward passes fighting over the same cores. Here the routes
hand their images to one worker thread instead; it takes whatever is queued (up to
``max_size`` images), runs a single ``run`` over all of it and gives each caller its
own rows back through a ``Future``.

Waiting for company costs latency, so the worker only waits (at most ``max_wait_s``
after the batch's first request) while other requests are *on their way*: announced
with :meth:`MicroBatcher.incoming` (the route is decoding their upload) but not yet
submitted. A lone client never waits, and requests that queued up while the previous
batch was running are taken at once.

A batch that fails is re-run one request at a time, so one bad input only fails its
own caller.
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
from typing import Any

import numpy as np

from backend.app.core.logging import LOGGER_NAME
from backend.app.services.inference import (
    InferenceService,
    InferenceUnavailableError,
    LocalInference,
)
from ml_model.predictor import DEFAULT_OPERATING_POINT, Prediction

logger = logging.getLogger(LOGGER_NAME)

SHUTTING_DOWN_DETAIL = "the server is shutting down; retry on another instance"


@dataclass
class _Request:
    images: np.ndarray
    future: Future[Prediction] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


def _rows(prediction: Prediction, start: int, stop: int) -> Prediction:
    distances = prediction.ood_distances
    return Prediction(
        probabilities=prediction.probabilities[start:stop],
        features=prediction.features[start:stop],
        ood_distances=None if distances is None else distances[start:stop],
        in_distribution=prediction.in_distribution[start:stop],
    )


class MicroBatcher:
    """One worker thread that groups queued ``run`` calls into batches of images."""

    def __init__(
        self,
        run: Callable[[np.ndarray], Prediction],
        max_size: int = 16,
        max_wait_s: float = 0.002,
        name: str = "micro-batcher",
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
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

    def submit(self, images: np.ndarray) -> Future[Prediction]:
        request = _Request(np.asarray(images))
        announced = getattr(self._local, "announced", 0) > 0
        with self._cond:
            if self._closed:
                raise InferenceUnavailableError(SHUTTING_DOWN_DETAIL)
            self._queue.append(request)
            self.requests += 1
            if announced:
                self._local.announced -= 1
                self._announced -= 1
            self._cond.notify_all()
        return request.future

    def run(self, images: np.ndarray) -> Prediction:
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
            prediction = self._run(images)
            if len(prediction.probabilities) != len(images):
                raise RuntimeError(
                    f"the model returned {len(prediction.probabilities)} results "
                    f"for {len(images)} images"
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
            request.future.set_result(_rows(prediction, start, stop))
            start = stop


class BatchingInference:
    """An :class:`InferenceService` whose ``run`` goes through a :class:`MicroBatcher`."""

    def __init__(self, inner: InferenceService, max_size: int = 16, max_wait_s: float = 0.002):
        self.inner = inner
        self.batcher = MicroBatcher(lambda images: self.inner.run(images), max_size, max_wait_s)

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def version(self) -> str:
        return self.inner.version

    @property
    def img_size(self) -> int:
        return self.inner.img_size

    @property
    def card(self) -> dict[str, Any]:
        return self.inner.card

    def incoming(self) -> contextlib.AbstractContextManager[None]:
        return self.batcher.incoming()

    def run(self, images: np.ndarray) -> Prediction:
        return self.batcher.run(images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.run(images).probabilities

    def gradcam(self, image: np.ndarray) -> np.ndarray:
        return self.inner.gradcam(image)

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        return self.inner.threshold(operating_point)

    def study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        return self.inner.study_threshold(operating_point)

    def warm_up(self) -> None:
        self.inner.warm_up()
        if isinstance(self.inner, LocalInference):
            # Through the batcher once, at the largest batch size it will form.
            blank = np.zeros((self.batcher.max_size, self.img_size, self.img_size, 3), np.uint8)
            self.run(blank)

    def is_ready(self) -> bool:
        return not self.batcher.closed and self.inner.is_ready()

    def close(self) -> None:
        self.batcher.close()
        self.inner.close()


def incoming(service: InferenceService) -> contextlib.AbstractContextManager[None]:
    """Announce an upcoming single-image ``run`` to a batching service (no-op otherwise)."""
    if isinstance(service, BatchingInference):
        return service.incoming()
    return contextlib.nullcontext()
