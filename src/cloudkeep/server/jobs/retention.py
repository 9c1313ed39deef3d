"""Retention: which restore points a job keeps, GFS flags in the catalog, and applying it on the agent.

The server decides (it holds the catalog and the immutability dates); the agent executes the
``retention`` command with an explicit list of snapshot ids to forget, so the engine never has
to guess. A restore point whose ``retain_until`` lies in the future is never removed, whatever the
policy says — the object lock would refuse it anyway, and the catalog must not claim otherwise.

Policy (``BackupJob.retention``): ``keep_last`` N restore points, ``keep_within_days`` N days,
``keep_daily`` / ``keep_weekly`` / ``keep_monthly`` / ``keep_yearly`` (GFS: the newest point of each
of the last N days/ISO weeks/months/years that have points). A point is kept when any rule keeps it;
the newest point is always kept; an empty policy keeps everything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import select

from cloudkeep.errors import ConfigurationError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.logs import event

log = logging.getLogger(__name__)

POLICY_KEYS = ("keep_last", "keep_within_days", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly")
GFS_BUCKETS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar()[:2]),
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: (t.year,),
}


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int | None = None
    keep_within_days: int | None = None
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last is None and self.keep_within_days is None and not self.gfs_counts()

    def gfs_counts(self) -> dict[str, int]:
        counts = {
            "daily": self.keep_daily,
            "weekly": self.keep_weekly,
            "monthly": self.keep_monthly,
            "yearly": self.keep_yearly,
        }
        return {k: v for k, v in counts.items() if v}

    def as_dict(self) -> dict[str, int]:
        return {k: v for k in POLICY_KEYS if (v := getattr(self, k))}


def validate_retention(d: dict[str, Any] | None) -> RetentionPolicy:
    """Parse ``BackupJob.retention``; unknown keys and negative counts are ConfigurationErrors."""
    d = d or {}
    unknown = set(d) - set(POLICY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"retention has unknown setting(s): {', '.join(sorted(unknown))}",
            hint=f"use {', '.join(POLICY_KEYS)}",
        )
    values: dict[str, int] = {}
    for key, value in d.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigurationError(f"retention {key} must be an integer >= 0, got {value!r}")
        if key == "keep_last" and value == 0:
            raise ConfigurationError(
                "retention keep_last must be at least 1 (0 would delete every restore point)"
            )
        values[key] = value
    return RetentionPolicy(**values)


class PointLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def retain_until(self) -> datetime | None: ...


@dataclass
class RetentionPlan:
    """Why each point is kept, which are removed, and the GFS flags to record in the catalog."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    gfs: dict[str, list[str]] = field(default_factory=dict)


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything in cloudkeep is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def gfs_flags(points: Sequence[PointLike], policy: RetentionPolicy) -> dict[str, list[str]]:
    """The newest point of each of the last N buckets per GFS level gets that level's flag."""
    newest_first = sorted(points, key=lambda p: as_utc(p.created_at), reverse=True)
    flags: dict[str, list[str]] = {p.id: [] for p in points}
    for level, count in policy.gfs_counts().items():
        seen: set[tuple[int, ...]] = set()
        for point in newest_first:
            bucket = GFS_BUCKETS[level](as_utc(point.created_at))
            if bucket in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(bucket)
            flags[point.id].append(level)
    return flags


def plan_retention(points: Iterable[PointLike], policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    """Decide keep/remove for one machine's restore points of one job (pure)."""
    ordered = sorted(points, key=lambda p: as_utc(p.created_at), reverse=True)
    plan = RetentionPlan(gfs=gfs_flags(ordered, policy))
    for index, point in enumerate(ordered):
        reasons: list[str] = []
        if index == 0:
            reasons.append("newest")
        if policy.keeps_everything:
            reasons.append("no retention policy")
        if policy.keep_last is not None and index < policy.keep_last:
            reasons.append(f"last {policy.keep_last}")
        if policy.keep_within_days is not None and now - as_utc(point.created_at) <= timedelta(
            days=policy.keep_within_days
        ):
            reasons.append(f"within {policy.keep_within_days} days")
        reasons.extend(f"gfs {flag}" for flag in plan.gfs[point.id])
        if point.retain_until is not None and as_utc(point.retain_until) > now:
            reasons.append(f"immutable until {as_utc(point.retain_until).isoformat()}")
        if reasons:
            plan.keep[point.id] = reasons
        else:
            plan.remove.append(point.id)
    return plan


def catalog_points(ctx: ServerContext, job_id: str, machine_id: str) -> list[RestorePoint]:
    with ctx.db() as db:
        return list(
            db.scalars(
                select(RestorePoint).where(
                    RestorePoint.job_id == job_id,
                    RestorePoint.machine_id == machine_id,
                    RestorePoint.removed_at.is_(None),
                )
            )
        )


def record_gfs_flags(ctx: ServerContext, plan: RetentionPlan) -> None:
    with ctx.db() as db:
        for point_id, flags in plan.gfs.items():
            point = db.get(RestorePoint, point_id)
            if point is not None and list(point.gfs or []) != flags:
                point.gfs = flags


def mark_removed(
    ctx: ServerContext, repository_id: str, snapshot_ids: Iterable[str], now: datetime
) -> list[str]:
    """Set ``removed_at`` for the snapshots the agent reports removed; returns the points touched."""
    touched = []
    with ctx.db() as db:
        for snapshot_id in snapshot_ids:
            point = db.scalar(
                select(RestorePoint).where(
                    RestorePoint.repository_id == repository_id, RestorePoint.snapshot_id == snapshot_id
                )
            )
            if point is not None and point.removed_at is None:
                point.removed_at = now
                touched.append(point.id)
    if touched:
        event(log, "retention_removed", repository=repository_id, restore_points=len(touched))
    return touched


def retention_command_body(policy: RetentionPolicy, *, prune: bool, hostname: str) -> dict[str, Any]:
    """The ``retention`` command body (protocol ``RetentionCommand``): the job's policy for one host.

    The engine applies the policy to this host's snapshots and keeps anything still under object
    lock; the server then records exactly what the agent reports removed.
    """
    return {"policy": policy.as_dict(), "prune": prune, "hostname": hostname}


def removed_snapshot_ids(payload: dict[str, Any]) -> list[str]:
    """The agent reports ``removed`` (or ``forgotten``): ids, or objects with ``id``/``snapshot_id``."""
    out: list[str] = []
    for item in payload.get("removed", payload.get("forgotten", [])) or []:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            value = item.get("snapshot_id", item.get("id"))
            if value:
                out.append(str(value))
    return out
