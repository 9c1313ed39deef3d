"""Fallback commands run on one bounded pool per process, not on a thread each.

Real server context (SQLite), real dispatcher, local provider: the machine has never sent a
heartbeat, so every command takes the fallback (``cloudkeep.machine exec`` through the local
command channel). The pool is the test's own, small enough to see commands wait their turn; the
resize tests hold its threads on events and poll its counters.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.machine.harness import Harness, MachineHandle
from tests.support.peers import wait_until

from cloudkeep.server import fallback, metrics
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher
from cloudkeep.server.fallback import FallbackPool

pytestmark = pytest.mark.slow
T0 = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)  # the dispatcher's injected clock


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
    clock = {"now": T0}
    dispatcher = Dispatcher(harness.ctx, fallbacks=pool, clock=lambda: clock["now"])

    command_id = dispatcher.send(machine.row_id, "run_script", {"script": "echo never"}, ttl=60)
    record = harness.record(command_id)
    assert record.state == "sent"  # queued behind the busy thread
    assert record.expires_at is not None
    stamped = record.expires_at.replace(tzinfo=UTC)
    assert stamped == T0 + timedelta(seconds=60)  # by the dispatcher's clock, not the wall clock
    clock["now"] = T0 + timedelta(seconds=61)
    gate.set()
    with pytest.raises(CommandFailed) as caught:
        dispatcher.wait(command_id, timeout=30)

    assert "while waiting for a fallback slot" in caught.value.message
    assert "not sent" in caught.value.message
    assert harness.record(command_id).state == "failed"


def _held(pool: FallbackPool, count: int) -> tuple[threading.Event, list[int]]:
    """Submit ``count`` jobs that block on one event; returns it and the jobs' finishing order."""
    gate, done = threading.Event(), []
    for n in range(count):
        pool.submit(lambda n=n: (gate.wait(30), done.append(n)))
    return gate, done


def test_a_larger_parallel_machines_starts_threads_for_the_commands_already_waiting() -> None:
    pool = FallbackPool(1)
    gate, done = _held(pool, 3)
    wait_until(lambda: pool.busy == 1 and pool.queued == 2, timeout=10, what="one running, two waiting")

    pool.resize(3)

    wait_until(lambda: pool.busy == 3, timeout=10, what="the two waiting commands started")
    assert pool.queued == 0 and pool.threads == 3 and pool.workers == 3
    gate.set()
    wait_until(lambda: len(done) == 3 and pool.busy == 0, timeout=10, what="all three done")


def test_a_smaller_parallel_machines_lets_running_commands_finish_then_runs_one_at_a_time() -> None:
    pool = FallbackPool(3)
    gate, done = _held(pool, 3)
    wait_until(lambda: pool.busy == 3, timeout=10, what="three running")

    pool.resize(1)
    assert pool.busy == 3 and pool.threads == 3  # nothing running is cut
    running, most = [0], [0]
    lock = threading.Lock()

    def later(n: int) -> Callable[[], None]:
        def job() -> None:
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            gate.wait(30)
            with lock:
                running[0] -= 1
            done.append(n)

        return job

    for n in (10, 11, 12):
        pool.submit(later(n))
    assert pool.queued == 3
    gate.set()
    wait_until(lambda: len(done) == 6 and pool.busy == 0, timeout=10, what="all six done")

    assert done[3:] == [10, 11, 12]  # in order
    assert most[0] == 1  # the surplus threads left instead of taking them
    wait_until(lambda: pool.threads == 1, timeout=10, what="the surplus threads gone")


def test_the_process_pool_follows_the_latest_settings(
    world: tuple[Harness, MachineHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    harness, _ = world
    monkeypatch.setattr(fallback, "_POOL", None)
    monkeypatch.setattr(harness.ctx.settings, "parallel_machines", 4)
    pool = Dispatcher(harness.ctx).fallbacks
    assert pool.workers == 4

    monkeypatch.setattr(harness.ctx.settings, "parallel_machines", 2)  # changed at runtime
    assert Dispatcher(harness.ctx).fallbacks is pool
    assert pool.workers == 2


def test_metrics_show_the_fallback_backlog(
    world: tuple[Harness, MachineHandle], monkeypatch: pytest.MonkeyPatch
) -> None:
    harness, _ = world
    pool = FallbackPool(1)
    monkeypatch.setattr(fallback, "_POOL", pool)
    gate, done = _held(pool, 3)
    wait_until(lambda: pool.busy == 1 and pool.queued == 2, timeout=10, what="one running, two waiting")

    text = metrics.render(metrics.build_registry(harness.ctx)).decode()
    got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    gate.set()

    assert got["cloudkeep_fallback_commands_queued"] == 2
    assert got["cloudkeep_fallback_commands_running"] == 1
    assert got["cloudkeep_fallback_workers"] == 1
    wait_until(lambda: len(done) == 3, timeout=10, what="the held commands done")


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="at least one worker"):
        FallbackPool(0)
