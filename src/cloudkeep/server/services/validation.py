"""Validation of schedules and retention policies, delegating to the jobs package when present."""

from __future__ import annotations

import importlib
from datetime import datetime
from typing import Any

from cloudkeep.errors import CloudkeepError, ConfigurationError
from cloudkeep.server.scheduling import schedule as scheduling_schedule


def _jobs_module(name: str) -> Any | None:
    try:
        return importlib.import_module(f"cloudkeep.server.jobs.{name}")
    except ImportError:
        return None


def validate_schedule(schedule: dict[str, Any]) -> Any:
    """Raise ``ConfigurationError`` for a schedule that can never run; returns the parsed schedule."""
    if not isinstance(schedule, dict) or not schedule:
        raise ConfigurationError(
            "a schedule must be a non-empty object", hint='e.g. {"kind": "daily", "time": "02:00"}'
        )
    try:
        return scheduling_schedule.validate_schedule(schedule)
    except CloudkeepError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"invalid schedule: {exc}") from exc


def next_run(schedule: dict[str, Any] | None, after: datetime) -> datetime | None:
    """When a job with ``schedule`` runs next (None: manual or chained, or no scheduler in this build)."""
    if not schedule:
        return None
    parsed = validate_schedule(schedule)
    return scheduling_schedule.next_run(parsed, after)


def validate_retention(retention: dict[str, Any]) -> dict[str, Any]:
    module = _jobs_module("retention")
    if module is not None and hasattr(module, "validate_retention"):
        try:
            module.validate_retention(retention)
        except CloudkeepError:
            raise
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"invalid retention: {exc}") from exc
    return retention
