"""The folders of a backup walk: each becomes a tree blob once every child is known.

A folder's listing (its entries, stat'ed) and the subfolders' trees give it two signatures; with
a file cache, an unchanged listing spares its files' cache rows and an unchanged tree signature
reuses the last tree blob (see ``cache.py``). Split from ``archiver.py``, which walks and reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import marshal
import struct
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, Union, cast

from cloudkeep.compat import SLOTS
from cloudkeep.pathnames import is_text
from cloudkeep.repo.cache import FolderRow, RowSpill, StoredRow
from cloudkeep.repo.crypto import ID_SIZE, PayloadStream, iter_ids, split_ids
from cloudkeep.repo.fsmeta import Stat, StatKey, node_from_stat
from cloudkeep.repo.pack import TREE
from cloudkeep.repo.tree import FILE, TREE_CLOSE, TREE_OPEN, FileText, Node, encode_tree, tree_texts

if TYPE_CHECKING:  # the archiver drives folders; folders call back into it
    from cloudkeep.repo.archiver import _Archiver
    from cloudkeep.repo.procsubtree import Part


@dataclass(**SLOTS)
class Entry:
    """A listed entry. In a folder with a last row every entry is stat'ed before any is backed
    up (whether the listing is unchanged needs all); elsewhere as the walk takes it.

    Unless it is a folder or a file read anew, it is also its folder's child until the tree is
    built: its node is made only if the folder's last tree cannot be reused, so its xattrs and
    link target then cost nothing. A file of an unchanged listing has no ``chunks`` yet: they are
    looked up only if the tree is rebuilt.
    """

    name: str
    base: str  # the folder's path, shared by its entries: a path each was ~100 bytes more
    kind: str
    key: StatKey
    # A file's chunk ids, concatenated as its folder's last row has them (the same bytes object): a
    # list of one bytes object per chunk was ~80 bytes more a file until its node is made (3.8 MiB
    # held for a maildir folder of 50,000 messages).
    chunks: bytes | None = None
    # Its stat key is its folder's row's, which says it had no xattrs: none now either (setting
    # one moves the ctime), so its node skips ``listxattr`` (one path lookup).
    bare: bool = False

    @property
    def path(self) -> str:
        return f"{self.base}/{self.name}"

    @property
    def st(self) -> Stat:
        return Stat(self.key)


class Folder:
    """A directory whose tree blob is stored once every child node is known.

    ``fd`` is the directory, open: its entries are read and opened relative to it, so the walk
    reaches paths longer than ``PATH_MAX`` and never follows a symlink swapped in mid-walk. It is
    closed when the tree blob is stored, after the last file job opened its file.

    With a file cache, the listing's signature (the folder's own stat, each entry's stat key)
    finds the folder's last row: when it matches (``last``), its files' cache rows are neither
    read nor written one by one; when the tree's signature (plus each subfolder's tree) matches
    too, the tree stored last time is reused.
    """

    def __init__(
        self,
        archiver: _Archiver,
        node: Node,
        parent: Folder | None,
        slot: int,
        fd: int | None,
        path: str,
        key: StatKey | None = None,
    ) -> None:
        self.archiver, self.node, self.parent, self.slot, self.fd = archiver, node, parent, slot, fd
        self.path, self.key = path, key
        self.children: list[Node | FileText | Entry | None] = []
        self.keys: list[StatKey] = []
        self.remaining = 1  # the walk itself holds one reference until the listing is complete
        self.exact = fd is not None  # every entry is in the tree (none skipped or failed)
        self.listing: bytes | None = None  # the listing's signature, once listed
        self.base = path  # the path its entries' paths start with, as the walk lists it
        self.previous: FolderRow | None = None  # the last backup's row for this folder
        self.last: FolderRow | None = None  # the same when the listing is unchanged
        self._old: _PreviousRow | None = None  # the row's entries, by name
        self.row_indexed = False  # every chunk of ``previous`` is in the index (once ``_old`` is read)
        self._keeps_rows: bool | None = None
        self.streaming = False  # listed as the walk goes: no last row to compare the listing with
        # A large folder whose entries worker processes store in parts (``procsubtree.py``): each
        # part's result once it is done (``Part``), joined into the tree and row here.
        self.parts: list[Part | None] | None = None
        self._stream: PayloadStream | None = None  # its tree, fed the parts' texts in order (``split``)
        self._fed = 0  # parts fed to ``_stream`` so far
        self.large = False  # the walk waits for it to be stored before listing on (``LARGE_FOLDER``)
        if fd is not None:
            with archiver.lock:
                archiver.open_fds.add(fd)
                archiver.walk_held += 1

    def reserve(self, key: StatKey) -> int:
        with self.archiver.lock:
            self.children.append(None)
            self.keys.append(key)
            self.remaining += 1
            return len(self.children) - 1

    def add(self, entry: Entry) -> None:
        """A child that is ready as it is listed (reserve and fill at once)."""
        with self.archiver.lock:
            self.children.append(entry)
            self.keys.append(entry.key)

    def split(self, count: int) -> None:
        """Its entries go to worker processes in ``count`` parts; it completes once each is
        ``part_done``."""
        self._stream = PayloadStream(self.archiver.repo.crypter)
        self._stream.feed(TREE_OPEN)
        self._feeding = threading.Lock()
        with self.archiver.lock:
            self.parts = [None] * count
            self.remaining += count

    def part_done(self, index: int, part: Part | None) -> None:
        """Part ``index``'s result (None: it did not complete)."""
        with self.archiver.lock:
            assert self.parts is not None
            self.parts[index] = part
            if part is None:
                self.exact = False
            self.remaining -= 1
            done = self.remaining == 0
        self._feed()
        if done:
            self._finish()

    def _feed(self, *, last: bool = False) -> None:
        """Feed the tree's stream the parts' texts that have come, in order, each let go once fed:
        a large folder's texts (11 MiB for 50,000 messages) had all been held until its last part
        came. ``last``: every part has come; the tree is then whole."""
        with self._feeding:
            parts, stream = self.parts, self._stream
            if parts is None or stream is None:
                return
            while self._fed < len(parts) and (part := parts[self._fed]) is not None:
                if part[0]:
                    if stream.size > len(TREE_OPEN):
                        stream.feed(b",")
                    stream.feed(part[0])
                    parts[self._fed] = (b"", part[1], part[2], part[3], part[4], part[5], part[6])
                self._fed += 1
            if last:
                stream.feed(TREE_CLOSE)

    def fill(self, slot: int, node: Node | FileText | Entry | None) -> None:
        if self._settle(slot, node):
            self._finish()

    def release(self) -> None:
        """The walk has listed every child."""
        archiver = self.archiver
        with archiver.lock:
            if self.fd is not None:
                archiver.walk_held -= 1
            if len(self.keys) >= archiver.large_folder:
                self.large = True
                archiver.large_held += 1
            self.remaining -= 1
            done = self.remaining == 0
        if done:
            self._finish()

    def _settle(self, slot: int, node: Node | FileText | Entry | None) -> bool:
        """Put a child in its slot; True when that was the last one outstanding."""
        with self.archiver.lock:
            self.children[slot] = node
            if node is None:
                self.exact = False
            self.remaining -= 1
            return self.remaining == 0

    def _finish(self) -> None:
        """Store the tree blob, then fill the parent's slot. The last file of a deep folder chain
        completes every folder above it: that climbs in a loop, never by recursion."""
        folder: Folder | None = self
        while folder is not None:
            folder = folder._store()

    def _store(self) -> Folder | None:
        """Store this folder's tree; the parent when that completed it too."""
        try:
            self.node.subtree = self._tree()
            self.children, self.keys = [], []
            self.previous = self.last = self._old = None
        except BaseException as exc:
            self.archiver.fail(exc)
        finally:
            if self.large:
                self.archiver.large_stored()
            self.archiver.close_fd(self.fd)
        if self.parent is None:
            self.archiver.root_done.set()
            return None
        return self.parent if self.parent._settle(self.slot, self.node) else None

    def _tree(self) -> bytes:
        """The last backup's tree when nothing in the folder changed, else a new one."""
        if self.parts is not None:
            return self._joined(self.parts)
        archiver, cache = self.archiver, self.archiver.tree_cache
        if cache is not None and self.listing is None and self.exact:  # a folder above the sources
            self.listing = listing_signature(self.key, self.keys)
            self.previous = cache.folder(self.path)
            unchanged = self.previous is not None and self.previous.listing == self.listing
            self.last = self.previous if unchanged else None
        signature = self._signature() if cache is not None and self.listing is not None else None
        last = self.last
        if (
            cache is not None
            and last is not None
            and self.exact
            and signature == last.signature
            and archiver.indexed(chain((last.tree,), iter_ids(last.chunks)))
        ):
            cache.record_folder(self.path, last)
            return last.tree
        row = _RowWriter(len(self.keys), cache.spill) if cache is not None and signature is not None else None
        if self.large:  # its text is never held whole
            tree_id, _ = archiver.writer.save_stream(TREE, tree_texts(self._nodes(row), True))
        else:
            tree_id, _ = archiver.writer.save(TREE, memoryview(encode_tree(self._nodes(row), ordered=True)))
        if row is not None and self.exact:
            assert cache is not None and self.listing is not None and signature is not None
            spilled = row.spilled()
            record = FolderRow(
                self.listing, signature, tree_id, row.chunks(), b"" if spilled is not None else row.value()
            )
            cache.record_folder(self.path, record, spilled)
        elif row is not None:  # inexact after all: the files its row would have carried get their own
            assert cache is not None
            for key, ids, _ in row_entries(row.value()):
                if ids is not None:
                    cache.record(f"{self.base}/{key[0]}", Stat(key), split_ids(ids))
            row.close()
        elif cache is not None:  # no row: the files it would have carried get their own
            for child, key in zip(self.children, self.keys):
                if isinstance(child, Entry) and child.kind == FILE and child.chunks is not None:
                    cache.record(child.path, child.st, split_ids(child.chunks))
                elif self._keeps_rows and isinstance(child, (Node, FileText)) and _is_file(child):
                    # read anew, its row left to this folder's (``FileContent.proc_node``)
                    content = split_ids(child.chunks) if isinstance(child, FileText) else child.content
                    cache.record(f"{self.base}/{child.name}", Stat(key), content)
        return tree_id

    def _joined(self, parts: list[Part | None]) -> bytes:
        """The tree of a folder stored in parts, and its row: the same bytes as ``_tree`` gives.

        What the parts hold is let go as it is used, and the listing's keys are hashed as they
        are, not joined first: beside a maildir folder's parts (~22 MiB for 50,000 messages) the
        joined tree, made twice, and keys had held ~16 MiB more. The tree is the stream the
        parts' texts were fed to as they came (``_feed``), never joined."""
        stream = self._stream
        assert stream is not None
        if any(part is None for part in parts):
            stream.close()
            raise RuntimeError(f"a worker process did not complete its part of {self.path!r}")
        self._feed(last=True)
        self._stream = None
        done = [part for part in parts if part is not None]
        parts.clear()  # (``self.parts``)
        count, parts_exact = sum(part[1] for part in done), all(part[6] for part in done)
        keys, subtrees = [part[2] for part in done], [part[3] for part in done]
        rows = [row for part in done for row in part[4]]  # one per node
        chunks = [part[5] for part in done]
        del done
        tree_id, _ = self.archiver.writer.save_streamed(TREE, stream)
        cache = self.archiver.tree_cache
        if cache is None or not is_text(self.path):  # no folder row: its files' went as they were read
            return tree_id
        if self.exact and parts_exact and self.key is not None:
            listing = listing_signature_of(self.key, count, keys)
            keys.clear()
            hashed = hashlib.blake2b(listing + _list_head(len(rows)), digest_size=20)
            for part_subtrees in subtrees:
                hashed.update(part_subtrees)
            spilled = cache.spill() if len(rows) > ROW_PIECE else None
            keys_row = join_row(rows, spilled)
            cache.record_folder(
                self.path, FolderRow(listing, hashed.digest(), tree_id, b"".join(chunks), keys_row), spilled
            )
            return tree_id
        for entry in rows:  # inexact: its files get rows of their own
            key, content, _ = marshal.loads(entry)
            if content is not None:
                cache.record(f"{self.path}/{key[0]}", Stat(key), [content])
        return tree_id

    def keeps_rows(self) -> bool:
        """Whether this folder's row will carry its unchanged files for the next backup, so they
        need no row of their own: a folder the walk listed, with a tree cache, under a UTF-8
        path. Files read anew then get no row of their own either: the folder's row has their
        chunks. One that ends inexact writes no row: ``_tree`` then records its files' rows."""
        if self._keeps_rows is None:
            listed = self.listing is not None or self.streaming
            keeps = self.archiver.tree_cache is not None and listed and is_text(self.path)
            if not listed:
                return keeps  # not listed yet: asked again later
            self._keeps_rows = keeps
        return self._keeps_rows

    def previous_content(self, entry: Entry) -> list[bytes] | None:
        """A file's chunks as this folder's row has them, when its stat key is the one stored there
        (a folder whose listing was unchanged last time wrote no rows for its files)."""
        old = self._row_entry(entry)
        if old is None or old[1] is None:
            return None
        return split_ids(old[1])

    def _row_entry(self, entry: Entry) -> _RowEntry | None:
        """The previous row's entry for ``entry`` when its stat key is still the same (noting
        whether it had no xattrs: ``Entry.bare``); each entry is asked for once."""
        if self.previous is None:
            return None
        if self._old is None:
            self._old = _PreviousRow(self.previous.keys)
            chunks = self.previous.chunks
            self.row_indexed = self.archiver.indexed(iter_ids(chunks))
            if self.last is None:  # decoded: its bytes are kept only to store the row again
                self.previous = dataclasses.replace(self.previous, keys=b"")
        # Each entry is asked for once (by the walk, or by ``_node`` when the listing was the
        # same): dropping its row as it is used keeps the walk's pending rows small.
        old = self._old.pop(entry.name)
        if old is None or old[0] != entry.key:
            return None
        entry.bare = old[2]
        return old

    def _signature(self) -> bytes:
        subtrees = [c.subtree if isinstance(c, Node) else None for c in self.children]
        return hashlib.blake2b((self.listing or b"") + marshal.dumps(subtrees, 2), digest_size=20).digest()

    def _nodes(self, row: _RowWriter | None) -> Iterator[Node | FileText]:
        """The children's nodes in name order, each made as the tree's encoder takes it, so a
        folder's nodes never all exist at once (~15 MiB for a maildir folder of 50,000 messages).
        ``row`` gets each entry's stat key, chunks (files) and whether it had no xattrs: the
        folder's row for the next backup, marshalled a piece at a time. The children and their
        stat keys then go as they are taken: the row has all that is left of them, and they
        had been held beside the whole tree (~14 MiB of stat keys for that folder)."""
        keys: list[StatKey | None] = cast("list[StatKey | None]", self.keys)
        children: list[Node | FileText | Entry | None] = self.children
        if row is not None:
            self.keys, self.children = [], []
        names = [str(key[0]) for key in keys if key]  # a child's name: its stat key's first field
        # As listed, the slots are in name order already: sorting them anyway made an int object per
        # slot (2 MiB for a folder of 50,000 files).
        order: Iterable[int] = range(len(keys))
        if not all(a < b for a, b in zip(names, islice(names, 1, None))):
            order = sorted(order, key=names.__getitem__)
        del names
        for slot in order:
            key, child = keys[slot], children[slot]
            assert key is not None
            node = self._node(child)
            if row is not None:
                keys[slot] = children[slot] = child = None
                row.add(_row_entry(key, node))
            if node is not None:
                yield node

    def _node(self, child: Node | FileText | Entry | None) -> Node | FileText | None:
        if not isinstance(child, Entry):
            return child
        archiver = self.archiver
        content: list[bytes] | None = None if child.chunks is None else split_ids(child.chunks)
        try:
            if child.kind == FILE and content is None:  # an unchanged listing, but a subfolder changed
                content = archiver.unchanged(self, child)
            elif child.kind != FILE:
                self._row_entry(child)  # only to know whether it had xattrs
            node = node_from_stat(
                child.name,
                child.path,
                child.st,
                child.kind,
                dir_fd=self.fd,
                xattrs={} if child.bare else None,
            )
            if child.kind == FILE and content is None:  # no usable cache row after all: read it
                assert self.fd is not None
                content, node.size = archiver.read_file(child.path, child.name, child.st, self.fd)
                with archiver.lock:
                    archiver.files_reread += 1  # counted unchanged when its listing was
                if archiver.cache:
                    archiver.cache.record(child.path, child.st, content)
        except OSError as exc:
            self.exact = False
            archiver.skip(child.path, f"cannot read ({exc.strerror})")
            return None
        node.content = content or []
        return node


