"""File-level backup: walk sources, chunk changed files in parallel, build trees, commit a snapshot.

The walk runs in the calling thread; file reading+chunking+hashing+encoding runs on a worker pool
(bounded: at most ``max_inflight_files`` queued), uploads on the writer's I/O pool. A directory's
tree blob is written by whichever thread finishes its last child, so directories never wait for
each other. The snapshot manifest is written only after ``BlobWriter.flush`` made every pack and
index durable, and within the session's lease (``BlobWriter.commit``): a killed backup leaves no
restore point, and its indexed packs are reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import marshal
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Union

from cloudkeep.compat import SLOTS, UTC
from cloudkeep.errors import CloudkeepError, ConfigurationError, NotFoundError
from cloudkeep.pathnames import display, path_fields
from cloudkeep.repo.cache import FileCache, FolderRow
from cloudkeep.repo.chunker import StreamCutter
from cloudkeep.repo.crypto import ID_SIZE
from cloudkeep.repo.fsmeta import group_name, node_from_stat, node_type, user_name
from cloudkeep.repo.masks import matches
from cloudkeep.repo.memory import limit_heap_fragmentation
from cloudkeep.repo.pack import DATA, TREE
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import Snapshot, new_snapshot_id
from cloudkeep.repo.tree import DIR, FILE, Node, encode_tree
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import RangeStream

PARALLEL_FILE = 32 * 2**20  # encode chunks of files this big on several threads
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the host folder holding "/" may be a symlink
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class BackupProgress:
    files_done: int
    bytes_read: int
    bytes_total: int | None
    bytes_new: int
    bytes_uploaded: int
    current_path: str | None


_StatKey = tuple[Union[int, str], ...]  # marshal-able


def _stat_key(name: str, st: os.stat_result) -> _StatKey:
    """Everything an entry's node is made of, as far as ``lstat`` shows it. Changing xattrs, mode or
    owner moves the ctime; a symlink's target never changes in place; names map to owner names."""
    return (
        name, st.st_mode, st.st_ino, st.st_dev, st.st_nlink, st.st_uid, st.st_gid, user_name(st.st_uid),
        group_name(st.st_gid), st.st_size, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev,
    )  # fmt: skip


@dataclass(**SLOTS)
class _Entry:
    """A listed entry, its stat taken before any is backed up (the listing's signature needs all).

    Unless it is a folder or a file read anew, it is also its folder's child until the tree is
    built: its node is made only if the folder's last tree cannot be reused, so its xattrs and
    link target then cost nothing. A file of an unchanged listing has no ``content`` yet: it is
    looked up only if the tree is rebuilt.
    """

    name: str
    path: str
    st: os.stat_result
    kind: str
    key: _StatKey
    content: list[bytes] | None = None


