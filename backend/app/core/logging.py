"""JSON-lines logging. Log records carry request metadata only: never pixels or filenames."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "backend"
ACCESS_LOGGER_NAME = "backend.access"
# The id of the request being handled (set by the access log, echoed as X-Request-ID).
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Send the ``backend`` loggers to stderr as JSON lines (idempotent).

    Uvicorn's own access log is switched off: the access middleware writes one
    structured line per request instead, so requests are not logged twice.
    pydicom's per-upload decoder tracebacks are switched off too.
    """
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level.upper())
    if not any(getattr(h, "_backend_json", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._backend_json = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
    logging.getLogger("uvicorn.access").disabled = True
    # pydicom logs a traceback (ERROR, plain text on stderr) for each codec plugin that
    # fails on a damaged upload; that upload already gets its 400/415 with the reason.
    # Imported first: pydicom sets its logger's level when it is imported.
    import pydicom.config  # noqa: F401

    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
