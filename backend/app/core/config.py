"""All server settings, read once from environment variables (pydantic-settings)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ml_model.config import DEFAULT_MODEL_DIR

REPO_ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024
# Room for the multipart boundary and part headers around a single file of the maximum size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# The roles a token may carry (AUTH_TOKEN_HASHES' `DIGEST:role` suffix).
READER_ROLE = "reader"
OPERATOR_ROLE = "operator"
TOKEN_ROLES = frozenset({READER_ROLE, OPERATOR_ROLE})


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
    window_level: float | None = Field(
        default=None, description="DICOM window level, HU; default: the model card's window."
    )
    window_width: float | None = Field(
        default=None, gt=0, description="DICOM window width, HU; default: the model card's."
    )
    frontend_dist: Path = Field(
        default=REPO_ROOT / "frontend" / "dist",
        description="Built web app, served at / when the directory exists.",
    )
    inference_backend: Literal["onnx", "local", "tfserving"] = Field(
        default="onnx",
        description="Where the classifier runs: `onnx` (in-process ONNX Runtime on the "
        "bundle's model.onnx; TensorFlow is never imported, Grad-CAM runs gradcam.onnx), "
        "`local` (in-process TensorFlow: the reference) or `tfserving` (TF Serving's REST "
        "predict API at TFSERVING_URL: it returns the probability and the CT gate's logit, "
        "so no model runs here; Grad-CAM runs the bundle's gradcam.onnx, or loads "
        "model.keras in MODEL_DIR on the first explain=true when there is none).",
    )
    tfserving_url: str = Field(
        default="http://tfserving:8501/v1/models/fracture:predict",
        description="TF Serving REST predict URL (INFERENCE_BACKEND=tfserving).",
    )
    tfserving_timeout_s: float = Field(
        default=10.0, gt=0, description="Timeout of one TF Serving request, in seconds."
    )
    batching: bool = Field(
        default=True,
        description="Group concurrent requests into one model call (dynamic micro-batching).",
    )
    batch_max_size: int = Field(
        default=16, ge=1, le=256, description="Most images in one micro-batched model call."
    )
    batch_max_wait_ms: float = Field(
        default=2.0,
        ge=0.0,
        le=5.0,
        description="Longest wait, after a batch's first request, for more requests to join; "
        "only spent while other requests are on their way (a lone request never waits).",
    )
    onnx_threads: int | None = Field(
        default=None,
        ge=1,
        description="ONNX Runtime intra-op threads (INFERENCE_BACKEND=onnx); default: the "
        "CPUs this process may use (its affinity mask, so a container's cpuset).",
    )
    onnx_lanes: int | None = Field(
        default=None,
        ge=1,
        description="ONNX Runtime lanes for batches of two images or more: single-thread "
        "sessions run side by side on shares of the batch (default: as many as ONNX_THREADS; "
        "1: one multi-threaded session for everything). A lone image always runs on the "
        "multi-threaded session.",
    )
    tf_intra_op_threads: int | None = Field(
        default=None,
        ge=1,
        description="TensorFlow intra-op threads; default: the machine's CPU count.",
    )
    tf_inter_op_threads: int = Field(default=2, ge=1, description="TensorFlow inter-op threads.")
    blas_threads: int = Field(
        default=1,
        ge=1,
        description="Threads of numpy's BLAS (the CT gate's matrix products): 1, so that "
        "they do not fight TensorFlow's threads.",
    )
    max_study_files: int = Field(
        default=1000,
        ge=1,
        description="Most slices in one /predict/study call. Sent as separate files, a "
        "request also stops at Starlette's 1000 multipart files; a zip does not.",
    )
    max_study_mb: float = Field(
        default=512.0, gt=0, description="Largest /predict/study request body, in MiB."
    )
    max_zip_members: int = Field(
        default=2000, ge=1, description="Most entries (files and folders) in a study zip."
    )
    max_zip_uncompressed_mb: float = Field(
        default=1024.0, gt=0, description="Largest total uncompressed size of a study zip, MiB."
    )
    max_zip_ratio: float = Field(
        default=200.0,
        gt=1,
        description="Largest compression ratio of one zip member (zip-bomb guard).",
    )
    max_request_memory_mb: float = Field(
        default=640.0,
        gt=0,
        description="Most memory one request may hold (its body, a zip's unpacked members, "
        "a decoded image), estimated from headers before anything is decoded; over it: 413 "
        "with the reason.",
    )
    memory_budget_mb: float = Field(
        default=1024.0,
        gt=0,
        description="Memory all requests in flight may hold together (the same estimates); a "
        "request that would pass it gets 503 with Retry-After instead of swapping. At least "
        "MAX_REQUEST_MEMORY_MB.",
    )
    max_concurrent_studies: int = Field(
        default=4,
        ge=1,
        description="Most /predict/study and /report requests at once; more: 503 with Retry-After.",
    )
    heatmap_max_side: int = Field(
        default=1024,
        ge=64,
        description="Longest side, in pixels, of a Grad-CAM heatmap (explain=true); larger "
        "images get a heatmap scaled down to it (aspect ratio kept).",
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="A connection must send a request's complete header within this many "
        "seconds of its first byte (or of opening), else it is closed (the uvicorn protocol "
        "`backend.app.core.http:BoundedHttpProtocol`, see the Makefile's `run`).",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="An upload that sends no byte for this many seconds is answered 408 (or "
        "its connection closed) and its memory freed.",
    )
    auth_token_hashes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="SHA-256 hex digests of the accepted bearer tokens, comma-separated. Set: "
        "every prediction, study, report, model, metrics and worklist endpoint needs "
        "`Authorization: Bearer <token>` (else 401); /health, /ready, the docs and the web "
        "app stay open. Empty: no authentication. A digest may carry roles after a colon "
        "(several joined by `+`), `DIGEST:reader`: a radiologist's read "
        "(`POST /worklist/{id}/review`) needs a token with the `reader` role, the webhook's "
        "dead letters (`/notifications/dead-letters`) one with the `operator` role (else 403).",
    )
    database_url: str | None = Field(
        default=None,
        description="The worklist's database as an SQLAlchemy URL, e.g. "
        "`postgresql+psycopg://triage:secret@db:5432/triage` (PostgreSQL, psycopg 3). "
        "Unset: the SQLite file WORKLIST_SQLITE_PATH.",
    )
    worklist_sqlite_path: Path = Field(
        default=REPO_ROOT / "worklist.sqlite3",
        description="The worklist's SQLite file when DATABASE_URL is unset (created, with "
        "its folder, at start-up).",
    )
    worklist_identifiers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Identifiers besides the study and series UIDs that the worklist keeps "
        "when a caller sends them (`identifiers` of POST /worklist), comma-separated, e.g. "
        "`accession_number`. Empty: none is stored (the others are dropped).",
    )
    worklist_pacs_url: str | None = Field(
        default=None,
        description="The PACS's DICOMweb root, e.g. `http://orthanc:8042/dicom-web`: the "
        "worklist's viewer shows a PACS study's top slices and their heatmaps from it "
        "(WADO-RS, through `GET /worklist/{id}/top-slices/{rank}?layer=...`). Unset: the viewer "
        "shows the analysis only.",
    )
    worklist_pacs_user: str | None = Field(
        default=None, description="HTTP basic-auth user for WORKLIST_PACS_URL."
    )
    worklist_pacs_password: SecretStr | None = Field(
        default=None, description="HTTP basic-auth password for WORKLIST_PACS_URL."
    )
    worklist_pacs_timeout_s: float = Field(
        default=20.0, gt=0, description="Timeout of one DICOMweb call to WORKLIST_PACS_URL."
    )
    webhook_url: str | None = Field(
        default=None,
        description="Where a notification of each flagged study (`Potentially Fracture`) is "
        "POSTed as signed JSON (docs/worklist.md, Notification). Unset: no notification. "
        "Needs WEBHOOK_SECRET or WEBHOOK_SECRET_FILE (the server refuses to start without one).",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        description="The key of the notifications' HMAC-SHA256 signature "
        "(`X-Triage-Signature`). Or WEBHOOK_SECRET_FILE; not both.",
    )
    webhook_secret_file: Path | None = Field(
        default=None,
        description="A file holding the signature's key (a mounted secret; one trailing "
        "newline is dropped), instead of WEBHOOK_SECRET.",
    )
    webhook_max_attempts: int = Field(
        default=8,
        ge=1,
        le=100,
        description="Most attempts to deliver one notification (the first included); after "
        "the last failed one it is dead-lettered (a table row and an ERROR log line).",
    )
    webhook_backoff_base_s: float = Field(
        default=2.0,
        gt=0,
        description="The wait before the first retry, in seconds; it doubles after each "
        "failed attempt, up to WEBHOOK_BACKOFF_MAX_S.",
    )
    webhook_backoff_max_s: float = Field(
        default=300.0, gt=0, description="Longest wait between two attempts, in seconds."
    )
    webhook_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of one webhook call, in seconds (no 2xx within it: a failed attempt).",
    )
    webhook_poll_s: float = Field(
        default=1.0,
        gt=0,
        description="How often the API looks for notifications that are due, in seconds.",
    )
    monitoring_psi_warn: float = Field(
        default=0.2,
        gt=0.0,
        description="GET /monitoring's drift: a PSI of the study scores against the card's "
        "out-of-fold distribution above this is flagged (`warning`). Common reading: under "
        "0.1 stable, 0.1-0.2 worth a look, over 0.2 a shift.",
    )
    monitoring_not_ct_warn: float = Field(
        default=0.2,
        gt=0.0,
        le=1.0,
        description="GET /monitoring's drift: a week whose share of `Not a CT slice` (or of "
        "`CT outside the model's range`) answers is above this is flagged (`warning`).",
    )
    monitoring_drift_days: int = Field(
        default=28,
        ge=1,
        description="GET /monitoring's drift: the PSI over the studies that arrived in the "
        "last this many days (besides the one per ISO week).",
    )
    report_identifiers: bool = Field(
        default=True,
        description="Print the exam's study and series instance UIDs, accession number and "
        "study date on /report's PDF when the DICOM headers hold them, so a printed report can "
        "be tied to its exam (never the patient's name, ID or birth date). Off: the report "
        "holds no identifier at all.",
    )
    load_model_in_background: bool = Field(
        default=True,
        description="Open the port at once and load the model behind it (/health 200, /ready "
        "503 with the reason until it is loaded and warmed up; a bundle that fails to load "
        "stops the process). Off: the lifespan waits for the model (tests).",
    )
    log_level: str = Field(default="INFO", description="Level of the JSON logs.")

    @field_validator("auth_token_hashes", mode="before")
    @classmethod
    def _split_hashes(cls, value: Any) -> Any:
        """``DIGEST[:ROLE[+ROLE...]]``, comma-separated -> one normalised entry per token:
        the lower-case digest, then ``:`` and its sorted roles when it has any."""
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list):
            return value
        entries = []
        for entry in value:
            digest, _, suffix = str(entry).strip().partition(":")
            digest = digest.strip().lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ValueError(
                    "AUTH_TOKEN_HASHES takes SHA-256 hex digests (64 hex digits each, "
                    "comma-separated, each optionally followed by `:role`), e.g. from "
                    "`printf %s TOKEN | sha256sum`"
                )
            roles = {role.strip() for role in suffix.split("+") if role.strip()}
            if not roles <= TOKEN_ROLES:
                raise ValueError(
                    f"AUTH_TOKEN_HASHES: unknown role(s) {sorted(roles - TOKEN_ROLES)}; "
                    f"known: {sorted(TOKEN_ROLES)}"
                )
            entries.append(f"{digest}:{'+'.join(sorted(roles))}" if roles else digest)
        return entries

    @field_validator(
        "webhook_url", "webhook_secret", "webhook_secret_file", "worklist_pacs_url", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        """``WEBHOOK_URL=`` (as compose passes an unset variable) means off (the same for
        WORKLIST_PACS_URL)."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("worklist_identifiers", mode="before")
    @classmethod
    def _split_identifiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @model_validator(mode="after")
    def _budget_holds_a_request(self) -> Settings:
        if self.memory_budget_mb < self.max_request_memory_mb:
            raise ValueError(
                f"MEMORY_BUDGET_MB ({self.memory_budget_mb:g}) must be at least "
                f"MAX_REQUEST_MEMORY_MB ({self.max_request_memory_mb:g})"
            )
        return self

    @model_validator(mode="after")
    def _webhook_is_signed(self) -> Settings:
        """A webhook needs exactly one key: unsigned notifications are never sent."""
        if self.webhook_secret is not None and self.webhook_secret_file is not None:
            raise ValueError("set WEBHOOK_SECRET or WEBHOOK_SECRET_FILE, not both")
        if self.webhook_url and not self.webhook_key:
            raise ValueError(
                "WEBHOOK_URL is set without a signing key: set WEBHOOK_SECRET or "
                "WEBHOOK_SECRET_FILE (notifications are always signed)"
            )
        return self

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
    def token_digests(self) -> list[str]:
        """The accepted tokens' SHA-256 digests (AUTH_TOKEN_HASHES without the roles)."""
        return [entry.partition(":")[0] for entry in self.auth_token_hashes]

    @property
    def token_roles(self) -> dict[str, frozenset[str]]:
        """Each accepted digest's roles (AUTH_TOKEN_HASHES' `:role` suffixes)."""
        roles: dict[str, frozenset[str]] = {}
        for entry in self.auth_token_hashes:
            digest, _, suffix = entry.partition(":")
            named = frozenset(filter(None, suffix.split("+")))
            roles[digest] = roles.get(digest, frozenset()) | named
        return roles

    @property
    def worklist_database_url(self) -> str:
        """DATABASE_URL, else the SQLite file WORKLIST_SQLITE_PATH."""
        return self.database_url or f"sqlite:///{self.worklist_sqlite_path}"

    @property
    def webhook_key(self) -> bytes:
        """The HMAC key: WEBHOOK_SECRET, or WEBHOOK_SECRET_FILE's content (read here, so a
        missing file stops the start); empty when neither is set."""
        if self.webhook_secret_file is not None:
            text = self.webhook_secret_file.read_text(encoding="utf-8")
            return text.removesuffix("\n").removesuffix("\r").encode()
        if self.webhook_secret is not None:
            return self.webhook_secret.get_secret_value().encode()
        return b""

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)

    @property
    def max_batch_bytes(self) -> int:
        return int(self.max_batch_mb * MIB)

    @property
    def max_study_bytes(self) -> int:
        return int(self.max_study_mb * MIB)

    @property
    def max_zip_uncompressed_bytes(self) -> int:
        return int(self.max_zip_uncompressed_mb * MIB)

    @property
    def max_request_memory_bytes(self) -> int:
        return int(self.max_request_memory_mb * MIB)

    @property
    def memory_budget_bytes(self) -> int:
        return int(self.memory_budget_mb * MIB)

    @property
    def intra_op_threads(self) -> int:
        return self.tf_intra_op_threads or os.cpu_count() or 1

    @property
    def max_single_request_bytes(self) -> int:
        """Body limit of every request except /predict/batch: one file plus multipart framing."""
        return self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
