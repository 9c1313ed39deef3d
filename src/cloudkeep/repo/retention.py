"""Retention (``forget``): which restore points to keep — last N, GFS daily/weekly/monthly/yearly, within.

Snapshots are grouped by host and source paths (one machine's backups of one thing) and the
policy is applied to each group, newest first: a bucket rule keeps the newest snapshot of each of
the N most recent days/weeks/months/years that have one. Restore points under retention
(``retain_until`` in the future) are never removed, whatever the policy says. ``forget`` only
deletes manifests; ``prune`` reclaims the space.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import Snapshot
from cloudkeep.storage.base import ObjectLockedError


@dataclass
class RetentionPolicy:
    keep_last: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None

    def is_empty(self) -> bool:
        counts = (self.keep_last, self.keep_daily, self.keep_weekly, self.keep_monthly, self.keep_yearly)
        return not any(counts) and self.keep_within is None


@dataclass
class ForgetResult:
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)  # kept id → why
    dry_run: bool = False


_BUCKETS: list[tuple[str, Callable[[datetime], object]]] = [
    ("daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", lambda t: tuple(t.isocalendar())[:2]),
    ("monthly", lambda t: (t.year, t.month)),
    ("yearly", lambda t: t.year),
]


def apply_policy(snapshots: list[Snapshot], policy: RetentionPolicy, now: datetime) -> dict[str, list[str]]:
    """Snapshot id → reasons to keep it, for one group; snapshots absent from the result go."""
    ordered = sorted(snapshots, key=lambda s: s.time, reverse=True)
    reasons: dict[str, list[str]] = defaultdict(list)
    for snap in ordered[: policy.keep_last]:
        reasons[snap.id].append("last")
    for name, bucket_of in _BUCKETS:
        count = getattr(policy, f"keep_{name}")
        seen: set[object] = set()
        for snap in ordered:
            if len(seen) >= count:
                break
            bucket = bucket_of(snap.time.astimezone(UTC))
            if bucket not in seen:
                seen.add(bucket)
                reasons[snap.id].append(name)
    if policy.keep_within is not None:
        for snap in ordered:
            if snap.time >= now - policy.keep_within:
                reasons[snap.id].append("within")
    for snap in ordered:
        if snap.retain_until is not None and snap.retain_until > now:
            reasons[snap.id].append("retention lock")
    return dict(reasons)


def forget(
    repo: Repository,
    policy: RetentionPolicy,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
    hostname: str | None = None,
) -> ForgetResult:
    if policy.is_empty():
        raise ConfigurationError("the retention policy keeps nothing", hint="set at least one keep_* rule")
    now = now or datetime.now(UTC)
    groups: dict[tuple[str, tuple[str, ...]], list[Snapshot]] = defaultdict(list)
    for snap in repo.snapshots():
        # A writer-scoped repository applies the policy to its own restore points only.
        if (hostname is None or snap.hostname == hostname) and repo.owns_snapshot(snap.id):
            groups[(snap.hostname, tuple(snap.paths))].append(snap)
    result = ForgetResult(dry_run=dry_run)
    for members in groups.values():
        keep = apply_policy(members, policy, now)
        for snap in sorted(members, key=lambda s: s.time):
            if snap.id in keep:
                result.kept.append(snap.id)
                result.reasons[snap.id] = keep[snap.id]
                continue
            if not dry_run:
                try:
                    repo.store.delete(repo.snapshot_key(snap.id))
                except ObjectLockedError:
                    result.kept.append(snap.id)
                    result.reasons[snap.id] = ["retention lock (storage)"]
                    continue
            result.removed.append(snap.id)
    return result
