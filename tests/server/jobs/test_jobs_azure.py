"""A backup job over three Azure VMs deployed by rescan, restored byte for byte.

Queues and blob containers are Azurite (which enforces SAS); VM inventory and managed Run
Commands are the ARM stand-in (tests/support/arm_standin.py), which runs each script in the VM's
simulated machine — so the message service, agent and transport are the real processes the
installer started. The stand-in's SDK credential is an in-process object, so the context gets a
provider factory that adds it (the same seam the rescan tests use).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.server.rescan_support import PYTHON_ENV, RescanWorld, open_azure_world
from tests.support.arm_standin import ArmStandIn
from tests.support.paths import in_machine, tree_bytes
from tests.support.peers import Azurite

from cloudkeep.repo import Repository as EngineRepository
from cloudkeep.server.db.models import BackupJob, CommandRecord, JobSession, Repository, RestorePoint
from cloudkeep.server.jobs import start_job
from cloudkeep.server.rescan import start_rescan
from cloudkeep.server.restore import download_files, start_file_restore

pytestmark = [pytest.mark.slow, pytest.mark.azurite]
PASSWORD = "azure e2e repository password"


@pytest.fixture
def world(
    tmp_path: Path, arm_standin: ArmStandIn, azurite: Azurite, unique_name: str
) -> Iterator[RescanWorld]:
    world = open_azure_world(tmp_path, arm_standin, azurite.connection_string, unique_name)
    yield world
    world.close()


def test_job_over_three_azure_vms_then_restore(
    world: RescanWorld, arm_standin: ArmStandIn, unique_name: str, tmp_path: Path
) -> None:
    ctx = world.ctx
    vms = [arm_standin.create_vm(f"vm{i}", env=PYTHON_ENV) for i in range(3)]
    sources = {}
    for i, vm in enumerate(vms):
        data = vm.root / "data"
        (data / "sub").mkdir(parents=True)
        (data / "notes.txt").write_text(f"azure vm {i}\n" * 200)
        (data / "sub" / "blob.bin").write_bytes(os.urandom(250_000))
        sources[vm.name] = data
    session_id = start_rescan(ctx, world.group_id, wait=True)
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None and session.state == "success", session.reason
    machines = world.machines()
    assert {m.status for m in machines.values()} == {"deployed"}

    container = f"{unique_name}bk"
    provider = ctx.provider_for(world.credential_id)
    try:
        provider.storage.ensure_container(container)
        EngineRepository.create(provider.storage.open_store(container), PASSWORD).close()
    finally:
        provider.close()
    with ctx.db() as db:
        repo = Repository(
            name="blob", purpose="backup", credential_id=world.credential_id, location=container,
            password=ctx.secrets.seal(PASSWORD),
        )  # fmt: skip
        db.add(repo)
        db.flush()
        job = BackupJob(
            name="azure-files", repository_id=repo.id, protection_group_ids=[world.group_id],
            mode="file", includes=["/data"], retention={"keep_last": 3},
        )  # fmt: skip
        db.add(job)
        db.flush()
        job_id = job.id

    backup_id = start_job(ctx, job_id, wait=True)
    with ctx.db() as db:
        backup = db.get(JobSession, backup_id)
        assert backup is not None
        assert backup.state == "success", [(t.state, t.reason) for t in backup.tasks]
        channels = {
            r.channel for r in db.scalars(select(CommandRecord).where(CommandRecord.kind == "backup"))
        }
        points = {
            p.machine_id: p.id for p in db.scalars(select(RestorePoint).where(RestorePoint.job_id == job_id))
        }
    assert channels == {"queue"} and len(points) == 3

    for name, row in machines.items():
        dest = tmp_path / f"dl-{name}"
        download_files(ctx, points[row.id], None, dest)
        assert tree_bytes(dest / in_machine(sources[name])) == tree_bytes(sources[name])

    row = machines["vm2"]
    restore_id = start_file_restore(
        ctx, points[row.id], paths=["/data/sub"], target_machine_id=None, target_path="/back", wait=True
    )
    with ctx.db() as db:
        restore = db.get(JobSession, restore_id)
        assert restore is not None and restore.state == "success", restore.reason
    vm2 = next(vm for vm in vms if vm.name == "vm2")
    restored = vm2.root / "back" / in_machine(sources["vm2"] / "sub")
    assert tree_bytes(restored) == tree_bytes(sources["vm2"] / "sub")
