"""The scheduler: starts due jobs exactly once across all server workers.

``tick(ctx, now)`` does one pass and is what tests drive with a controlled clock;
``start_scheduler`` calls it in a background loop. Each due job is claimed with a conditional
UPDATE — ``SET next_run_at = <next> WHERE id = :id AND next_run_at = <the value we read>`` — so
when several workers tick at once exactly one sees rowcount 1 and starts the run; the others
move on. Retries, missed runs, windows and chained jobs all go through the same claim.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from cloudkeep.errors import CloudkeepError, ConfigurationError, ConflictError
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, JobSession, Lease, SessionTask
from cloudkeep.server.jobs.lifecycle import recover_orphaned_sessions, start_job
from cloudkeep.server.jobs.options import read_job_options
from cloudkeep.server.jobs.retention import as_utc
from cloudkeep.server.logs import event
from cloudkeep.server.rescan import start_rescan
from cloudkeep.server.scheduling.locks import extend_due_locks
from cloudkeep.server.scheduling.rescans import due_rescans
from cloudkeep.server.scheduling.schedule import (
    Schedule,
    defer_to_window,
    in_window,
    is_missed,
    next_run,
    retry_at,
    validate_schedule,
)
from cloudkeep.server.sessions import CommandSender, on_session_end, utcnow

log = logging.getLogger(__name__)
CLAIM_KEEP = timedelta(days=60)


def claim_once(ctx: ServerContext, key: str, holder: str, *, keep: timedelta = CLAIM_KEEP) -> bool:
    """Insert a lease row; the primary key lets exactly one worker win ``key``.

    Keys are never reused (they name a session or a period), so the row only has to outlive the
    moment of the race; ``keep`` lets ``leases.purge_expired`` tidy them up later.
    """
    try:
        with ctx.db() as db:
            db.add(Lease(name=key[:200], holder=holder[:100], expires_at=utcnow() + keep))
        return True
    except IntegrityError:
        return False


def _claim_due(ctx: ServerContext, job_id: str, old: datetime | None, new: datetime | None) -> bool:
    """Move ``next_run_at`` from ``old`` to ``new``; True only for the one worker whose UPDATE matched."""
    with ctx.db() as db:
        condition = BackupJob.next_run_at.is_(None) if old is None else BackupJob.next_run_at == old
        result = db.execute(
            update(BackupJob)
            .where(BackupJob.id == job_id, condition)
            .values(next_run_at=new)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _schedule_of(job: BackupJob) -> Schedule | None:
    if not job.schedule:
        return None
    try:
        return validate_schedule(job.schedule)
    except CloudkeepError as exc:
        log.warning("job %s has an invalid schedule, not scheduling it: %s", job.name, exc)
        return None


def _last_session(db: Any, job_id: str) -> JobSession | None:
    stmt = (
        select(JobSession)
        .where(JobSession.job_id == job_id, JobSession.kind == "backup")
        .order_by(JobSession.created_at.desc())
        .limit(1)
    )
    return db.scalar(stmt)


@dataclass
class Due:
    job_id: str
    trigger: str
    attempt: int = 1
    machine_ids: list[str] | None = None


def _plan(ctx: ServerContext, job: BackupJob, schedule: Schedule, now: datetime) -> Due | None:
    """Claim the job's due run (if any) and say how to start it; None when nothing starts now."""
    old = job.next_run_at
    if old is None:
        if schedule.kind != "after_job":
            _claim_due(ctx, job.id, None, next_run(schedule, now))
        return None
    due = as_utc(old)
    if due > now:
        return None
    if not in_window(schedule, now):  # late (server was down): wait for the window to open
        _claim_due(ctx, job.id, old, defer_to_window(schedule, now))
        return None
    if not _claim_due(ctx, job.id, old, next_run(schedule, now)):
        return None  # another worker has it
    if schedule.kind == "after_job":
        return Due(job.id, "chained")
    with ctx.db() as db:
        last = _last_session(db, job.id)
        if last is not None and (last.stats or {}).get("retry_at") == due.isoformat():
            return Due(job.id, "retry", last.attempt + 1, (last.stats or {}).get("retry_machines") or None)
    if is_missed(schedule, due, now):
        if schedule.missed == "skip":
            event(log, "scheduled_run_missed", job=job.name, due=due.isoformat(), policy="skip")
            return None
        return Due(job.id, "missed")
    return Due(job.id, "schedule")


