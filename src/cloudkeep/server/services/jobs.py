"""Backup jobs: what to back up, where to, when, and how long to keep it."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloudkeep.errors import ConfigurationError, ConflictError
from cloudkeep.server import audit
from cloudkeep.server.audit import is_secret_key
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import (
    BackupJob,
    DiscoveredMachine,
    JobSession,
    ProtectionGroup,
    Repository,
    RestorePoint,
)
from cloudkeep.server.scheduling.schedule_spec import upcoming_runs
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.schemas import JobCreate, JobUpdate, JobView, Page
from cloudkeep.server.services.validation import next_run, validate_retention, validate_schedule
from cloudkeep.server.sessions.runtime import ACTIVE_STATES

_PLAIN = ("description", "mode", "includes", "excludes", "enabled")
_GLOB_CHARS = set("*?[")
_WINDOWS_ABSOLUTE = re.compile(r"^[A-Za-z]:[\\/]")


SEALED_SUFFIX = "_sealed"


def view(row: BackupJob) -> JobView:
    job = JobView.model_validate(row)
    job.options = _mask_sealed(job.options)
    job.next_runs = upcoming_runs(job.schedule, job.next_run_at)
    return job


def _mask_sealed(options: dict[str, Any]) -> dict[str, Any]:
    """Sealed values are ciphertext, but views show only that they are set."""
    return {
        k: ("(sealed)" if k.endswith(SEALED_SUFFIX) else _mask_sealed(v) if isinstance(v, dict) else v)
        for k, v in options.items()
    }


def seal_options(ctx: ServerContext, options: dict[str, Any]) -> dict[str, Any]:
    """Replace every secret-named value (e.g. a job or SMTP ``password``) by ``<key>_sealed``: the hex of
    the value sealed with the master key, which is what the job runner and notifications read."""
    sealed: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            sealed[key] = seal_options(ctx, value)
        elif isinstance(value, str) and is_secret_key(key) and not key.endswith(SEALED_SUFFIX):
            sealed[key + SEALED_SUFFIX] = ctx.secrets.seal(value).hex()
        else:
            sealed[key] = value
    return sealed


def reseal_options(ctx: ServerContext, options: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Re-seal every ``*_sealed`` value under the current master key (for key rotation)."""
    count = 0
    result: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            result[key], inner = reseal_options(ctx, value)
            count += inner
        elif key.endswith(SEALED_SUFFIX) and isinstance(value, str):
            result[key] = ctx.secrets.seal(ctx.secrets.open(bytes.fromhex(value))).hex()
            count += 1
        else:
            result[key] = value
    return result, count


def _backup_repository(session: Session, ref: str) -> Repository:
    repo = resolve(session, Repository, ref, "backup repository")
    if repo.purpose != "backup":
        raise ConfigurationError(
            f"repository {repo.name!r} is a {repo.purpose} repository and cannot hold backups",
            hint="choose a repository added with --purpose backup",
        )
    return repo


def _group_ids(session: Session, refs: list[str]) -> list[str]:
    return [resolve(session, ProtectionGroup, ref, "protection group").id for ref in dict.fromkeys(refs)]


def _machine_ids(session: Session, refs: list[str]) -> list[str]:
    return [
        resolve(session, DiscoveredMachine, ref, "machine", by_name=False).id for ref in dict.fromkeys(refs)
    ]


def _check_sources(row: BackupJob) -> None:
    """What a job backs up must make sense for its mode before it is stored, not at run time."""
    includes = list(row.includes or [])
    if row.mode == "entire" and includes:
        raise ConfigurationError(
            "an entire-machine job backs up every file system and takes no --include",
            hint="drop --include, or use --mode file for chosen paths",
        )
    if row.mode == "volume" and not includes:
        raise ConfigurationError(
            "a volume job needs the devices to image", hint="pass --include /dev/sdb (repeat for more)"
        )
    relative = [
        p for p in includes if not (p.startswith("/") or _WINDOWS_ABSOLUTE.match(p) or _GLOB_CHARS & set(p))
    ]
    if relative:
        raise ConfigurationError(
            f"include path {relative[0]!r} is relative",
            hint="give absolute paths (e.g. /srv/data or C:\\Data) or a glob such as *.sql",
        )


