"""Per-source file metadata cache: an unchanged file (same size, mtime, ctime, inode) is not re-read.

One SQLite file per (repository, host, source set) under ``cache_dir``. A backup reads the
previous generation and writes a new one beside it; the new file replaces the old only after the
snapshot is committed, so the cache never claims content that no restore point holds.

Rows are keyed by path: a valid UTF-8 path as TEXT (as every earlier version wrote it, so their
caches stay valid), a path with bytes that are not UTF-8 by those exact bytes as a BLOB. SQLite
never finds a BLOB equal to a TEXT, so no two names share a row.

Lookups read a whole directory's rows in one query (a range of the primary key) and keep the
last few directories: the walk asks for every file of a folder in turn, and one query per file
was the largest cost of a no-change backup of many small files.

A second table keeps, per folder, two signatures: of its listing (its own stat, every entry's
name and stat) and of its tree (the listing plus each subfolder's tree), with the tree id, its
files' chunk ids and every entry's stat key (with whether it had no xattrs: ``folders.py``). A
folder whose listing is unchanged skips its files' rows (none is read or written); one whose
tree signature is unchanged too reuses its tree without rebuilding or re-serialising its nodes,
once its chunks are checked to be in the index. A file
without a row is known unchanged when its stat key is the one stored in its folder's row, and
takes its chunks from there. Caches written before the table simply reuse nothing; older
versions ignore it.

A third table names the large files (``record_large``) with their stat, so that the next backup
can read the ones that changed first, while it walks (``repo/earlyread.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sqlite3
import sys
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudkeep.pathnames import is_text, to_bytes
from cloudkeep.repo.crypto import split_ids
from cloudkeep.repo.fsmeta import StatLike

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
    " ctime_ns INTEGER, inode INTEGER, content BLOB)"
)
_FOLDERS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS folders (path TEXT PRIMARY KEY, listing BLOB, signature BLOB, tree BLOB,"
    " chunks BLOB, keys BLOB)"
)

_LARGE_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS large (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
    " ctime_ns INTEGER, inode INTEGER)"
)
# Folder rows are written in batches of about this many bytes (their file lists), not all at the
# end: an incremental writes few file rows, and held rows were megabytes of the peak.
_FOLDER_BATCH_BYTES = 1 << 20
_INSERT_FOLDER = "INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, ?, ?)"
# A folder row whose file lists hold this many bytes is written in pieces of ``_PIECE``.
_WRITE_IN_PIECES = 1 << 20
_PIECE = 1 << 18


@dataclass(frozen=True)
class LargeFile:
    """A large file as the last backup saw it (``FileCache.large_files``)."""

    path: str
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int

    def same(self, st: StatLike) -> bool:
        """``st`` shows it unchanged (the file cache's own test)."""
        return (self.size, self.mtime_ns, self.ctime_ns, self.inode) == (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
        )  # fmt: skip


# Directories whose rows are held: the walk is depth first, so a folder's files are asked for
# before and after its subfolders; this covers every folder on the walk's stack but the deepest.
_DIRS_HELD = 64
_Row = tuple[int, int, int, int, bytes]


@dataclass(frozen=True)
class FolderRow:
    """What the last backup stored for a folder (see the module docstring)."""

    listing: bytes
    signature: bytes
    tree: bytes
    chunks: bytes  # every chunk id of the folder's own files, concatenated
    # every entry's stat key and a file's chunk ids, in the archiver's own encoding (a large row
    # read from the cache: where it lies there, read as asked)
    keys: bytes | StoredRow


class RowSpill:
    """A large folder's row (``FolderRow.keys``) written as it is made into an unnamed file in the
    cache's folder, then copied into the cache a piece at a time: held in memory it was 6.4 MiB for
    a maildir folder of 50,000 messages, at the peak of an incremental backup (its tree being
    compressed meanwhile). The file has no name, so it goes with the process however that ends."""

    def __init__(self, folder: Path) -> None:
        self._file = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed once copied, or by ``close``)
        self._size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self._size += len(data)

    def __len__(self) -> int:
        return self._size

    def pieces(self) -> Iterator[bytes]:
        """The row as written, ``_PIECE`` bytes at a time."""
        self._file.flush()
        self._file.seek(0)
        while piece := self._file.read(_PIECE):
            yield piece

    def getvalue(self) -> bytes:
        return b"".join(self.pieces())

    def close(self) -> None:
        self._file.close()


