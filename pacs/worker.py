"""The worker loop: QIDO-RS polling -> stable CT series -> WADO-RS -> the API -> STOW-RS.

Each poll lists the PACS's series. A series is taken once its instance count has stayed the
same for ``stable_seconds`` (it has finished arriving) and it is a CT series that neither the
state file nor the PACS says is done. Non-CT series and the worker's own outputs (known by
the UIDs it derived and recorded, never by editable text) are recorded as skipped with a
logged reason. Work runs on a small thread pool (``concurrency``).

Failure classes (``pacs_series_failures_total{failure_class}``): ``transient`` (PACS or API
down, 5xx, timeout: retried with exponential back-off, at least the ``Retry-After`` asked
for, and never final), ``config`` (401/403: ``blocked``, retried after the longest back-off
and at once under a changed configuration), ``permanent`` (the API refuses the series, the
SR cannot be written: ``failed`` at once, with the reason), ``identity`` (the instances
disagree on patient, study or series, or with the study written into: ``failed``, never
analysed) and ``error`` (anything unexpected, a bug: retried up to
``error_max_attempts``, 3 by default, then ``failed``, so it shows within a minute;
:func:`pacs.clients.failure_class` says which class an exception is). An operator re-queues
``failed``/``skipped`` series with ``python -m pacs requeue``.

A series re-analysed because it grew gets a new SR whose Predecessor Documents Sequence
names the earlier SR (superseded); the state row keeps one current result. The worker only
ever adds new series to a study; it never deletes or changes anything.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydicom.dataset import Dataset
from pydicom.uid import ComprehensiveSRStorage

from pacs import VERDICTS
from pacs.clients import (
    ApiClient,
    ConfigError,
    IdentityError,
    PacsClient,
    PermanentError,
    SeriesNotFound,
    SeriesRef,
    TransientError,
    dataset_bytes,
)
from pacs.clients import failure_class as classify
from pacs.dicom_out import build_heatmaps, build_sr, derived_output_series, output_uids
from pacs.settings import WorkerSettings
from pacs.state import SeriesLog, StateDB, errors_after

log = logging.getLogger("pacs.worker")

SERIES_PROCESSED = Counter(
    "pacs_series_processed_total", "Series whose results were stored in the PACS.", ["result"]
)
SERIES_FAILED = Counter(
    "pacs_series_failures_total",
    "Failed attempts at a series, by failure class (transient, config, permanent, identity, "
    "error).",
    ["failure_class"],
)
SERIES_STATUS = Gauge("pacs_series", "Series in the state file, by status.", ["status"])
SERIES_SUPERSEDED = Counter(
    "pacs_series_superseded_total", "SRs replaced by the SR of a re-analysed (grown) series."
)
SERIES_SKIPPED = Counter("pacs_series_skipped_total", "Series skipped.", ["reason"])
SERIES_LATENCY = Histogram(
    "pacs_series_latency_seconds",
    "Time from taking a series to its results stored (retrieve + API + store).",
    buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
POLLS = Counter("pacs_polls_total", "Polls of the PACS (QIDO-RS).", ["outcome"])
PACS_UP = Gauge("pacs_up", "1 when the last poll of the PACS succeeded.")
IN_FLIGHT = Gauge("pacs_series_in_flight", "Series being processed now.")
TIME_TO_WORKLIST = Histogram(
    "pacs_time_to_worklist_seconds",
    "From a series' arrival in the PACS (arrived_at: when the poller saw its last instance "
    "count) to the API's worklist answering 2xx for it.",
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)


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
        self.stop = threading.Event()
        self.pacs = pacs or PacsClient(settings, self.stop)
        self.api = api or ApiClient(settings)
        self.config = settings.config_fingerprint()
        requeued = state.requeue_config(self.config)
        if requeued:
            log.info("configuration changed: %d blocked series re-queued", requeued)
        self._seen: dict[str, _Seen] = {}
        self._in_flight: dict[str, Future[None]] = {}
        self._pool = ThreadPoolExecutor(settings.concurrency, thread_name_prefix="series")
        self._poll_failures = 0

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> bool:
        """Poll until ``stop`` is set, then wait up to ``stop_grace_seconds`` for the series
        under way. Returns whether they all finished: an attempt cut short (an API call that
        takes long) stays ``processing`` in the state file and is tried again at the next
        start, so the caller may exit without waiting for it."""
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
            self._pool.shutdown(wait=False, cancel_futures=True)
            pending = wait(self._in_flight.values(), self.settings.stop_grace_seconds).not_done
            if pending:
                log.warning(
                    "%d series still under way after %.0fs: left to the next start",
                    len(pending),
                    self.settings.stop_grace_seconds,
                )
        return not pending

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
            if isinstance(exc, ConfigError):  # nothing is lost: the series wait in the PACS
                log.error("%s: set PACS_USER / PACS_PASSWORD; next try in %.0fs", exc, delay)
            else:
                log.warning("PACS not reachable (%s); next try in %.0fs", exc, delay)
            return delay
        self._poll_failures = 0
        POLLS.labels("ok").inc()
        PACS_UP.set(1)
        now = time.time()
        own = derived_output_series((ref.series_uid, ref.instance_count) for ref in series)
        # One entry per (series, study): a paged listing read while the PACS takes series in
        # can show one entry twice (the offsets shift). The same study under two patients is
        # caught at retrieval (WADO-RS 404, then the QIDO look-up of its locations).
        listed: dict[str, dict[str, SeriesRef]] = {}
        for ref in series:
            listed.setdefault(ref.series_uid, {})[ref.study_uid] = ref
        for by_study in listed.values():
            refs = list(by_study.values())
            if len(refs) > 1:
                self._refuse_shared(refs)
                continue
            ref = refs[0]
            if self._due(ref, now, own) and len(self._in_flight) < self.settings.concurrency:
                self._dispatch(ref)
        for status, count in self.state.counts().items():
            SERIES_STATUS.labels(status).set(count)
        return self.settings.poll_seconds

    def _dispatch(self, ref: SeriesRef) -> None:
        """Start on a due series: here, on the thread pool (a broker poller queues it)."""
        future = self._pool.submit(self._process, ref, None, self.arrived_at(ref))
        self._in_flight[ref.series_uid] = future
        IN_FLIGHT.set(len(self._in_flight))

    def arrived_at(self, ref: SeriesRef) -> float | None:
        """When the series' last instance reached the PACS as far as the worker knows: the
        poll that first saw its current instance count (at most ``poll_seconds`` late; a
        series already there when the worker started is dated by its first poll)."""
        seen = self._seen.get(ref.series_uid)
        return seen.since if seen is not None and seen.count == ref.instance_count else None

    def _refuse_shared(self, refs: list[SeriesRef]) -> None:
        """One series UID listed under more than one study: refused, never analysed."""
        ref = refs[0]
        current = self.state.get(ref.series_uid)
        if ref.series_uid in self._in_flight or (
            current is not None and current.status == "failed"
        ):
            return
        studies = sorted({item.study_uid for item in refs})
        reason = (
            f"identity: the PACS lists series UID {ref.series_uid} {len(refs)} times "
            f"(studies {', '.join(studies)}): shared by studies or patients"
        )
        self._give_up(self.state, ref.series_uid, ref.study_uid, reason, "identity")
        SERIES_FAILED.labels("identity").inc()
        log.error("series %s: refused, %s", ref.series_uid, reason)

    def _reap(self) -> None:
        for uid, future in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[uid]
                if future.exception() is not None:  # _process catches everything it expects
                    log.error("series %s: unexpected error: %s", uid, future.exception())
        IN_FLIGHT.set(len(self._in_flight))

    def _due(self, ref: SeriesRef, now: float, own: frozenset[str] = frozenset()) -> bool:
        """Whether to start on ``ref`` now (recording skips on the way); ``own``: the output
        series UIDs derived from the series listed."""
        if ref.series_uid in self._in_flight:
            return False
        current = self.state.get(ref.series_uid)
        if current is not None:
            if current.status in ("skipped", "failed"):
                return False
            if current.status == "done" and current.instance_count == ref.instance_count:
                return False
            if current.status in ("retry", "blocked") and now < current.next_attempt:
                return False
        if ref.series_uid in own or self.state.is_own_output(ref.series_uid):
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

    def _give_up(
        self, state: SeriesLog, series_uid: str, study_uid: str, reason: str, failure_class: str
    ) -> None:
        """The series failed for good: recorded in ``state``, and reported to the API so that
        it shows beside the worklist (``POST /pipeline/failures``; best effort)."""
        state.fail(series_uid, study_uid, reason, failure_class)
        self.api.report_failure(study_uid, series_uid, failure_class, reason)

    # ---- one series ---------------------------------------------------------------------
    def _process(
        self, ref: SeriesRef, state: SeriesLog | None = None, arrived_at: float | None = None
    ) -> None:
        """One attempt at ``ref``; its outcome goes to ``state`` (the state file by default;
        a broker worker passes a recorder whose calls the poller replays on its own).
        ``arrived_at``: when the series arrived in the PACS (epoch seconds, the poller's
        :meth:`arrived_at`), for the worklist; None: the API's time of the call."""
        state = state or self.state
        start = time.perf_counter()
        attempt = state.start(ref.series_uid, ref.study_uid, ref.instance_count)
        try:
            result = self._process_series(ref, state, arrived_at)
        except PermanentError as exc:
            failure_class = classify(exc)  # identity or permanent
            SERIES_FAILED.labels(failure_class).inc()
            self._give_up(state, ref.series_uid, ref.study_uid, str(exc)[:500], failure_class)
            log.error("series %s: failed (%s), %s", ref.series_uid, failure_class, exc)
            return
        except ConfigError as exc:
            SERIES_FAILED.labels("config").inc()
            delay = self.settings.backoff_max_seconds
            state.block(
                ref.series_uid, ref.study_uid, str(exc)[:500], self.config, time.time() + delay
            )
            log.error(
                "series %s: blocked by the configuration (%s); tried again in %.0fs or when "
                "the worker starts with another configuration",
                ref.series_uid,
                exc,
                delay,
            )
            return
        except Exception as exc:
            failure_class = classify(exc)  # transient (never final) or error (a bug)
            transient = failure_class == "transient"
            SERIES_FAILED.labels(failure_class).inc()
            reason = f"{type(exc).__name__}: {exc}"[:500]
            # An error is final after error_max_attempts of them (transient failures before
            # do not use them up); the row (a broker job: the poller's row) counts the earlier.
            errors = errors_after(state.get(ref.series_uid), failure_class)
            if not transient and errors >= self.settings.error_max_attempts:
                reason = f"{reason[:460]} (after {attempt} attempts, {errors} errors)"
                self._give_up(state, ref.series_uid, ref.study_uid, reason, failure_class)
                log.error(
                    "series %s: failed after %d attempts (error): %s",
                    ref.series_uid,
                    attempt,
                    reason,
                    exc_info=exc,  # a bug: its traceback for the report
                )
                return
            delay = min(
                self.settings.backoff_seconds * 2 ** min(attempt - 1, 30),
                self.settings.backoff_max_seconds,
            )
            if isinstance(exc, TransientError) and exc.retry_after is not None:
                delay = max(delay, exc.retry_after)  # the server said when
            state.retry(ref.series_uid, ref.study_uid, reason, time.time() + delay, failure_class)
            limit = "" if transient else f", error {errors} of {self.settings.error_max_attempts}"
            log.warning(
                "series %s: attempt %d%s failed (%s, %s); retry in %.0fs",
                ref.series_uid,
                attempt,
                limit,
                failure_class,
                reason,
                delay,
            )
            return
        if result is not None:
            SERIES_PROCESSED.labels(result).inc()
            SERIES_LATENCY.observe(time.perf_counter() - start)

    def _process_series(
        self, ref: SeriesRef, state: SeriesLog, arrived_at: float | None = None
    ) -> str | None:
        """Retrieve, ask the API, add the series to the worklist, store the SR and heatmaps;
        returns the verdict stored."""
        try:
            datasets = self.pacs.retrieve_series(ref.study_uid, ref.series_uid)
        except SeriesNotFound:
            locations = self.pacs.series_locations(ref.series_uid)
            if len(locations) > 1:
                raise IdentityError(
                    f"identity: WADO-RS 404; series UID {ref.series_uid} is held under "
                    f"{len(locations)} (PatientID, study) pairs {sorted(locations)}"
                ) from None
            if not locations:
                state.skip(ref.series_uid, ref.study_uid, "no longer in the PACS (404)")
                SERIES_SKIPPED.labels("gone").inc()
                return None
            raise TransientError("WADO-RS 404 for a series QIDO-RS still lists") from None
        problem = identity_problem(datasets, ref.study_uid, ref.series_uid)
        if problem:
            raise IdentityError(f"identity: {problem}")
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
            state.done(
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
        earlier = state.get(ref.series_uid)
        previous = None
        replaces = earlier is not None and earlier.sr_uid not in (None, uids.sr_instance)
        if earlier is not None and replaces and earlier.sr_uid and earlier.sr_series_uid:
            previous = Dataset()  # what a Predecessor Documents Sequence item needs
            previous.SOPClassUID = ComprehensiveSRStorage
            previous.SOPInstanceUID = earlier.sr_uid
            previous.StudyInstanceUID = ref.study_uid
            previous.SeriesInstanceUID = earlier.sr_series_uid
        try:
            heatmaps = build_heatmaps(study, slices, uids)
            sc_series = uids.sc_series if heatmaps else None
            sr = build_sr(study, slices, uids, sc_series, previous)
        except (ValueError, TypeError, AttributeError, LookupError) as exc:
            # The same sources and answer give the same error: deterministic, not transient.
            raise PermanentError(
                f"the SR could not be written: {type(exc).__name__}: {exc}"
            ) from exc
        # The worklist before the PACS: an SR in the PACS means the worklist has the series
        # too, so a retry that finds the SR (above) owes the worklist nothing. A failed STOW
        # retried posts the entry again, which the API takes as the same entry (200).
        if self.settings.worklist:
            self._add_to_worklist(ref, study, slices[0], arrived_at)
        # Heatmaps first, the SR last: an SR in the PACS means everything is there.
        outputs: list[Dataset] = [*heatmaps, sr]
        self.pacs.store(outputs, ref.study_uid)
        state.done(
            ref.series_uid,
            ref.study_uid,
            instance_count=ref.instance_count,
            result=verdict,
            sr_uid=uids.sr_instance,
            sr_series_uid=uids.sr_series,
            sc_series_uid=sc_series,
            superseded=previous.SOPInstanceUID if previous else None,
        )
        if previous is not None:
            SERIES_SUPERSEDED.inc()
            log.info(
                "series %s: grew to %d instances; SR %s supersedes %s",
                ref.series_uid,
                ref.instance_count,
                uids.sr_instance,
                previous.SOPInstanceUID,
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

    def _add_to_worklist(
        self, ref: SeriesRef, study: dict[str, Any], first: Dataset, arrived_at: float | None
    ) -> None:
        """``POST /worklist`` for the analysed series; its failures are classed as the
        API's (transient: the whole attempt is retried, never final)."""
        entry = worklist_entry(ref, study, first, arrived_at)
        created = self.api.add_to_worklist(entry)
        if arrived_at is not None:
            TIME_TO_WORKLIST.observe(max(time.time() - arrived_at, 0.0))
        log.info(
            "series %s: %s the worklist (arrived %s)",
            ref.series_uid,
            "added to" if created else "updated in",
            entry.get("arrived_at", "unknown"),
        )


# DICOM LO (Manufacturer, ManufacturerModelName) holds 64 characters; the API takes no more.
_LO_MAX = 64


def _header_text(dataset: Dataset, keyword: str) -> str | None:
    """A header's text as the worklist stores it: stripped, NUL-free, at most 64
    characters; None when absent or empty."""
    value = str(dataset.get(keyword, "") or "").replace("\0", "").strip()[:_LO_MAX]
    return value or None


def worklist_entry(
    ref: SeriesRef, study: dict[str, Any], first: Dataset, arrived_at: float | None
) -> dict[str, Any]:
    """The ``POST /worklist`` body: the series' UIDs, its scanner (from ``first``, one of its
    instances), when it arrived, and the ``/predict/study`` answer less its heatmap images
    (the worklist keeps none; they are most of the answer's bytes)."""
    answer = dict(study)
    answer["top_slices"] = [
        {key: value for key, value in top.items() if key != "heatmap_png_base64"}
        for top in study.get("top_slices") or []
    ]
    entry: dict[str, Any] = {
        "study_uid": ref.study_uid,
        "series_uid": ref.series_uid,
        "manufacturer": _header_text(first, "Manufacturer"),
        "manufacturer_model": _header_text(first, "ManufacturerModelName"),
        "study": answer,
    }
    if arrived_at is not None:
        entry["arrived_at"] = datetime.fromtimestamp(arrived_at, UTC).isoformat()
    return entry


def identity_problem(datasets: list[Dataset], study_uid: str, series_uid: str) -> str | None:
    """Why these instances cannot be one series of study ``study_uid`` (the study the results
    go into): more than one PatientID, StudyInstanceUID or SeriesInstanceUID among them, or
    a study or series other than the one asked for; None when they agree."""
    for keyword, expected in (
        ("PatientID", None),
        ("StudyInstanceUID", study_uid),
        ("SeriesInstanceUID", series_uid),
    ):
        values = sorted({str(ds.get(keyword, "") or "") for ds in datasets})
        if len(values) > 1:
            return f"the instances carry {len(values)} {keyword} values {values}"
        if expected is not None and values and values[0] != expected:
            return f"{keyword} {values[0]} is not the {expected} the results would go into"
    return None
