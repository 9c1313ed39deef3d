"""Fault cases against real machine-service subprocesses on the local queue.

Duplicate delivery, poison and forged messages, wrong recipient, clock skew, and the fallback
through the command channel when heartbeats stop (and back to the queues when they resume).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.protocol.crypto import canonical_json
from cloudkeep.providers.base import dead_letter_queue_name
from cloudkeep.server import consumer_registry
from cloudkeep.server.consumer import ServerQueueConsumer
from cloudkeep.server.db.models import CommandRecord
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers
from tests.machine.harness import Harness, MachineHandle, wait_for

pytestmark = pytest.mark.slow


def _signed_command(
    harness: Harness, machine: MachineHandle, kind: str, body: dict[str, Any], **kw: Any
) -> str:
    envelope = make_envelope(kind, body, sender=harness.ctx.server_id, recipient=machine.row_id, **kw)
    with harness.ctx.db() as session:
        session.add(CommandRecord(id=envelope.id, machine_id=machine.row_id, kind=kind, channel="queue"))
    return sign_envelope(envelope, harness.ctx.signing_key)


def _started(harness: Harness, name: str, *services: str) -> MachineHandle:
    machine = harness.add_machine(name)
    ensure_consumers(harness.ctx)
    for service in services or ("message-service",):
        machine.start(service)
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what=f"{name}'s first heartbeat")
    return machine


def _dead_letters(harness: Harness, queue_name: str, expected: int) -> list[str]:
    dlq = harness.provider.queues.get_queue(dead_letter_queue_name(queue_name))
    wait_for(lambda: dlq.approximate_count() >= expected, what=f"{expected} dead letters on {queue_name}")
    messages = dlq.receive(max_messages=10, visibility_timeout=60)
    return [dlq.dead_letter_reason(m.message_id) or "" for m in messages]  # type: ignore[attr-defined]


def _consumers() -> list[ServerQueueConsumer]:
    return list(consumer_registry._CONSUMERS.values())


def test_duplicate_delivery_runs_once_and_applies_once(harness: Harness) -> None:
    machine = _started(harness, "dup1")
    marker = machine.sim.root / "runs.log"
    text = _signed_command(harness, machine, "run_script", {"script": f"echo ran >> {marker}; echo done"})
    command_id = json.loads(text)["id"]
    queue = machine.agent_queue()
    queue.send(text)
    dispatcher = Dispatcher(harness.ctx)
    assert dispatcher.wait(command_id, timeout=30)["stdout"] == "done\n"
    queue.send(text)  # the same message again (at-least-once delivery, or a replay within its lifetime)
    wait_for(
        lambda: sum(c.counts.get("duplicate", 0) for c in _consumers()) >= 1, what="the re-posted result"
    )
    assert marker.read_text() == "ran\n"  # never re-run
    assert harness.record(command_id).state == "done"
    assert "delivered again; not re-run" in machine.output()


def test_poison_and_forged_messages_are_dead_lettered_never_run(harness: Harness) -> None:
    machine = _started(harness, "poison1")
    other = harness.add_machine("other1")
    marker = machine.sim.root / "pwned"
    evil = {"script": f"touch {marker}"}
    now = datetime.now(UTC)
    forged = make_envelope("run_script", evil, sender=harness.ctx.server_id, recipient=machine.row_id)
    unsigned = make_envelope("run_script", evil, sender=harness.ctx.server_id, recipient=machine.row_id)
    payloads = [
        "this is not json",
        json.dumps({"version": 1, "kind": "run_script"}),
        canonical_json(unsigned.unsigned_dict()).decode(),
        sign_envelope(forged, Ed25519PrivateKey.generate()),  # signed by a key that is not the server's
        sign_envelope(  # a machine's own key cannot sign commands either
            make_envelope("run_script", evil, sender=harness.ctx.server_id, recipient=machine.row_id),
            AgentKeys.load(other.config.state_dir).signing,
        ),
        _signed_command(harness, other, "run_script", evil),  # valid, but addressed to another machine
        _signed_command(harness, machine, "run_script", evil, now=now - timedelta(hours=3), ttl=3600),
        _signed_command(harness, machine, "run_script", evil, now=now + timedelta(hours=1)),
    ]  # oversized messages: refused by the local queue on send; see the SQS test for delivery
    queue = machine.agent_queue()
    for payload in payloads:
        queue.send(payload)
    reasons = _dead_letters(harness, machine.row_queue_name, len(payloads))
    prefixes = sorted(r.split(":")[0] for r in reasons)
    assert prefixes == sorted(
        ["malformed", "malformed", "unsigned", "bad-signature", "bad-signature", "wrong-recipient", "expired",
         "future-dated"]
    )  # fmt: skip
    # the service is still healthy and nothing ran
    assert Dispatcher(harness.ctx).call(machine.row_id, "ping", {}, timeout=30)["version"]
    assert not marker.exists()
    assert "rejected message" in machine.output()


def test_clock_skew_within_allowance_is_accepted(harness: Harness) -> None:
    machine = _started(harness, "skew1")
    text = _signed_command(
        harness, machine, "run_script", {"script": "echo ok"}, now=datetime.now(UTC) + timedelta(seconds=120)
    )
    machine.agent_queue().send(text)
    assert Dispatcher(harness.ctx).wait(json.loads(text)["id"], timeout=30)["stdout"] == "ok\n"


def _forged_result(machine: MachineHandle, sender: str, command_id: str, key: Ed25519PrivateKey) -> str:
    body = {
        "command_id": command_id,
        "ok": True,
        "payload": {"exit_code": 0, "stdout": "forged", "stderr": ""},
    }
    envelope = make_envelope("result", body, sender=sender, recipient=machine.config.server_id)
    return sign_envelope(envelope, key)


def test_server_refuses_forged_and_impersonated_results(harness: Harness) -> None:
    victim = harness.add_machine("victim")
    attacker = harness.add_machine("attacker")
    ensure_consumers(harness.ctx)
    text = _signed_command(harness, victim, "run_script", {"script": "echo hi"})
    command_id = json.loads(text)["id"]
    attacker_key = AgentKeys.load(attacker.config.state_dir).signing
    server_queue = harness.server_queue()
    server_queue.send(_forged_result(victim, victim.row_id, command_id, attacker_key))  # signs as the victim
    server_queue.send(
        _forged_result(victim, attacker.row_id, command_id, attacker_key)
    )  # own key, victim's command
    server_queue.send(_forged_result(victim, "no-such-machine", command_id, attacker_key))
    data = json.loads(_forged_result(victim, victim.row_id, command_id, attacker_key))
    data.pop("signature")
    server_queue.send(json.dumps(data))
    reasons = _dead_letters(harness, server_queue.name, 4)
    assert sorted(r.split(":")[0] for r in reasons) == [
        "bad-signature",
        "impersonation",
        "unknown-sender",
        "unsigned",
    ]
    assert harness.record(command_id).state == "sent"  # nothing applied


def test_heartbeat_stop_falls_back_to_command_channel_and_back(harness: Harness) -> None:
    machine = _started(harness, "fb1")
    dispatcher = Dispatcher(harness.ctx)
    first = dispatcher.send(machine.row_id, "run_script", {"script": "echo via-queue"})
    assert dispatcher.wait(first, timeout=30)["stdout"] == "via-queue\n"
    assert harness.record(first).channel == "queue"

    machine.kill()
    wait_for(lambda: (harness.heartbeat_age(machine) or 0) > 3.5, timeout=15, what="heartbeats to go stale")
    marker = machine.sim.root / "fallback.log"
    second = dispatcher.send(
        machine.row_id, "run_script", {"script": f"echo once >> {marker}; echo via-fallback"}
    )
    assert dispatcher.wait(second, timeout=60)["stdout"] == "via-fallback\n"
    assert harness.record(second).channel == "local"
    assert marker.read_text() == "once\n"
    fallback_pong = dispatcher.call(machine.row_id, "ping", {}, timeout=60)
    assert fallback_pong["services"]["message-service"]["state"] == "stopped"

    machine.start()
    wait_for(lambda: (harness.heartbeat_age(machine) or 99) < 2, timeout=20, what="heartbeats to resume")
    third = dispatcher.send(machine.row_id, "run_script", {"script": "echo back"})
    assert dispatcher.wait(third, timeout=30)["stdout"] == "back\n"
    assert harness.record(third).channel == "queue"


def test_exec_refuses_a_forged_message(harness: Harness) -> None:
    """The fallback path validates exactly like the service: a forged command never runs."""
    import base64
    import subprocess
    import sys

    machine = harness.add_machine("exec1")
    marker = machine.sim.root / "pwned"
    forged = make_envelope("run_script", {"script": f"touch {marker}"}, sender=harness.ctx.server_id,
                           recipient=machine.row_id)  # fmt: skip
    text = sign_envelope(forged, Ed25519PrivateKey.generate())
    proc = subprocess.run(
        [sys.executable, "-m", "cloudkeep.machine", "exec", "--config", str(machine.config_path),
         "--message", base64.b64encode(text.encode()).decode()],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 3 and "bad-signature" in proc.stderr
    assert not marker.exists()


def test_keygen_cli_is_idempotent(harness: Harness) -> None:
    import subprocess
    import sys

    machine = harness.add_machine("kg1")
    argv = [sys.executable, "-m", "cloudkeep.machine", "keygen", "--config", str(machine.config_path)]
    first = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout)
    second = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout)
    assert first == second == AgentKeys.load(machine.config.state_dir).public()
    assert (machine.config.state_dir / "agent.key").stat().st_mode & 0o777 == 0o600


def test_status_cli_reports_services_and_ledger(harness: Harness) -> None:
    import subprocess
    import sys

    machine = _started(harness, "st1")
    assert Dispatcher(harness.ctx).call(machine.row_id, "ping", {}, timeout=30)
    argv = [sys.executable, "-m", "cloudkeep.machine", "status", "--config", str(machine.config_path)]
    status = json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60).stdout)
    assert status["machine_id"] == machine.row_id and status["keys"] is True
    assert status["services"]["message-service"]["state"] == "running"
    assert status["services"]["agent"]["state"] == "not-installed"
    assert status["commands"].get("done", 0) >= 1
