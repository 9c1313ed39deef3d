"""Discovered machines: what rescan found, their deployment state and the recorded steps."""

from __future__ import annotations

from sqlalchemy import select

from cloudkeep.server.agent_compat import outdated_reason
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, ProtectionGroup
from cloudkeep.server.services.common import paginate, resolve
from cloudkeep.server.services.schemas import DeploymentStepView, MachineDetail, MachineView, Page


def view(row: DiscoveredMachine) -> MachineView:
    machine = MachineView.model_validate(row)
    behind = outdated_reason(row.agent_level) if row.agent_public_key else None
    if behind:
        machine.upgrade_reason = f"{behind}: run `cloudkeep machine upgrade {row.name}`"
    return machine


def list_machines(
    ctx: ServerContext,
    *,
    group: str | None = None,
    status: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[MachineView]:
    stmt = select(DiscoveredMachine).order_by(DiscoveredMachine.name, DiscoveredMachine.id)
    with ctx.db() as session:
        if group:
            group_id = resolve(session, ProtectionGroup, group, "protection group").id
            stmt = stmt.where(DiscoveredMachine.protection_group_id == group_id)
        if status:
            stmt = stmt.where(DiscoveredMachine.status == status)
        return paginate(session, stmt, view, limit, offset)


def get_machine(ctx: ServerContext, ref: str) -> MachineDetail:
    """A machine by id, cloud id or name (names are unique only within a group: first match wins)."""
    with ctx.db() as session:
        row = session.get(DiscoveredMachine, ref)
        if row is None:
            stmt = select(DiscoveredMachine).where(
                (DiscoveredMachine.cloud_id == ref) | (DiscoveredMachine.name == ref)
            )
            row = session.scalars(stmt.order_by(DiscoveredMachine.created_at)).first()
        if row is None:
            row = resolve(session, DiscoveredMachine, ref, "machine", by_name=False)  # raises NotFound
        steps = [DeploymentStepView.model_validate(step) for step in row.steps]
        return MachineDetail(**view(row).model_dump(), steps=steps)


def resolve_machine_id(ctx: ServerContext, ref: str) -> str:
    return get_machine(ctx, ref).id
