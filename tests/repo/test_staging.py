"""Packs staged on disk, and the reusable-buffer chunker that feeds them.

A backup stages each pack in a file (the repository's own folder for a local repository, a
private temp folder otherwise) and hands it to ``ObjectStore.put_file``. These tests check that
nothing staged outlives a backup, finished or failed, and that staging failures are clear.
"""

from __future__ import annotations

import errno
import io
import os
import random
import tempfile
import time
from pathlib import Path

import pytest

from cloudkeep.errors import (
    PermissionDeniedError,
    RepositoryWriteError,
)
from cloudkeep.repo import BackupProgress, Repository, backup_files, check, list_snapshots, restore
from cloudkeep.repo.chunker import ChunkerParams, StreamCutter
from cloudkeep.repo.pack import STAGING_PACK_PREFIX, private_staging_dir, sweep_stale_staging
from cloudkeep.storage import ObjectStore, open_store
from tests.repo.conftest import FAST_KDF, PASSWORD, SMALL_CHUNKS, restored, write_tree
from tests.repo.faults import FaultyStore


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private system temp folder, so staging here never meets other processes' files."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def staged_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(f"{STAGING_PACK_PREFIX}*")]


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir(parents=True)
    for n in range(4):
        (src / f"f{n}").write_bytes(random.Random(n).randbytes(700_000))
    return src


def test_remote_store_stages_in_private_temp_and_leaves_nothing(
    repo: Repository, temp_root: Path, tmp_path: Path
) -> None:
    src = source(tmp_path)
    snap = backup_files(repo, [src], hostname="h")
    staging = Path(private_staging_dir())
    assert staging.parent == temp_root and staging.stat().st_mode & 0o777 == 0o700
    assert snap.stats["bytes_uploaded"] > 0 and staged_files(temp_root) == []
    restore(repo, snap.id, tmp_path / "out")
    for n in range(4):
        assert (restored(tmp_path / "out", src) / f"f{n}").read_bytes() == (src / f"f{n}").read_bytes()


def test_local_repository_renames_staged_packs_into_place(tmp_path: Path, temp_root: Path) -> None:
    store = open_store(f"file://{tmp_path}/repo", fsync=False)
    repo = Repository.create(store, PASSWORD, pack_size=512 * 1024, kdf=FAST_KDF, chunker=SMALL_CHUNKS)
    snap = backup_files(repo, [write_tree(tmp_path / "src")], hostname="h")
    assert snap.stats["bytes_uploaded"] > 0
    assert staged_files(tmp_path / "repo") == [] and staged_files(temp_root) == []
    assert check(repo, read_data=True).ok


def test_failed_upload_removes_every_staged_pack(
    repo: Repository, store: ObjectStore, temp_root: Path, tmp_path: Path
) -> None:
    src = source(tmp_path)
    uploads: list[str] = []

    def fail_third_pack(key: str) -> bool:
        uploads.append(key)
        return key.startswith("data/") and len([k for k in uploads if k.startswith("data/")]) >= 3

    broken = Repository.open(FaultyStore(store, fail_put=fail_third_pack), PASSWORD)
    with pytest.raises(RepositoryWriteError, match="repository write failed: faulty://: injected"):
        backup_files(broken, [src], hostname="h")
    assert staged_files(temp_root) == []
    assert list_snapshots(repo) == [] and check(Repository.open(store, PASSWORD)).ok


