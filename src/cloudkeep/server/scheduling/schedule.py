"""Backup schedules: a validated model and a pure ``next_run`` (the clock is always passed in).

A job's ``schedule`` column holds a dict; ``validate_schedule`` turns it into a ``Schedule`` or
raises ``ConfigurationError`` naming the bad field. Kinds:

* ``daily``    — ``time`` "HH:MM" on ``days``: "everyday" (default), "weekdays", or a list ["mon", "fri"].
* ``monthly``  — ``time`` on ``day_of_month`` (1..31 or "last"; short months clamp to their last day),
  or on the ``week`` ("first".."fourth", "last") ``weekday`` ("fri") of the month.
* ``periodic`` — every ``every_minutes`` or ``every_hours``, aligned to midnight of the schedule's zone
  so "every 4 hours" runs at 00:00, 04:00, … whatever time the server started.
* ``after_job`` — runs when job ``after_job`` (id or name) ends; ``next_run`` is always None.
* ``cron``     — a standard 5-field ``expression`` ("0 3 * * 1-5": 03:00 on weekdays) or a macro
  (@hourly, @daily, @weekly, @monthly, @yearly), read on the wall clock of ``timezone``. A
  fixed-hour job runs once when a DST change repeats that hour (like cronie); seconds and year
  fields are refused. ``schedule_from_text`` also reads "cron:0 3 * * 1-5", the bare 5-field
  form, and a leading "CRON_TZ=Europe/Paris".

Common options: ``timezone`` (IANA name, default UTC); ``window`` {start, end, days?, terminate?}:
nothing starts outside it (a run that falls outside is deferred to the window's next opening;
end < start wraps midnight) and, with ``terminate``, a scheduled run still going when it closes is
stopped; ``retries`` {count, delay_minutes}: automatic retries of a failed scheduled run;
``missed`` "run_once" (default: a run missed while the server was down starts once at start-up) or
"skip"; ``missed_grace_minutes`` (default 10): how late a run may start before it counts as missed.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from cloudkeep.errors import ConfigurationError

Kind = Literal["daily", "monthly", "periodic", "after_job", "cron"]
KINDS: tuple[str, ...] = ("daily", "monthly", "periodic", "after_job", "cron")
CRON_MACROS = ("@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
WEEKS = ("first", "second", "third", "fourth", "last")
_SEARCH_DAYS = 800  # a valid schedule always has an occurrence within ~2 years (monthly on the 31st, windows)


@dataclass(frozen=True)
class Window:
    """Daily permitted hours; ``days`` are the weekdays on which the window opens (all by default)."""

    start: time
    end: time
    days: frozenset[int] = frozenset(range(7))
    terminate: bool = False  # stop a scheduled run that is still going when the window closes

    def contains(self, local: datetime) -> bool:
        t = local.time().replace(tzinfo=None)
        if self.start < self.end:
            return local.weekday() in self.days and self.start <= t < self.end
        if t >= self.start:  # wrapping window, evening part: opened today
            return local.weekday() in self.days
        return t < self.end and (local.weekday() - 1) % 7 in self.days  # morning part: opened yesterday


@dataclass(frozen=True)
class Retries:
    count: int = 0
    delay: timedelta = timedelta(minutes=10)


@dataclass(frozen=True)
class Schedule:
    kind: Kind
    timezone: str = "UTC"
    at: time = time(0, 0)
    weekdays: frozenset[int] = frozenset(range(7))  # daily
    day_of_month: int | None = None  # monthly; -1 = last day
    week: int | None = None  # monthly "last friday": 0..3, -1 = last
    weekday: int | None = None
    every: timedelta | None = None  # periodic
    after_job: str | None = None
    cron: str | None = None  # the 5-field expression or macro
    window: Window | None = None
    retries: Retries = field(default_factory=Retries)
    missed: Literal["run_once", "skip"] = "run_once"
    missed_grace: timedelta = timedelta(minutes=10)
    enabled: bool = True

    @property
    def zone(self) -> tzinfo:
        return _zone(self.timezone)


def _zone(name: str) -> tzinfo:
    if name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"schedule timezone {name!r} is not a known IANA time zone",
            hint="use e.g. 'UTC' or 'Europe/Paris'",
        ) from None


def _parse_time(value: Any, what: str) -> time:
    if not isinstance(value, str):
        raise ConfigurationError(f"schedule {what} must be a string 'HH:MM', got {value!r}")
    try:
        hours, minutes = value.strip().split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ConfigurationError(
            f"schedule {what} {value!r} is not a time 'HH:MM' (00:00 to 23:59)"
        ) from None


def _parse_weekday(value: Any, what: str) -> int:
    key = str(value).strip().lower()[:3]
    if key not in WEEKDAYS:
        raise ConfigurationError(
            f"schedule {what} {value!r} is not a weekday", hint=f"use one of {', '.join(WEEKDAYS)}"
        )
    return WEEKDAYS.index(key)


def _parse_days(value: Any, what: str) -> frozenset[int]:
    if value is None or value in ("everyday", "every_day", "daily", "all"):
        return frozenset(range(7))
    if value == "weekdays":
        return frozenset(range(5))
    if value == "weekends":
        return frozenset({5, 6})
    if isinstance(value, list) and value:
        return frozenset(_parse_weekday(v, what) for v in value)
    raise ConfigurationError(
        f"schedule {what} {value!r} is not valid",
        hint="use 'everyday', 'weekdays' or a list like ['mon', 'thu']",
    )


def _positive_int(value: Any, what: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"schedule {what} must be an integer >= {minimum}, got {value!r}")
    return value


def _parse_monthly(d: dict[str, Any]) -> dict[str, Any]:
    if "day_of_month" in d and ("week" in d or "weekday" in d):
        raise ConfigurationError("monthly schedule takes either day_of_month or week+weekday, not both")
    if "day_of_month" in d:
        dom = d["day_of_month"]
        if dom == "last":
            return {"day_of_month": -1}
        if isinstance(dom, bool) or not isinstance(dom, int) or not 1 <= dom <= 31:
            raise ConfigurationError(f"schedule day_of_month must be 1..31 or 'last', got {dom!r}")
        return {"day_of_month": dom}
    if "week" in d and "weekday" in d:
        week = str(d["week"]).lower()
        if week not in WEEKS:
            raise ConfigurationError(
                f"schedule week {d['week']!r} is not valid", hint=f"use one of {', '.join(WEEKS)}"
            )
        return {
            "week": -1 if week == "last" else WEEKS.index(week),
            "weekday": _parse_weekday(d["weekday"], "weekday"),
        }
    raise ConfigurationError(
        "monthly schedule needs day_of_month (1..31 or 'last') or week + weekday (e.g. last friday)"
    )


def _parse_periodic(d: dict[str, Any]) -> timedelta:
    if ("every_minutes" in d) == ("every_hours" in d):
        raise ConfigurationError("periodic schedule needs exactly one of every_minutes or every_hours")
    if "every_minutes" in d:
        every = timedelta(minutes=_positive_int(d["every_minutes"], "every_minutes"))
    else:
        every = timedelta(hours=_positive_int(d["every_hours"], "every_hours"))
    if every > timedelta(days=1):
        raise ConfigurationError(
            "periodic schedule interval cannot exceed 24 hours", hint="use a daily schedule"
        )
    return every


def _parse_cron(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(
            "cron schedule needs expression: 5 fields, e.g. '0 3 * * 1-5'",
            hint="minute hour day-of-month month weekday",
        )
    expression = " ".join(value.split())
    if expression.startswith("@"):
        if expression.lower() not in CRON_MACROS:
            raise ConfigurationError(
                f"cron macro {expression!r} is not known", hint=f"use one of {', '.join(CRON_MACROS)}"
            )
        return expression.lower()
    if len(expression.split(" ")) != 5:
        raise ConfigurationError(
            f"cron expression {expression!r} must have 5 fields (minute hour day month weekday)",
            hint="seconds and year fields are not supported",
        )
    if not croniter.is_valid(expression):
        raise ConfigurationError(
            f"cron expression {expression!r} is not valid", hint="e.g. '0 3 * * 1-5' (03:00 on weekdays)"
        )
    return expression


def schedule_from_text(text: str) -> dict[str, Any] | None:
    """A schedule written as cron ("cron:0 3 * * 1-5", "CRON_TZ=Europe/Paris 0 3 * * *" or the bare
    five fields) as the stored dict; None when ``text`` is not in that form (e.g. JSON)."""
    rest = text.strip()
    if rest.startswith("{"):
        return None
    explicit = rest.lower().startswith("cron:")
    if explicit:
        rest = rest[len("cron:") :].strip()
    timezone = "UTC"
    if rest.upper().startswith("CRON_TZ="):
        zone, _, rest = rest[len("CRON_TZ=") :].partition(" ")
        timezone = zone.strip()
    if not explicit and not rest.startswith("@") and len(rest.split()) != 5:
        return None
    return {"kind": "cron", "expression": _parse_cron(rest), "timezone": timezone}


def _parse_window(value: Any) -> Window | None:
    if value is None:
        return None
    if not isinstance(value, dict) or "start" not in value or "end" not in value:
        raise ConfigurationError("schedule window must be {start: 'HH:MM', end: 'HH:MM', days?: [...]}")
    start, end = _parse_time(value["start"], "window start"), _parse_time(value["end"], "window end")
    if start == end:
        raise ConfigurationError("schedule window start and end are equal; omit the window to allow any time")
    terminate = value.get("terminate", False)
    if not isinstance(terminate, bool):
        raise ConfigurationError(f"schedule window terminate must be true or false, got {terminate!r}")
    return Window(start, end, _parse_days(value.get("days"), "window days"), terminate)


def _parse_retries(value: Any) -> Retries:
    if value is None:
        return Retries()
    if isinstance(value, int) and not isinstance(value, bool):
        return Retries(count=_positive_int(value, "retries", minimum=0))
    if not isinstance(value, dict):
        raise ConfigurationError("schedule retries must be {count: N, delay_minutes: M}")
    count = _positive_int(value.get("count", 3), "retries.count", minimum=0)
    delay = _positive_int(value.get("delay_minutes", 10), "retries.delay_minutes", minimum=0)
    return Retries(count=count, delay=timedelta(minutes=delay))


def validate_schedule(d: dict[str, Any]) -> Schedule:
    """Turn the stored/API dict into a ``Schedule``; a mistake raises ConfigurationError naming the field."""
    if not isinstance(d, dict):
        raise ConfigurationError(f"schedule must be an object, got {type(d).__name__}")
    kind = d.get("type", d.get("kind"))
    if kind not in KINDS:
        raise ConfigurationError(
            f"schedule type {kind!r} is not valid", hint=f"use one of {', '.join(KINDS)}"
        )
    tz = str(d.get("timezone", "UTC"))
    _zone(tz)
    missed = d.get("missed", "run_once")
    if missed not in ("run_once", "skip"):
        raise ConfigurationError(f"schedule missed {missed!r} is not valid", hint="use 'run_once' or 'skip'")
    common: dict[str, Any] = {
        "timezone": tz,
        "window": _parse_window(d.get("window")),
        "retries": _parse_retries(d.get("retries")),
        "missed": missed,
        "missed_grace": timedelta(
            minutes=_positive_int(d.get("missed_grace_minutes", 10), "missed_grace_minutes", minimum=0)
        ),
        "enabled": bool(d.get("enabled", True)),
    }
    if kind == "daily":
        return Schedule(
            "daily",
            at=_parse_time(d.get("time", "00:00"), "time"),
            weekdays=_parse_days(d.get("days"), "days"),
            **common,
        )
    if kind == "monthly":
        return Schedule(
            "monthly", at=_parse_time(d.get("time", "00:00"), "time"), **_parse_monthly(d), **common
        )
    if kind == "periodic":
        return Schedule("periodic", every=_parse_periodic(d), **common)
    if kind == "cron":
        return Schedule("cron", cron=_parse_cron(d.get("expression")), **common)
    after = d.get("after_job")
    if not isinstance(after, str) or not after:
        raise ConfigurationError("after_job schedule needs after_job: the id or name of the job to follow")
    return Schedule("after_job", after_job=after, **common)


def _localize(day: date, at: time, zone: tzinfo) -> datetime:
    """A wall-clock time in ``zone``; a time skipped by a DST jump moves forward by the gap."""
    # Round-tripping through UTC normalises a nonexistent local time (fold=0 uses the pre-jump offset).
    return datetime.combine(day, at).replace(tzinfo=zone).astimezone(UTC).astimezone(zone)


def _monthly_day(schedule: Schedule, year: int, month: int) -> int:
    last = calendar.monthrange(year, month)[1]
    if schedule.day_of_month is not None:
        return last if schedule.day_of_month == -1 else min(schedule.day_of_month, last)
    assert schedule.week is not None and schedule.weekday is not None
    if schedule.week == -1:
        offset = (date(year, month, last).weekday() - schedule.weekday) % 7
        return last - offset
    first = (schedule.weekday - date(year, month, 1).weekday()) % 7 + 1
    return first + 7 * schedule.week


def _runs_on(schedule: Schedule, day: date) -> bool:
    if schedule.kind == "daily":
        return day.weekday() in schedule.weekdays
    return day.day == _monthly_day(schedule, day.year, day.month)


def _raw_next(schedule: Schedule, after: datetime, zone: tzinfo) -> datetime | None:
    """The next occurrence strictly after ``after``, ignoring the window."""
    local = after.astimezone(zone)
    if schedule.kind == "cron":
        return _cron_next(schedule, after, zone)
    if schedule.kind == "periodic":
        assert schedule.every is not None
        midnight = _localize(local.date(), time(0, 0), zone)
        elapsed = after - midnight
        steps = elapsed // schedule.every + 1
        candidate = midnight + steps * schedule.every
        next_midnight = _localize(local.date() + timedelta(days=1), time(0, 0), zone)
        return min(candidate, next_midnight)  # re-align each day
    for offset in range(_SEARCH_DAYS):
        day = local.date() + timedelta(days=offset)
        if _runs_on(schedule, day):
            candidate = _localize(day, schedule.at, zone)
            if candidate > after:
                return candidate
    return None


def _fixed_hour(expression: str) -> bool:
    """A job at set hours (not every hour): it runs once when a DST change repeats an hour."""
    if expression.startswith("@"):
        return expression != "@hourly"
    return "*" not in expression.split(" ")[1]


def _cron_next(schedule: Schedule, after: datetime, zone: tzinfo) -> datetime | None:
    assert schedule.cron is not None
    fixed_hour = _fixed_hour(schedule.cron)
    times = croniter(schedule.cron, after.astimezone(zone))
    for _ in range(_SEARCH_DAYS):
        candidate: datetime = times.get_next(datetime)
        if candidate.fold and fixed_hour and candidate.replace(fold=0).utcoffset() != candidate.utcoffset():
            continue  # the repeated hour after a DST change: a fixed-time job has already run
        if candidate > after:
            return candidate
    return None


def next_window_opening(window: Window, after: datetime, zone: tzinfo) -> datetime:
    """The first instant >= ``after`` at which ``window`` is open."""
    local = after.astimezone(zone)
    if window.contains(local):
        return after
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if day.weekday() in window.days:
            opening = _localize(day, window.start, zone)
            if opening >= after:
                return opening
    raise ConfigurationError("schedule window never opens")  # unreachable: days is non-empty


def in_window(schedule: Schedule, when: datetime) -> bool:
    """True when nothing stops a run starting at ``when``."""
    return schedule.window is None or schedule.window.contains(when.astimezone(schedule.zone))


def defer_to_window(schedule: Schedule, when: datetime) -> datetime:
    """``when`` itself if it is inside the window, else the window's next opening."""
    if schedule.window is None:
        return when
    return next_window_opening(schedule.window, when, schedule.zone).astimezone(UTC)