class StoredRow:
    """A large folder's row (``FolderRow.keys``) as the last backup's cache holds it, read a piece
    at a time as asked (the walk asks a piece of entries at a time, ``folders._PreviousRow``):
    read whole, it was held to the end of the folder's walk, 25 MiB for a folder of 200,000 files.
    Valid until the cache is committed or discarded.

    One blob handle serves every read: SQLite finds a place in a large value by walking its
    overflow pages from the start, except through a handle that has walked them already (a new
    handle per piece read a folder of 200,000 files' row 200 times over, 1 s of system time)."""

    def __init__(self, cache: FileCache, rowid: int, size: int) -> None:
        self._cache, self._rowid, self._size = cache, rowid, size
        self._blob: Any = None

    def __len__(self) -> int:
        return self._size

    def read(self, start: int, length: int) -> bytes:
        """``length`` bytes from ``start`` (fewer past the end)."""
        with self._cache._lock:
            return self._read(start, length)

    def getvalue(self) -> bytes:
        with self._cache._lock:
            return b"".join(self._pieces())

    def close(self) -> None:
        """Let go of the blob handle (a later read opens another)."""
        with self._cache._lock:
            if self._blob is not None:
                self._blob.close()
                self._blob = None

    def _pieces(self) -> Iterator[bytes]:
        """The row, ``_PIECE`` bytes at a time (the cache's lock held)."""
        for at in range(0, self._size, _PIECE):
            yield self._read(at, _PIECE)

    def _read(self, start: int, length: int) -> bytes:
        db = self._cache._old
        if db is None or sys.version_info < (3, 11):  # (made only where ``blobopen`` is)
            raise RuntimeError("the last cache is closed")
        if self._blob is None:
            self._blob = db.blobopen("folders", "keys", self._rowid, readonly=True)
        self._blob.seek(min(start, self._size))
        data: bytes = self._blob.read(length)
        return data


def _key(path: str) -> str | bytes:
    return path if is_text(path) else to_bytes(path)


