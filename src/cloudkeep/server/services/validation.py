"""Validation of schedules and retention policies for the job services (the API's edge)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cloudkeep.errors import CloudkeepError, ConfigurationError
from cloudkeep.repo.retention import RetentionPolicy
from cloudkeep.server.scheduling import schedule as schedules


def validate_schedule(schedule: dict[str, Any]) -> schedules.Schedule:
    """Raise ``ConfigurationError`` for a schedule that can never run; returns the parsed schedule."""
    if not isinstance(schedule, dict) or not schedule:
        raise ConfigurationError(
            "a schedule must be a non-empty object", hint='e.g. {"kind": "daily", "time": "02:00"}'
        )
    try:
        return schedules.validate_schedule(schedule)
    except CloudkeepError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ConfigurationError(f"invalid schedule: {exc}") from exc


def next_run(schedule: dict[str, Any] | None, after: datetime) -> datetime | None:
    """When a job with ``schedule`` runs next (None: manual or chained)."""
    if not schedule:
        return None
    return schedules.next_run(validate_schedule(schedule), after)


def validate_retention(retention: dict[str, Any]) -> dict[str, Any]:
    """Check a policy with the one converter; the job stores it as given."""
    RetentionPolicy.from_mapping(retention)
    return retention
