"""The changed part of an incremental backup: a changed folder's unchanged files come from its
folder row (no file row read or written, none re-read), a large file rewritten in place encodes
only its new chunks, and the restore point equals the mutated source."""

from __future__ import annotations

import errno
import filecmp
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.repo import Repository, backup_files, filecontent, folders, restore
from cloudkeep.repo import archiver as archiver_module
from cloudkeep.repo.filecontent import FileContent, PendingFile
from cloudkeep.repo.tree import Node
from cloudkeep.repo.writer import BlobWriter

from .conftest import restored


def _folder(root: Path, files: int = 30) -> Path:
    (root / "lib").mkdir(parents=True)
    rng = random.Random(3)
    for i in range(files):
        (root / "lib" / f"f{i:02}.txt").write_bytes(rng.randbytes(2000 + i))
    return root


def _append(path: Path, data: bytes) -> None:
    """Append ``data`` (again until the ctime moves: the cache cannot tell one clock tick apart)."""
    before = os.lstat(path).st_ctime_ns
    deadline = time.monotonic() + 10
    with open(path, "ab") as fh:
        fh.write(data)
    while os.lstat(path).st_ctime_ns == before:
        assert time.monotonic() < deadline, "ctime never moved"
        with open(path, "ab") as fh:
            fh.write(data)


def _file_rows(cache: Path, folder: Path) -> set[str]:
    (db,) = cache.rglob("files-*.sqlite")
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT path FROM files WHERE path > ? AND path < ?", (f"{folder}/", f"{folder}0")
        )
        return {Path(path).name for (path,) in rows}


def _restores_as(repo: Repository, snapshot_id: str, source: Path, target: Path) -> None:
    """The restore point, restored into ``target``, equals ``source`` as it is now."""
    restore(repo, snapshot_id, target)
    _same(source, restored(target, source))


def _same(source: Path, target: Path) -> None:
    compared = filecmp.dircmp(source, target)
    assert not compared.left_only and not compared.right_only and not compared.diff_files
    for sub in compared.common_dirs:
        _same(source / sub, target / sub)


def test_a_changed_folder_takes_its_unchanged_files_from_its_row(repo: Repository, tmp_path: Path) -> None:
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    backup_files(repo, [source], cache_dir=cache)
    _append(lib / "f03.txt", b"day 2")
    second = backup_files(repo, [source], cache_dir=cache)
    assert second.stats["bytes_read"] == (lib / "f03.txt").stat().st_size
    # the folder's row carries the 29 unchanged files: they have no rows of their own now
    assert _file_rows(cache, lib) <= {"f03.txt"}
    _append(lib / "f07.txt", b"day 3")
    (lib / "f11.txt").unlink()
    third = backup_files(repo, [source], cache_dir=cache)
    assert third.stats["bytes_read"] == (lib / "f07.txt").stat().st_size  # no sibling re-read
    assert third.stats["files_unchanged"] == 28
    _restores_as(repo, third.id, source, tmp_path / "restore")


ReadEntry = Callable[[FileContent, PendingFile], "Node | None"]


def _unreadable(monkeypatch: pytest.MonkeyPatch, name: str) -> ReadEntry:
    """Files called ``name`` fail to read (a per-file error) until ``read_entry`` is set back to
    the function returned."""
    real = FileContent.read_entry

    def unreadable(self: FileContent, item: PendingFile, *opened: int | OSError | None) -> Node | None:
        if item.name == name:
            self.skip(item.path, "cannot read (test)")
            return None
        return real(self, item, *opened)

    monkeypatch.setattr(FileContent, "read_entry", unreadable)
    return real


