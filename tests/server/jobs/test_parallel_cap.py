"""The server's ``parallel_machines`` caps how many machines a job backs up at once in a process.

A job may ask for more (its own option goes up to 256), but the process's database pool and its
fallback pool are sized from the server's setting (``db/pool.py``), so the runner never runs more
machine tasks than that. Real state store (SQLite), the agents' answers from ``FakeDispatcher``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.server.jobs_fakes import FakeDispatcher, World, build_world
from tests.support.peers import wait_until

from cloudkeep.config import Settings
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.jobs import slots as slots_module
from cloudkeep.server.jobs import start_job
from cloudkeep.server.jobs.slots import Slots, machine_slots


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = open_context(Settings(home=tmp_path / "home", parallel_machines=2))
    yield context
    context.close()


class CountingDispatcher(FakeDispatcher):
    """Counts the backups waiting for their result at once; each holds until a third would start,
    or briefly (a cap of two never lets a third start)."""

    def __init__(self, ctx: ServerContext) -> None:
        super().__init__(ctx)
        self.running = 0
        self.peak = 0
        self.crowded = threading.Event()
        self.count_lock = threading.Lock()

    def wait(
        self, command_id: str, *, timeout: float, on_progress: Any = None, poll: float = 0.2
    ) -> dict[str, Any]:
        with self.count_lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.running > 2:
                self.crowded.set()
        try:
            self.crowded.wait(0.2)  # overlap with the other tasks in flight
            return super().wait(command_id, timeout=timeout, on_progress=on_progress, poll=poll)
        finally:
            with self.count_lock:
                self.running -= 1


def test_a_job_asking_for_more_runs_as_many_machines_at_once_as_the_server_allows(
    ctx: ServerContext, tmp_path: Path
) -> None:
    world: World = build_world(ctx, tmp_path / "lab", machines=6)
    job_id = world.add_job(options={"parallel_machines": 8, "poll_slice_seconds": 0.05})
    fake = CountingDispatcher(ctx)

    session_id = start_job(ctx, job_id, wait=True, dispatcher=fake)

    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None and session.state == "success", session.reason if session else None
    assert len(fake.kinds("backup")) == 6
    assert fake.peak == 2 and not fake.crowded.is_set()


def test_the_process_slots_follow_the_latest_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shared by every session of the process: a later context's parallel_machines applies to all."""
    monkeypatch.setattr(slots_module, "_SLOTS", None)  # as in a fresh process
    slots = machine_slots(32)
    assert machine_slots(2) is slots and slots.limit == 2


def test_slots_follow_a_changed_limit_without_cutting_a_holder() -> None:
    slots = Slots(1)
    inside, release = threading.Event(), threading.Event()
    entered: list[str] = []

    def hold(name: str) -> None:
        with slots:
            entered.append(name)
            inside.set()
            release.wait(10)

    first = threading.Thread(target=hold, args=("first",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=hold, args=("second",))
    second.start()
    wait_until(lambda: second.is_alive() and slots.held == 1, timeout=5, what="the second waiting")
    assert entered == ["first"]  # the limit of one holds it back

    slots.resize(2)
    wait_until(lambda: slots.held == 2, timeout=10, what="the second let in by the larger limit")
    slots.resize(1)
    assert slots.held == 2 and entered == ["first", "second"]  # neither is cut
    release.set()
    first.join(10)
    second.join(10)
    assert slots.held == 0
    with pytest.raises(ValueError, match="at least one"):
        slots.resize(0)
