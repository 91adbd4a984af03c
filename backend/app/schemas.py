"""Response models: the API's contract, with the examples shown in /docs."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    model_validator,
)

from backend.app.worklist.models import WorklistStatus
from ml_model.inference.verdict import Result


class OperatingPoint(StrEnum):
    """`sensitive` misses fewer fractures (more false alarms); `specific` the reverse."""

    sensitive = "sensitive"
    specific = "specific"


class ModelInfo(BaseModel):
    name: str = Field(description="Model name from the model card.")
    version: str = Field(description="Model version from the model card.")


_MODEL_EXAMPLE: dict[str, JsonValue] = {"name": "custom-cnn", "version": "2026.05.1"}


RESULT_DESCRIPTION = (
    "`Not a CT slice` when the CT gate refuses the input (`in_distribution` "
    "false) and it is not CT in any window either: no fracture call is made. `CT outside the "
    "model's range` when the CT gate refuses it but it is CT (another window, region or "
    "orientation, see `outside_reason`): no fracture call is made; send the DICOM. "
    "Otherwise `Potentially Fracture` when prediction >= threshold, else `Normal`."
)
OUTSIDE_REASON_DESCRIPTION = (
    "Only with `result` `CT outside the model's range`: why the model cannot judge this CT "
    "slice. `window`: exported in a window whose greys cannot be brought back to the "
    "model's (bone, brain, lung...): send the DICOM (HU). `region`: in the model's window but "
    "not an axial cervical-spine slice (another region, a reformat, overlays)."
)


class OutsideReason(StrEnum):
    """Why a CT slice is outside the model's range (``verdict.OUTSIDE_REASONS``)."""

    window = "window"
    region = "region"


PREDICTION_DESCRIPTION = (
    "Probability of fracture (0-1). Reported for transparency even when `result` is "
    "`Not a CT slice`; it means nothing for such an input and must not be read as a call."
)
IN_DISTRIBUTION_DESCRIPTION = (
    "Whether the CT gate accepts the input as a CT slice (`ct_gate_margin` <= 1). Null only "
    "when no gate ran, which this server never does (every model bundle has a CT gate)."
)
CT_GATE_MARGIN_DESCRIPTION = (
    "The CT gate's margin, exp(gate threshold - gate logit): <= 1 is accepted as a CT "
    "slice, > 1 is refused as not CT (the larger, the further from a CT slice). The gate is "
    "a logistic regression on its own features (an ImageNet EfficientNet-Lite0's first "
    "blocks and image statistics of the whole slice, nothing of the fracture network), "
    "trained against non-CT images (model card `gate`). Null when no gate ran (never, see "
    "`in_distribution`)."
)
OOD_DISTANCE_DESCRIPTION = (
    "Deprecated alias of `ct_gate_margin` (same value), kept for one release: read "
    "`ct_gate_margin` instead."
)


class PredictionBase(BaseModel):
    result: Result = Field(description=RESULT_DESCRIPTION)
    prediction: float = Field(ge=0.0, le=1.0, description=PREDICTION_DESCRIPTION)
    threshold: float = Field(ge=0.0, le=1.0, description="Threshold of the operating point.")
    operating_point: OperatingPoint = Field(description="Operating point the threshold is from.")
    in_distribution: bool | None = Field(description=IN_DISTRIBUTION_DESCRIPTION)
    ct_gate_margin: float | None = Field(ge=0.0, description=CT_GATE_MARGIN_DESCRIPTION)
    outside_reason: OutsideReason | None = Field(
        default=None, description=OUTSIDE_REASON_DESCRIPTION
    )
    ood_distance: float | None = Field(
        ge=0.0, deprecated=True, description=OOD_DISTANCE_DESCRIPTION
    )
    model: ModelInfo

    @model_validator(mode="before")
    @classmethod
    def _deprecated_alias(cls, data: Any) -> Any:
        """`ood_distance` is always `ct_gate_margin`'s value: only that one is passed in."""
        if isinstance(data, dict) and "ct_gate_margin" in data:
            return data | {"ood_distance": data["ct_gate_margin"]}
        return data


class PreviewWindow(StrEnum):
    """The window of a DICOM preview: `model` (the model card's, what the model sees),
    `bone` (level 400 / width 1800 HU) or `soft_tissue` (40 / 400 HU)."""

    model = "model"
    bone = "bone"
    soft_tissue = "soft_tissue"


