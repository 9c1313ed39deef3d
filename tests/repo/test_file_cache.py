"""The file cache reads a folder's rows in one query: every file is still found under its own
path only, whatever its neighbours are named, and non-UTF-8 names keep their own rows."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
from pathlib import Path

import pytest

from cloudkeep.repo import cache as cache_module
from cloudkeep.repo.cache import FileCache, FolderRow, StoredRow


def _whole(row: FolderRow | None) -> FolderRow | None:
    """``row`` with a large row's entries read whole (``StoredRow``)."""
    if row is None or isinstance(row.keys, bytes):
        return row
    return dataclasses.replace(row, keys=row.keys.getvalue())


# Neighbours that sort between or around a folder's files: "a.b" sorts before "a/", "a0" just
# after it, "a/b/c" is deeper; names with spaces, non-ASCII and non-UTF-8 bytes (surrogates).
PATHS = [
    "/src/a/f1",
    "/src/a/b/c",
    "/src/a/b/c2",
    "/src/a.b",
    "/src/a.b/f",
    "/src/a0/f1",
    "/src/a0f1",  # as long as "/src/a/f1": a wrong upper bound would read it as that file
    "/src/a/caf\u00e9 x",
    "/src/a/z\udcff",  # not UTF-8: a BLOB key
    "/src/\udcfe/f1",  # a folder that is not UTF-8
    "/top",
]


def _stat(i: int) -> os.stat_result:
    """A distinct stat per path: size, mtime, ctime and inode all differ."""
    return os.stat_result((0o100644, 1000 + i, 1, 1, 0, 0, 10 * i + 1, 0, 0, 0))


def _id(i: int, k: int) -> bytes:
    return bytes([i, k]) * 16


def _fill(tmp_path: Path, sources: list[str]) -> None:
    cache = FileCache(tmp_path, "repo", "host", sources)
    for i, path in enumerate(PATHS):
        cache.record(path, _stat(i), [_id(i, 0), _id(i, 1)])
    cache.commit()


def test_every_file_is_found_under_its_own_path_only(tmp_path: Path) -> None:
    _fill(tmp_path, ["/src"])
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        for i, path in enumerate(PATHS):
            assert cache.lookup(path, _stat(i)) == [_id(i, 0), _id(i, 1)], path
        # a file's row is never another path's: same folder, a deeper folder, a sibling folder
        for path in ["/src/a/c", "/src/a/b", "/src/a/f", "/src/a0/c", "/src/a.b/f1", "/src/f1", "/src/a/z"]:
            assert cache.lookup(path, _stat(PATHS.index("/src/a/b/c"))) is None, path
        # a changed stat misses even when the path is held
        assert cache.lookup("/src/a/f1", _stat(1)) is None
    finally:
        cache.discard()


def test_more_folders_than_are_held_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_module, "_DIRS_HELD", 2)
    _fill(tmp_path, ["/src"])
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        for _ in range(2):  # the second round finds every folder evicted and reads it again
            for i, path in enumerate(PATHS):
                assert cache.lookup(path, _stat(i)) == [_id(i, 0), _id(i, 1)], path
        assert len(cache._dirs) <= 2
    finally:
        cache.discard()


def test_no_previous_generation_finds_nothing(tmp_path: Path) -> None:
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        assert cache.lookup(PATHS[0], _stat(0)) is None
    finally:
        cache.discard()


@pytest.mark.parametrize("large", [False, True])
def test_a_folder_row_of_the_wrong_types_gives_nothing(
    large: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged cache (a file list that is text or missing) gives no row, read whole or in pieces."""
    monkeypatch.setattr(cache_module, "_WRITE_IN_PIECES", 10 if large else 1 << 20)
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    good = FolderRow(b"l", b"s", b"t", os.urandom(64), os.urandom(100))
    for path in ("/src/good", "/src/text", "/src/null"):
        cache.record_folder(path, good)
    cache.commit()
    with sqlite3.connect(cache.path) as db:
        db.execute("UPDATE folders SET keys = 'not a blob, long enough' WHERE path = '/src/text'")
        db.execute("UPDATE folders SET chunks = NULL WHERE path = '/src/null'")
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        assert _whole(cache.folder("/src/good")) == good
        assert cache.folder("/src/text") is None and cache.folder("/src/null") is None
    finally:
        cache.discard()


def test_a_spilled_row_reads_back_whole_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large folder's row written to a spill as it is made is copied into the cache a piece at a
    time and reads back byte for byte; the spill has no name in the cache's folder, before or after,
    and a backup that fails lets go of the ones it held."""
    monkeypatch.setattr(cache_module, "_PIECE", 333)  # pieces that do not divide the row
    keys = os.urandom(5001)
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    spill = cache.spill()
    for at in range(0, len(keys), 1000):
        spill.write(keys[at : at + 1000])
    assert len(spill) == len(keys) and sorted(p.name for p in (tmp_path / "repo").iterdir()) == [
        cache.next_path.name
    ]
    row = FolderRow(b"l" * 20, b"s" * 20, b"t" * 32, os.urandom(32 * 3), b"")
    cache.record_folder("/src/big", row, spill)
    cache.commit()
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        assert cache.folder("/src/big") == dataclasses.replace(row, keys=keys)
        held = cache.spill()
        held.write(b"row")
        cache._folder_batch.append(("/src/other", b"", b"", b"", b"", held))  # recorded, not yet written
    finally:
        cache.discard()
    with pytest.raises(ValueError):  # closed
        held.write(b"more")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == [cache.path.name]


def test_a_large_folder_row_written_in_pieces_reads_back_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows past ``_WRITE_IN_PIECES`` go into blobs made to size, a piece at a time: the next
    backup reads every byte back, beside small rows of the same batch and one replaced."""
    monkeypatch.setattr(cache_module, "_WRITE_IN_PIECES", 1000)
    monkeypatch.setattr(cache_module, "_PIECE", 333)  # pieces that do not divide the lists
    large = FolderRow(b"l" * 20, b"s" * 20, b"t" * 32, os.urandom(32 * 40), os.urandom(5001))
    small = FolderRow(b"L" * 20, b"S" * 20, b"T" * 32, b"", os.urandom(10))
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    cache.record_folder("/src/big", FolderRow(b"old", b"old", b"old", b"", os.urandom(4000)))
    cache.record_folder("/src/big", large)  # the same folder twice: the last row is the one kept
    cache.record_folder("/src/small", large)
    cache.record_folder("/src/small", small)  # and a large row replaced by a small one
    cache.record_folder("/src/empty", FolderRow(b"e", b"e", b"e", b"", b""))
    cache.commit()
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        read = cache.folder("/src/big")
        assert read is not None and isinstance(read.keys, StoredRow)  # read as asked, not whole
        assert isinstance(large.keys, bytes) and read.keys.read(4990, 100) == large.keys[4990:]
        assert read.keys.read(6000, 5) == b""
        assert _whole(read) == large
        assert cache.folder("/src/small") == small
        assert cache.folder("/src/empty") == FolderRow(b"e", b"e", b"e", b"", b"")
        cache.record_folder("/src/big", read)  # unchanged: copied from the last cache, as it lies
        cache.commit()
    except BaseException:
        cache.discard()
        raise
    cache = FileCache(tmp_path, "repo", "host", ["/src"])
    try:
        assert _whole(cache.folder("/src/big")) == large
    finally:
        cache.discard()