class _Dir:
    """A directory whose tree blob is stored once every child node is known.

    ``fd`` is the directory, open: its entries are read and opened relative to it, so the walk
    reaches paths longer than ``PATH_MAX`` and never follows a symlink swapped in mid-walk. It is
    closed when the tree blob is stored, after the last file job opened its file.

    With a file cache, the listing's signature (the folder's own stat, each entry's stat key)
    finds the folder's last row: when it matches (``carried``), its files' cache rows are neither
    read nor written one by one; when the tree's signature (plus each subfolder's tree) matches
    too, the tree stored last time is reused.
    """

    def __init__(
        self,
        archiver: _Archiver,
        node: Node,
        parent: _Dir | None,
        slot: int,
        fd: int | None,
        path: str,
        key: _StatKey | None = None,
    ) -> None:
        self.archiver, self.node, self.parent, self.slot, self.fd = archiver, node, parent, slot, fd
        self.path, self.key = path, key
        self.children: list[Node | _Entry | None] = []
        self.keys: list[_StatKey] = []
        self.remaining = 1  # the walk itself holds one reference until the listing is complete
        self.exact = fd is not None  # every entry is in the tree (none skipped or failed)
        self.listing: bytes | None = None  # the listing's signature, once listed
        self.previous: FolderRow | None = None  # the last backup's row for this folder
        self.last: FolderRow | None = None  # the same when the listing is unchanged
        self._old: dict[str, tuple[_StatKey, list[bytes]]] | None = None  # previous tree's files
        if fd is not None:
            with archiver.lock:
                archiver.open_fds.add(fd)

    def reserve(self, key: _StatKey) -> int:
        with self.archiver.lock:
            self.children.append(None)
            self.keys.append(key)
            self.remaining += 1
            return len(self.children) - 1

    def add(self, entry: _Entry) -> None:
        """A child that is ready as it is listed (reserve and fill at once)."""
        with self.archiver.lock:
            self.children.append(entry)
            self.keys.append(entry.key)

    def fill(self, slot: int, node: Node | _Entry | None) -> None:
        if self._settle(slot, node):
            self._finish()

    def release(self) -> None:
        """The walk has listed every child."""
        with self.archiver.lock:
            self.remaining -= 1
            done = self.remaining == 0
        if done:
            self._finish()

    def _settle(self, slot: int, node: Node | _Entry | None) -> bool:
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
        folder: _Dir | None = self
        while folder is not None:
            folder = folder._store()

    def _store(self) -> _Dir | None:
        """Store this folder's tree; the parent when that completed it too."""
        try:
            self.node.subtree = self._tree()
            self.children, self.keys = [], []
        except BaseException as exc:
            self.archiver.fail(exc)
        finally:
            self.archiver.close_fd(self.fd)
        if self.parent is None:
            self.archiver.root_done.set()
            return None
        return self.parent if self.parent._settle(self.slot, self.node) else None

    def _tree(self) -> bytes:
        """The last backup's tree when nothing in the folder changed, else a new one."""
        archiver, cache = self.archiver, self.archiver.tree_cache
        if cache is not None and self.listing is None and self.exact:  # a folder above the sources
            self.listing = archiver.listing_signature(self.key, self.keys)
            self.previous = cache.folder(self.path)
            unchanged = self.previous is not None and self.previous.listing == self.listing
            self.last = self.previous if unchanged else None
        signature = self._signature() if cache is not None and self.listing is not None else None
        last = self.last
        if cache is not None and last is not None and self.exact and signature == last.signature:
            chunks = [last.chunks[i : i + ID_SIZE] for i in range(0, len(last.chunks), ID_SIZE)]
            if archiver.indexed([last.tree, *chunks]):
                cache.record_folder(self.path, last)
                return last.tree
        nodes = [node for node in map(self._node, self.children) if node is not None]
        tree_id, _ = archiver.writer.save(TREE, encode_tree(nodes))
        if cache is not None and self.listing is not None and signature is not None and self.exact:
            chunks_now = b"".join(c for n in nodes if n.type == FILE for c in n.content)
            keys = marshal.dumps(self.keys, 2)
            cache.record_folder(self.path, FolderRow(self.listing, signature, tree_id, chunks_now, keys))
        return tree_id

    def previous_content(self, name: str, st: os.stat_result) -> list[bytes] | None:
        """A file's chunks from this folder's last tree, when its stat key is the one stored with
        that tree (a folder whose listing was unchanged last time wrote no rows for its files)."""
        if self.previous is None:
            return None
        if self._old is None:
            self._old = self._read_previous(self.previous)
        old = self._old.get(name)
        return old[1] if old is not None and old[0] == _stat_key(name, st) else None

    def _read_previous(self, row: FolderRow) -> dict[str, tuple[_StatKey, list[bytes]]]:
        try:
            keys = {key[0]: key for key in marshal.loads(row.keys) if isinstance(key[0], str)}
            nodes = self.archiver.repo.load_tree(row.tree)
        except (ValueError, EOFError, TypeError, IndexError, CloudkeepError):
            return {}  # a damaged row or a tree gone since: the files are read
        return {n.name: (keys[n.name], n.content) for n in nodes if n.type == FILE and n.name in keys}

    def _signature(self) -> bytes:
        subtrees = [c.subtree if isinstance(c, Node) else None for c in self.children]
        return hashlib.blake2b((self.listing or b"") + marshal.dumps(subtrees, 2), digest_size=20).digest()

    def _node(self, child: Node | _Entry | None) -> Node | None:
        if not isinstance(child, _Entry):
            return child
        archiver = self.archiver
        try:
            node = node_from_stat(child.name, child.path, child.st, child.kind, dir_fd=self.fd)
            if child.kind == FILE:
                if child.content is None:  # an unchanged listing, but a subfolder changed
                    child.content = archiver.unchanged(self, child.path, child.name, child.st)
                if child.content is None:  # no usable cache row after all: read it here
                    assert self.fd is not None
                    child.content, node.size = archiver.read_file(child.path, child.name, child.st, self.fd)
                    with archiver.lock:
                        archiver.files_unchanged -= 1  # counted when its listing was found unchanged
                    if archiver.cache:
                        archiver.cache.record(child.path, child.st, child.content)
        except OSError as exc:
            self.exact = False
            archiver.skip(child.path, f"cannot read ({exc.strerror})")
            return None
        node.content = child.content or []
        return node


