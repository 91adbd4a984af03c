"""The worker's configuration, from environment variables (and a ``.env`` file if present)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    """Every setting is an environment variable ``PACS_<NAME>`` (``API_URL`` also works)."""

    model_config = SettingsConfigDict(env_prefix="PACS_", extra="ignore")

    url: str = Field(
        default="http://127.0.0.1:8042",
        description="Base URL of the PACS's web server (PACS_URL).",
    )
    dicomweb_path: str = Field(
        default="/dicom-web",
        description="Path of the DICOMweb root under PACS_URL (Orthanc: /dicom-web).",
    )
    user: str | None = Field(default=None, description="HTTP basic-auth user (PACS_USER).")
    password: SecretStr | None = Field(
        default=None, description="HTTP basic-auth password (PACS_PASSWORD)."
    )
    ca_bundle: Path | None = Field(
        default=None,
        description="PEM CA bundle to verify the PACS's TLS certificate (PACS_CA_BUNDLE); "
        "the system's store when unset.",
    )
    api_url: str = Field(
        default="http://127.0.0.1:8000",
        validation_alias=AliasChoices("PACS_API_URL", "API_URL"),
        description="Base URL of the product's API.",
    )
    api_token: SecretStr | None = Field(
        default=None,
        description="The worker's own bearer token for the API (PACS_API_TOKEN), sent as "
        "'Authorization: Bearer <token>' on every call; needed once the API has "
        "AUTH_TOKEN_HASHES set.",
    )
    api_token_file: Path | None = Field(
        default=None,
        description="A file holding that token (PACS_API_TOKEN_FILE, e.g. a mounted secret); "
        "read at start-up, surrounding whitespace ignored. Not together with PACS_API_TOKEN.",
    )
    operating_point: Literal["sensitive", "specific"] = Field(
        default="sensitive", description="Operating point asked of the API."
    )
    worklist: bool = Field(
        default=True,
        description="Add each analysed series to the API's triage worklist (POST /worklist: "
        "its UIDs, scanner, arrival time and the API's answer) before its SR is stored in the "
        "PACS (PACS_WORKLIST); false: the SR and heatmaps only.",
    )
    state_db: Path = Field(
        default=Path("pacs-worker.sqlite3"),
        description="SQLite file with each series' status (kept across restarts).",
    )
    state_url: str | None = Field(
        default=None,
        description="Broker mode: the pollers' state in a database shared by all of them "
        "instead of PACS_STATE_DB (PACS_STATE_URL), an SQLAlchemy URL, e.g. "
        "postgresql+psycopg://user:password@host:5432/db. Several pollers may then run on "
        "several machines: one holds the lease and polls (docs/pacs-broker.md). Not for the "
        "single-process worker.",
    )
    lease_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Broker mode: the poller's lease (PACS_LEASE_SECONDS), renewed at every poll "
        "and state write; a poller that stops renewing it (dead, hung, cut off) is replaced by "
        "a waiting one within about this long. Longer than the longest QIDO-RS listing.",
    )
    poll_seconds: float = Field(default=10.0, gt=0, description="QIDO-RS polling interval.")
    stable_seconds: float = Field(
        default=30.0,
        ge=0,
        description="A series is processed once its instance count has not changed for "
        "this long (it has finished arriving).",
    )
    lookback_days: int | None = Field(
        default=None,
        ge=0,
        description="Only look at studies of the last N days (QIDO StudyDate range); all "
        "studies when unset. Set it on a hospital PACS.",
    )
    page_size: int = Field(default=200, ge=1, description="QIDO-RS page size.")
    cap_check: bool = Field(
        default=True,
        description="Check each poll's series listing against a PACS that caps answers "
        "whatever the offset (Orthanc's LimitFindResults): the listing is asked again in "
        "pieces cut between the StudyDates seen, and where they hold more than the whole it is "
        "read range by range "
        "(PACS_CAP_CHECK; two more QIDO-RS searches per poll).",
    )
    concurrency: int = Field(default=2, ge=1, description="Series processed at once.")
    error_max_attempts: int = Field(
        default=3,
        ge=1,
        validation_alias=AliasChoices(
            "PACS_ERROR_MAX_ATTEMPTS", "PACS_MAX_ATTEMPTS", "error_max_attempts"
        ),
        description="Attempts at a series whose attempts fail with an unexpected error (a "
        "bug: failure class 'error') before it is marked failed (PACS_ERROR_MAX_ATTEMPTS; "
        "PACS_MAX_ATTEMPTS, its older name, is still read). With the default back-off 3 "
        "attempts show 'failed' within seconds. Transient failures are never final.",
    )
    backoff_seconds: float = Field(default=2.0, gt=0, description="First retry delay.")
    backoff_max_seconds: float = Field(default=300.0, gt=0, description="Longest retry delay.")
    max_slices: int = Field(
        default=1000, ge=1, description="Larger series are skipped (the API's study limit)."
    )
    http_timeout_seconds: float = Field(default=60.0, gt=0, description="PACS request timeout.")
    download_deadline_seconds: float = Field(
        default=900.0,
        gt=0,
        description="Longest time one series' WADO-RS download may take altogether (a PACS "
        "that drips its answer is cut off; the series is retried later).",
    )
    api_timeout_seconds: float = Field(
        default=600.0, gt=0, description="Timeout of one API call (/predict/study, /worklist)."
    )
    stop_grace_seconds: float = Field(
        default=30.0,
        ge=0,
        description="On SIGTERM, how long to wait for the series under way; an attempt still "
        "running then (a long API call) is abandoned and tried again at the next start.",
    )
    broker_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("PACS_BROKER_URL", "BROKER_URL"),
        description="AMQP URL of the RabbitMQ broker (e.g. amqp://guest:guest@127.0.0.1:5672/"
        "%2F). Set: `python -m pacs poller` queues stable series and `python -m pacs` workers "
        "take them (docs/pacs-broker.md); unset: one process polls and processes.",
    )
    broker_queue: str = Field(
        default="pacs",
        description="Prefix of the broker's queue and exchange names (<prefix>.series, "
        "<prefix>.outcomes, <prefix>.dead).",
    )
    delivery_limit: int = Field(
        default=5,
        ge=1,
        description="Deliveries of one queued series without an outcome (a worker dying on it "
        "each time) before the broker dead-letters it.",
    )
    outcome_timeout_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Broker mode: a series queued this long ago with no outcome yet (its job "
        "lost with the broker's data, or purged) is queued again; a duplicate files nothing "
        "twice.",
    )
    metrics_host: str = Field(default="127.0.0.1", description="Prometheus metrics address.")
    metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="Prometheus metrics port; 0 turns it off."
    )
    log_level: str = Field(default="INFO", description="Python logging level.")

    @model_validator(mode="after")
    def _one_token_source(self) -> WorkerSettings:
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set PACS_API_TOKEN or PACS_API_TOKEN_FILE, not both")
        return self

    def bearer_token(self) -> str | None:
        """The API token from PACS_API_TOKEN or PACS_API_TOKEN_FILE; None when neither is set."""
        if self.api_token_file is not None:
            return self.api_token_file.read_text(encoding="utf-8").strip() or None
        return self.api_token.get_secret_value() if self.api_token else None

    def config_fingerprint(self) -> str:
        """A digest of the settings a configuration failure (401/403, an API without
        /worklist) depends on: the API, the token, the PACS credentials, PACS_WORKLIST. Series
        blocked under another fingerprint are re-queued when the worker starts with this one."""
        password = self.password.get_secret_value() if self.password else ""
        parts: tuple[str, ...] = (
            self.api_url,
            self.bearer_token() or "",
            self.url,
            self.user or "",
            password,
        )
        if not self.worklist:  # appended only when off: on (the default) keeps older digests
            parts += ("worklist off",)
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]

    @property
    def state_location(self) -> Path | str:
        """Where the state is kept: PACS_STATE_URL when set, else the PACS_STATE_DB file."""
        return self.state_url or self.state_db

    @property
    def dicomweb_url(self) -> str:
        """The DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web."""
        return self.url.rstrip("/") + "/" + self.dicomweb_path.strip("/")
