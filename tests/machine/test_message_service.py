"""The message service in-process, for crash points a subprocess cannot hit reliably.

Uses the real local queue; a failing ack stands in for the service dying between recording a
command and acknowledging it (in-process patching: no peer can fail exactly there on demand).
"""

from __future__ import annotations

import json
from typing import Any

from cloudkeep.machine.link import QueueUnavailable
from cloudkeep.machine.message_service import MessageService
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.server.consumer import ServerQueueConsumer
from cloudkeep.server.db.models import CommandRecord
from tests.machine.harness import Harness, MachineHandle, wait_for


def _command(harness: Harness, machine: MachineHandle, script: str) -> str:
    envelope = make_envelope(
        "run_script", {"script": script}, sender=harness.ctx.server_id, recipient=machine.row_id
    )
    with harness.ctx.db() as session:
        session.add(
            CommandRecord(id=envelope.id, machine_id=machine.row_id, kind="run_script", channel="queue")
        )
    return sign_envelope(envelope, harness.ctx.signing_key)


def _drain(service: MessageService) -> list[str]:
    outcomes = []
    for message in service.inbound.receive(max_messages=10, visibility_timeout=1, wait_seconds=5):
        outcomes.append(service.handle(message.body, message))
    return outcomes


def test_lost_ack_means_a_recognised_redelivery_not_a_second_run(harness: Harness) -> None:
    machine = harness.add_machine("ms1")
    marker = machine.sim.root / "runs.log"
    text = _command(harness, machine, f"echo ran >> {marker}; echo ok")
    machine.agent_queue().send(text)
    service = MessageService(machine.config, receive_wait=0, visibility_timeout=1)
    real_ack = service.inbound.ack
    calls: list[Any] = []

    def failing_ack(message: Any) -> None:
        calls.append(message)
        if len(calls) == 1:
            raise QueueUnavailable("simulated: the service died before acknowledging")
        real_ack(message)

    service.inbound.ack = failing_ack  # type: ignore[method-assign]
    assert _drain(service) == ["accepted"]
    service.pool.shutdown(wait=True)
    assert wait_for(lambda: _drain(service), timeout=10, what="redelivery") == ["duplicate"]
    assert marker.read_text() == "ran\n"
    consumer = ServerQueueConsumer(harness.ctx, harness.server_queue(), workers=1)
    for message in harness.server_queue().receive(max_messages=10, wait_seconds=2):
        consumer.process(message)
    service.post_results()  # the redelivery asked for the stored result to be posted again
    for message in harness.server_queue().receive(max_messages=10, wait_seconds=2):
        consumer.process(message)
    assert consumer.counts.get("applied") == 1 and consumer.counts.get("duplicate") == 1
    assert harness.record(json.loads(text)["id"]).result["payload"]["stdout"] == "ok\n"  # type: ignore[index]


def test_restart_recovery_starts_unstarted_and_reports_interrupted(harness: Harness) -> None:
    machine = harness.add_machine("ms2")
    first = MessageService(machine.config)
    never_started = _command(harness, machine, "echo late")
    interrupted = _command(harness, machine, "echo never")
    ids = [json.loads(t)["id"] for t in (never_started, interrupted)]
    first.ledger.accept(ids[0], "run_script", "self", never_started)  # died right after recording
    first.ledger.accept(ids[1], "run_script", "self", interrupted)
    first.ledger.start(ids[1])  # died while running it

    second = MessageService(machine.config)
    second.recover()
    second.pool.shutdown(wait=True)
    entries = [second.ledger.get(i) for i in ids]
    assert all(e is not None and e.state == "done" for e in entries)
    results = [json.loads(e.result)["body"] for e in entries if e and e.result]
    assert results[0]["ok"], results[0]
    assert results[0]["payload"]["stdout"] == "late\n"
    assert not results[1]["ok"] and "restarted while running" in results[1]["error"]
    assert not second.ledger.start(ids[1])  # the at-most-once gate stays shut
