"""A result applied just after the runner's wait slice ran out is read, not taken for a failure.

Found by the fleet simulator (bench/fleet.py): with hundreds of machines the consumers apply a
result between ``Dispatcher.wait`` giving up on its slice and the runner's "still running?" look,
and the task failed with "no result … within 2s" although the backup had succeeded. Driven
through the in-process FAKE dispatcher (tests/server/jobs_fakes.py) to hit that window exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select
from tests.server.jobs_fakes import FakeDispatcher, build_world, make_context

from cloudkeep.server.db.models import CommandRecord, JobSession, RestorePoint
from cloudkeep.server.jobs import start_job


@dataclass
class LateResults(FakeDispatcher):
    """Every command's first wait times out at the very moment its result is applied."""

    timed_out: set[str] = field(default_factory=set)

    def wait(
        self, command_id: str, *, timeout: float, on_progress: Any = None, poll: float = 0.2
    ) -> dict[str, Any]:
        if command_id in self.timed_out:  # the runner looks again: the record is settled by now
            with self.ctx.db() as db:
                record = db.get(CommandRecord, command_id)
                assert record is not None and record.state == "done"
                return dict((record.result or {})["payload"])
        super().wait(command_id, timeout=timeout)  # applies the result …
        self.timed_out.add(command_id)
        raise TimeoutError(f"no result for {command_id} within {timeout:.0f}s")  # … as the slice ends


def test_a_result_applied_as_the_wait_slice_ends_counts_as_success(tmp_path: Path) -> None:
    ctx = make_context(tmp_path)
    try:
        world = build_world(ctx, tmp_path / "lab", machines=2)
        fake = LateResults(ctx)
        session_id = start_job(ctx, world.add_job(), wait=True, dispatcher=fake)
        with ctx.db() as db:
            session = db.get(JobSession, session_id)
            assert session is not None
            assert (session.state, session.reason) == ("success", "2 machine(s) backed up")
            assert len(db.scalars(select(RestorePoint)).all()) == 2
        assert len(fake.timed_out) == 2  # the window was really hit, once per backup
    finally:
        ctx.close()
