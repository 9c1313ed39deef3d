"""End to end on a format 3 repository: real machine-side processes back up with a writer bundle
(never the password) and restore — to themselves, to another
machine, and browse — with the keys the server grants for exactly what they read.

Nothing here is faked (``tests.machine.harness``: real dispatcher, queues, protocol and agents).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.machine.harness import Harness, MachineHandle, wait_for
from tests.server.jobs.test_jobs_e2e import latest_point, session_state
from tests.support.paths import in_machine, tree_bytes

from cloudkeep.repo import Repository as EngineRepository
from cloudkeep.repo.confidential import PACK_MAGIC
from cloudkeep.server.db.models import BackupJob, Repository
from cloudkeep.server.jobs import start_job
from cloudkeep.server.restore import browse, start_file_restore
from cloudkeep.server.sessions.commands import sealed_access

pytestmark = pytest.mark.slow
PASSWORD = "e2e format 3 password"


def populate(machine: MachineHandle, seed: int) -> Path:
    data = machine.sim.root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "notes.txt").write_text(f"machine {machine.name}\n" * 100)
    (data / "sub" / f"blob-{seed}.bin").write_bytes(os.urandom(300_000))
    (data / "shared.bin").write_bytes(b"same on every machine " * 20_000)
    return data


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    harness = Harness.create(tmp_path_factory.mktemp("jobs-e2e-v3"), heartbeat_timeout=30.0)
    store = harness.provider.storage.open_store("backups")
    EngineRepository.create(store, PASSWORD, version=3).close()
    with harness.ctx.db() as db:
        repo = Repository(
            name="e2e-v3", purpose="backup", credential_id=harness.credential_id, location="backups",
            password=harness.ctx.secrets.seal(PASSWORD),
        )  # fmt: skip
        db.add(repo)
        db.flush()
        repository_id = repo.id
    machines = [harness.add_machine(f"vm{i}") for i in range(2)]
    sources = {m.row_id: populate(m, i) for i, m in enumerate(machines)}
    from cloudkeep.server.dispatcher import ensure_consumers

    ensure_consumers(harness.ctx)
    for m in machines:
        for service in ("message-service", "agent", "transport"):
            m.start(service)
    for m in machines:
        wait_for(lambda m=m: harness.heartbeat_age(m) is not None, timeout=60, what=f"{m.name} heartbeat")
    with harness.ctx.db() as db:
        job = BackupJob(name="files", repository_id=repository_id, protection_group_ids=[harness.group_id],
                        mode="file", includes=["/data"])  # fmt: skip
        db.add(job)
        db.flush()
        job_id = job.id
    session_id = start_job(harness.ctx, job_id, wait=True)
    yield {"harness": harness, "machines": machines, "sources": sources, "repository_id": repository_id,
           "job": job_id, "files_session": session_id}  # fmt: skip
    harness.close()


def test_format_3_backup_restore_and_browse_through_machines(env: dict) -> None:
    ctx = env["harness"].ctx
    session = session_state(env, env["files_session"])
    assert session.state == "success", [(t.state, t.reason) for t in session.tasks]
    # The server read the job's new packs once and vouched for them all (repo/vouch.py).
    assert session.stats["vouch"]["packs"] > 0 and "refused" not in session.stats["vouch"]
    assert session.stats["vouch"]["bytes_read"] >= 600_000  # both machines' random data at least
    first, second = env["machines"]
    assert "password" not in sealed_access(ctx, env["repository_id"], first.row_id)
    storage = env["harness"].lab.path / "storage" / "backups"
    packs = [p for p in storage.glob("writers/*/data/*/*") if p.is_file()]
    assert packs and all(p.read_bytes().startswith(PACK_MAGIC) for p in packs)  # per-pack data keys

    point = latest_point(env, first.row_id, env["job"])
    own = start_file_restore(ctx, point.id, paths=["/data/sub"], target_machine_id=None,
                             target_path="/restored", wait=True)  # fmt: skip
    assert session_state(env, own).state == "success", session_state(env, own).reason
    source = env["sources"][first.row_id]
    assert tree_bytes(first.sim.root / "restored" / in_machine(source / "sub")) == tree_bytes(source / "sub")

    other = start_file_restore(ctx, point.id, paths=None, target_machine_id=second.row_id,
                               target_path="/from-vm0", wait=True)  # fmt: skip
    assert session_state(env, other).state == "success", session_state(env, other).reason
    assert tree_bytes(second.sim.root / "from-vm0" / in_machine(source)) == tree_bytes(source)

    listing = browse(ctx, point.id, "/data", via_machine=second.row_id)
    names = sorted(e["path"].rsplit("/", 1)[-1] for e in listing["entries"])
    assert names == ["notes.txt", "shared.bin", "sub"]
