"""How a schedule looks from outside: its documented API shape and its next runs in two zones.

The stored and accepted form stays the dict that ``schedule.validate_schedule`` checks (which
names a bad field precisely); ``ScheduleSpec`` only describes it for the OpenAPI spec, so the
docs show every field instead of ``object``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.scheduling.schedule import next_run, validate_schedule


class ScheduleWindowSpec(BaseModel):
    """Daily permitted hours: nothing starts outside them (end < start wraps midnight)."""

    start: str = Field(description="HH:MM", examples=["22:00"])
    end: str = Field(description="HH:MM", examples=["06:00"])
    days: list[str] | str | None = Field(default=None, description="Weekdays the window opens on.")
    terminate: bool = Field(default=False, description="Stop a scheduled run still going at the end.")


class ScheduleRetriesSpec(BaseModel):
    count: int = Field(default=3, ge=0)
    delay_minutes: int = Field(default=10, ge=0)


class ScheduleSpec(BaseModel):
    """A job's schedule. ``kind`` chooses which other fields apply."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"kind": "daily", "time": "02:00", "days": "weekdays", "timezone": "Europe/Paris"},
                {"kind": "cron", "expression": "0 3 * * 1-5", "timezone": "America/New_York"},
                {"kind": "periodic", "every_hours": 4, "window": {"start": "20:00", "end": "06:00"}},
                {"kind": "monthly", "week": "last", "weekday": "fri", "time": "23:00"},
                {"kind": "after_job", "after_job": "nightly-db"},
            ]
        }
    )
    kind: Literal["daily", "monthly", "periodic", "after_job", "cron"]
    timezone: str = Field(default="UTC", description="IANA zone whose wall clock the times refer to.")
    time: str | None = Field(default=None, description="daily, monthly: HH:MM.")
    days: list[str] | str | None = Field(
        default=None, description="daily: 'everyday', 'weekdays', 'weekends' or ['mon', 'thu']."
    )
    day_of_month: int | Literal["last"] | None = Field(default=None, description="monthly: 1..31 or 'last'.")
    week: Literal["first", "second", "third", "fourth", "last"] | None = Field(
        default=None, description="monthly, with weekday: e.g. the last friday."
    )
    weekday: str | None = Field(default=None, description="monthly: mon..sun.")
    every_minutes: int | None = Field(default=None, ge=1, description="periodic (aligned to midnight).")
    every_hours: int | None = Field(default=None, ge=1, le=24, description="periodic (aligned to midnight).")
    after_job: str | None = Field(default=None, description="after_job: the job (id or name) to follow.")
    expression: str | None = Field(
        default=None, description="cron: 5 fields (minute hour day month weekday) or @daily …"
    )
    window: ScheduleWindowSpec | None = None
    retries: ScheduleRetriesSpec | int | None = Field(
        default=None, description="Automatic retries of a failed scheduled run."
    )
    missed: Literal["run_once", "skip"] = Field(
        default="run_once", description="A run missed while the server was down: run once, or skip."
    )
    missed_grace_minutes: int = Field(default=10, ge=0)
    enabled: bool = True


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.rsplit("/", 1)[1]], defs)
        return {key: _inline(value, defs) for key, value in node.items() if key != "$defs"}
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    return node


def schedule_json_schema(*, nullable: bool = True) -> dict[str, Any]:
    """``ScheduleSpec``'s JSON schema with its sub-models inlined (it is embedded in other models)."""
    schema = ScheduleSpec.model_json_schema()
    inlined: dict[str, Any] = _inline(schema, schema.get("$defs", {}))
    return {"anyOf": [inlined, {"type": "null"}]} if nullable else inlined


class ScheduledRun(BaseModel):
    """One upcoming start, in UTC and on the schedule's own wall clock."""

    utc: datetime
    local: datetime
    timezone: str

    def __str__(self) -> str:  # how tables show it: both clocks, each named
        if self.timezone == "UTC":
            return f"{self.utc:%Y-%m-%d %H:%M} UTC"
        return f"{self.local:%Y-%m-%d %H:%M} {self.timezone} ({self.utc:%Y-%m-%d %H:%M} UTC)"


def upcoming_runs(
    schedule: dict[str, Any] | None, first: datetime | None, count: int = 3
) -> list[ScheduledRun]:
    """``first`` (the job's stored next run) and the runs after it; empty when there is none."""
    if not schedule or first is None:
        return []
    try:
        parsed = validate_schedule(schedule)
    except ConfigurationError:
        return []
    runs: list[ScheduledRun] = []
    when: datetime | None = first if first.tzinfo else first.replace(tzinfo=UTC)  # stored in UTC
    while when is not None and len(runs) < count:
        local = when.astimezone(parsed.zone)
        runs.append(ScheduledRun(utc=when.astimezone(UTC), local=local, timezone=parsed.timezone))
        when = next_run(parsed, when)
    return runs
