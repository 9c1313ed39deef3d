"""The end of a backup session: the run's repository maintenance, then its outcome.

After every machine's task, in order: lock what the run wrote where the store does not (Azure
generations), vouch for the run's new packs (format 3), and prune once. Each step notes what it
did (or its error) in the session's statistics and never fails the run: the backups stand, and the
next run catches up. Then the session gets its state, reason and totals (``finish_session``).
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.server import metrics
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, JobSession
from cloudkeep.server.jobs.retention import ServerMaintenance
from cloudkeep.server.jobs.stats import session_stats
from cloudkeep.server.logs import event
from cloudkeep.server.scheduling.schedule import Schedule, validate_schedule
from cloudkeep.server.sessions import ACTIVE_STATES

log = logging.getLogger(__name__)


def note_session(ctx: ServerContext, session_id: str, key: str, note: dict[str, Any]) -> None:
    """Record one end step's note under ``key`` in the session's statistics."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is not None:
            session.stats = {**(session.stats or {}), key: note}


def lock_new(
    ctx: ServerContext, session_id: str, maintenance: ServerMaintenance, machine_ids: list[str], now: datetime
) -> None:
    """Lock what the run's backups wrote where the store does not (Azure generations), before prune."""
    try:
        locked = maintenance.lock_new(machine_ids, now)
    except CloudkeepError as exc:  # the next extend-locks catches up; the backups stand
        log.warning("session %s: locking new objects failed: %s", session_id, exc)
        note_session(ctx, session_id, "locks", {"error": str(exc)})
        return
    if locked:
        note_session(ctx, session_id, "locks", {"objects": locked})


def vouch(ctx: ServerContext, session_id: str, maintenance: ServerMaintenance) -> None:
    """Vouch for the run's new packs (format 3), before prune; a failure leaves them for the next run."""
    try:
        result = maintenance.vouch()
    except CloudkeepError as exc:
        log.warning("session %s: vouching for new packs failed: %s", session_id, exc)
        note_session(ctx, session_id, "vouch", {"error": str(exc)})
        return
    if result is None or not (result.vouched or result.refused or result.forged_index_files):
        return
    note: dict[str, Any] = {"packs": len(result.vouched), "bytes_read": result.bytes_read}
    if result.forged_index_files:  # another machine wrote into a writer's namespace (Azure)
        note["forged_index_files"] = sorted(result.forged_index_files)[:20]
    if result.refused:
        note["refused"] = dict(list(result.refused.items())[:20])
        note["refused_writers"] = result.refused_writers
    note_session(ctx, session_id, "vouch", note)


def prune(ctx: ServerContext, session_id: str, maintenance: ServerMaintenance, now: datetime) -> None:
    """One prune per run, after every machine's forget."""
    try:
        result = maintenance.prune_once(now)
    except CloudkeepError as exc:
        log.warning("session %s: prune failed: %s", session_id, exc)
        note_session(ctx, session_id, "prune", {"error": str(exc)})
        return
    if result is not None:
        note_session(ctx, session_id, "prune", {"packs_deleted": result.packs_deleted,
                     "bytes_freed": result.bytes_freed, "warnings": result.warnings[:20]})  # fmt: skip


def finish_session(
    ctx: ServerContext, session_id: str, started: datetime, ended: datetime, error: str | None
) -> None:
    """The session's state, reason, totals and end time (tasks a crash left active are failed)."""
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        for task in session.tasks:  # a crash must not leave tasks "running"
            if task.state in ACTIVE_STATES:
                task.state, task.reason, task.ended_at = "failed", error or "session ended", ended
        tasks = [{"state": t.state, "stats": t.stats or {}} for t in session.tasks]
        session.stats = {**(session.stats or {}), **session_stats(tasks, (ended - started).total_seconds())}
        state, reason = session_outcome(tasks, session.stop_requested, error)
        if state == "stopped" and (session.stats or {}).get("stopped_by") == "backup window":
            reason = reason.replace("stopped;", "stopped: the backup window closed;", 1)
        elif state == "stopped":
            reason = reason.replace("stopped;", "stopped by the administrator;", 1)
        latest = {t.machine_id: t for t in session.tasks}.values()  # one per machine
        bad = [t.reason for t in latest if t.state in ("failed", "skipped")]  # reasons name the machine
        session.state, session.ended_at = state, ended
        session.reason = reason if not bad or state == "success" else f"{reason}; " + "; ".join(bad)[:2000]
        read = sum(t.bytes_read or 0 for t in session.tasks)
        uploaded = sum(t.bytes_transferred or 0 for t in session.tasks)
        kind, final_reason = session.kind, session.reason
    seconds = (ended - started).total_seconds()
    metrics.record_session(kind, state, seconds, read, uploaded)
    level = logging.INFO if state == "success" else logging.WARNING
    event(log, "session_ended", level=level, session=session_id, kind=kind, state=state,
          seconds=round(seconds, 3), bytes_read=read, bytes_uploaded=uploaded,
          reason=final_reason or None)  # fmt: skip


def stop_reason_of(session: JobSession | None) -> str:
    by_window = session is not None and (session.stats or {}).get("stopped_by") == "backup window"
    return "stopped: the backup window closed" if by_window else "stopped by the administrator"


def terminating_window(job: BackupJob, trigger: str) -> Schedule | None:
    """The job's schedule when its window stops scheduled runs (manual runs are never cut short)."""
    if trigger == "manual" or not job.schedule:
        return None
    try:
        schedule = validate_schedule(job.schedule)
    except CloudkeepError:
        return None
    return schedule if schedule.window is not None and schedule.window.terminate else None


def session_outcome(tasks: list[dict[str, Any]], stopped: bool, error: str | None) -> tuple[str, str]:
    if error:
        return "failed", error
    total = len(tasks)
    ok = sum(1 for t in tasks if t["state"] == "success")
    warned = sum(1 for t in tasks if t["state"] == "warning")
    if stopped:
        return "stopped", f"stopped; {ok + warned} of {total} machine(s) backed up"
    if ok == total:
        return "success", f"{total} machine(s) backed up"
    if ok + warned == 0:
        return "failed", f"no machine backed up (0 of {total})"
    return "warning", f"{ok + warned} of {total} machine(s) backed up"
