"""The quickstart's scenario, reusable on any cloud: discover, deploy, back up, change, back up, restore.

A cloud test builds its machines (EC2 instances via the SSM stand-in, Azure VMs via the ARM
stand-in), names a credential for its provider and where its repositories live, and calls
``run_scenario``. Everything goes through the ``Client`` (embedded), exactly as the quickstart and
the CLI do; the machines' contents and changes are the quickstart's own (``cloudkeep.quickstart``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cloudkeep.providers.local import SimulatedMachine
from cloudkeep.quickstart import (
    BACKED_UP,
    EXCLUDED,
    PROBE_FILE,
    mutate_machine,
    probe_content,
    seed_machine,
)
from cloudkeep.server.client import Client
from cloudkeep.server.services.schemas import (
    CredentialCreate,
    FileRestoreRequest,
    JobCreate,
    MachineDetail,
    ProtectionGroupCreate,
    RepositoryCreate,
    Retention,
    SessionDetail,
)

ROLES = ("web-1", "db-1", "app-1")
# Simulated machines borrow this interpreter instead of building a venv from PyPI (as the quickstart does).
PYTHON_ENV = {"CLOUDKEEP_PYTHON": sys.executable}
RESTORE_DIR = "/restore/e2e"
DEPLOY_STEPS = ("probe", "ownership", "prerequisites", "queues", "upload", "install", "confirm")


@dataclass
class CloudWorld:
    """What a cloud test supplies: its credential, repository locations and machines."""

    credential: CredentialCreate
    distribution_location: str
    backup_location: str
    include_tags: dict[str, str]
    machines: dict[str, SimulatedMachine]  # the three that must be deployed and backed up
    refused: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (status, reason fragment)
    password: str = "correct horse battery staple e2e"


@dataclass
class ScenarioReport:
    rescan: SessionDetail
    machines: dict[str, MachineDetail]
    first: SessionDetail
    second: SessionDetail
    restored: Path
    timings: dict[str, float]

    def stored(self, session: SessionDetail) -> int:
        """Bytes the machines uploaded in a backup session (after dedup and compression)."""
        return sum(t.bytes_transferred for t in session.tasks)


def finish(c: Client, session_id: str, *, timeout: float) -> SessionDetail:
    """Follow a session until it ends (the client polls the database with its own deadline)."""
    final: SessionDetail | None = None
    for detail in c.watch_session(session_id, poll=0.2, timeout=timeout):
        final = detail
    assert final is not None, f"session {session_id} reported nothing"
    return final


def describe(session: SessionDetail) -> str:
    """Enough of a session to explain a failed assertion."""
    tasks = "; ".join(f"{t.machine_id[:8]} {t.state} {t.reason}" for t in session.tasks)
    log = "\n".join(str(line) for line in session.log[-20:])
    return f"{session.kind} {session.state}: {session.reason} [{tasks}]\n{log}"


def seed(machines: dict[str, SimulatedMachine]) -> None:
    for name, machine in machines.items():
        seed_machine(machine.root, name)


def run_scenario(c: Client, world: CloudWorld, *, name: str) -> ScenarioReport:
    """The whole flow; asserts each stage and returns what happened for cloud-specific checks."""
    timings: dict[str, float] = {}
    started = time.monotonic()
    seed(world.machines)
    c.create_credential(world.credential)
    credential = world.credential.name
    c.create_repository(
        RepositoryCreate(
            name=f"{name}-dist",
            purpose="distribution",
            credential=credential,
            location=world.distribution_location,
        )
    )
    c.create_repository(
        RepositoryCreate(
            name=f"{name}-backup",
            purpose="backup",
            credential=credential,
            location=world.backup_location,
            password=world.password,  # type: ignore[arg-type]
        )
    )
    c.create_group(
        ProtectionGroupCreate(
            name=f"{name}-group",
            credential=credential,
            distribution_repository=f"{name}-dist",
            include_tags=world.include_tags,
        )
    )
    c.create_job(
        JobCreate(
            name=f"{name}-job",
            repository=f"{name}-backup",
            protection_groups=[f"{name}-group"],
            mode="file",
            includes=BACKED_UP,
            excludes=EXCLUDED,
            retention=Retention(keep_last=7),
        )
    )
    timings["setup"] = time.monotonic() - started

    mark = time.monotonic()
    rescan = finish(c, c.rescan(f"{name}-group"), timeout=180)
    timings["rescan"] = time.monotonic() - mark
    views = {m.name: c.get_machine(m.id) for m in c.list_machines(group=f"{name}-group").items}
    assert set(views) == set(world.machines) | set(world.refused), (sorted(views), describe(rescan))
    for machine_name in world.machines:
        view = views[machine_name]
        steps = [(s.step, s.outcome) for s in view.steps]
        assert view.status == "deployed", (machine_name, view.status_reason, steps, describe(rescan))
        assert steps == [(step, "ok") for step in DEPLOY_STEPS], (machine_name, view.steps)
    for machine_name, (status, reason) in world.refused.items():
        view = views[machine_name]
        assert view.status == status and reason in view.status_reason, (
            machine_name,
            view.status,
            view.status_reason,
        )
    assert rescan.state in ("success", "warning"), describe(rescan)

    mark = time.monotonic()
    first = finish(c, c.start_job(f"{name}-job"), timeout=180)
    timings["backup"] = time.monotonic() - mark
    check_backup(first, world, views)

    for machine_name, machine in world.machines.items():
        mutate_machine(machine.root, machine_name, generation=1)
    mark = time.monotonic()
    second = finish(c, c.start_job(f"{name}-job"), timeout=180)
    timings["incremental"] = time.monotonic() - mark
    check_backup(second, world, views)
    check_incremental(first, second)

    mark = time.monotonic()
    target = next(iter(world.machines))
    restored = restore_probe(c, views[target], world.machines[target], target)
    timings["restore"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    check_commands_went_through_queues(c)
    return ScenarioReport(rescan, views, first, second, restored, timings)


def check_commands_went_through_queues(c: Client) -> None:
    """Backups and restores were sent through the cloud's queues (not the Run Command fallback),
    and each was applied exactly once. Reads the embedded server's database."""
    from sqlalchemy import select

    from cloudkeep.server.db.models import CommandRecord
    from cloudkeep.server.embedded import EmbeddedClient

    assert isinstance(c, EmbeddedClient)
    with c.ctx.db() as session:
        rows = session.execute(select(CommandRecord.kind, CommandRecord.channel, CommandRecord.state)).all()
    work = [(kind, channel, state) for kind, channel, state in rows if kind in ("backup", "restore")]
    assert len(work) == 2 * 3 + 1, rows  # two backups of three machines, one restore
    assert {(channel, state) for _, channel, state in work} == {("queue", "done")}, work


