"""Sessions: the one runtime every long operation (backup, restore, health check) runs in.

``runtime`` opens a ``JobSession`` with its ``SessionTask`` rows, updates and stops them, holds the
session's lease and runs hooks when a session ends; ``commands`` sends a command to a machine,
awaits its result and reads it as the typed result body of ``cloudkeep.protocol.bodies`` — a
malformed result fails that task with a clear reason. Backup jobs (``server/jobs``), restores
(``server/restore``) and health checks all go through it.
"""

from cloudkeep.server.clock import utcnow
from cloudkeep.server.sessions.commands import (
    CommandSession,
    Outcome,
    WaitHooks,
    await_result,
    read_result,
    run_command_session,
    start_command_session,
)
from cloudkeep.server.sessions.runtime import (
    ACTIVE_STATES,
    CommandSender,
    SessionLease,
    TaskFailed,
    TaskStopped,
    default_dispatcher,
    on_session_end,
    open_session,
    run_end_hooks,
    set_session,
    stop_requested,
    update_task,
)

__all__ = [
    "ACTIVE_STATES",
    "CommandSender",
    "CommandSession",
    "Outcome",
    "SessionLease",
    "TaskFailed",
    "TaskStopped",
    "WaitHooks",
    "await_result",
    "default_dispatcher",
    "on_session_end",
    "open_session",
    "read_result",
    "run_command_session",
    "run_end_hooks",
    "set_session",
    "start_command_session",
    "stop_requested",
    "update_task",
    "utcnow",
]