def _schedule_fields(row: BackupJob, schedule: dict[str, Any] | None) -> None:
    if schedule is not None:
        validate_schedule(schedule)
    row.schedule = schedule
    row.next_run_at = next_run(schedule, utcnow()) if schedule and row.enabled is not False else None


def create_job(ctx: ServerContext, data: JobCreate, *, actor: str = "local") -> JobView:
    retention = validate_retention(data.retention.model_dump(exclude_none=True) if data.retention else {})
    if data.schedule is not None:
        validate_schedule(data.schedule)
    with ctx.db() as session:
        ensure_unique_name(session, BackupJob, data.name, "job")
        row = BackupJob(
            name=data.name,
            repository_id=_backup_repository(session, data.repository).id,
            protection_group_ids=_group_ids(session, data.protection_groups or []),
            machine_ids=_machine_ids(session, data.machines or []),
            retention=retention,
            options=seal_options(ctx, data.options.stored()) if data.options else {},
            **{k: v for k in _PLAIN if (v := getattr(data, k)) is not None},
        )
        _check_sources(row)
        if not row.protection_group_ids and not row.machine_ids:
            raise ConfigurationError(
                "a job needs at least one protection group or machine", hint="pass --group"
            )
        _schedule_fields(row, data.schedule)
        session.add(row)
        session.flush()
        audit.record(session, actor, "job.create", row.id, data.model_dump(mode="json", exclude_none=True))
        return view(row)


def update_job(ctx: ServerContext, ref: str, data: JobUpdate, *, actor: str = "local") -> JobView:
    with ctx.db() as session:
        row = resolve(session, BackupJob, ref, "job")
        if data.name is not None:
            ensure_unique_name(session, BackupJob, data.name, "job", exclude_id=row.id)
            row.name = data.name
        if data.repository is not None:
            row.repository_id = _backup_repository(session, data.repository).id
        if data.protection_groups is not None:
            row.protection_group_ids = _group_ids(session, data.protection_groups)
        if data.machines is not None:
            row.machine_ids = _machine_ids(session, data.machines)
        if not row.protection_group_ids and not row.machine_ids:
            raise ConfigurationError("a job needs at least one protection group or machine")
        if data.retention is not None:
            row.retention = validate_retention(data.retention.model_dump(exclude_none=True))
        for key in _PLAIN:
            if (value := getattr(data, key)) is not None:
                setattr(row, key, value)
        if data.options is not None:
            row.options = seal_options(ctx, data.options.stored())
        if data.mode is not None or data.includes is not None:
            _check_sources(row)
        if data.clear_schedule:
            _schedule_fields(row, None)
        elif data.schedule is not None or data.enabled is not None:
            _schedule_fields(row, data.schedule if data.schedule is not None else row.schedule)
        audit.record(session, actor, "job.update", row.id, data.model_dump(mode="json", exclude_unset=True))
        session.flush()
        return view(row)


def set_job_enabled(ctx: ServerContext, ref: str, enabled: bool, *, actor: str = "local") -> JobView:
    return update_job(ctx, ref, JobUpdate(enabled=enabled), actor=actor)


def list_jobs(ctx: ServerContext, *, limit: int = 100, offset: int = 0) -> Page[JobView]:
    with ctx.db() as session:
        return paginate(session, select(BackupJob).order_by(BackupJob.name), view, limit, offset)


def get_job(ctx: ServerContext, ref: str) -> JobView:
    with ctx.db() as session:
        return view(resolve(session, BackupJob, ref, "job"))


def delete_job(ctx: ServerContext, ref: str, *, actor: str = "local") -> None:
    """Delete a job; its sessions and restore points stay in the catalog, detached from it."""
    with ctx.db() as session:
        row = resolve(session, BackupJob, ref, "job")
        active = select(JobSession.id).where(JobSession.job_id == row.id, JobSession.state.in_(ACTIVE_STATES))
        if session.scalar(active.limit(1)):
            raise ConflictError(
                f"job {row.name!r} is running", hint=f"stop it first: cloudkeep job stop {row.name}"
            )
        session.execute(update(JobSession).where(JobSession.job_id == row.id).values(job_id=None))
        session.execute(update(RestorePoint).where(RestorePoint.job_id == row.id).values(job_id=None))
        session.delete(row)
        audit.record(session, actor, "job.delete", row.id, {"name": row.name})
