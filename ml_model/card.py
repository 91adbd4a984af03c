"""The model card: one typed description of a bundle, written by training, validated on load.

Everything inference needs from a bundle is a typed field here — input size and window,
calibration temperature, operating points, study aggregation, the CT gate's threshold, the
Grad-CAM layer — so a bundle with a missing or malformed value is refused when it is loaded
(with the file and the field named), not on the first request. Reports (metrics, per-series
results, provenance) are kept as they were written: the card allows extra fields.

The API's ``GET /model`` answers with this model, and the web app's types are generated
from the API's OpenAPI schema, so all three read one definition.
"""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ml_model.bundle import CARD_FILE, GATE_FILE, STUDY_HEAD_FILE

OperatingPointName = Literal["sensitive", "specific"]
OPERATING_POINTS: tuple[OperatingPointName, ...] = ("sensitive", "specific")
DEFAULT_OPERATING_POINT: OperatingPointName = "sensitive"

# A study bundle's outputs (RSNA 2022): the patient's fracture probability, then one per
# cervical vertebra, in this order everywhere (labels, the study head's logits, the API).
VERTEBRAE: tuple[str, ...] = ("C1", "C2", "C3", "C4", "C5", "C6", "C7")
STUDY_OUTPUTS: tuple[str, ...] = ("patient_overall", *VERTEBRAE)


class CardError(ValueError):
    """A bundle whose model card is missing, unreadable or invalid (the message names the
    file and the field)."""


class _Open(BaseModel):
    """A card section that keeps keys this version does not know (newer reports)."""

    model_config = ConfigDict(extra="allow")


class OperatingPointStats(_Open):
    threshold: float = Field(ge=0.0, le=1.0, description="P(fracture) at or above: fracture.")
    recall: float | None = Field(default=None, description="Out-of-fold recall here.")
    specificity: float | None = Field(default=None, description="Out-of-fold specificity here.")


class Window(_Open):
    level: float = Field(description="Window level (centre), Hounsfield units.")
    width: float = Field(gt=0.0, description="Window width, Hounsfield units.")

    def as_pair(self) -> tuple[float, float]:
        """(level, width), as the decoders take it."""
        return (self.level, self.width)


class Crop(_Open):
    method: str = Field(description="How the network's view is cut from the slice.")
    output_size: int = Field(gt=0, description="Side of the crop the network sees, pixels.")
    layer: str = Field(description="The Keras layer that crops, inside the graph.")


class Context(_Open):
    """2.5D input: the channels are a slice and its neighbours ``spacing_mm`` above and below
    (``ml_model.imaging.transforms.stack_neighbours``), not one slice repeated."""

    slices: Literal[3] = Field(default=3, description="Slices stacked as channels.")
    spacing_mm: float = Field(gt=0.0, description="Distance of the neighbours, millimetres.")


class InputSpec(_Open):
    size: int = Field(gt=0, description="The model takes (N, size, size, channels) pixels.")
    channels: int = Field(default=3, ge=1)
    serving_dtype: str = Field(default="uint8")
    window: Window = Field(description="The HU window the training images were exported with.")
    preprocessing: str | None = None
    crop: Crop | None = None
    context: Context | None = Field(
        default=None, description="2.5D neighbours as channels; absent: one slice, 3 copies."
    )


class StudyHeadSpec(_Open):
    """The study head: ordered slice features (Z, feature_dim), resampled to
    sequence_length, in; one probability per name of ``outputs`` out."""

    file: str = Field(default=STUDY_HEAD_FILE, description="The head's weights in the bundle.")
    sequence_length: int = Field(ge=1, description="Slices the sequence is resampled to (T).")
    feature_dim: int = Field(ge=1, description="Features per slice (F).")
    outputs: list[str] = Field(default_factory=lambda: list(STUDY_OUTPUTS))

    @model_validator(mode="after")
    def _study_outputs(self) -> StudyHeadSpec:
        if tuple(self.outputs) != STUDY_OUTPUTS:
            raise ValueError(f"outputs must be {list(STUDY_OUTPUTS)}")
        return self


# The study aggregations a card can name: the study head's patient_overall, or the mean of
# the top_k slice probabilities (``top{top_k}_mean``).
STUDY_HEAD_AGGREGATION = "study_head"


def top_k_mean(top_k: int) -> str:
    """The name of the aggregation "mean of the ``top_k`` highest slice probabilities"."""
    return f"top{top_k}_mean"


# The out-of-fold study-score histogram a card keeps for drift monitoring: this many bins,
# their edges at the reference's quantiles (so each holds about the same share).
SCORE_HISTOGRAM_BINS = 10


