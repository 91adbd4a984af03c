"""HTTP clients: the PACS (DICOMweb: QIDO-RS, WADO-RS, STOW-RS) and the product's API."""

from __future__ import annotations

import errno
import http.client
import io
import logging
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from email.message import Message
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, Self

import requests
import urllib3
from dicomweb_client.api import DICOMwebClient
from prometheus_client import Counter
from pydicom import dcmread
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from pacs.settings import WorkerSettings

# WADO-RS: ask the PACS to send Explicit VR Little Endian (it transcodes if it must), so the
# API gets pixel data it can always decode.
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
RETRIEVE_ACCEPT = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LITTLE}'

log = logging.getLogger("pacs.clients")

QIDO_MALFORMED = Counter(
    "pacs_qido_entries_malformed_total",
    "QIDO-RS series entries skipped because they could not be read (e.g. a non-numeric "
    "instance count).",
)
FAILURE_REPORTS = Counter(
    "pacs_failure_reports_total",
    "Series given up on reported to the API (POST /pipeline/failures), by outcome (sent, "
    "failed: the API did not take it; the state keeps it).",
    ["outcome"],
)
QIDO_CAPPED = Counter(
    "pacs_qido_capped_total",
    "Series listings the PACS cut short whatever the offset (outcome=read_by_range: found "
    "and read range by range; unsplittable: a single StudyDate and StudyTime second still at "
    "the cap, so series may be missed).",
    ["outcome"],
)

_PATIENT_ID = "00100020"
_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_SERIES_DESCRIPTION = "0008103E"
_INSTANCE_COUNT = "00201209"
_STUDY_DATE = "00080020"
_STUDY_TIME = "00080030"
_QIDO_FIELDS = [
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "Modality",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
]


