"""Long operations (rescan, backup, restore): validate, then hand over to the engine that runs them.

The engines live in other packages (``cloudkeep.server.rescan``, ``cloudkeep.server.jobs``,
``cloudkeep.server.restore``); each is imported inside the operation that uses it, because they
pull in the repository engine and the cloud SDKs, which most CLI commands never need. Each
``start_*`` returns the id of the ``JobSession`` it created.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from cloudkeep.errors import ConfigurationError, ConflictError
from cloudkeep.server import audit
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, JobSession, ProtectionGroup
from cloudkeep.server.services.common import resolve
from cloudkeep.server.services.machines import get_machine, resolve_machine_id
from cloudkeep.server.services.restore_points import get_restore_point
from cloudkeep.server.services.schemas import (
    BrowseResult,
    FileRestoreRequest,
    MachineUpgrade,
    SearchHit,
    UpgradeStarted,
    VolumeRestoreRequest,
)
from cloudkeep.server.services.sessions import TERMINAL_STATES


def _audit(ctx: ServerContext, actor: str, action: str, target: str, detail: dict[str, Any]) -> None:
    with ctx.db() as session:
        audit.record(session, actor, action, target, detail)


def _machine_ids(ctx: ServerContext, refs: list[str] | None) -> list[str] | None:
    return [resolve_machine_id(ctx, ref) for ref in refs] if refs else None


def start_rescan(
    ctx: ServerContext, group: str, *, machines: list[str] | None = None, actor: str = "local"
) -> str:
    with ctx.db() as session:
        group_id = resolve(session, ProtectionGroup, group, "protection group").id
    machine_ids = _machine_ids(ctx, machines)
    from cloudkeep.server import rescan

    session_id = rescan.start_rescan(ctx, group_id, machine_ids=machine_ids, wait=False)
    _audit(
        ctx, actor, "protection_group.rescan", group_id, {"session_id": session_id, "machines": machine_ids}
    )
    return session_id


def upgrade_machines(ctx: ServerContext, data: MachineUpgrade, *, actor: str = "local") -> UpgradeStarted:
    """Install the server's bundle on machines whose agent is older: a rescan of just those machines
    with auto-update on for that run (the deploy path of every rescan), one session per group."""
    if not data.machines and not data.group:
        raise ConfigurationError(
            "name the machines to upgrade, or a protection group",
            hint="`cloudkeep machine upgrade NAME …` or `cloudkeep machine upgrade --group GROUP`",
        )
    targets: dict[str, list[str] | None] = {}  # group id -> its machines (None: all of them)
    if data.group:
        with ctx.db() as session:
            targets[resolve(session, ProtectionGroup, data.group, "protection group").id] = None
    for ref in data.machines or []:
        machine = get_machine(ctx, ref)
        listed = targets.setdefault(machine.protection_group_id, [])
        if listed is not None and machine.id not in listed:
            listed.append(machine.id)
    from cloudkeep.server import rescan

    started: list[str] = []
    for group_id, machine_ids in targets.items():
        session_id = rescan.start_rescan(ctx, group_id, machine_ids=machine_ids, wait=False, upgrade=True)
        with ctx.db() as session:
            row = session.get(JobSession, session_id)
            upgrading = row is not None and bool((row.stats or {}).get("upgrade"))
        if not upgrading:  # a rescan of the group was already running: it was joined, and upgrades nothing
            already = f" (started: {', '.join(started)})" if started else ""
            raise ConflictError(
                f"a rescan of protection group {group_id} is running (session {session_id}); "
                f"upgrade its machines when it ends{already}",
                hint=f"cloudkeep session watch {session_id}",
            )
        started.append(session_id)
        _audit(ctx, actor, "machine.upgrade", group_id, {"session_id": session_id, "machines": machine_ids})
    return UpgradeStarted(session_ids=started)


def start_job(
    ctx: ServerContext, job: str, *, machines: list[str] | None = None, actor: str = "local"
) -> str:
    with ctx.db() as session:
        job_id = resolve(session, BackupJob, job, "job").id
    machine_ids = _machine_ids(ctx, machines)
    from cloudkeep.server import jobs
    from cloudkeep.server.scheduling import scheduler

    scheduler.install()  # its retries and chained jobs follow the session when it ends
    session_id = jobs.start_job(ctx, job_id, trigger="manual", machine_ids=machine_ids, wait=False)
    _audit(ctx, actor, "job.start", job_id, {"session_id": session_id, "machines": machine_ids})
    return session_id


def stop_session(ctx: ServerContext, session_id: str, *, actor: str = "local") -> str:
    with ctx.db() as session:
        row = resolve(session, JobSession, session_id, "session", by_name=False)
        if row.state in TERMINAL_STATES:
            raise ConfigurationError(f"session {row.id} already ended ({row.state})")
    from cloudkeep.server import jobs

    jobs.stop_session(ctx, session_id)
    _audit(ctx, actor, "session.stop", session_id, {})
    return session_id


def stop_job(ctx: ServerContext, job: str, *, actor: str = "local") -> list[str]:
    """Ask every active session of ``job`` to stop; returns their ids (empty when none runs)."""
    with ctx.db() as session:
        job_id = resolve(session, BackupJob, job, "job").id
        active = select(JobSession.id).where(
            JobSession.job_id == job_id, JobSession.state.not_in(sorted(TERMINAL_STATES))
        )
        ids = list(session.scalars(active))
    for session_id in ids:
        stop_session(ctx, session_id, actor=actor)
    return ids


def start_file_restore(
    ctx: ServerContext, restore_point: str, request: FileRestoreRequest, *, actor: str = "local"
) -> str:
    point = get_restore_point(ctx, restore_point)
    target = resolve_machine_id(ctx, request.target_machine) if request.target_machine else None
    if request.in_place and (request.target_path or (target and target != point.machine_id)):
        raise ConfigurationError("an in-place restore goes back to the original machine and paths")
    from cloudkeep.server import restore

    session_id = restore.start_file_restore(
        ctx,
        point.id,
        paths=request.paths,
        target_machine_id=target,
        target_path=request.target_path,
        in_place=request.in_place,
        wait=False,
    )
    _audit(ctx, actor, "restore.files", point.id, {"session_id": session_id, **request.model_dump()})
    return session_id


def start_volume_restore(
    ctx: ServerContext, restore_point: str, request: VolumeRestoreRequest, *, actor: str = "local"
) -> str:
    point = get_restore_point(ctx, restore_point)
    target = resolve_machine_id(ctx, request.target_machine) if request.target_machine else None
    from cloudkeep.server import restore

    session_id = restore.start_volume_restore(
        ctx, point.id, target_path=request.target_path, target_machine_id=target, wait=False
    )
    _audit(ctx, actor, "restore.volume", point.id, {"session_id": session_id, **request.model_dump()})
    return session_id


def download_files(
    ctx: ServerContext, restore_point: str, paths: list[str], dest: Path, *, actor: str = "local"
) -> Any:
    """Restore ``paths`` of a restore point into ``dest`` on this host (the administrator's machine)."""
    point = get_restore_point(ctx, restore_point)
    from cloudkeep.server import restore

    result = restore.download_files(ctx, point.id, paths, dest)
    _audit(ctx, actor, "restore.download", point.id, {"paths": paths})
    return result


def browse(
    ctx: ServerContext,
    restore_point: str,
    path: str = "/",
    *,
    recursive: bool = False,
    pattern: str | None = None,
) -> BrowseResult:
    """List a folder of a restore point (read here with the repository credential)."""
    point = get_restore_point(ctx, restore_point)
    from cloudkeep.server import restore

    result = restore.browse(ctx, point.id, path, recursive=recursive, pattern=pattern)
    return BrowseResult.model_validate(result)


def search(
    ctx: ServerContext, pattern: str, *, machine: str | None = None, job: str | None = None, limit: int = 1000
) -> list[SearchHit]:
    """Find files by name (or path) glob across restore points."""
    if not pattern.strip():
        raise ConfigurationError("give a file name or path pattern to search for")
    machine_id = resolve_machine_id(ctx, machine) if machine else None
    job_id = None
    if job:
        with ctx.db() as session:
            job_id = resolve(session, BackupJob, job, "job").id
    from cloudkeep.server import restore

    hits = restore.search(ctx, pattern, machine_id=machine_id, job_id=job_id, limit=limit)
    return [SearchHit.model_validate(hit) for hit in hits]


def export_image(
    ctx: ServerContext, restore_point: str, dest: Path, *, image_format: str = "raw", actor: str = "local"
) -> dict[str, Any]:
    """Write a volume restore point on this host as a raw image or a fixed VHD."""
    point = get_restore_point(ctx, restore_point)
    from cloudkeep.server import restore

    result = restore.export_image(ctx, point.id, dest, image_format=image_format)
    _audit(ctx, actor, "restore.export", point.id, {"dest": str(dest), "format": image_format})
    return result
