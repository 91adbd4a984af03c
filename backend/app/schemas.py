"""Response models: the API's contract, with the examples shown in /docs."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue

Result = Literal["Potentially Fracture", "Normal"]


class OperatingPoint(StrEnum):
    """`sensitive` misses fewer fractures (more false alarms); `specific` the reverse."""

    sensitive = "sensitive"
    specific = "specific"


class ModelInfo(BaseModel):
    name: str = Field(description="Model name from the model card.")
    version: str = Field(description="Model version from the model card.")


_MODEL_EXAMPLE: dict[str, JsonValue] = {"name": "custom-cnn", "version": "2026.05.1"}


class PredictionBase(BaseModel):
    result: Result = Field(
        description="`Potentially Fracture` when prediction >= threshold, else `Normal`."
    )
    prediction: float = Field(ge=0.0, le=1.0, description="Probability of fracture (0-1).")
    threshold: float = Field(ge=0.0, le=1.0, description="Threshold of the operating point.")
    operating_point: OperatingPoint = Field(description="Operating point the threshold is from.")
    model: ModelInfo


class PredictionResponse(PredictionBase):
    latency_ms: float = Field(description="Server time for decoding, inference and heatmap.")
    heatmap_png_base64: str | None = Field(
        None,
        description="Only with `explain=true`: Grad-CAM overlay on the input, a base64 PNG "
        "of the input image's size.",
    )

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "result": "Potentially Fracture",
                    "prediction": 0.87,
                    "threshold": 0.3,
                    "operating_point": "sensitive",
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 12.4,
                },
                {
                    "result": "Normal",
                    "prediction": 0.08,
                    "threshold": 0.7,
                    "operating_point": "specific",
                    "model": _MODEL_EXAMPLE,
                    "latency_ms": 48.9,
                    "heatmap_png_base64": "iVBORw0KGgoAAAANSUhEUgAA...",
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
                            "threshold": 0.3,
                            "operating_point": "sensitive",
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


class ErrorResponse(BaseModel):
    detail: str = Field(description="What was wrong.")


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelInfo


class ModelCard(BaseModel):
    """The bundle's model_card.json, passed through whole (unknown keys included)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "name": "custom-cnn",
                    "version": "2026.05.1",
                    "architecture": "custom",
                    "operating_points": {
                        "sensitive": {"threshold": 0.3, "sensitivity": 0.95, "specificity": 0.7},
                        "specific": {"threshold": 0.7, "sensitivity": 0.8, "specificity": 0.93},
                    },
                    "metrics": {"roc_auc": 0.94},
                    "intended_use": "Triage aid for axial cervical-spine CT slices.",
                    "limitations": ["Not a diagnosis; a radiologist reads every study."],
                }
            ]
        },
    )

    name: str | None = None
    version: str | None = None
    operating_points: dict[str, dict[str, Any]] | None = None
    metrics: dict[str, Any] | None = None
