"""Send a command to a machine, await its result and read it as its typed result body.

``run_command_session`` is the whole life of a one-machine session (a file or volume restore, a
health check): open, send with scoped repository access, await in short slices so a stop request
is noticed, read the result, finish the task and the session. ``read_result`` is where a result
payload enters the server's code: it must match its ``cloudkeep.protocol.bodies.RESULT_BODIES``
model, and a malformed one fails the task with a clear reason instead of crashing the session.
"""

from __future__ import annotations

import logging
import math
import time as monotonic_time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pydantic import ValidationError

from cloudkeep.errors import CloudkeepError
from cloudkeep.protocol.bodies import RESULT_BODIES, Body
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.sessions.access import (
    RestoreGrant,
    agent_access,
    forget_grant,
    keys_for_machine,
    load_repository,
    repository_password,
)
from cloudkeep.server.sessions.runtime import (
    CommandSender,
    TaskFailed,
    default_dispatcher,
    launch,
    open_session,
    set_session,
    stop_requested,
    update_task,
)

log = logging.getLogger(__name__)
R = TypeVar("R", bound=Body)
WAIT_SLICE = 2.0  # seconds between looks at the session's stop flag


def read_result(model: type[R], machine_name: str, payload: dict[str, Any]) -> R:
    """``payload`` as ``model``; ``TaskFailed`` naming the machine and the first bad fields when not.

    The values the machine sent are not repeated in the message (they may be large or hostile).
    """
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:3]
        ]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        kind = next((k for k, m in RESULT_BODIES.items() if m is model), model.__name__)
        raise TaskFailed(
            f"{machine_name} sent a malformed {kind} result: {'; '.join(problems)[:500]}{more}",
            hint="update the machine's services with a rescan of its protection group",
        ) from None


def sealed_access(
    ctx: ServerContext, repository_id: str, machine_id: str, grant: RestoreGrant | None = None
) -> dict[str, Any]:
    """Scoped, expiring repository access for one machine (sealed into the command's envelope).

    Format 3: a writer bundle, plus the content keys of what a restore or browse (``grant``) reads.
    """
    repository = load_repository(ctx, repository_id)
    password = repository_password(ctx, repository)
    provider = ctx.provider_for(repository.credential_id)
    try:
        keys = keys_for_machine(provider, repository.location, password, grant, machine_id=machine_id)
        return agent_access(provider, repository, machine_id, keys)
    finally:
        provider.close()


def call_machine(
    ctx: ServerContext,
    sender: CommandSender,
    machine_id: str,
    machine_name: str,
    kind: str,
    body: dict[str, Any],
    *,
    repository_id: str,
    timeout: float,
    grant: RestoreGrant | None = None,
) -> Body:
    """One command outside any session (e.g. a browse through a machine): send, await, read."""
    sealed = sealed_access(ctx, repository_id, machine_id, grant)
    try:
        command_id = sender.send(machine_id, kind, body, sealed=sealed)
        return read_result(RESULT_BODIES[kind], machine_name, sender.wait(command_id, timeout=timeout))
    finally:
        forget_grant(ctx, repository_id, sealed)


@dataclass(frozen=True)
class Outcome:
    """How a task (and its one-machine session) ends: state, reason and the fields to record."""

    state: str
    reason: str
    task: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CommandSession:
    """A one-machine session: which command goes where, and how its result reads as an ``Outcome``."""

    kind: str  # the session's kind: "restore", "check"
    command: str  # the command's kind: "restore", "restore_volume", "check"
    body: dict[str, Any]
    machine_id: str
    machine_name: str
    repository_id: str
    job_id: str | None
    trigger: str
    started_message: str
    interpret: Callable[[Any], Outcome]  # the typed result → the outcome
    error_prefix: str  # put before the error when the command could not run or failed
    timeout: float
    stats: dict[str, Any] | None = None  # the session's stats from the start
    unfinished: Outcome = field(default_factory=lambda: Outcome("failed", ""))  # fields when no result
    grant: RestoreGrant | None = None  # a restore: the keys of what it reads go with it (format 3)


def start_command_session(
    ctx: ServerContext, spec: CommandSession, *, wait: bool, dispatcher: CommandSender | None
) -> str:
    """Open the session and run it (inline when ``wait``, else on a daemon thread); its id."""
    session_id, (task_id,) = open_session(
        ctx,
        kind=spec.kind,
        job_id=spec.job_id,
        trigger=spec.trigger,
        machine_ids=[spec.machine_id],
        stats=spec.stats,
    )
    launch(
        lambda: run_command_session(ctx, session_id, task_id, spec, dispatcher),
        wait=wait,
        name=f"ck-{spec.kind}-{session_id[:8]}",
    )
    return session_id


