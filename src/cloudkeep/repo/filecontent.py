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
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudkeep.compat import SLOTS
from cloudkeep.repo.cache import FileCache
from cloudkeep.repo.chunker import ChunkerParams, StreamCutter, close_opened, open_ahead, read_small
from cloudkeep.repo.crypto import split_ids
from cloudkeep.repo.fsmeta import FILE_FLAGS, Stat, StatKey, StatLike, node_from_stat, reachable, stat_key
from cloudkeep.repo.memory import BufferPool
from cloudkeep.repo.pack import DATA
from cloudkeep.repo.tree import FILE, FileText, Node
from cloudkeep.repo.writer import BlobWriter
from cloudkeep.storage.base import RangeStream

if TYPE_CHECKING:
    from cloudkeep.repo.folders import Folder
    from cloudkeep.repo.procpool import FileResult, ProcPool

# Worker processes (procpool.py) start once this much work is queued: a small backup is over
# before two interpreters would have started (about 0.2 s of CPU each).
PROCESSES_FROM = 16 * 2**20
# Each file counts as this many bytes of work besides its content: opening, reading and storing a
# small file costs the parent's GIL about what 8 KiB of content does. Counted by content alone, a
# folder of 200,000 files of ~220 bytes started its worker after a third of them (in process,
# 10.3-10.6 s; 8.1-8.2 s counted so), 5,000 files of ~2 KiB never did (0.36-0.38 s; 0.25 s), and
# the usr and venv corpora did not move (bench/README.md, stop 37).
FILE_WORK = 8 * 1024
# ... and by default with this many cores: one worker beside the pool threads below
# PROCESSES_ALL_CPUS (the small-file phase is GIL-bound, so the threads alone leave the second core
# idle), one per pool thread from there (up to cpus.MAX_PROCESSES). On 2 cores one worker took the
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
    chunk_pool: ThreadPoolExecutor
    chunk_copies: BufferPool  # a large file's chunks, copied for the chunk pool
    slots: threading.BoundedSemaphore
    batch: list[PendingFile]
    batch_bytes: int
    work_queued: int  # content handed to the pool so far, plus FILE_WORK per file (the walk counts it)
    procs: ProcPool | None  # worker processes, used once ``work_queued`` reaches ``procs_from``
    procs_from: int
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
        self.slots.acquire()
        try:
            self.pool.submit(self.file_job, files)
        except BaseException:
            self.slots.release()
            raise

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

    def fill_slots(self, files: list[PendingFile], nodes: list[Node | FileText | None]) -> None:
        """Fill the slots of a batch a worker read (on the ``filler`` thread), whatever fails."""
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
        worker = self.procs.worker()
        if worker is None:
            return None
        sent = [i for i, item in enumerate(files) if item.st.st_size and reachable(item.path)]
        items = [(files[i].path, _key(files[i])) for i in sent]
        try:
            results = worker.run(items, self.go_on) if items else []
        except BaseException as exc:
            self.procs.drop(worker)
            self.writer.fail(exc)
            raise
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