class FileCache:
    """Lookups against the last committed generation; inserts go to the next one."""

    def __init__(self, cache_dir: Path, repo_id: str, hostname: str, sources: list[str]) -> None:
        digest = hashlib.sha256(to_bytes("\0".join([hostname, *sorted(sources)]))).hexdigest()[:24]
        folder = cache_dir / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"files-{digest}.sqlite"
        self.next_path = folder / f"files-{digest}.sqlite.next-{os.getpid()}"
        self._old: sqlite3.Connection | None = None
        if self.path.exists():
            try:
                self._old = sqlite3.connect(self.path, check_same_thread=False)
                self._old.execute("SELECT 1 FROM files LIMIT 1")
            except sqlite3.DatabaseError:
                self._old = None  # a damaged cache only costs a re-read
        with contextlib.suppress(FileNotFoundError):
            self.next_path.unlink()
        self._new = sqlite3.connect(self.next_path, check_same_thread=False)
        self._new.execute("PRAGMA journal_mode=OFF")
        self._new.execute("PRAGMA synchronous=OFF")
        self._new.execute(_SCHEMA)
        self._new.execute(_FOLDERS_SCHEMA)
        self._new.execute(_LARGE_SCHEMA)
        self._batch: list[tuple[str | bytes, int, int, int, int, bytes]] = []
        self._folder_batch: list[tuple[str, bytes, bytes, bytes, bytes, bytes | StoredRow | RowSpill]] = []
        self._folder_bytes = 0
        self._large: list[tuple[str, int, int, int, int]] = []
        self._lock = threading.Lock()  # workers record concurrently; sqlite connections are not thread-safe
        self._dirs: OrderedDict[str, dict[str, _Row]] = OrderedDict()

    def lookup(self, path: str, st: StatLike) -> list[bytes] | None:
        if self._old is None:
            return None
        folder, _, name = path.rpartition("/")
        with self._lock:
            if is_text(path):
                row = self._folder_rows(self._old, folder).get(name)
            else:  # stored as a BLOB key, which a TEXT range does not cover
                row = self._old.execute(
                    "SELECT size, mtime_ns, ctime_ns, inode, content FROM files WHERE path = ?", (_key(path),)
                ).fetchone()
        if row is None or tuple(row[:4]) != (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino):
            return None
        blob: bytes = row[4]
        return split_ids(blob)

    def _folder_rows(self, db: sqlite3.Connection, folder: str) -> dict[str, _Row]:
        """Rows of the files directly in ``folder``, by name: one query per folder (lock held).

        Every path below ``folder`` sorts between ``folder + "/"`` and ``folder + "0"`` ("0"
        follows "/"); rows with a further "/" are deeper and skipped in SQLite, not Python.
        """
        rows = self._dirs.get(folder)
        if rows is not None:
            self._dirs.move_to_end(folder)
            return rows
        low = folder + "/"
        rows = {
            path[len(low) :]: tuple(rest)
            for path, *rest in db.execute(
                "SELECT path, size, mtime_ns, ctime_ns, inode, content FROM files"
                " WHERE path > ? AND path < ? AND instr(substr(path, ?), '/') = 0",
                (low, folder + "0", len(low) + 1),
            )
            if isinstance(path, str)
        }
        self._dirs[folder] = rows
        if len(self._dirs) > _DIRS_HELD:
            self._dirs.popitem(last=False)
        return rows

    def record(self, path: str, st: StatLike, content: list[bytes]) -> None:
        """A file's row for the next backup (a stat key's fields as ``fsmeta.Stat(key)``)."""
        row = (_key(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, b"".join(content))
        with self._lock:
            self._batch.append(row)
            if len(self._batch) >= 2000:
                self._flush()

    def has_previous(self) -> bool:
        """Whether a last backup left rows to look up (none: every file is read anew)."""
        return self._old is not None

    def folder(self, path: str) -> FolderRow | None:
        """The last backup's row for folder ``path`` (UTF-8 paths only: other folders keep none)."""
        if self._old is None or not is_text(path):
            return None
        with self._lock:
            try:
                # One query: a small row's lists come with it; a large one's are left in the cache
                # (SQLite tells a value's type and length without reading it).
                found = self._old.execute(
                    "SELECT rowid, listing, signature, tree, typeof(chunks), typeof(keys), length(keys),"
                    " CASE WHEN length(chunks) + length(keys) < ?2 THEN chunks END,"
                    " CASE WHEN length(chunks) + length(keys) < ?2 THEN keys END"
                    " FROM folders WHERE path = ?1",
                    (path, _WRITE_IN_PIECES if sys.version_info >= (3, 11) else 2**62),
                ).fetchone()
                if found is None or found[4:6] != ("blob", "blob"):
                    return None
                rowid, listing, signature, tree, _, _, keys_size, *lists = found
                if lists[0] is None and sys.version_info >= (3, 11):
                    lists = [self._read_blob(self._old, "chunks", rowid), StoredRow(self, rowid, keys_size)]
            except sqlite3.OperationalError:  # a cache written before folders had rows
                return None
        if not all(isinstance(v, (bytes, StoredRow)) for v in (listing, signature, tree, *lists)):
            return None
        chunks, keys = lists
        if not isinstance(chunks, bytes):
            return None
        return FolderRow(listing, signature, tree, chunks, keys)

    @staticmethod
    def _read_blob(db: sqlite3.Connection, column: str, rowid: int) -> bytes:
        """A large folder row's file list, read a piece at a time into one buffer: selected, SQLite
        assembles the value from its pages and the driver copies it (two copies of a row that is
        6.4 MiB for a maildir folder of 50,000 messages, the peak of an incremental backup)."""
        if sys.version_info < (3, 11):  # (callers ask only where ``blobopen`` is)
            raise NotImplementedError("blobopen")
        out = io.BytesIO()  # grows its one buffer, then hands it over without a copy
        with db.blobopen("folders", column, rowid, readonly=True) as blob:
            while piece := blob.read(_PIECE):
                out.write(piece)
        return out.getvalue()

    def record_folder(self, path: str, row: FolderRow, spilled: RowSpill | None = None) -> None:
        """A folder's row for the next backup; ``spilled`` is its ``keys`` when written to a spill
        (``spill``), which the cache then owns."""
        keys: bytes | StoredRow | RowSpill = row.keys if spilled is None else spilled
        if not is_text(path):
            if spilled is not None:
                spilled.close()
            return
        with self._lock:
            self._folder_batch.append((path, row.listing, row.signature, row.tree, row.chunks, keys))
            self._folder_bytes += len(keys) + len(row.chunks)
            if self._folder_bytes >= _FOLDER_BATCH_BYTES or spilled is not None:
                self._flush()

    def spill(self) -> RowSpill:
        """An unnamed file for a large folder's row, in the cache's folder (on the cache's disk,
        not a ``/tmp`` that may be memory)."""
        return RowSpill(self.next_path.parent)

    def record_large(self, path: str, st: StatLike) -> None:
        """A large file this backup saw (UTF-8 paths only: the next one looks them up by name)."""
        if is_text(path):
            with self._lock:
                self._large.append((path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino))

    def large_files(self, limit: int) -> list[LargeFile]:
        """The last backup's ``limit`` largest files, largest first (none from an older cache)."""
        if self._old is None:
            return []
        with self._lock:
            try:
                rows = self._old.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode FROM large ORDER BY size DESC LIMIT ?",
                    (limit,),
                ).fetchall()
            except sqlite3.OperationalError:  # a cache written before the table
                return []
        return [
            LargeFile(*row)
            for row in rows
            if isinstance(row[0], str) and all(isinstance(v, int) for v in row[1:])
        ]

    def _flush(self) -> None:
        self._new.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", self._batch)
        self._batch.clear()
        small: list[tuple[str, bytes, bytes, bytes, bytes, bytes]] = []
        for path, listing, signature, tree, chunks, keys in self._folder_batch:  # in order: a folder
            # recorded twice keeps its last row
            if not isinstance(keys, bytes) or len(chunks) + len(keys) >= _WRITE_IN_PIECES:
                self._new.executemany(_INSERT_FOLDER, small)
                small = []
                self._write_large_row(path, listing, signature, tree, chunks, keys)
            else:
                small.append((path, listing, signature, tree, chunks, keys))
        self._new.executemany(_INSERT_FOLDER, small)
        self._folder_batch.clear()
        self._folder_bytes = 0
        self._new.executemany("INSERT OR REPLACE INTO large VALUES (?, ?, ?, ?, ?)", self._large)
        self._large.clear()

    def _write_large_row(
        self,
        path: str,
        listing: bytes,
        signature: bytes,
        tree: bytes,
        chunks: bytes,
        keys: bytes | StoredRow | RowSpill,
    ) -> None:
        """A large folder's row with its file lists written in pieces into blobs made to size.

        Bound as parameters, SQLite copies each value and then builds the whole record from the
        copies: two transient copies of a row that is 10 MiB for a folder of 45,000 files, which
        were the largest allocation at the peak of an incremental backup of a mail store.
        """
        try:
            if sys.version_info < (3, 11):  # no ``blobopen``: bound whole
                whole = keys if isinstance(keys, bytes) else b"".join(_pieces_of(keys))
                self._new.execute(_INSERT_FOLDER, (path, listing, signature, tree, chunks, whole))
                return
            inserted = self._new.execute(
                "INSERT OR REPLACE INTO folders VALUES (?, ?, ?, ?, zeroblob(?), zeroblob(?))",
                (path, listing, signature, tree, len(chunks), len(keys)),
            )
            rowid = inserted.lastrowid
            assert rowid is not None
            for column, data in (("chunks", chunks), ("keys", keys)):
                with self._new.blobopen("folders", column, rowid) as blob:
                    for piece in _pieces_of(data):
                        blob.write(piece)
        finally:
            if isinstance(keys, RowSpill):
                keys.close()

    def commit(self) -> None:
        """Make this backup's generation the one the next backup reads."""
        with self._lock:
            self._flush()
        self._new.commit()
        self._new.close()
        if self._old is not None:
            self._old.close()
        os.replace(self.next_path, self.path)

    def discard(self) -> None:
        for row in self._folder_batch:
            if isinstance(row[5], RowSpill):
                row[5].close()
        self._new.close()
        if self._old is not None:
            self._old.close()
        with contextlib.suppress(FileNotFoundError):
            self.next_path.unlink()


def _in_pieces(data: bytes) -> Iterator[memoryview]:
    view = memoryview(data)
    for at in range(0, len(data), _PIECE):
        yield view[at : at + _PIECE]


def _pieces_of(data: bytes | StoredRow | RowSpill) -> Iterator[bytes | memoryview]:
    """A row's file list ``_PIECE`` bytes at a time, wherever it is (the cache's lock held)."""
    if isinstance(data, RowSpill):
        return data.pieces()
    if isinstance(data, StoredRow):
        return data._pieces()
    return _in_pieces(data)