class _Archiver:
    def __init__(
        self,
        repo: Repository,
        writer: BlobWriter,
        *,
        includes: list[str],
        excludes: list[str],
        cache: FileCache | None,
        progress: Callable[[BackupProgress], None] | None,
        threads: int,
        root_prefix: str = "",
    ) -> None:
        self.repo, self.writer, self.cache, self.progress = repo, writer, cache, progress
        self.includes, self.excludes = includes, excludes
        self.root_prefix = root_prefix  # host folder holding the machine's "/" ("" when it is "/")
        self.lock = threading.Lock()
        self.root_done = threading.Event()
        self.error: BaseException | None = None
        self.warnings: list[str] = []
        self.skipped: list[dict[str, str]] = []  # entries not backed up: {path, path_b64?, error}
        self.skipped_total = 0
        self.open_fds: set[int] = set()  # directories still open (closed on any abort too)
        self.files = self.dirs = self.bytes_read = self.bytes_total = 0
        self.files_unchanged = 0
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-file")
        self.chunk_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-chunk")
        self.slots = threading.BoundedSemaphore(threads * 8)
        self.chunker = repo.config.chunker
        self._last_progress = 0.0
        self._local = threading.local()
        # Folder trees are reused only without per-pack lock extension: a reused tree would have
        # to note every chunk below it as reused, which is what rebuilding it does.
        self.tree_cache = cache if cache is not None and writer.retain_until is None else None

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.error = self.error or exc

    def skip(self, path: str, error: str) -> None:
        """An entry that is not in the restore point: reported by name, never dropped silently."""
        with self.lock:
            self.skipped_total += 1
            if len(self.skipped) < 1000:
                self.skipped.append({**path_fields(path), "error": error})
                self.warnings.append(f"{display(path)}: {error}")

    def close_fd(self, fd: int | None) -> None:
        if fd is None:
            return
        with self.lock:
            self.open_fds.discard(fd)
        os.close(fd)

    def close_all(self) -> None:
        with self.lock:
            fds, self.open_fds = list(self.open_fds), set()
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    def report(self, path: str | None, *, force: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_progress < 0.25:
            return
        self._last_progress = now
        stats = self.writer.stats
        shown = display(path) if path is not None else None  # progress is text for people and messages
        try:
            self.progress(
                BackupProgress(
                    self.files, self.bytes_read, None, stats.bytes_new, stats.bytes_uploaded, shown
                )
            )
        except BaseException as exc:  # e.g. the caller cancels: stop walking, abort like any other error
            self.fail(exc)

    def tick(self) -> None:
        """Progress while the last uploads run; a cancelling callback stops the backup here too."""
        self.report(None)
        if self.error is not None:
            raise self.error

    # -- walking ---------------------------------------------------------------------------

    def machine_path(self, path: str) -> str:
        """How the backed-up machine names a host path: masks and manifests use the machine's view."""
        return (path[len(self.root_prefix) :] or "/") if self.root_prefix else path

    def excluded(self, path: str) -> bool:
        return any(matches(p, self.machine_path(path)) for p in self.excludes)

    def add_entry(self, parent: _Dir, path: str, name: str, entry: _Entry | None = None) -> _Dir | None:
        """Back up the entry ``name`` of ``parent`` (``path`` names it in warnings, masks and the
        cache; ``entry`` is it listed and stat'ed). A folder is returned open: the caller walks
        it, then releases it."""
        if self.error is not None:
            return None
        if entry is None:
            entry = self.stat_entry(parent, path, name)
            if entry is None:
                return None
        st, kind, key = entry.st, entry.kind, entry.key
        if kind == DIR:
            self.dirs += 1
            try:
                node = node_from_stat(name, path, st, kind, dir_fd=parent.fd)
            except OSError as exc:
                parent.exact = False
                self.skip(path, f"cannot read ({exc.strerror})")
                return None
            try:
                fd: int | None = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
            except OSError as exc:
                fd = None
                self.skip(path, f"cannot list ({exc.strerror}); backed up as an empty folder")
            child = _Dir(self, node, parent, parent.reserve(key), fd, path, key)
            if fd is not None:
                return child
            child.release()
        elif kind == FILE:
            self.files += 1
            self.bytes_total += st.st_size
            if parent.last is not None:  # its listing is unchanged: the row is read only if needed
                self.files_unchanged += 1
                parent.add(entry)
                self.report(path)
                return None
            cached = self.unchanged(parent, path, name, st)
            if cached is not None:
                self.files_unchanged += 1
                entry.content = cached
                parent.add(entry)
                self.report(path)
                return None
            try:
                node = node_from_stat(name, path, st, kind, dir_fd=parent.fd)
            except OSError as exc:
                parent.exact = False
                self.skip(path, f"cannot read ({exc.strerror})")
                return None
            slot = parent.reserve(key)
            self.slots.acquire()
            self.pool.submit(self.file_job, path, name, st, node, parent, slot)
        else:
            parent.add(entry)
        return None

    def stat_entry(self, parent: _Dir, path: str, name: str) -> _Entry | None:
        """The entry, if it is backed up: not a socket, not a file the include masks leave out."""
        try:
            st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        except OSError as exc:
            parent.exact = False
            self.skip(path, f"cannot read ({exc.strerror})")
            return None
        kind = node_type(st)
        if kind is None:
            return None
        masks = self.includes
        if kind == FILE and masks and not any(matches(m, self.machine_path(path)) for m in masks):
            return None
        return _Entry(name, path, st, kind, _stat_key(name, st))

    def unchanged(self, parent: _Dir, path: str, name: str, st: os.stat_result) -> list[bytes] | None:
        """The chunks of a file the cache knows unchanged, if all are still stored (then recorded
        for the next backup); None when it must be read."""
        cached = self.cache.lookup(path, st) if self.cache else None
        if cached is None:
            cached = parent.previous_content(name, st)
        if cached is None or not self.indexed(cached) or not self.writer.reuse(cached):
            return None
        if self.cache:
            self.cache.record(path, st, cached)
        return cached

    def indexed(self, blob_ids: list[bytes]) -> bool:
        """Every blob is still in the repository (one lock for them all)."""
        repo = self.repo
        with repo.lock:
            return all(blob_id in repo.index for blob_id in blob_ids)

    def walk(self, top: _Dir, path: str) -> None:
        """Back up everything below ``top`` (open as ``top.fd``), whose host path is ``path``: depth
        first on an explicit stack, so a tree of any depth is walked (not Python's recursion limit)."""
        stack = [(top, iter(self.listing(top, path.rstrip("/"))))]
        while stack:
            folder, entries = stack[-1]
            for entry in entries:
                child = self.add_entry(folder, entry.path, entry.name, entry)
                if child is not None:
                    stack.append((child, iter(self.listing(child, entry.path))))
                    break
            else:  # every entry of ``folder`` is listed
                stack.pop()
                if folder is not top:  # the caller releases ``top``
                    folder.release()

    @staticmethod
    def listing_signature(key: _StatKey | None, keys: list[_StatKey]) -> bytes:
        # marshal version 2 writes no back-references: equal values give equal bytes, fast (repr
        # cost 13 us per entry). Another Python's marshal at worst misses, never matches wrongly.
        return hashlib.blake2b(marshal.dumps((key, keys), 2), digest_size=20).digest()

    def listing(self, folder: _Dir, base: str) -> list[_Entry]:
        """``folder``'s entries (``base`` is its path), sorted, stat'ed, masks applied; with a
        tree cache also the listing's signature, and the last backup's row if it is the same."""
        assert folder.fd is not None  # (scandir(None) would list the working directory)
        try:
            with os.scandir(folder.fd) as it:
                names = sorted(entry.name for entry in it)
        except OSError as exc:
            self.skip(base, f"cannot list ({exc.strerror})")
            folder.exact = False
            return []
        entries, excludes = [], self.excludes
        for name in names:
            path = f"{base}/{name}"
            if (not excludes or not self.excluded(path)) and (entry := self.stat_entry(folder, path, name)):
                entries.append(entry)
        if self.tree_cache is not None:
            folder.listing = self.listing_signature(folder.key, [entry.key for entry in entries])
            folder.previous = self.tree_cache.folder(folder.path) if folder.exact else None
            unchanged = folder.previous is not None and folder.previous.listing == folder.listing
            folder.last = folder.previous if unchanged else None
        return entries

    # -- file content ----------------------------------------------------------------------

    def file_job(self, path: str, name: str, st: os.stat_result, node: Node, parent: _Dir, slot: int) -> None:
        result: Node | None = node
        try:
            if st.st_size:  # an empty file has nothing to read: no open
                assert parent.fd is not None
                node.content, node.size = self.read_file(path, name, st, parent.fd)
            if self.cache:
                self.cache.record(path, st, node.content)
        except OSError as exc:
            self.skip(path, f"cannot read ({exc.strerror})")
            result = None
        except BaseException as exc:
            self.fail(exc)
            result = None
        finally:
            self.slots.release()
        parent.fill(slot, result)
        self.report(path)

    def read_file(self, path: str, name: str, st: os.stat_result, dir_fd: int) -> tuple[list[bytes], int]:
        """Chunk and store a file: its chunk ids and the bytes read."""
        # Relative to the directory (open until its tree is stored). A symlink swapped in since
        # the stat fails (O_NOFOLLOW) and a FIFO reads as empty (O_NONBLOCK), never blocks.
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        try:
            if st.st_size < self.chunker.min_size:
                return self.small_file(fd, path, st.st_size)
            with open(fd, "rb", buffering=0, closefd=False) as fh:
                return self.chunk_file(fh, path, st.st_size)
        finally:
            os.close(fd)

    def _cutter(self) -> StreamCutter:
        cutter: StreamCutter | None = getattr(self._local, "cutter", None)
        if cutter is None:
            cutter = self._local.cutter = StreamCutter(self.chunker)
        return cutter

    def small_file(self, fd: int, path: str, size: int) -> tuple[list[bytes], int]:
        """A file smaller than the minimum chunk is one chunk (FastCDC never cuts below it): read
        whole with plain reads (one for the data, one seeing the end), no chunker buffer and no
        file object. One that grew past the minimum since its stat is chunked from the start."""
        limit = self.chunker.min_size
        parts: list[bytes] = []
        total, want = 0, size + 1
        while total < limit:
            try:
                part = os.read(fd, want)
            except BlockingIOError:  # a FIFO swapped in, no data yet: reads as its end, never blocks
                break
            if not part:
                break
            parts.append(part)
            total, want = total + len(part), 64 * 1024
        if total >= limit:
            os.lseek(fd, 0, os.SEEK_SET)
            with open(fd, "rb", buffering=0, closefd=False) as fh:
                return self.chunk_file(fh, path, total)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        content = [self.writer.save(DATA, data)[0]] if data else []
        with self.lock:
            self.bytes_read += total
        return content, total

    def chunk_file(self, fh: RangeStream, path: str, size: int) -> tuple[list[bytes], int]:
        """Chunk and store the open file ``fh``; ``path`` is for progress reports."""
        content: list[bytes] = []
        window: list[Future[tuple[bytes, bool]]] = []
        total = 0
        for data in self._cutter().cut(fh):
            self.report(path)  # throttled; lets a cancelling callback stop a huge file too
            if self.error is not None:  # failed or cancelled: stop at this chunk boundary
                raise self.error
            total += len(data)
            if size >= PARALLEL_FILE:
                # The cutter reuses its buffer: copy before another thread sees the chunk.
                window.append(self.chunk_pool.submit(self.writer.save, DATA, bytes(data)))
                if len(window) >= 4:
                    content.append(window.pop(0).result()[0])
            else:
                content.append(self.writer.save(DATA, data)[0])
        content.extend(f.result()[0] for f in window)
        with self.lock:
            self.bytes_read += total
        return content, total


_Trie = dict[str, tuple["_Trie", bool]]


def _source_trie(sources: list[str]) -> _Trie:
    """Source paths as nested components; ``True`` marks a component that is itself a source."""
    trie: _Trie = {}
    for source in sorted(sources):
        parts = [p for p in source.split("/") if p]
        level = trie
        for i, part in enumerate(parts):
            sub, _ = level.setdefault(part, ({}, False))
            if i == len(parts) - 1:
                level[part] = (sub, True)
            level = sub
    return trie


def backup_files(
    repo: Repository,
    sources: Sequence[str | Path],
    *,
    includes: list[str] | None = None,
    excludes: list[str] | None = None,
    hostname: str | None = None,
    tags: list[str] | None = None,
    cache_dir: Path | None = None,
    progress: Callable[[BackupProgress], None] | None = None,
    retain_until: datetime | None = None,
    bandwidth_limit: int | None = None,
    threads: int | None = None,
    root: Path | str | None = None,
    wall_clock: Callable[[], datetime] | None = None,
) -> Snapshot:
    """Back up ``sources`` (absolute paths kept, like restic) and return the committed snapshot.

    ``root`` is the host folder that holds the machine's ``/`` (a mounted snapshot, a chroot, a
    simulated machine): sources, masks and the manifest then use the machine's own paths.
    """
    if not sources:
        raise ConfigurationError("nothing to back up: no source paths given")
    prefix = os.path.abspath(os.fspath(root)).rstrip("/") if root is not None else ""
    paths = sorted({os.path.normpath("/" + os.fspath(s).lstrip("/")) for s in sources} if prefix else
                   {os.path.abspath(os.fspath(s)) for s in sources})  # fmt: skip
    # A missing source is skipped and named (the rest is backed up, the run ends 'warning');
    # only when none exists is there nothing to back up.
    missing = [path for path in paths if not os.path.lexists(prefix + path)]
    if len(missing) == len(paths):
        where = f" under {prefix}" if prefix else ""
        raise NotFoundError(f"source path {', '.join(missing)} does not exist{where}")
    paths = [path for path in paths if path not in missing]
    limit_heap_fragmentation()
    hostname = hostname or socket.gethostname()
    started = wall_clock() if wall_clock else datetime.now(UTC)  # tests move a backup in time
    clock = time.monotonic()
    cache = FileCache(cache_dir, repo.id, hostname, paths) if cache_dir else None
    workers = threads or max(2, os.cpu_count() or 2)  # more threads than cores only add GIL hand-offs
    writer = BlobWriter(
        repo,
        hostname=hostname,
        retain_until=retain_until,
        bandwidth_limit=bandwidth_limit,
        wall_clock=wall_clock,
    )
    archiver = _Archiver(
        repo,
        writer,
        includes=includes or [],
        excludes=excludes or [],
        cache=cache,
        progress=progress,
        threads=workers,
        root_prefix=prefix,
    )
    for path in missing:
        archiver.skip(path, "source path does not exist")
    try:
        top = _Dir(
            archiver, Node(name="", type=DIR, mode=0o755), None, 0, os.open(prefix or "/", _ROOT_FLAGS), ""
        )
        if "/" in paths:  # the entire machine: the root itself is the source
            archiver.walk(top, prefix or "/")
        else:
            _walk_trie(archiver, top, prefix, _source_trie(paths))
        top.release()
        archiver.root_done.wait()  # every file job and tree store ends by filling its parent, even on error
        archiver.pool.shutdown(wait=True)
        archiver.chunk_pool.shutdown(wait=True)
        if archiver.error is not None:
            raise archiver.error
        archiver.report(None, force=True)  # everything is read; the last packs may take a while to go up
        writer.flush(tick=archiver.tick)  # every pack and index durable before the manifest exists
        if archiver.error is not None:  # cancelled by the last progress report
            raise archiver.error
    except BaseException:
        archiver.pool.shutdown(wait=True, cancel_futures=True)
        archiver.chunk_pool.shutdown(wait=True, cancel_futures=True)
        writer.abort()
        archiver.close_all()
        if cache:
            cache.discard()
        raise
    assert top.node.subtree is not None
    stats = writer.stats
    snapshot = Snapshot(
        id=new_snapshot_id(),
        time=started,
        hostname=hostname,
        tags=list(tags or []),
        paths=paths,
        kind="files",
        tree=top.node.subtree.hex(),
        retain_until=retain_until,
        stats={
            "files": archiver.files,
            "dirs": archiver.dirs,
            "files_unchanged": archiver.files_unchanged,
            "bytes_total": archiver.bytes_total,
            "bytes_read": archiver.bytes_read,
            "bytes_new": stats.bytes_new,
            "bytes_stored": stats.bytes_stored,
            "bytes_uploaded": stats.bytes_uploaded,
            "dedup_ratio": round(archiver.bytes_total / stats.bytes_new, 3) if stats.bytes_new else None,
            "compression_ratio": round(stats.bytes_new / stats.bytes_stored, 3)
            if stats.bytes_stored
            else None,
            "duration_s": round(time.monotonic() - clock, 3),
            "warnings": (archiver.warnings + _lock_warnings(stats.locks_refused))[:100],
            # what is not in this restore point, by name (the first 100) and in all
            "errors": archiver.skipped[:100],
            "errors_total": archiver.skipped_total,
        },
    )
    try:
        # the session ends after the manifest
        writer.commit(lambda: repo.save_snapshot(snapshot, lock=writer.lock_until is not None))
    except BaseException:
        if cache:
            cache.discard()
        raise
    if cache:
        cache.commit()
    archiver.report(None, force=True)
    return snapshot


def _walk_trie(archiver: _Archiver, parent: _Dir, prefix: str, trie: _Trie) -> None:
    for name, (sub, is_source) in sorted(trie.items()):
        path = f"{prefix}/{name}"
        if is_source:
            if (folder := archiver.add_entry(parent, path, name)) is not None:
                archiver.walk(folder, path)
                folder.release()
            continue
        st = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
        if not stat.S_ISDIR(st.st_mode):
            archiver.skip(path, "not a folder (a symlink?): the sources below it are not backed up")
            continue
        node = node_from_stat(name, path, st, DIR, dir_fd=parent.fd)
        key = _stat_key(name, st)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
        child = _Dir(archiver, node, parent, parent.reserve(key), fd, path, key)
        _walk_trie(archiver, child, path, sub)
        child.release()


def _lock_warnings(refused: int) -> list[str]:
    """Reused packs whose lock an agent's credential could not extend (docs/security.md)."""
    if not refused:
        return []
    return [f"{refused} reused pack(s) locked for less than this restore point (agents may not extend locks)"]