class DicomInfo(BaseModel):
    """Acquisition facts of an uploaded DICOM slice. Never a patient identifier, a UID, a
    date or an institution."""

    modality: str | None = Field(
        None, description="Modality (stated, or inferred from the SOP class / rescale), e.g. CT."
    )
    series_description: str | None = Field(None, description="SeriesDescription, as written.")
    slice_location_mm: float | None = Field(
        None, description="SliceLocation, else the position along the slice normal (mm)."
    )
    pixel_spacing_mm: list[float] | None = Field(
        None, description="PixelSpacing: [row spacing, column spacing] in mm."
    )
    slice_thickness_mm: float | None = Field(None, description="SliceThickness (mm).")
    rows: int | None = Field(None, description="Rows (pixels).")
    columns: int | None = Field(None, description="Columns (pixels).")
    transfer_syntax: str | None = Field(
        None, description="The transfer syntax's name, e.g. `JPEG 2000 Image Compression`."
    )


class PredictionResponse(PredictionBase):
    latency_ms: float = Field(description="Server time for decoding, inference and heatmap.")
    heatmap_png_base64: str | None = Field(
        None,
        description="Only with `explain=true`: Grad-CAM overlay on the input, a base64 PNG "
        "of the input image's size.",
    )
    preview_png_base64: str | None = Field(
        None,
        description="DICOM uploads only: the decoded slice through the `preview_window` "
        "(default: the model's window), a greyscale base64 PNG whose longest side is at "
        "most 512 px. Absent for PNG/JPEG uploads, which a browser shows itself.",
    )
    dicom: DicomInfo | None = Field(
        None, description="DICOM uploads only: header facts of the slice (no patient data)."
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "result": "Potentially Fracture",
                    "prediction": 0.87,
                    "threshold": 0.5,
                    "operating_point": "sensitive",
                    "in_distribution": True,
                    "ct_gate_margin": 0.31,
                    "ood_distance": 0.31,
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 12.4,
                },
                {
                    "result": "Normal",
                    "prediction": 0.08,
                    "threshold": 0.5,
                    "operating_point": "specific",
                    "in_distribution": True,
                    "ct_gate_margin": 0.22,
                    "ood_distance": 0.22,
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 48.9,
                    "heatmap_png_base64": "iVBORw0KGgoAAAANSUhEUgAA...",
                },
                {
                    "result": "Not a CT slice",
                    "prediction": 0.95,
                    "threshold": 0.5,
                    "operating_point": "sensitive",
                    "in_distribution": False,
                    "ct_gate_margin": 5.06,
                    "ood_distance": 5.06,
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 11.0,
                },
            ]
        }
    )


class BatchItemPrediction(PredictionBase):
    filename: str = Field(description="The uploaded file's name, as sent.")


class BatchItemError(BaseModel):
    filename: str = Field(description="The uploaded file's name, as sent.")
    error: str = Field(description="Why this file could not be classified.")
    status_code: int = Field(description="The HTTP status this file alone would have got.")


class BatchResponse(BaseModel):
    results: list[BatchItemPrediction | BatchItemError] = Field(
        description="One entry per uploaded file, in upload order."
    )
    model: ModelInfo
    latency_ms: float = Field(description="Server time for the whole batch.")

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "filename": "c5.png",
                            "result": "Potentially Fracture",
                            "prediction": 0.91,
                            "threshold": 0.5,
                            "operating_point": "sensitive",
                            "in_distribution": True,
                            "ct_gate_margin": 0.4,
                            "ood_distance": 0.4,
                            "model": _MODEL_EXAMPLE,
                        },
                        {
                            "filename": "holiday.jpg",
                            "result": "Not a CT slice",
                            "prediction": 0.81,
                            "threshold": 0.5,
                            "operating_point": "sensitive",
                            "in_distribution": False,
                            "ct_gate_margin": 5.28,
                            "ood_distance": 5.28,
                            "model": _MODEL_EXAMPLE,
                        },
                        {
                            "filename": "notes.txt",
                            "error": "the file is not a recognised image or DICOM",
                            "status_code": 415,
                        },
                    ],
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 35.2,
                }
            ]
        }
    )


