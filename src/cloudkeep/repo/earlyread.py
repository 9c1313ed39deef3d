"""Large files that changed since the last backup are read first, while the walk goes on.

The walk visits folders in name order, so a large file is read only when the walk reaches it: a
database under ``/var/lib`` was chunked after everything else was walked, and an incremental took
the walk's time plus the file's. The file cache names the last backup's largest files with their
stat (``FileCache.large_files``); before walking, each one that changed is opened — component by
component below the root, never following a symbolic link, skipped if a mask excludes it or any
folder above it — and read on the pool at once. When the walk reaches the file, the early read is
used if it read that very file as the walk stat'ed it (device, inode, size, mtime and ctime);
otherwise the file is read as usual and the early read's chunks are left unreferenced, as a
cancelled backup's are. A file the walk never reaches (deleted, moved) is read for nothing, once.
"""

from __future__ import annotations

import functools
import os
import stat
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cloudkeep.repo.cache import FileCache, LargeFile
from cloudkeep.repo.filecontent import PendingFile
from cloudkeep.repo.fsmeta import FILE_FLAGS, StatLike, node_from_stat, open_below
from cloudkeep.repo.masks import matches
from cloudkeep.repo.tree import FILE

if TYPE_CHECKING:  # the archiver owns the early reads; they call back into it
    from cloudkeep.repo.archiver import _Archiver

EARLY_FILE = 16 * 2**20  # files this large are remembered, and read first when changed
EARLY_MAX = 8  # at most this many, the largest first


@dataclass(frozen=True)
class EarlyRead:
    """What an early read stored: the file as it was opened, its chunk ids and the bytes read."""

    st: os.stat_result
    content: list[bytes]
    size: int

    def of(self, st: StatLike) -> bool:
        """It read the file the walk stat'ed as ``st``."""
        ours = self.st
        return (ours.st_dev, ours.st_ino, ours.st_size, ours.st_mtime_ns, ours.st_ctime_ns) == (
            st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns,
        )  # fmt: skip


class EarlyReads:
    """One backup's early reads, by host path; ``claim`` hands one to the file the walk reached."""

    def __init__(self, archiver: _Archiver) -> None:
        self.archiver = archiver
        self.min_size = EARLY_FILE  # the walk records files this large (``FileCache.record_large``)
        self.reads: dict[str, Future[EarlyRead]] = {}

    def start(self, cache: FileCache, sources: list[str]) -> None:
        """Open the last backup's large files that changed and read them on the pool."""
        for large in cache.large_files(EARLY_MAX):
            self._start(large.path, sources, large)

    def start_found(self, paths: list[str], sources: list[str]) -> None:
        """Read these large files (host paths, largest first) on the pool: a first backup's, found by
        the pass that sized its folders (``walkplan.py``); what the walk takes meanwhile is small."""
        for path in paths[:EARLY_MAX]:
            self._start(path, sources, None)

    def _start(self, path: str, sources: list[str], last: LargeFile | None) -> None:
        """Open ``path`` and read it on the pool, unless the last backup saw it the same (``last``)."""
        if not self._allowed(path, sources):
            return
        fd = self._open(path)
        if fd is None:
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (last is not None and last.same(st)):  # the walk takes its row
                os.close(fd)
                return
            self.archiver.slots.acquire()
        except BaseException:
            os.close(fd)
            raise
        try:
            future = self.archiver.pool.submit(self._read, fd, path, st)
        except BaseException:
            os.close(fd)
            self.archiver.slots.release()
            raise
        future.add_done_callback(functools.partial(self._cancelled, fd))
        self.reads[path] = future

    def _allowed(self, path: str, sources: list[str]) -> bool:
        """Below a source, and neither it nor a folder above it excluded (the include masks, if
        any, let it in): what the walk would read, as far as names tell."""
        archiver = self.archiver
        machine = archiver.machine_path(path)
        if not any(machine == s or machine.startswith(s.rstrip("/") + "/") for s in sources):
            return False
        parts = machine.split("/")
        if any(
            archiver.excluded(archiver.root_prefix + "/".join(parts[:i])) for i in range(2, len(parts) + 1)
        ):
            return False
        return not archiver.includes or any(matches(m, machine) for m in archiver.includes)

    def _open(self, path: str) -> int | None:
        """``path`` opened from the root one component at a time, following no symbolic link."""
        parts = self.archiver.machine_path(path).strip("/").split("/")
        return open_below(self.archiver.root_prefix, parts, FILE_FLAGS)

    def _read(self, fd: int, path: str, st: os.stat_result) -> EarlyRead:
        try:
            content, size = self.archiver.read_open(fd, path, st)
            return EarlyRead(st, content, size)
        finally:
            os.close(fd)
            self.archiver.slots.release()

    def _cancelled(self, fd: int, future: Future[EarlyRead]) -> None:
        """A read the pool cancelled (the backup failed first) never ran: its descriptor and slot."""
        if future.cancelled():
            os.close(fd)
            self.archiver.slots.release()

    def claim(self, item: PendingFile) -> bool:
        """Fill ``item``'s slot from its early read, now or once that ends; False when there is
        none to use (the caller queues the file as usual)."""
        future = self.reads.pop(item.path, None)
        if future is None:
            return False
        if future.done() and not self._usable(future, item):
            self._discount(future)
            return False
        future.add_done_callback(lambda done: self._adopt(item, done))
        return True

    def _usable(self, future: Future[EarlyRead], item: PendingFile) -> bool:
        return not future.cancelled() and future.exception() is None and future.result().of(item.st)

    def _adopt(self, item: PendingFile, future: Future[EarlyRead]) -> None:
        """Runs where the read ended (a pool thread) or in the walk if it had: never raises."""
        archiver = self.archiver
        node = None
        try:
            if archiver.error is None and self._usable(future, item):
                read = future.result()
                assert item.parent.fd is not None  # open until every slot of the folder is filled
                node = node_from_stat(item.name, item.path, item.st, FILE, dir_fd=item.parent.fd)
                node.content, node.size = read.content, read.size
                if archiver.cache and not item.parent.keeps_rows():
                    archiver.cache.record(item.path, item.st, node.content)
            elif archiver.error is None:  # the file changed since it was opened: read it again here
                self._discount(future)
                node = archiver.read_entry(item)
        except OSError as exc:
            archiver.skip(item.path, f"cannot read ({exc.strerror})")
        except BaseException as exc:
            archiver.fail(exc)
        try:  # as a file job ends: a folder completed here stores its tree
            item.parent.fill(item.slot, node)
            archiver.report(item.path)
        except BaseException as exc:
            archiver.fail(exc)

    def _discount(self, future: Future[EarlyRead]) -> None:
        """An early read not used: its bytes were not read for the restore point."""
        if not future.cancelled() and future.exception() is None:
            with self.archiver.lock:
                self.archiver.bytes_read -= future.result().size

    def finish(self) -> None:
        """After the pool: reads the walk never claimed are not counted."""
        for future in self.reads.values():
            if future.done():
                self._discount(future)
        self.reads.clear()
