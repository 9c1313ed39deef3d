"""The catalog pins each restore point's manifest at backup time and refuses it once it was altered.

Backups here are real (``backup_files`` into the machine's writer namespace of a local repository,
as the agent does); only the command transport is the in-process FAKE dispatcher of jobs_fakes,
answering ``backup`` with what the agent's task reports. A machine holds the repository key, so
the alterations are what it could do later to its own namespace: copy another manifest over one,
reseal a rewritten one under the same id, or rewrite a version 1 manifest (which nothing in the
repository binds to its id). Browse, search, download, file and volume restores and export are
tried through the service layer and the REST API; nothing may be restored or sent.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect, select
from tests.server.jobs_fakes import (
    FakeDispatcher,
    World,
    build_world,
    make_context,
    open_engine,
    write_manifest,
)

from cloudkeep.errors import IntegrityError
from cloudkeep.repo import Repository, backup_files
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX
from cloudkeep.server import restore as server_restore
from cloudkeep.server.api import create_app
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.migrate import alembic_config
from cloudkeep.server.db.models import RestorePoint, SessionTask
from cloudkeep.server.jobs import start_job
from cloudkeep.server.services import tokens
from cloudkeep.server.services.repositories import check_repository
from cloudkeep.server.services.schemas import TokenCreate
from cloudkeep.server.sessions.access import agent_write_prefix

ALTERED = "was altered in the repository after backup"
LEGACY_AAD = b"cloudkeep-snapshot-v1"
CONFIG_AAD = b"cloudkeep-config-v1"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    return build_world(ctx, tmp_path / "lab", machines=2)


class MachineBackups(FakeDispatcher):
    """Answers ``backup`` with a real backup into the machine's namespace; ``report`` may lie."""

    def __init__(self, ctx: ServerContext, world: World, source: Path, legacy: bool = False) -> None:
        super().__init__(ctx)
        self.world, self.source, self.legacy = world, source, legacy
        self.report: Callable[[dict[str, Any]], dict[str, Any]] = lambda payload: payload

    def wait(
        self, command_id: str, *, timeout: float, on_progress: Any = None, poll: float = 0.2
    ) -> dict[str, Any]:
        command = next(s for s in self.sent if s.command_id == command_id)
        if command.kind != "backup":
            return super().wait(command_id, timeout=timeout)
        repo = open_engine(self.world, agent_write_prefix(command.machine_id))
        snap = backup_files(repo, [self.source], hostname=command.body["hostname"])
        payload = {"snapshot_id": snap.id, "snapshot_time": snap.time.isoformat(), "stats": {"files": 1}}
        if self.legacy:  # an agent from before content ids: a version 1 manifest, no pin reported
            payload["snapshot_id"] = write_legacy(repo, snap.tree)
        else:
            payload |= {"manifest_digest": snap.digest, "root_tree": snap.tree}
        payload = self.report(payload)
        self._finish(command_id, "done", {"ok": True, "payload": payload})
        return payload


def write_legacy(repo: Repository, tree: str, hostname: str = "old-agent") -> str:
    snap_id = secrets.token_hex(16)
    write_legacy_at(repo, repo.writer_prefix + SNAPSHOT_PREFIX + snap_id, tree, hostname)
    return snap_id


def write_legacy_at(repo: Repository, key: str, tree: str, hostname: str) -> None:
    body = {"version": 1, "time": datetime.now(UTC).isoformat(), "hostname": hostname, "tags": [],
            "paths": ["/data"], "kind": "files", "stats": {}, "tree": tree, "retain_until": None}  # fmt: skip
    repo.store.put(key, repo.crypter.encode(json.dumps(body).encode(), LEGACY_AAD))


def as_format_1(world: World) -> None:
    """The repository as created before content-addressed manifests (version 1 ones are read)."""
    repo = open_engine(world)
    config = {**repo.config.to_json(), "version": 1}
    repo.store.put("config", repo.crypter.encode(json.dumps(config).encode(), CONFIG_AAD))


def make_source(root: Path, text: str) -> Path:
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "data" / "note.txt").write_text(text)
    return root


def back_up(ctx: ServerContext, world: World, fake: MachineBackups, job_id: str) -> RestorePoint:
    session_id = start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
    with ctx.db() as db:
        task = db.scalar(select(SessionTask).where(SessionTask.session_id == session_id))
        assert task is not None and task.state == "success", (task.state, task.reason) if task else None
        point = db.scalar(select(RestorePoint).where(RestorePoint.session_id == session_id))
        assert point is not None
        return point


@pytest.fixture
def two_points(ctx: ServerContext, world: World, tmp_path: Path) -> tuple[RestorePoint, RestorePoint]:
    fake = MachineBackups(ctx, world, make_source(tmp_path / "src", "first\n"))
    job_id = world.add_job()
    first = back_up(ctx, world, fake, job_id)
    make_source(tmp_path / "src", "second\n")
    return first, back_up(ctx, world, fake, job_id)


def manifest_key(world: World, point: RestorePoint) -> str:
    return agent_write_prefix(world.machine_ids[0]) + SNAPSHOT_PREFIX + point.snapshot_id


