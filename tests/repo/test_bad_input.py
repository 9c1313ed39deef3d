"""Bad input and broken environments: each a clear cloudkeep error, the repository left intact."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import pytest

from cloudkeep.errors import (
    InsufficientSpaceError,
    PermissionDeniedError,
    RepositoryWriteError,
    UnreachableError,
)
from cloudkeep.repo import Repository, backup_files, cat_file, check, list_snapshots, restore, restore_volume
from cloudkeep.repo.volume import backup_volume
from cloudkeep.storage import open_store
from tests.repo.conftest import FAST_KDF, PASSWORD
from tests.support.peers import free_port


def test_storage_unreachable_on_open() -> None:
    store = open_store(
        "s3://bucket",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        aws_access_key_id="a",
        aws_secret_access_key="b",
        max_attempts=1,
        connect_timeout=1,
    )
    with pytest.raises(UnreachableError, match="cannot reach"):
        Repository.open(store, PASSWORD)


def test_permission_denied_leaves_no_restore_point(tmp_path: Path) -> None:
    """Credentials that may write data but not manifests (file store's write_prefix stand-in)."""
    url = f"file://{tmp_path}/repo"
    Repository.create(open_store(url, fsync=False), PASSWORD, kdf=FAST_KDF)
    limited = Repository.open(open_store(url, fsync=False, write_prefix="data/"), PASSWORD)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("x")
    with pytest.raises(RepositoryWriteError, match=r"write failed: file://.*access denied for put"):
        backup_files(limited, [tmp_path / "src"], hostname="h")
    full = Repository.open(open_store(url, fsync=False), PASSWORD)
    assert list_snapshots(full) == [] and check(full).ok


def test_disk_full_while_streaming(repo: Repository, tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(100_000))
    snap = backup_files(repo, [tmp_path / "src"], hostname="h")
    with (
        open("/dev/full", "wb", buffering=0) as full,
        pytest.raises(InsufficientSpaceError, match="no space"),
    ):
        cat_file(repo, snap.id, f"{tmp_path}/src/f", full)  # type: ignore[arg-type]
    assert check(repo, read_data=True).ok


def test_disk_full_on_restore(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC injected into pwrite (in-process: filling a real disk would hurt the shared machine)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(os.urandom(100_000))
    snap = backup_files(repo, [tmp_path / "src"], hostname="h")

    def no_space(fd: int, data: object, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", no_space)
    with pytest.raises(InsufficientSpaceError, match="no space left"):
        restore(repo, snap.id, tmp_path / "out")
    monkeypatch.undo()
    assert check(repo, read_data=True).ok
    restore(repo, snap.id, tmp_path / "out")
    assert (tmp_path / "out" / str(tmp_path).lstrip("/") / "src" / "f").stat().st_size == 100_000


def test_volume_restore_to_full_device(repo: Repository, tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(2**20))
    snap = backup_volume(repo, image, hostname="h")
    with pytest.raises((InsufficientSpaceError, PermissionDeniedError)):
        restore_volume(repo, snap.id, Path("/dev/full"))
    assert check(repo).ok


def test_cat_file_of_missing_snapshot(repo: Repository) -> None:
    from cloudkeep.errors import NotFoundError

    with pytest.raises(NotFoundError, match="does not exist"):
        cat_file(repo, "deadbeef", "/x", io.BytesIO())
