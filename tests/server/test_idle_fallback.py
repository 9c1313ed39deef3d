"""A machine whose heartbeats waited on the server queue (nobody consumed it, as between two
embedded CLI commands) still gets its next command by queue; the heartbeat's signed send time,
not the time it was read, says whether it is alive.

Real server context (SQLite), real dispatcher and local queues; the machine's heartbeats are
signed with its real agent key and put on the server queue as its message service would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.machine.harness import Harness, MachineHandle

from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Heartbeat
from cloudkeep.server.clock import use_clock
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)  # one fixed instant: the server's injected clock


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Harness, MachineHandle]]:
    with use_clock(lambda: NOW):  # expiry of the waiting heartbeats is judged at NOW too
        yield from _world(tmp_path)


def _world(tmp_path: Path) -> Iterator[tuple[Harness, MachineHandle]]:
    harness = Harness.create(tmp_path, heartbeat_timeout=60.0)
    machine = harness.add_machine("idle")
    with harness.ctx.db() as db:  # the last heartbeat anyone applied: two minutes ago
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        row.last_heartbeat_at = NOW - timedelta(seconds=120)
    yield harness, machine
    harness.close()


def _waiting_heartbeat(harness: Harness, machine: MachineHandle, sent: datetime) -> None:
    keys = AgentKeys.load(machine.config.state_dir)
    body = Heartbeat(services={}, version="test")
    envelope = make_envelope(
        "heartbeat", body, sender=machine.row_id, recipient=harness.ctx.server_id, ttl=90, now=sent
    )
    harness.server_queue().send(sign_envelope(envelope, keys.signing))


def _beat(harness: Harness, machine: MachineHandle) -> datetime:
    with harness.ctx.db() as db:
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None and row.last_heartbeat_at is not None
        beat = row.last_heartbeat_at
    return beat if beat.tzinfo else beat.replace(tzinfo=UTC)


def test_waiting_heartbeats_keep_the_next_command_on_the_queue(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    _waiting_heartbeat(harness, machine, NOW - timedelta(seconds=95))
    _waiting_heartbeat(harness, machine, NOW - timedelta(seconds=5))
    dispatcher = Dispatcher(harness.ctx, clock=lambda: NOW)

    command_id = dispatcher.send(machine.row_id, "ping", {})

    record = harness.record(command_id)
    assert record.channel == "queue"
    assert _beat(harness, machine) == NOW - timedelta(seconds=5)  # the newest signed send time
    waiting = machine.agent_queue().receive(max_messages=10, visibility_timeout=30, wait_seconds=0)
    assert [command_id in m.body for m in waiting] == [True]
    assert harness.server_queue().receive(max_messages=10, visibility_timeout=1, wait_seconds=0) == []


def test_old_heartbeats_read_late_do_not_fake_liveness(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    _waiting_heartbeat(harness, machine, NOW - timedelta(seconds=80))  # before the machine went quiet
    dispatcher = Dispatcher(harness.ctx, clock=lambda: NOW)

    choice = dispatcher.choose_channel(machine.row_id)

    assert choice.channel == "local"  # the lab's Run Command stand-in
    assert "80s ago (limit 60s)" in choice.reason
    assert _beat(harness, machine) == NOW - timedelta(seconds=80)


def test_an_older_heartbeat_never_moves_liveness_back(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    _waiting_heartbeat(harness, machine, NOW - timedelta(seconds=3))
    _waiting_heartbeat(harness, machine, NOW - timedelta(seconds=30))
    dispatcher = Dispatcher(harness.ctx, clock=lambda: NOW)

    assert dispatcher.choose_channel(machine.row_id).channel == "queue"
    assert _beat(harness, machine) == NOW - timedelta(seconds=3)
    with harness.ctx.db() as db:
        assert db.query(CommandRecord).count() == 0  # choosing sends nothing
