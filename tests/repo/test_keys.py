"""Repository creation, passwords and key files."""

from __future__ import annotations

import pytest

from cloudkeep.errors import AuthenticationError, ConflictError, IntegrityError, NotFoundError
from cloudkeep.repo import Repository
from cloudkeep.storage import ObjectStore
from tests.repo.conftest import FAST_KDF, PASSWORD


def test_create_then_open(store: ObjectStore) -> None:
    created = Repository.create(store, PASSWORD, kdf=FAST_KDF, pack_size=2**20, compression_level=5)
    opened = Repository.open(store, PASSWORD)
    assert opened.id == created.id
    assert opened.config.pack_size == 2**20 and opened.config.compression_level == 5
    assert opened.config.chunker.seed == created.config.chunker.seed != 0


def test_create_twice_conflicts(store: ObjectStore) -> None:
    Repository.create(store, PASSWORD, kdf=FAST_KDF)
    with pytest.raises(ConflictError, match="already holds"):
        Repository.create(store, PASSWORD, kdf=FAST_KDF)
    assert len(list(store.list("keys/"))) == 1


def test_wrong_password(store: ObjectStore) -> None:
    Repository.create(store, PASSWORD, kdf=FAST_KDF)
    with pytest.raises(AuthenticationError, match="wrong password"):
        Repository.open(store, "not it")


def test_open_uninitialised(store: ObjectStore) -> None:
    with pytest.raises(NotFoundError, match="not an initialised"):
        Repository.open(store, PASSWORD)


def test_several_passwords_and_change(store: ObjectStore) -> None:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    repo.add_password("second", kdf=FAST_KDF)
    assert Repository.open(store, "second").id == repo.id
    repo.change_password(PASSWORD, "third", kdf=FAST_KDF)
    with pytest.raises(AuthenticationError):
        Repository.open(store, PASSWORD)
    assert Repository.open(store, "third").id == repo.id
    assert Repository.open(store, "second").id == repo.id
    assert len(repo.key_names()) == 2


def test_change_password_needs_the_old_one(store: ObjectStore) -> None:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    with pytest.raises(AuthenticationError):
        repo.change_password("guess", "new", kdf=FAST_KDF)
    assert Repository.open(store, PASSWORD).id == repo.id


def test_nothing_stored_in_plaintext(store: ObjectStore, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from cloudkeep.repo import backup_files

    (tmp_path / "secret.txt").write_text("TOP-SECRET-MARKER " * 100)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    backup_files(repo, [tmp_path], hostname="h")
    for info in store.list():
        data = store.get(info.key)
        assert b"TOP-SECRET-MARKER" not in data and b"secret.txt" not in data, info.key


@pytest.mark.parametrize(
    "damage",
    [b"5;chunk-signature\r\n{...", b"[1, 2]", b'{"kdf": "scrypt"}', b'{"kdf": "scrypt", "n": 1024, '
     b'"r": 8, "p": 1, "salt": "***", "data": "AA"}'],
)  # fmt: skip
def test_damaged_key_file_is_damage_not_a_wrong_password(store: ObjectStore, damage: bytes) -> None:
    Repository.create(store, PASSWORD, kdf=FAST_KDF)
    (key,) = [info.key for info in store.list("keys/")]
    store.put(key, damage)
    with pytest.raises(IntegrityError, match="damaged") as raised:
        Repository.open(store, PASSWORD)
    assert "wrong password" not in raised.value.message


def test_wrong_password_names_damaged_key_files(store: ObjectStore) -> None:
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF)
    repo.add_password("second", kdf=FAST_KDF)
    damaged = sorted(info.key for info in store.list("keys/"))[0]
    store.put(damaged, b"not json")
    with pytest.raises(AuthenticationError, match="wrong password") as raised:
        Repository.open(store, "neither")
    assert damaged in str(raised.value) and "damaged" in str(raised.value)
