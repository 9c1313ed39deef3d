"""File-level backup: walk sources, chunk changed files in parallel, build trees, commit a snapshot.

The walk runs in the calling thread (with a process listing folders ahead of it: ``walkahead.py``);
file reading+chunking+hashing+encoding runs on a worker pool (``filecontent.py``: small files in
batches, at most ``threads * 8`` jobs queued), uploads on the writer's I/O pool. A directory's
tree blob is written by whichever thread finishes its last child (or fills the slots of a batch a
worker process read: the ``filler``), so directories never wait for each other. The snapshot
manifest is written only after ``BlobWriter.flush`` made every pack and index durable, and within
the session's lease (``BlobWriter.commit``): a killed backup leaves no restore point, and its
indexed packs are reused.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.heap import limit_heap_fragmentation
from cloudkeep.pathnames import display, path_fields
from cloudkeep.repo import filecontent
from cloudkeep.repo.cache import FileCache
from cloudkeep.repo.cpus import MAX_PROCESSES, pool_threads, usable_cpus
from cloudkeep.repo.descriptors import folder_budget, raise_open_files
from cloudkeep.repo.earlyread import EARLY_FILE, EarlyReads
from cloudkeep.repo.filecontent import (
    PROC_BATCH_FILES,
    PROCESSES_ALL_CPUS,
    PROCESSES_FROM,
    PROCESSES_MIN_CPUS,
    FileContent,
    PendingFile,
)
from cloudkeep.repo.folders import Entry, Folder, listing_signature
from cloudkeep.repo.fsmeta import (
    DIR_FLAGS,
    ROOT_FLAGS,
    StatEntry,
    StatKey,
    node_from_stat,
    stat_key,
    stat_name,
    stat_names,
)
from cloudkeep.repo.lanes import Lanes
from cloudkeep.repo.masks import machine_path, matches_any
from cloudkeep.repo.memory import BufferPool
from cloudkeep.repo.procpool import ProcPool
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.snapshot import Snapshot, new_snapshot_id
from cloudkeep.repo.tree import DIR, FILE, Node
from cloudkeep.repo.walkahead import AHEAD_FROM, WalkAhead
from cloudkeep.repo.walkahead import start as start_walk_ahead
from cloudkeep.repo.walkplan import plan_walk
from cloudkeep.repo.writer import BlobWriter

# A folder of this many entries sends the small files gathered so far to the pool once the walk has
# taken its last entry, instead of waiting for the next folder's files to fill the batch: its
# entries, stat keys and chunk lists stay until its last file is read, and the next folder may be
# as large (a changed maildir folder of 41,000 messages is stat'ed whole before any is taken). The
# mail tree's incremental 178 -> 162 MiB RSS (bench/README.md, stop 43); a small folder's few
# files still share a batch with the next folder's.
FLUSH_FOLDER = 4096
# The walk lists no folder while one of at least this many entries that it has left is not yet
# stored: storing a large folder (its tree, row and their sealing, ~35 MiB transient for a maildir
# folder of 50,000 messages) overlapped the listing of the next (its stat keys and entries, as
# much), and both are work for this process's one GIL, so the wait costs little time.
LARGE_FOLDER = 16384
# A folder goes to a worker whole (``procsubtree.py``) when it holds at most this share of the
# backup's work (``walkplan.py``), or JOB_LEAST: the last one handed over is what the other worker
# may wait for at the end.
JOB_SPLIT = 32
JOB_LEAST = 64 * 8 * 1024


@dataclass
class BackupProgress:
    files_done: int
    bytes_read: int
    bytes_total: int | None
    bytes_new: int
    bytes_uploaded: int
    current_path: str | None


class _Archiver(FileContent):
    """One backup's walk (this thread) and its shared state; ``FileContent`` reads on the pool."""

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
        cpus: int,
        root_prefix: str = "",
        processes: bool | None = None,
        process_limit: int | None = None,
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
        # ... at most this many while the walk has left some of them (descriptors.py): it waits
        # for ``folder_closed``; ``walk_held`` are those it has not left (its own path).
        self.folder_limit = folder_budget(raise_open_files(), threads, PROC_BATCH_FILES)
        self.walk_held = 0
        self.folder_closed = threading.Condition(self.lock)
        self.large_folder = LARGE_FOLDER
        self.large_held = 0  # folders of ``large_folder`` entries the walk has left, not yet stored
        self.files = self.dirs = self.bytes_read = self.bytes_total = 0
        self.files_unchanged = 0  # counted by the walking thread only
        self.files_reread = 0  # of those, read after all by a rebuilt folder (under ``lock``)
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-file")
        self.filler = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ck-fill")
        self.lane_backlog = threading.Semaphore(filecontent.LANE_BACKLOG)
        self.chunk_pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ck-chunk")
        self.chunk_copies = BufferPool()
        self.slots = threading.BoundedSemaphore(threads * 8)  # jobs queued or running
        self.batch: list[PendingFile] = []  # small files gathered for the next job (walking thread)
        self.batch_bytes = 0
        self.work_queued = 0
        # Worker processes: from the first byte when asked for; by default on machines with
        # PROCESSES_MIN_CPUS cores, once the work queued is worth starting them, and below
        # PROCESSES_ALL_CPUS one only, beside the threads (filecontent.py).
        wanted = processes if processes is not None else cpus >= PROCESSES_MIN_CPUS
        if processes is None and process_limit is None:
            process_limit = 1 if cpus < PROCESSES_ALL_CPUS else MAX_PROCESSES
        self.procs = ProcPool(writer, repo.config.chunker, process_limit) if wanted else None
        self.procs_from = 0 if processes else PROCESSES_FROM
        # Below PROCESSES_ALL_CPUS cores, a first backup (nothing to look up in a cache) runs one
        # worker per core as lanes (``lanes.py``): whole folders go to them (``procsubtree.py``),
        # sized by a pass over the sources first (``walkplan.py``). A folder's files may have rows
        # of their own in the last backup's cache, which only the walk looks up.
        first = cache is None or not cache.has_previous()
        self.lanes = (
            Lanes(
                self.procs,
                cpus,
                self.go_on,
                lambda out: self.to_filler(self.take_out, out),
                self.lane_failed,
            )
            if self.procs is not None and processes is None and process_limit == 1 and first
            else None
        )
        self.plan = None
        self.job_most = 0
        self.remote_files = self.remote_dirs = self.remote_bytes_total = 0
        tree_rows = cache is not None and writer.retain_until is None
        self.subtree_options = {
            "excludes": excludes,
            "includes": includes,
            "prefix": root_prefix,
            "rows": "folders" if tree_rows else "files" if cache is not None else None,
            "large": EARLY_FILE if cache is not None else None,
        }
        self.chunker = repo.config.chunker
        self._last_progress = 0.0
        self._local = threading.local()
        # Folder rows only without retain_until: after a lock generation ends every cached file is
        # read again, which the pool does in parallel, not a rebuilt folder on its own thread.
        self.tree_cache = cache if cache is not None and writer.retain_until is None else None
        self.early = EarlyReads(self)  # large files that changed, read before the walk reaches them
        # Folders listed and stat'ed ahead by another process, with worker processes (walkahead.py):
        # ``bases`` are the source folders in the walk's order (set by ``backup_files``).
        self.ahead: WalkAhead | None = None
        self.ahead_bases: list[str] | None = None
        self.listed_here = 0  # entries the walk listed itself, until it starts the process

    def fail(self, exc: BaseException) -> None:
        with self.lock:
            self.error = self.error or exc
            self.folder_closed.notify_all()

    def lane_failed(self, exc: BaseException) -> None:
        """A lane's worker failed or was lost: files may name blobs that were in its open pack."""
        self.writer.fail(exc)
        self.fail(exc)

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
            self.folder_closed.notify()
        os.close(fd)

    def close_all(self) -> None:
        with self.lock:
            fds, self.open_fds = list(self.open_fds), set()
            self.folder_closed.notify_all()
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
                    self.files + self.remote_files,
                    self.bytes_read,
                    None,
                    stats.bytes_new,
                    stats.bytes_uploaded,
                    shown,
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
        return machine_path(path, self.root_prefix)

    def excluded(self, path: str) -> bool:
        return matches_any(self.excludes, path, self.root_prefix)

    def included(self, path: str) -> bool:
        """A file the include masks let in (when there are any)."""
        return matches_any(self.includes, path, self.root_prefix)

    def add_entry(self, parent: Folder, path: str, name: str, entry: Entry | None = None) -> Folder | None:
        """Back up the entry ``name`` of ``parent`` (``path`` names it in warnings, masks and the
        cache; ``entry`` is it listed and stat'ed). A folder is returned open: the caller walks
        it, then releases it."""
        if self.error is not None:
            return None
        if entry is None:
            entry = self.stat_entry(parent, path.rpartition("/")[0], name)
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
            if self.delegate(parent, node, path, key):
                return None
            self.folder_room()
            try:
                fd: int | None = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
            except OSError as exc:
                fd = None
                self.skip(path, f"cannot list ({exc.strerror}); backed up as an empty folder")
            child = Folder(self, node, parent, parent.reserve(key), fd, path, key)
            if fd is not None:
                return child
            child.release()
        elif kind == FILE:
            self.files += 1
            self.bytes_total += st.st_size
            if st.st_size >= self.early.min_size and self.cache:
                self.cache.record_large(path, st)
            if parent.last is not None:  # its listing is unchanged: the row is read only if needed
                self.files_unchanged += 1
                parent.add(entry)
                self.report(path)
                return None
            cached = self.unchanged(parent, entry)
            if cached is not None:
                self.files_unchanged += 1
                entry.chunks = b"".join(cached)  # one chunk: the row's own bytes object
                parent.add(entry)
                self.report(path)
                return None
            item = PendingFile(path, name, st, parent, parent.reserve(key))
            if not (self.early.reads and self.early.claim(item)):
                self.queue(item)
        else:
            parent.add(entry)
        return None

    def folder_room(self) -> None:
        """Wait until another folder may be opened: while ``folder_limit`` folders are open and
        some of them are ones the walk has left, each waiting for its queued files (and their
        subfolders) to be stored, which needs nothing more from the walk. Its own path (the
        folders it holds) is never waited for: a tree deeper than the budget goes on past it."""
        if len(self.open_fds) < self.folder_limit:  # unlocked: only the walk opens, others only close
            return
        self._wait_for_stores(lambda: len(self.open_fds) >= max(self.folder_limit, self.walk_held + 1))

    def large_room(self) -> None:
        """Wait while a large folder the walk has left is being finished (``LARGE_FOLDER``): it
        waits for its queued files only, which needs nothing more from the walk."""
        if not self.large_held:  # unlocked: only the walk raises it
            return
        self._wait_for_stores(lambda: self.large_held > 0)

    def _wait_for_stores(self, waiting: Callable[[], bool]) -> None:
        """Hand over the files gathered here (folders the walk left may wait for them), then wait
        while ``waiting()`` says so (checked under the lock), as folders are stored or one fails."""
        self.submit_batch()
        with self.folder_closed:
            while self.error is None and waiting():
                self.folder_closed.wait()

    def large_stored(self) -> None:
        """A folder counted in ``large_held`` is stored (or failed): the walk may list on."""
        with self.folder_closed:
            self.large_held -= 1
            self.folder_closed.notify_all()

    def stat_entry(self, parent: Folder, base: str, name: str) -> Entry | None:
        """The entry ``name`` of ``parent`` (listed under the path ``base``), if it is backed up:
        not a socket, not a file the include masks leave out."""
        found = stat_name(name, parent.fd)
        return self._entry(parent, base, found) if found is not None else None

    def _entry(self, folder: Folder, base: str, found: StatEntry) -> Entry | None:
        """A stat'ed entry of ``folder`` if it is backed up; its failed stat is reported (the
        folder is then inexact), a file the include masks leave out is not."""
        name, kind, key = found
        if kind is None:  # its stat failed
            folder.exact = False
            self.skip(f"{base}/{name}", f"cannot read ({key[1]})")
            return None
        if kind == FILE and self.includes and not self.included(f"{base}/{name}"):
            return None
        return Entry(name, base, kind, key)

    def unchanged(self, parent: Folder, entry: Entry) -> list[bytes] | None:
        """The chunks of a file the cache knows unchanged, if all are still stored (then recorded
        for the next backup); None when it must be read.

        The folder's row comes first: it is read once per folder and holds every file's stat key
        and chunks, so a changed folder's unchanged files cost no SQLite row each, neither read
        nor written (the folder's next row carries them; see ``Folder.keeps_rows``), and no
        index look-up either when every chunk of the row is indexed (checked once per folder)."""
        cached = parent.previous_content(entry)
        if cached is not None:
            stored = parent.row_indexed or self.indexed(cached)
        elif self.cache and parent.previous is None:  # no row: the file's own
            cached = self.cache.lookup(entry.path, entry.st)
            stored = cached is not None and self.indexed(cached)
        if cached is None or not stored or not self.writer.reuse(cached):
            return None
        if self.cache and not parent.keeps_rows():
            self.cache.record(entry.path, entry.st, cached)
        return cached

    def indexed(self, blob_ids: Iterable[bytes]) -> bool:
        """Every blob is still in the repository (one lock for them all)."""
        repo = self.repo
        with repo.lock:
            return all(blob_id in repo.index for blob_id in blob_ids)

    def walk(self, top: Folder, path: str) -> None:
        """Back up everything below ``top`` (open as ``top.fd``), whose host path is ``path``: depth
        first on an explicit stack, so a tree of any depth is walked (not Python's recursion limit)."""
        stack = [(top, iter(self.listing(top, path.rstrip("/"))))]
        while stack:
            folder, entries = stack[-1]
            for entry in entries:
                child = self.add_entry(folder, entry.path, entry.name, entry)
                if child is not None:
                    self.large_room()
                    stack.append((child, iter(self.listing(child, entry.path))))
                    break
            else:  # every entry of ``folder`` is listed
                stack.pop()
                if len(folder.keys) >= FLUSH_FOLDER:
                    self.submit_batch()
                if folder is not top:  # the caller releases ``top``
                    folder.release()

    def listing(self, folder: Folder, base: str) -> list[Entry] | Iterator[Entry]:
        """``folder``'s entries (``base`` is its path), sorted, stat'ed, masks applied; with a
        tree cache also the listing's signature, and the last backup's row if it is the same.

        A folder with a last row is stat'ed whole first: whether its listing is unchanged decides
        how its files are taken. One without (a first backup, a new folder, no tree cache) is
        stat'ed as the walk takes each entry, so its files reach the pool while the rest is
        listed: a folder of 200,000 files had kept the pool idle ~1 s (in process 8.4-8.6 →
        7.6-7.8 s, bench/README.md, stop 37). Once ``walkahead.AHEAD_FROM`` entries are listed
        here, a process lists and stats folders ahead of the walk; a folder it has sent is not
        listed here (``WalkAhead.listing``)."""
        assert folder.fd is not None  # (scandir(None) would list the working directory)
        folder.base = base
        cache = self.tree_cache
        previous = cache.folder(folder.path) if cache is not None and folder.exact else None
        rest = functools.partial(self._listed_here, folder, base)
        whole = previous is not None
        listed = self.ahead.listing(base, folder.fd, rest, whole=whole) if self.ahead is not None else None
        if listed is not None:
            raw: Iterable[StatEntry] = listed
        else:
            names = self._names(folder, base)
            if names is None:
                return []
            raw = self._stat_names(folder, base, names)
            self.listed_here += len(names)
            if self.listed_here >= AHEAD_FROM and self.ahead_bases is not None:
                skip = self.delegable()
                self.ahead = start_walk_ahead(self.ahead_bases, self.root_prefix, self.excludes, base, skip)
                self.ahead_bases = None  # started once
        if previous is None:
            if self.lanes is not None and listed is None and self.split(folder, base):
                return []
            folder.streaming = True
            return self._entries(folder, base, raw, recheck=listed is not None)
        entries = list(self._entries(folder, base, raw, recheck=listed is not None))
        folder.previous = previous if folder.exact else None
        unchanged = folder.previous is not None and folder.previous.listing == folder.listing
        folder.last = folder.previous if unchanged else None
        return entries

    def _names(self, folder: Folder, base: str, after: str | None = None) -> list[str] | None:
        """``folder``'s names (those after ``after``), sorted; None when it cannot be listed
        (reported, the folder inexact)."""
        assert folder.fd is not None
        try:
            with os.scandir(folder.fd) as it:
                return sorted(e.name for e in it if after is None or e.name > after)
        except OSError as exc:
            self.skip(base, f"cannot list ({exc.strerror})")
            folder.exact = False
            return None

    def _listed_here(self, folder: Folder, base: str, last: str | None) -> Iterator[StatEntry]:
        """The rest of a large folder after the name ``last``, listed and stat'ed here: the
        walk-ahead process stopped sending its parts."""
        names = self._names(folder, base, last)
        if names is not None:
            yield from self._stat_names(folder, base, names)

    def _stat_names(self, folder: Folder, base: str, names: list[str]) -> Iterator[StatEntry]:
        """``names`` of ``folder`` stat'ed one by one as they are taken, the exclude masks applied."""
        return stat_names(names, folder.fd, base, self.excludes, self.root_prefix)

    def _entries(
        self, folder: Folder, base: str, raw: Iterable[StatEntry], *, recheck: bool
    ) -> Iterator[Entry]:
        """``folder``'s entries from its stat'ed names as they are taken, include masks applied (and
        the exclude masks again with ``recheck``: listed by the walk-ahead process); with a tree
        cache the listing's signature once the last is taken."""
        keys: list[StatKey] = []
        excludes = self.excludes if recheck else None
        for found in raw:
            if excludes and self.excluded(f"{base}/{found[0]}"):
                continue
            entry = self._entry(folder, base, found)
            if entry is not None:
                keys.append(entry.key)
                yield entry
        if self.tree_cache is not None:
            folder.listing = listing_signature(folder.key, keys)

    # -- file content ----------------------------------------------------------------------


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
    processes: bool | None = None,
    process_limit: int | None = None,
) -> Snapshot:
    """Back up ``sources`` (absolute paths kept, like restic) and return the committed snapshot.

    ``processes``: read file content in worker processes (``procpool.py``) from the start
    (True), never (False), or once there is enough of it on a machine with at least
    ``PROCESSES_MIN_CPUS`` cores (None: below ``PROCESSES_ALL_CPUS`` one per core as lanes for a
    first backup, ``lanes.py``, else one; from there one per pool thread up to
    ``cpus.MAX_PROCESSES``); ``process_limit``: at most that many worker processes (the other pool
    threads read files themselves).

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
    cpus = usable_cpus()  # reads /proc and the cgroup files: once per backup
    workers = threads or pool_threads(cpus)
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
        cpus=cpus,
        root_prefix=prefix,
        processes=processes,
        process_limit=process_limit,
    )
    for path in missing:
        archiver.skip(path, "source path does not exist")
    if archiver.lanes is not None:  # how much lies below each folder, while the workers start
        bases = _walk_order(prefix, paths)
        lanes = archiver.lanes  # started once there is enough work (else the threads read it all)
        masks = (archiver.excludes, prefix)
        plan = archiver.plan = plan_walk(
            bases, masks, filecontent.FILE_WORK, EARLY_FILE, archiver.procs_from, lanes.start
        )
        if plan.total >= archiver.procs_from:
            archiver.job_most = max(plan.total // JOB_SPLIT, JOB_LEAST)
            plan.keep(archiver.job_most)
            archiver.early.start_found(plan.large, paths)  # read here while the workers take folders
    if archiver.procs is not None:  # where worker processes are: a process may list ahead
        archiver.ahead_bases = _walk_order(prefix, paths)
    try:
        if cache:
            archiver.early.start(cache, paths)
        top = Folder(
            archiver, Node(name="", type=DIR, mode=0o755), None, 0, os.open(prefix or "/", ROOT_FLAGS), ""
        )
        if "/" in paths:  # the entire machine: the root itself is the source
            archiver.walk(top, prefix or "/")
        else:
            _walk_trie(archiver, top, prefix, _source_trie(paths))
        if archiver.ahead is not None:
            archiver.ahead.close()
        archiver.submit_batch()
        top.release()
        archiver.root_done.wait()  # every file job and tree store ends by filling its parent, even on error
        archiver.pool.shutdown(wait=True)
        if archiver.lanes is not None:  # their open packs to the writer
            archiver.lanes.close()
        archiver.filler.shutdown(wait=True)
        archiver.chunk_pool.shutdown(wait=True)
        archiver.early.finish()
        if archiver.error is not None:
            raise archiver.error
        if archiver.procs is not None:  # their open packs to the writer, then they end
            archiver.procs.finish()
            archiver.procs.close()
        archiver.report(None, force=True)  # everything is read; the last packs may take a while to go up
        writer.flush(tick=archiver.tick)  # every pack and index durable before the manifest exists
        if archiver.error is not None:  # cancelled by the last progress report
            raise archiver.error
    except BaseException:
        if archiver.ahead is not None:
            archiver.ahead.close()
        archiver.pool.shutdown(wait=True, cancel_futures=True)
        if archiver.procs is not None:  # killed first: the lane's relay reads it until it ends
            archiver.procs.close(graceful=False)
        if archiver.lanes is not None:
            archiver.lanes.abort()
        archiver.filler.shutdown(wait=True)  # not cancelled: each fills slots, even after a failure
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
            "files": archiver.files + archiver.remote_files,
            "dirs": archiver.dirs + archiver.remote_dirs,
            "files_unchanged": archiver.files_unchanged - archiver.files_reread,
            "bytes_total": archiver.bytes_total + archiver.remote_bytes_total,
            "bytes_read": archiver.bytes_read,
            "bytes_new": stats.bytes_new,
            "bytes_stored": stats.bytes_stored,
            "bytes_uploaded": stats.bytes_uploaded,
            "dedup_ratio": round((archiver.bytes_total + archiver.remote_bytes_total) / stats.bytes_new, 3)
            if stats.bytes_new
            else None,
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


def _walk_order(prefix: str, paths: list[str]) -> list[str]:
    """The source folders' host paths as the walk lists them: in its order (component by
    component, as ``_walk_trie`` goes), none below another (the walk of that one covers it)."""
    bases = sorted({prefix if path == "/" else prefix + path for path in paths}, key=lambda b: b.split("/"))
    kept: list[str] = []
    for base in bases:
        if not any(base.startswith(k + "/") for k in kept):
            kept.append(base)
    return kept


def _walk_trie(archiver: _Archiver, parent: Folder, prefix: str, trie: _Trie) -> None:
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
        key = stat_key(name, st)
        archiver.folder_room()
        fd = os.open(name, DIR_FLAGS, dir_fd=parent.fd)
        child = Folder(archiver, node, parent, parent.reserve(key), fd, path, key)
        _walk_trie(archiver, child, path, sub)
        child.release()


def _lock_warnings(refused: int) -> list[str]:
    """Reused packs whose lock an agent's credential could not extend (docs/security.md)."""
    if not refused:
        return []
    return [f"{refused} reused pack(s) locked for less than this restore point (agents may not extend locks)"]
