"""An agent's local credentials are create-only (docs/security.md): the local stand-in for an
Azure SAS with ``rlc`` and an S3 session policy without ``DeleteObject``. The repository is a real
folder; nothing here is a fake."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.local import LocalProvider
from cloudkeep.repo import Repository, backup_files, check, list_snapshots
from cloudkeep.storage import ObjectExistsError
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree

A, B = "writers/machine-a/", "writers/machine-b/"


def test_compromised_machine_cannot_delete_or_overwrite_locally(
    local_provider: LocalProvider, tmp_path: Path
) -> None:
    storage = local_provider.storage
    storage.ensure_container("repo")
    full = storage.open_store("repo")
    Repository.create(full, PASSWORD, pack_size=256 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    other = backup_files(
        Repository.open(storage.scoped_credentials("repo", B, expires_seconds=60).open_store(), PASSWORD,
                        writer_prefix=B),
        [write_tree(tmp_path / "b", seed=2)], hostname="b",
    )  # fmt: skip
    creds = storage.scoped_credentials("repo", A, expires_seconds=60)
    assert creds.options == {"write_prefix": A, "append_only": True}
    agent = creds.open_store()
    mine = backup_files(
        Repository.open(agent, PASSWORD, writer_prefix=A), [write_tree(tmp_path / "a")], hostname="a"
    )

    victims = [
        info.key for info in full.list("") if info.key.startswith((A, B)) and "/sessions/" not in info.key
    ]
    assert any("/data/" in k for k in victims) and any("/index/" in k for k in victims)
    assert any(k.endswith(mine.id) for k in victims) and any(k.endswith(other.id) for k in victims)
    before = {key: full.get(key) for key in victims}
    for key in victims:
        with pytest.raises(PermissionDeniedError):
            agent.delete(key)
        if key.startswith(A):
            with pytest.raises(PermissionDeniedError):
                agent.put(key, b"rewritten")
            with pytest.raises(ObjectExistsError):
                agent.put(key, b"rewritten", if_absent=True)
        else:
            with pytest.raises(PermissionDeniedError):
                agent.put(key, b"rewritten")
    assert {key: full.get(key) for key in victims} == before
    repo = Repository.open(full, PASSWORD)
    assert {s.id for s in list_snapshots(repo)} == {mine.id, other.id}
    assert check(repo, read_data=True).ok


def test_the_full_credential_is_not_append_only(local_provider: LocalProvider) -> None:
    """Only the server's own store (prune, forget) deletes."""
    local_provider.storage.ensure_container("repo")
    creds = local_provider.storage.scoped_credentials("repo", "", expires_seconds=60)
    assert "append_only" not in creds.options
    store = local_provider.storage.open_store("repo")
    store.put("x", b"1")
    store.put("x", b"2")
    store.delete("x")
    assert store.stat("x") is None
