"""Backup and restore through the Agent and the Transport Service, to a real ``file://`` repository.

Fault cases: the message service killed while the agent runs a backup (the result is still
posted once, nothing re-runs); the agent itself killed mid-backup (reported as interrupted,
never re-run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudkeep import repo as engine
from cloudkeep.machine.ledger import CommandLedger
from cloudkeep.server import consumer_registry
from cloudkeep.server.dispatcher import CommandFailed, Dispatcher, ensure_consumers
from cloudkeep.storage.base import open_store
from tests.machine.harness import Harness, MachineHandle, wait_for

pytestmark = pytest.mark.slow
PASSWORD = "correct horse battery staple"


def _repository(tmp: Path) -> dict[str, object]:
    store_url = f"file://{tmp / 'repo'}"
    engine.Repository.create(open_store(store_url), PASSWORD)
    return {"store_url": store_url, "options": {}, "password": PASSWORD}


def _machine_with_data(harness: Harness, name: str, size: int = 0) -> MachineHandle:
    machine = harness.add_machine(name)
    data = machine.sim.root / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.txt").write_text("alpha\n")
    (data / "sub" / "b.bin").write_bytes(os.urandom(size or 4096))
    return machine


def _snapshots(access: dict[str, object]) -> list[str]:
    repository = engine.Repository.open(open_store(str(access["store_url"])), PASSWORD)
    return [s.id for s in engine.list_snapshots(repository)]


def test_backup_browse_and_restore_round_trip(harness: Harness, tmp_path: Path) -> None:
    access = _repository(tmp_path)
    machine = _machine_with_data(harness, "db1")
    ensure_consumers(harness.ctx)
    for service in ("message-service", "agent", "transport"):
        machine.start(service)
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)

    body = {
        "mode": "files",
        "sources": ["/data"],
        "hostname": "db1",
        "tags": ["t1"],
        "retention": {"keep_last": 5},
    }
    backup = dispatcher.call(machine.row_id, "backup", body, sealed=access, timeout=60)
    assert backup["snapshot_id"] in _snapshots(access)
    assert backup["stats"] and backup["forgotten"] == []

    listing = dispatcher.call(
        machine.row_id, "browse", {"snapshot_id": backup["snapshot_id"], "path": "/data", "recursive": True},
        sealed=access, timeout=60,
    )  # fmt: skip
    assert {e["path"] for e in listing["entries"]} >= {"/data/a.txt", "/data/sub", "/data/sub/b.bin"}

    request = {"snapshot_id": backup["snapshot_id"], "target": "/restore", "paths": ["/data"]}
    restored = dispatcher.call(machine.row_id, "restore", request, sealed=access, timeout=60)
    assert restored["files"] == 2 and restored["verified"] is True
    # Restore points hold the machine's own paths (or, with an engine that keeps host paths, the
    # host path of the simulated machine's root): either way the copy sits below /restore.
    candidates = [machine.sim.root / "restore" / "data",
                  machine.sim.root / "restore" / str(machine.sim.root).lstrip("/") / "data"]  # fmt: skip
    copy = next(c for c in candidates if c.exists())
    assert (copy / "a.txt").read_text() == "alpha\n"
    assert (copy / "sub" / "b.bin").read_bytes() == (machine.sim.root / "data/sub/b.bin").read_bytes()

    check = dispatcher.call(machine.row_id, "check", {}, sealed=access, timeout=60)
    assert check == {"ok": True, "problems": []}


def test_message_service_killed_mid_backup_result_posted_once(harness: Harness, tmp_path: Path) -> None:
    access = _repository(tmp_path)
    machine = _machine_with_data(harness, "db2", size=3 * 2**20)
    ensure_consumers(harness.ctx)
    consumer_counts = list(consumer_registry._CONSUMERS.values())
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    body = {"sources": ["/data"], "hostname": "db2", "bandwidth_limit": 400_000}
    command_id = dispatcher.send(machine.row_id, "backup", body, sealed=access)
    work = machine.config.state_dir / "spool/agent/work" / f"{command_id}.json"
    wait_for(work.exists, what="the agent to claim the backup")
    machine.kill()  # SIGKILL the message service while the agent works
    machine.start()
    result = dispatcher.wait(command_id, timeout=90)
    assert _snapshots(access) == [result["snapshot_id"]]  # ran exactly once
    assert harness.record(command_id).state == "done"
    applied = sum(c.counts.get("applied", 0) for c in consumer_counts)
    assert applied >= 1
    entry = CommandLedger(machine.config.state_dir / "commands.db").get(command_id)
    assert entry is not None and entry.state == "done" and entry.posted


def test_agent_killed_mid_backup_is_reported_not_rerun(harness: Harness, tmp_path: Path) -> None:
    access = _repository(tmp_path)
    machine = _machine_with_data(harness, "db3", size=3 * 2**20)
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    command_id = dispatcher.send(
        machine.row_id,
        "backup",
        {"sources": ["/data"], "hostname": "db3", "bandwidth_limit": 300_000},
        sealed=access,
    )
    work = machine.config.state_dir / "spool/agent/work" / f"{command_id}.json"
    wait_for(work.exists, what="the agent to claim the backup")
    machine.kill("agent")
    machine.start("agent")
    with pytest.raises(CommandFailed, match="restarted while running"):
        dispatcher.wait(command_id, timeout=60)
    assert _snapshots(access) == []  # no half-written restore point is visible, and nothing re-ran


def test_update_credentials_reaches_the_running_backup(harness: Harness, tmp_path: Path) -> None:
    access = _repository(tmp_path)
    machine = _machine_with_data(harness, "db4", size=3 * 2**20)
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    body = {"sources": ["/data"], "hostname": "db4", "bandwidth_limit": 400_000}
    command_id = dispatcher.send(
        machine.row_id, "backup", body, sealed={**access, "options": {"fsync": True}}
    )
    work = machine.config.state_dir / "spool/agent/work" / f"{command_id}.json"
    wait_for(work.exists, what="the agent to claim the backup")
    fresh = {**access, "options": {"fsync": False}}
    update = {"command_id": command_id}
    delivered = dispatcher.call(machine.row_id, "update_credentials", update, sealed=fresh, timeout=30)
    assert delivered["delivered_to"] == command_id and set(delivered) <= {"delivered_to", "target_state"}
    assert dispatcher.wait(command_id, timeout=90)["snapshot_id"] in _snapshots(access)
    assert f"command {command_id}: repository credentials refreshed" in machine.output("agent")


def test_progress_reaches_the_caller_and_the_session_task(harness: Harness, tmp_path: Path) -> None:
    from cloudkeep.server.db.models import JobSession, SessionTask

    access = _repository(tmp_path)
    machine = _machine_with_data(harness, "db5", size=2 * 2**20)
    with harness.ctx.db() as session:
        job_session = JobSession(kind="backup")
        session.add(job_session)
        session.flush()
        task = SessionTask(session_id=job_session.id, machine_id=machine.row_id)
        session.add(task)
        session.flush()
        task_id = task.id
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    body = {"sources": ["/data"], "hostname": "db5", "bandwidth_limit": 500_000}
    command_id = dispatcher.send(machine.row_id, "backup", body, sealed=access, task_id=task_id)
    seen: list[dict[str, object]] = []
    dispatcher.wait(command_id, timeout=90, on_progress=seen.append)
    assert seen and all(p["command_id"] == command_id for p in seen)
    assert max(int(p["bytes_read"]) for p in seen) > 0  # type: ignore[call-overload]
    with harness.ctx.db() as session:
        stored = session.get(SessionTask, task_id)
        assert stored is not None and stored.command_id == command_id
        assert stored.bytes_read > 0 and "rate" in stored.stats
