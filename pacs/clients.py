"""HTTP clients: the PACS (DICOMweb: QIDO-RS, WADO-RS, STOW-RS) and the product's API."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from email.message import Message
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset

from pacs.settings import WorkerSettings

# WADO-RS: ask the PACS to send Explicit VR Little Endian (it transcodes if it must), so the
# API gets pixel data it can always decode.
EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
RETRIEVE_ACCEPT = f'multipart/related; type="application/dicom"; transfer-syntax={EXPLICIT_LITTLE}'

_STUDY_UID = "0020000D"
_SERIES_UID = "0020000E"
_MODALITY = "00080060"
_SERIES_DESCRIPTION = "0008103E"
_INSTANCE_COUNT = "00201209"
_QIDO_FIELDS = [
    "StudyInstanceUID",
    "Modality",
    "SeriesDescription",
    "NumberOfSeriesRelatedInstances",
]


class TransientError(Exception):
    """Worth trying again later: the PACS or the API is down, busy, or timed out."""


class PermanentError(Exception):
    """Trying again will not help: the API refused the series (e.g. nothing decodable)."""


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


def _transient(exc: Exception) -> bool:
    """Connection problems, timeouts, 5xx, 408 and 429 are worth retrying."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        return code >= 500 or code in (408, 429)
    return isinstance(exc, requests.RequestException | OSError)


class PacsClient:
    """QIDO-RS, WADO-RS and STOW-RS against one PACS.

    Searches and retrieval go through ``requests`` directly (QIDO asks for
    ``application/dicom+json`` only, and WADO-RS parts are parsed leniently: a PACS returns
    files as they were stored, and some were stored without the 128-byte preamble, which
    dicomweb-client's strict reader refuses); STOW-RS goes through dicomweb-client.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.base = settings.dicomweb_url
        self.timeout = settings.http_timeout_seconds
        self.session = requests.Session()
        if settings.user:
            password = settings.password.get_secret_value() if settings.password else ""
            self.session.auth = (settings.user, password)
        if settings.ca_bundle:
            self.session.verify = str(settings.ca_bundle)
        self.client = DICOMwebClient(self.base, session=self.session, timeout=self.timeout)

    def _get(self, what: str, path: str, accept: str, params: Any = None) -> requests.Response:
        try:
            response = self.session.get(
                f"{self.base}{path}", params=params, headers={"Accept": accept},
                timeout=self.timeout,
            )  # fmt: skip
            response.raise_for_status()
        except requests.RequestException as exc:
            if _transient(exc):
                raise TransientError(f"PACS {what}: {exc}") from exc
            raise
        return response

    def _search(self, path: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        response = self._get("search", path, "application/dicom+json", params)
        if response.status_code == 204 or not response.content:
            return []
        found: list[dict[str, Any]] = response.json()
        return found

    def list_series(self) -> list[SeriesRef]:
        """Every series (QIDO-RS, paged), within ``lookback_days`` when set."""
        params: dict[str, Any] = {"includefield": _QIDO_FIELDS}
        if self.settings.lookback_days is not None:
            since = date.today() - timedelta(days=self.settings.lookback_days)
            params["StudyDate"] = since.strftime("%Y%m%d") + "-"
        found: list[SeriesRef] = []
        offset = 0
        while True:
            page = self._search(
                "/series", {**params, "limit": self.settings.page_size, "offset": offset}
            )
            for item in page:
                study_uid, series_uid = _first(item, _STUDY_UID), _first(item, _SERIES_UID)
                if not study_uid or not series_uid:
                    continue
                found.append(
                    SeriesRef(
                        study_uid=str(study_uid),
                        series_uid=str(series_uid),
                        modality=str(_first(item, _MODALITY) or ""),
                        description=str(_first(item, _SERIES_DESCRIPTION) or ""),
                        instance_count=int(_first(item, _INSTANCE_COUNT) or 0),
                    )
                )
            if len(page) < self.settings.page_size:
                return found
            offset += len(page)

    def series_exists(self, study_uid: str, series_uid: str) -> bool:
        """Whether the study holds a series with this UID (QIDO-RS)."""
        found = self._search(f"/studies/{study_uid}/series", {"SeriesInstanceUID": series_uid})
        return any(_first(item, _SERIES_UID) == series_uid for item in found)

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """Every instance of the series (WADO-RS), as Explicit VR Little Endian."""
        response = self._get(
            "retrieve", f"/studies/{study_uid}/series/{series_uid}", RETRIEVE_ACCEPT
        )
        parts = split_multipart(response.content, response.headers.get("Content-Type", ""))
        return [dcmread(io.BytesIO(part), force=True) for part in parts]

    def store(self, datasets: Sequence[Dataset], study_uid: str) -> None:
        """STOW-RS into the study; a failed instance in the answer is an error."""
        for dataset in datasets:
            if getattr(dataset, "preamble", None) is None:
                dataset.preamble = b"\0" * 128  # a proper Part 10 file, as viewers expect
        try:
            response = self.client.store_instances(list(datasets), study_instance_uid=study_uid)
        except Exception as exc:
            if _transient(exc):
                raise TransientError(f"PACS store: {exc}") from exc
            raise
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = [str(item.get("FailureReason", "?")) for item in failed]
            raise TransientError(f"PACS store: {len(failed)} instance(s) refused {reasons}")


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related`` body (WADO-RS), without their headers."""
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
            break  # the close delimiter
        _headers, found, content = chunk.partition(b"\r\n\r\n")
        if not found:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


def dataset_bytes(dataset: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class ApiClient:
    """The product's API: ``/ready`` and ``/predict/study``."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.base = settings.api_url.rstrip("/")
        self.timeout = settings.api_timeout_seconds
        self.operating_point = settings.operating_point
        self.session = requests.Session()

    def predict_study(self, files: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
        """The API's StudyResponse for one series, with heatmaps of the top slices."""
        multipart = [("files", (name, data, "application/dicom")) for name, data in files]
        try:
            response = self.session.post(
                f"{self.base}/predict/study",
                params={"explain": "true", "operating_point": self.operating_point},
                files=multipart,
                timeout=self.timeout,
            )
        except requests.RequestException as exc:
            raise TransientError(f"API unreachable: {exc}") from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise TransientError(f"API answered {response.status_code}: {_detail(response)}")
        if response.status_code != 200:
            raise PermanentError(
                f"API refused the series ({response.status_code}): {_detail(response)}"
            )
        body: dict[str, Any] = response.json()
        return body


def _detail(response: requests.Response) -> str:
    try:
        return str(response.json().get("detail", ""))[:300]
    except ValueError:
        return response.text[:300]
