"""Large files that changed are read before the walk reaches them (``repo/earlyread.py``): used
only when the walk finds that very file, never opened through a symbolic link or against a mask,
never counted or leaked when the walk does not claim them."""

from __future__ import annotations

import io
import os
import random
import threading
import time
from pathlib import Path

import pytest

from cloudkeep.repo import Repository, backup_files, earlyread, restore
from cloudkeep.repo.archiver import _Archiver
from cloudkeep.repo.checker import check
from cloudkeep.repo.chunker import StreamCutter
from cloudkeep.repo.earlyread import EarlyRead, EarlyReads
from cloudkeep.repo.filecontent import FileContent, PendingFile
from cloudkeep.repo.tree import Node

from .conftest import restored

SIZE = 2**20  # "large" in these tests (EARLY_FILE is lowered below it)


@pytest.fixture(autouse=True)
def small_large_files(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(earlyread, "EARLY_FILE", 256 * 1024)


def _tree(root: Path, rng: random.Random) -> Path:
    """Small files first in name order, the large file in the folder walked last."""
    for folder in ("a", "b"):
        (root / folder).mkdir(parents=True)
        for i in range(20):
            (root / folder / f"f{i}.txt").write_bytes(rng.randbytes(3000))
    (root / "z").mkdir()
    (root / "z" / "app.db").write_bytes(rng.randbytes(SIZE))
    return root


def _rewrite(path: Path, rng: random.Random, data: bytes | None = None) -> None:
    """New content in place, again until the ctime moves (one clock tick looks unchanged)."""
    before = os.lstat(path).st_ctime_ns
    deadline = time.monotonic() + 10
    while os.lstat(path).st_ctime_ns == before:
        assert time.monotonic() < deadline, "ctime never moved"
        with open(path, "r+b") as fh:
            fh.write(data if data is not None else rng.randbytes(SIZE))


def _spy(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[str]]:
    """(paths read early, paths read by the walk's file jobs)."""
    early: list[str] = []
    walked: list[str] = []
    real_read, real_entry = EarlyReads._read, FileContent.read_entry

    def read(self: EarlyReads, fd: int, path: str, st: os.stat_result) -> EarlyRead:
        early.append(path)
        return real_read(self, fd, path, st)

    def read_entry(self: FileContent, item: PendingFile, *opened: int | OSError | None) -> Node | None:
        walked.append(item.path)
        return real_entry(self, item, *opened)

    monkeypatch.setattr(EarlyReads, "_read", read)
    monkeypatch.setattr(FileContent, "read_entry", read_entry)
    return early, walked


def _stored_any(repo: Repository, data: bytes) -> bool:
    """Whether any chunk of ``data`` (cut as this repository cuts) is in the repository."""
    chunks = StreamCutter(repo.config.chunker).cut(io.BytesIO(data))
    return any(repo.has_blob(repo.crypter.content_id(chunk)) for chunk in chunks)


def _walk_waits(monkeypatch: pytest.MonkeyPatch, folder: Path) -> threading.Event:
    """The walk lists ``folder`` only once the returned event is set (or 10 s passed: a failure)."""
    ready = threading.Event()
    real = _Archiver.listing

    def listing(self: _Archiver, folder_: object, base: str) -> object:
        if base == str(folder):
            assert ready.wait(10), "the early read never ran"
        return real(self, folder_, base)  # type: ignore[arg-type]

    monkeypatch.setattr(_Archiver, "listing", listing)
    return ready


def _same_restore(repo: Repository, snapshot_id: str, source: Path, target: Path) -> None:
    restore(repo, snapshot_id, target)
    out = restored(target, source)
    for path in source.rglob("*"):
        if path.is_file():
            assert (out / path.relative_to(source)).read_bytes() == path.read_bytes(), path


def test_a_changed_large_file_is_read_before_the_walk_reaches_it(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(1)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    db = source / "z" / "app.db"
    backup_files(repo, [source], cache_dir=cache)
    _rewrite(db, rng)
    early, walked = _spy(monkeypatch)
    second = backup_files(repo, [source], cache_dir=cache)
    assert early == [str(db)] and walked == []
    assert second.stats["bytes_read"] == SIZE and second.stats["files_unchanged"] == 40
    _same_restore(repo, second.id, source, tmp_path / "restore")
    early.clear()
    third = backup_files(repo, [source], cache_dir=cache)  # unchanged now: opened, not read
    assert early == [] and third.stats["bytes_read"] == 0


def test_a_file_changed_after_its_early_read_is_read_again(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The early read is of an older version than the walk's stat: the walk reads it itself,
    and only those bytes count."""
    rng = random.Random(2)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    db = source / "z" / "app.db"
    backup_files(repo, [source], cache_dir=cache)
    _rewrite(db, rng)
    early, walked = _spy(monkeypatch)
    spied = EarlyReads._read
    ready = _walk_waits(monkeypatch, source / "z")

    def then_changed(self: EarlyReads, fd: int, path: str, st: os.stat_result) -> EarlyRead:
        read = spied(self, fd, path, st)
        _rewrite(db, rng, rng.randbytes(SIZE // 2))  # the first half: the size stays
        ready.set()
        return read

    monkeypatch.setattr(EarlyReads, "_read", then_changed)
    second = backup_files(repo, [source], cache_dir=cache)
    assert early == [str(db)] and walked == [str(db)]
    assert second.stats["bytes_read"] == SIZE  # the walk's read, not both
    _same_restore(repo, second.id, source, tmp_path / "restore")


@pytest.mark.parametrize("mask", ["*.db", "z", "/**/z/*"])
def test_an_excluded_large_file_is_never_opened_early(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mask: str
) -> None:
    """Masks hold for early reads too: what the administrator excluded is not read, and none of
    its content reaches the repository."""
    rng = random.Random(3)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    db = source / "z" / "app.db"
    backup_files(repo, [source], cache_dir=cache)
    secret = rng.randbytes(SIZE)
    _rewrite(db, rng, secret)
    early, _ = _spy(monkeypatch)
    backup_files(repo, [source], cache_dir=cache, excludes=[mask])
    assert early == []
    assert not _stored_any(repo, secret)
    backup_files(repo, [source], cache_dir=cache)  # the check can fail: without the mask it is stored
    assert _stored_any(repo, secret)


def test_a_folder_swapped_for_a_symlink_is_not_followed(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``z`` becomes a symbolic link to a folder outside the source holding another ``app.db``:
    the early open stops at the link, and the walk backs the link up as a link."""
    rng = random.Random(4)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    backup_files(repo, [source], cache_dir=cache)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "app.db").write_bytes(rng.randbytes(SIZE))
    (source / "z").rename(tmp_path / "z-old")
    (source / "z").symlink_to(outside)
    early, walked = _spy(monkeypatch)
    second = backup_files(repo, [source], cache_dir=cache)
    assert early == [] and walked == []
    assert second.stats["bytes_read"] == 0
    assert not _stored_any(repo, (outside / "app.db").read_bytes())


def test_an_early_read_the_walk_never_reaches_is_not_counted(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(5)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    db = source / "z" / "app.db"
    backup_files(repo, [source], cache_dir=cache)
    _rewrite(db, rng)
    real = EarlyReads._read
    ready = _walk_waits(monkeypatch, source / "z")

    def then_deleted(self: EarlyReads, fd: int, path: str, st: os.stat_result) -> EarlyRead:
        read = real(self, fd, path, st)
        db.unlink()
        ready.set()
        return read

    monkeypatch.setattr(EarlyReads, "_read", then_deleted)
    second = backup_files(repo, [source], cache_dir=cache)
    assert second.stats["bytes_read"] == 0 and second.stats["files"] == 40
    restore(repo, second.id, tmp_path / "restore")
    assert not (restored(tmp_path / "restore", source) / "z" / "app.db").exists()


def test_a_failed_walk_leaves_no_early_read_open(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two large files changed, one pool thread: the first early read is held until the walk has
    failed, so the second one still waits in the pool and is cancelled there. Its descriptor is
    closed all the same, and so is every other."""
    rng = random.Random(6)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    other = source / "b" / "other.db"
    other.write_bytes(rng.randbytes(SIZE))
    backup_files(repo, [source], cache_dir=cache)
    _rewrite(source / "z" / "app.db", rng)
    _rewrite(other, rng)
    failed = threading.Event()
    started: list[str] = []
    real = EarlyReads._read

    def held(self: EarlyReads, fd: int, path: str, st: os.stat_result) -> EarlyRead:
        started.append(path)
        assert failed.wait(10)
        return real(self, fd, path, st)

    class Boom(Exception):
        pass

    def walk(self: _Archiver, top: object, path: str) -> None:
        failed.set()
        raise Boom

    monkeypatch.setattr(EarlyReads, "_read", held)
    monkeypatch.setattr(_Archiver, "walk", walk)
    fds_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(Boom):
        backup_files(repo, [source], cache_dir=cache, threads=1)
    assert len(started) == 1  # the other was cancelled before it ran
    assert set(os.listdir("/proc/self/fd")) <= fds_before


def test_a_machine_mounted_under_a_host_folder_reads_early_by_its_own_paths(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``root=``: the large file is found under the host folder, masks name the machine's paths."""
    rng = random.Random(7)
    machine, cache = tmp_path / "machine", tmp_path / "cache"
    _tree(machine / "srv", rng)
    db = machine / "srv" / "z" / "app.db"
    backup_files(repo, ["/srv"], root=machine, cache_dir=cache)
    _rewrite(db, rng)
    early, walked = _spy(monkeypatch)
    second = backup_files(repo, ["/srv"], root=machine, cache_dir=cache)
    assert early == [str(db)] and walked == [] and second.stats["bytes_read"] == SIZE
    _rewrite(db, rng)
    early.clear()
    backup_files(repo, ["/srv"], root=machine, cache_dir=cache, excludes=["/srv/z"])
    assert early == []


def test_early_reads_and_worker_processes_make_one_restore_point(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With worker processes on (machines of 4+ cores), a large file read early in a pool thread
    and the small files read by the workers end in one restore point that restores exactly."""
    rng = random.Random(7)
    source, cache = _tree(tmp_path / "src", rng), tmp_path / "cache"
    db = source / "z" / "app.db"
    backup_files(repo, [source], cache_dir=cache, processes=True)
    _rewrite(db, rng)
    (source / "a" / "f0.txt").write_bytes(rng.randbytes(5000))  # read by a worker process
    early, _ = _spy(monkeypatch)
    second = backup_files(repo, [source], cache_dir=cache, processes=True)
    assert early == [str(db)]
    assert second.stats["bytes_read"] == SIZE + 5000
    _same_restore(repo, second.id, source, tmp_path / "restore")
    assert check(repo, read_data=True).ok