def test_disk_full_while_staging_is_clear_and_harmless(
    repo: Repository, store: ObjectStore, temp_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC injected into os.write (in-process: filling a real disk would hurt the shared machine)."""
    src = source(tmp_path)
    real_write = os.write

    def no_space(fd: int, data: bytes) -> int:
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(STAGING_PACK_PREFIX):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", no_space)
    with pytest.raises(RepositoryWriteError, match="no space left to stage a pack") as caught:
        backup_files(repo, [src], hostname="h")
    assert "TMPDIR" in (caught.value.hint or "")
    monkeypatch.undo()
    assert staged_files(temp_root) == [] and list_snapshots(repo) == []
    snap = backup_files(Repository.open(store, PASSWORD), [src], hostname="h")  # nothing was lost
    assert check(Repository.open(store, PASSWORD), read_data=True).ok and snap.stats["files"] == 4


def test_shared_staging_folder_is_refused(repo: Repository, temp_root: Path, tmp_path: Path) -> None:
    """Another local user must not be able to swap a staged pack before it is uploaded."""
    folder = Path(private_staging_dir())
    folder.chmod(0o777)
    with pytest.raises(PermissionDeniedError, match="not a private folder") as caught:
        backup_files(repo, [source(tmp_path)], hostname="h")
    assert "TMPDIR" in (caught.value.hint or "")
    folder.chmod(0o700)
    assert backup_files(repo, [source(tmp_path / "again")], hostname="h").stats["files"] == 4


def test_sweep_removes_only_stale_staged_packs(temp_root: Path) -> None:
    folder = Path(private_staging_dir())
    stale, fresh, other = (
        (folder / f"{STAGING_PACK_PREFIX}old"),
        (folder / f"{STAGING_PACK_PREFIX}new"),
        (folder / "unrelated"),
    )
    for path in (stale, fresh, other):
        path.write_bytes(b"x")
    day_ago = time.time() - 2 * 86400
    os.utime(stale, (day_ago, day_ago))
    os.utime(other, (day_ago, day_ago))
    assert sweep_stale_staging(None) == 1
    assert not stale.exists() and fresh.exists() and other.exists()


def _mixed(rng: random.Random, size: int) -> bytes:
    """Random stretches, zero runs longer than a maximum chunk, and repeated patterns."""
    out = bytearray()
    while len(out) < size:
        kind, n = rng.random(), rng.randint(1, 300_000)
        out += bytes(n) if kind < 0.3 else rng.randbytes(64) * (n // 64) if kind < 0.4 else rng.randbytes(n)
    return bytes(out[:size])


@pytest.mark.parametrize("seed", range(6))
def test_stream_cutter_cuts_exactly_like_the_whole_file(seed: int) -> None:
    """Whatever falls on the buffer's edges, chunks equal FastCDC over the file in one piece."""
    params = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536, seed=seed)
    rng = random.Random(seed)
    cutter = StreamCutter(params)
    for size in (
        0,
        1,
        4095,
        65536,
        len(cutter.buffer) - 1,
        len(cutter.buffer) + 1,
        rng.randint(2**20, 5 * 2**20),
    ):
        data = _mixed(rng, size)
        expected = [bytes(c.data) for c in params.make().cut_buf(data)] if data else []
        got = [bytes(c) for c in cutter.cut(io.BytesIO(data))]
        assert got == expected, f"size {size}"
        assert any(len(c) == params.max_size for c in got) or size < 3 * 2**20


class _Trickle(io.RawIOBase):
    """A reader returning at most 1000 bytes per call, like a slow network file system."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        n = min(len(buffer), 1000, len(self.data) - self.pos)
        buffer[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_stream_cutter_with_short_reads() -> None:
    params = ChunkerParams(min_size=4096, avg_size=16384, max_size=65536, seed=1)
    data = _mixed(random.Random(9), 400_000)
    expected = [bytes(c.data) for c in params.make().cut_buf(data)]
    assert [bytes(c) for c in StreamCutter(params).cut(_Trickle(data))] == expected


def test_cancel_while_the_last_packs_upload(repo: Repository, temp_root: Path, tmp_path: Path) -> None:
    """Everything is read, the rate-limited uploads are still running: a stop still stops it."""
    src = source(tmp_path)

    class Stop(Exception):
        pass

    calls: list[int] = []

    def progress(p: BackupProgress) -> None:
        calls.append(p.bytes_read)
        if p.bytes_read == 4 * 700_000 and p.current_path is None:
            raise Stop

    with pytest.raises(Stop):
        backup_files(repo, [src], hostname="h", progress=progress, bandwidth_limit=1_000_000)
    assert calls[-1] == 4 * 700_000 and list_snapshots(repo) == [] and staged_files(temp_root) == []
