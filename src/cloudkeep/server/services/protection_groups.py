"""Protection groups of type cloud machines: which account, regions and machines, and when to rescan."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select

from cloudkeep.errors import ConfigurationError, ConflictError
from cloudkeep.server import audit
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import (
    BackupJob,
    CommandRecord,
    Credential,
    DeploymentStep,
    DiscoveredMachine,
    ProtectionGroup,
    Repository,
    RestorePoint,
    SessionTask,
)
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.schemas import (
    Page,
    ProtectionGroupCreate,
    ProtectionGroupUpdate,
    ProtectionGroupView,
)
from cloudkeep.server.services.validation import validate_schedule

_SETTABLE = (
    "description",
    "regions",
    "machine_ids",
    "include_tags",
    "exclude_ids",
    "exclude_tags",
    "rescan_schedule",
    "auto_update",
    "install_python",
    "on_disappear",
    "enabled",
)


def view(row: ProtectionGroup, machine_count: int = 0) -> ProtectionGroupView:
    fields = {
        name: getattr(row, name) for name in ProtectionGroupView.model_fields if name != "machine_count"
    }
    return ProtectionGroupView(**fields, machine_count=machine_count)


def _distribution_repository(session: Any, ref: str) -> Repository:
    repo = resolve(session, Repository, ref, "distribution repository")
    if repo.purpose != "distribution":
        raise ConfigurationError(
            f"repository {repo.name!r} is a {repo.purpose} repository, not a distribution repository",
            hint="add one with `cloudkeep repository add --purpose distribution`",
        )
    return repo


def create_group(
    ctx: ServerContext, data: ProtectionGroupCreate, *, actor: str = "local"
) -> ProtectionGroupView:
    if data.rescan_schedule is not None:
        validate_schedule(data.rescan_schedule)
    with ctx.db() as session:
        ensure_unique_name(session, ProtectionGroup, data.name, "protection group")
        credential = resolve(session, Credential, data.credential, "credential")
        repo = _distribution_repository(session, data.distribution_repository)
        values = {k: v for k, v in data.model_dump(include=set(_SETTABLE)).items() if v is not None}
        row = ProtectionGroup(
            name=data.name, credential_id=credential.id, distribution_repository_id=repo.id, **values
        )
        session.add(row)
        session.flush()
        audit.record(session, actor, "protection_group.create", row.id, data.model_dump(mode="json"))
        return view(row)


def _counts(session: Any, group_ids: list[str]) -> dict[str, int]:
    stmt = (
        select(DiscoveredMachine.protection_group_id, func.count())
        .where(DiscoveredMachine.protection_group_id.in_(group_ids))
        .group_by(DiscoveredMachine.protection_group_id)
    )
    return {gid: int(n) for gid, n in session.execute(stmt)}


def list_groups(ctx: ServerContext, *, limit: int = 100, offset: int = 0) -> Page[ProtectionGroupView]:
    with ctx.db() as session:
        page = paginate(session, select(ProtectionGroup).order_by(ProtectionGroup.name), view, limit, offset)
        counts = _counts(session, [g.id for g in page.items])
        for item in page.items:
            item.machine_count = counts.get(item.id, 0)
        return page


def get_group(ctx: ServerContext, ref: str) -> ProtectionGroupView:
    with ctx.db() as session:
        row = resolve(session, ProtectionGroup, ref, "protection group")
        return view(row, _counts(session, [row.id]).get(row.id, 0))


def update_group(
    ctx: ServerContext, ref: str, data: ProtectionGroupUpdate, *, actor: str = "local"
) -> ProtectionGroupView:
    if data.rescan_schedule is not None:
        validate_schedule(data.rescan_schedule)
    with ctx.db() as session:
        row = resolve(session, ProtectionGroup, ref, "protection group")
        if data.name is not None:
            ensure_unique_name(session, ProtectionGroup, data.name, "protection group", exclude_id=row.id)
            row.name = data.name
        if data.distribution_repository is not None:
            row.distribution_repository_id = _distribution_repository(
                session, data.distribution_repository
            ).id
        for key, value in data.model_dump(include=set(_SETTABLE), exclude_unset=True).items():
            if value is not None:
                setattr(row, key, value)
        audit.record(
            session,
            actor,
            "protection_group.update",
            row.id,
            data.model_dump(mode="json", exclude_unset=True),
        )
        session.flush()
        return view(row, _counts(session, [row.id]).get(row.id, 0))


def delete_group(ctx: ServerContext, ref: str, *, actor: str = "local") -> None:
    """Delete a group and its machine records; refused while jobs or restore points refer to them."""
    with ctx.db() as session:
        row = resolve(session, ProtectionGroup, ref, "protection group")
        jobs = [
            j.name for j in session.scalars(select(BackupJob)) if row.id in (j.protection_group_ids or [])
        ]
        if jobs:
            raise ConflictError(
                f"protection group {row.name!r} is used by job(s) {', '.join(sorted(jobs))}",
                hint="remove it from those jobs first (`cloudkeep job update`)",
            )
        machine_ids = list(
            session.scalars(
                select(DiscoveredMachine.id).where(DiscoveredMachine.protection_group_id == row.id)
            )
        )
        for model in (RestorePoint, SessionTask, CommandRecord):
            if machine_ids and session.scalar(
                select(model.id).where(model.machine_id.in_(machine_ids)).limit(1)
            ):
                raise ConflictError(
                    f"machines of protection group {row.name!r} have backup history",
                    hint="disable the group instead (`cloudkeep protection-group update --disable`)",
                )
        if machine_ids:
            session.execute(delete(DeploymentStep).where(DeploymentStep.machine_id.in_(machine_ids)))
            session.execute(delete(DiscoveredMachine).where(DiscoveredMachine.id.in_(machine_ids)))
        session.delete(row)
        audit.record(session, actor, "protection_group.delete", row.id, {"name": row.name})