def _is_file(node: Node | FileText) -> bool:
    return isinstance(node, FileText) or node.type == FILE


def _row_entry(key: StatKey, node: Node | FileText | None) -> _RowEntry:
    """A child's entry in its folder's row: its stat key, its chunks if a file, no xattrs."""
    if isinstance(node, FileText):
        return key, node.chunks, node.bare
    content = b"".join(node.content) if node is not None and node.type == FILE else None
    return key, content, node is not None and not node.xattrs


def listing_signature(key: StatKey | None, keys: list[StatKey]) -> bytes:
    """A folder's own stat key and its entries' (in name order), hashed."""
    # marshal version 2 writes no back-references: equal values give equal bytes, fast (repr
    # cost 13 us per entry). Another Python's marshal at worst misses, never matches wrongly.
    if len(keys) <= ROW_PIECE:
        return hashlib.blake2b(marshal.dumps((key, keys), 2), digest_size=20).digest()
    # A large folder's keys are hashed in runs (each list's marshal without its head): marshalled
    # whole they were one more copy of the listing (~5 MiB for 50,000 messages) at the end of its
    # walk, the peak of the mail store's incremental.
    head = len(_list_head(0))
    runs = (marshal.dumps(keys[i : i + ROW_PIECE], 2)[head:] for i in range(0, len(keys), ROW_PIECE))
    return listing_signature_of(key, len(keys), runs)


