"""Per-writer namespaces: each machine writes only ``writers/<id>/``, reads (and dedups against) all.

Local folders enforce the prefix (``write_prefix``: the local provider's scoped credentials), so
there a successful scoped backup proves nothing was written outside it. moto does not enforce IAM
session policies and an Azure container SAS is container-wide, so on S3 and Azurite the tests
assert the object keys instead.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.errors import ConfigurationError, PermissionDeniedError, RepositoryWriteError
from cloudkeep.repo import (
    Repository,
    RetentionPolicy,
    backup_files,
    check,
    forget,
    list_snapshots,
    prune,
    restore,
)
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored
from tests.storage.conftest import make_azure_container, make_s3_bucket

A, B = "writers/machine-a/", "writers/machine-b/"
ROOT_KEYS = ("config", "keys/", "confidential")


@pytest.fixture(params=["file", "s3", "azure"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> Iterator[ObjectStore]:
    if request.param == "file":
        opened = open_store(f"file://{tmp_path}/repo", fsync=False)
    elif request.param == "s3":
        aws = request.getfixturevalue("aws_options")
        make_s3_bucket(aws, unique_name)
        opened = open_store(f"s3://{unique_name}/backups", **aws)
    else:
        azurite = request.getfixturevalue("azurite")
        make_azure_container(azurite, unique_name)
        opened = open_store(f"azure://{unique_name}/backups", connection_string=azurite.connection_string)
    yield opened
    opened.close()


class ListSpy:
    """Records every ``list`` prefix (an in-process wrapper: there is no peer that reports listings)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store
        self.listed: list[str] = []

    def list(self, prefix: str = "") -> Any:
        self.listed.append(prefix)
        return self._store.list(prefix)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def _create(store: ObjectStore) -> Repository:
    return Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)


def _same(source: Path, target: Path) -> bool:
    diff = subprocess.run(["diff", "-r", "--no-dereference", str(source), str(restored(target, source))])
    return diff.returncode == 0


def test_list_folders_is_one_level(real_store: ObjectStore) -> None:
    for key in (
        "writers/a/data/ab/x",
        "writers/a/index/1",
        "writers/b/snapshots/s",
        "writers/file",
        "other/x",
    ):
        real_store.put(key, b"x")
    assert tuple(real_store.list_folders("writers/")) == ("writers/a/", "writers/b/")
    assert tuple(real_store.list_folders("nothing/")) == ()


def test_two_writers_dedup_and_keep_to_their_prefix(
    real_store: ObjectStore, source: Path, tmp_path: Path
) -> None:
    _create(real_store).close()
    spy = ListSpy(real_store)
    repo_a = Repository.open(spy, PASSWORD, writer_prefix=A)  # type: ignore[arg-type]
    first = backup_files(repo_a, [source], hostname="a", cache_dir=tmp_path / "cache-a")
    assert not [p for p in spy.listed if "data/" in p], spy.listed  # a backup never lists packs
    repo_b = Repository.open(real_store, PASSWORD, writer_prefix=B)
    second = backup_files(repo_b, [source], hostname="b", cache_dir=tmp_path / "cache-b")
    assert first.stats["bytes_uploaded"] > 2 * 2**20
    assert second.stats["bytes_new"] < 16 * 1024  # no data chunk again (A stored them all); trees may differ
    assert second.stats["bytes_uploaded"] < first.stats["bytes_uploaded"] / 10

    keys = [info.key for info in real_store.list()]
    assert all(k.startswith((A, B, *ROOT_KEYS)) for k in keys), keys
    assert any(k.startswith(A + "data/") for k in keys) and any(k.startswith(A + "index/") for k in keys)
    assert A + "snapshots/" + first.id in keys and B + "snapshots/" + second.id in keys
    assert not any(k.startswith((A + "sessions/", B + "sessions/")) for k in keys)  # markers removed

    full = Repository.open(real_store, PASSWORD)
    assert {s.id for s in list_snapshots(full)} == {first.id, second.id}
    restore(full, second.id, tmp_path / "out")
    assert _same(source, tmp_path / "out")
    assert check(full, read_data=True).ok


