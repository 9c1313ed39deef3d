"""`cloudkeep repository migrate`: a format 2 repository moves to format 3 through the CLI (embedded
mode), then machines get writer bundles; old and new restore points both restore.

Machines are stood in for by ``tests/server/sessions/test_machine_keys._machine``: the repository
opened from a command's sealed access exactly as the agent's task handlers open it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.repo import Repository, Snapshot, backup_files, restore
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import Credential, DiscoveredMachine, ProtectionGroup, RestorePoint
from cloudkeep.server.db.models import Repository as RepositoryRow
from cloudkeep.server.restore import download_files, start_file_restore
from cloudkeep.server.sessions.access import RestoreGrant
from cloudkeep.server.sessions.commands import sealed_access
from tests.cli.test_cli_core import SECRET, Invoke, ok, run  # noqa: F401  (run is a fixture)
from tests.repo.conftest import FAST_KDF
from tests.server.jobs_fakes import FakeDispatcher
from tests.server.sessions.test_machine_keys import _machine, _tree

PASSWORD = "correct-horse-battery"


def _setup(run: Invoke, ctx: ServerContext, tmp_path: Path, *, init: bool) -> tuple[str, str]:  # noqa: F811
    """A local credential and repository ``main`` (``init``: created by the server) and one deployed
    machine; returns the repository's and the machine's ids."""
    ok(run("credential", "add", "lab", "--provider", "local", "--lab-dir", str(tmp_path / "lab"),
           "--secret", "api_key", input=f"{SECRET}\n"))  # fmt: skip
    if not init:  # a repository made before format 3 (format 2), attached as it is
        provider = ctx.provider_for(_credential_id(ctx))
        store = provider.storage.open_store("b")
        Repository.create(store, PASSWORD, kdf=FAST_KDF, pack_size=256 * 1024).close()
        provider.close()
    ok(run("repository", "add", "main", "--location", "b", "--credential", "lab", "--password-stdin",
           *([] if init else ["--no-init"]), input=f"{PASSWORD}\n"))  # fmt: skip
    with ctx.db() as db:
        repository = db.query(RepositoryRow).filter_by(name="main").one()
        dist = RepositoryRow(name="dist", purpose="distribution", credential_id=repository.credential_id,
                             location="dist")  # fmt: skip
        db.add(dist)
        db.flush()
        group = ProtectionGroup(
            name="g", credential_id=dist.credential_id, distribution_repository_id=dist.id
        )
        db.add(group)
        db.flush()
        machine = DiscoveredMachine(protection_group_id=group.id, cloud_id="vm-0", name="vm-0",
                                    platform="linux", status="deployed")  # fmt: skip
        db.add(machine)
        db.flush()
        return repository.id, machine.id


def _credential_id(ctx: ServerContext) -> str:
    with ctx.db() as db:
        return db.query(Credential).filter_by(name="lab").one().id


def _record(ctx: ServerContext, repository_id: str, machine_id: str, snap: Snapshot) -> str:
    with ctx.db() as db:
        point = RestorePoint(repository_id=repository_id, machine_id=machine_id, snapshot_id=snap.id,
                             mode="file", manifest_digest=snap.digest, root_tree=snap.tree)  # fmt: skip
        db.add(point)
        db.flush()
        return point.id


def test_new_repositories_are_format_3(run: Invoke, ctx: ServerContext, tmp_path: Path) -> None:  # noqa: F811
    repository_id, machine_id = _setup(run, ctx, tmp_path, init=True)
    access = sealed_access(ctx, repository_id, machine_id)
    assert "password" not in access and access["writer"]["format"] == 3
    again = json.loads(ok(run("repository", "migrate", "main", "--yes", "--json")))
    assert "already format 3" in again["detail"]


def test_migrate_a_format_2_repository_then_back_up_and_restore_old_and_new_points(
    run: Invoke,  # noqa: F811
    ctx: ServerContext,
    tmp_path: Path,
) -> None:
    repository_id, machine_id = _setup(run, ctx, tmp_path, init=False)
    before = sealed_access(ctx, repository_id, machine_id)
    assert before["password"] == PASSWORD and "writer" not in before  # format 2: as before
    source = _tree(tmp_path / "src")
    old = backup_files(_machine(before), [source], hostname="vm-0", cache_dir=tmp_path / "c1")
    old_point = _record(ctx, repository_id, machine_id, old)

    refused = run("repository", "migrate", "main", input="n\n")
    assert refused.exit_code != 0 and "format 3" in refused.output
    assert sealed_access(ctx, repository_id, machine_id).get("password") == PASSWORD  # nothing changed
    done = json.loads(ok(run("repository", "migrate", "main", "--yes", "--json")))
    assert "format 2 → 3" in done["detail"] and done["session_id"]
    assert "pack(s) vouched for" in done["detail"]  # machines keep deduplicating against old packs

    after = sealed_access(ctx, repository_id, machine_id)
    assert "password" not in after and after["writer"]["format"] == 3
    (source / "a" / "new.txt").write_text("written after the migration\n" * 100)
    new = backup_files(_machine(after), [source], hostname="vm-0", cache_dir=tmp_path / "c2")
    assert new.stats["bytes_new"] < 64 * 1024  # the old packs still deduplicate (index re-sealed)
    new_point = _record(ctx, repository_id, machine_id, new)

    # Through a machine: what the new point wrote after the migration (format 3 packs, granted)...
    fake = FakeDispatcher(ctx)
    wanted = str(source / "a" / "new.txt")
    start_file_restore(ctx, new_point, paths=[wanted], target_machine_id=None, target_path="/r", wait=True,
                       dispatcher=fake)  # fmt: skip
    (command,) = fake.sent
    assert command.sealed is not None and "password" not in command.sealed and command.sealed["grants"]
    result = restore(_machine(command.sealed), new.id, tmp_path / "via-machine", paths=[wanted])
    assert result.ok, result.errors
    assert (tmp_path / "via-machine" / wanted.lstrip("/")).read_text().startswith("written after")
    # ...while anything in packs written before it only the server opens: refused before sending,
    # and downloaded through the server instead.
    for snapshot_id in (old.id, new.id):
        with pytest.raises(ConfigurationError, match="before the repository moved to format 3"):
            sealed_access(ctx, repository_id, machine_id, RestoreGrant(snapshot_id))
    for point_id, name in ((old_point, "old"), (new_point, "new")):
        download_files(ctx, point_id, None, tmp_path / name)
    restored = tmp_path / "new" / str(source).lstrip("/")
    assert (restored / "a" / "new.txt").read_text() == (source / "a" / "new.txt").read_text()
    assert (restored / "a" / "random.bin").read_bytes() == (source / "a" / "random.bin").read_bytes()
    old_copy = tmp_path / "old" / str(source).lstrip("/")
    assert (old_copy / "b" / "other.bin").read_bytes() == (source / "b" / "other.bin").read_bytes()
    assert not (old_copy / "a" / "new.txt").exists()