def listing_signature_of(key: StatKey | None, count: int, marshalled: Iterable[bytes]) -> bytes:
    """``listing_signature`` of ``count`` keys given as marshal bytes, in runs (a folder's parts),
    hashed as they come: marshal version 2 nests by concatenation, so the bytes hashed are the same."""
    hashed = hashlib.blake2b(_tuple_head(2) + marshal.dumps(key, 2) + _list_head(count), digest_size=20)
    for run in marshalled:
        hashed.update(run)
    return hashed.digest()


# A row's entry: its stat key, its chunk ids concatenated (None: not a file), and whether it had
# no xattrs (False where unknown: rows written before that was recorded).
_RowEntry = tuple[StatKey, Union[bytes, None], bool]


# A folder row of more entries than this is stored in pieces of this many, each its own marshal
# bytes (in name order), and read back a piece at a time as the walk asks for the names: decoded
# whole, a maildir folder of 45,000 messages held 27 MiB of tuples at once, beside the listing's own
# stat keys (the mail tree's incremental peaked at 204 MiB; bench/README.md, stop 43).
ROW_PIECE = 1024


def _list_head(count: int) -> bytes:
    """What marshal (version 2) writes before a list's items: its items follow as they are."""
    return b"[" + struct.pack("<i", count)


def _tuple_head(count: int) -> bytes:
    return b"(" + struct.pack("<i", count)


