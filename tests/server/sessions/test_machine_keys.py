"""Format 3 through the server: what a machine RECEIVES in its commands, and what it can do with it.

The server builds each command's sealed access (``sealed_access``, the backup runner's
``agent_access``); the machine opens the repository from it exactly as its task handlers do
(``machine.tasks.open_repository``, with a minimal stand-in for the task context). Storage is
the real local storage service with its scoped credentials; commands go to the FAKE dispatcher
of jobs_fakes, which records what was sent.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from tests.repo.conftest import FAST_KDF
from tests.server.jobs_fakes import FakeDispatcher, World, build_world, make_context

from cloudkeep.errors import ConfigurationError, IntegrityError, PermissionDeniedError
from cloudkeep.machine.handlers import TaskContext
from cloudkeep.machine.tasks import TaskFailed, open_repository
from cloudkeep.protocol import RepositoryAccess
from cloudkeep.repo import Repository, backup_files, restore
from cloudkeep.repo.confidential import MANIFEST_MAGIC, WRAPPED_SIZE
from cloudkeep.repo.crypto import Crypter, MasterKey
from cloudkeep.repo.grants import restore_keys
from cloudkeep.repo.migrate import migrate_to_confidential
from cloudkeep.repo.pack import pack_key
from cloudkeep.repo.snapshot import SNAPSHOT_PREFIX, open_snapshot
from cloudkeep.repo.vouch import vouch_new_packs
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import JobSession, RestorePoint
from cloudkeep.server.db.models import Repository as RepositoryRow
from cloudkeep.server.jobs import start_job
from cloudkeep.server.jobs.health import start_health_check
from cloudkeep.server.restore import start_file_restore
from cloudkeep.server.sessions import access
from cloudkeep.server.sessions.access import RestoreGrant, agent_write_prefix, load_repository
from cloudkeep.server.sessions.commands import sealed_access

PASSWORD = "correct horse battery"  # build_world's


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    context.close()


def _server_repo(world: World) -> Repository:
    row = load_repository(world.ctx, world.repository_id)
    provider = world.ctx.provider_for(row.credential_id)
    try:
        return Repository.open(provider.storage.open_store(row.location), PASSWORD)
    finally:
        provider.close()


@pytest.fixture
def world(ctx: ServerContext, tmp_path: Path) -> World:
    world = build_world(ctx, tmp_path / "lab", machines=2)
    row = load_repository(ctx, world.repository_id)
    provider = ctx.provider_for(row.credential_id)
    try:
        store = provider.storage.open_store(row.location)
        Repository.create(store, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024, version=3).close()
        store.close()
    finally:
        provider.close()
    return world


def _machine(sealed: dict[str, Any]) -> Repository:
    """The repository as the machine's task handlers open it from a command's sealed access."""
    access = RepositoryAccess.model_validate(sealed)
    stand_in = SimpleNamespace(repository_access=lambda: access, refreshed_access=lambda: None, warnings=[])
    return open_repository(cast(TaskContext, stand_in))


def _tree(root: Path) -> Path:
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "payroll-secret.txt").write_bytes(b"salary of everyone: 12345\n" * 4000)
    (root / "a" / "random.bin").write_bytes(os.urandom(400 * 1024))
    (root / "b" / "other.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    return root


def test_compromised_machine_receives_no_key_that_opens_another_machines_backup(
    world: World, tmp_path: Path
) -> None:
    victim_id, attacker_id = world.machine_ids
    victim_access = sealed_access(world.ctx, world.repository_id, victim_id)
    received = sealed_access(world.ctx, world.repository_id, attacker_id)  # all machine A is sent
    assert "password" not in received and "password" not in victim_access
    fields = {"format", "config", "id_key", "shared_key", "public_key", "vouch_key", "writer_key"}
    assert set(received["writer"]) == fields
    # Its own index files' key (repo/writermac.py), never the victim's.
    assert received["writer"]["writer_key"] != victim_access["writer"]["writer_key"]
    source = _tree(tmp_path / "victim")
    snap = backup_files(_machine(victim_access), [source], hostname="victim", cache_dir=tmp_path / "c1")
    server = _server_repo(world)
    assert vouch_new_packs(server).vouched  # the server's step after the victim's job
    assert server.unauthenticated_index_files == {}  # the victim's index files carry its writer MAC

    attacker = _machine(received)
    second = backup_files(attacker, [source], hostname="attacker", cache_dir=tmp_path / "c2")
    assert second.stats["bytes_new"] < 4096  # dedup across machines still works (only its trees)
    victim_prefix = agent_write_prefix(victim_id)
    attacker.load_index()
    victim_packs = [p for p in attacker.index.packs if p.startswith(victim_prefix)]
    assert victim_packs
    keys = [attacker.keyring.shared.key.encryption, attacker.keyring.shared.key.id_key]
    keys += [attacker.keyring.keys.public_key] if attacker.keyring.keys else []
    keys += [attacker.writer_key] if attacker.writer_key else []
    for pack_id in victim_packs:
        entry = attacker.index.packs[pack_id][0]
        sealed = attacker.store.get_range(pack_key(pack_id), entry.offset, entry.length)
        with pytest.raises(PermissionDeniedError):  # data and tree blobs alike
            attacker.decode_blob(entry, pack_id, sealed)
        for key in keys:  # every key it received, tried directly on the blob
            with pytest.raises(IntegrityError):
                Crypter(MasterKey(key, key)).decode(sealed, b"cloudkeep-blob-v1:" + entry.type.encode()
                                                     + b":" + entry.id, "blob")  # fmt: skip
    with pytest.raises(PermissionDeniedError):  # the manifest: names, paths, root tree
        attacker.load_snapshot(snap.id)
    with pytest.raises(PermissionDeniedError):  # the tree, even knowing its id
        attacker.load_tree(bytes.fromhex(snap.tree))
    manifest = attacker.store.get(victim_prefix + SNAPSHOT_PREFIX + snap.id)
    body = manifest[len(MANIFEST_MAGIC) + WRAPPED_SIZE :]
    for key in keys:
        with pytest.raises(IntegrityError):
            open_snapshot(Crypter(MasterKey(key, key)), victim_prefix + SNAPSHOT_PREFIX + snap.id, body)
    assert _server_repo(world).load_snapshot(snap.id).hostname == "victim"  # the server reads it all


def test_restore_grant_covers_only_the_packs_the_restore_needs(
    ctx: ServerContext, world: World, tmp_path: Path
) -> None:
    owner_id, target_id = world.machine_ids
    source = _tree(tmp_path / "src")
    snap = backup_files(_machine(sealed_access(ctx, world.repository_id, owner_id)), [source], hostname="h")
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=owner_id, snapshot_id=snap.id,
                             mode="file", manifest_digest=snap.digest, root_tree=snap.tree)  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    fake = FakeDispatcher(ctx)
    wanted = str(source / "a")
    start_file_restore(ctx, point_id, paths=[wanted], target_machine_id=target_id, target_path="/r",
                       wait=True, dispatcher=fake)  # fmt: skip
    (command,) = fake.sent
    assert command.machine_id == target_id and command.sealed is not None
    assert "password" not in command.sealed
    server = _server_repo(world)
    granted = set(command.sealed["grants"])
    assert granted == set(restore_keys(server, snap.id, [wanted]))
    only_b = set(restore_keys(server, snap.id, [str(source / "b")])) - granted
    assert only_b and not granted & only_b  # the packs holding only b/'s data are not sent

    target = _machine(command.sealed)
    result = restore(target, snap.id, tmp_path / "out", paths=[wanted])
    assert result.ok, result.errors
    out = tmp_path / "out" / str(source).lstrip("/")
    assert (out / "a" / "random.bin").read_bytes() == (source / "a" / "random.bin").read_bytes()
    with pytest.raises(PermissionDeniedError):  # the rest of the restore point stays closed
        restore(target, snap.id, tmp_path / "more", paths=[str(source / "b")])


def test_restore_of_a_point_written_before_format_3_is_refused_before_sending(
    ctx: ServerContext, tmp_path: Path
) -> None:
    world = build_world(ctx, tmp_path / "lab2", machines=1)
    row = load_repository(ctx, world.repository_id)
    provider = ctx.provider_for(row.credential_id)
    store = provider.storage.open_store(row.location)
    provider.close()
    legacy = Repository.create(store, PASSWORD, kdf=FAST_KDF)  # format 2
    snap = backup_files(legacy, [_tree(tmp_path / "old")], hostname="h")
    assert migrate_to_confidential(legacy)
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=world.machine_ids[0],
                             snapshot_id=snap.id, mode="file", manifest_digest=snap.digest,
                             root_tree=snap.tree)  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    fake = FakeDispatcher(ctx)
    session_id = start_file_restore(ctx, point_id, paths=None, target_machine_id=None, target_path="/r",
                                    wait=True, dispatcher=fake)  # fmt: skip
    assert fake.sent == []  # no command, no password
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None and session.state == "failed"
        assert "written before the repository moved to format 3" in (session.reason or "")
    with pytest.raises(ConfigurationError, match="format 3"):
        sealed_access(ctx, world.repository_id, world.machine_ids[0], RestoreGrant(snap.id))


def test_a_jobs_own_password_still_sends_format_3_machines_only_a_writer_bundle(
    ctx: ServerContext, world: World
) -> None:
    server = _server_repo(world)
    server.add_password("job-password-123", kdf=FAST_KDF)
    sealed = ctx.secrets.seal("job-password-123").hex()
    with ctx.db() as db:  # the repository's own password would not open it: the job's must be used
        db.get(RepositoryRow, world.repository_id).password = ctx.secrets.seal("not the password")  # type: ignore[union-attr]
    job_id = world.add_job(options={"password_sealed": sealed})
    fake = FakeDispatcher(ctx)
    start_job(ctx, job_id, machine_ids=[world.machine_ids[0]], wait=True, dispatcher=fake)
    (backup,) = fake.kinds("backup")
    assert backup.sealed is not None and "password" not in backup.sealed
    # The bundle is the machine's own: with the key of its namespace's index files (repo/writermac.py).
    mine = server.writer_bundle(agent_write_prefix(world.machine_ids[0])).to_json()
    assert backup.sealed["writer"] == mine and "writer_key" in mine


def test_a_grant_too_large_for_one_command_travels_in_a_one_off_object(
    ctx: ServerContext, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(access, "GRANT_BUDGET", 10)  # as if the restore read thousands of packs
    owner_id = world.machine_ids[0]
    source = _tree(tmp_path / "src")
    snap = backup_files(_machine(sealed_access(ctx, world.repository_id, owner_id)), [source], hostname="h")
    with ctx.db() as db:
        point = RestorePoint(repository_id=world.repository_id, machine_id=owner_id, snapshot_id=snap.id,
                             mode="file", manifest_digest=snap.digest, root_tree=snap.tree)  # fmt: skip
        db.add(point)
        db.flush()
        point_id = point.id
    seen: list[str] = []

    class Agent(FakeDispatcher):
        """Restores like the agent does, while the command runs (the object goes when it ends)."""

        def wait(self, command_id: str, **kw: Any) -> dict[str, Any]:
            command = next(s for s in self.sent if s.command_id == command_id)
            assert command.sealed is not None and "grants" not in command.sealed
            seen.append(command.sealed["grants_object"])
            result = restore(_machine(command.sealed), snap.id, tmp_path / "out")
            assert result.ok, result.errors
            return super().wait(command_id, **kw)

    start_file_restore(ctx, point_id, paths=None, target_machine_id=None, target_path="/r", wait=True,
                       dispatcher=Agent(ctx))  # fmt: skip
    assert len(seen) == 1 and seen[0].startswith("grants/")
    out = tmp_path / "out" / str(source).lstrip("/")
    assert (out / "b" / "other.bin").read_bytes() == (source / "b" / "other.bin").read_bytes()
    server = _server_repo(world)
    assert not server.store.exists(seen[0])  # removed when the command ended
    sealed = sealed_access(ctx, world.repository_id, owner_id, RestoreGrant(snap.id))
    moved = sealed["grants_object"] + "-copy"
    server.store.put(moved, server.store.get(sealed["grants_object"]))
    with pytest.raises(TaskFailed, match="do not open"):  # bound to its name: a copy elsewhere does not open
        _machine({**sealed, "grants_object": moved})


def test_the_health_check_of_a_format_3_repository_runs_on_the_server(
    ctx: ServerContext, world: World, tmp_path: Path
) -> None:
    """No machine can read a format 3 repository whole: the server checks it, and sends nothing."""
    owner_id = world.machine_ids[0]
    source = _tree(tmp_path / "src")
    backup_files(_machine(sealed_access(ctx, world.repository_id, owner_id)), [source], hostname="h")
    fake, job_id = FakeDispatcher(ctx), world.add_job()
    healthy = start_health_check(ctx, job_id, read_data_subset="100%", wait=True, dispatcher=fake)
    repo = _server_repo(world)
    try:
        packs = [info.key for info in repo.store.list("") if "/data/" in f"/{info.key}"]
        assert packs
        repo.store.delete(packs[0])  # a lost pack: the check names it
    finally:
        repo.close()
    broken = start_health_check(ctx, job_id, wait=True, dispatcher=fake)
    assert fake.sent == []
    with ctx.db() as db:
        ok, bad = db.get(JobSession, healthy), db.get(JobSession, broken)
        assert ok is not None and bad is not None
        assert (ok.kind, ok.state, ok.reason) == ("check", "success", "repository healthy")
        assert (bad.kind, bad.state) == ("check", "failed"), bad.reason
