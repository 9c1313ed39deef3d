"""The fallback path: run one command delivered by the cloud command channel (SSM / Run Command).

Runs exactly the handlers the message service runs, guarded by the same idempotency ledger, and
returns the signed result envelope (printed as the last stdout line by ``__main__``).
"""

from __future__ import annotations

from typing import Any

from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.handlers import ROUTES, TaskContext, execute, failure, sign_result
from cloudkeep.machine.keys import AgentKeys
from cloudkeep.machine.ledger import CommandLedger
from cloudkeep.machine.message_service import command_validator
from cloudkeep.machine.spool import Spool
from cloudkeep.protocol.bodies import Cancel, DeliveredResult, UpdateCredentials


def exec_command(config: MachineConfig, text: str) -> str:
    """Validate and run ``text`` (a signed command envelope); raises ``ProtocolError`` if it is invalid."""
    keys = AgentKeys.load(config.state_dir)
    ledger = CommandLedger(config.state_dir / "commands.db")
    envelope = command_validator(config).validate(text)
    route = ROUTES[envelope.kind]
    if not ledger.accept(envelope.id, envelope.kind, "exec", text) or not ledger.start(envelope.id):
        entry = ledger.get(envelope.id)
        if entry is not None and entry.result is not None:
            return entry.result  # already done: the stored result, never a second run
        state = entry.state if entry else "unknown"
        reason = f"command already accepted on this machine (state {state}); not run again"
        return sign_result(config, keys, failure(envelope.id, reason))
    spools = [Spool.for_service(config.state_dir, service) for service in ("agent", "transport")]
    if route == "control" and isinstance(body := envelope.parsed_body(), Cancel):
        for spool in spools:  # the task may run in a worker or in another ``exec`` process
            spool.send_cancel(body.command_id, text)
        result = _delivered(envelope.id, body.command_id)
    elif route == "control":
        body = envelope.parsed_body()
        assert isinstance(body, UpdateCredentials)
        envelope.repository(keys.encryption)
        for service in ("agent", "transport"):
            Spool.for_service(config.state_dir, service).send_control(body.command_id, text)
        result = _delivered(envelope.id, body.command_id)
    else:
        cancelled = lambda: any(spool.cancel_requested(envelope.id) for spool in spools)  # noqa: E731
        result = execute(TaskContext(config, keys, envelope, cancelled=cancelled))
    signed = sign_result(config, keys, result)
    ledger.complete(envelope.id, signed, posted=True)  # returned on stdout, not through the queue
    return signed


def _delivered(command_id: str, target: str) -> dict[str, Any]:
    payload = DeliveredResult(delivered_to=target).model_dump(mode="json")
    return {"command_id": command_id, "ok": True, "payload": payload}
