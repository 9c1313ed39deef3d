"""Restore's side of the target: files created, written and given metadata, failures recorded.

``restorer`` plans a restore point and moves its data; everything it does to the target goes
through ``TargetWriter``, which owns the per-entry bookkeeping (what failed and why, what was
verified) and the system calls per file: created relative to its folder's descriptor, written
with ``pwrite``, given its metadata through the descriptor it was written with when it is
written once, reopened only by identity otherwise.
"""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import dataclass, field

from cloudkeep.compat import SLOTS
from cloudkeep.repo.fsmeta import FileMeta, apply_metadata_at, apply_metadata_fd
from cloudkeep.repo.targetfs import (
    PRIVATE,
    Defaults,
    Refused,
    TargetDirs,
    create_file,
    make_link,
    open_created,
    os_error,
    shown,
)
from cloudkeep.repo.tree import Node


@dataclass
class RestoreResult:
    files: int = 0
    bytes: int = 0
    verified: int = 0  # files whose every chunk was checked against its content id
    dirs: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "<path>: why" for each entry not restored

    @property
    def ok(self) -> bool:
        """True when every entry of the restore point was restored (warnings aside)."""
        return not self.errors


FATAL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the whole target is unusable: stop


@dataclass(**SLOTS)
class RestoredFile:
    """One regular file being restored: where it goes (folder index + name) and its state."""

    dir: int  # index in TargetDirs; -1: ``name`` is a device path the administrator gave
    name: str
    path: str  # for messages; "": derived from ``dir`` and ``name`` (``TargetWriter.path``)
    size: int
    sparse: bool
    single: bool  # one chunk: created by the worker that writes it (one open per file)
    linked: bool = False  # other names are hard-linked to it at the end
    meta: FileMeta | None = None  # one-chunk files: metadata applied by the worker that writes them
    identity: tuple[int, int] | None = None  # (st_dev, st_ino) once created, when needed again
    failed: bool = False
    mode: int = PRIVATE  # created with; not PRIVATE: its final mode and owner, no chown/chmod


@dataclass(**SLOTS)
class Target:
    """Where one blob's bytes go: ``file`` at ``offset``."""

    file: RestoredFile
    offset: int