def run_command_session(
    ctx: ServerContext,
    session_id: str,
    task_id: str,
    spec: CommandSession,
    dispatcher: CommandSender | None,
) -> None:
    started = utcnow()
    set_session(ctx, session_id, state="running", started_at=started)
    update_task(ctx, task_id, spec.started_message, state="running", started_at=started)
    outcome = spec.unfinished
    cleanup: dict[str, Any] | None = None
    try:
        sender = dispatcher or default_dispatcher(ctx)
        sealed = sealed_access(ctx, spec.repository_id, spec.machine_id, spec.grant)
        cleanup = sealed
        command_id = sender.send(
            spec.machine_id, spec.command, spec.body, sealed=sealed, task_id=task_id, ttl=spec.timeout
        )
        hooks = WaitHooks(stop_requested=lambda: stop_requested(ctx, session_id))
        payload = await_result(sender, command_id, timeout=spec.timeout, hooks=hooks)
        if payload is None:
            outcome = Outcome("stopped", "stopped by the administrator", spec.unfinished.task,
                              spec.unfinished.session)  # fmt: skip
        else:
            result = read_result(RESULT_BODIES[spec.command], spec.machine_name, payload)
            outcome = spec.interpret(result)
    except (CloudkeepError, TimeoutError) as exc:
        reason = f"{spec.error_prefix}{exc}"
        outcome = Outcome("failed", reason, spec.unfinished.task, spec.unfinished.session)
    finally:
        if cleanup is not None:
            _forget_grant_quietly(ctx, spec.repository_id, cleanup)
    ended = utcnow()
    state, reason = outcome.state, outcome.reason
    update_task(ctx, task_id, reason, state=state, reason=reason, ended_at=ended, **outcome.task)
    set_session(ctx, session_id, state=state, reason=reason, ended_at=ended, **outcome.session)


def _forget_grant_quietly(ctx: ServerContext, repository_id: str, sealed: dict[str, Any]) -> None:
    """The session's outcome stands if the one-off grant object cannot be removed (it is logged)."""
    try:
        forget_grant(ctx, repository_id, sealed)
    except CloudkeepError as exc:
        log.warning("grant object %s not removed: %s", sealed.get("grants_object"), exc)


@dataclass(frozen=True)
class WaitHooks:
    """What a session does while it awaits one command's result (every session notices a stop).

    ``cancel`` tells the machine to stop and returns how many seconds to wait for its answer (without
    it a stop ends the wait at once); ``refresh`` runs every ``refresh_every`` seconds (a long backup's
    credentials); ``still_running`` tells a slice that ran out from a command that ended (without it:
    the wait raised ``TimeoutError``).
    """

    stop_requested: Callable[[], bool]
    cancel: Callable[[], float] | None = None
    refresh: Callable[[], None] | None = None
    refresh_every: float = math.inf
    still_running: Callable[[], bool] | None = None
    slice_seconds: float = WAIT_SLICE


def await_result(
    sender: CommandSender, command_id: str, *, timeout: float, hooks: WaitHooks
) -> dict[str, Any] | None:
    """The result's payload, or None when the session was stopped first.

    Waits in short slices so a stop request or a due refresh is noticed on time. After ``cancel`` a
    result that still comes within the grace is returned; a command that ends without one is stopped.
    ``TimeoutError`` when no result came within ``timeout``; the sender's other errors pass through.
    """
    deadline = monotonic_time.monotonic() + timeout
    refresh_at = monotonic_time.monotonic() + hooks.refresh_every
    grace_end: float | None = None
    looked_again = False
    while True:
        if grace_end is None and hooks.stop_requested():
            if hooks.cancel is None:
                return None
            grace_end = monotonic_time.monotonic() + hooks.cancel()
        now = monotonic_time.monotonic()
        if grace_end is not None and now >= grace_end:
            return None  # the machine did not confirm in time; stop waiting for it
        if hooks.refresh is not None and now >= refresh_at:
            hooks.refresh()
            refresh_at = now + hooks.refresh_every
        try:
            return sender.wait(command_id, timeout=min(hooks.slice_seconds, max(0.1, deadline - now)))
        except Exception as exc:
            running = hooks.still_running() if hooks.still_running else isinstance(exc, TimeoutError)
            if running and monotonic_time.monotonic() < deadline:
                continue  # only this slice ran out
            if isinstance(exc, TimeoutError) and hooks.still_running is not None and not looked_again:
                looked_again = True  # the result landed just as the slice ran out: read it once more
                continue
            if running:
                if isinstance(exc, TimeoutError):
                    raise
                raise TimeoutError(f"no result for command {command_id} within {timeout:.0f} s") from exc
            if grace_end is not None:
                return None  # the machine stopped the task (or it failed meanwhile)
            raise
