"""Retention on the server: the catalog side of the one planner (``cloudkeep.repo.retention``).

The server decides (it holds the catalog and the immutability dates): it runs the planner over a
job's restore points of one machine, records the GFS flags, and sends the machine a ``retention``
command naming the snapshots to forget, so the engine does not decide again. A restore point
whose ``retain_until`` lies in the future is never removed, whatever the policy says — the object
lock would refuse it anyway, and the catalog must not claim otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select

from cloudkeep.repo.retention import RetentionPlan, RetentionPoint, RetentionPolicy, as_utc, plan_retention
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import RestorePoint
from cloudkeep.server.logs import event

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

