"""The worklist viewer's images of a study that came from the PACS, fetched from the PACS
itself (the worklist keeps no image): a top slice through DICOMweb WADO-RS, windowed as the
model saw it, and its heatmap, the Secondary Capture image the PACS worker stored that
references that slice (``SourceImageSequence``), found through QIDO-RS and the series'
WADO-RS metadata. Both are answered as PNG.

Only the slices the entry names are ever asked for: the PACS worker names each file it sends
``<SOPInstanceUID>.dcm``, so a top slice's name gives its instance in the entry's series.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset

from backend.app.core.config import Settings
from backend.app.services.imaging import HEATMAP_MAX_SIDE, preview_png
from ml_model.imaging.dicom import MAX_IMAGE_PIXELS
from ml_model.imaging.errors import ImageDecodeError, ImageTooLargeError, UnsupportedImageError

# A DICOM UID: digits and dots, at most 64 characters (it goes into a WADO-RS path).
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_UID_MAX = 64
# The Secondary Capture heatmaps the worker stores carry this modality.
HEATMAP_MODALITY = "OT"
SOURCE_IMAGE_SEQUENCE = "00082112"
REFERENCED_SOP_INSTANCE_UID = "00081155"


class PacsImageError(Exception):
    """An image that cannot be shown; ``status_code`` and ``detail`` are the API's answer."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def is_uid(value: str | None) -> bool:
    """Whether ``value`` is a DICOM UID (digits and dots, at most 64 characters)."""
    return value is not None and len(value) <= _UID_MAX and bool(_UID.fullmatch(value))


def instance_uid_of(name: str) -> str:
    """The SOP Instance UID a PACS entry's top slice names (``<uid>.dcm``); 404 when the name
    holds no UID (a slice the worker did not name)."""
    stem = name.rsplit("/", 1)[-1]
    if stem.lower().endswith(".dcm"):
        stem = stem[: -len(".dcm")]
    if not is_uid(stem):
        raise PacsImageError(404, f"the slice {name!r} names no DICOM instance in the PACS")
    return stem


def _part10(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _referenced_instances(metadata: dict[str, Any]) -> set[str]:
    """The instances a WADO-RS metadata item's Source Image Sequence references."""
    items = metadata.get(SOURCE_IMAGE_SEQUENCE, {}).get("Value") or []
    found: set[str] = set()
    for item in items:
        values = item.get(REFERENCED_SOP_INSTANCE_UID, {}).get("Value") or []
        found.update(str(value) for value in values)
    return found


def _uid_of(metadata: dict[str, Any], tag: str) -> str:
    return str((metadata.get(tag, {}).get("Value") or [""])[0])


@dataclass
class PacsImages:
    """DICOMweb reads from WORKLIST_PACS_URL (basic auth when WORKLIST_PACS_USER is set)."""

    client: DICOMwebClient

    @classmethod
    def from_settings(cls, settings: Settings) -> PacsImages | None:
        """None when WORKLIST_PACS_URL is unset (the viewer shows the analysis only)."""
        if not settings.worklist_pacs_url:
            return None
        session = requests.Session()
        if settings.worklist_pacs_user:
            password = settings.worklist_pacs_password
            session.auth = (
                settings.worklist_pacs_user,
                password.get_secret_value() if password else "",
            )
        url = settings.worklist_pacs_url.rstrip("/")
        client = DICOMwebClient(url, session=session, timeout=settings.worklist_pacs_timeout_s)
        # One try: a reader waits for the answer (the client's default retries a refused
        # connection for 30 s).
        client.set_http_retry_params(retry=False)
        return cls(client)

    def _ask(self, what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        """One DICOMweb call; the PACS's failures as 404 (not there) or 502 (no answer)."""
        try:
            return call(*args, **kwargs)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code == 404:
                raise PacsImageError(404, f"{what} is not in the PACS") from exc
            raise PacsImageError(502, f"the PACS answered {code} for {what}") from exc
        except requests.RequestException as exc:
            raise PacsImageError(502, f"the PACS did not answer for {what}: {exc}") from exc

    def slice_png(
        self,
        study_uid: str,
        series_uid: str,
        instance_uid: str,
        decode: Callable[[bytes], np.ndarray],
    ) -> bytes:
        """The CT slice as ``decode`` reads it (the inference core's one decode: the model's
        window, under the server's memory budget), as a greyscale PNG."""
        dataset = self._ask(
            f"slice {instance_uid}",
            self.client.retrieve_instance,
            study_uid,
            series_uid,
            instance_uid,
        )
        try:
            gray = decode(_part10(dataset))
        except (ImageDecodeError, UnsupportedImageError, ImageTooLargeError) as exc:
            raise PacsImageError(502, f"the PACS's slice {instance_uid}: {exc}") from exc
        return preview_png(gray)

    def heatmap_png(self, study_uid: str, instance_uid: str) -> bytes:
        """The worker's heatmap of slice ``instance_uid`` (an RGB Secondary Capture image
        in the same study referencing it), as a colour PNG; 404 when the PACS holds none."""
        what = f"the heatmap of slice {instance_uid}"
        series = self._ask(
            what,
            self.client.search_for_series,
            study_instance_uid=study_uid,
            search_filters={"Modality": HEATMAP_MODALITY},
        )
        # The latest series first: a re-analysed (grown) series' heatmaps come after.
        for item in reversed(series or []):
            series_uid = _uid_of(item, "0020000E")
            metadata = self._ask(what, self.client.retrieve_series_metadata, study_uid, series_uid)
            for instance in metadata or []:
                if instance_uid in _referenced_instances(instance):
                    dataset = self._ask(
                        what,
                        self.client.retrieve_instance,
                        study_uid,
                        series_uid,
                        _uid_of(instance, "00080018"),
                    )
                    return preview_png(self._rgb(dataset, instance_uid), HEATMAP_MAX_SIDE)
        raise PacsImageError(404, f"{what} is not in the PACS")

    @staticmethod
    def _rgb(dataset: Dataset, instance_uid: str) -> np.ndarray:
        rows, columns = int(dataset.get("Rows", 0)), int(dataset.get("Columns", 0))
        if rows * columns > MAX_IMAGE_PIXELS:
            raise PacsImageError(502, f"the heatmap of slice {instance_uid} is too large")
        if dataset.get("PhotometricInterpretation") != "RGB":
            raise PacsImageError(502, f"the heatmap of slice {instance_uid} is not RGB")
        try:
            pixels = np.asarray(dataset.pixel_array, dtype=np.uint8)
        except Exception as exc:  # pydicom decodes lazily: whatever a bad file raises
            raise PacsImageError(
                502, f"the heatmap of slice {instance_uid} could not be read: {exc}"
            ) from exc
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise PacsImageError(502, f"the heatmap of slice {instance_uid} is not one RGB frame")
        return pixels