class ScoreHistogram(_Open):
    """The distribution of out-of-fold study scores (what ``GET /monitoring`` compares the
    live scores with, as a population stability index): ``fractions[i]`` of the scores lay
    in [``edges[i]``, ``edges[i + 1]``) (the last bin includes 1)."""

    edges: list[float] = Field(min_length=2, description="Bin edges, from 0 to 1, increasing.")
    fractions: list[float] = Field(min_length=1, description="Share of the scores per bin.")
    n: int = Field(ge=1, description="Out-of-fold studies the shares were counted on.")
    source: str = Field(description="Which scores: e.g. out-of-fold studies of patient folds.")

    @model_validator(mode="after")
    def _a_distribution(self) -> ScoreHistogram:
        edges, fractions = self.edges, self.fractions
        if len(edges) != len(fractions) + 1:
            raise ValueError("edges must be one more than fractions")
        if edges[0] != 0.0 or edges[-1] != 1.0 or any(b <= a for a, b in pairwise(edges)):
            raise ValueError("edges must increase from 0 to 1")
        if any(f < 0.0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError("fractions must be >= 0 and sum to 1")
        return self


def score_histogram(
    scores: Any, source: str, bins: int = SCORE_HISTOGRAM_BINS
) -> ScoreHistogram | None:
    """The :class:`ScoreHistogram` of ``scores`` in [0, 1] (training writes it from the
    out-of-fold study scores): edges at the scores' quantiles, equal quantiles merged;
    None without scores."""
    values = np.clip(np.asarray(scores, dtype=np.float64).ravel(), 0.0, 1.0)
    if values.size == 0:
        return None
    inner = np.quantile(values, np.linspace(0.0, 1.0, bins + 1)[1:-1])
    edges = np.unique(np.concatenate([[0.0], inner[(inner > 0.0) & (inner < 1.0)], [1.0]]))
    counts = np.bincount(bin_index(values, edges), minlength=len(edges) - 1)
    return ScoreHistogram(
        edges=[float(e) for e in edges],
        fractions=[float(c) for c in counts / values.size],
        n=int(values.size),
        source=source,
    )


def bin_index(values: Any, edges: list[float] | np.ndarray) -> np.ndarray:
    """The bin of each value: [edges[i], edges[i + 1]), the last bin closed at 1."""
    inner = np.asarray(edges, dtype=np.float64)[1:-1]
    return np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right")


class StudySettings(_Open):
    aggregation: str = Field(
        description="How slice scores become a study score: `study_head` (the head's "
        "patient_overall; needs `head`) or `top{top_k}_mean` (the top_k slices' mean)."
    )
    top_k: int = Field(ge=1, description="Slices averaged into the study score.")
    operating_points: dict[OperatingPointName, OperatingPointStats] = Field(
        default_factory=dict, description="Thresholds on the study score."
    )
    head: StudyHeadSpec | None = Field(
        default=None,
        description="A learned study head (patient_overall, C1..C7); absent: top-k mean.",
    )
    score_histogram: ScoreHistogram | None = Field(
        default=None,
        description="The out-of-fold study scores' distribution (drift monitoring's "
        "reference); absent: the bundle's training kept none.",
    )

    @model_validator(mode="after")
    def _known_aggregation(self) -> StudySettings:
        mean = top_k_mean(self.top_k)
        if self.aggregation == STUDY_HEAD_AGGREGATION and self.head is None:
            raise ValueError(f"aggregation {STUDY_HEAD_AGGREGATION!r} needs a study head")
        if self.aggregation not in (STUDY_HEAD_AGGREGATION, mean):
            raise ValueError(
                f"aggregation must be {mean!r} or {STUDY_HEAD_AGGREGATION!r}, "
                f"not {self.aggregation!r}"
            )
        return self


class GateSettings(_Open):
    threshold: float = Field(
        allow_inf_nan=False,
        description="A slice is CT when the gate's logit is >= this (stored here only).",
    )
    file: str = Field(default=GATE_FILE, description="The gate's weights in the bundle.")


class ModelCard(_Open):
    """A bundle's ``model_card.json``."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    architecture: str
    created: str | None = None
    package_version: str | None = None
    input: InputSpec
    output: str | None = None
    temperature: float = Field(gt=0.0, description="Calibration: logits are divided by it.")
    default_operating_point: OperatingPointName = DEFAULT_OPERATING_POINT
    operating_points: dict[OperatingPointName, OperatingPointStats]
    gradcam_layer: str = Field(min_length=1)
    study: StudySettings
    gate: GateSettings
    intended_use: str | None = None
    caveats: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    training: dict[str, Any] | None = Field(
        default=None, description="Provenance: the exact argv, data fingerprint, seeds."
    )
    data: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    leave_one_series_out: dict[str, Any] | None = None
    test: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _both_operating_points(self) -> ModelCard:
        missing = [p for p in OPERATING_POINTS if p not in self.operating_points]
        if missing:
            raise ValueError(f"operating_points lacks {', '.join(missing)}")
        return self

    def threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The slice threshold of an operating point."""
        return self.operating_points[_operating_point(operating_point)].threshold

    def study_threshold(self, operating_point: str = DEFAULT_OPERATING_POINT) -> float:
        """The threshold on the study score; the slice threshold if none is stored."""
        point = self.study.operating_points.get(_operating_point(operating_point))
        return point.threshold if point is not None else self.threshold(operating_point)


def _operating_point(name: str) -> OperatingPointName:
    for point in OPERATING_POINTS:
        if name == point:
            return point
    raise ValueError(f"operating point must be one of {OPERATING_POINTS}")


def card_path(model_dir: str | Path) -> Path:
    return Path(model_dir, CARD_FILE)


def load_card(model_dir: str | Path) -> ModelCard:
    """Read and validate a bundle's card; :class:`CardError` names the file and the field."""
    path = card_path(model_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CardError(f"{path}: the bundle has no model card") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: unreadable model card ({exc})") from exc
    try:
        return ModelCard.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"field `{'.'.join(str(p) for p in error['loc']) or '(card)'}`: {error['msg']}"
            for error in exc.errors()
        )
        raise CardError(f"{path}: invalid model card: {problems}") from exc


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card as written (a plain dict): for reports and re-writing, not for inference."""
    card: dict[str, Any] = json.loads(card_path(model_dir).read_text())
    return card


def write_card(out_dir: str | Path, card: dict[str, Any] | ModelCard) -> None:
    """Write the card, validating it first: training never writes a card inference refuses."""
    data = card.model_dump(exclude_none=True) if isinstance(card, ModelCard) else card
    data = json.loads(json.dumps(data, default=_json_default))
    ModelCard.model_validate(data)
    card_path(out_dir).write_text(json.dumps(data, indent=2) + "\n")


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