def join_row(entries: list[bytes], spill: RowSpill | None = None) -> bytes:
    """``encode_row`` of the entries marshalled one by one (a folder's parts, from worker processes).
    A row in pieces is written to ``spill`` when given (b"" is then returned); each piece's entries
    are let go from ``entries`` once it is made: joined, the row and its entries were two copies."""
    if len(entries) <= ROW_PIECE:
        return _list_head(len(entries)) + b"".join(entries)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(entries), ROW_PIECE):
            part = entries[start : start + ROW_PIECE]
            entries[start : start + ROW_PIECE] = [b""] * len(part)
            yield _list_head(len(part)) + b"".join(part)

    count = -(-len(entries) // ROW_PIECE)
    if spill is None:
        return _pieces(count, pieces())
    _write_pieces(spill, count, pieces())
    return b""


def encode_row(row: list[_RowEntry]) -> bytes:
    """A folder row's entries (in name order) as the cache stores them: one marshal list, or a
    list of pieces (``ROW_PIECE``) for a large folder."""
    if len(row) <= ROW_PIECE:
        return marshal.dumps(row, 2)
    starts = range(0, len(row), ROW_PIECE)
    return _pieces(len(starts), (marshal.dumps(row[i : i + ROW_PIECE], 2) for i in starts))


class _RowWriter:
    """``encode_row`` of ``count`` entries given one at a time, each piece marshalled once it
    is full: what an entry holds (its stat key) can go as soon as it is given. A row in pieces
    is written to ``spill()`` when given (``FileCache.spill``), not held."""

    def __init__(self, count: int, spill: Callable[[], RowSpill] | None = None) -> None:
        self._count = count
        self._pending: list[_RowEntry] = []
        self._pieces = -(-count // ROW_PIECE) if count > ROW_PIECE else 0
        self._out: io.BytesIO | RowSpill = spill() if spill is not None and self._pieces else io.BytesIO()
        if self._pieces:
            self._out.write(_list_head(self._pieces))
        self._chunks = io.BytesIO()

    def add(self, entry: _RowEntry) -> None:
        self._pending.append(entry)
        if entry[1]:
            self._chunks.write(entry[1])
        if self._pieces and len(self._pending) == ROW_PIECE:
            self._flush()

    def _flush(self) -> None:
        _write_piece(self._out, marshal.dumps(self._pending, 2))
        self._pieces -= 1
        self._pending = []

    def chunks(self) -> bytes:
        """Every file's chunk ids, in the row's order (``FolderRow.chunks``)."""
        return self._chunks.getvalue()

    def value(self) -> bytes:
        """The row, once every entry was given."""
        if self._count <= ROW_PIECE:
            assert len(self._pending) == self._count
            return marshal.dumps(self._pending, 2)
        self._complete()
        return self._out.getvalue()

    def spilled(self) -> RowSpill | None:
        """The row written to its spill, once every entry was given; None when it has none."""
        if not isinstance(self._out, RowSpill):
            return None
        self._complete()
        return self._out

    def _complete(self) -> None:
        if self._pending:
            self._flush()
        assert self._pieces == 0, "a row was given fewer entries than it was made for"

    def close(self) -> None:
        """Let go of its spill (a row not recorded after all)."""
        if isinstance(self._out, RowSpill):
            self._out.close()


def row_entries(data: bytes) -> Iterator[_RowEntry]:
    """The entries of a row this process encoded (``encode_row``): trusted, not checked."""
    items = _loads(data)
    if items and all(isinstance(item, bytes) for item in items):
        for piece in items:
            yield from cast("list[_RowEntry]", _loads(cast(bytes, piece)))
    else:
        yield from cast("list[_RowEntry]", items)


def _pieces(count: int, pieces: Iterator[bytes]) -> bytes:
    """``marshal.dumps(list(pieces), 2)`` (a list of ``count`` bytes objects) written a piece at a
    time: the list of pieces and the bytes made from it were two copies of a large row at once
    (8 and 11 MiB for a maildir folder of 45,000 files, at the peak of the mail store's
    incremental). ``BytesIO`` grows its one buffer and hands it over without a copy."""
    out = io.BytesIO()
    _write_pieces(out, count, pieces)
    return out.getvalue()


def _write_pieces(out: io.BytesIO | RowSpill, count: int, pieces: Iterable[bytes]) -> None:
    """The marshal list of ``count`` bytes objects, ``pieces``, written to ``out`` one by one."""
    out.write(_list_head(count))
    for piece in pieces:
        _write_piece(out, piece)
        count -= 1
    assert count == 0


def _write_piece(out: io.BytesIO | RowSpill, piece: bytes) -> None:
    """A bytes object of a marshal list (``_pieces``), as marshal writes it."""
    out.write(b"s" + struct.pack("<i", len(piece)))
    out.write(piece)


class _PreviousRow:
    """A folder row's entries by name, each handed out once (``pop``). A row in pieces is decoded
    only as far as the names asked for: the walk asks in name order, so about one piece is held.
    A name asked for out of order is found only if its piece was decoded already; it is then read
    anew, which is what any entry the row does not give costs."""

    def __init__(self, data: bytes | StoredRow) -> None:
        self.found: dict[str, _RowEntry] = {}
        self.last: str | None = None  # the last name of the pieces decoded so far
        # A row in pieces is decoded from where each lies in ``data`` (in the cache itself for a
        # large one, ``StoredRow``): unmarshalled, its list of pieces was a copy of the whole row
        # (6.4 MiB for a maildir folder of 50,000 messages) beside ``data`` when the walk first
        # asked, at the end of the folder's listing; and ``data`` was held to the walk's end.
        self._read: Callable[[int, int], bytes | memoryview] | None
        self._stored = data if isinstance(data, StoredRow) else None
        if isinstance(data, StoredRow):
            self._read = data.read
        else:
            view = memoryview(data)
            self._read = lambda start, length: view[start : start + length]
        self.pieces = _piece_spans(self._read, len(data))
        self.pieces.reverse()  # first last
        if not self.pieces:
            self._done()
            self._add(_loads(data if isinstance(data, bytes) else data.getvalue()))

    def pop(self, name: str) -> _RowEntry | None:
        while self._read is not None and (self.last is None or self.last < name):
            start, end = self.pieces.pop()
            self._add(_loads(self._read(start, end - start)))
            if not self.pieces:
                self._done()  # every piece decoded
        return self.found.pop(name, None)

    def _done(self) -> None:
        self._read = None
        if self._stored is not None:
            self._stored.close()
            self._stored = None

    def _add(self, items: list[object]) -> None:
        """Keep the well-formed entries of ``items``. One that does not have that shape (damaged,
        or from an older layout) gives nothing: its file is read and its xattrs too."""
        found = self.found
        for item in items:
            if not isinstance(item, tuple) or len(item) not in (2, 3):
                continue
            key, content, bare = item[0], item[1], item[2] if len(item) == 3 else False
            if content is not None and (not isinstance(content, bytes) or len(content) % ID_SIZE):
                continue
            if isinstance(key, tuple) and key and isinstance(key[0], str) and isinstance(bare, bool):
                found[key[0]] = (key, content, bare)
                self.last = key[0]


def _piece_spans(read: Callable[[int, int], bytes | memoryview], size: int) -> list[tuple[int, int]]:
    """Where the pieces of a row in pieces lie in its ``size`` bytes (``read(start, length)``), as
    ``_pieces`` writes them (a marshal list of bytes objects): only the heads are read. When
    the row is not exactly that (a row of entries, or damaged): none.
    """
    head = bytes(read(0, 5))
    if len(head) < 5 or head[:1] != b"[":
        return []
    (count,) = struct.unpack_from("<i", head, 1)
    spans: list[tuple[int, int]] = []
    at = 5
    for _ in range(max(count, 0)):
        head = bytes(read(at, 5))
        if len(head) < 5 or head[:1] != b"s":
            return []
        (length,) = struct.unpack_from("<i", head, 1)
        at += 5
        if length < 0 or at + length > size:
            return []
        spans.append((at, at + length))
        at += length
    return spans if count > 0 and at == size else []


def _loads(data: bytes | memoryview) -> list[object]:
    """A marshal list, or nothing when ``data`` is not one."""
    try:
        items = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return []
    return items if isinstance(items, list) else []
