"""Retention and GFS planning on explicit restore-point lists (pure; no clock), as the server uses it.

The planner is the engine's (``cloudkeep.repo.retention``); the server's catalog side only maps
its rows onto it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.protocol import MAX_MESSAGE_BYTES
from cloudkeep.protocol.bodies import RetentionCommand
from cloudkeep.repo.retention import RetentionPoint as Point
from cloudkeep.repo.retention import RetentionPolicy, plan_retention
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.jobs.retention import (
    FORGET_BATCH,
    plan_points,
    retention_command_body,
)

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
validate_retention = RetentionPolicy.from_mapping


def daily_points(days: int, *, hour: int = 1) -> list[Point]:
    """One point a day for ``days`` days ending today; ids are the dates."""
    out = []
    for back in range(days):
        t = (NOW - timedelta(days=back)).replace(hour=hour, minute=0)
        out.append(Point(t.strftime("%Y-%m-%d"), t))
    return out


def test_keep_last_n_points() -> None:
    plan = plan_retention(daily_points(10), validate_retention({"keep_last": 3}), NOW)
    assert sorted(plan.keep) == ["2026-11-24", "2026-11-25", "2026-11-26"]
    assert len(plan.remove) == 7
    assert "newest" in plan.keep["2026-11-26"]


def test_keep_within_days_counts_from_now() -> None:
    plan = plan_retention(daily_points(10), validate_retention({"keep_within_days": 2}), NOW)
    # 2026-11-24 01:00 is 2 days 11 hours before NOW: outside
    assert sorted(plan.keep) == ["2026-11-25", "2026-11-26"]


def test_union_of_rules_keeps_a_point_if_any_rule_keeps_it() -> None:
    plan = plan_retention(daily_points(10), validate_retention({"keep_last": 1, "keep_within_days": 3}), NOW)
    assert sorted(plan.keep) == ["2026-11-24", "2026-11-25", "2026-11-26"]


def test_gfs_weekly_monthly_yearly_flags_the_newest_point_of_each_bucket() -> None:
    points = daily_points(400)
    plan = plan_retention(
        points,
        validate_retention({"keep_last": 2, "keep_weekly": 3, "keep_monthly": 2, "keep_yearly": 2}),
        NOW,
    )
    flagged = {pid: flags for pid, flags in plan.gfs.items() if flags}
    # weekly: newest point of this ISO week (Thu 26th), and the Sundays ending the two weeks before
    assert [p for p, f in sorted(flagged.items(), reverse=True) if "weekly" in f] == [
        "2026-11-26",
        "2026-11-22",
        "2026-11-15",
    ]
    assert [p for p, f in sorted(flagged.items(), reverse=True) if "monthly" in f] == [
        "2026-11-26",
        "2026-10-31",
    ]
    assert [p for p, f in sorted(flagged.items(), reverse=True) if "yearly" in f] == [
        "2026-11-26",
        "2025-12-31",
    ]
    assert set(plan.keep) == {
        "2026-11-26",
        "2026-11-25",
        "2026-11-22",
        "2026-11-15",
        "2026-10-31",
        "2025-12-31",
    }
    assert plan.keep["2026-11-15"] == ["gfs weekly"]
    assert len(plan.remove) == 400 - 6


def test_gfs_counts_only_buckets_that_have_points() -> None:
    # points only in January and March: keep_monthly=2 keeps both, skipping empty February
    pts = [Point("jan", datetime(2026, 1, 10, tzinfo=UTC)), Point("mar", datetime(2026, 3, 10, tzinfo=UTC))]
    plan = plan_retention(pts, RetentionPolicy(keep_monthly=2), NOW)
    assert plan.remove == []


def test_immutability_blocks_deletion_whatever_the_policy() -> None:
    points = daily_points(5)
    points[4] = replace(points[4], retain_until=NOW + timedelta(days=1))  # the oldest is still locked
    points[3] = replace(points[3], retain_until=NOW - timedelta(seconds=1))  # lock just expired
    plan = plan_retention(points, validate_retention({"keep_last": 1}), NOW)
    assert points[4].id in plan.keep and plan.keep[points[4].id][0].startswith("immutable until")
    assert points[3].id in plan.remove


def test_newest_point_is_always_kept_and_empty_policy_keeps_all() -> None:
    old = [Point("old", NOW - timedelta(days=100))]
    assert plan_retention(old, validate_retention({"keep_within_days": 7}), NOW).keep == {"old": ["newest"]}
    plan = plan_retention(daily_points(5), validate_retention({}), NOW)
    assert plan.remove == [] and len(plan.keep) == 5


def test_no_points_is_a_no_op() -> None:
    plan = plan_retention([], validate_retention({"keep_last": 3}), NOW)
    assert plan.keep == {} and plan.remove == []


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"keep_forever": 1}, "unknown setting"),
        ({"keep_last": 0}, "keep_last must be at least 1"),
        ({"keep_weekly": -2}, "keep_weekly must be an integer >= 0"),
        ({"keep_last": "3"}, "keep_last must be an integer"),
    ],
)
def test_validate_retention_rejects_bad_input(bad: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        validate_retention(bad)


def test_the_command_names_the_planned_snapshots_oldest_first_and_fits_one_message() -> None:
    rows = [
        RestorePoint(id=f"rp-{n:04d}", snapshot_id=f"{n:064x}", created_at=NOW - timedelta(hours=n))
        for n in range(FORGET_BATCH + 100)
    ]
    plan = plan_points(rows, validate_retention({"keep_last": 2}), NOW)
    assert plan.keep.keys() == {"rp-0000", "rp-0001"}  # catalog rows go through the one planner
    body = retention_command_body(rows, plan, prune=True, hostname="vm-job")
    oldest_first = [r.snapshot_id for r in reversed(rows[2:])]
    assert body["forget"] == oldest_first[:FORGET_BATCH]  # the rest next time
    assert len(RetentionCommand.model_validate(body).model_dump_json()) < MAX_MESSAGE_BYTES // 2
