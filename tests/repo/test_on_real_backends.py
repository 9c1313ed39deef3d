"""The engine end to end on each real backend: local folder, S3 (moto server) and Azure (Azurite)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cloudkeep.repo import (
    Repository,
    RetentionPolicy,
    backup_files,
    check,
    forget,
    forget_snapshots,
    list_snapshots,
    prune,
    restore,
)
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored
from tests.storage.conftest import make_azure_container, make_s3_bucket


@pytest.fixture(params=["file", "s3", "azure"])
def real_store(request: pytest.FixtureRequest, tmp_path: Path, unique_name: str) -> ObjectStore:
    if request.param == "file":
        return open_store(f"file://{tmp_path}/repo")
    if request.param == "s3":
        aws = request.getfixturevalue("aws_options")
        make_s3_bucket(aws, unique_name, lock=True)
        return open_store(f"s3://{unique_name}/backups", **aws)
    azurite = request.getfixturevalue("azurite")
    make_azure_container(azurite, unique_name)
    return open_store(f"azure://{unique_name}/backups", connection_string=azurite.connection_string)


def test_backup_restore_check_prune(real_store: ObjectStore, source: Path, tmp_path: Path) -> None:
    repo = Repository.create(real_store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    first = backup_files(repo, [source], hostname="h", cache_dir=tmp_path / "cache")
    (source / "docs" / "readme.txt").write_text("changed\n")
    second = backup_files(repo, [source], hostname="h", cache_dir=tmp_path / "cache")
    assert second.stats["files_unchanged"] == 5
    repo = Repository.open(real_store, PASSWORD)
    assert [s.id for s in list_snapshots(repo)] == [first.id, second.id]
    restore(repo, second.id, tmp_path / "out")
    diff = subprocess.run(
        ["diff", "-r", "--no-dereference", str(source), str(restored(tmp_path / "out", source))]
    )
    assert diff.returncode == 0
    forget(repo, RetentionPolicy(keep_last=1))
    now = datetime.now(UTC)
    prune(repo, now=now)
    prune(repo, now=now + timedelta(hours=2))
    report = check(Repository.open(real_store, PASSWORD), read_data=True)
    assert report.ok, report.problems


def test_s3_object_lock_protects_restore_points(
    aws_options: dict[str, str], unique_name: str, source: Path
) -> None:
    make_s3_bucket(aws_options, unique_name, lock=True)
    store = open_store(f"s3://{unique_name}", object_lock_mode="GOVERNANCE", **aws_options)
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    until = datetime.now(UTC) + timedelta(days=3)
    snap = backup_files(repo, [source], hostname="h", retain_until=until)
    info = store.stat(f"snapshots/{snap.id}")
    assert info is not None and info.retain_until is not None
    assert all(i.retain_until is not None for i in store.list("data/") for i in [store.stat(i.key)])
    assert forget_snapshots(repo, [snap.id], now=until - timedelta(days=1)).removed == []
    now = datetime.now(UTC)
    prune(repo, now=now)
    prune(repo, now=now + timedelta(hours=2))
    assert check(Repository.open(store, PASSWORD), read_data=True).ok


@pytest.mark.parametrize("backend", ["memory", "s3"])
def test_locked_backup_extends_the_lock_of_packs_it_reuses(
    backend: str, request: pytest.FixtureRequest, unique_name: str, source: Path, tmp_path: Path
) -> None:
    """Day 2's restore point (locked 30 days) reuses day 1's chunks (locked 1 day): those packs must
    stay locked as long as day 2 needs them, including chunks of files the cache skipped."""
    if backend == "s3":
        aws = request.getfixturevalue("aws_options")
        make_s3_bucket(aws, unique_name, lock=True)
        store = open_store(f"s3://{unique_name}", **aws)
    else:
        store = open_store(f"memory://{unique_name}")
    repo = Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)
    day1, day2 = datetime.now(UTC) + timedelta(days=1), datetime.now(UTC) + timedelta(days=30)
    backup_files(repo, [source], hostname="h", retain_until=day1, cache_dir=tmp_path / "cache")
    first_packs = [i.key for i in store.list("data/")]
    (source / "docs" / "readme.txt").write_text("changed on day 2\n")
    second = backup_files(repo, [source], hostname="h", retain_until=day2, cache_dir=tmp_path / "cache")
    assert second.stats["files_unchanged"] == 5  # most chunks come from the cache, not a re-read
    for key in first_packs:
        until = store.stat(key).retain_until  # type: ignore[union-attr]
        assert until is not None and until >= day2 - timedelta(seconds=2), key
    unlocked = Repository.create(
        open_store(f"memory://{unique_name}-plain"), PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS
    )
    backup_files(unlocked, [source], hostname="h")
    backup_files(unlocked, [source], hostname="h")  # no retention asked: nothing is locked
    assert all(i.retain_until is None for i in unlocked.store.list("data/"))
