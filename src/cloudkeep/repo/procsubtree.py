"""A first backup's folders stored whole by a worker process: walked, read, and their trees made there.

A first backup of small files was limited by the parent's one GIL: each file cost it an entry, a
slot, a batch's pickles both ways, a node in its folder, the folder's tree and its row (the worker
only read the content), so the parent ran at one core and the worker at half of one. Instead the
walk hands a worker (``lanes.py``) a folder and all below it when the pass over the sources found
it small enough (``walkplan.py``), or a large folder of files in parts of names: the worker lists
and stats, reads the files, writes every node's text and each folder's tree and cache row, and
sends the parent the trees (to store), the rows and what it skipped; a part's tree and row pieces
go back as bytes, which the parent joins (``folders.Folder``). The parent's share is per folder
and per part, not per file.

Everything is done as the parent's walk does it, so the repository cannot tell the two apart: the
same entries (masks, sockets, failed stats), the same node texts and tree bytes (the tests compare
tree ids), the same cache rows (``folders.py``: listing and tree signatures, the row's encoding),
the same messages for what is skipped. The job's folder is opened by path and must be the one the
walk stat'ed (device and inode): a folder swapped since is not read, but named. Subfolders are
walked depth first with a descriptor per level, never following a symbolic link. Runs on the
machines' Python (3.9+).
"""

from __future__ import annotations

import hashlib
import marshal
import os
from typing import TYPE_CHECKING, Any

from cloudkeep.pathnames import is_text
from cloudkeep.repo.folders import encode_row, listing_signature
from cloudkeep.repo.fsmeta import DIR_FLAGS, FILE_FLAGS, Stat, StatKey, node_from_stat, stat_name
from cloudkeep.repo.masks import matches_any
from cloudkeep.repo.tree import DIR, FILE, node_json

if TYPE_CHECKING:
    from cloudkeep.repo.procworker import Worker

# Trees, rows and skipped entries held here before they go to the parent (as one "out" message).
OUT_BYTES = 2**20

# A part of a large folder (``SubtreeWalk.part``): its nodes' texts joined by commas, how many
# entries it listed, their stat keys and subtrees (one per node) as concatenated marshal bytes (the
# parent writes the lists around them: marshal version 2 nests by concatenation), each node's row
# entry marshalled (none without a folder row), its files' chunk ids, whether it is exact.
Part = tuple[bytes, int, bytes, bytes, list[bytes], bytes, bool]


class _Folder:
    """A folder being walked: its listing and, entry by entry, its tree and row."""

    __slots__ = (
        "at", "exact", "fd", "key", "keys", "names", "node", "path", "row", "rows", "subtrees", "texts",
    )  # fmt: skip

    def __init__(self, path: str, fd: int | None, key: StatKey, node: Any = None) -> None:
        self.path, self.fd, self.key, self.node = path, fd, key, node
        self.names: list[str] | None = None  # listed when first taken
        self.at = 0
        self.texts: list[bytes] = []  # the nodes' texts, in name order
        self.keys: list[StatKey] = []  # every entry listed (the listing's signature)
        self.subtrees: list[bytes | None] = []  # per node: a folder's tree (the tree's signature)
        self.row: list[tuple[StatKey, bytes | None, bool]] = []  # per node: the folder's cache row
        self.rows: list[tuple[str, StatKey, bytes]] = []  # files read, for rows of their own
        self.exact = fd is not None


