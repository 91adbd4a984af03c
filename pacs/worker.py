"""The worker loop: QIDO-RS polling -> stable CT series -> WADO-RS -> the API -> STOW-RS.

Each poll lists the PACS's series. A series is taken once its instance count has stayed the
same for ``stable_seconds`` (it has finished arriving) and it is a CT series that neither the
state file nor the PACS says is done. Non-CT series and the worker's own outputs are
recorded as skipped with a logged reason. Work runs on a small thread pool
(``concurrency``); a failure that may pass (PACS or API down, 5xx, timeout) is retried with
exponential back-off up to ``max_attempts``; a series the API refuses (nothing decodable) is
skipped. The worker only ever adds new series to a study; it never deletes or changes
anything.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from pydicom.dataset import Dataset

from pacs import VERDICTS
from pacs.clients import (
    ApiClient,
    PacsClient,
    PermanentError,
    SeriesRef,
    TransientError,
    dataset_bytes,
)
from pacs.dicom_out import build_heatmaps, build_sr, is_own_output, output_uids
from pacs.settings import WorkerSettings
from pacs.state import StateDB

log = logging.getLogger("pacs.worker")

SERIES_PROCESSED = Counter(
    "pacs_series_processed_total", "Series whose results were stored in the PACS.", ["result"]
)
SERIES_FAILED = Counter("pacs_series_failed_total", "Failed attempts at a series.", ["kind"])
SERIES_SKIPPED = Counter("pacs_series_skipped_total", "Series skipped.", ["reason"])
SERIES_LATENCY = Histogram(
    "pacs_series_latency_seconds",
    "Time from taking a series to its results stored (retrieve + API + store).",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
POLLS = Counter("pacs_polls_total", "Polls of the PACS (QIDO-RS).", ["outcome"])
PACS_UP = Gauge("pacs_up", "1 when the last poll of the PACS succeeded.")
IN_FLIGHT = Gauge("pacs_series_in_flight", "Series being processed now.")


@dataclass
class _Seen:
    count: int
    since: float


class Worker:
    """Polls the PACS and processes new CT series; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        settings: WorkerSettings,
        state: StateDB,
        pacs: PacsClient | None = None,
        api: ApiClient | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.pacs = pacs or PacsClient(settings)
        self.api = api or ApiClient(settings)
        self.stop = threading.Event()
        self._seen: dict[str, _Seen] = {}
        self._in_flight: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="series")
        self._poll_failures = 0

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> None:
        """Poll until ``stop`` is set, then wait for the series under way."""
        log.info(
            "watching %s (poll %.0fs, stable after %.0fs, concurrency %d), API %s",
            self.settings.dicomweb_url,
            self.settings.poll_seconds,
            self.settings.stable_seconds,
            self.settings.concurrency,
            self.settings.api_url,
        )
        try:
            while not self.stop.is_set():
                self.stop.wait(self.poll_once())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def poll_once(self) -> float:
        """One poll: dispatch what is due; returns the seconds to wait before the next."""
        self._reap()
        try:
            series = self.pacs.list_series()
        except Exception as exc:
            self._poll_failures += 1
            POLLS.labels("error").inc()
            PACS_UP.set(0)
            delay = min(
                self.settings.poll_seconds * 2 ** min(self._poll_failures, 16),
                self.settings.backoff_max_seconds,
            )
            log.warning("PACS not reachable (%s); next try in %.0fs", exc, delay)
            return delay
        self._poll_failures = 0
        POLLS.labels("ok").inc()
        PACS_UP.set(1)
        now = time.time()
        for ref in series:
            if self._due(ref, now) and len(self._in_flight) < self.settings.concurrency:
                self._in_flight[ref.series_uid] = self._pool.submit(self._process, ref)
                IN_FLIGHT.set(len(self._in_flight))
        return self.settings.poll_seconds

    def _reap(self) -> None:
        for uid, future in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[uid]
                if future.exception() is not None:  # _process catches everything it expects
                    log.error("series %s: unexpected error: %s", uid, future.exception())
        IN_FLIGHT.set(len(self._in_flight))

    def _due(self, ref: SeriesRef, now: float) -> bool:
        """Whether to start on ``ref`` now (recording skips on the way)."""
        if ref.series_uid in self._in_flight:
            return False
        current = self.state.get(ref.series_uid)
        if current is not None:
            if current.status in ("skipped", "failed"):
                return False
            if current.status == "done" and current.instance_count == ref.instance_count:
                return False
            if current.status == "retry" and now < current.next_attempt:
                return False
        if self.state.is_own_output(ref.series_uid) or is_own_output(_described(ref)):
            self.state.skip(ref.series_uid, ref.study_uid, "own output", own_output=True)
            log.info("series %s: skipped, one of this worker's outputs", ref.series_uid)
            SERIES_SKIPPED.labels("own_output").inc()
            return False
        if ref.modality.upper() != "CT":
            reason = f"modality {ref.modality or 'missing'}, not CT"
            self.state.skip(ref.series_uid, ref.study_uid, reason)
            log.info("series %s: skipped, %s", ref.series_uid, reason)
            SERIES_SKIPPED.labels("not_ct").inc()
            return False
        if ref.instance_count > self.settings.max_slices:
            reason = f"{ref.instance_count} instances, over PACS_MAX_SLICES"
            self.state.skip(ref.series_uid, ref.study_uid, reason)
            log.info("series %s: skipped, %s", ref.series_uid, reason)
            SERIES_SKIPPED.labels("too_large").inc()
            return False
        return self._stable(ref, now)

    def _stable(self, ref: SeriesRef, now: float) -> bool:
        """Whether the instance count has stayed put for ``stable_seconds``."""
        seen = self._seen.get(ref.series_uid)
        if seen is None or seen.count != ref.instance_count:
            self._seen[ref.series_uid] = _Seen(ref.instance_count, now)
            return self.settings.stable_seconds == 0
        return now - seen.since >= self.settings.stable_seconds

    # ---- one series ---------------------------------------------------------------------
    def _process(self, ref: SeriesRef) -> None:
        start = time.perf_counter()
        attempt = self.state.start(ref.series_uid, ref.study_uid, ref.instance_count)
        try:
            result = self._process_series(ref)
        except PermanentError as exc:
            self.state.skip(ref.series_uid, ref.study_uid, str(exc))
            log.warning("series %s: skipped, %s", ref.series_uid, exc)
            SERIES_SKIPPED.labels("unreadable").inc()
            return
        except Exception as exc:
            kind = "transient" if isinstance(exc, TransientError) else "error"
            SERIES_FAILED.labels(kind).inc()
            reason = f"{type(exc).__name__}: {exc}"[:500]
            if attempt >= self.settings.max_attempts:
                self.state.fail(ref.series_uid, ref.study_uid, reason)
                log.error(
                    "series %s: failed after %d attempts: %s", ref.series_uid, attempt, reason
                )
                return
            delay = min(
                self.settings.backoff_seconds * 2 ** (attempt - 1),
                self.settings.backoff_max_seconds,
            )
            self.state.retry(ref.series_uid, ref.study_uid, reason, time.time() + delay)
            log.warning(
                "series %s: attempt %d failed (%s); retry in %.0fs",
                ref.series_uid,
                attempt,
                reason,
                delay,
            )
            return
        if result is not None:
            SERIES_PROCESSED.labels(result).inc()
            SERIES_LATENCY.observe(time.perf_counter() - start)

    def _process_series(self, ref: SeriesRef) -> str | None:
        """Retrieve, ask the API, store the SR and heatmaps; returns the verdict stored."""
        datasets = self.pacs.retrieve_series(ref.study_uid, ref.series_uid)
        if any(is_own_output(ds) for ds in datasets):
            self.state.skip(ref.series_uid, ref.study_uid, "own output", own_output=True)
            SERIES_SKIPPED.labels("own_output").inc()
            return None
        slices = [
            ds
            for ds in datasets
            if str(ds.get("Modality", "")).upper() == "CT" and "PixelData" in ds
        ]
        if not slices:
            raise PermanentError("no CT image instances in the series")
        uids = output_uids(ref.series_uid, len(datasets))
        if self.pacs.series_exists(ref.study_uid, uids.sr_series):
            # Results stored by an earlier run whose state was lost: the PACS says done.
            self.state.done(
                ref.series_uid,
                ref.study_uid,
                instance_count=ref.instance_count,
                result="(already in the PACS)",
                sr_uid=uids.sr_instance,
                sr_series_uid=uids.sr_series,
                sc_series_uid=uids.sc_series,
                reason="results found in the PACS",
            )
            log.info(
                "series %s: results already in the PACS (SR series %s)",
                ref.series_uid,
                uids.sr_series,
            )
            return None
        files = [(f"{ds.SOPInstanceUID}.dcm", dataset_bytes(ds)) for ds in slices]
        study = self.api.predict_study(files)
        verdict = str(study.get("result"))
        if verdict not in VERDICTS:
            raise PermanentError(f"the API answered an unknown result {verdict!r}")
        heatmaps = build_heatmaps(study, slices, uids)
        sc_series = uids.sc_series if heatmaps else None
        sr = build_sr(study, slices, uids, sc_series)
        # Heatmaps first, the SR last: an SR in the PACS means everything is there.
        outputs: list[Dataset] = [*heatmaps, sr]
        self.pacs.store(outputs, ref.study_uid)
        self.state.done(
            ref.series_uid,
            ref.study_uid,
            instance_count=ref.instance_count,
            result=verdict,
            sr_uid=uids.sr_instance,
            sr_series_uid=uids.sr_series,
            sc_series_uid=sc_series,
        )
        log.info(
            "series %s: %s (score %.3f, threshold %.3f, %d slices); SR %s, %d heatmap(s)",
            ref.series_uid,
            verdict,
            float(study["prediction"]),
            float(study["threshold"]),
            len(slices),
            uids.sr_instance,
            len(heatmaps),
        )
        return verdict


def _described(ref: SeriesRef) -> Dataset:
    dataset = Dataset()
    dataset.SeriesDescription = ref.description
    return dataset
