"""A write the repository's store refuses fails the backup loudly, and loses nothing.

Each case: the backup raises ``RepositoryWriteError`` naming the store and the reason, commits no
restore point, leaves no session marker or staged pack behind, the repository still checks
clean, and once the fault is gone the next backup succeeds and deduplicates against what was
stored before.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cloudkeep.errors import RepositoryWriteError
from cloudkeep.repo import Repository, backup_files, check, list_snapshots
from cloudkeep.repo.pack import STAGING_PACK_PREFIX
from cloudkeep.storage import ObjectStore, open_store
from cloudkeep.storage.base import STAGING_PREFIX
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, write_tree
from tests.repo.faults import FaultyStore
from tests.storage.conftest import make_azure_container, make_s3_bucket
from tests.support.fault_proxy import FaultProxy
from tests.support.peers import AZURITE_ACCOUNT, Azurite
from tests.support.tmpfs import Tmpfs

BIG = 6 * 2**20


def _create(store: ObjectStore) -> Repository:
    return Repository.create(store, PASSWORD, kdf=FAST_KDF, chunker=SMALL_CHUNKS, pack_size=2**20)


def _left_behind(store: ObjectStore, root: Path | None = None) -> list[str]:
    """Session markers still there, and (for a folder) staged packs or half-written objects."""
    left = [info.key for info in store.list("sessions/")]
    if root is not None:
        left += [p.name for p in root.rglob("*") if p.name.startswith((STAGING_PREFIX, STAGING_PACK_PREFIX))]
    return left


def _assert_rerun_dedups(store: ObjectStore, source: Path, first_new: int, cache: Path) -> None:
    """After the fault: a backup succeeds, stores only the file added since the first, checks clean."""
    repo = Repository.open(store, PASSWORD)
    again = backup_files(repo, [source], hostname="h", cache_dir=cache)
    assert again.stats["errors_total"] == 0 and again.stats["files_unchanged"] >= 5
    assert again.stats["bytes_new"] <= BIG + 2**16 < BIG + first_new  # the first backup's data deduplicated
    report = check(Repository.open(store, PASSWORD), read_data=True)
    assert report.ok, report.problems
    assert len(list_snapshots(Repository.open(store, PASSWORD))) == 2


def test_disk_full_on_a_local_repository_fails_the_backup(tmpfs: Tmpfs, tmp_path: Path) -> None:
    """A real full file system (tmpfs): ENOSPC while the backup writes its packs."""
    tmpfs.resize("5m")
    root = tmpfs.path / "repo"
    store = open_store(root.as_uri(), fsync=False)
    source = write_tree(tmp_path / "src")
    first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
    (source / "big.bin").write_bytes(os.urandom(BIG))  # more than the file system has left

    with pytest.raises(RepositoryWriteError) as caught:
        backup_files(Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache")
    message = str(caught.value)
    assert message.startswith(f"repository write failed: file://{root}: ") and "no space left" in message
    assert [s.id for s in list_snapshots(Repository.open(store, PASSWORD))] == [first.id]
    assert _left_behind(store, root) == []  # the session ended, nothing staged stays
    assert check(Repository.open(store, PASSWORD)).ok

    tmpfs.resize("64m")  # space freed
    _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")


def test_read_only_repository_fails_before_anything_is_written(tmpfs: Tmpfs, tmp_path: Path) -> None:
    """A real read-only file system (EROFS): the backup's first write, its session marker, fails."""
    tmpfs.resize("64m")
    root = tmpfs.path / "repo"
    store = open_store(root.as_uri(), fsync=False)
    source = write_tree(tmp_path / "src")
    first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
    (source / "big.bin").write_bytes(os.urandom(BIG))
    before = sorted(info.key for info in store.list())

    tmpfs.read_only()
    with pytest.raises(RepositoryWriteError, match=r"write failed: file://.*access denied.*Read-only"):
        backup_files(Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache")
    tmpfs.read_only(False)
    assert sorted(info.key for info in store.list()) == before
    assert check(Repository.open(store, PASSWORD)).ok
    _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")


class _IoErrorStore(FaultyStore):
    """Wraps a real store; once ``failing``, writes of packs fail with EIO (an in-process stand-in:
    no peer returns EIO on demand). A raw ``OSError`` from a write must not pass for a file that
    could not be read."""

    scheme = "eio"

    def __init__(self, inner: ObjectStore) -> None:
        super().__init__(
            inner,
            fail_put=lambda key: self.failing and key.startswith("data/"),
            error=lambda key: OSError(errno.EIO, "Input/output error"),
        )
        self.failing = False


def test_raw_os_error_from_a_write_fails_the_backup_not_the_file(tmp_path: Path) -> None:
    inner = open_store(f"file://{tmp_path}/repo", fsync=False)
    store = _IoErrorStore(inner)
    source = write_tree(tmp_path / "src")
    first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
    (source / "big.bin").write_bytes(os.urandom(BIG))
    store.failing = True
    with pytest.raises(RepositoryWriteError, match=r"write failed: eio://: Input/output error \(EIO\)"):
        backup_files(Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache")
    assert [s.id for s in list_snapshots(Repository.open(inner, PASSWORD))] == [first.id]
    assert _left_behind(inner, tmp_path / "repo") == [] and check(Repository.open(inner, PASSWORD)).ok
    store.failing = False
    _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")


def test_staging_write_error_fails_the_backup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """EFBIG injected into the writes of a staged pack (in-process: no file system gives it on
    demand without limiting the whole test process). Before, any errno but ENOSPC/EACCES left
    the file 'unreadable' and the backup went on without it."""
    store = open_store(f"file://{tmp_path}/repo", fsync=False)
    source = write_tree(tmp_path / "src")
    first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
    (source / "big.bin").write_bytes(os.urandom(BIG))
    real_write = os.write

    def too_large(fd: int, data: bytes) -> int:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(STAGING_PACK_PREFIX):
            raise OSError(errno.EFBIG, "File too large")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", too_large)
    with pytest.raises(RepositoryWriteError, match=r"File too large \(EFBIG\)"):
        backup_files(Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache")
    monkeypatch.undo()
    assert _left_behind(store, tmp_path / "repo") == [] and check(Repository.open(store, PASSWORD)).ok
    _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (503, b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>", "ServiceUnavailable"),
        (403, b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>", "access denied"),
    ],
)
def test_s3_refusing_writes_fails_the_backup(
    aws_options: dict[str, str], unique_name: str, tmp_path: Path, status: int, body: bytes, reason: str
) -> None:
    """moto behind a loopback proxy that answers every PUT with an S3 error (after the client's
    retries), while reads still reach moto: a bucket that stopped accepting writes."""
    make_s3_bucket(aws_options, unique_name)
    proxy = FaultProxy(aws_options["endpoint_url"])
    try:
        options = {**aws_options, "endpoint_url": proxy.endpoint, "max_attempts": 2}
        store = open_store(f"s3://{unique_name}/repo", **options)
        source = write_tree(tmp_path / "src")
        first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
        (source / "big.bin").write_bytes(os.urandom(BIG))
        proxy.fail_method("PUT", status, body, {"Content-Type": "application/xml"})
        with pytest.raises(RepositoryWriteError, match=rf"write failed: s3://{unique_name}/repo: .*{reason}"):
            backup_files(
                Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache"
            )
        assert proxy.injected >= 1
        proxy.clear()
        assert [s.id for s in list_snapshots(Repository.open(store, PASSWORD))] == [first.id]
        assert check(Repository.open(store, PASSWORD)).ok
        _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")
    finally:
        proxy.close()


def test_azure_refusing_writes_fails_the_backup(
    azurite: Azurite, unique_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azurite behind the same proxy, every blob PUT answered 503 ServerBusy (after the SDK's retries)."""
    from azure.storage.blob._shared.policies import ExponentialRetry

    # The SDK still retries, without its 15 s (+-3) first back-off: the store takes no back-off option.
    monkeypatch.setattr(ExponentialRetry, "get_backoff_time", lambda self, settings: 0.0)
    make_azure_container(azurite, unique_name)
    proxy = FaultProxy(azurite.blob_endpoint)
    try:
        connection = azurite.connection_string.replace(
            f"BlobEndpoint={azurite.blob_endpoint};", f"BlobEndpoint={proxy.endpoint}/{AZURITE_ACCOUNT};"
        )
        store = open_store(f"azure://{unique_name}/repo", connection_string=connection, retry_total=1)
        source = write_tree(tmp_path / "src")
        first = backup_files(_create(store), [source], hostname="h", cache_dir=tmp_path / "cache")
        (source / "big.bin").write_bytes(os.urandom(BIG))
        busy = b"<?xml version='1.0'?><Error><Code>ServerBusy</Code><Message>busy</Message></Error>"
        proxy.fail_method(
            "PUT", 503, busy, {"Content-Type": "application/xml", "x-ms-error-code": "ServerBusy"}
        )
        with pytest.raises(
            RepositoryWriteError, match=rf"failed: azure://{unique_name}/repo: .* failed: ServerBusy: busy$"
        ):
            backup_files(
                Repository.open(store, PASSWORD), [source], hostname="h", cache_dir=tmp_path / "cache"
            )
        proxy.clear()
        assert [s.id for s in list_snapshots(Repository.open(store, PASSWORD))] == [first.id]
        assert check(Repository.open(store, PASSWORD)).ok
        _assert_rerun_dedups(store, source, first.stats["bytes_new"], tmp_path / "cache")
    finally:
        proxy.close()
