"""Commands no machine answers expire instead of staying ``sent`` forever (injected clock).

Real server context (SQLite), real dispatcher and queue (local provider); the machine is
registered with fresh heartbeats but runs no services, so nothing ever answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.machine.harness import Harness, MachineHandle

from cloudkeep.machine.handlers import sign_result
from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import MessageValidator
from cloudkeep.server.consumer import apply_report
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher, expire_commands
from cloudkeep.server.scheduling.scheduler import tick


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Harness, MachineHandle]]:
    harness = Harness.create(tmp_path)
    machine = harness.add_machine("silent")
    with harness.ctx.db() as db:  # a fresh heartbeat: commands go to its queue, where nobody reads
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        row.last_heartbeat_at = datetime.now(UTC)
    yield harness, machine
    harness.close()


def test_unanswered_command_expires_with_a_clear_reason(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    now = datetime.now(UTC)
    clock = {"now": now}
    dispatcher = Dispatcher(harness.ctx, clock=lambda: clock["now"])
    command_id = dispatcher.send(machine.row_id, "ping", {}, ttl=60)
    record = harness.record(command_id)
    assert record.state == "sent" and record.expires_at is not None
    assert timedelta(seconds=55) < record.expires_at - now < timedelta(seconds=65)

    assert expire_commands(harness.ctx, now + timedelta(seconds=30)) == []  # not yet
    with pytest.raises(Exception, match="no result for ping"):  # a plain timeout while still valid
        dispatcher.wait(command_id, timeout=0.05)
    assert harness.record(command_id).state == "sent"

    clock["now"] = now + timedelta(seconds=61)
    with pytest.raises(CommandFailed, match=r"expired: machine .* gave no result for ping before it expired"):
        dispatcher.wait(command_id, timeout=0.05)
    record = harness.record(command_id)
    assert record.state == "expired" and record.completed_at is not None
    assert "expired" in (record.result or {})["error"]

    # a result arriving after the expiry is ignored: the record stays expired
    keys = AgentKeys.load(machine.config.state_dir)
    late = sign_result(machine.config, keys, {"command_id": command_id, "ok": True, "payload": {}})
    validator = MessageValidator(
        me=harness.ctx.server_id, sender_key=lambda _s: keys.signing.public_key(), clock_skew=300,
        kinds=frozenset({"result"}),
    )  # fmt: skip
    assert apply_report(harness.ctx, validator.validate(late)) == "duplicate"
    assert harness.record(command_id).state == "expired"


def test_scheduler_tick_sweeps_expired_commands(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    now = datetime.now(UTC)
    dispatcher = Dispatcher(harness.ctx, clock=lambda: now)
    short = dispatcher.send(machine.row_id, "ping", {}, ttl=60)
    long = dispatcher.send(machine.row_id, "ping", {}, ttl=3600)
    tick(harness.ctx, now + timedelta(minutes=5))
    assert harness.record(short).state == "expired"
    assert harness.record(long).state == "sent"