class StudySlice(BaseModel):
    name: str = Field(
        description="File name (inside a zip: the member's base name); a frame of an "
        "enhanced multi-frame DICOM is named `file.dcm [frame 3/120]`."
    )
    position: float = Field(
        description="Position along the neck, in `position_unit`: `mm` along the slice "
        "normal towards the head (ImagePositionPatient x ImageOrientationPatient; z for "
        "axial slices); `index`: the InstanceNumber (DICOM without usable geometry) or the "
        "slice number in a PNG/JPEG file name."
    )
    prediction: float = Field(ge=0.0, le=1.0, description="This slice's probability of fracture.")
    in_distribution: bool | None = Field(description=IN_DISTRIBUTION_DESCRIPTION)
    outside_reason: OutsideReason | None = Field(
        default=None,
        description="Set for a slice the CT gate refused that is CT nonetheless (left out of "
        "the score like every refused slice, counted apart): see the top-level field.",
    )


class StudyTopSlice(BaseModel):
    index: int = Field(ge=0, description="Index of the slice in `slices`.")
    name: str
    position: float
    prediction: float = Field(ge=0.0, le=1.0)
    heatmap_png_base64: str | None = Field(
        None,
        description="Only with `explain=true`: Grad-CAM overlay on this slice, base64 PNG "
        "(absent for a slice over MAX_EXPLAIN_PIXELS).",
    )


class StudyFileError(BaseModel):
    name: str = Field(description="The file (or zip member) that was left out.")
    error: str = Field(description="Why it could not be read.")


VERTEBRA_DESCRIPTION = "P(fracture of this vertebra), from the study head (0-1)."


class VertebraProbabilities(BaseModel):
    """A study bundle's per-vertebra fracture probabilities, C1 (atlas) to C7, from its
    study head over every slice of the series (RSNA 2022's C1-C7 targets)."""

    C1: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C2: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C3: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C4: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C5: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C6: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)
    C7: float = Field(ge=0.0, le=1.0, description=VERTEBRA_DESCRIPTION)


