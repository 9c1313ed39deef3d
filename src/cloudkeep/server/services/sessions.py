"""Job sessions (backup, rescan, restore, check runs) and their per-machine tasks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from sqlalchemy import func, select

from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import BackupJob, DiscoveredMachine, JobSession, SessionTask
from cloudkeep.server.services.common import check_page, paginate, resolve
from cloudkeep.server.services.schemas import Page, SessionDetail, SessionTaskView, SessionView

TERMINAL_STATES = frozenset({"success", "warning", "failed", "stopped"})


def view(row: JobSession) -> SessionView:
    return SessionView.model_validate(row)


def list_sessions(
    ctx: ServerContext,
    *,
    kind: str | None = None,
    state: str | None = None,
    job: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[SessionView]:
    stmt = select(JobSession).order_by(JobSession.created_at.desc(), JobSession.id)
    with ctx.db() as session:
        if kind:
            stmt = stmt.where(JobSession.kind == kind)
        if state:
            stmt = stmt.where(JobSession.state == state)
        if job:
            stmt = stmt.where(JobSession.job_id == resolve(session, BackupJob, job, "job").id)
        return paginate(session, stmt, view, limit, offset)


def get_session(ctx: ServerContext, session_id: str, limit: int = 100, offset: int = 0) -> SessionDetail:
    """The session with one page of its tasks (and their log lines) plus counts of all of them.

    Paged because a session has a task per machine: at 5,000 machines the whole detail took
    1.4-3.6 s to build and was megabytes of JSON (docs/scale.md).
    """
    check_page(limit, offset)
    with ctx.db() as session:
        row = resolve(session, JobSession, session_id, "session", by_name=False)
        counts = {
            state: int(n)
            for state, n in session.execute(
                select(SessionTask.state, func.count())
                .where(SessionTask.session_id == row.id)
                .group_by(SessionTask.state)
            )
        }
        tasks = session.scalars(
            select(SessionTask)
            .where(SessionTask.session_id == row.id)
            .order_by(SessionTask.started_at, SessionTask.id)
            .limit(limit)
            .offset(offset)
        ).all()
        ids = {t.machine_id for t in tasks}
        stmt = select(DiscoveredMachine.id, DiscoveredMachine.name).where(DiscoveredMachine.id.in_(ids))
        names = {machine_id: name for machine_id, name in session.execute(stmt)}
        views = []
        for task in tasks:
            task_view = SessionTaskView.model_validate(task)
            task_view.machine_name = names.get(task.machine_id, "")
            views.append(task_view)
        log: list[dict[str, Any]] = []
        for task in tasks:
            for entry in task.log or []:
                item = entry if isinstance(entry, dict) else {"message": str(entry)}
                log.append({"task_id": task.id, "machine_id": task.machine_id, **item})
        return SessionDetail(
            **view(row).model_dump(), tasks=views, log=log, task_total=sum(counts.values()),
            task_counts=counts, task_limit=limit, task_offset=offset,
        )  # fmt: skip


def watch_session(
    ctx: ServerContext, session_id: str, *, poll: float = 0.5, timeout: float | None = None
) -> Iterator[SessionDetail]:
    """Yield the session whenever it changes, ending with its terminal state (or at ``timeout``)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    last: str | None = None
    while True:
        detail = get_session(ctx, session_id)
        snapshot = detail.model_dump_json(exclude={"log"})
        if snapshot != last:
            last = snapshot
            yield detail
        if detail.state in TERMINAL_STATES or (deadline is not None and time.monotonic() >= deadline):
            return
        time.sleep(poll)
