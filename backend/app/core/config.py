"""All server settings, read once from environment variables (pydantic-settings)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ml_model.config import BONE_WINDOW_LEVEL, BONE_WINDOW_WIDTH, DEFAULT_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
# Room for the multipart boundary and part headers around a single file of the maximum size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class Settings(BaseSettings):
    """Every knob of the API; each field is read from the upper-case env var of its name."""

    model_config = SettingsConfigDict(
        case_sensitive=False,
        extra="ignore",
        protected_namespaces=(),  # `model_dir` is ours, not pydantic's
    )

    model_dir: Path = Field(
        default=DEFAULT_MODEL_DIR,
        description="Model bundle directory (model.keras + model_card.json).",
    )
    threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Overrides the model card's threshold of the default (sensitive) "
        "operating point; the specific operating point keeps the card's value.",
    )
    max_upload_mb: float = Field(default=20.0, gt=0, description="Largest file, in MiB.")
    max_batch_files: int = Field(default=32, ge=1, description="Most files per batch call.")
    max_batch_mb: float = Field(
        default=100.0, gt=0, description="Largest /predict/batch request body, in MiB."
    )
    max_explain_pixels: int = Field(
        default=2048 * 2048,
        ge=1,
        description="Largest image (width x height) that explain=true draws a heatmap for; "
        "the full-size overlay costs ~100 bytes of memory per pixel.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS: a JSON list or comma-separated. Empty: no CORS.",
    )
    window_level: float = Field(default=BONE_WINDOW_LEVEL, description="DICOM window level, HU.")
    window_width: float = Field(
        default=BONE_WINDOW_WIDTH, gt=0, description="DICOM window width, HU."
    )
    frontend_dist: Path = Field(
        default=REPO_ROOT / "frontend" / "dist",
        description="Built web app, served at / when the directory exists.",
    )
    inference_backend: Literal["local"] = Field(
        default="local", description="Where the model runs: `local` (in-process TensorFlow)."
    )
    log_level: str = Field(default="INFO", description="Level of the JSON logs.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if not text:
                return []
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * MIB)

    @property
    def max_single_request_bytes(self) -> int:
        """Body limit of every request except /predict/batch: one file plus multipart framing."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
