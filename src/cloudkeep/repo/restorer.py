"""Restore: browse trees, restore a snapshot / subtree / single files with metadata, stream one file.

Restore is planned per pack, not per file: every needed blob is mapped to (file, offset) targets,
then each pack is fetched once (whole, or one range covering the needed blobs) on an I/O pool and
its blobs are decrypted, verified against their content ids and written with ``pwrite``. Files
are pre-sized with ``ftruncate`` so all-zero chunks of sparse files are simply not written.
Metadata is applied last (directories deepest first) so writing does not disturb mtimes.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cloudkeep.errors import (
    ConflictError,
    InsufficientSpaceError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
)
from cloudkeep.pathnames import display, is_text
from cloudkeep.repo.archiver import BackupProgress, matches
from cloudkeep.repo.fsmeta import apply_metadata
from cloudkeep.repo.memory import ThreadBuffers, limit_heap_fragmentation
from cloudkeep.repo.pack import BlobEntry, pack_key
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node, TreeEntry
from cloudkeep.storage.base import ObjectNotFoundError, RangeStream, read_exactly

REMOTE_SCHEMES = ("s3", "azure")  # per-request latency and cost: a pack's blobs in one request
LOCAL_SPAN = 4 * 2**20  # local reads are cheap: smaller units keep every thread busy
RANGE_GAP = 2**20  # skip unneeded stretches longer than this instead of downloading them


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    verified: int = 0  # files whose every chunk was checked against its content id
    dirs: int = 0
    warnings: list[str] = field(default_factory=list)


def _norm(path: str) -> str:
    return "/" + "/".join(p for p in path.split("/") if p)


def _root(repo: Repository, snapshot_id: str) -> bytes:
    return bytes.fromhex(repo.load_snapshot(snapshot_id).tree)


def lookup(repo: Repository, snapshot_id: str, path: str) -> Node:
    """The node at ``path`` inside the snapshot (``/`` is a synthetic root directory)."""
    node = Node(name="", type=DIR, mode=0o755, subtree=_root(repo, snapshot_id))
    for part in [p for p in path.split("/") if p]:
        if node.type != DIR or node.subtree is None:
            raise NotFoundError(f"{path} is not in restore point {snapshot_id}")
        found = next((n for n in repo.load_tree(node.subtree) if n.name == part), None)
        if found is None:
            raise NotFoundError(f"{path} is not in restore point {snapshot_id}", hint="browse it with `ls`")
        node = found
    return node


def resolve_path(repo: Repository, snapshot_id: str, path: str) -> str:
    """The exact path inside the snapshot for ``path``, which may name entries the way messages show
    them (``cloudkeep.pathnames.display``: bytes that are not UTF-8 as ``\\xNN``). A component
    that exists literally wins; otherwise the one entry whose displayed name matches is taken."""
    tree_id: bytes | None = _root(repo, snapshot_id)
    exact: list[str] = []
    for part in [p for p in path.split("/") if p]:
        nodes = repo.load_tree(tree_id) if tree_id is not None else []
        found = next((n for n in nodes if n.name == part), None)
        if found is None:
            shown = [n for n in nodes if not is_text(n.name) and display(n.name) == part]
            found = shown[0] if len(shown) == 1 else None
        if found is None:
            return path  # not there: ``lookup`` says so with the path as given
        exact.append(found.name)
        tree_id = found.subtree if found.type == DIR else None
    return "/" + "/".join(exact)


def walk(repo: Repository, tree_id: bytes, prefix: str) -> Iterator[tuple[str, Node]]:
    """Depth-first (path, node) for everything below a tree."""
    for node in repo.load_tree(tree_id):
        path = f"{prefix.rstrip('/')}/{node.name}"
        yield path, node
        if node.type == DIR and node.subtree is not None:
            yield from walk(repo, node.subtree, path)


def list_tree(
    repo: Repository, snapshot_id: str, path: str = "/", *, recursive: bool = False
) -> Iterator[TreeEntry]:
    node = lookup(repo, snapshot_id, path)
    path = _norm(path)
    if node.type != DIR:
        yield TreeEntry.of(path, node)
        return
    assert node.subtree is not None
    if recursive:
        for sub_path, sub in walk(repo, node.subtree, path):
            yield TreeEntry.of(sub_path, sub)
    else:
        for sub in repo.load_tree(node.subtree):
            yield TreeEntry.of(f"{path.rstrip('/')}/{sub.name}", sub)


def find(
    repo: Repository, pattern: str, *, snapshot_ids: list[str] | None = None
) -> Iterator[tuple[str, TreeEntry]]:
    """Entries whose name (or, for patterns with ``/``, whole path) matches a glob, across snapshots."""
    ids = (
        snapshot_ids
        if snapshot_ids is not None
        else [s.id for s in sorted(repo.snapshots(), key=lambda s: s.time)]
    )
    for sid in ids:
        snap = repo.load_snapshot(sid)
        for path, node in walk(repo, bytes.fromhex(snap.tree), "/"):
            if matches(pattern, path):  # the same globs as backup masks
                yield snap.id, TreeEntry.of(path, node)


def _os_error(exc: OSError, path: str) -> Exception:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"restore target {path}: no space left on device", hint="free space or pick another target"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"restore target {path}: permission denied ({exc.strerror})")
    return exc


def _skip(stream: RangeStream, count: int, scratch: memoryview) -> None:
    """Read past ``count`` unneeded bytes (a gap between needed blobs, at most ``RANGE_GAP``)."""
    while count > 0:
        n = len(read_exactly(stream, scratch[: min(count, len(scratch))]))
        if not n:
            return
        count -= n


def _all_zero(data: bytes | memoryview) -> bool:
    """Zero chunks compress, so they come back as ``bytes``; a raw view (incompressible or tiny
    data) is simply written, which is always correct."""
    return isinstance(data, bytes) and data[:1] == b"\0" and data.count(0) == len(data)


@dataclass(slots=True)
class _Target:
    path: str
    offset: int
    sparse: bool
    create: bool = False  # this write creates the file (it has exactly one chunk)
    size: int = 0


class _Restorer:
    def __init__(self, repo: Repository, progress: Callable[[BackupProgress], None] | None) -> None:
        self.repo, self.progress = repo, progress
        self.result = RestoreResult()
        self.by_blob: dict[bytes, list[_Target]] = defaultdict(list)
        self.finishing: list[tuple[str, Node]] = []  # metadata to apply at the end
        self.links: list[tuple[str, str]] = []
        self.precreate: list[tuple[str, int]] = []
        self.first_link: dict[tuple[int, int], str] = {}
        self.set_owner = os.geteuid() == 0
        self.lock = threading.Lock()
        self.buffers = ThreadBuffers(RANGE_GAP)  # per thread: sealed blobs read, gaps skipped
        self.bytes_written = 0

    def plan(self, node: Node, dest: str) -> None:
        try:
            self._plan(node, dest)
        except OSError as exc:
            raise _os_error(exc, dest) from exc

    def _plan(self, node: Node, dest: str) -> None:
        if node.type == DIR:
            os.makedirs(dest, exist_ok=True)
            self.result.dirs += 1
            assert node.subtree is not None
            for child in self.repo.load_tree(node.subtree):
                self._plan(child, os.path.join(dest, child.name))
        elif node.type == FILE:
            if node.links > 1:
                key = (node.device, node.inode)
                if key in self.first_link:
                    self.links.append((self.first_link[key], dest))
                    return
                self.first_link[key] = dest
            if os.path.lexists(dest) and not os.path.isfile(dest):
                raise ConflictError(f"cannot restore a file over {dest}, which is not a file")
            # One-chunk files are created by the worker that writes them (one open per file);
            # others are created and pre-sized in parallel before the data arrives.
            single = len(node.content) == 1
            if not single:
                self.precreate.append((dest, node.size))
            offset = 0
            for blob_id in node.content:
                self.by_blob[blob_id].append(
                    _Target(dest, offset, node.sparse, create=single, size=node.size)
                )
                offset += self.repo.locate(blob_id).entry.raw_length
            self.result.files += 1
            self.result.bytes += node.size
        elif node.type == SYMLINK:
            if os.path.lexists(dest):
                os.unlink(dest)
            os.symlink(node.target, dest)
        elif node.type == FIFO:
            if not os.path.lexists(dest):
                os.mkfifo(dest)
        elif node.type in (CHARDEV, BLOCKDEV) and not os.path.lexists(dest):
            try:
                os.mknod(dest, node.mode | (0o020000 if node.type == CHARDEV else 0o060000), node.rdev)
            except PermissionError:
                self.result.warnings.append(f"{dest}: device nodes need root, skipped")
                return
        self.finishing.append((dest, node))

    def fetch_all(self, threads: int | None = None) -> None:
        """Fetch each pack's needed blobs, several packs at a time.

        A pack's needed blobs are read in one streamed request (``ObjectStore.open_range``),
        split where more than ``RANGE_GAP`` of unneeded bytes lie between them (and, locally,
        every ``LOCAL_SPAN``); each blob is read into one reusable buffer per thread, so memory
        is a blob per thread whatever the pack size. Remote stores use 4 threads (latency),
        local ones cores + 1.
        """
        remote = self.repo.store.scheme in REMOTE_SCHEMES
        span = 2**62 if remote else LOCAL_SPAN  # one pack of small files must not keep one thread busy alone
        threads = threads or (4 if remote else (os.cpu_count() or 2) + 1)
        by_pack: dict[str, list[BlobEntry]] = defaultdict(list)
        for blob_id in self.by_blob:
            loc = self.repo.locate(blob_id)
            by_pack[loc.pack_id].append(loc.entry)
        runs: list[tuple[str, list[BlobEntry]]] = []
        for pack_id, entries in by_pack.items():
            entries.sort(key=lambda e: e.offset)
            run: list[BlobEntry] = []
            for entry in entries:
                if run and (
                    entry.offset - (run[-1].offset + run[-1].length) > RANGE_GAP
                    or entry.offset + entry.length - run[0].offset > span
                ):
                    runs.append((pack_id, run))
                    run = []
                run.append(entry)
            runs.append((pack_id, run))
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-restore") as pool:
            # Creating files is metadata-bound (slow on busy disks): do it on many threads too.
            for _ in pool.map(self._create, self.precreate):
                pass
            for _ in pool.map(self._restore_run, runs):
                pass

    def _create(self, item: tuple[str, int]) -> None:
        path, size = item
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.ftruncate(fd, size)
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, path) from exc

    def _restore_run(self, item: tuple[str, list[BlobEntry]]) -> None:
        pack_id, entries = item
        start, end = entries[0].offset, entries[-1].offset + entries[-1].length
        try:
            with self.repo.store.open_range(pack_key(pack_id), start, end - start) as stream:
                position = start
                for entry in entries:
                    _skip(stream, entry.offset - position, self.buffers.get("read", RANGE_GAP))
                    sealed = read_exactly(stream, self.buffers.get("read", entry.length))
                    position = entry.offset + len(sealed)
                    self._restore_blob(pack_id, entry, sealed)
        except ObjectNotFoundError:
            raise IntegrityError(
                f"pack {pack_id} is missing from storage", hint="run `cloudkeep repo check`"
            ) from None

    def _restore_blob(self, pack_id: str, entry: BlobEntry, sealed: memoryview) -> None:
        data = self.repo.decode_blob(entry, pack_id, sealed, reuse_buffer=True)  # a short read fails here
        for target in self.by_blob[entry.id]:
            if target.sparse and _all_zero(data):  # leave a hole in the pre-sized file
                if target.create:
                    self._create((target.path, target.size))
                continue
            self._write(target, data)
        with self.lock:
            self.bytes_written += len(data) * len(self.by_blob[entry.id])
        if self.progress:
            self.progress(
                BackupProgress(self.result.files, self.bytes_written, self.result.bytes, 0, 0, None)
            )

    def _write(self, target: _Target, data: bytes | memoryview) -> None:
        try:
            flags = os.O_WRONLY | (os.O_CREAT | os.O_TRUNC if target.create else 0)
            fd = os.open(target.path, flags, 0o600)
            try:
                view = memoryview(data)
                offset = target.offset
                while view:
                    written = os.pwrite(fd, view, offset)
                    view, offset = view[written:], offset + written
            finally:
                os.close(fd)
        except OSError as exc:
            raise _os_error(exc, target.path) from exc

    def _apply(self, item: tuple[str, Node]) -> None:
        dest, node = item
        try:
            apply_metadata(dest, node, set_owner=self.set_owner)
        except OSError as exc:
            with self.lock:
                self.result.warnings.append(f"{dest}: cannot set metadata ({exc.strerror})")

    def finish(self) -> None:
        for existing, dest in self.links:
            if os.path.lexists(dest):
                os.unlink(dest)
            os.link(existing, dest)
        # Leaves in parallel (independent), then directories deepest first, so that setting a
        # directory's mtime is not undone by touching its children.
        leaves = [item for item in self.finishing if item[1].type != DIR]
        dirs = sorted(
            (i for i in self.finishing if i[1].type == DIR), key=lambda i: i[0].count("/"), reverse=True
        )
        with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ck-meta") as pool:
            for _ in pool.map(self._apply, leaves, chunksize=64):
                pass
        for item in dirs:
            self._apply(item)
        self.result.verified = self.result.files  # every blob was verified by decode_blob


def restore(
    repo: Repository,
    snapshot_id: str,
    target: Path,
    *,
    paths: list[str] | None = None,
    progress: Callable[[BackupProgress], None] | None = None,
) -> RestoreResult:
    """Restore all of a snapshot (or only ``paths`` inside it) below ``target``, keeping absolute paths."""
    limit_heap_fragmentation()
    restorer = _Restorer(repo, progress)
    target = Path(target)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(exc, str(target)) from exc
    for path in paths or ["/"]:
        node = lookup(repo, snapshot_id, path)
        dest = os.path.join(target, _norm(path).lstrip("/"))
        try:
            os.makedirs(os.path.dirname(dest) or str(target), exist_ok=True)
        except OSError as exc:
            raise _os_error(exc, dest) from exc
        if _norm(path) == "/":  # the synthetic root has no metadata of its own: restore what is inside
            assert node.subtree is not None
            for child in repo.load_tree(node.subtree):
                restorer.plan(child, os.path.join(target, child.name))
        else:
            restorer.plan(node, dest.rstrip("/") or str(target))
    restorer.fetch_all()
    restorer.finish()
    return restorer.result


def cat_file(repo: Repository, snapshot_id: str, path: str, out: BinaryIO) -> int:
    """Stream one file's content to a binary stream (stdout), verifying every chunk; returns bytes."""
    node = lookup(repo, snapshot_id, path)
    if node.type != FILE:
        raise NotFoundError(f"{path} in restore point {snapshot_id} is a {node.type}, not a file")
    written = 0
    pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ck-cat")
    try:
        # Read ahead a few chunks while writing the current one; memory stays at ~8 chunks.
        pending = [pool.submit(repo.load_blob, b) for b in node.content[:8]]
        next_index = len(pending)
        while pending:
            data = pending.pop(0).result()
            if next_index < len(node.content):
                pending.append(pool.submit(repo.load_blob, node.content[next_index]))
                next_index += 1
            try:
                out.write(data)
            except OSError as exc:
                raise _os_error(exc, getattr(out, "name", "output")) from exc
            written += len(data)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return written