class StudyResponse(BaseModel):
    result: Result = Field(
        description="Study-level call at the study threshold: `Potentially Fracture` when "
        "prediction >= threshold, else `Normal`; `Not a CT slice` when no slice passed the "
        "CT gate; `CT outside the model's range` when none passed it but some are CT (in "
        "another window, region or orientation: `outside_reason`)."
    )
    outside_reason: OutsideReason | None = Field(
        default=None, description=OUTSIDE_REASON_DESCRIPTION
    )
    prediction: float = Field(
        ge=0.0,
        le=1.0,
        description="Study score: the aggregation (see `aggregation`) of the in-distribution "
        "slices' probabilities; 0 when no slice is in distribution. A study bundle: its "
        "study head's P(fracture anywhere in C1-C7) (RSNA 2022's `patient_overall`).",
    )
    threshold: float = Field(
        ge=0.0, le=1.0, description="Study threshold of the operating point (model card)."
    )
    operating_point: OperatingPoint
    aggregation: str = Field(description="How slice scores become the study score, e.g. top2_mean.")
    slice_count: int = Field(ge=0, description="Slices scored (files in `errors` excluded).")
    slices: list[StudySlice] = Field(description="Every scored slice, head to foot.")
    top_slices: list[StudyTopSlice] = Field(
        description="The most suspicious in-distribution slices (the ones aggregated), "
        "highest first."
    )
    errors: list[StudyFileError] = Field(description="Files that could not be decoded.")
    position_unit: Literal["mm", "index"] = Field(
        description="Unit of the slices' `position`: `mm` (DICOM geometry) or `index` "
        "(instance or slice numbers).",
    )
    warnings: list[str] = Field(
        description="What looked wrong in the series geometry without stopping it: mixed "
        "orientation, spacing gaps (slices missing), duplicate positions, non-axial slices, "
        "unusable header values.",
    )
    vertebrae: VertebraProbabilities | None = Field(
        description="A study bundle (model card `study.head`): P(fracture) per cervical "
        "vertebra, C1-C7, from the study head. Null for a slice bundle, which scores slices "
        "only, and when no slice is in distribution (no call made)."
    )
    model: ModelInfo
    latency_ms: float = Field(description="Server time for unpacking, decoding and inference.")
    worklist_id: int | None = Field(
        default=None,
        description="Only with `save=true`: the study's id in the worklist (GET /worklist/{id}).",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "result": "Potentially Fracture",
                    "prediction": 0.93,
                    "threshold": 0.5,
                    "operating_point": "sensitive",
                    "aggregation": "top2_mean",
                    "slice_count": 3,
                    "slices": [
                        {"name": "IM001.dcm", "position": 12.5, "prediction": 0.04,
                         "in_distribution": True},
                        {"name": "IM002.dcm", "position": 10.0, "prediction": 0.97,
                         "in_distribution": True},
                        {"name": "IM003.dcm", "position": 7.5, "prediction": 0.89,
                         "in_distribution": True},
                    ],
                    "top_slices": [
                        {"index": 1, "name": "IM002.dcm", "position": 10.0, "prediction": 0.97},
                        {"index": 2, "name": "IM003.dcm", "position": 7.5, "prediction": 0.89},
                    ],
                    "errors": [{"name": "IM004.dcm", "error": "the DICOM file has no pixel data"}],
                    "position_unit": "mm",
                    "warnings": [],
                    "vertebrae": None,
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 412.0,
                },
                {
                    "result": "Potentially Fracture",
                    "prediction": 0.88,
                    "threshold": 0.35,
                    "operating_point": "sensitive",
                    "aggregation": "study_head",
                    "slice_count": 2,
                    "slices": [
                        {"name": "1.dcm", "position": 0.0, "prediction": 0.12,
                         "in_distribution": True},
                        {"name": "2.dcm", "position": -1.0, "prediction": 0.91,
                         "in_distribution": True},
                    ],
                    "top_slices": [
                        {"index": 1, "name": "2.dcm", "position": -1.0, "prediction": 0.91},
                        {"index": 0, "name": "1.dcm", "position": 0.0, "prediction": 0.12},
                    ],
                    "errors": [],
                    "position_unit": "mm",
                    "warnings": [],
                    "vertebrae": {"C1": 0.03, "C2": 0.81, "C3": 0.12, "C4": 0.02,
                                  "C5": 0.02, "C6": 0.04, "C7": 0.05},
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 2104.0,
                },
            ]
        }
    )  # fmt: skip


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo


# --- the worklist (issue 29) -------------------------------------------------------------

VERTEBRAE = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
Vertebra = Literal["C1", "C2", "C3", "C4", "C5", "C6", "C7"]
# A DICOM UID (UI): digits and dots, at most 64 characters.
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