# -- ways a machine holding the key can alter its own namespace after the backup was accepted ------


def copy_other_over(world: World, victim: RestorePoint, other: RestorePoint) -> None:
    store = open_engine(world).store
    store.put(manifest_key(world, victim), store.get(manifest_key(world, other)))


def reseal_rewritten(world: World, victim: RestorePoint, other: RestorePoint) -> None:
    """The key holder rewrites the manifest (pointing at the other tree) under the same id."""
    repo = open_engine(world)
    key = manifest_key(world, victim)
    plain = json.loads(
        repo.crypter.decode(repo.store.get(key), b"cloudkeep-snapshot-v2:" + victim.snapshot_id.encode(), key)
    )
    plain["tree"] = other.root_tree
    repo.store.put(
        key,
        repo.crypter.encode(
            json.dumps(plain, sort_keys=True).encode(),
            b"cloudkeep-snapshot-v2:" + victim.snapshot_id.encode(),
        ),
    )


def delete_it(world: World, victim: RestorePoint, other: RestorePoint) -> None:
    open_engine(world).store.delete(manifest_key(world, victim))


ALTERATIONS = {"copy_other_over": copy_other_over, "reseal_rewritten": reseal_rewritten, "delete": delete_it}


def admin_api(ctx: ServerContext) -> TestClient:
    token = tokens.create_token(ctx, TokenCreate(name=f"admin-{secrets.token_hex(3)}", scope="admin")).token
    return TestClient(create_app(ctx), headers={"Authorization": f"Bearer {token}"})


def assert_refused(
    ctx: ServerContext, world: World, point: RestorePoint, tmp_path: Path, message: str
) -> int:
    """Every way to read ``point`` is refused and nothing is sent or written; returns the count tried."""
    fake = FakeDispatcher(ctx)
    out = tmp_path / "out"
    attempts: list[Callable[[], object]] = [
        lambda: server_restore.browse(ctx, point.id, "/"),
        lambda: server_restore.browse(ctx, point.id, "/", via_machine="vm-1", dispatcher=fake),
        lambda: server_restore.download_files(ctx, point.id, None, out),
        lambda: server_restore.start_file_restore(
            ctx, point.id, paths=None, target_machine_id=None, target_path="/r", wait=True, dispatcher=fake
        ),
    ]
    for attempt in attempts:
        with pytest.raises(Exception, match=message):
            attempt()
    assert fake.sent == [] and not (out.exists() and any(out.rglob("*")))
    assert all(hit["restore_point_id"] != point.id for hit in server_restore.search(ctx, "*.txt"))
    with admin_api(ctx) as api:
        base = f"/api/v1/restore-points/{point.id}"
        for response in (
            api.get(f"{base}/browse", params={"path": "/"}),
            api.post(f"{base}/restore-files", json={"target_path": "/r"}),
            api.post(f"{base}/download", json={"paths": []}),
        ):
            error = response.json()["error"]
            assert (response.status_code, error["type"]) in ((404, "not_found"), (409, "integrity"))
            assert message in error["message"]
    return len(attempts) + 4


def test_a_backup_is_pinned_from_what_the_repository_holds(
    ctx: ServerContext, world: World, two_points: tuple[RestorePoint, RestorePoint], tmp_path: Path
) -> None:
    first, second = two_points
    for point in two_points:
        assert point.manifest_digest == point.snapshot_id and point.root_tree and len(point.root_tree) == 64
    assert first.root_tree != second.root_tree
    entries = server_restore.browse(ctx, first.id, "/", recursive=True)["entries"]
    assert any(e["path"].endswith("/data/note.txt") for e in entries)
    server_restore.download_files(ctx, second.id, None, tmp_path / "dl")
    assert [p.read_text() for p in (tmp_path / "dl").rglob("note.txt")] == ["second\n"]


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
def test_an_altered_manifest_is_refused_at_browse_restore_and_the_api(
    ctx: ServerContext,
    world: World,
    two_points: tuple[RestorePoint, RestorePoint],
    tmp_path: Path,
    alteration: str,
) -> None:
    first, second = two_points
    ALTERATIONS[alteration](world, second, first)
    message = "was removed from storage" if alteration == "delete" else ALTERED
    assert assert_refused(ctx, world, second, tmp_path, message) == 8
    report = check_repository(ctx, world.repository_id)
    assert not report.ok and [p for p in report.problems if second.id in p and message in p]
    # the other point is untouched and still restores
    server_restore.download_files(ctx, first.id, None, tmp_path / "first")
    assert [p.read_text() for p in (tmp_path / "first").rglob("note.txt")] == ["first\n"]


