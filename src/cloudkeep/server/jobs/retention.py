"""Retention on the server: the catalog side of the one planner (``cloudkeep.repo.retention``).

The server decides (it holds the catalog and the immutability dates): it runs the planner over a
job's restore points of one machine, records the GFS flags, and then forgets those snapshots
**itself** (``ServerMaintenance``), with the repository's own credential, which never leaves the
server: agents hold no delete right at all (docs/security.md). After a job run's backups it prunes
once. A restore point whose ``retain_until`` lies in the future is never removed, whatever the
policy says — the object lock would refuse it anyway, and the catalog must not claim otherwise.
Machines keep a ``retention`` handler only for servers older than this.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cloudkeep.providers.base import CloudProvider
from cloudkeep.repo.generations import lock_new_objects
from cloudkeep.repo.lock import MaintenanceBusyError
from cloudkeep.repo.prune import PruneResult, prune
from cloudkeep.repo.repository import Repository as FormatRepository
from cloudkeep.repo.retention import (
    ForgetResult,
    RetentionPlan,
    RetentionPoint,
    RetentionPolicy,
    as_utc,
    forget_snapshots,
    plan_retention,
)
from cloudkeep.repo.vouch import VouchResult, vouch_new_packs
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.logs import event
from cloudkeep.server.sessions.access import agent_write_prefix, close_opened, open_with_full_keys

log = logging.getLogger(__name__)

# Snapshot ids are 64 hex digits: 400 of them stay well inside MAX_MESSAGE_BYTES (64 KiB) beside
# the sealed repository access and the envelope.
FORGET_BATCH = 400


def plan_points(points: Sequence[RestorePoint], policy: RetentionPolicy, now: datetime) -> RetentionPlan:
    """The one planner over catalog rows (keyed by restore point id, as the GFS flags are)."""
    rows = [
        RetentionPoint(p.id, as_utc(p.created_at), as_utc(p.retain_until) if p.retain_until else None)
        for p in points
    ]
    return plan_retention(rows, policy, now)


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


def record_gfs_flags(ctx: ServerContext, plan: RetentionPlan, known: Sequence[RestorePoint] = ()) -> None:
    """Write the plan's GFS flags; ``known`` (the rows the plan was made from) spares re-reading the
    points whose flags are already so (issue 18: most runs change none)."""
    current = {p.id: list(p.gfs or []) for p in known}
    changed = {point_id: flags for point_id, flags in plan.gfs.items() if current.get(point_id) != flags}
    if not changed:
        return
    with ctx.db() as db:
        for point_id, flags in changed.items():
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


def retention_command_body(
    points: Sequence[RestorePoint], plan: RetentionPlan, *, prune: bool, hostname: str
) -> dict[str, Any]:
    """The ``retention`` command body (protocol ``RetentionCommand``): the snapshots to forget.

    The machine forgets exactly these (refusing any outside its writer scope or ``hostname``) and
    keeps anything still under object lock; the server then records what it reports removed.
    At most ``FORGET_BATCH``, oldest first, so the command fits one queue message; the rest stay
    in the catalog and are planned again after the next backup.
    """
    remove = set(plan.remove)
    forget = [p.snapshot_id for p in sorted(points, key=lambda p: as_utc(p.created_at)) if p.id in remove]
    return {"forget": forget[:FORGET_BATCH], "prune": prune, "hostname": hostname}


class ServerMaintenance:
    """Forget and prune for one job run, on the server, with the repository's full credential.

    The repository is opened once (on first use) and shared by the run's machines; forgets are
    serialized, and ``prune_once`` prunes at most once per run (the repository's maintenance lock
    serializes it with other servers' and runs' prunes: a busy repository is skipped, not failed).
    """

    def __init__(self, provider: CloudProvider, location: str, password: str) -> None:
        self.provider, self.location, self.password = provider, location, password
        self._lock = threading.Lock()
        self._repo: FormatRepository | None = None
        self.forgot = False
        self.pruned = False

    def _open(self) -> FormatRepository:
        if self._repo is None:
            self._repo = open_with_full_keys(self.provider, self.location, self.password)
        return self._repo

    def forget(
        self, machine_id: str, snapshot_ids: Sequence[str], *, hostname: str, now: datetime
    ) -> ForgetResult:
        """Forget exactly these points of ``machine_id``'s namespace and backup set (``hostname``)."""
        with self._lock:
            result = forget_snapshots(
                self._open(),
                snapshot_ids,
                hostname=hostname,
                writer_scope=agent_write_prefix(machine_id),
                now=now,
            )
            self.forgot = self.forgot or bool(result.removed)
            return result

    def lock_new(self, machine_ids: Iterable[str], now: datetime) -> int:
        """After a job's backups, where the store locks nothing by itself (Azure, immutability by
        generations), lock the packs and manifests those machines just wrote: the window in which
        they are unlocked ends with the job, not with the next bulk extension. Returns how many."""
        with self._lock:
            if self._repo is None:  # ask the store before paying for opening the repository
                store = self.provider.storage.open_store(self.location)
                try:
                    if not store.server_locks_new_objects:
                        return 0
                finally:
                    store.close()
            repo = self._open()
            if not repo.store.server_locks_new_objects:
                return 0
            prefixes = sorted({agent_write_prefix(m) for m in machine_ids})
            locked = len(lock_new_objects(repo, now=now, writer_prefixes=prefixes))
        if locked:
            event(log, "locks_set", objects=locked, machines=len(prefixes))
        return locked

    def vouch(self) -> VouchResult | None:
        """After a job's backups, on a format 3 repository: read each pack not yet vouched for once
        and vouch for those whose blobs all verify, so that other machines deduplicate against
        them from their next backup on (repo/vouch.py). ``None``: formats 1-2 (nothing to vouch)."""
        with self._lock:
            repo = self._open()
            if not repo.keyring.confidential:
                return None
            result = vouch_new_packs(repo)
        event(log, "packs_vouched", packs=len(result.vouched), bytes_read=result.bytes_read,
              refused=len(result.refused))  # fmt: skip
        for writer in result.refused_writers:
            log.warning("packs of %s not vouched for: a blob does not verify (compromised machine?)", writer)
        return result

    def prune_once(self, now: datetime) -> PruneResult | None:
        """Prune after this run's forgets (``None``: nothing forgotten, already pruned, or busy)."""
        with self._lock:
            if self.pruned or not self.forgot:
                return None
            self.pruned = True
            try:
                result = prune(self._open(), now=now)
            except MaintenanceBusyError as exc:
                log.info("prune skipped: %s", exc.message)
                return None
        event(log, "retention_pruned", packs_deleted=result.packs_deleted, bytes_freed=result.bytes_freed)
        return result

    def close(self) -> None:
        if self._repo is not None:
            close_opened(self._repo)