def next_run(schedule: Schedule, after: datetime, tz: tzinfo | str | None = None) -> datetime | None:
    """The next start strictly after ``after`` (UTC, aware), deferred into the window; None when event-driven.

    ``tz`` overrides the schedule's own time zone (the wall clock that "daily at 22:00" refers to).
    """
    if after.tzinfo is None:
        raise ValueError("next_run needs a timezone-aware datetime")
    if not schedule.enabled or schedule.kind == "after_job":
        return None
    zone = _zone(tz) if isinstance(tz, str) else (tz or schedule.zone)
    candidate = _raw_next(schedule, after, zone)
    if candidate is None:
        return None
    if schedule.window is not None:
        candidate = next_window_opening(schedule.window, candidate, zone)
    return candidate.astimezone(UTC)


def retry_at(schedule: Schedule, failed_at: datetime, attempt: int) -> datetime | None:
    """When attempt ``attempt`` (1 = the first run) failed at ``failed_at``: the retry's start, or None."""
    if attempt > schedule.retries.count:
        return None
    return defer_to_window(schedule, failed_at + schedule.retries.delay)


def is_missed(schedule: Schedule, due: datetime, now: datetime) -> bool:
    """A due run later than the grace period was missed (the server was down or busy)."""
    return now - due > schedule.missed_grace
