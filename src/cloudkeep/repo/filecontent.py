"""The pool side of a backup: read, chunk, hash and store the content of files new to the cache.

The walking thread hands files over with ``queue``: a file below the minimum chunk joins a batch
(at most ``BATCH_FILES`` files or ``BATCH_BYTES``), and one pool job reads the whole batch; a
larger file is a job of its own, whose chunks go to the chunk pool when it is very large. Each
file fills its own slot in its folder (its node, or None when it cannot be read), so a batch
changes neither the trees, nor per-file errors, progress or cancellation. Split from
``archiver.py``, which walks.

Once ``PROCESSES_FROM`` of work is queued (content bytes, and ``FILE_WORK`` per file), on
machines with ``PROCESSES_MIN_CPUS`` cores or when asked for, pool threads hand their jobs to a
worker process of their own (``procpool.py``), which reads, chunks, hashes, compresses, encrypts
and packs the files on another core and writes their nodes' tree text; the thread only answers
it. Below ``PROCESSES_ALL_CPUS`` cores only one thread gets a worker, from there at most
``cpus.MAX_PROCESSES``; the others read files themselves.

A first backup below ``PROCESSES_ALL_CPUS`` cores (nothing to look up in a cache) runs a worker
per core as lanes instead (``lanes.py``): the walk hands them whole folders (``delegate``), the
parts of large folders of files (``split``) and batches, sent ahead, and reads here only the
large files a pass over the sources found (``walkplan.py``, ``earlyread.py``). The parent's GIL
then costs per folder and per part, not per file: with one worker beside the threads it had been
the limit, at one core, while the worker used half of one.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cloudkeep.compat import SLOTS
from cloudkeep.repo.cache import FileCache, FolderRow
from cloudkeep.repo.chunker import ChunkerParams, StreamCutter, close_opened, open_ahead, read_small
from cloudkeep.repo.crypto import split_ids
from cloudkeep.repo.fsmeta import (
    FILE_FLAGS,
    Stat,
    StatKey,
    StatLike,
    node_from_stat,
    reachable,
    stat_key,
)
from cloudkeep.repo.memory import BufferPool
from cloudkeep.repo.pack import DATA, TREE
from cloudkeep.repo.procpool import WorkerLostError
from cloudkeep.repo.tree import FILE, FileText, Node
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import RangeStream

if TYPE_CHECKING:
    from cloudkeep.repo.earlyread import EarlyReads
    from cloudkeep.repo.folders import Folder
    from cloudkeep.repo.lanes import Lanes
    from cloudkeep.repo.procpool import FileResult, ProcPool
    from cloudkeep.repo.walkplan import WalkPlan

# Worker processes (procpool.py) start once this much work is queued: a small backup is over
# before two interpreters would have started (about 0.2 s of CPU each).
PROCESSES_FROM = 16 * 2**20
# Each file counts as this many bytes of work besides its content: opening, reading and storing a
# small file costs the parent's GIL about what 8 KiB of content does. Counted by content alone, a
# folder of 200,000 files of ~220 bytes started its worker after a third of them (in process,
# 10.3-10.6 s; 8.1-8.2 s counted so), 5,000 files of ~2 KiB never did (0.36-0.38 s; 0.25 s), and
# the usr and venv corpora did not move (bench/README.md, stop 37).
FILE_WORK = 8 * 1024
# ... and by default with this many cores: below PROCESSES_ALL_CPUS a worker per core as lanes for
# a first backup, else one worker beside the pool threads (the small-file phase is GIL-bound, so
# the threads alone leave the second core idle), one per pool thread from there (up to
# cpus.MAX_PROCESSES). On 2 cores one worker took the
# usr corpus's first backup from 3.84 to 3.11 s in the engine bench (restic ÷ cloudkeep 1.18 ->
# 1.53) for ~22 MiB more memory, all processes counted (110 -> 132 MiB, restic 141); two workers
# were as fast but held ~50 MiB more than the threads (bench/README.md, stop 34).
PROCESSES_MIN_CPUS = 2
PROCESSES_ALL_CPUS = 4
PARALLEL_FILE = 32 * 2**20  # encode chunks of files this big on several threads
# Files below the minimum chunk go to the pool in batches of at most this many files or bytes:
# enough to amortise a job's hand-off, few enough that both workers get some of a small folder.
BATCH_FILES = 16
BATCH_BYTES = 1024 * 1024
# With worker processes a batch costs a round trip between a pool thread and its worker (the
# results; the last new-chunk question rides along, procworker.py), during which the worker idles:
# 16 files left the workers at ~0.7 cores on gzipped man pages. Larger batches, in process: 6.15 ->
# 5.06 s (bench/README.md, "First backup in two workers"); 256 files against 64 (each one chunk
# group, procworker.GROUP_CHUNKS), in turns, medians: node 2.94 -> 2.75 s, mail 5.09 -> 4.75 s, usr
# 2.99 -> 2.76 s (stop 45). The walk then runs up to 16 such batches ahead, each file's folder open:
# descriptors.py keeps that within the limit.
PROC_BATCH_FILES = 256
PROC_BATCH_BYTES = 4 * 2**20
# A large folder of files goes to worker processes in parts of this many names (``Folder.split``).
PART_ENTRIES = 1024
# Lane results waiting for the filler thread at most; a lane's thread waits for room (and its
# worker, once its pipe is full, with it). Unbounded, the lanes' threads had queued ~30 MiB of
# results behind the filler while it stored a large folder, at the peak of a mail store's first
# backup (466,000 objects).
LANE_BACKLOG = 4


@dataclass(**SLOTS)
class PendingFile:
    """A file to read on the pool: its slot in ``parent`` is filled with its node (or None)."""

    path: str
    name: str
    st: StatLike
    parent: Folder
    slot: int


class FileContent:
    """File jobs for ``_Archiver`` (a mixin: the state below is the archiver's)."""

    writer: BlobWriter
    cache: FileCache | None
    chunker: ChunkerParams
    lock: threading.Lock
    error: BaseException | None
    bytes_read: int
    pool: ThreadPoolExecutor
    filler: ThreadPoolExecutor  # one thread: fills the slots of batches read by worker processes
    lane_backlog: threading.Semaphore  # lane results queued at the filler (``LANE_BACKLOG``)
    chunk_pool: ThreadPoolExecutor
    chunk_copies: BufferPool  # a large file's chunks, copied for the chunk pool
    slots: threading.BoundedSemaphore
    batch: list[PendingFile]
    batch_bytes: int
    work_queued: int  # content handed to the pool so far, plus FILE_WORK per file (the walk counts it)
    procs: ProcPool | None  # worker processes, used once ``work_queued`` reaches ``procs_from``
    procs_from: int
    early: EarlyReads
    lanes: Lanes | None  # a first backup's workers, sent jobs ahead (``lanes.py``), or None
    plan: WalkPlan | None  # each folder's subtree work (``walkplan.py``), for ``delegate``
    job_most: int  # the most work one folder handed over may hold
    subtree_options: dict[str, object]  # the backup's masks and cache rows, for a folder job
    remote_files: int  # counted by folder jobs (under ``lock``)
    remote_dirs: int
    remote_bytes_total: int
    tree_cache: FileCache | None
    _local: threading.local

    def fail(self, exc: BaseException) -> None: ...
    def skip(self, path: str, error: str) -> None: ...
    def report(self, path: str | None, *, force: bool = False) -> None: ...

    def queue(self, item: PendingFile) -> None:
        """Hand a file to the pool: a small one joins the batch being gathered, a larger one goes
        alone (its chunks may go to the chunk pool). One job per batch spares the walking thread a
        submit, a future and a semaphore turn per file, which starved the workers on small files."""
        self.work_queued += item.st.st_size + FILE_WORK
        if item.st.st_size >= self.chunker.min_size:
            self.submit([item])
            return
        self.batch.append(item)
        self.batch_bytes += item.st.st_size
        procs = self.procs is not None and self.work_queued >= self.procs_from  # workers take it
        files, size = (PROC_BATCH_FILES, PROC_BATCH_BYTES) if procs else (BATCH_FILES, BATCH_BYTES)
        if len(self.batch) >= files or self.batch_bytes >= size:
            self.submit_batch()

    def submit_batch(self) -> None:
        """Send the small files gathered so far (the walk calls it once more when it is over)."""
        if self.batch:
            batch, self.batch, self.batch_bytes = self.batch, [], 0
            self.submit(batch)

    def submit(self, files: list[PendingFile]) -> None:
        if self.lane_files(files):  # bounded by ``LANE_WORK``, not the pool's job slots
            return
        self.slots.acquire()
        try:
            self.pool.submit(self.file_job, files)
        except BaseException:
            self.slots.release()
            raise

    # -- lanes (worker processes sent jobs ahead: ``lanes.py``) --------------------------------

    def lane_files(self, files: list[PendingFile]) -> bool:
        """Send a batch to the least busy lane, once one has room (its slots then fill on the filler)."""
        lanes = self.lanes
        if lanes is None:
            return False
        work = sum(item.st.st_size for item in files) + FILE_WORK * len(files)
        lane = lanes.take(work, wait=True)  # the workers read faster than this process's threads
        if lane is None:
            return False
        sent, items = _sendable(files)

        def done(message: tuple[Any, ...] | None) -> None:  # on the lane's thread
            self.to_filler(self.lane_files_done, files, sent, message)

        return lanes.send(lane, work, ("files", items), done)

    def to_filler(self, handle: Callable[..., object], *args: Any) -> None:
        """``handle(*args)`` on the filler, from a lane's thread, once fewer than ``LANE_BACKLOG``
        lane results wait there."""
        self.lane_backlog.acquire()

        def handled() -> None:
            try:
                handle(*args)
            finally:
                self.lane_backlog.release()

        try:
            self.filler.submit(handled)
        except BaseException:
            self.lane_backlog.release()
            raise

    def lane_files_done(
        self, files: list[PendingFile], sent: list[int], message: tuple[Any, ...] | None
    ) -> None:
        """A batch a lane's worker read (on the filler): its slots filled, as ``file_job``'s."""
        nodes: list[Node | FileText | None] = []
        try:
            if message is None:
                raise WorkerLostError("the backup worker process ended before its batch did")
            nodes = self.batch_nodes(files, sent, message[1])
        except BaseException as exc:
            self.fail(exc)
        nodes.extend([None] * (len(files) - len(nodes)))
        self.fill_slots(files, nodes, release=False)

    def read_early_below(self, path: str) -> bool:
        """A large file below ``path`` is read here (``EarlyReads``): its folder is not handed over."""
        return any(large.startswith(path + "/") for large in self.early.reads)

    def delegable(self) -> list[str]:
        """The outermost folders worker processes would take, whole or in parts (the walk-ahead
        skips them)."""
        plan, most = self.plan, self.job_most
        if plan is None or self.lanes is None or not most:
            return []
        taken = {path for path, work in plan.work.items() if work <= most or plan.nested[path] <= most}
        return [path for path in taken if path.rpartition("/")[0] not in taken]

    def split(self, folder: Folder, base: str) -> bool:
        """Hand a large folder's entries to the lanes' workers in parts of ``PART_ENTRIES`` (they
        walk its subfolders whole: the plan says those are small); waits for room. False: the
        walk takes its entries."""
        lanes, plan = self.lanes, self.plan
        if lanes is None or plan is None or not self.job_most or folder.key is None or folder.fd is None:
            return False  # (no job_most: too little work to start workers)
        work, nested = plan.work.get(folder.path), plan.nested.get(folder.path)
        if work is None or nested is None or nested > self.job_most or not reachable(folder.path):
            return False
        if self.read_early_below(folder.path):
            return False
        first = lanes.take(0, wait=True)
        if first is None:  # no worker runs: the walk takes it
            return False
        lanes.done(first, 0)
        names = self._names(folder, base)
        if names is None:
            return True  # it cannot be listed (named): an empty, inexact folder
        count = -(-len(names) // PART_ENTRIES)
        each = (work - nested) // max(count, 1)
        folder.split(count)
        for index in range(count):
            part = names[index * PART_ENTRIES : (index + 1) * PART_ENTRIES]
            lane = lanes.take(each, wait=True)
            job = ("part", folder.path, folder.key, part, self.subtree_options)
            done = functools.partial(self.part_done, folder, index)
            if lane is None or not lanes.send(lane, each, job, done):
                self.fail(WorkerLostError("the backup's worker processes ended"))  # (why: said first)
                folder.part_done(index, None)
        return True

    def part_done(self, folder: Folder, index: int, message: tuple[Any, ...] | None) -> None:
        """On a lane's thread: the part's result goes to the filler (where folders complete)."""
        self.to_filler(self.part_filled, folder, index, message)

    def part_filled(self, folder: Folder, index: int, message: tuple[Any, ...] | None) -> None:
        part = None
        try:
            if message is None:
                raise WorkerLostError(
                    "the backup worker process ended before a part of a folder it was given"
                )
            part = message[1]
            self.count_remote(message[2:6])
        except BaseException as exc:
            self.fail(exc)
        finally:
            folder.part_done(index, part)

    def count_remote(self, counts: tuple[int, ...]) -> None:
        files, dirs, total, read = counts
        with self.lock:
            self.remote_files += files
            self.remote_dirs += dirs
            self.remote_bytes_total += total
            self.bytes_read += read

    def delegate(self, parent: Folder, node: Node, path: str, key: StatKey) -> bool:
        """Hand the folder at ``path`` and all below it to a lane's worker (``procsubtree.py``) when
        the plan says it is not too large; waits for a lane to have room. False: the walk takes it."""
        lanes, plan = self.lanes, self.plan
        if lanes is None or plan is None or not self.job_most:
            return False
        work = plan.work.get(path)
        if work is None or work > self.job_most or not reachable(path):
            return False
        if self.read_early_below(path):
            return False
        lane = lanes.take(work, wait=True)
        if lane is None:
            return False
        slot = parent.reserve(key)

        def done(message: tuple[Any, ...] | None) -> None:  # on the lane's thread
            self.to_filler(self.subtree_done, parent, slot, node, message)

        if not lanes.send(lane, work, ("subtree", path, key, self.subtree_options), done):
            parent.fill(slot, None)  # its worker is gone: the backup fails (``Lanes._relay``)
        return True

    def subtree_done(self, parent: Folder, slot: int, node: Node, message: tuple[Any, ...] | None) -> None:
        """A delegated folder's result (on the filler): counted, and its node in its parent's slot."""
        done: Node | None = None
        try:
            if message is None:
                raise WorkerLostError("the backup worker process ended before a folder it was given")
            tree_id = message[1]
            self.count_remote(message[2:6])
            if tree_id is not None:
                node.subtree, done = tree_id, node
        except BaseException as exc:
            self.fail(exc)
        finally:
            parent.fill(slot, done)

    def take_out(self, out: tuple[Any, ...]) -> None:
        """What a folder job sent on the way (on the filler): its trees stored, its rows recorded,
        its skipped entries named."""
        try:
            trees, folder_rows, file_rows, large, skipped = out
            for tree_id, text in trees:
                self.writer.save(TREE, memoryview(text), tree_id)
            cache = self.cache
            if cache is not None:
                for path, listing, signature, tree, chunks, rows in folder_rows:
                    cache.record_folder(path, FolderRow(listing, signature, tree, chunks, rows))
                for path, key, chunks in file_rows:
                    cache.record(path, Stat(key), [chunks])
                for path, key in large:
                    cache.record_large(path, Stat(key))
            for path, error in skipped:
                self.skip(path, error)
        except BaseException as exc:
            self.fail(exc)

    def file_job(self, files: list[PendingFile]) -> None:
        """Read ``files`` in turn on a pool thread, each filling its slot; one that cannot be read
        is skipped with its error, not the batch. After a failure or a cancel the rest only fill
        their slots (empty), so their folders still complete.

        A batch a worker process read fills its slots on the ``filler`` thread: filling stores the
        trees of the folders it completes, and meanwhile this thread hands the worker its next
        batch (it had waited ~2 ms a batch for it, in all a third of its time)."""
        done = 0
        opened: list[int | OSError | None] = []  # a batch read here: opened ahead, closed at its end
        filling = False
        try:
            nodes = self.proc_nodes(files) if self.procs is not None else None  # None: read here
            if nodes is not None:
                self.filler.submit(self.fill_slots, files, nodes)
                filling = True
                return
            if len(files) > 1 and self.error is None:
                opened = self.open_ahead(files)
            for item in files:
                ahead = opened[done] if opened else None
                node = self.read_entry(item, ahead) if self.error is None else None
                done += 1
                item.parent.fill(item.slot, node)
                self.report(item.path)
        except BaseException as exc:  # a folder's completion failing leaves no slot unfilled either
            self.fail(exc)
            for item in files[done:]:
                item.parent.fill(item.slot, None)
        finally:
            close_opened(opened)
            if not filling:
                self.slots.release()

    def fill_slots(
        self, files: list[PendingFile], nodes: list[Node | FileText | None], *, release: bool = True
    ) -> None:
        """Fill the slots of a batch a worker read (on the ``filler`` thread), whatever fails; then
        its job slot is free (a lane's batch took none)."""
        done = 0
        try:
            for item, node in zip(files, nodes):
                done += 1
                item.parent.fill(item.slot, node)
                self.report(item.path)
        except BaseException as exc:
            self.fail(exc)
            for item in files[done:]:
                item.parent.fill(item.slot, None)
        finally:
            if release:
                self.slots.release()

    @staticmethod
    def open_ahead(files: list[PendingFile]) -> list[int | OSError | None]:
        """A batch's non-empty files opened, their content asked for at once (``chunker.open_ahead``);
        None for an empty file (``read_entry`` opens none) or one to open when it is read."""
        sized = [item for item in files if item.st.st_size]
        fds = iter(open_ahead([(item.name, item.parent.fd, item.st.st_size) for item in sized], FILE_FLAGS))
        return [next(fds) if item.st.st_size else None for item in files]

    def proc_nodes(self, files: list[PendingFile]) -> list[Node | FileText | None] | None:
        """The batch's nodes, its content stored by this thread's worker process; None when no
        worker takes it (too little work queued yet to pay for starting one, or none starts).

        Empty files (nothing to read) and paths too long to open by name stay on this thread. A
        worker that fails ends the session (``BlobWriter.fail``): files may already name blobs
        that were in its open pack."""
        assert self.procs is not None
        if self.error is not None or self.work_queued < self.procs_from:
            return None
        if self.lanes is not None:
            return None  # the workers are the lanes'
        worker = self.procs.worker()
        if worker is None:
            return None
        sent, items = _sendable(files)
        try:
            results = worker.run(items, self.go_on) if items else []
        except BaseException as exc:
            self.procs.drop(worker)
            self.writer.fail(exc)
            raise
        return self.batch_nodes(files, sent, results)

    def batch_nodes(
        self, files: list[PendingFile], sent: list[int], results: list[FileResult | None]
    ) -> list[Node | FileText | None]:
        """The batch's nodes from a worker's ``results`` for the files ``sent`` (by index); the
        others (empty, or a path too long to open by name) are read here."""
        by_index = dict(zip(sent, results))
        nodes: list[Node | FileText | None] = []
        for i, item in enumerate(files):
            if i not in by_index:
                nodes.append(self.read_entry(item) if self.error is None else None)
                continue
            result = by_index[i]
            nodes.append(self.proc_node(item, result) if result is not None else None)
        return nodes

    def go_on(self, path: str | None) -> bool:
        """Asked by a worker at each chunk group: progress, and whether the backup goes on."""
        self.report(path)
        return self.error is None

    def proc_node(self, item: PendingFile, result: FileResult) -> FileText | None:
        text, chunks, total, error, bare = result
        if text is None:
            self.skip(item.path, f"cannot read ({error[1] if error else 'unknown error'})")
            return None
        if self.cache and not item.parent.keeps_rows():
            self.cache.record(item.path, item.st, split_ids(chunks))
        with self.lock:
            self.bytes_read += total
        return FileText(item.name, text, chunks, bare)

    def read_entry(self, item: PendingFile, opened: int | OSError | None = None) -> Node | None:
        """The node of a file new to the cache, its content stored; None when it cannot be read.
        ``opened``: its descriptor (its batch closes it) or open error from ``open_ahead``."""
        path, name, st, dir_fd = item.path, item.name, item.st, item.parent.fd
        assert dir_fd is not None  # open until every slot of the folder is filled
        try:
            if isinstance(opened, OSError):
                raise opened
            if not st.st_size:  # an empty file has nothing to read: no open
                node = node_from_stat(name, path, st, FILE, dir_fd=dir_fd)
            else:
                fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd) if opened is None else opened
                try:  # xattrs through the open file: no second path lookup
                    node = node_from_stat(name, path, st, FILE, dir_fd=dir_fd, fd=fd)
                    node.content, node.size = self.read_open(fd, path, st)
                finally:
                    if opened is None:
                        os.close(fd)
            if self.cache and not item.parent.keeps_rows():  # else its folder's row carries it
                self.cache.record(path, st, node.content)
            return node
        except OSError as exc:
            self.skip(path, f"cannot read ({exc.strerror})")
        except BaseException as exc:
            self.fail(exc)
        return None

    def read_file(self, path: str, name: str, st: StatLike, dir_fd: int) -> tuple[list[bytes], int]:
        """Chunk and store a file: its chunk ids and the bytes read."""
        # Relative to the directory (open until its tree is stored). A symlink swapped in since
        # the stat fails (O_NOFOLLOW) and a FIFO reads as empty (O_NONBLOCK), never blocks.
        fd = os.open(name, FILE_FLAGS, dir_fd=dir_fd)
        try:
            return self.read_open(fd, path, st)
        finally:
            os.close(fd)

    def read_open(self, fd: int, path: str, st: StatLike) -> tuple[list[bytes], int]:
        """Chunk and store the file open as ``fd`` (``st`` its stat from the walk)."""
        if st.st_size < self.chunker.min_size:
            return self.small_file(fd, path, st.st_size)
        with open(fd, "rb", buffering=0, closefd=False) as fh:
            return self.chunk_file(fh, path, st.st_size)

    def _names(self, folder: Folder, base: str, after: str | None = None) -> list[str] | None: ...

    def _cutter(self) -> StreamCutter:
        cutter: StreamCutter | None = getattr(self._local, "cutter", None)
        if cutter is None:
            cutter = self._local.cutter = StreamCutter(self.chunker)
        return cutter

    def small_file(self, fd: int, path: str, size: int) -> tuple[list[bytes], int]:
        """A file smaller than the minimum chunk is one chunk (FastCDC never cuts below it), read
        with ``read_small``; one that grew past the minimum since its stat is chunked from the start."""
        data = read_small(fd, size, self.chunker.min_size)
        if data is None:
            os.lseek(fd, 0, os.SEEK_SET)
            with open(fd, "rb", buffering=0, closefd=False) as fh:
                return self.chunk_file(fh, path, size)
        content = [self.writer.save(DATA, data)[0]] if data else []
        with self.lock:
            self.bytes_read += len(data)
        return content, len(data)

    def chunk_file(self, fh: RangeStream, path: str, size: int) -> tuple[list[bytes], int]:
        """Chunk and store the open file ``fh``; ``path`` is for progress reports.

        A large file's chunks are hashed here and only the new ones go to the chunk pool to be
        encoded: a rewritten database has a few new chunks among hundreds it already stored, and
        a copy plus a hand-off per known chunk cost more than its hash (the incremental's cost)."""
        if size < PARALLEL_FILE:
            return self._chunks(fh, path, size)
        with self.chunk_copies.using():  # its chunks' copies reuse memory until it is stored
            return self._chunks(fh, path, size)

    def _chunks(self, fh: RangeStream, path: str, size: int) -> tuple[list[bytes], int]:
        writer = self.writer
        parts: list[bytes | Future[tuple[bytes, bool]]] = []  # in file order
        waiting = 0  # futures in ``parts`` not yet known done
        total = 0
        for data in self._cutter().cut(fh):
            self.report(path)  # throttled; lets a cancelling callback stop a huge file too
            if self.error is not None:  # failed or cancelled: stop at this chunk boundary
                raise self.error
            total += len(data)
            if size < PARALLEL_FILE:
                parts.append(writer.save(DATA, data)[0])
                continue
            blob_id = writer.repo.crypter.content_id(data)
            if writer.stored(blob_id):
                parts.append(writer.save(DATA, data, blob_id)[0])  # no encoding: the index has it
                continue
            # The cutter reuses its buffer: copy before another thread sees the chunk (into a
            # recycled buffer: fresh memory per chunk cost a page fault per 4 KiB).
            buf, copy = self.chunk_copies.copy(data)
            parts.append(self.chunk_pool.submit(self._save_copy, buf, copy, blob_id))
            waiting += 1
            if waiting >= 4:  # bounded: at most four chunks copied and queued per file
                waiting = _settle(parts)
        content = [part if isinstance(part, bytes) else part.result()[0] for part in parts]
        with self.lock:
            self.bytes_read += total
        return content, total

    def _save_copy(self, buf: bytearray, data: memoryview, blob_id: bytes) -> tuple[bytes, bool]:
        """On the chunk pool: store a chunk copied into ``buf``, then lend ``buf`` out again."""
        try:
            return self.writer.save(DATA, data, blob_id)
        finally:
            self.chunk_copies.give_back(buf)


def _sendable(files: list[PendingFile]) -> tuple[list[int], list[tuple[str, StatKey]]]:
    """Which files of a batch a worker reads (by index) and what it is sent for them: not the
    empty ones (nothing to read) nor paths too long to open by name."""
    sent = [i for i, item in enumerate(files) if item.st.st_size and reachable(item.path)]
    return sent, [(files[i].path, _key(files[i])) for i in sent]


def _key(item: PendingFile) -> StatKey:
    st = item.st
    return st.key if isinstance(st, Stat) else stat_key(item.name, st)


def _settle(parts: list[bytes | Future[tuple[bytes, bool]]]) -> int:
    """Wait for the oldest unfinished chunk in ``parts``; returns how many are still pending."""
    pending = [i for i, part in enumerate(parts) if not isinstance(part, bytes)]
    first = pending[0]
    future = parts[first]
    assert not isinstance(future, bytes)
    parts[first] = future.result()[0]
    return len(pending) - 1
