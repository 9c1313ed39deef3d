"""Stopping a session really stops the backup on the machine (``cancel`` command), end to end;
and a finished backup's task stats name the bottleneck stage (from the agent's timings).

Real machine-side processes (message service + agent, ``tests.machine.harness``), the real
dispatcher and server-queue consumer, SQLite queues and the engine writing to a local store. The
backup is slowed with the job's ``bandwidth_limit`` so it is still running when it is stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.machine.harness import Harness, wait_for

from cloudkeep.repo import Repository as EngineRepository
from cloudkeep.repo import check, list_snapshots
from cloudkeep.server.db.models import (
    BackupJob,
    CommandRecord,
    JobSession,
    Repository,
    RestorePoint,
    SessionTask,
)
from cloudkeep.server.jobs import start_job, stop_session

pytestmark = pytest.mark.slow
PASSWORD = "stop e2e password"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("stop-e2e")
    harness = Harness.create(tmp, heartbeat_timeout=30.0)
    store = harness.provider.storage.open_store("backups")
    EngineRepository.create(store, PASSWORD, pack_size=512 * 1024).close()  # many packs: the limit bites
    with harness.ctx.db() as db:
        repo = Repository(
            name="stop", purpose="backup", credential_id=harness.credential_id, location="backups",
            password=harness.ctx.secrets.seal(PASSWORD),
        )  # fmt: skip
        db.add(repo)
        db.flush()
        repository_id = repo.id
    machine = harness.add_machine("big")
    data = machine.sim.root / "data"
    data.mkdir()
    for i in range(120):  # ~8 MiB of incompressible files in 16 packs at 1 MiB/s: seconds of work
        (data / f"f{i:03}.bin").write_bytes(os.urandom(64 * 1024))
    from cloudkeep.server.dispatcher import ensure_consumers

    ensure_consumers(harness.ctx)
    machine.start("message-service")
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, timeout=60, what="heartbeat")
    with harness.ctx.db() as db:
        job = BackupJob(
            name="slow", repository_id=repository_id, machine_ids=[machine.row_id], mode="file",
            includes=["/data"], options={"bandwidth_limit": 1024 * 1024, "poll_slice_seconds": 0.5},
        )  # fmt: skip
        db.add(job)
        db.flush()
        job_id = job.id
        quick = BackupJob(
            name="quick", repository_id=repository_id, machine_ids=[machine.row_id], mode="file",
            includes=["/data"],
        )  # fmt: skip
        db.add(quick)
        db.flush()
        quick_id = quick.id
    yield {"harness": harness, "machine": machine, "job": job_id, "quick": quick_id, "store": store}
    harness.close()


def _task(env: dict, session_id: str) -> SessionTask:
    with env["harness"].ctx.db() as db:
        task = db.scalar(select(SessionTask).where(SessionTask.session_id == session_id))
        assert task is not None
        return task


def test_stop_cancels_the_running_backup_on_the_machine(env: dict, tmp_path: Path) -> None:
    ctx = env["harness"].ctx
    session_id = start_job(ctx, env["job"])
    wait_for(lambda: _task(env, session_id).bytes_read > 0, timeout=60, what="backup progress")
    stop_session(ctx, session_id)

    def ended() -> JobSession | None:
        with ctx.db() as db:
            session = db.get(JobSession, session_id)
            assert session is not None
            return session if session.state not in ("pending", "running") else None

    session = wait_for(ended, timeout=60, what="session end")
    task = _task(env, session_id)
    assert session.state == "stopped", session.reason
    assert task.state == "stopped", task.reason
    assert any("cancel sent" in entry["message"] for entry in task.log or [])
    # the machine stopped the backup itself and said so (not merely "no longer waited for")
    assert task.command_id is not None
    record = wait_for(
        lambda: (r := env["harness"].record(task.command_id)).state != "running" and r, timeout=30,
        what="backup command result",
    )  # fmt: skip
    assert record.state == "failed" and (record.result or {}).get("payload", {}).get("cancelled") is True
    assert task.bytes_read < 120 * 64 * 1024  # stopped well before the end
    with ctx.db() as db:
        assert db.scalar(select(RestorePoint).where(RestorePoint.job_id == env["job"])) is None
        cancels = db.scalars(select(CommandRecord).where(CommandRecord.kind == "cancel")).all()
        assert len(cancels) == 1
    repository = EngineRepository.open(env["store"], PASSWORD)
    try:
        assert list_snapshots(repository) == []  # no half-written restore point is visible
        report = check(repository)
        assert report.ok, report.problems
    finally:
        repository.close()


def test_a_finished_backup_reports_stage_timings_and_a_bottleneck(env: dict) -> None:
    ctx = env["harness"].ctx
    session_id = start_job(ctx, env["quick"], wait=True)
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        assert session.state == "success", session.reason
        session_bottleneck = (session.stats or {}).get("bottleneck")
    task = _task(env, session_id)
    assert task.stats["bottleneck"] in ("source", "network", "target")
    assert session_bottleneck == task.stats["bottleneck"]
    assert task.command_id is not None
    result = env["harness"].record(task.command_id).result or {}
    timings = result["payload"]["stats"]["timings"]
    stages = timings["read_seconds"] + timings["upload_seconds"] + timings["commit_seconds"]
    assert timings["engine_seconds"] > 0 and timings["upload_seconds"] > 0 and timings["commit_seconds"] > 0
    assert stages == pytest.approx(timings["engine_seconds"], abs=0.01)  # busy times partition the run
