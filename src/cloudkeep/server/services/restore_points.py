"""Restore points: catalog entries pointing at restore-point manifests in a repository."""

from __future__ import annotations

from sqlalchemy import select

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, RestorePoint
from cloudkeep.server.services.common import by_prefix, paginate, resolve
from cloudkeep.server.services.machines import resolve_machine_id
from cloudkeep.server.services.schemas import Page, RestorePointView


def view(row: RestorePoint) -> RestorePointView:
    return RestorePointView.model_validate(row)


def list_restore_points(
    ctx: ServerContext,
    *,
    machine: str | None = None,
    job: str | None = None,
    include_removed: bool = False,
    limit: int = 100,
    offset: int = 0,
) -> Page[RestorePointView]:
    stmt = select(RestorePoint).order_by(RestorePoint.created_at.desc(), RestorePoint.id)
    if machine:
        stmt = stmt.where(RestorePoint.machine_id == resolve_machine_id(ctx, machine))
    with ctx.db() as session:
        if job:
            stmt = stmt.where(RestorePoint.job_id == resolve(session, BackupJob, job, "job").id)
        if not include_removed:
            stmt = stmt.where(RestorePoint.removed_at.is_(None))
        return paginate(session, stmt, view, limit, offset)


def get_restore_point(ctx: ServerContext, ref: str) -> RestorePointView:
    with ctx.db() as session:
        row = session.get(RestorePoint, ref) or session.scalar(
            select(RestorePoint).where(RestorePoint.snapshot_id == ref)
        )
        if row is None:  # the shortened ids commands print are snapshot ids as often as point ids
            columns = [RestorePoint.id, RestorePoint.snapshot_id]
            row = by_prefix(session, RestorePoint, ref, "restore point", columns)
        if row is None:
            row = resolve(session, RestorePoint, ref, "restore point", by_name=False)
        return view(row)
