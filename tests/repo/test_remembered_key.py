"""The key file kept in the cache folder: its derivation starts before the store answers, and it
is used only while the store still lists it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cloudkeep.errors import AuthenticationError
from cloudkeep.repo import Repository
from cloudkeep.repo.keys import remembered_key
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD


def _key_gets(store: ObjectStore) -> list[str]:
    """Record the key files the store is asked for."""
    gets: list[str] = []
    inner = store.get

    def get(key: str, *a: Any, **k: Any) -> bytes:
        if key.startswith("keys/"):
            gets.append(key)
        return inner(key, *a, **k)

    store.get = get  # type: ignore[method-assign]
    return gets


def test_second_open_uses_the_remembered_key_file(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo = Repository.create(s3_store, PASSWORD, kdf=FAST_KDF)
    gets = _key_gets(s3_store)
    assert Repository.open(s3_store, PASSWORD, cache_dir=tmp_path).id == repo.id
    assert len(gets) == 1
    path = remembered_key(s3_store, tmp_path)
    assert path is not None and path.is_file()
    assert Repository.open(s3_store, PASSWORD, cache_dir=tmp_path).id == repo.id
    assert len(gets) == 1  # opened from the copy: no key file fetched


def test_the_key_file_a_repository_is_created_with_is_remembered(
    s3_store: ObjectStore, tmp_path: Path
) -> None:
    """Created with a cache folder, the first open is already a second one: no key file fetched."""
    repo = Repository.create(s3_store, PASSWORD, kdf=FAST_KDF, cache_dir=tmp_path)
    path = remembered_key(s3_store, tmp_path)
    assert path is not None and path.is_file()
    gets = _key_gets(s3_store)
    assert Repository.open(s3_store, PASSWORD, cache_dir=tmp_path).id == repo.id
    assert gets == []
    with pytest.raises(AuthenticationError):  # the copy opens for its own password only
        Repository.open(s3_store, "another", cache_dir=tmp_path)


def test_a_deleted_key_file_is_not_used(s3_store: ObjectStore, tmp_path: Path) -> None:
    repo = Repository.create(s3_store, PASSWORD, kdf=FAST_KDF)
    Repository.open(s3_store, PASSWORD, cache_dir=tmp_path)
    repo.change_password(PASSWORD, "new", kdf=FAST_KDF)  # deletes the remembered key file
    with pytest.raises(AuthenticationError):
        Repository.open(s3_store, PASSWORD, cache_dir=tmp_path)
    assert Repository.open(s3_store, "new", cache_dir=tmp_path).id == repo.id
    gets = _key_gets(s3_store)
    assert Repository.open(s3_store, "new", cache_dir=tmp_path).id == repo.id
    assert gets == []  # the new key file is the one remembered now


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"key": "keys/x", "file": "{}"}'])
def test_a_damaged_copy_falls_back_to_the_store(
    s3_store: ObjectStore, tmp_path: Path, content: bytes
) -> None:
    repo = Repository.create(s3_store, PASSWORD, kdf=FAST_KDF)
    path = remembered_key(s3_store, tmp_path)
    assert path is not None
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert Repository.open(s3_store, PASSWORD, cache_dir=tmp_path).id == repo.id
    assert path.read_bytes() != content  # replaced by the key file that opened


def test_local_stores_keep_no_copy(tmp_path: Path) -> None:
    store = open_store((tmp_path / "repo").as_uri())
    Repository.create(store, PASSWORD, kdf=FAST_KDF)
    Repository.open(store, PASSWORD, cache_dir=tmp_path / "cache")
    assert remembered_key(store, tmp_path / "cache") is None
    assert not (tmp_path / "cache" / "keys").exists()
