"""The runner hands agents credentials for ``writers/<machine id>/`` and the matching writer prefix.

Uses the real local storage service (its scoped credentials are enforced by the ``file://``
backend); the provider and repository row are plain namespaces because ``agent_access`` reads
only ``provider.storage`` and ``repository.location``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from tests.repo.conftest import FAST_KDF, PASSWORD

from cloudkeep.errors import ConfigurationError, PermissionDeniedError
from cloudkeep.protocol import RepositoryAccess
from cloudkeep.providers.local.storage import LocalStorageService
from cloudkeep.repo import Repository, backup_files, list_snapshots, prune
from cloudkeep.server.sessions.access import agent_access, agent_write_prefix
from cloudkeep.storage import open_store


def _access(tmp_path: Path, machine_id: str, **kwargs: Any) -> RepositoryAccess:
    service = LocalStorageService(tmp_path / "storage", b"k" * 32)
    provider = SimpleNamespace(storage=service)
    repository = SimpleNamespace(location="repo")
    raw = agent_access(provider, repository, machine_id, PASSWORD, **kwargs)  # type: ignore[arg-type]
    return RepositoryAccess.model_validate(raw)


def _open(access: RepositoryAccess) -> Repository:
    return Repository.open(
        open_store(access.store_url, **access.options), PASSWORD, writer_prefix=access.writer_prefix
    )


def test_compromised_machine_never_receives_the_full_credential(tmp_path: Path) -> None:
    """Agents write only their namespace and delete nothing; prune runs with the server's store."""
    (tmp_path / "storage" / "repo").mkdir(parents=True)
    Repository.create(open_store((tmp_path / "storage" / "repo").as_uri()), PASSWORD, kdf=FAST_KDF).close()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("same on both machines\n" * 1000)

    a, b = _access(tmp_path, "m1"), _access(tmp_path, "m2")
    assert a.writer_prefix == "writers/m1/" and a.options["write_prefix"] == "writers/m1/"
    snap_a = backup_files(_open(a), [tmp_path / "src"], hostname="m1", cache_dir=tmp_path / "c1")
    snap_b = backup_files(_open(b), [tmp_path / "src"], hostname="m2", cache_dir=tmp_path / "c2")
    assert {s.id for s in list_snapshots(_open(a))} == {snap_a.id, snap_b.id}
    with pytest.raises(PermissionDeniedError):
        open_store(a.store_url, **a.options).delete(f"writers/m2/snapshots/{snap_b.id}")
    with pytest.raises(PermissionDeniedError, match="full credential"):
        prune(_open(a))

    with pytest.raises(PermissionDeniedError):
        open_store(a.store_url, **a.options).delete(f"writers/m1/snapshots/{snap_a.id}")
    with pytest.raises(TypeError):
        _access(tmp_path, "m1", full_access=True)  # no code path hands a machine the full credential
    server = LocalStorageService(tmp_path / "storage", b"k" * 32).open_store("repo")
    prune(Repository.open(server, PASSWORD))  # the server's own credential may delete any writer's packs


@pytest.mark.parametrize("machine_id", ["", "a/b"])
def test_machine_ids_that_cannot_name_a_namespace(machine_id: str) -> None:
    with pytest.raises(ConfigurationError):
        agent_write_prefix(machine_id)