def test_an_inexact_folder_gives_its_unchanged_files_their_own_rows(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with a file that could not be read writes no row: its unchanged files then get
    file rows, so the next backup still does not read them."""
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    backup_files(repo, [source], cache_dir=cache)
    _append(lib / "f03.txt", b"day 2")
    real = _unreadable(monkeypatch, "f03.txt")
    second = backup_files(repo, [source], cache_dir=cache)
    assert second.stats["errors_total"] == 1
    assert _file_rows(cache, lib) == {f"f{i:02}.txt" for i in range(30)} - {"f03.txt"}
    monkeypatch.setattr(FileContent, "read_entry", real)
    third = backup_files(repo, [source], cache_dir=cache)
    assert third.stats["bytes_read"] == (lib / "f03.txt").stat().st_size


def test_a_folder_whose_tree_fails_late_still_gives_its_unchanged_files_rows(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An entry whose node fails only when the folder's tree is made (a symlink that cannot be
    read) leaves the folder without a row: its unchanged files and the one read anew must still
    get rows of their own, so the next backup reads none of them."""
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    (lib / "link").symlink_to("f00.txt")
    backup_files(repo, [source], cache_dir=cache)
    _append(lib / "f03.txt", b"day 2")
    real = folders.node_from_stat

    def failing(name: str, *args: Any, **kwargs: Any) -> Node:
        if name == "link":
            raise OSError(errno.EIO, "I/O error")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(folders, "node_from_stat", failing)
    second = backup_files(repo, [source], cache_dir=cache)
    assert second.stats["errors_total"] == 1
    assert second.stats["bytes_read"] == (lib / "f03.txt").stat().st_size
    assert _file_rows(cache, lib) == {f"f{i:02}.txt" for i in range(30)}
    monkeypatch.setattr(folders, "node_from_stat", real)
    third = backup_files(repo, [source], cache_dir=cache)
    assert third.stats["bytes_read"] == 0 and third.stats["files_unchanged"] == 30
    _restores_as(repo, third.id, source, tmp_path / "restore")


def test_files_reach_the_pool_while_a_new_folder_is_listed(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder without a last row is stat'ed as the walk goes, so its first files are queued
    before its last entry is stat'ed; one with a row is stat'ed whole first (whether its listing
    changed decides how its files are taken), and both give the same rows."""
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    events: list[str] = []
    real_stat, real_queue = archiver_module._Archiver._stat_names, FileContent.queue

    def stat_names(self: Any, folder: folders.Folder, base: str, names: list[str]) -> Any:
        for raw in real_stat(self, folder, base, names):  # as lazily as the walk takes them
            events.append("stat")
            yield raw

    def queue(self: FileContent, item: PendingFile) -> None:
        events.append("queue")
        real_queue(self, item)

    monkeypatch.setattr(archiver_module._Archiver, "_stat_names", stat_names)
    monkeypatch.setattr(FileContent, "queue", queue)
    first = backup_files(repo, [source], cache_dir=cache)
    last_stat = len(events) - 1 - events[::-1].index("stat")
    assert events.index("queue") < last_stat, "the folder was stat'ed whole before its first file was queued"
    assert _file_rows(cache, lib) == set() and first.stats["bytes_read"] > 0  # its row carries them
    _append(lib / "f03.txt", b"day 2")
    events.clear()
    second = backup_files(repo, [source], cache_dir=cache)
    assert events.count("queue") == 1 and events.index("queue") > len(events) - 1 - events[::-1].index("stat")
    assert second.stats["bytes_read"] == (lib / "f03.txt").stat().st_size


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "worker"])
def test_a_first_backup_leaves_its_files_rows_to_their_folders_row(
    repo: Repository, tmp_path: Path, processes: bool
) -> None:
    """Files read anew in a folder that writes a row get no row of their own (the folder's row
    has their chunks): none is written, and the next backup still reads none of them."""
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    first = backup_files(repo, [source], cache_dir=cache, processes=processes)
    assert first.stats["bytes_read"] == sum(f.stat().st_size for f in lib.iterdir())
    assert _file_rows(cache, lib) == set()
    second = backup_files(repo, [source], cache_dir=cache, processes=processes)
    assert second.stats["bytes_read"] == 0
    assert second.stats["files_unchanged"] == 30


def test_an_inexact_folder_gives_the_files_it_read_rows_of_their_own(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with a file that could not be read writes no row, so the files read with it get
    rows of their own when its tree is stored: the next backup reads only the file that failed."""
    source, cache = _folder(tmp_path / "src"), tmp_path / "cache"
    lib = source / "lib"
    real = _unreadable(monkeypatch, "f03.txt")
    first = backup_files(repo, [source], cache_dir=cache, processes=False)
    assert first.stats["errors_total"] == 1
    assert _file_rows(cache, lib) == {f"f{i:02}.txt" for i in range(30)} - {"f03.txt"}
    monkeypatch.setattr(FileContent, "read_entry", real)
    second = backup_files(repo, [source], cache_dir=cache)
    assert second.stats["bytes_read"] == (lib / "f03.txt").stat().st_size
    _restores_as(repo, second.id, source, tmp_path / "restore")


def test_a_large_file_rewritten_in_place_encodes_only_new_chunks(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a database's rewritten pages: every chunk is hashed again, but only the changed ones
    are handed to the chunk pool and encoded; the restore equals the rewritten file."""
    monkeypatch.setattr(filecontent, "PARALLEL_FILE", 2**20)  # the test repository's chunks are small
    source, cache = tmp_path / "src", tmp_path / "cache"
    source.mkdir()
    db = source / "app.db"
    rng = random.Random(5)
    db.write_bytes(rng.randbytes(4 * 2**20))
    backup_files(repo, [source], cache_dir=cache)
    encoded: list[str] = []
    real = BlobWriter.save

    def counting(self: BlobWriter, blob_type: str, data: bytes | memoryview, *a: object, **k: object):  # type: ignore[no-untyped-def]
        blob_id, new = real(self, blob_type, data, *a, **k)  # type: ignore[arg-type]
        if new and blob_type == "data":
            encoded.append(threading.current_thread().name)
        elif blob_type == "data":
            assert not threading.current_thread().name.startswith("ck-chunk"), (
                "a known chunk went to the pool"
            )
        return blob_id, new

    monkeypatch.setattr(BlobWriter, "save", counting)
    before = os.lstat(db).st_ctime_ns
    deadline = time.monotonic() + 10
    while os.lstat(db).st_ctime_ns == before:
        assert time.monotonic() < deadline, "ctime never moved"
        with open(db, "r+b") as fh:
            for page in (5, 300, 900):
                fh.seek(page * 4096 + 12)
                fh.write(rng.randbytes(256))
    snapshot = backup_files(repo, [source], cache_dir=cache)
    assert snapshot.stats["bytes_read"] == 4 * 2**20
    assert 1 <= len(encoded) <= 6  # three pages touch at most two chunks each
    assert all(name.startswith("ck-chunk") for name in encoded)
    assert snapshot.stats["bytes_new"] < 2**20
    target = tmp_path / "restore"
    restore(repo, snapshot.id, target)
    assert (restored(target, source) / "app.db").read_bytes() == db.read_bytes()