class TargetWriter:
    """Entries written below ``dirs`` and the restore's record of them (shared by its threads)."""

    def __init__(self, dirs: TargetDirs) -> None:
        self.dirs = dirs
        self.result = RestoreResult()
        self.defaults = Defaults.of(dirs.acquire(0))  # the administrator's folder: checked
        dirs.release(0)
        # Folders that were there before (and all below them): their group or default ACL may
        # give new files another owner or mode than ``defaults`` says.
        self.reused: set[int] = set()
        self.set_owner = os.geteuid() == 0
        self.lock = threading.Lock()
        self.bytes_written = 0
        self.failed_files = 0

    # -- errors ----------------------------------------------------------------------------

    def refuse(self, path: str, reason: str) -> None:
        with self.lock:
            self.result.errors.append(f"{path}: {reason}")

    def file_failed(self, file: RestoredFile, exc: Exception) -> None:
        with self.lock:
            if not file.failed:
                file.failed = True
                self.failed_files += 1
        self.failed(self.path(file), exc)

    def path(self, file: RestoredFile) -> str:
        """``file``'s path for messages: planning keeps none per file (29k strings on a real tree)."""
        return file.path or f"{self.dirs.path(file.dir).rstrip('/')}/{shown(file.name)}"

    def failed(self, path: str, exc: Exception) -> None:
        """Record a per-entry failure; a full or read-only target stops the whole restore."""
        if isinstance(exc, OSError) and exc.errno in FATAL_ERRNOS:
            raise os_error(exc, path) from exc
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        self.refuse(path, reason if isinstance(exc, (Refused, OSError)) else f"malformed entry ({reason})")

    def warn(self, path: str, exc: Exception) -> None:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        with self.lock:
            self.result.warnings.append(f"{path}: cannot set metadata ({reason})")

    # -- files -----------------------------------------------------------------------------

    def add_dir(self, parent: int, name: str, new: bool) -> int:
        """Index of folder ``name`` in ``parent``; ``new``: this restore made it (else it was there)."""
        index = self.dirs.add(parent, name)
        if not new or parent in self.reused:
            self.reused.add(index)
        return index

    def created_as(self, node: Node, folder: int) -> int:
        """The mode to create a one-chunk file with: its own when that makes chown and chmod moot."""
        if node.xattrs or folder in self.reused:  # an ACL xattr changes the mode; so may the folder
            return PRIVATE
        defaults = self.defaults  # not root: no chown ever, the creator's owner is final
        uid, gid = (node.uid, node.gid) if self.set_owner else (defaults.uid, defaults.gid)
        mode = defaults.create_mode(node.mode, uid, gid)
        return PRIVATE if mode is None else mode

    def open(self, file: RestoredFile) -> int:
        """A descriptor to write ``file`` through: created now (one-chunk files) or reopened."""
        if file.dir < 0:
            return os.open(file.name, os.O_WRONLY | os.O_CLOEXEC)  # a device the administrator named
        dir_fd = self.dirs.acquire(file.dir)
        try:
            if file.identity is not None:
                return open_created(dir_fd, file.name, file.identity)
            fd = create_file(dir_fd, file.name, file.mode)
        finally:
            self.dirs.release(file.dir)
        try:
            if not file.single or file.linked:  # reopened or linked to later: know it again
                st = os.fstat(fd)
                file.identity = (st.st_dev, st.st_ino)
            if file.sparse or not file.single:
                os.ftruncate(fd, file.size)  # what is not written stays a hole
        except BaseException:
            os.close(fd)
            raise
        return fd

    def precreate(self, file: RestoredFile) -> None:
        try:
            os.close(self.open(file))
        except (Refused, OSError) as exc:
            self.file_failed(file, exc)

    def write(self, target: Target, data: bytes | memoryview, runs: list[tuple[int, int]]) -> None:
        """Write ``runs`` of ``data`` at the target; a one-chunk file is then finished (metadata)."""
        file = target.file
        if not runs and not file.single:
            return  # all holes in a file already pre-sized
        try:
            fd = self.open(file)
            try:
                view = memoryview(data)
                for start, end in runs:
                    chunk, offset = view[start:end], target.offset + start
                    while chunk:
                        written = os.pwrite(fd, chunk, offset)
                        chunk, offset = chunk[written:], offset + written
                if file.meta is not None:
                    self._apply_fd(fd, file)
                    file.meta = None  # done with: a restore of many small files holds none written
            finally:
                os.close(fd)
        except (Refused, OSError) as exc:
            self.file_failed(file, exc)

    def _apply_fd(self, fd: int, file: RestoredFile) -> None:
        assert file.meta is not None
        preset = file.mode != PRIVATE  # created with its owner and mode: times are what is left
        try:
            apply_metadata_fd(fd, file.meta, set_owner=self.set_owner and not preset, set_mode=not preset)
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            self.warn(self.path(file), exc)

    # -- links and metadata at the end ------------------------------------------------------

    def link(self, item: tuple[RestoredFile, int, str, str]) -> None:
        first, index, name, path = item
        if first.failed or first.identity is None:
            self.refuse(path, f"hard link to {self.path(first)}, which was not restored")
            return
        try:
            with self.dirs.at(first.dir) as src_fd, self.dirs.at(index) as dst_fd:
                make_link(src_fd, first.name, first.identity, dst_fd, name)
        except (Refused, OSError) as exc:
            self.failed(path, exc)

    def apply(self, item: tuple[int, str, Node, RestoredFile | None]) -> None:
        """Metadata of an entry named in its folder (links, folders, files of several chunks)."""
        index, name, node, file = item
        if file is not None and file.failed:
            return
        fd = self.dirs.acquire(index)
        try:
            apply_metadata_at(fd, name, node, set_owner=self.set_owner)
        except (OSError, ValueError, TypeError, OverflowError) as exc:
            self.warn(f"{self.dirs.path(index).rstrip('/')}/{shown(name)}", exc)
        finally:
            self.dirs.release(index)
