"""Starting and stopping backup sessions, and recovering sessions whose worker died.

A running session holds a lease (``session:<id>``) renewed by the worker that runs it. If that
worker dies (server crash, killed container) the lease expires; the next start of the job — or the
scheduler at start-up — marks the orphaned session ``failed`` with a clear reason instead of
refusing every later run with "already running". Nothing is lost: the engine never makes a
half-written restore point visible, and the next run reuses what was already uploaded.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select

from cloudkeep.errors import ConfigurationError, ConflictError, NotFoundError
from cloudkeep.server import leases
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, DiscoveredMachine, JobSession
from cloudkeep.server.jobs.retention import as_utc
from cloudkeep.server.jobs.runner import SessionRunner
from cloudkeep.server.sessions.runtime import (
    ACTIVE_STATES,
    CommandSender,
    add_session,
    launch,
    session_lease,
)

ORPHAN_GRACE = timedelta(minutes=2)  # a new session gets this long to take its lease


def recover_orphaned_sessions(ctx: ServerContext, *, job_id: str | None = None) -> list[str]:
    """Fail active sessions whose runner's lease expired; returns their ids."""
    now = utcnow()
    stmt = select(JobSession).where(JobSession.state.in_(ACTIVE_STATES), JobSession.kind == "backup")
    if job_id is not None:
        stmt = stmt.where(JobSession.job_id == job_id)
    with ctx.db() as db:
        candidates = [(s.id, as_utc(s.created_at)) for s in db.scalars(stmt)]
    orphans = [
        sid
        for sid, created in candidates
        if now - created > ORPHAN_GRACE and leases.holder_of(ctx, session_lease(sid)) is None
    ]
    reason = "interrupted: the server worker running it stopped; the next run resumes from what was uploaded"
    for session_id in orphans:
        with ctx.db() as db:
            session = db.get(JobSession, session_id)
            if session is None or session.state not in ACTIVE_STATES:
                continue
            session.state, session.reason, session.ended_at = "failed", reason, now
            for task in session.tasks:
                if task.state in ACTIVE_STATES:
                    task.state, task.reason, task.ended_at = "failed", reason, now
    return orphans


# --- starting and stopping ----------------------------------------------------------------------


def resolve_job(db: Any, ref: str) -> BackupJob:
    job = db.get(BackupJob, ref) or db.scalar(select(BackupJob).where(BackupJob.name == ref))
    if job is None:
        raise NotFoundError(f"backup job {ref!r} does not exist", hint="list jobs with `cloudkeep job list`")
    return job


def job_machines(db: Any, job: BackupJob) -> list[DiscoveredMachine]:
    """Every machine of the job's protection groups (as discovered now) plus its explicit machines."""
    conditions = []
    if job.protection_group_ids:
        conditions.append(DiscoveredMachine.protection_group_id.in_(list(job.protection_group_ids)))
    if job.machine_ids:
        conditions.append(DiscoveredMachine.id.in_(list(job.machine_ids)))
    if not conditions:
        return []
    stmt = select(DiscoveredMachine).where(or_(*conditions)).order_by(DiscoveredMachine.name)
    return list(db.scalars(stmt))


def _select_machines(
    machines: list[DiscoveredMachine], wanted: list[str] | None, job: BackupJob
) -> list[str]:
    if wanted is None:
        return [m.id for m in machines]
    by_ref = {m.id: m.id for m in machines} | {m.name: m.id for m in machines}
    unknown = [w for w in wanted if w not in by_ref]
    if unknown:
        raise ConfigurationError(
            f"machine(s) {', '.join(unknown)} are not part of job {job.name!r}",
            hint="add them to the job or to one of its protection groups",
        )
    return list(dict.fromkeys(by_ref[w] for w in wanted))


def start_job(
    ctx: ServerContext,
    job_id: str,
    *,
    trigger: str = "manual",
    machine_ids: list[str] | None = None,
    wait: bool = False,
    attempt: int = 1,
    dispatcher: CommandSender | None = None,
    clock: Callable[[], datetime] | None = None,
) -> str:
    """Create the session and its tasks, then run it (inline when ``wait``, else on a daemon thread)."""
    with ctx.db() as db:
        job_ref = resolve_job(db, job_id).id
    recover_orphaned_sessions(ctx, job_id=job_ref)
    with ctx.db() as db:
        job = resolve_job(db, job_ref)
        running = db.scalar(
            select(JobSession.id).where(JobSession.job_id == job.id, JobSession.state.in_(ACTIVE_STATES))
        )
        if running:
            raise ConflictError(
                f"job {job.name!r} is already running (session {running})",
                hint=f"watch it with `cloudkeep session watch {running}` or stop it first",
            )
        selected = _select_machines(job_machines(db, job), machine_ids, job)
        stats = {"machines": len(selected), "job_name": job.name}
        session_id, _tasks = add_session(db, kind="backup", job_id=job.id, trigger=trigger,
                                         machine_ids=selected, stats=stats, attempt=attempt)  # fmt: skip
    runner = SessionRunner(ctx, session_id, dispatcher, clock=clock or utcnow)
    launch(runner.run, wait=wait, name=f"ck-session-{session_id[:8]}")
    return session_id


def stop_session(ctx: ServerContext, session_id: str) -> None:
    """Ask a running session to stop: no new task starts and running tasks stop being waited for."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is None:
            raise NotFoundError(f"session {session_id} does not exist")
        if session.state not in ACTIVE_STATES:
            raise ConflictError(f"session {session_id} already ended ({session.state})")
        session.stop_requested = True
