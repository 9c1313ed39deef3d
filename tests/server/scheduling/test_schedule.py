"""Schedules against explicit instants: no clock, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.scheduling.schedule import in_window, is_missed, next_run, retry_at, validate_schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(schedule_dict: dict, start: str, count: int) -> list[str]:
    schedule = validate_schedule(schedule_dict)
    out, now = [], at(start)
    for _ in range(count):
        nxt = next_run(schedule, now)
        assert nxt is not None
        out.append(nxt.strftime("%a %Y-%m-%d %H:%M"))
        now = nxt
    return out


def test_daily_every_day_runs_at_the_time_and_strictly_after() -> None:
    assert runs({"type": "daily", "time": "22:00"}, "2026-11-26 21:59", 2) == [
        "Thu 2026-11-26 22:00",
        "Fri 2026-11-27 22:00",
    ]
    # exactly at the time: the next one is tomorrow (never twice for one instant)
    assert runs({"type": "daily", "time": "22:00"}, "2026-11-26 22:00", 1) == ["Fri 2026-11-27 22:00"]


def test_daily_weekdays_skips_the_weekend() -> None:
    assert runs({"type": "daily", "time": "01:30", "days": "weekdays"}, "2026-11-27 02:00", 3) == [
        "Mon 2026-11-30 01:30",
        "Tue 2026-12-01 01:30",
        "Wed 2026-12-02 01:30",
    ]


def test_daily_chosen_days() -> None:
    assert runs({"type": "daily", "time": "03:00", "days": ["tue", "Saturday"]}, "2026-11-26 00:00", 3) == [
        "Sat 2026-11-28 03:00",
        "Tue 2026-12-01 03:00",
        "Sat 2026-12-05 03:00",
    ]


def test_daily_follows_the_local_wall_clock_across_dst() -> None:
    schedule = validate_schedule({"type": "daily", "time": "22:00", "timezone": "Europe/Paris"})
    summer = next_run(schedule, at("2026-10-24 12:00"))
    winter = next_run(schedule, at("2026-10-25 20:30"))
    assert summer == at("2026-10-24 20:00")  # CEST = UTC+2
    assert winter == at("2026-10-25 21:00")  # CET = UTC+1
    # tz argument overrides the schedule's zone
    assert next_run(schedule, at("2026-11-26 12:00"), "UTC") == at("2026-11-26 22:00")


def test_daily_at_a_time_skipped_by_spring_forward_runs_just_after_the_gap() -> None:
    schedule = validate_schedule({"type": "daily", "time": "02:30", "timezone": "Europe/Paris"})
    nxt = next_run(schedule, at("2026-03-28 12:00"))
    assert nxt == at("2026-03-29 01:30")  # 03:30 CEST, the first valid instant after the gap + 30 min


def test_monthly_day_of_month_clamps_short_months() -> None:
    assert runs({"type": "monthly", "time": "04:00", "day_of_month": 31}, "2027-01-31 05:00", 3) == [
        "Sun 2027-02-28 04:00",
        "Wed 2027-03-31 04:00",
        "Fri 2027-04-30 04:00",
    ]


def test_monthly_last_day_and_last_friday_and_first_monday() -> None:
    assert runs({"type": "monthly", "time": "00:00", "day_of_month": "last"}, "2028-02-01 00:00", 1) == [
        "Tue 2028-02-29 00:00"
    ]
    assert runs(
        {"type": "monthly", "time": "23:00", "week": "last", "weekday": "friday"}, "2026-11-01 00:00", 3
    ) == [
        "Fri 2026-11-27 23:00",
        "Fri 2026-12-25 23:00",
        "Fri 2027-01-29 23:00",
    ]
    assert runs(
        {"type": "monthly", "time": "06:00", "week": "first", "weekday": "mon"}, "2026-11-26 00:00", 2
    ) == [
        "Mon 2026-12-07 06:00",
        "Mon 2027-01-04 06:00",
    ]


def test_periodic_aligns_to_midnight_and_realigns_each_day() -> None:
    assert runs({"type": "periodic", "every_hours": 5}, "2026-11-26 13:07", 4) == [
        "Thu 2026-11-26 15:00",
        "Thu 2026-11-26 20:00",
        "Fri 2026-11-27 00:00",  # 25:00 would drift; each day starts again at midnight
        "Fri 2026-11-27 05:00",
    ]
    assert runs({"type": "periodic", "every_minutes": 15}, "2026-11-26 13:15", 2) == [
        "Thu 2026-11-26 13:30",
        "Thu 2026-11-26 13:45",
    ]


def test_periodic_inside_a_wrapping_window_only() -> None:
    schedule = {"type": "periodic", "every_hours": 2, "window": {"start": "22:00", "end": "04:00"}}
    assert runs(schedule, "2026-11-26 12:00", 5) == [
        "Thu 2026-11-26 22:00",
        "Fri 2026-11-27 00:00",
        "Fri 2026-11-27 02:00",
        "Fri 2026-11-27 22:00",  # 04:00 is the window's end: deferred to the next opening
        "Sat 2026-11-28 00:00",
    ]
    parsed = validate_schedule(schedule)
    assert in_window(parsed, at("2026-11-27 03:59"))
    assert not in_window(parsed, at("2026-11-27 04:00"))


def test_window_with_days_defers_a_daily_run() -> None:
    schedule = {
        "type": "daily",
        "time": "20:00",
        "window": {"start": "21:00", "end": "23:00", "days": ["sat", "sun"]},
    }
    assert runs(schedule, "2026-11-26 00:00", 1) == ["Sat 2026-11-28 21:00"]
    parsed = validate_schedule(schedule)
    # the morning part of a window that opened on Sunday belongs to Sunday, not Monday
    wrap = validate_schedule(
        {"type": "daily", "time": "01:00", "window": {"start": "23:00", "end": "02:00", "days": ["sun"]}}
    )
    assert in_window(wrap, at("2026-11-30 01:00"))  # Monday 01:00, opened Sunday 23:00
    assert not in_window(wrap, at("2026-11-29 01:00"))  # Sunday 01:00 would have opened Saturday
    assert not in_window(parsed, at("2026-11-27 22:00"))


def test_after_job_has_no_clock_time() -> None:
    schedule = validate_schedule({"type": "after_job", "after_job": "nightly"})
    assert schedule.after_job == "nightly"
    assert next_run(schedule, at("2026-11-26 00:00")) is None


def test_retries_count_delay_and_window() -> None:
    schedule = validate_schedule(
        {
            "type": "daily",
            "time": "22:00",
            "retries": {"count": 2, "delay_minutes": 30},
            "window": {"start": "22:00", "end": "23:00"},
        }
    )
    assert retry_at(schedule, at("2026-11-26 22:05"), attempt=1) == at("2026-11-26 22:35")
    # a retry that would fall after the window closes waits for the next opening
    assert retry_at(schedule, at("2026-11-26 22:40"), attempt=2) == at("2026-11-27 22:00")
    assert retry_at(schedule, at("2026-11-26 22:40"), attempt=3) is None
    none = validate_schedule({"type": "daily", "time": "22:00"})
    assert retry_at(none, at("2026-11-26 22:05"), attempt=1) is None


def test_missed_run_grace() -> None:
    schedule = validate_schedule({"type": "daily", "time": "22:00", "missed_grace_minutes": 5})
    due = at("2026-11-26 22:00")
    assert not is_missed(schedule, due, due + timedelta(minutes=5))
    assert is_missed(schedule, due, due + timedelta(minutes=6))
    assert validate_schedule({"type": "daily", "missed": "skip"}).missed == "skip"


def test_disabled_schedule_never_runs() -> None:
    assert (
        next_run(
            validate_schedule({"type": "periodic", "every_minutes": 5, "enabled": False}),
            at("2026-11-26 00:00"),
        )
        is None
    )


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"type": "hourly"}, "schedule type 'hourly' is not valid"),
        ({"type": "daily", "time": "25:00"}, "is not a time"),
        ({"type": "daily", "time": 2200}, "must be a string"),
        ({"type": "daily", "days": ["funday"]}, "is not a weekday"),
        ({"type": "daily", "days": "sometimes"}, "days 'sometimes' is not valid"),
        ({"type": "monthly"}, "monthly schedule needs day_of_month"),
        ({"type": "monthly", "day_of_month": 32}, "day_of_month must be 1..31"),
        ({"type": "monthly", "day_of_month": 1, "week": "last", "weekday": "fri"}, "not both"),
        ({"type": "monthly", "week": "fifth", "weekday": "fri"}, "week 'fifth' is not valid"),
        ({"type": "periodic"}, "exactly one of every_minutes or every_hours"),
        ({"type": "periodic", "every_minutes": 0}, "every_minutes must be an integer >= 1"),
        ({"type": "periodic", "every_hours": 25}, "cannot exceed 24 hours"),
        ({"type": "after_job"}, "needs after_job"),
        ({"type": "daily", "timezone": "Mars/Olympus"}, "not a known IANA time zone"),
        ({"type": "daily", "window": {"start": "10:00"}}, "window must be"),
        ({"type": "daily", "window": {"start": "10:00", "end": "10:00"}}, "start and end are equal"),
        ({"type": "daily", "retries": {"count": -1}}, "retries.count must be an integer >= 0"),
        ({"type": "daily", "missed": "panic"}, "missed 'panic' is not valid"),
        ("daily", "schedule must be an object"),
    ],
)
def test_validate_schedule_names_the_bad_field(bad: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_schedule(bad)  # type: ignore[arg-type]
