"""Retention: the one policy and planner (which restore points to keep, and why), and ``forget``.

The planner is pure — restore points + policy + now → keep (with reasons) / remove, and the GFS
flags. The server runs it over its catalog (a job's points of one machine), records the flags and
sends the machine the ids to forget; the engine runs the same planner when given only a policy
(``forget``, and a retention command from an older server).

Policy: ``keep_last`` N points, ``keep_within_days`` N days, ``keep_daily`` / ``keep_weekly`` /
``keep_monthly`` / ``keep_yearly`` (GFS: the newest point of each of the last N days/ISO
weeks/months/years that have points). A point is kept when any rule keeps it; the newest point
is always kept; an empty policy keeps everything; a point whose ``retain_until`` lies ahead is
never removed. ``forget`` only deletes manifests; ``prune`` reclaims the space.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, PermissionDeniedError
from cloudkeep.repo.layout import WRITERS_PREFIX, check_writer_prefix
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import Snapshot, is_snapshot_id
from cloudkeep.storage.base import ObjectLockedError

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

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any] | None) -> RetentionPolicy:
        """The one converter from stored / API / protocol form; bad input is a ConfigurationError."""
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
        return cls(**values)

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


def as_utc(value: datetime) -> datetime:
    """SQLite hands datetimes back naive; everything in cloudkeep is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class RetentionPoint:
    """What the planner needs of a restore point, whether from the catalog or a repository."""

    id: str
    time: datetime
    retain_until: datetime | None = None

    @classmethod
    def of(cls, snapshot: Snapshot) -> RetentionPoint:
        return cls(snapshot.id, snapshot.time, snapshot.retain_until)


@dataclass
class RetentionPlan:
    """Why each point is kept, which are removed, and the GFS flags to record in the catalog."""

    keep: dict[str, list[str]] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    gfs: dict[str, list[str]] = field(default_factory=dict)


def gfs_flags(points: Sequence[RetentionPoint], policy: RetentionPolicy) -> dict[str, list[str]]:
    """The newest point of each of the last N buckets per GFS level gets that level's flag."""
    newest_first = sorted(points, key=lambda p: as_utc(p.time), reverse=True)
    flags: dict[str, list[str]] = {p.id: [] for p in points}
    for level, count in policy.gfs_counts().items():
        seen: set[tuple[int, ...]] = set()
        for point in newest_first:
            bucket = GFS_BUCKETS[level](as_utc(point.time))
            if bucket in seen:
                continue
            if len(seen) >= count:
                break
            seen.add(bucket)
            flags[point.id].append(level)
    return flags


def plan_retention(points: Iterable[RetentionPoint], policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    """Decide keep/remove for one backup set (one machine's points of one job, or one host's)."""
    ordered = sorted(points, key=lambda p: as_utc(p.time), reverse=True)
    plan = RetentionPlan(gfs=gfs_flags(ordered, policy))
    for index, point in enumerate(ordered):
        reasons: list[str] = []
        if index == 0:
            reasons.append("newest")
        if policy.keeps_everything:
            reasons.append("no retention policy")
        if policy.keep_last is not None and index < policy.keep_last:
            reasons.append(f"last {policy.keep_last}")
        if policy.keep_within_days is not None and now - as_utc(point.time) <= timedelta(
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


@dataclass
class ForgetResult:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # kept id → why
    dry_run: bool = False


def forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    hostname: str | None = None,
) -> ForgetResult:
    """Plan with ``policy`` per backup set (host and source paths) of this writer, then forget."""
    if policy.keeps_everything:
        raise ConfigurationError("the retention policy keeps nothing", hint="set at least one keep_* rule")
    now = now or datetime.now(UTC)
    groups: dict[tuple[str, tuple[str, ...]], list[Snapshot]] = defaultdict(list)
    for snap in repo.snapshots():
        # A writer-scoped repository applies the policy to its own restore points only.
        if (hostname is None or snap.hostname == hostname) and repo.owns_snapshot(snap.id):
            groups[(snap.hostname, tuple(snap.paths))].append(snap)
    result = ForgetResult(dry_run=dry_run)
    for members in groups.values():
        plan = plan_retention([RetentionPoint.of(s) for s in members], policy, now)
        for snap in sorted(members, key=lambda s: s.time):
            if snap.id in plan.keep:
                result.kept.append(snap.id)
                result.reasons[snap.id] = plan.keep[snap.id]
            else:
                _delete(repo, snap, result)
    return result


def forget_snapshots(
    repo: Repository,
    snapshot_ids: Sequence[str],
    *,
    hostname: str | None = None,
    writer_scope: str | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> ForgetResult:
    """Forget exactly the restore points a planner (the server) decided on.

    The list comes from outside, so every id is checked before anything is deleted: it must be a
    full restore-point id, of this writer's scope (and of ``hostname``, when given), else nothing is
    forgotten. The scope is the repository's ``writer_prefix``; opened with the full credential
    (to prune), ``writer_scope`` names it instead, and points of the root layout (written before
    writer namespaces) stay allowed. One already gone counts as removed (a retried command); one
    still under retention is kept whatever the list says.
    """
    now = now or datetime.now(UTC)
    malformed = [i for i in snapshot_ids if not isinstance(i, str) or not is_snapshot_id(i)]
    if malformed:
        raise ConfigurationError(
            f"not a restore point id: {str(malformed[0])[:80]!r}; nothing was forgotten",
            hint="a retention command names restore points by their full ids",
        )
    present = set(repo.snapshot_ids())
    targets: list[Snapshot] = []
    gone: list[str] = []
    for snapshot_id in dict.fromkeys(snapshot_ids):
        if snapshot_id not in present:
            gone.append(snapshot_id)
            continue
        if not _in_scope(repo, snapshot_id, writer_scope):
            raise PermissionDeniedError(
                f"restore point {snapshot_id} belongs to another writer; nothing was forgotten"
            )
        snap = repo.load_snapshot(snapshot_id)
        if hostname is not None and snap.hostname != hostname:
            raise PermissionDeniedError(
                f"restore point {snapshot_id} is not one of {hostname!r}'s; nothing was forgotten"
            )
        targets.append(snap)
    result = ForgetResult(dry_run=dry_run, removed=gone)
    for snap in sorted(targets, key=lambda s: s.time):
        if snap.retain_until is not None and snap.retain_until > now:
            result.kept.append(snap.id)
            result.reasons[snap.id] = [f"immutable until {as_utc(snap.retain_until).isoformat()}"]
        else:
            _delete(repo, snap, result)
    return result


def _in_scope(repo: Repository, snapshot_id: str, writer_scope: str | None) -> bool:
    if repo.scoped or not writer_scope:
        return repo.owns_snapshot(snapshot_id)
    key = repo.snapshot_key(snapshot_id)
    return key.startswith(check_writer_prefix(writer_scope)) or not key.startswith(WRITERS_PREFIX)


def _delete(repo: Repository, snap: Snapshot, result: ForgetResult) -> None:
    if not result.dry_run:
        try:
            repo.store.delete(repo.snapshot_key(snap.id))
        except ObjectLockedError:
            result.kept.append(snap.id)
            result.reasons[snap.id] = ["retention lock (storage)"]
            return
    result.removed.append(snap.id)
