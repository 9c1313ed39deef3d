"""Command handlers shared by the message service, the Agent/Transport workers and ``exec``.

The fallback path (``exec`` through SSM / Run Command) calls exactly these functions, so a
command behaves the same whichever channel delivered it.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cloudkeep.errors import CloudkeepError
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.keys import AgentKeys
from cloudkeep.machine.services import service_status
from cloudkeep.protocol import Envelope, OversizedMessage, RepositoryAccess, make_envelope, sign_envelope
from cloudkeep.protocol.bodies import RESULT_BODIES, Body, Progress, Result, RunScript

log = logging.getLogger(__name__)

# Which process runs each command kind.
ROUTES: dict[str, str] = {
    "ping": "self",
    "run_script": "self",
    "update_credentials": "control",
    "cancel": "control",
    "backup": "agent",
    "retention": "agent",
    "check": "agent",
    "restore": "transport",
    "restore_volume": "transport",
    "browse": "transport",
}
OUTPUT_LIMIT = 16 * 1024  # per stream: keeps a run_script result well under the 64 KiB message limit
RESULT_TTL = 7 * 24 * 3600.0  # a result stays valid as long as the command could; the server dedups by id
REPORT_TTL = 600.0


@dataclass
class TaskContext:
    config: MachineConfig
    keys: AgentKeys
    envelope: Envelope
    progress: Callable[[dict[str, Any]], None] = lambda _p: None
    refreshed_access: Callable[[], RepositoryAccess | None] = lambda: None
    cancelled: Callable[[], bool] = lambda: False  # True once the server sent ``cancel`` for this command
    warnings: list[str] = field(default_factory=list)

    def repository_access(self) -> RepositoryAccess:
        return self.refreshed_access() or self.envelope.repository(self.keys.encryption)


Handler = Callable[[TaskContext, Any], dict[str, Any]]


class TaskCancelled(CloudkeepError):
    """The server cancelled this command (``cancel``); raised at the next file/chunk boundary."""


CANCELLED_ERROR = "cancelled by the server; nothing was committed"


def cancelled_result(command_id: str) -> dict[str, Any]:
    """The result of a cancelled command: not ok, ``payload.cancelled`` set so the server can tell."""
    return Result(
        command_id=command_id, ok=False, error=CANCELLED_ERROR, payload={"cancelled": True}
    ).model_dump(mode="json")


def ping(ctx: TaskContext, _body: Body) -> dict[str, Any]:
    return {"version": ctx.config.version(), "services": service_status(ctx.config.state_dir)}


def _tail(text: bytes) -> str:
    decoded = text.decode(errors="replace")
    return decoded if len(decoded) <= OUTPUT_LIMIT else "…(truncated)…\n" + decoded[-OUTPUT_LIMIT:]


def run_shell(config: MachineConfig, shell: str, script: str, timeout: float) -> dict[str, Any]:
    """Run a script the way the machine's administrator would, in ROOT, with a hard timeout."""
    if shell == "powershell":
        exe = shutil.which("pwsh") or shutil.which("powershell")
        if exe is None:
            return {"exit_code": 127, "stdout": "", "stderr": "PowerShell is not installed on this machine\n"}
        argv = [exe, "-NoProfile", "-NonInteractive", "-Command", script]
    else:
        argv = ["/bin/sh", "-c", script]
    config.root.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            argv, cwd=config.root, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        return {
            "exit_code": 124, "stdout": _tail(exc.stdout or b""), "timed_out": True,
            "stderr": _tail(exc.stderr or b"") + f"\nscript timed out after {timeout:.0f}s\n",
        }  # fmt: skip
    return {"exit_code": proc.returncode, "stdout": _tail(proc.stdout), "stderr": _tail(proc.stderr)}


def run_script(ctx: TaskContext, body: RunScript) -> dict[str, Any]:
    return run_shell(ctx.config, body.shell, body.script, body.timeout)


def handler_for(kind: str) -> Handler:
    if kind == "ping":
        return ping
    if kind == "run_script":
        return run_script
    from cloudkeep.machine import tasks  # the engine is imported only where it is used

    return tasks.HANDLERS[kind]


def execute(ctx: TaskContext) -> dict[str, Any]:
    """Run one validated command; every failure becomes a Result with an error, never an exception."""
    envelope = ctx.envelope
    try:
        payload = handler_for(envelope.kind)(ctx, envelope.parsed_body())
        if ctx.warnings:
            payload.setdefault("warnings", []).extend(w for w in ctx.warnings if w not in payload["warnings"])
        typed = typed_payload(envelope.kind, payload)
        return Result(command_id=envelope.id, ok=True, payload=typed).model_dump(mode="json")
    except TaskCancelled:
        log.info("command %s (%s) cancelled", envelope.id, envelope.kind)
        return cancelled_result(envelope.id)
    except CloudkeepError as exc:
        log.warning("command %s (%s) failed: %s", envelope.id, envelope.kind, exc)
        return Result(command_id=envelope.id, ok=False, error=str(exc)).model_dump(mode="json")
    except Exception as exc:
        log.error("command %s (%s) crashed:\n%s", envelope.id, envelope.kind, traceback.format_exc())
        return failure(envelope.id, f"{type(exc).__name__}: {exc}")


def typed_payload(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload built as the command's result body (``RESULT_BODIES``), so the machine never sends
    a shape the server would refuse; a kind without one (none today) goes as it is."""
    model = RESULT_BODIES.get(kind)
    return payload if model is None else model.model_validate(payload).model_dump(mode="json")


def failure(command_id: str, error: str) -> dict[str, Any]:
    return Result(command_id=command_id, ok=False, error=error).model_dump(mode="json")


def sign_report(
    config: MachineConfig, keys: AgentKeys, kind: str, body: dict[str, Any], *, correlation_id: str | None,
    ttl: float = REPORT_TTL,
) -> str:  # fmt: skip
    envelope = make_envelope(
        kind, body, sender=config.machine_id, recipient=config.server_id, ttl=ttl,
        correlation_id=correlation_id,
    )  # fmt: skip
    return sign_envelope(envelope, keys.signing)


def sign_result(config: MachineConfig, keys: AgentKeys, result: dict[str, Any]) -> str:
    """A signed result envelope; a payload too big for one message is replaced by a clear error."""
    command_id = result["command_id"]
    try:
        return sign_report(config, keys, "result", result, correlation_id=command_id, ttl=RESULT_TTL)
    except OversizedMessage:
        size = len(json.dumps(result.get("payload", {})))
        shrunk = failure(command_id, f"result payload of {size} bytes is too big for a queue message")
        return sign_report(config, keys, "result", shrunk, correlation_id=command_id, ttl=RESULT_TTL)


def progress_body(command_id: str, data: dict[str, Any]) -> dict[str, Any]:
    return Progress.model_validate({**data, "command_id": command_id}).model_dump(mode="json")
