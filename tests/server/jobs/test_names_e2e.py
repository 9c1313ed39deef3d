"""A folder whose name is not UTF-8, end to end on the local provider: a backup job through the real
machine-side processes (file cache on, as agents always run), browse and search through the server,
and a restore to the machine, byte-exact. A source the agent cannot back up makes the machine's
task a warning naming it, never a plain success.

Nothing is faked: real dispatcher, queues, signed messages and machine services (``tests.machine.harness``).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from tests.machine.harness import Harness, MachineHandle, wait_for

from cloudkeep.repo import Repository as EngineRepository
from cloudkeep.server.db.models import BackupJob, JobSession, Repository, RestorePoint
from cloudkeep.server.dispatcher import ensure_consumers
from cloudkeep.server.jobs import start_job
from cloudkeep.server.restore import browse, search, start_file_restore

pytestmark = pytest.mark.slow
PASSWORD = "names e2e password"
FOLDER = b"caf\xe9 \xff\n"  # Latin-1, a stray byte and a newline: shown as "caf\\xe9 \\xff\n"
FILES = {
    b"\xff\xfe.txt": b"one",
    b"new\nline.txt": b"two",
    b"-dash \\ back.txt": b"three",
    b"x" * 251 + b".txt": b"4",
}


def as_json(value: object) -> bytes:
    """What an API response or a queue message does with it: strict UTF-8 JSON."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("names-e2e")
    harness = Harness.create(tmp, heartbeat_timeout=30.0)
    EngineRepository.create(harness.provider.storage.open_store("backups"), PASSWORD).close()
    machine: MachineHandle = harness.add_machine("odd1")
    data = os.fsencode(machine.sim.root / "data")
    os.makedirs(os.path.join(data, FOLDER))
    for name, content in FILES.items():
        Path(os.fsdecode(os.path.join(data, FOLDER, name))).write_bytes(content)
    Path(os.fsdecode(data), "plain.txt").write_text("plain")
    os.symlink("data", machine.sim.root / "shortcut")  # a source below a symlink cannot be backed up
    with harness.ctx.db() as db:
        repo = Repository(
            name="names", purpose="backup", credential_id=harness.credential_id, location="backups",
            password=harness.ctx.secrets.seal(PASSWORD),
        )  # fmt: skip
        db.add(repo)
        db.flush()
        job = BackupJob(
            name="odd-names", repository_id=repo.id, machine_ids=[machine.row_id], mode="file",
            includes=["/data", "/shortcut/plain.txt"],
        )  # fmt: skip
        db.add(job)
        db.flush()
        job_id = job.id
    ensure_consumers(harness.ctx)
    for service in ("message-service", "agent", "transport"):
        machine.start(service)
    wait_for(lambda: harness.heartbeat_age(machine) is not None, timeout=60, what="first heartbeat")
    yield {"harness": harness, "machine": machine, "job": job_id, "data": data}
    harness.close()


def run_job(env: dict) -> tuple[JobSession, RestorePoint]:
    ctx = env["harness"].ctx
    session_id = start_job(ctx, env["job"], wait=True)
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        _ = session.tasks
        stmt = (
            select(RestorePoint)
            .where(RestorePoint.job_id == env["job"])
            .order_by(RestorePoint.created_at.desc())
        )
        point = db.scalars(stmt).first()
        assert point is not None
        return session, point


def test_odd_folder_backs_up_browses_searches_and_restores_byte_exact(env: dict) -> None:
    ctx, machine = env["harness"].ctx, env["machine"]
    session, point = run_job(env)
    (task,) = session.tasks
    # The source below a symlink is not in the restore point: the task says so by name.
    assert session.state == "warning" and task.state == "warning", task.reason
    assert "1 entry could not be read" in task.reason and "/shortcut" in task.reason

    # Browse through the machine: the folder is shown as text, its bytes travel beside it.
    listing = browse(ctx, point.id, "/data", via_machine=machine.row_id)
    as_json(listing)
    shown = {e["path"]: e for e in listing["entries"]}
    folder = "/data/caf\\xe9 \\xff\n"
    assert set(shown) == {"/data/plain.txt", folder}
    assert base64.b64decode(shown[folder]["path_b64"]) == b"/data/" + FOLDER
    # ... and what it showed can be sent back: browse into the folder by its displayed path.
    inside = browse(ctx, point.id, folder, via_machine=machine.row_id)
    exact = {base64.b64decode(e["path_b64"]) for e in inside["entries"]}
    assert exact == {b"/data/" + FOLDER + b"/" + name for name in FILES}
    local = browse(ctx, point.id, folder)  # the same listing read here with the repository credential
    assert sorted(e["path"] for e in local["entries"]) == sorted(e["path"] for e in inside["entries"])
    found = search(ctx, "*.txt", job_id=env["job"])
    as_json(found)
    assert {base64.b64decode(f["path_b64"]) for f in found if "path_b64" in f} == exact

    # Restore the folder, named as browse showed it, to another place on the machine.
    restore_id = start_file_restore(
        ctx, point.id, paths=[folder], target_machine_id=None, target_path="/restored", wait=True
    )
    with ctx.db() as db:
        restored_session = db.get(JobSession, restore_id)
        assert restored_session is not None and restored_session.state == "success", restored_session.reason
    restored = os.fsencode(machine.sim.root / "restored") + b"/data/" + FOLDER
    assert {
        name: Path(os.fsdecode(os.path.join(restored, name))).read_bytes() for name in os.listdir(restored)
    } == FILES

    # The incremental run takes every odd name from the agent's file cache.
    second_session, second = run_job(env)
    assert second.id != point.id and second_session.state == "warning"
    (second_task,) = second_session.tasks
    assert second_task.stats["bytes_read"] == 0, second_task.stats