def check_backup(session: SessionDetail, world: CloudWorld, views: dict[str, MachineDetail]) -> None:
    """Every deployed machine backed up; each refused one skipped, saying why (so the session warns)."""
    by_machine = {t.machine_id: t for t in session.tasks}
    assert session.state == ("warning" if world.refused else "success"), describe(session)
    for machine_name in world.machines:
        assert by_machine[views[machine_name].id].state == "success", describe(session)
    for machine_name, (_, reason) in world.refused.items():
        task = by_machine[views[machine_name].id]
        assert task.state == "skipped" and reason in task.reason, describe(session)


def check_incremental(first: SessionDetail, second: SessionDetail) -> None:
    """The second run reads only changed files and uploads less than the first, machine by machine."""
    before = {t.machine_id: t for t in first.tasks if t.state == "success"}
    for task in (t for t in second.tasks if t.state == "success"):
        processed = int(task.stats.get("bytes_processed", 0))
        assert 0 < task.bytes_read < processed, task.stats  # unchanged files were not read again
        assert task.bytes_transferred < before[task.machine_id].bytes_transferred, task.stats


def check_excludes(c: Client, restore_point_id: str) -> None:
    """What the job excludes (``*.tmp``, ``/home/*/.cache``) is not in the restore point; the rest is."""
    listed = c.browse(restore_point_id, "/", recursive=True).entries
    paths = {str(entry["path"]) for entry in listed}
    assert any(p.endswith(PROBE_FILE) for p in paths), sorted(paths)[:20]
    assert not [p for p in paths if p.endswith(".tmp") or "/.cache" in p], sorted(paths)


def restore_probe(c: Client, view: MachineDetail, machine: SimulatedMachine, name: str) -> Path:
    """Restore the probe file from the machine's oldest restore point; verify it byte for byte."""
    points = sorted(c.list_restore_points(machine=view.id).items, key=lambda p: p.created_at)
    assert len(points) == 2, points
    session = finish(
        c,
        c.restore_files(
            points[0].id,
            FileRestoreRequest(paths=[PROBE_FILE], target_path=RESTORE_DIR, target_machine=view.id),
        ),
        timeout=120,
    )
    assert session.state == "success", describe(session)
    check_excludes(c, points[0].id)
    found = [p for p in (machine.root / RESTORE_DIR.lstrip("/")).rglob(Path(PROBE_FILE).name) if p.is_file()]
    assert len(found) == 1, found
    assert found[0].read_bytes() == probe_content(name, generation=0)
    assert (machine.root / PROBE_FILE.lstrip("/")).read_bytes() == probe_content(name, generation=1)
    return found[0]


def stop_services(machines: list[SimulatedMachine], *, grace: float = 5.0) -> None:
    """Stop the daemons the installer started on these machines (SIGTERM, then SIGKILL after ``grace``)."""
    pids: list[int] = []
    for machine in machines:
        for pidfile in (machine.root / "var/run/cloudkeep").glob("*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
