"""Fallback commands run on one bounded pool per process, not on a thread each.

Real server context (SQLite), real dispatcher, local provider: the machine has never sent a
heartbeat, so every command takes the fallback (``cloudkeep.machine exec`` through the local
command channel). The pool is the test's own, small enough to see commands wait their turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.machine.harness import Harness, MachineHandle

from cloudkeep.server.dispatcher import CommandFailed, Dispatcher
from cloudkeep.server.fallback import FallbackPool

pytestmark = pytest.mark.slow


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Harness, MachineHandle]]:
    harness = Harness.create(tmp_path)
    yield harness, harness.add_machine("silent")
    harness.close()


def test_many_fallback_commands_share_a_few_threads_and_each_gets_its_result(
    world: tuple[Harness, MachineHandle],
) -> None:
    harness, machine = world
    pool = FallbackPool(3)
    dispatcher = Dispatcher(harness.ctx, fallbacks=pool)
    before = {t.ident for t in threading.enumerate()}

    ids = [dispatcher.send(machine.row_id, "run_script", {"script": f"echo n{n}"}, ttl=120) for n in range(9)]
    started = [t for t in threading.enumerate() if t.ident not in before]
    results = [dispatcher.wait(command_id, timeout=120) for command_id in ids]

    assert [r["stdout"] for r in results] == [f"n{n}\n" for n in range(9)]
    assert all(harness.record(command_id).channel == "local" for command_id in ids)
    assert pool.threads == 3 and len(started) <= 3  # nine commands, three threads
    assert 1 <= pool.peak_busy <= 3
    assert pool.queued == 0


def test_a_command_that_expires_while_waiting_for_a_thread_fails_without_being_sent(
    world: tuple[Harness, MachineHandle],
) -> None:
    harness, machine = world
    pool = FallbackPool(1)
    gate = threading.Event()
    pool.submit(gate.wait)  # the only thread is busy with another machine's long command
    later = datetime.now(UTC) + timedelta(hours=2)
    dispatcher = Dispatcher(harness.ctx, fallbacks=pool, clock=lambda: later)

    command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo never"}, ttl=60)
    assert harness.record(command_id).state == "sent"  # queued behind the busy thread
    gate.set()
    with pytest.raises(CommandFailed) as caught:
        dispatcher.wait(command_id, timeout=30)

    assert "while waiting for a fallback slot" in caught.value.message
    assert "not sent" in caught.value.message  # sent, it would have run (its envelope is valid for 60 s)
    assert harness.record(command_id).state == "failed"


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        FallbackPool(0)