class TransientError(Exception):
    """Worth trying again later: the PACS or the API is down, busy, or timed out.
    ``retry_after``: the seconds the server asked for (``Retry-After``), when it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(Exception):
    """The worker's configuration is refused (401/403 from the API or the PACS): no series
    is to blame, and a configuration change (or the server's) clears it."""


class PermanentError(Exception):
    """Trying again will not help: the API refused the series (e.g. nothing decodable)."""


class IdentityError(PermanentError):
    """The series' instances disagree on who or what they are (PatientID, StudyInstanceUID,
    SeriesInstanceUID), or disagree with the study the results would be written into."""


class SeriesNotFound(Exception):
    """WADO-RS answered 404 for a series QIDO-RS listed."""


# The longest Retry-After the worker honours (a server asking for more is asked again then).
RETRY_AFTER_MAX_SECONDS = 3600.0


def retry_after(response: requests.Response | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), else None."""
    value = response.headers.get("Retry-After", "").strip() if response is not None else ""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


_LAST_SECOND = 24 * 3600 - 1
StudyKey = tuple[date, int | None]  # a series' StudyDate, and StudyTime in seconds if given


@dataclass(frozen=True)
class StudySpan:
    """A StudyDate range (days ``first``..``last``), and within one day a StudyTime range
    (seconds ``start``..``end``): what a capped listing is split along."""

    first: date
    last: date
    start: int = 0
    end: int = _LAST_SECOND

    def query(self) -> dict[str, str]:
        """The QIDO-RS matching keys of the span (DICOM range matching)."""
        keys = {"StudyDate": f"{self.first:%Y%m%d}-{self.last:%Y%m%d}"}
        if self.first == self.last and (self.start, self.end) != (0, _LAST_SECOND):
            keys["StudyTime"] = f"{_hhmmss(self.start)}-{_hhmmss(self.end)}"
        return keys

    def split(self, seen: Sequence[StudyKey]) -> list[StudySpan]:
        """Pieces of the span cut between the series already seen in it, so that no piece
        holds all of them where their dates (or, within one day, times) differ; where they
        all share one, the pieces before, at and after it. Empty: nothing to cut by (no
        dated series seen, or one second)."""
        if self.first < self.last:
            days = [day.toordinal() for day, _ in seen]
            cuts = _cuts(days, self.first.toordinal(), self.last.toordinal())
            return [StudySpan(date.fromordinal(a), date.fromordinal(b)) for a, b in cuts]
        times = [second for day, second in seen if day == self.first and second is not None]
        return [
            StudySpan(self.first, self.last, a, b) for a, b in _cuts(times, self.start, self.end)
        ]


def _cuts(seen: Sequence[int], first: int, last: int) -> list[tuple[int, int]]:
    """``first..last`` cut after the median of the values ``seen`` in it (before the last
    value when the median is the last), or, where they are all one value, into before, at and
    after it; empty where nothing is seen or the range is one value."""
    values = sorted(value for value in seen if first <= value <= last)
    if not values or first == last:
        return []
    cut = values[(len(values) - 1) // 2]
    if values[0] < cut == values[-1]:
        cut = max(value for value in values if value < cut)
    if cut < values[-1]:
        return [(first, cut), (cut + 1, last)]
    pieces = [(first, cut - 1), (cut, cut), (cut + 1, last)]
    return [(a, b) for a, b in pieces if a <= b and (a, b) != (first, last)]


def _hhmmss(seconds: int) -> str:
    return f"{seconds // 3600:02d}{seconds // 60 % 60:02d}{seconds % 60:02d}"


def _study_key(item: dict[str, Any]) -> StudyKey | None:
    """A QIDO-RS entry's StudyDate and StudyTime (seconds; None when absent); None when it
    has no readable date."""
    try:
        day = datetime.strptime(str(_first(item, _STUDY_DATE)), "%Y%m%d").date()
    except (AttributeError, TypeError, ValueError):
        return None
    try:
        text = str(_first(item, _STUDY_TIME) or "").split(".")[0].ljust(6, "0")
        second: int | None = int(text[:2]) * 3600 + int(text[2:4]) * 60 + int(text[4:6])
    except (AttributeError, TypeError, ValueError):
        second = None
    if second is not None and not 0 <= second <= _LAST_SECOND:
        second = None
    return day, second


@dataclass(frozen=True)
class SeriesRef:
    """A series as QIDO-RS lists it."""

    study_uid: str
    series_uid: str
    modality: str
    description: str
    instance_count: int


def _first(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value") or [None]
    return values[0]


def _config_refused(exc: Exception) -> bool:
    """401/403: the credentials or the token, not the series."""
    response = getattr(exc, "response", None)
    return response is not None and response.status_code in (401, 403)


# Socket errors that say the network or the server is away, not that the data is wrong (a
# plain OSError is also what pydicom raises for a value it cannot write: not transient).
_NETWORK_ERRNOS = frozenset({
    errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
    errno.ENETUNREACH, errno.ENETDOWN, errno.ENETRESET, errno.EHOSTUNREACH, errno.EHOSTDOWN,
})  # fmt: skip


class DroppedConnectionRetry(Retry):
    """One more try of a GET whose kept-alive connection the server closed just as the
    request went out ("Remote end closed connection without response": a PACS closes idle
    connections when it sees fit, and a poll every few seconds meets that now and then;
    the broker poller logged it every few minutes against an idle Orthanc). Only that: a
    timeout, a refused connection or an error status is not retried here (the worker's
    back-off and the series' attempts handle those)."""

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: Any = None,
        error: Exception | None = None,
        _pool: Any = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            raise error  # as urllib3 does when read retries are off: requests' ReadTimeout
        return super().increment(method, url, response, error, _pool, _stacktrace)


def http_session() -> requests.Session:
    """A ``requests`` session whose GETs survive a kept-alive connection closed under them
    (:class:`DroppedConnectionRetry`); everything else as ``requests.Session()``."""
    session = requests.Session()
    retry = DroppedConnectionRetry(
        total=1, connect=0, read=1, redirect=0, status=0, other=0,
        allowed_methods=frozenset({"GET"}), raise_on_status=False,
    )  # fmt: skip
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says the PACS or the API is away, busy or slow (worth retrying, never
    final): our TransientError; an HTTP 5xx, 408 or 429; any other ``requests`` failure to
    get an answer (connection refused or reset, DNS, TLS, timeouts, a body cut short) but a
    body that is not JSON; the same from ``urllib3`` or ``http.client`` (a streamed WADO-RS
    download reads them directly); socket errors (connection errors, timeouts, unreachable
    networks, name resolution)."""
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, requests.HTTPError):
        code = exc.response.status_code if exc.response is not None else 0
        return code >= 500 or code in (408, 429)
    if isinstance(exc, requests.exceptions.InvalidJSONError):
        return False  # an answer came: its body is wrong, every time
    network = (requests.RequestException, urllib3.exceptions.HTTPError,
               http.client.HTTPException, ConnectionError, TimeoutError, socket.gaierror,
               socket.herror)  # fmt: skip
    if isinstance(exc, network):
        return True
    return isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS


def failure_class(exc: BaseException) -> str:
    """The failure class of an attempt that raised ``exc``: ``identity``, ``permanent``,
    ``config``, ``transient`` (:func:`is_transient`), or ``error`` for anything else (a bug,
    or data the worker did not expect: bounded attempts, then ``failed``)."""
    if isinstance(exc, IdentityError):
        return "identity"
    if isinstance(exc, PermanentError):
        return "permanent"
    if isinstance(exc, ConfigError):
        return "config"
    return "transient" if is_transient(exc) else "error"


class PacsClient:
    """QIDO-RS, WADO-RS and STOW-RS against one PACS.

    Searches and retrieval go through ``requests`` directly (QIDO asks for
    ``application/dicom+json`` only, and WADO-RS parts are parsed leniently: a PACS returns
    files as they were stored, and some were stored without the 128-byte preamble, which
    dicomweb-client's strict reader refuses); STOW-RS goes through dicomweb-client.
    """

    def __init__(self, settings: WorkerSettings, stop: threading.Event | None = None) -> None:
        self.settings = settings
        self.stop = stop or threading.Event()  # set: downloads under way give up at once
        self.base = settings.dicomweb_url
        self.timeout = settings.http_timeout_seconds
        self.session = http_session()
        if settings.user:
            password = settings.password.get_secret_value() if settings.password else ""
            self.session.auth = (settings.user, password)
        if settings.ca_bundle:
            self.session.verify = str(settings.ca_bundle)
        self.client = DICOMwebClient(self.base, session=self.session, timeout=self.timeout)

    def _get(
        self, what: str, path: str, accept: str, params: Any = None, stream: bool = False
    ) -> requests.Response:
        try:
            response = self.session.get(
                f"{self.base}{path}", params=params, headers={"Accept": accept},
                timeout=self.timeout, stream=stream,
            )  # fmt: skip
            response.raise_for_status()
        except requests.RequestException as exc:
            if _config_refused(exc):
                raise ConfigError(f"PACS {what}: credentials refused ({exc})") from exc
            if is_transient(exc):
                raise TransientError(
                    f"PACS {what}: {exc}", retry_after(getattr(exc, "response", None))
                ) from exc
            raise
        return response

    def _search(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = self._get("search", path, "application/dicom+json", params)
        if response.status_code == 204 or not response.content:
            return []
        found: list[dict[str, Any]] = response.json()
        return found

    def list_series(self) -> list[SeriesRef]:
        """Every series (QIDO-RS, paged), within ``lookback_days`` when set; read range by
        range where the PACS caps its answers (``cap_check``, :meth:`_uncapped`)."""
        span = StudySpan(date(1900, 1, 1), date(9998, 12, 31))  # room for a day after
        params: dict[str, Any] = {"includefield": _QIDO_FIELDS}
        if self.settings.lookback_days is not None:
            since = date.today() - timedelta(days=self.settings.lookback_days)
            params["StudyDate"] = since.strftime("%Y%m%d") + "-"
            span = StudySpan(since, span.last)
        entries = self._paged(params)
        if self.settings.cap_check and entries:
            entries = self._uncapped(params, span, entries, cap=None)
        return [ref for ref in map(series_ref, entries) if ref is not None]

    def _paged(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One series search, page by page until an empty page: a PACS may cap an answer
        below the page size asked for, so a short page is not the last one."""
        found: list[dict[str, Any]] = []
        previous: list[dict[str, Any]] | None = None
        while True:
            page = self._search(
                "/series", {**params, "limit": self.settings.page_size, "offset": len(found)}
            )
            if not page or page == previous:  # the end, or a PACS that ignores offset
                return found
            found.extend(page)
            previous = page

    def _uncapped(
        self,
        params: dict[str, Any],
        span: StudySpan,
        entries: list[dict[str, Any]],
        cap: int | None,
    ) -> list[dict[str, Any]]:
        """``entries`` (the PACS's answer for ``span``) made whole where the PACS capped it.

        Some PACS cut every answer at a fixed count whatever the offset (Orthanc 1.10's
        ``LimitFindResults`` applies its cap before the offset), so paging cannot see past
        it and nothing says so. The span is asked again in pieces cut between the series
        seen (:meth:`StudySpan.split`): a piece holding fewer of them than the whole would
        show any series the cap hid, so if the pieces hold series the whole did not, the
        whole was capped at ``len(entries)``, and every answer that reaches that count is
        cut again, down to one StudyTime second (past which the cap cannot be worked round:
        logged and counted ``unsplittable``). A series hidden behind others of the same
        second, or without a StudyDate, cannot be found this way.
        """
        if cap is not None and len(entries) < cap:
            return entries  # under the cap: the whole answer
        pieces = span.split([key for key in map(_study_key, entries) if key is not None])
        if not pieces:
            if cap is not None:
                QIDO_CAPPED.labels("unsplittable").inc()
                log.error(
                    "The PACS caps QIDO-RS answers at %d series and %s holds that many: "
                    "series there may be missed. Raise the PACS's find limit (Orthanc: "
                    "LimitFindResults).", cap, span.query(),
                )  # fmt: skip
            return entries
        answers = [self._paged({**params, **piece.query()}) for piece in pieces]
        if cap is None:
            if len(_by_series_uid(entries, *answers)) == len(entries):
                # Nothing new: not capped, unless one piece holds every series seen (they
                # share a day or a second) and so cannot tell; that piece is looked into.
                crowded = [
                    self._uncapped(params, piece, answer, None)
                    for piece, answer in zip(pieces, answers, strict=True)
                    if len(answer) == len(entries)
                ]
                return _by_series_uid(entries, *crowded)
            cap = len(entries)
            QIDO_CAPPED.labels("read_by_range").inc()
            log.warning(
                "The PACS cut a series listing at %d whatever the offset (a find limit such "
                "as Orthanc's LimitFindResults): reading it StudyDate range by range.",
                cap,
            )
        wholes = [
            self._uncapped(params, piece, answer, cap)
            for piece, answer in zip(pieces, answers, strict=True)
        ]
        return _by_series_uid(entries, *wholes)

    def series_locations(self, series_uid: str) -> set[tuple[str, str]]:
        """The (PatientID, StudyInstanceUID) pairs of a series UID's instances (QIDO-RS, all
        studies): more than one means the UID is shared by studies or patients."""
        found = self._search(
            "/instances",
            {"SeriesInstanceUID": series_uid, "includefield": ["PatientID", "StudyInstanceUID"]},
        )
        return {
            (str(_first(item, _PATIENT_ID) or ""), str(_first(item, _STUDY_UID) or ""))
            for item in found
        }

    def series_exists(self, study_uid: str, series_uid: str) -> bool:
        """Whether the study holds a series with this UID (QIDO-RS)."""
        found = self._search(f"/studies/{study_uid}/series", {"SeriesInstanceUID": series_uid})
        return any(_first(item, _SERIES_UID) == series_uid for item in found)

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance of the series (WADO-RS), as Explicit VR Little Endian.

        The whole download must finish within ``download_deadline_seconds`` (a PACS that
        drips its answer never trips the per-read timeout) and stops when ``stop`` is set;
        either is a TransientError. A 404 is SeriesNotFound."""
        deadline = time.monotonic() + self.settings.download_deadline_seconds
        try:
            response = self._get(
                "retrieve", f"/studies/{study_uid}/series/{series_uid}", RETRIEVE_ACCEPT,
                stream=True,
            )  # fmt: skip
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                raise SeriesNotFound(f"WADO-RS 404 for series {series_uid}") from exc
            raise
        with response:
            body = bytearray()
            while chunk := response.raw.read1(1 << 20, decode_content=True):
                body += chunk
                if self.stop.is_set():
                    raise TransientError("PACS retrieve: the worker is stopping")
                if time.monotonic() > deadline:
                    raise TransientError(
                        f"PACS retrieve: not finished within "
                        f"{self.settings.download_deadline_seconds:.0f}s ({len(body)} bytes)"
                    )
        parts = split_multipart(bytes(body), response.headers.get("Content-Type", ""))
        return [dcmread(io.BytesIO(part), force=True) for part in parts]

    def store(self, datasets: Sequence[Dataset], study_uid: str) -> None:
        """STOW-RS into the study; a failed instance in the answer is an error."""
        for dataset in datasets:
            if getattr(dataset, "preamble", None) is None:
                dataset.preamble = b"\0" * 128  # a proper Part 10 file, as viewers expect
        try:
            response = self.client.store_instances(list(datasets), study_instance_uid=study_uid)
        except Exception as exc:
            if _config_refused(exc):
                raise ConfigError(f"PACS store: credentials refused ({exc})") from exc
            if is_transient(exc):
                raise TransientError(f"PACS store: {exc}") from exc
            raise
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise TransientError(f"PACS store: {len(failed)} instance(s) refused {reasons}")


def _by_series_uid(*answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """QIDO-RS series entries of several answers, each series once (the first entry kept;
    entries without a readable series UID kept as they are, for ``series_ref`` to count)."""
    seen: dict[object, dict[str, Any]] = {}
    for answer in answers:
        for item in answer:
            try:
                uid = _first(item, _SERIES_UID)
            except (AttributeError, TypeError, ValueError):
                uid = None
            seen.setdefault(id(item) if uid is None else str(uid), item)
    return list(seen.values())


def series_ref(item: dict[str, Any]) -> SeriesRef | None:
    """One QIDO-RS series entry as a SeriesRef; None (logged and counted) when it cannot be
    read, so one bad entry does not stop the others from being seen."""
    try:
        study_uid, series_uid = _first(item, _STUDY_UID), _first(item, _SERIES_UID)
        if not study_uid or not series_uid:
            raise ValueError("no StudyInstanceUID or SeriesInstanceUID")
        return SeriesRef(
            study_uid=str(study_uid),
            series_uid=str(series_uid),
            modality=str(_first(item, _MODALITY) or ""),
            description=str(_first(item, _SERIES_DESCRIPTION) or ""),
            instance_count=int(_first(item, _INSTANCE_COUNT) or 0),
        )
    except (AttributeError, TypeError, ValueError) as exc:
        QIDO_MALFORMED.inc()
        log.warning("QIDO-RS entry skipped (%s): %.300s", exc, item)
        return None


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related`` body (WADO-RS), without their headers; a body
    without its close delimiter is a truncated download (TransientError)."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    if not isinstance(boundary, str) or not boundary:
        if body[128:132] == b"DICM" or body[:2] == b"\x02\x00":
            return [body]  # a single application/dicom body (non-conformant but seen)
        raise ValueError(f"not a multipart answer: {content_type!r}")
    parts: list[bytes] = []
    for chunk in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if chunk.startswith(b"--"):
            return parts  # the close delimiter
        _headers, found, content = chunk.partition(b"\r\n\r\n")
        if not found:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    # No close delimiter: the answer was cut short (a server that closed the connection
    # early without a length to say so); its last part would be a truncated instance.
    raise TransientError(
        f"PACS retrieve: the answer ended before its closing boundary ({len(body)} bytes, "
        f"{len(parts)} part(s)): a truncated download"
    )


def dataset_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ApiClient:
    """The product's API: ``/predict/study`` and ``/worklist``, with the worker's token."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.base = settings.api_url.rstrip("/")
        self.timeout = settings.api_timeout_seconds
        self.operating_point = settings.operating_point
        self.session = http_session()
        token = settings.bearer_token()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def predict_study(self, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """The API's StudyResponse for one series, with heatmaps of the top slices."""
        multipart = [("files", (name, data, "application/dicom")) for name, data in files]
        response = self._post(
            "/predict/study",
            "the series",
            params={"explain": "true", "operating_point": self.operating_point},
            files=multipart,
        )
        body: dict[str, Any] = response.json()
        return body

    def add_to_worklist(self, entry: dict[str, Any]) -> bool:
        """``POST /worklist``; True when the entry is new (201), False when the API updated
        the entry of the same study and series (200: a retry or a re-analysis)."""
        response = self._post("/worklist", "the worklist entry", json=entry)
        return response.status_code == 201

    def report_failure(
        self, study_uid: str, series_uid: str, failure_class: str, reason: str
    ) -> bool:
        """``POST /pipeline/failures``: a series given up on shows beside the worklist (issue
        30). Best effort: False (logged and counted) when the API did not take it; the state
        keeps the failure either way (``python -m pacs list``)."""
        body = {
            "study_uid": study_uid,
            "series_uid": series_uid,
            "failure_class": failure_class,
            "reason": reason[:2000],
            "failed_at": datetime.now(UTC).isoformat(),
        }
        try:
            self._post("/pipeline/failures", "the failure report", json=body)
        except Exception as exc:  # never let the report stop the worker
            FAILURE_REPORTS.labels("failed").inc()
            log.warning("series %s: failure not reported to the API (%s)", series_uid, exc)
            return False
        FAILURE_REPORTS.labels("sent").inc()
        return True

    def _post(self, path: str, what: str, **request: Any) -> requests.Response:
        """A POST whose failures are classed: unreachable, 5xx, 408, 429 -> TransientError
        (with ``Retry-After``); 401/403 -> ConfigError; 404/405 (an API without the route)
        -> ConfigError; any other status but 200/201 -> PermanentError (``what`` refused)."""
        try:
            response = self.session.post(f"{self.base}{path}", timeout=self.timeout, **request)
        except requests.RequestException as exc:
            raise TransientError(f"API unreachable: {exc}") from exc
        code = response.status_code
        if code in (401, 403):
            raise ConfigError(
                f"API refused the worker's token ({code}): {_detail(response)}; "
                "set PACS_API_TOKEN or PACS_API_TOKEN_FILE"
            )
        if code >= 500 or code in (408, 429):
            raise TransientError(f"API answered {code}: {_detail(response)}", retry_after(response))
        if code in (404, 405):
            hint = "; upgrade the API or set PACS_WORKLIST=false" if path == "/worklist" else ""
            raise ConfigError(f"API has no POST {path} ({code}){hint}")
        if code not in (200, 201):
            raise PermanentError(f"API refused {what} ({code}): {_detail(response)}")
        return response


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]
