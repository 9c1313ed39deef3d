"""Test helpers for jobs: a catalog world builder and an IN-PROCESS FAKE dispatcher.

The fake stands in for ``cloudkeep.server.dispatcher.Dispatcher`` + the machine-side agent so
the runner's bookkeeping (tasks, restore points, statistics, retries, stop, credential refresh,
retention) can be tested in milliseconds and with exact failure injection. The end-to-end tests
in ``test_jobs_e2e.py`` use the real dispatcher and real machine processes instead.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.hostile import Spec, craft

from cloudkeep.config import Settings
from cloudkeep.errors import NotFoundError, UnreachableError
from cloudkeep.repo import KdfParams, Snapshot
from cloudkeep.repo import Repository as Engine
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import (
    BackupJob,
    CommandRecord,
    Credential,
    DiscoveredMachine,
    ProtectionGroup,
    Repository,
    RestorePoint,
)
from cloudkeep.server.sessions.access import agent_write_prefix, load_repository, repository_password


def make_context(tmp: Path, database_url: str | None = None) -> ServerContext:
    return open_context(Settings(home=tmp / "home", database_url=database_url))


def fresh_postgres_url(postgres) -> str:  # type: ignore[no-untyped-def]
    """A new, empty database on the shared PostgreSQL peer."""
    import uuid

    from sqlalchemy import create_engine, text

    name = "ck_sched_" + uuid.uuid4().hex[:8]
    admin = create_engine(postgres.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@dataclass
class World:
    ctx: ServerContext
    repository_id: str
    group_id: str
    machine_ids: list[str]

    def add_job(self, name: str = "nightly", **fields: Any) -> str:
        with self.ctx.db() as db:
            job = BackupJob(
                name=name,
                repository_id=self.repository_id,
                protection_group_ids=[self.group_id],
                mode=fields.pop("mode", "file"),
                includes=fields.pop("includes", ["/data"]),
                **fields,
            )
            db.add(job)
            db.flush()
            return job.id


def build_world(
    ctx: ServerContext,
    lab: Path,
    *,
    machines: int = 3,
    undeployed: tuple[int, ...] = (),
    immutability_days: int = 0,
    password: str = "correct horse battery",
) -> World:
    """A local credential, a backup repository, a protection group and ``machines`` deployed machines."""
    with ctx.db() as db:
        cred = Credential(name=f"lab-{uuid.uuid4().hex[:6]}", provider="local", secret=ctx.secrets.seal({}))
        cred.options = {"lab_dir": str(lab)}
        db.add(cred)
        db.flush()
        dist = Repository(
            name=f"dist-{cred.name}", purpose="distribution", credential_id=cred.id, location="dist"
        )
        repo = Repository(
            name=f"repo-{cred.name}",
            purpose="backup",
            credential_id=cred.id,
            location="backups",
            password=ctx.secrets.seal(password),
            immutability_days=immutability_days,
        )
        db.add_all([dist, repo])
        db.flush()
        group = ProtectionGroup(
            name=f"group-{cred.name}", credential_id=cred.id, distribution_repository_id=dist.id
        )
        db.add(group)
        db.flush()
        ids = []
        for i in range(machines):
            machine = DiscoveredMachine(
                protection_group_id=group.id,
                cloud_id=f"vm-{i}",
                name=f"vm-{i}",
                platform="linux",
                status="failed" if i in undeployed else "deployed",
                status_reason="install step failed: no space left on device" if i in undeployed else "",
            )
            db.add(machine)
            db.flush()
            ids.append(machine.id)
        return World(ctx, repo.id, group.id, ids)


def open_engine(world: World, writer: str | None = None) -> Engine:
    """The world's repository as a machine or the server opens it (initialised on first use)."""
    row = load_repository(world.ctx, world.repository_id)
    provider = world.ctx.provider_for(row.credential_id)
    store = provider.storage.open_store(row.location)
    provider.close()
    password = repository_password(world.ctx, row)
    try:
        return Engine.open(store, password, writer_prefix=writer)
    except NotFoundError:
        Engine.create(store, password, kdf=KdfParams(n=2**10))
        return Engine.open(store, password, writer_prefix=writer)


def write_manifest(world: World, machine: int = 0, kind: str = "files") -> Snapshot:
    """A real restore-point manifest in the machine's namespace (its root tree id is made up), which
    restore requests check before they send anything."""
    repo = open_engine(world, agent_write_prefix(world.machine_ids[machine]))
    try:
        snapshot = Snapshot("", datetime.now(UTC), "h", [], ["/etc"], kind, tree=uuid.uuid4().hex * 2)
        repo.save_snapshot(snapshot)
        return snapshot
    finally:
        repo.store.close()