class SubtreeWalk:
    """One job: the folder at ``path`` (stat'ed by the walk as ``key``) and everything below it."""

    def __init__(self, worker: Worker, options: dict[str, Any]) -> None:
        self.worker = worker
        self.excludes: list[str] = options["excludes"]
        self.includes: list[str] = options["includes"]
        self.prefix: str = options["prefix"]
        self.rows: str | None = options["rows"]  # "folders" (a tree cache), "files", or None (no cache)
        self.large: int | None = options["large"]  # files this large are named for the next backup
        self.files = self.dirs = self.bytes_total = self.bytes_read = 0
        self.trees: list[tuple[bytes, bytes]] = []
        self.folder_rows: list[tuple[Any, ...]] = []
        self.file_rows: list[tuple[str, StatKey, bytes]] = []
        self.large_files: list[tuple[str, StatKey]] = []
        self.skipped: list[tuple[str, str]] = []
        self.held = 0

    def run(self, path: str, key: StatKey) -> bytes:
        """The tree id of the folder at ``path``; its trees and rows are sent on the way."""
        why = "backed up as an empty folder"
        top = self.open_top(path, key, why)
        try:
            self.descend(top)
        except BaseException:
            if top.fd is not None:
                os.close(top.fd)
            raise
        return self.finish(top)

    def part(self, path: str, key: StatKey, names: list[str]) -> Part:
        """The entries ``names`` of the large folder at ``path``, which the parent joins with its
        other parts (``folders.Folder``): what its tree and row need of them, as bytes."""
        top = self.open_top(path, key, f"{len(names)} of its entries not backed up")
        try:
            if top.fd is not None:
                top.names = names
                self.descend(top)
        finally:
            if top.fd is not None:
                os.close(top.fd)
                top.fd = None
        chunks = b"".join(content for _, content, _ in top.row if content)
        rows = [marshal.dumps(entry, 2) for entry in top.row] if self.folder_rows_of(top) else []
        keys = b"".join(marshal.dumps(entry_key, 2) for entry_key in top.keys)
        subtrees = b"".join(marshal.dumps(subtree, 2) for subtree in top.subtrees)
        return b",".join(top.texts), len(top.keys), keys, subtrees, rows, chunks, top.exact

    def descend(self, top: _Folder) -> None:
        """Back up ``top``'s entries, walking each subfolder whole on the way (depth first)."""
        stack = [top]
        try:
            while True:
                folder = stack[-1]
                child = self.advance(folder)
                if child is not None:
                    stack.append(child)
                    continue
                if folder is top:
                    return
                stack.pop()
                self.add_folder(stack[-1], folder, self.finish(folder))
        finally:
            for folder in stack[1:]:
                if folder.fd is not None:
                    os.close(folder.fd)

    def open_top(self, path: str, key: StatKey, why: str) -> _Folder:
        """The job's folder, opened by path: only if it is still the folder the walk stat'ed
        (``why``: what is missing when it is not)."""
        try:
            fd = os.open(path, DIR_FLAGS)
        except OSError as exc:
            self.skip(path, f"cannot list ({exc.strerror}); {why}")
            return _Folder(path, None, key)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (key[3], key[2]):
            os.close(fd)
            self.skip(path, f"cannot list (replaced while being backed up); {why}")
            return _Folder(path, None, key)
        return _Folder(path, fd, key)

    def folder_rows_of(self, folder: _Folder) -> bool:
        """Whether ``folder`` gets a row of its own (a tree cache, a UTF-8 path): else its files do."""
        return self.rows == "folders" and is_text(folder.path)

    def advance(self, folder: _Folder) -> _Folder | None:
        """Back up ``folder``'s entries up to its next subfolder (returned open) or its end (None)."""
        if folder.fd is None:
            return None
        if folder.names is None:
            try:
                with os.scandir(folder.fd) as it:
                    folder.names = sorted(e.name for e in it)
            except OSError as exc:
                self.skip(folder.path, f"cannot list ({exc.strerror})")
                folder.exact = False
                return None
        names, base, fd = folder.names, folder.path, folder.fd
        while folder.at < len(names):
            name = names[folder.at]
            folder.at += 1
            path = f"{base}/{name}"
            if self.excludes and matches_any(self.excludes, path, self.prefix):
                continue
            found = stat_name(name, fd)
            if found is None:  # a socket
                continue
            _, kind, key = found
            if kind is None:
                folder.exact = False
                self.skip(path, f"cannot read ({key[1]})")
                continue
            if kind == FILE and self.includes and not matches_any(self.includes, path, self.prefix):
                continue
            folder.keys.append(key)
            if kind == DIR:
                child = self.open_folder(folder, name, path, key)
                if child is not None:
                    return child
            elif kind == FILE:
                self.add_file(folder, name, path, key)
            else:
                self.add_other(folder, name, path, key, kind)
        return None

    def open_folder(self, folder: _Folder, name: str, path: str, key: StatKey) -> _Folder | None:
        """A subfolder to walk next (as the parent's ``add_entry``); None when its node fails."""
        self.dirs += 1
        assert folder.fd is not None
        try:
            node = node_from_stat(name, path, Stat(key), DIR, dir_fd=folder.fd)
        except OSError as exc:
            folder.exact = False
            self.skip(path, f"cannot read ({exc.strerror})")
            return None
        try:
            fd: int | None = os.open(name, DIR_FLAGS, dir_fd=folder.fd)
        except OSError as exc:
            fd = None
            self.skip(path, f"cannot list ({exc.strerror}); backed up as an empty folder")
        return _Folder(path, fd, key, node)

    def add_folder(self, folder: _Folder, child: _Folder, tree_id: bytes) -> None:
        node = child.node
        node.subtree = tree_id
        folder.texts.append(node_json(node).encode())
        folder.subtrees.append(tree_id)
        folder.row.append((child.key, None, not node.xattrs))

    def add_file(self, folder: _Folder, name: str, path: str, key: StatKey) -> None:
        """Read and store a file (as the parent's ``read_entry``); unreadable: skipped, named."""
        size = key[9]
        assert isinstance(size, int) and folder.fd is not None
        self.files += 1
        self.bytes_total += size
        if self.large is not None and size >= self.large:
            self.large_files.append((path, key))
        worker, st = self.worker, Stat(key)
        try:
            if not size:  # nothing to read: no open
                node = node_from_stat(name, path, st, FILE, dir_fd=folder.fd)
            else:
                fd = os.open(name, FILE_FLAGS, dir_fd=folder.fd)
                try:  # xattrs through the open file: no second path lookup
                    node = node_from_stat(name, path, st, FILE, dir_fd=folder.fd, fd=fd)
                    content, total = [], 0
                    for chunk in worker.chunks(fd, size):
                        content.append(worker.add(chunk, path))
                        total += len(chunk)
                finally:
                    os.close(fd)
                node.content, node.size = content, total
        except OSError as exc:
            folder.exact = False
            self.skip(path, f"cannot read ({exc.strerror})")
            return
        self.bytes_read += node.size
        chunks = b"".join(node.content)
        if self.folder_rows_of(folder):
            folder.rows.append((path, key, chunks))  # for its own row, if its folder ends inexact
        elif self.rows is not None:
            self.file_rows.append((path, key, chunks))  # its folder keeps no row
        folder.texts.append(node_json(node).encode())
        folder.subtrees.append(None)
        folder.row.append((key, chunks, not node.xattrs))

    def add_other(self, folder: _Folder, name: str, path: str, key: StatKey, kind: str) -> None:
        """A symlink, FIFO or device: its node only (as the parent's ``Folder._node``)."""
        try:
            node = node_from_stat(name, path, Stat(key), kind, dir_fd=folder.fd)
        except OSError as exc:
            folder.exact = False
            self.skip(path, f"cannot read ({exc.strerror})")
            return
        folder.texts.append(node_json(node).encode())
        folder.subtrees.append(None)
        folder.row.append((key, None, not node.xattrs))

    def finish(self, folder: _Folder) -> bytes:
        """``folder``'s tree (kept to send) and its row: an exact folder under a UTF-8 path has one,
        an inexact one gives its files rows of their own."""
        if folder.fd is not None:
            os.close(folder.fd)
            folder.fd = None
        tree = b'{"nodes":[' + b",".join(folder.texts) + b"]}"
        tree_id = self.worker.base.content_id(tree)
        self.trees.append((tree_id, tree))
        self.held += len(tree)
        if self.folder_rows_of(folder):
            if folder.exact:
                listing = listing_signature(folder.key, folder.keys)
                subtrees = marshal.dumps(folder.subtrees, 2)
                signature = hashlib.blake2b(listing + subtrees, digest_size=20).digest()
                chunks = b"".join(content for _, content, _ in folder.row if content)
                files = encode_row(folder.row)
                self.folder_rows.append((folder.path, listing, signature, tree_id, chunks, files))
                self.held += len(files)
            else:
                self.file_rows.extend(folder.rows)
        folder.texts, folder.keys, folder.row, folder.rows = [], [], [], []
        if self.held >= OUT_BYTES:
            self.send_out()
        return tree_id

    def skip(self, path: str, error: str) -> None:
        self.skipped.append((path, error))

    def send_out(self) -> None:
        """Hand the parent what is held: trees to store, rows to record, entries skipped."""
        if self.trees or self.folder_rows or self.file_rows or self.large_files or self.skipped:
            out = (self.trees, self.folder_rows, self.file_rows, self.large_files, self.skipped)
            self.worker.channel.send(("out", *out))
        self.trees, self.folder_rows, self.file_rows, self.large_files, self.skipped = [], [], [], [], []
        self.held = 0