def tick(
    ctx: ServerContext,
    now: datetime,
    *,
    dispatcher: CommandSender | None = None,
    wait: bool = False,
    clock: Callable[[], datetime] | None = None,
) -> list[str]:
    """One scheduler pass at ``now``: start every due job once; returns the session ids started.

    Sessions started here read the time from ``clock`` (their start, end, retention and retry
    times). It defaults to the pass's own ``now``, so a caller that controls time controls all of
    it; the scheduler loop passes its real clock.
    """
    session_clock = clock or (lambda: now)
    from cloudkeep.server.dispatcher import expire_commands

    expire_commands(ctx, now)  # commands no machine answered before their expiry stop looking "sent"
    started: list[str] = []
    with ctx.db() as db:
        jobs = list(db.scalars(select(BackupJob).where(BackupJob.enabled.is_(True))))
    for job in jobs:
        schedule = _schedule_of(job)
        if schedule is None or not schedule.enabled:
            continue
        due = _plan(ctx, job, schedule, now)
        if due is None:
            continue
        try:
            session_id = start_job(
                ctx,
                due.job_id,
                trigger=due.trigger,
                attempt=due.attempt,
                machine_ids=due.machine_ids,
                wait=wait,
                dispatcher=dispatcher,
                clock=session_clock,
            )
            started.append(session_id)
            event(log, "scheduled_run", job=job.name, trigger=due.trigger, attempt=due.attempt,
                  session=session_id)  # fmt: skip
        except ConflictError as exc:
            event(log, "scheduled_run_skipped", job=job.name, trigger=due.trigger, reason=str(exc))
        except CloudkeepError as exc:
            event(log, "scheduled_run_failed", level=logging.WARNING, job=job.name, trigger=due.trigger,
                  error=str(exc))  # fmt: skip
    started += _start_due_rescans(ctx, now)
    started += _start_due_health_checks(ctx, now, dispatcher=dispatcher, wait=wait)
    try:  # immutable repositories' bulk lock extension, once a generation (maintenance sessions)
        extend_due_locks(ctx, wait=wait)
    except CloudkeepError as exc:
        log.warning("scheduled extend-locks could not start: %s", exc)
    return started


def _start_due_rescans(ctx: ServerContext, now: datetime) -> list[str]:
    """Protection-group rescans on their schedules (``scheduling.rescans.due_rescans``)."""
    started = []
    for group_id in due_rescans(ctx, now):
        try:
            session_id = start_rescan(ctx, group_id)
            started.append(session_id)
            event(log, "scheduled_rescan", protection_group=group_id, session=session_id)
        except CloudkeepError as exc:
            event(log, "scheduled_rescan_failed", level=logging.WARNING, protection_group=group_id,
                  error=str(exc))  # fmt: skip
    return started


def _start_due_health_checks(
    ctx: ServerContext, now: datetime, *, dispatcher: CommandSender | None, wait: bool
) -> list[str]:
    """``options.health_check = {every_days: N, read_data_subset: "5%"}``: one check per period per job."""
    from cloudkeep.server.jobs.health import start_health_check

    started = []
    with ctx.db() as db:
        jobs = [
            (j.id, j.name, dict(j.options or {}))
            for j in db.scalars(select(BackupJob).where(BackupJob.enabled.is_(True)))
        ]
    for job_id, job_name, stored in jobs:
        try:  # one job's bad stored options must not stop the others' checks
            spec = read_job_options(job_name, stored).health_check
        except ConfigurationError as exc:
            log.warning("health check of job %s skipped: %s", job_name, exc)
            continue
        if spec is None:
            continue
        period = max(1, int(spec.every_days * 86400))
        key = f"health:{job_id}:{int(now.timestamp()) // period}"
        if not claim_once(ctx, key, ctx.server_id, keep=max(CLAIM_KEEP, timedelta(seconds=2 * period))):
            continue
        try:
            started.append(
                start_health_check(
                    ctx,
                    job_id,
                    read_data_subset=spec.read_data_subset if spec.read_data_subset is not None else "5%",
                    wait=wait,
                    dispatcher=dispatcher,
                )
            )
        except CloudkeepError as exc:
            log.warning("health check of job %s could not start: %s", job_id, exc)
    return started