def crafted_point(world: World, specs: list[Spec]) -> str:
    """A restore point of the world's first machine holding exactly ``specs`` (hand-written trees,
    hostile names welcome), recorded in the catalog; returns the restore point id."""
    repo = open_engine(world)
    try:
        snapshot_id = craft(repo, specs)
    finally:
        repo.close()
        repo.store.close()
    with world.ctx.db() as db:
        point = RestorePoint(
            repository_id=world.repository_id, machine_id=world.machine_ids[0], snapshot_id=snapshot_id,
            mode="file",
        )  # fmt: skip
        db.add(point)
        db.flush()
        return point.id


@dataclass
class Sent:
    command_id: str
    machine_id: str
    kind: str
    body: dict[str, Any]
    sealed: dict[str, Any] | None
    task_id: str | None


@dataclass
class FakeDispatcher:
    """Answers commands like an agent would; ``fail``/``hold`` inject failures and long tasks."""

    ctx: ServerContext
    fail: dict[str, str] = field(default_factory=dict)  # machine_id -> error message for backups
    hold: set[str] = field(default_factory=set)  # machine ids whose backup waits for release/refresh
    release_on_refresh: bool = False
    stats: dict[str, Any] = field(
        default_factory=lambda: {
            "bytes_total": 5000,
            "bytes_read": 1000,
            "data_added": 400,
            "bytes_uploaded": 100,
            "files": 7,
            "timings": {"read_seconds": 1.0, "upload_seconds": 3.0},
        }
    )
    sent: list[Sent] = field(default_factory=list)
    snapshots: dict[str, list[tuple[str, datetime]]] = field(default_factory=dict)  # hostname -> snapshots
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def kinds(self, kind: str) -> list[Sent]:
        return [s for s in self.sent if s.kind == kind]

    def send(
        self,
        machine_id: str,
        kind: str,
        body: dict[str, Any],
        *,
        sealed: dict[str, Any] | None = None,
        task_id: str | None = None,
        ttl: float = 3600,
    ) -> str:
        command_id = uuid.uuid4().hex
        with self.lock:
            self.sent.append(Sent(command_id, machine_id, kind, body, sealed, task_id))
        with self.ctx.db() as db:
            db.add(
                CommandRecord(
                    id=command_id, machine_id=machine_id, kind=kind, channel="fake", task_id=task_id
                )
            )
        if kind == "update_credentials" and self.release_on_refresh:
            self.released.set()
        if kind == "cancel":  # as the agent does: the task stops and reports ``cancelled``
            cancelled = {"ok": False, "error": "cancelled by the server", "payload": {"cancelled": True}}
            self._finish(body["command_id"], "failed", cancelled)
        return command_id

    def _finish(self, command_id: str, state: str, result: dict[str, Any]) -> None:
        with self.ctx.db() as db:
            record = db.get(CommandRecord, command_id)
            assert record is not None
            record.state, record.result, record.completed_at = state, result, datetime.now(UTC)

    def wait(
        self, command_id: str, *, timeout: float, on_progress: Any = None, poll: float = 0.2
    ) -> dict[str, Any]:
        command = next(s for s in self.sent if s.command_id == command_id)
        if command.kind == "backup" and command.machine_id in self.hold and not self.released.wait(timeout):
            raise TimeoutError(f"command {command_id} still running after {timeout} s")
        if command.kind == "backup":
            if command.machine_id in self.fail:
                self._finish(command_id, "failed", {"error": self.fail[command.machine_id]})
                raise UnreachableError(self.fail[command.machine_id])
            snapshot_id = uuid.uuid4().hex
            now = datetime.now(UTC)
            with self.lock:
                self.snapshots.setdefault(command.body["hostname"], []).append((snapshot_id, now))
            payload: dict[str, Any] = {
                "snapshot_id": snapshot_id,
                "snapshot_time": now.isoformat(),
                "stats": dict(self.stats),
            }
        elif command.kind == "retention":
            # Like the machine: forget exactly the named snapshots of this backup set.
            doomed = set(command.body["forget"])
            with self.lock:
                mine = self.snapshots.get(command.body["hostname"], [])
                removed = [s for s, _t in mine if s in doomed]
                self.snapshots[command.body["hostname"]] = [(s, t) for s, t in mine if s not in doomed]
            payload = {"kept": [s for s, _t in self.snapshots[command.body["hostname"]]], "removed": removed}
        elif command.kind == "check":
            payload = {"ok": True, "problems": []}
        else:
            payload = {}
        self._finish(command_id, "done", {"ok": True, "payload": payload})
        return payload
