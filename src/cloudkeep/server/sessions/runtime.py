"""A session's life on the server: open it, update its tasks, stop it, hold its lease, end it.

A ``JobSession`` is one run of a long operation (a backup job, a restore, a health check) with a
``SessionTask`` per machine. Every row change goes through a short database transaction of its
own, so the API sees progress as it happens and a crash leaves the last state written.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

from sqlalchemy.orm import Session

from cloudkeep.errors import CloudkeepError
from cloudkeep.server import leases
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, SessionTask

log = logging.getLogger(__name__)

ACTIVE_STATES = ("pending", "running")
SESSION_LEASE_SECONDS = 90.0


class CommandSender(Protocol):
    """What a session needs from ``cloudkeep.server.dispatcher.Dispatcher`` (tests pass fakes)."""

    def send(
        self,
        machine_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        sealed: dict[str, Any] | None = None,
        task_id: str | None = None,
        ttl: float = 3600,
    ) -> str: ...

    def wait(
        self,
        command_id: str,
        *,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.2,
    ) -> dict[str, Any]: ...


class TaskStopped(Exception):
    """The administrator stopped the session while this task ran."""


class TaskFailed(CloudkeepError):
    """The machine reported an error (or never answered); the message is the machine's reason."""


def default_dispatcher(ctx: ServerContext) -> CommandSender:
    """The real dispatcher, with this process's server-queue consumers running (imported late:
    it pulls in the cloud providers, which a session with a given sender never needs)."""
    from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers

    ensure_consumers(ctx)
    return Dispatcher(ctx)


# --- rows -------------------------------------------------------------------------------------------


def add_session(
    db: Session,
    *,
    kind: str,
    job_id: str | None,
    trigger: str,
    machine_ids: list[str],
    stats: dict[str, Any] | None = None,
    attempt: int = 1,
) -> tuple[str, list[str]]:
    """Add a pending session with one pending task per machine in ``db``'s transaction (so a caller
    can check "not already running" in the same one); returns (session id, task ids)."""
    session = JobSession(kind=kind, job_id=job_id, trigger=trigger, attempt=attempt, state="pending")
    if stats is not None:
        session.stats = stats
    db.add(session)
    db.flush()
    tasks = [SessionTask(session_id=session.id, machine_id=m, state="pending") for m in machine_ids]
    db.add_all(tasks)
    db.flush()
    return session.id, [t.id for t in tasks]


def open_session(ctx: ServerContext, **fields: Any) -> tuple[str, list[str]]:
    """``add_session`` in a transaction of its own."""
    with ctx.db() as db:
        return add_session(db, **fields)


def launch(run: Callable[[], None], *, wait: bool, name: str) -> None:
    """Run a session inline (``wait``) or on a daemon thread of this process."""
    if wait:
        run()
    else:
        threading.Thread(target=run, name=name, daemon=True).start()


def append_log(task: SessionTask, message: str, level: str = "info") -> None:
    task.log = [*(task.log or []), {"at": utcnow().isoformat(), "level": level, "message": message}]


def update_task(ctx: ServerContext, task_id: str, message: str | None = None, **fields: Any) -> None:
    """Set a task's fields and log ``message`` on it (as an error when the task failed)."""
    with ctx.db() as db:
        task = db.get(SessionTask, task_id)
        if task is None:
            return
        for key, value in fields.items():
            setattr(task, key, value)
        if message:
            append_log(task, message, "error" if fields.get("state") == "failed" else "info")


def set_session(ctx: ServerContext, session_id: str, **fields: Any) -> None:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        if session is not None:
            for key, value in fields.items():
                setattr(session, key, value)


def stop_requested(ctx: ServerContext, session_id: str) -> bool:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        return bool(session and session.stop_requested)


# --- the lease ------------------------------------------------------------------------------------


def session_lease(session_id: str) -> str:
    return f"session:{session_id}"


class SessionLease:
    """Hold ``session:<id>`` while the session runs, renewed in the background, so other workers
    can tell a live session from one whose worker died (``jobs.lifecycle.recover_orphaned_sessions``)."""

    def __init__(self, ctx: ServerContext, session_id: str, *, ttl: float = SESSION_LEASE_SECONDS) -> None:
        self.ctx, self.session_id, self.ttl = ctx, session_id, ttl
        self.name = session_lease(session_id)
        self.holder = f"{ctx.server_id}:{os.getpid()}:{id(self):x}"
        self._done = threading.Event()
        self._keeper = threading.Thread(target=self._renew, daemon=True, name="ck-session-lease")

    def __enter__(self) -> SessionLease:
        leases.acquire(self.ctx, self.name, self.holder, ttl_seconds=self.ttl)
        self._keeper.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._done.set()
        self._keeper.join(timeout=10)

    def _renew(self) -> None:
        while not self._done.wait(self.ttl / 3):
            try:
                leases.acquire(self.ctx, self.name, self.holder, ttl_seconds=self.ttl)
            except Exception:  # a database hiccup must not kill the session; the next renewal retries
                log.warning("could not renew the lease of session %s", self.session_id, exc_info=True)
        leases.release(self.ctx, self.name, self.holder)


# --- when a session ends --------------------------------------------------------------------------

SessionEndHook = Callable[[ServerContext, str, "CommandSender | None"], None]
_END_HOOKS: dict[str, SessionEndHook] = {}


def on_session_end(name: str, hook: SessionEndHook) -> None:
    """Register ``hook`` to run after every backup session ends (once per ``name``).

    This is how a package above the runner reacts to its sessions without the runner importing
    it: ``scheduling.scheduler`` registers its retries and chained jobs here when it is imported.
    """
    _END_HOOKS[name] = hook


def run_end_hooks(ctx: ServerContext, session_id: str, dispatcher: CommandSender | None) -> None:
    """Each hook may fail without affecting the session's result or the other hooks."""
    for name, hook in list(_END_HOOKS.items()):
        try:
            hook(ctx, session_id, dispatcher)
        except Exception:
            log.exception("the session-end hook %s failed for %s", name, session_id)
