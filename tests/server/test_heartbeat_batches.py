"""Heartbeats are applied in batches (coalesced per machine, one statement per batch), and while the
server queue is backed up a machine is judged from how far the consumers have read, not the wall clock.

Real server context (SQLite), local queues, the machines' real agent keys; the server's clock is
injected (``use_clock``) so send times and freshness do not depend on when the test runs.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from tests.machine.harness import Harness, MachineHandle
from tests.server.jobs_fakes import fresh_postgres_url
from tests.support.fleet import wait_until

from cloudkeep.machine.keys import AGENT_LEVEL, AgentKeys
from cloudkeep.protocol import Envelope, make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Heartbeat
from cloudkeep.server import consumer_registry
from cloudkeep.server import dispatcher as dispatcher_module
from cloudkeep.server.agent_compat import AgentOutdatedError
from cloudkeep.server.clock import use_clock
from cloudkeep.server.consumer import ServerQueueConsumer, server_queue_name
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher
from cloudkeep.server.heartbeats import apply_heartbeats
from cloudkeep.server.services.machines import get_machine

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    url = fresh_postgres_url(request.getfixturevalue("postgres")) if request.param == "postgresql" else None
    with use_clock(lambda: NOW):
        h = Harness.create(tmp_path, heartbeat_timeout=60.0, database_url=url)
        yield h
        h.close()


def _heartbeat(
    harness: Harness, machine: MachineHandle, sent: datetime, version: str = "t", level: int | None = None
) -> tuple[str, Envelope]:
    keys = AgentKeys.load(machine.config.state_dir)
    envelope = make_envelope(
        "heartbeat", Heartbeat(services={}, version=version, agent_level=level), sender=machine.row_id,
        recipient=harness.ctx.server_id, ttl=600, now=sent,
    )  # fmt: skip
    return sign_envelope(envelope, keys.signing), envelope


def _beat(harness: Harness, machine: MachineHandle) -> tuple[datetime | None, str | None]:
    with harness.ctx.db() as db:
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        beat = row.last_heartbeat_at
        return (beat.replace(tzinfo=UTC) if beat and beat.tzinfo is None else beat), row.agent_version


def test_a_batch_keeps_the_newest_send_time_per_machine(harness: Harness) -> None:
    a, b = harness.add_machine("a"), harness.add_machine("b")
    beats = [
        _heartbeat(harness, a, NOW - timedelta(seconds=20), "a-20")[1],
        _heartbeat(harness, a, NOW - timedelta(seconds=5), "a-5")[1],  # newest of a
        _heartbeat(harness, a, NOW - timedelta(seconds=40), "a-40")[1],  # overtaken on the queue
        _heartbeat(harness, b, NOW + timedelta(seconds=3), "b+3")[1],  # within skew: capped at now
    ]
    batch: list[tuple[Envelope, Any]] = [(e, e.parsed_body()) for e in beats]
    batch.append(batch[1])  # a replayed id

    assert apply_heartbeats(harness.ctx, batch) == [
        "coalesced",
        "applied",
        "coalesced",
        "applied",
        "duplicate",
    ]
    assert _beat(harness, a) == (NOW - timedelta(seconds=5), "a-5")
    assert _beat(harness, b) == (NOW, "b+3")

    older = _heartbeat(harness, a, NOW - timedelta(seconds=10), "a-10")[1]
    apply_heartbeats(harness.ctx, [(older, older.parsed_body())])
    assert _beat(harness, a) == (NOW - timedelta(seconds=5), "a-5")  # time never moves back


def test_heartbeats_carry_the_agent_level_so_an_upgrade_or_downgrade_is_seen_without_a_rescan(
    harness: Harness,
) -> None:
    machine = harness.add_machine("moved")
    dispatcher = Dispatcher(harness.ctx, clock=lambda: NOW)

    def beat(seconds_ago: int, level: int | None) -> int | None:
        envelope = _heartbeat(harness, machine, NOW - timedelta(seconds=seconds_ago), level=level)[1]
        apply_heartbeats(harness.ctx, [(envelope, envelope.parsed_body())])
        with harness.ctx.db() as db:
            row = db.get(DiscoveredMachine, machine.row_id)
            assert row is not None
            return row.agent_level

    assert beat(30, None) == AGENT_LEVEL  # an agent from before the field: keeps its registered level
    assert beat(20, 1) == 1  # downgraded (an older bundle reinstalled by hand)
    with pytest.raises(AgentOutdatedError, match="runs agent level 1"):
        dispatcher.send(machine.row_id, "check", {})
    assert get_machine(harness.ctx, machine.row_id).upgrade_reason is not None
    assert beat(25, AGENT_LEVEL) == 1  # an older heartbeat, overtaken on the queue, changes nothing
    assert beat(10, AGENT_LEVEL) == AGENT_LEVEL  # upgraded again
    assert get_machine(harness.ctx, machine.row_id).upgrade_reason is None


def test_a_batch_whose_write_failed_counts_when_redelivered(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = harness.add_machine("flaky")
    envelope = _heartbeat(harness, machine, NOW - timedelta(seconds=7))[1]
    real_db = harness.ctx.db

    def failing_db() -> Any:
        raise OSError("database unavailable")  # a stand-in for a failed transaction

    monkeypatch.setattr(harness.ctx, "db", failing_db)
    with pytest.raises(OSError):
        apply_heartbeats(harness.ctx, [(envelope, envelope.parsed_body())])
    monkeypatch.setattr(harness.ctx, "db", real_db)
    assert apply_heartbeats(harness.ctx, [(envelope, envelope.parsed_body())]) == ["applied"]
    assert _beat(harness, machine)[0] == NOW - timedelta(seconds=7)


def test_consumer_applies_heartbeats_in_few_statements_and_acks_them(harness: Harness) -> None:
    machines = [harness.add_machine(f"m{n}") for n in range(3)]
    queue = harness.server_queue()
    for n in range(60):  # 20 beats per machine
        queue.send(_heartbeat(harness, machines[n % 3], NOW - timedelta(seconds=60 - n))[0])
    updates: list[int] = []

    def count(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith("UPDATE DISCOVERED_MACHINES"):
            updates.append(len(params) if many else 1)

    event.listen(harness.ctx.engine, "before_cursor_execute", count)
    consumer = ServerQueueConsumer(harness.ctx, queue, workers=1, wait_seconds=0.1).start()
    try:
        wait_until(lambda: consumer.counts.get("applied", 0) + consumer.counts.get("coalesced", 0) == 60,
                   timeout=20, what="60 heartbeats handled")  # fmt: skip
    finally:
        consumer.stop()
        event.remove(harness.ctx.engine, "before_cursor_execute", count)
    assert len(updates) < 60 / 5  # batches, not one statement per heartbeat
    assert sum(updates) <= 3 * len(updates)  # at most one row per machine per batch
    assert queue.approximate_count() == 0  # every heartbeat acked
    for n, machine in enumerate(machines):
        assert _beat(harness, machine)[0] == NOW - timedelta(seconds=60 - (57 + n))


def test_a_backlog_does_not_make_a_live_machine_look_silent(harness: Harness) -> None:
    machine = harness.add_machine("busy")
    with harness.ctx.db() as db:
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        row.last_heartbeat_at = NOW - timedelta(seconds=150)  # applied before the backlog built up
    queue = harness.ctx.provider_for(harness.credential_id).queues.get_queue(
        server_queue_name(harness.ctx.server_id)
    )
    consumer = ServerQueueConsumer(
        harness.ctx, queue, workers=0
    )  # registered, not reading: a stand-in backlog
    consumer.heartbeats = type("Writer", (), {"read_point": NOW - timedelta(seconds=120)})()  # type: ignore[assignment]
    key = (harness.ctx.settings.effective_database_url, harness.ctx.server_id, harness.credential_id)
    consumer_registry._CONSUMERS[key] = consumer
    dispatcher = Dispatcher(harness.ctx, clock=lambda: NOW)
    try:
        consumer.backlogged = True  # read only up to 120 s ago: 150 s is 30 s old as of there
        choice = dispatcher.choose_channel(machine.row_id)
        assert choice.channel == "queue" and "backlog" in choice.reason

        consumer.heartbeats.read_point = NOW - timedelta(seconds=60)  # 90 s old as of the read point
        assert dispatcher.choose_channel(machine.row_id).channel != "queue"

        consumer.heartbeats.read_point = NOW - timedelta(seconds=120)
        consumer.backlogged = False  # caught up: the database is current, so it is silent
        assert dispatcher.choose_channel(machine.row_id).channel != "queue"

        consumer.backlogged = True  # too far behind to vouch for anyone
        consumer.heartbeats.read_point = NOW - timedelta(seconds=dispatcher_module.BACKLOG_GRACE_SECONDS + 1)
        with harness.ctx.db() as db:
            row = db.get(DiscoveredMachine, machine.row_id)
            assert row is not None
            row.last_heartbeat_at = consumer.heartbeats.read_point - timedelta(seconds=1)
        assert dispatcher.choose_channel(machine.row_id).channel != "queue"
    finally:
        consumer_registry._CONSUMERS.pop(key, None)


def test_a_newer_agents_heartbeat_keeps_it_alive_and_a_malformed_or_unsigned_one_is_refused(
    harness: Harness,
) -> None:
    """An agent upgraded before its server sends fields this server does not know: applied, not
    dead-lettered (the machine would otherwise look silent and fall back); what is malformed or
    unsigned is still refused."""
    machine = harness.add_machine("ahead")
    keys = AgentKeys.load(machine.config.state_dir)
    queue = harness.server_queue()

    def send(body: dict[str, Any], sent: datetime, *, signed: bool = True) -> None:
        envelope = make_envelope("heartbeat", {"services": {}, "version": "t"}, sender=machine.row_id,
                                 recipient=harness.ctx.server_id, ttl=600, now=sent)  # fmt: skip
        envelope.body = body  # what a newer agent signs, unchecked by this server's models
        text = sign_envelope(envelope, keys.signing)
        if not signed:
            fields = json.loads(text)
            del fields["signature"]
            text = json.dumps(fields)
        queue.send(text)

    newer = {"services": {}, "version": "t+1", "agent_level": AGENT_LEVEL, "disk_free": 7, "zones": ["a"]}
    send(newer, NOW - timedelta(seconds=9))
    send({**newer, "agent_level": "2"}, NOW - timedelta(seconds=5))  # a known field, malformed
    send({**newer, "version": "forged"}, NOW - timedelta(seconds=2), signed=False)
    consumer = ServerQueueConsumer(harness.ctx, queue, workers=0)
    outcomes = [
        consumer.process(m) for m in queue.receive(max_messages=10, visibility_timeout=30, wait_seconds=0)
    ]

    assert sorted(outcomes) == ["applied", "rejected:malformed", "rejected:unsigned"]
    assert _beat(harness, machine) == (NOW - timedelta(seconds=9), "t+1")
    assert Dispatcher(harness.ctx, clock=lambda: NOW).choose_channel(machine.row_id).channel == "queue"
