"""A consumer thread survives a batch that fails: each message is retried or dead-lettered on its
own, and the reader keeps reading (issue 18: one dead reader stops a fleet's results).

Real server context (SQLite), the lab's local queue and the machines' real agent keys; the faults
are injected at the queue (an ack and a dead-letter that fail once) and at the key look-up (a
database error for a whole batch). The server's clock is injected.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError
from tests.machine.harness import Harness, MachineHandle
from tests.support.fleet import wait_until

from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Body, Heartbeat, Result
from cloudkeep.providers.base import Queue, ReceivedMessage
from cloudkeep.server.clock import use_clock
from cloudkeep.server.consumer import ServerQueueConsumer
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class FlakyQueue(Queue):
    """The server queue, whose first ack and first dead-letter fail (a queue service hiccup)."""

    def __init__(self, inner: Queue) -> None:
        self.inner = inner
        self.name = inner.name
        self.failures = {"ack": 1, "dead_letter": 1}

    def _fail_once(self, operation: str) -> None:
        if self.failures[operation]:
            self.failures[operation] -= 1
            raise ConnectionError(f"{operation}: connection reset by peer")

    def send(self, body: str, *, delay_seconds: int = 0) -> str:
        return self.inner.send(body, delay_seconds=delay_seconds)

    def receive(
        self, *, max_messages: int = 10, visibility_timeout: int = 30, wait_seconds: float = 0.0
    ) -> list[ReceivedMessage]:
        return self.inner.receive(
            max_messages=max_messages, visibility_timeout=visibility_timeout, wait_seconds=wait_seconds
        )

    def ack(self, message: ReceivedMessage) -> None:
        self._fail_once("ack")
        self.inner.ack(message)

    def extend_visibility(self, message: ReceivedMessage, seconds: int) -> None:
        self.inner.extend_visibility(message, seconds)

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        self._fail_once("dead_letter")
        self.inner.dead_letter(message, reason)

    def approximate_count(self) -> int:
        return self.inner.approximate_count()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    with use_clock(lambda: NOW):
        h = Harness.create(tmp_path, heartbeat_timeout=60.0)
        yield h
        h.close()


def _signed(harness: Harness, machine: MachineHandle, kind: str, body: Body) -> str:
    keys = AgentKeys.load(machine.config.state_dir)
    envelope = make_envelope(
        kind, body, sender=machine.row_id, recipient=harness.ctx.server_id, ttl=600, now=NOW
    )
    return sign_envelope(envelope, keys.signing)


def _open_command(harness: Harness, machine: MachineHandle, command_id: str) -> None:
    with harness.ctx.db() as session:
        session.add(CommandRecord(id=command_id, machine_id=machine.row_id, kind="backup", channel="queue",
                                  sent_at=NOW))  # fmt: skip


def _state(harness: Harness, command_id: str) -> str:
    with harness.ctx.db() as session:
        record = session.get(CommandRecord, command_id)
        assert record is not None
        return record.state


def _has_heartbeat(harness: Harness, machine: MachineHandle) -> bool:
    with harness.ctx.db() as session:
        row = session.get(DiscoveredMachine, machine.row_id)
        return row is not None and row.last_heartbeat_at is not None


def test_a_failed_batch_leaves_the_reader_alive_and_each_message_settled(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b, c = (harness.add_machine(name) for name in "abc")
    for command_id, machine in (("cmd-a", a), ("cmd-b", b)):
        _open_command(harness, machine, command_id)
    inner = harness.server_queue()
    queue = FlakyQueue(inner)
    consumer = ServerQueueConsumer(harness.ctx, queue, workers=1, wait_seconds=0.1, visibility_timeout=1)
    real_prefetch = consumer.keys.prefetch
    prefetches: list[int] = []

    def prefetch_failing_once(machine_ids: set[str]) -> None:
        prefetches.append(len(machine_ids))
        if len(prefetches) == 1:  # the whole first batch's key look-up hits a database error
            raise OperationalError("SELECT machines.agent_public_key", {}, Exception("server closed"))
        real_prefetch(machine_ids)

    monkeypatch.setattr(consumer.keys, "prefetch", prefetch_failing_once)
    # One batch: a result (its ack fails once), garbage (its dead-letter fails once), a heartbeat,
    # another machine's result.
    queue.send(_signed(harness, a, "result", Result(command_id="cmd-a", ok=True)))
    queue.send('{"not": "an envelope"}')
    queue.send(_signed(harness, c, "heartbeat", Heartbeat(services={}, version="t")))
    queue.send(_signed(harness, b, "result", Result(command_id="cmd-b", ok=False, error="disk full")))
    consumer.start()
    try:
        wait_until(lambda: _state(harness, "cmd-a") == "done" and _state(harness, "cmd-b") == "failed",
                   timeout=30, what="both results applied")  # fmt: skip
        wait_until(lambda: _has_heartbeat(harness, c), timeout=30, what="the heartbeat applied")
        # The un-acked result and the garbage come back after their 1 s visibility and settle.
        wait_until(lambda: inner.approximate_count() == 0, timeout=30, what="the server queue to empty")
        assert queue.failures == {"ack": 0, "dead_letter": 0}  # both faults were hit
        assert prefetches[0] >= 1
        counts = dict(consumer.counts)
        assert sum(n for outcome, n in counts.items() if outcome.startswith("rejected:")) == 2, counts
        assert counts["applied"] >= 3 and counts.get("duplicate", 0) == 1, counts  # the re-acked result
        # The reader still reads: a message sent after all of it is applied.
        _open_command(harness, c, "cmd-c")
        queue.send(_signed(harness, c, "result", Result(command_id="cmd-c", ok=True)))
        wait_until(lambda: _state(harness, "cmd-c") == "done", timeout=30, what="a later result applied")
        assert consumer.threads[0].is_alive()
    finally:
        consumer.stop()
    dlq = harness.provider.queues.get_queue(f"{inner.name}-dlq")
    assert dlq.approximate_count() == 1  # the garbage, dead-lettered once it could be


def test_a_reader_survives_an_exception_outside_any_message(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = harness.add_machine("a")
    _open_command(harness, a, "cmd-a")
    queue = harness.server_queue()
    consumer = ServerQueueConsumer(harness.ctx, queue, workers=1, wait_seconds=0.1, visibility_timeout=1)
    real_batch = consumer.process_batch
    calls: list[int] = []

    def batch_failing_once(messages: list[ReceivedMessage]) -> None:
        calls.append(len(messages))
        if len(calls) == 1:
            raise RuntimeError("simulated: the whole batch failed")
        real_batch(messages)

    monkeypatch.setattr(consumer, "process_batch", batch_failing_once)
    queue.send(_signed(harness, a, "result", Result(command_id="cmd-a", ok=True)))
    consumer.start()
    try:
        wait_until(lambda: _state(harness, "cmd-a") == "done", timeout=30, what="the result redelivered")
        assert len(calls) >= 2 and consumer.threads[0].is_alive()
    finally:
        consumer.stop()
