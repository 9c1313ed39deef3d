"""Retention policies (GFS, last N, within) and ``forget`` honouring retention locks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.repo import Repository, RetentionPolicy, Snapshot, backup_files, forget, list_snapshots
from cloudkeep.repo.retention import RetentionPoint, plan_retention

NOW = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


def daily_snapshots(days: int) -> list[RetentionPoint]:
    """One snapshot a day at 01:00 for ``days`` days before NOW, plus an extra one on the newest day."""
    snaps = [
        Snapshot(f"s{d:03d}", NOW - timedelta(days=d, hours=11), "h", [], ["/"], "files") for d in range(days)
    ]
    snaps.append(Snapshot("extra", NOW - timedelta(hours=1), "h", [], ["/"], "files"))
    return [RetentionPoint.of(s) for s in snaps]


def kept(points: list[RetentionPoint], policy: RetentionPolicy, now: datetime) -> dict[str, list[str]]:
    return plan_retention(points, policy, now).keep


def test_keep_last() -> None:
    keep = kept(daily_snapshots(10), RetentionPolicy(keep_last=3), NOW)
    assert sorted(keep) == ["extra", "s000", "s001"]


def test_keep_daily_takes_newest_of_each_day() -> None:
    keep = kept(daily_snapshots(10), RetentionPolicy(keep_daily=3), NOW)
    assert sorted(keep) == ["extra", "s001", "s002"]  # 'extra' is newer than s000 on the same day


def test_gfs() -> None:
    snaps = daily_snapshots(400)
    keep = kept(snaps, RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=2), NOW)
    assert len([k for k, r in keep.items() if "gfs daily" in r]) == 7
    assert len([k for k, r in keep.items() if "gfs weekly" in r]) == 4
    assert len([k for k, r in keep.items() if "gfs monthly" in r]) == 12
    assert len([k for k, r in keep.items() if "gfs yearly" in r]) == 2
    months = {s.time.strftime("%Y-%m") for s in snaps if s.id in keep}
    assert len(months) >= 12
    assert len(keep) < 7 + 4 + 12 + 2  # overlapping rules share snapshots


def test_keep_within() -> None:
    keep = kept(daily_snapshots(10), RetentionPolicy(keep_within_days=3), NOW)
    assert sorted(keep) == ["extra", "s000", "s001", "s002"]


def test_empty_policy_refused(repo: Repository) -> None:
    with pytest.raises(ConfigurationError, match="keeps nothing"):
        forget(repo, RetentionPolicy())


def test_forget_removes_and_respects_locks(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    locked = backup_files(
        repo, [tmp_path / "f"], hostname="h", retain_until=datetime.now(UTC) + timedelta(days=7)
    )
    plain = [backup_files(repo, [tmp_path / "f"], hostname="h") for _ in range(3)]
    other_host = backup_files(repo, [tmp_path / "f"], hostname="other")
    dry = forget(repo, RetentionPolicy(keep_last=1), dry_run=True, hostname="h")
    assert dry.removed == [plain[0].id, plain[1].id] and len(list_snapshots(repo)) == 5
    result = forget(repo, RetentionPolicy(keep_last=1), hostname="h")
    assert sorted(result.kept) == sorted([locked.id, plain[2].id])
    assert result.reasons[locked.id][0].startswith("immutable until")
    remaining = {s.id for s in list_snapshots(repo)}
    assert remaining == {locked.id, plain[2].id, other_host.id}