def install() -> None:
    """Have every backup session end with ``after_session`` (idempotent; also done on import, so
    whoever can start a scheduled run has it: the runner itself never imports the scheduler)."""
    on_session_end("scheduling", _after_session_hook)


def _after_session_hook(ctx: ServerContext, session_id: str, sender: CommandSender | None) -> None:
    after_session(ctx, session_id, dispatcher=sender)


def after_session(ctx: ServerContext, session_id: str, *, dispatcher: CommandSender | None = None) -> None:
    """Called once when a backup session ends: schedule a retry, then start jobs chained after it."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is None or session.kind != "backup" or session.job_id is None:
            return
        job = db.get(BackupJob, session.job_id)
        if job is None:
            return
        failed = [
            t.machine_id
            for t in db.scalars(select(SessionTask).where(SessionTask.session_id == session_id))
            if t.state == "failed"
        ]
        ended = as_utc(session.ended_at or utcnow())
        state, trigger, attempt, job_ref = session.state, session.trigger, session.attempt, (job.id, job.name)
        schedule = _schedule_of(job)
    if schedule and trigger != "manual" and state in ("failed", "warning") and failed:
        _schedule_retry(ctx, session_id, job_ref[0], schedule, ended, attempt, failed)
    if state != "stopped":
        _start_chained(ctx, session_id, job_ref, ended, dispatcher)


def _schedule_retry(
    ctx: ServerContext,
    session_id: str,
    job_id: str,
    schedule: Schedule,
    ended: datetime,
    attempt: int,
    failed: list[str],
) -> None:
    when = retry_at(schedule, ended, attempt)
    if when is None:
        return
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        session.stats = {**(session.stats or {}), "retry_at": when.isoformat(), "retry_machines": failed}
        job = db.get(BackupJob, job_id)
        assert job is not None
        if job.next_run_at is None or as_utc(job.next_run_at) > when:
            job.next_run_at = when


def _start_chained(
    ctx: ServerContext,
    session_id: str,
    job_ref: tuple[str, str],
    ended: datetime,
    dispatcher: CommandSender | None,
) -> None:
    with ctx.db() as db:
        followers = [
            (j.id, j.name, s)
            for j in db.scalars(select(BackupJob).where(BackupJob.enabled.is_(True)))
            if (s := _schedule_of(j)) is not None and s.kind == "after_job" and s.after_job in job_ref
        ]
    for follower_id, name, schedule in followers:
        if not claim_once(ctx, f"chain:{session_id}:{follower_id}", ctx.server_id):
            continue
        if not in_window(schedule, ended):
            with ctx.db() as db:
                follower = db.get(BackupJob, follower_id)
                if follower is not None:
                    follower.next_run_at = defer_to_window(schedule, ended)
            continue
        try:
            start_job(ctx, follower_id, trigger="chained", dispatcher=dispatcher)
        except CloudkeepError as exc:
            log.warning("job %s (after %s) could not start: %s", name, job_ref[1], exc)


@dataclass
class SchedulerHandle:
    thread: threading.Thread
    stop_event: threading.Event

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)


def start_scheduler(
    ctx: ServerContext,
    clock: Callable[[], datetime] = utcnow,
    *,
    interval: float = 15.0,
    dispatcher: CommandSender | None = None,
) -> SchedulerHandle:
    """Tick now (this is what runs missed jobs at start-up) and then every ``interval`` seconds."""
    stop_event = threading.Event()

    def loop() -> None:
        try:
            recover_orphaned_sessions(ctx)  # sessions a previous server process left "running"
        except Exception:
            log.exception("could not recover orphaned sessions")
        while not stop_event.is_set():
            try:
                tick(ctx, clock(), dispatcher=dispatcher, clock=clock)
            except Exception:  # keep scheduling whatever one pass hit
                log.exception("scheduler tick failed")
            stop_event.wait(interval)

    thread = threading.Thread(target=loop, name="ck-scheduler", daemon=True)
    thread.start()
    return SchedulerHandle(thread, stop_event)


install()
