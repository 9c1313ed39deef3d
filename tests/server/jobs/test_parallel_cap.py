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

from cloudkeep.config import Settings
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.jobs import start_job


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
