"""The runner closes the lock window after each job: where the store locks nothing by itself (Azure,
immutability by generations), ``ServerMaintenance.lock_new`` runs for the run's machines once their
backups are done and before prune. The store-side behaviour is tested on Azurite behind the
immutability stand-in (tests/providers/azure/test_azure_generations.py); here the fake backups
write nothing, so a recording stand-in for ``ServerMaintenance`` shows what the runner decided."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.server.jobs_fakes import FakeDispatcher, build_world, make_context

from cloudkeep.errors import CloudkeepError
from cloudkeep.repo.vouch import VouchResult
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession
from cloudkeep.server.jobs import retention as ret
from cloudkeep.server.jobs import start_job

REFUSED = "data blob 00 in pack writers/m2/bb: content does not match its id"
FORGED = "writers/m1/index/" + "f" * 32


class RecordedMaintenance:
    steps: ClassVar[list[tuple[str, Any]]] = []
    fail: ClassVar[bool] = False

    def __init__(self, provider: Any, location: str, password: str) -> None:
        pass

    def lock_new(self, machine_ids: list[str], now: Any) -> int:
        self.steps.append(("lock_new", sorted(machine_ids)))
        if self.fail:
            raise CloudkeepError("container unreachable")
        return 5

    def vouch(self) -> VouchResult:
        self.steps.append(("vouch", None))
        forged = {FORGED: "its writer MAC does not verify"}  # another machine wrote it (repo/writermac.py)
        return VouchResult(["writers/m1/aa"], {"writers/m2/bb": REFUSED}, 42, forged_index_files=forged)

    def prune_once(self, now: Any) -> None:
        self.steps.append(("prune", None))

    def close(self) -> None:
        pass


@pytest.fixture
def ctx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerContext]:
    monkeypatch.setattr(ret, "ServerMaintenance", RecordedMaintenance)
    RecordedMaintenance.steps, RecordedMaintenance.fail = [], False
    context = make_context(tmp_path, None)
    yield context
    context.close()


def _stats(ctx: ServerContext, session_id: str) -> tuple[str, dict[str, Any]]:
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        return session.state, dict(session.stats or {})


def test_runner_locks_the_run_machines_new_objects_before_prune(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=2, immutability_days=7)
    session_id = start_job(ctx, world.add_job(), wait=True, dispatcher=FakeDispatcher(ctx))
    lock_new = ("lock_new", sorted(world.machine_ids))
    assert RecordedMaintenance.steps == [lock_new, ("vouch", None), ("prune", None)]
    state, stats = _stats(ctx, session_id)
    assert state == "success" and stats["locks"] == {"objects": 5}
    # The vouch step's report names the writer whose pack it refused (repo/vouch.py).
    # And the index files written into a writer's namespace by another machine.
    assert stats["vouch"] == {"packs": 1, "bytes_read": 42, "refused_writers": ["writers/m2/"],
                              "refused": {"writers/m2/bb": REFUSED},
                              "forged_index_files": [FORGED]}  # fmt: skip


def test_a_failed_lock_step_is_recorded_and_the_backups_stand(ctx: ServerContext, tmp_path: Path) -> None:
    RecordedMaintenance.fail = True
    world = build_world(ctx, tmp_path / "lab", machines=1, immutability_days=7)
    session_id = start_job(ctx, world.add_job(), wait=True, dispatcher=FakeDispatcher(ctx))
    state, stats = _stats(ctx, session_id)
    assert state == "success" and stats["locks"] == {"error": "container unreachable"}


def test_no_lock_step_without_immutability(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=1)
    start_job(ctx, world.add_job(), wait=True, dispatcher=FakeDispatcher(ctx))
    assert [step for step, _ in RecordedMaintenance.steps] == ["vouch", "prune"]