def test_forget_removes_only_own_and_prune_needs_full_access(
    real_store: ObjectStore, source: Path, tmp_path: Path
) -> None:
    _create(real_store).close()
    repo_a = Repository.open(real_store, PASSWORD, writer_prefix=A)
    repo_b = Repository.open(real_store, PASSWORD, writer_prefix=B)
    a1 = backup_files(repo_a, [source], hostname="h", cache_dir=tmp_path / "ca")
    b1 = backup_files(repo_b, [source], hostname="h", cache_dir=tmp_path / "cb")
    (source / "docs" / "readme.txt").write_text("changed\n")
    a2 = backup_files(repo_a, [source], hostname="h", cache_dir=tmp_path / "ca")

    # Same hostname and paths for both writers: a root-layout forget would drop b1 too.
    result = forget(repo_a, RetentionPolicy(keep_last=1))
    assert result.removed == [a1.id]
    assert {s.id for s in list_snapshots(repo_b)} == {b1.id, a2.id}

    before = sorted(info.key for info in real_store.list())
    with pytest.raises(PermissionDeniedError, match="full credential"):
        prune(repo_a)
    assert sorted(info.key for info in real_store.list()) == before  # refused before doing anything

    full = Repository.open(real_store, PASSWORD)
    now = datetime.now(UTC)
    prune(full, now=now)
    prune(full, now=now + timedelta(hours=2))
    report = check(Repository.open(real_store, PASSWORD), read_data=True)
    assert report.ok, report.problems
    restore(Repository.open(real_store, PASSWORD, writer_prefix=B), b1.id, tmp_path / "out")
    assert (restored(tmp_path / "out", source) / "blob.bin").read_bytes() == (
        source / "blob.bin"
    ).read_bytes()


def test_local_scoped_credentials_cannot_touch_another_writer(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    _create(open_store(f"file://{root}", fsync=False)).close()
    store_a = open_store(f"file://{root}", write_prefix=A, fsync=False)
    store_b = open_store(f"file://{root}", write_prefix=B, fsync=False)
    # Both backups succeed with credentials that refuse any write outside the writer's prefix.
    backup_files(Repository.open(store_a, PASSWORD, writer_prefix=A), [source], cache_dir=tmp_path / "ca")
    b_snap = backup_files(
        Repository.open(store_b, PASSWORD, writer_prefix=B), [source], cache_dir=tmp_path / "cb"
    )

    with pytest.raises(PermissionDeniedError):
        store_a.delete(B + "snapshots/" + b_snap.id)
    with pytest.raises(PermissionDeniedError):
        store_a.put(B + "snapshots/" + "0" * 64, b"forged")
    assert b_snap.id in {s.id for s in list_snapshots(Repository.open(store_a, PASSWORD, writer_prefix=A))}
    # A writer that is not scoped (root layout) cannot write with these credentials at all.
    with pytest.raises(RepositoryWriteError, match="access denied for put"):
        backup_files(Repository.open(store_a, PASSWORD), [source], cache_dir=tmp_path / "cx")


def test_old_layout_stays_readable_and_deduplicated(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    full_store = open_store(f"file://{root}", fsync=False)
    old = backup_files(_create(full_store), [source], hostname="old", cache_dir=tmp_path / "c0")
    assert any(info.key.startswith("data/") for info in full_store.list("data/"))

    scoped = Repository.open(
        open_store(f"file://{root}", write_prefix=A, fsync=False), PASSWORD, writer_prefix=A
    )
    assert scoped.load_snapshot(old.id[:8]).id == old.id
    new = backup_files(scoped, [source], hostname="new", cache_dir=tmp_path / "c1")
    assert new.stats["bytes_new"] < 16 * 1024  # deduplicated against the root layout's packs
    restore(scoped, old.id, tmp_path / "out")
    assert _same(source, tmp_path / "out")

    full = Repository.open(full_store, PASSWORD)
    forget(full, RetentionPolicy(keep_last=1), hostname="old")  # keeps old: one per host
    now = datetime.now(UTC)
    prune(full, now=now)
    prune(full, now=now + timedelta(hours=2))
    assert check(Repository.open(full_store, PASSWORD), read_data=True).ok


@pytest.mark.parametrize("prefix", ["machine-a/", "writers/", "writers/a/b/", "writers/a", "data/"])
def test_bad_writer_prefix(store: ObjectStore, prefix: str) -> None:
    _create(store).close()
    with pytest.raises(ConfigurationError, match="writers/<name>/"):
        Repository.open(store, PASSWORD, writer_prefix=prefix)