def _storable_text(value: str) -> str:
    """Text a database can hold: UTF-8 encodable (no lone surrogates), no NUL character."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("the text is not valid Unicode") from exc
    if "\x00" in value:
        raise ValueError("the text contains a NUL character")
    return value


def _in_utc(value: datetime) -> datetime:
    """An aware time as UTC (how the worklist stores it); one that has no UTC year
    (before 0001 or after 9999 once converted) is refused."""
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise ValueError("the time is out of range in UTC") from exc


StoredText = Annotated[str, AfterValidator(_storable_text)]
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_in_utc)]
# Worklist and read ids: a 32-bit integer column.
MAX_ID = 2**31 - 1


class TopSliceLayer(StrEnum):
    """What `GET /worklist/{id}/top-slices/{rank}?layer=...` shows of a top slice: the CT
    `slice` (in the model's window) or the `heatmap` the PACS worker stored for it."""

    slice = "slice"
    heatmap = "heatmap"


class WorklistTopSlice(BaseModel):
    index: int = Field(ge=0, le=MAX_ID, description="Index of the slice in the analysed series.")
    name: StoredText = Field(max_length=256)
    position: float = Field(allow_inf_nan=False)
    prediction: float = Field(ge=0.0, le=1.0)


class SubmittedModel(BaseModel):
    name: StoredText = Field(max_length=128, description="Model name from the model card.")
    version: StoredText = Field(max_length=64, description="Model version from the model card.")


class StudySummary(BaseModel):
    """The study answer as `POST /predict/study` gives it; the fields the worklist keeps
    (any others, e.g. `slices`, are ignored)."""

    result: Result = Field(description=RESULT_DESCRIPTION)
    prediction: float = Field(ge=0.0, le=1.0, description="The study score.")
    threshold: float = Field(ge=0.0, le=1.0)
    operating_point: OperatingPoint
    top_slices: list[WorklistTopSlice] = Field(default_factory=list, max_length=64)
    model: SubmittedModel


class WorklistSubmission(BaseModel):
    """What the PACS worker sends after analysing a series (`POST /worklist`)."""

    study_uid: str = Field(max_length=64, pattern=UID_PATTERN, description="StudyInstanceUID.")
    series_uid: str = Field(max_length=64, pattern=UID_PATTERN, description="SeriesInstanceUID.")
    arrived_at: UtcDatetime | None = Field(
        default=None,
        description="When the series' last instance reached the PACS (the study's age "
        "counts from here); default: now.",
    )
    manufacturer: StoredText | None = Field(
        default=None, max_length=64, description="DICOM Manufacturer."
    )
    manufacturer_model: StoredText | None = Field(
        None, max_length=64, description="DICOM ManufacturerModelName."
    )
    identifiers: (
        dict[
            Annotated[StoredText, Field(max_length=64)], Annotated[StoredText, Field(max_length=64)]
        ]
        | None
    ) = Field(
        default=None,
        max_length=8,
        description="Other identifiers (e.g. `accession_number`); only those the server's "
        "WORKLIST_IDENTIFIERS names are stored, the rest are dropped.",
    )
    study: StudySummary = Field(description="The answer of `POST /predict/study`, as is.")


class ReviewRequest(BaseModel):
    """A radiologist's read of a worklist study."""

    fracture: bool = Field(description="Is there a cervical-spine fracture?")
    levels: list[Vertebra] = Field(
        default_factory=list,
        max_length=7,
        description="The fractured vertebrae, C1-C7 (optional; only with `fracture` true).",
    )
    note: StoredText | None = Field(
        default=None, max_length=2000, description="Free text (optional)."
    )

    @model_validator(mode="after")
    def _levels_need_a_fracture(self) -> ReviewRequest:
        if self.levels and not self.fracture:
            raise ValueError("levels name fractured vertebrae: send them with fracture true")
        if len(set(self.levels)) != len(self.levels):
            raise ValueError("each level at most once")
        return self


class ReviewEntry(BaseModel):
    id: int
    fracture: bool
    levels: list[Vertebra]
    note: str | None
    reader: str | None = Field(
        description="The reader's token id (first 8 hex digits of its SHA-256); null when "
        "the server runs without tokens."
    )
    reviewed_at: datetime


class WorklistEntry(BaseModel):
    """One analysed series in the worklist, with every read of it (oldest first)."""

    id: int
    source: Literal["pacs", "upload"] = Field(
        description="`pacs`: the PACS worker's; `upload`: `POST /predict/study?save=true`."
    )
    study_uid: str | None
    series_uid: str | None
    identifiers: dict[str, str] | None = Field(
        description="Only those WORKLIST_IDENTIFIERS names; null by default."
    )
    arrived_at: datetime
    analysed_at: datetime
    verdict: Result
    flagged: bool = Field(description="`verdict` is `Potentially Fracture`.")
    score: float
    threshold: float
    operating_point: OperatingPoint
    top_slices: list[WorklistTopSlice]
    model: ModelInfo
    manufacturer: str | None
    manufacturer_model: str | None
    status: WorklistStatus
    opened_at: datetime | None
    reviews: list[ReviewEntry] = Field(description="Every read, oldest first (the last counts).")


FinalFailureClass = Literal["identity", "permanent", "error"]


class PipelineFailureIn(BaseModel):
    """A series the PACS pipeline gave up on for good (the worker's or the poller's report)."""

    study_uid: str = Field(max_length=64, pattern=UID_PATTERN, description="StudyInstanceUID.")
    series_uid: str = Field(max_length=64, pattern=UID_PATTERN, description="SeriesInstanceUID.")
    failure_class: FinalFailureClass = Field(
        description="`identity`: patients or studies disagree within the series; `permanent`: "
        "the API refused its data; `error`: it failed every attempt (docs/pacs.md)."
    )
    reason: str = Field(min_length=1, max_length=2000)
    failed_at: UtcDatetime


class PipelineFailureOut(PipelineFailureIn):
    id: int


class DeadLetterOut(BaseModel):
    """A webhook notification that every attempt failed to deliver."""

    id: int
    study_id: int = Field(description="The worklist entry it was about.")
    delivery_id: str = Field(description="Its `X-Triage-Delivery` (kept by a replay).")
    url: str = Field(description="Where it was sent.")
    body: dict[str, Any] = Field(description="What was sent (and signed).")
    attempts: int
    last_error: str
    failed_at: datetime


class ReplayedOut(BaseModel):
    """A dead letter sent again: its notification is pending, due now."""

    study_id: int
    delivery_id: str


class WorklistPage(BaseModel):
    items: list[WorklistEntry] = Field(
        description="Flagged studies first, then by arrival (the longest waiting first)."
    )
    total: int = Field(description="Entries that pass the filters (all pages).")
    offset: int
    limit: int


class ProportionOut(BaseModel):
    successes: int
    total: int
    estimate: float | None = Field(description="successes / total; null when total is 0.")
    lower: float | None = Field(description="Wilson 95 % interval, lower bound.")
    upper: float | None = Field(description="Wilson 95 % interval, upper bound.")


class PerformanceOut(BaseModel):
    reviewed: int = Field(description="Reviewed studies in this group.")
    no_call: int = Field(
        description="Of them, `Not a CT slice` (no call made): outside the four figures."
    )
    true_positive: int
    false_positive: int
    true_negative: int
    false_negative: int
    sensitivity: ProportionOut
    specificity: ProportionOut
    ppv: ProportionOut
    npv: ProportionOut


class ScoreDriftOut(BaseModel):
    n: int = Field(description="Analysed studies with a call by the card's model here.")
    counts: list[int] = Field(description="Of them, per bin of `reference.edges`.")
    psi: float | None = Field(description="PSI against `reference.fractions`; null when n is 0.")
    warning: bool = Field(description="psi > MONITORING_PSI_WARN.")


class RefusalShareOut(ProportionOut):
    warning: bool = Field(description="estimate > MONITORING_NOT_CT_WARN.")


class ScoreHistogramOut(BaseModel):
    edges: list[float]
    fractions: list[float]
    n: int
    source: str


class DriftOut(BaseModel):
    """What the product sees, reviewed or not: the study scores' population stability index
    (PSI) against the card's out-of-fold score distribution, and the weekly share of the
    CT gate's refusals."""

    model: str | None = Field(
        description="`name version` of the loaded card; PSI takes only this model's scores."
    )
    reference: ScoreHistogramOut | None = Field(
        description="The card's `study.score_histogram`: the bins and out-of-fold shares."
    )
    psi_unavailable: str | None = Field(
        description="Why there is no PSI (e.g. the card has no out-of-fold score "
        "distribution); null when there is."
    )
    psi_warn: float = Field(description="MONITORING_PSI_WARN.")
    refusal_warn: float = Field(description="MONITORING_NOT_CT_WARN.")
    recent_days: int = Field(description="MONITORING_DRIFT_DAYS: the window of `recent`.")
    recent: ScoreDriftOut | None = Field(
        description="PSI of the studies that arrived in the last `recent_days` days."
    )
    psi_by_week: dict[str, ScoreDriftOut] = Field(description="Key: ISO week of arrival.")
    refusals_by_week: dict[str, dict[str, RefusalShareOut]] = Field(
        description="ISO week of arrival -> answer (`Not a CT slice`, `CT outside the "
        "model's range`) -> its share of every analysed study that week, Wilson 95 %."
    )


class MonitoringResponse(BaseModel):
    """The product's calls (flagged or not) against the latest read of each reviewed study,
    and the drift of every analysed study's score and refusals (`drift`)."""

    overall: PerformanceOut
    by_model_version: dict[str, PerformanceOut] = Field(description="Key: `name version`.")
    by_scanner: dict[str, PerformanceOut] = Field(description="Key: `manufacturer / model`.")
    by_week: dict[str, PerformanceOut] = Field(
        description="Key: the ISO week of arrival, e.g. `2026-W49`."
    )
    drift: DriftOut
    pipeline_failures: dict[str, int] = Field(
        description="Series the PACS pipeline gave up on and has not analysed since, by "
        "failure class (`identity`, `permanent`, `error`); the list: `GET /pipeline/failures`."
    )