def test_a_rewritten_version_1_manifest_is_caught_by_the_pin(
    ctx: ServerContext, world: World, tmp_path: Path
) -> None:
    """Nothing in the repository binds a version 1 manifest to its id: only the catalog's pin tells."""
    open_engine(world)  # initialise
    as_format_1(world)
    fake = MachineBackups(ctx, world, make_source(tmp_path / "src", "first\n"), legacy=True)
    job_id = world.add_job()
    old = back_up(ctx, world, fake, job_id)
    assert len(old.snapshot_id) == 32 and old.manifest_digest and len(old.manifest_digest) == 64
    make_source(tmp_path / "src", "second\n")
    other = back_up(ctx, world, fake, job_id)
    assert server_restore.browse(ctx, old.id, "/")["entries"]
    repo = open_engine(world, agent_write_prefix(world.machine_ids[0]))
    assert other.root_tree is not None
    write_legacy_at(repo, manifest_key(world, old), other.root_tree, "old-agent")  # a valid v1 manifest
    assert repo.load_snapshot(old.snapshot_id).tree == other.root_tree  # the repository alone cannot tell
    assert assert_refused(ctx, world, old, tmp_path, ALTERED) == 8
    report = check_repository(ctx, world.repository_id)  # the server's check names it; the engine's cannot
    assert not report.ok and [p for p in report.problems if old.id in p and ALTERED in p]
    assert not [p for p in report.problems if other.id in p]


def test_compromised_machine_report_that_disagrees_with_the_repository_is_not_recorded(
    ctx: ServerContext, world: World, tmp_path: Path
) -> None:
    fake = MachineBackups(ctx, world, make_source(tmp_path / "src", "x\n"))
    job_id = world.add_job()
    cases = {
        "root tree": lambda p: {**p, "root_tree": "0" * 64},
        "another machine's id": lambda p: {**p, "snapshot_id": write_manifest(world, 1).id},
        "no such point": lambda p: {**p, "snapshot_id": secrets.token_hex(32)},
        "not an id": lambda p: {**p, "snapshot_id": "../../config"},
    }
    for name, lie in cases.items():
        fake.report = lie
        session_id = start_job(ctx, job_id, machine_ids=["vm-0"], wait=True, dispatcher=fake)
        with ctx.db() as db:
            task = db.scalar(select(SessionTask).where(SessionTask.session_id == session_id))
            assert task is not None and task.state == "failed", name
            assert db.scalar(select(RestorePoint).where(RestorePoint.session_id == session_id)) is None, name


def test_a_point_recorded_before_pins_is_pinned_on_first_use(
    ctx: ServerContext, world: World, two_points: tuple[RestorePoint, RestorePoint], tmp_path: Path
) -> None:
    first, second = two_points
    with ctx.db() as db:
        row = db.get(RestorePoint, second.id)
        assert row is not None
        row.manifest_digest = row.root_tree = None
    assert server_restore.browse(ctx, second.id, "/")["entries"]
    with ctx.db() as db:
        row = db.get(RestorePoint, second.id)
        assert row is not None and (row.manifest_digest, row.root_tree) == (
            second.manifest_digest,
            second.root_tree,
        )
    copy_other_over(world, second, first)
    with pytest.raises(IntegrityError, match=ALTERED):
        server_restore.browse(ctx, second.id, "/")


def test_volume_restore_and_export_are_refused_too(ctx: ServerContext, world: World, tmp_path: Path) -> None:
    manifest, other = write_manifest(world, 0, "volume"), write_manifest(world, 0, "volume")
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=world.machine_ids[0],
                             snapshot_id=manifest.id, mode="volume", manifest_digest=manifest.digest,
                             root_tree=manifest.tree)  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    store = open_engine(world).store
    prefix = agent_write_prefix(world.machine_ids[0]) + SNAPSHOT_PREFIX
    store.put(prefix + manifest.id, store.get(prefix + other.id))
    fake = FakeDispatcher(ctx)
    with pytest.raises(IntegrityError, match=ALTERED):
        server_restore.start_volume_restore(ctx, point_id, target_path="/dev/xvdf", dispatcher=fake)
    with pytest.raises(IntegrityError, match=ALTERED):
        server_restore.export_image(ctx, point_id, tmp_path / "disk.img")
    assert fake.sent == [] and not list(tmp_path.glob("disk.img*"))


def test_migration_adds_the_pin_columns_and_keeps_rows(tmp_path: Path) -> None:
    from alembic import command

    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.connect() as conn:
        command.upgrade(alembic_config(conn), "0001")
        conn.exec_driver_sql(
            "INSERT INTO restore_points (id, repository_id, machine_id, snapshot_id, mode, created_at, size, "
            "files, gfs) VALUES ('p1', 'r1', 'm1', 'abc', 'file', '2026-01-01 00:00:00', 0, 0, '[]')"
        )
        conn.commit()
        command.upgrade(alembic_config(conn), "0002")
        conn.commit()
        columns = {c["name"] for c in inspect(conn).get_columns("restore_points")}
        assert {"manifest_digest", "root_tree"} <= columns
        row = conn.exec_driver_sql("SELECT snapshot_id, manifest_digest, root_tree FROM restore_points").one()
        assert tuple(row) == ("abc", None, None)
        command.downgrade(alembic_config(conn), "0001")
        conn.commit()
        assert "manifest_digest" not in {c["name"] for c in inspect(conn).get_columns("restore_points")}
    engine.dispose()
