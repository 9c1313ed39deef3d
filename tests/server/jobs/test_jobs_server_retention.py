"""Retention on the server (``ServerMaintenance``): forget with the repository's own credential,
prune at most once per run, a busy repository skipped. Real local repository, real agents'
(append-only) credentials for the backups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.local.storage import LocalStorageService
from cloudkeep.repo import Repository, backup_files, list_snapshots
from cloudkeep.repo.lock import maintenance_lock
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.server.jobs.retention import ServerMaintenance
from cloudkeep.server.sessions.access import agent_write_prefix


@pytest.fixture
def service(tmp_path: Path) -> LocalStorageService:
    service = LocalStorageService(tmp_path / "storage", b"k" * 32)
    service.ensure_container("repo")
    Repository.create(service.open_store("repo"), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS).close()
    return service


def _backup(service: LocalStorageService, machine: str, source: Path, hostname: str) -> str:
    prefix = agent_write_prefix(machine)
    store = service.scoped_credentials("repo", prefix, expires_seconds=60).open_store()
    return backup_files(
        Repository.open(store, PASSWORD, writer_prefix=prefix), [source], hostname=hostname
    ).id


def test_compromised_machine_cannot_forget_but_the_server_does_and_prunes_once(
    service: LocalStorageService, tmp_path: Path
) -> None:
    old = _backup(service, "m1", write_tree(tmp_path / "a"), "m1-job")
    new = _backup(service, "m1", write_tree(tmp_path / "b", seed=3), "m1-job")
    other = _backup(service, "m2", write_tree(tmp_path / "c", seed=4), "m2-job")
    agent = service.scoped_credentials("repo", "writers/m1/", expires_seconds=60).open_store()
    with pytest.raises(PermissionDeniedError):
        agent.delete(f"writers/m1/snapshots/{old}")  # the agent cannot forget its own point

    maintenance = ServerMaintenance(SimpleNamespace(storage=service), "repo", PASSWORD)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    with pytest.raises(PermissionDeniedError):  # the machine's namespace and backup set only
        maintenance.forget("m1", [other], hostname="m2-job", now=now)
    assert maintenance.forget("m1", [old], hostname="m1-job", now=now).removed == [old]
    first = maintenance.prune_once(now)
    assert first is not None and first.packs_marked > 0  # the forgotten point's data is marked
    assert maintenance.prune_once(now) is None  # once per run
    maintenance.close()
    full = Repository.open(service.open_store("repo"), PASSWORD)
    assert {s.id for s in list_snapshots(full)} == {new, other}


def test_nothing_forgotten_means_no_prune_and_a_busy_repository_is_skipped(
    service: LocalStorageService, tmp_path: Path
) -> None:
    old = _backup(service, "m1", write_tree(tmp_path / "a"), "m1-job")
    maintenance = ServerMaintenance(SimpleNamespace(storage=service), "repo", PASSWORD)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    assert maintenance.prune_once(now) is None
    maintenance.forget("m1", [old], hostname="m1-job", now=now)
    with maintenance_lock(
        Repository.open(service.open_store("repo"), PASSWORD),
        "another run's prune",
        now=now,
        grace=timedelta(hours=1),
    ):
        assert maintenance.prune_once(now) is None  # skipped, not failed
    maintenance.close()


def test_compromised_machine_forged_pack_is_not_vouched_and_the_server_names_it(tmp_path: Path) -> None:
    """Format 3, agents' real append-only credentials: the step after a job reads each new pack
    once, vouches for the honest machine's and refuses the forging one's, naming its writer."""
    service = LocalStorageService(tmp_path / "storage", b"k" * 32)
    service.ensure_container("repo")
    server = Repository.create(
        service.open_store("repo"), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, version=3
    )
    bundle = server.writer_bundle()

    def agent(machine: str) -> Repository:
        prefix = agent_write_prefix(machine)
        store = service.scoped_credentials("repo", prefix, expires_seconds=60).open_store()
        return Repository.open_writer(store, bundle, writer_prefix=prefix)

    backup_files(agent("m1"), [write_tree(tmp_path / "a")], hostname="m1")
    evil = agent("m2")
    with BlobWriter(evil, hostname="m2") as writer:
        writer.save("data", b"other bytes", evil.crypter.content_id(b"a guessed common file"))
        writer.close()
    maintenance = ServerMaintenance(SimpleNamespace(storage=service), "repo", PASSWORD)  # type: ignore[arg-type]
    result = maintenance.vouch()
    assert result is not None and result.refused_writers == ["writers/m2/"]
    assert result.vouched and all(p.startswith("writers/m1/") for p in result.vouched)
    assert result.bytes_read > 0
    again = maintenance.vouch()  # idempotent: only the refused pack is read again
    assert again is not None and again.vouched == [] and list(again.refused) == list(result.refused)
    maintenance.close()
