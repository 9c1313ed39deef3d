"""Server logs: one line per event, ``key=value`` fields (or JSON), configured once at the edge.

Library code only calls ``logging.getLogger(__name__)`` and, for an event an operator may grep
or alert on, ``event(log, "dispatch", command=…, channel=…)``: the fields travel on the record
and the formatter chosen here renders them. ``cloudkeep server start`` hands
``logging_config(settings)`` to uvicorn, which applies it in every worker process.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FIELDS_ATTR = "ck_fields"


def event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: object) -> None:
    """Log one named event with structured fields (``None`` values are left out)."""
    if logger.isEnabledFor(level):
        kept = {key: value for key, value in fields.items() if value is not None}
        logger.log(level, name, extra={FIELDS_ATTR: kept}, stacklevel=2)


def _quote(value: object) -> str:
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    if text and not any(ch in text for ch in ' "=\n\t'):
        return text
    return json.dumps(text)  # one line, quotes escaped: still parseable as key="…"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, FIELDS_ATTR, None)
    return dict(fields) if isinstance(fields, dict) else {}


def _timestamp(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class KeyValueFormatter(logging.Formatter):
    """``ts=… level=info logger=… event=… key=value …`` (logfmt), one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        pairs: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            pairs["error"] = self.formatException(record.exc_info)
        return " ".join(f"{key}={_quote(value)}" for key, value in pairs.items())


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the text format."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            data["error"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


def normalize_level(level: str) -> str:
    upper = level.strip().upper()
    if upper not in LOG_LEVELS:
        raise ValueError(f"unknown log level {level!r}; use one of {', '.join(LOG_LEVELS).lower()}")
    return upper


def logging_config(level: str = "INFO", fmt: LogFormat = "text") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: our formatter on stderr for cloudkeep and uvicorn."""
    formatter = "json" if fmt == "json" else "text"
    level = normalize_level(level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "text": {"()": f"{__name__}.KeyValueFormatter"},
            "json": {"()": f"{__name__}.JsonFormatter"},
        },
        "handlers": {
            "stderr": {"class": "logging.StreamHandler", "formatter": formatter, "stream": "ext://sys.stderr"}
        },
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "cloudkeep": {"level": level},
            # uvicorn's own loggers go through the same handler, not their coloured default
            "uvicorn": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.error": {"handlers": [], "level": level, "propagate": True},
            "uvicorn.access": {"handlers": [], "level": level, "propagate": True},
        },
    }


def configure_logging(level: str = "INFO", fmt: LogFormat = "text") -> None:
    """Apply ``logging_config`` in this process (for entry points that do not start uvicorn)."""
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
