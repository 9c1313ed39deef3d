"""Cron schedules: 5-field expressions on the schedule's wall clock (the clock is always passed in)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.scheduling.schedule import next_run, schedule_from_text, validate_schedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(schedule_dict: dict[str, object], start: str, count: int) -> list[str]:
    schedule = validate_schedule(schedule_dict)
    out, now = [], at(start)
    for _ in range(count):
        nxt = next_run(schedule, now)
        assert nxt is not None
        out.append(nxt.strftime("%a %Y-%m-%d %H:%M"))
        now = nxt
    return out


def test_cron_weekdays_at_three() -> None:
    cron = {"kind": "cron", "expression": "0 3 * * 1-5"}
    assert runs(cron, "2026-12-04 02:00", 3) == [  # a Friday
        "Fri 2026-12-04 03:00", "Mon 2026-12-07 03:00", "Tue 2026-12-08 03:00",
    ]  # fmt: skip
    assert runs(cron, "2026-12-04 03:00", 1) == ["Mon 2026-12-07 03:00"]  # strictly after


def test_cron_follows_the_schedules_zone_across_dst() -> None:
    paris = {"kind": "cron", "expression": "30 1 * * *", "timezone": "Europe/Paris"}
    # 01:30 in Paris is 00:30 UTC in winter and 23:30 UTC the day before in summer (from 29 March)
    assert runs(paris, "2026-03-27 12:00", 3) == [
        "Sat 2026-03-28 00:30", "Sun 2026-03-29 00:30", "Sun 2026-03-29 23:30",
    ]  # fmt: skip
    assert runs(paris, "2026-10-24 12:00", 2) == ["Sat 2026-10-24 23:30", "Mon 2026-10-26 00:30"]


def test_a_fixed_time_job_runs_once_when_dst_repeats_its_hour() -> None:
    paris = {"kind": "cron", "expression": "30 2 * * *", "timezone": "Europe/Paris"}
    # 2026-10-25: 02:30 Paris happens at 00:30 and again at 01:30 UTC; only the first counts
    assert runs(paris, "2026-10-24 12:00", 2) == ["Sun 2026-10-25 00:30", "Mon 2026-10-26 01:30"]
    every_quarter = {"kind": "cron", "expression": "*/30 * * * *", "timezone": "Europe/Paris"}
    assert runs(every_quarter, "2026-10-25 00:15", 4) == [  # interval jobs keep running through it
        "Sun 2026-10-25 00:30", "Sun 2026-10-25 01:00", "Sun 2026-10-25 01:30", "Sun 2026-10-25 02:00",
    ]  # fmt: skip


def test_cron_keeps_the_window() -> None:
    cron = {"kind": "cron", "expression": "0 * * * *", "window": {"start": "22:00", "end": "23:30"}}
    assert runs(cron, "2026-12-02 12:10", 3) == [
        "Wed 2026-12-02 22:00", "Wed 2026-12-02 23:00", "Thu 2026-12-03 22:00",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cron:0 3 * * 1-5", {"kind": "cron", "expression": "0 3 * * 1-5", "timezone": "UTC"}),
        ("0  3 * * 1-5", {"kind": "cron", "expression": "0 3 * * 1-5", "timezone": "UTC"}),
        (
            "CRON_TZ=Europe/Paris 15 2 1 * *",
            {"kind": "cron", "expression": "15 2 1 * *", "timezone": "Europe/Paris"},
        ),
        ("cron:@daily", {"kind": "cron", "expression": "@daily", "timezone": "UTC"}),
        ('{"kind": "daily"}', None),
        ("daily", None),
    ],
)
def test_schedule_from_text(text: str, expected: dict[str, str] | None) -> None:
    assert schedule_from_text(text) == expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"kind": "cron"}, "cron schedule needs expression"),
        ({"kind": "cron", "expression": "61 3 * * *"}, "is not valid"),
        ({"kind": "cron", "expression": "0 3 * * 1-5 2027"}, "must have 5 fields"),
        ({"kind": "cron", "expression": "@fortnightly"}, "cron macro '@fortnightly' is not known"),
    ],
)
def test_bad_cron_is_refused_with_the_reason(bad: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_schedule(bad)
    with pytest.raises(ConfigurationError):
        schedule_from_text("cron:" + str(bad.get("expression", "")))
