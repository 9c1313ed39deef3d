"""The restore target as restore sees it: names checked, directories by descriptor, no link followed.

Every name in a restore point is hostile (a machine can rewrite its own manifests). Restore
therefore never joins names into path strings: each directory of the target is opened with
``O_DIRECTORY | O_NOFOLLOW`` relative to its parent's descriptor, and every entry is created
relative to its directory's descriptor (``O_CREAT | O_EXCL | O_NOFOLLOW``, ``mkdirat``,
``symlinkat``, ``mknodat``, ``linkat`` without following). A symbolic link — already in the target
or restored earlier in the same restore — is thus never traversed, and path length is limited
only by each name, not by ``PATH_MAX``.

Descriptors of a million-folder restore cannot all stay open: ``TargetDirs`` keeps the most
recently used ones and reopens an evicted folder from its parent (again without following links).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from cloudkeep.errors import InsufficientSpaceError, PermissionDeniedError
from cloudkeep.repo.descriptors import open_files_limit, target_folders

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
WRITE_FLAGS = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
OPEN_DIRS = 256  # descriptors of target folders kept open; half the limit below 512 (``TargetDirs``)
PRIVATE = 0o600  # a new file's mode until its own is set (unless created with it: ``Defaults``)
ZERO_BLOCK = bytes(4096)  # holes are left in whole blocks of this size (the usual file-system block)
_ZEROS = bytes(2**16)  # all-zero chunks are recognised 64 KiB at a time (memcmp speed)


def os_error(exc: OSError, path: str) -> Exception:
    """The typed error for a failed call on a restore target (or stream), else ``exc`` itself."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientSpaceError(
            f"restore target {path}: no space left on device", hint="free space or pick another target"
        )
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return PermissionDeniedError(f"restore target {path}: permission denied ({exc.strerror})")
    return exc


class Refused(Exception):
    """An entry restore will not create or touch; the message says why."""


def name_problem(name: object) -> str | None:
    """Why ``name`` (from a repository) cannot be one entry of a folder, or None when it can."""
    if not isinstance(name, str):
        return "name is not a string"
    if name in ("", ".", ".."):
        return "name is empty, '.' or '..'"
    if "/" in name:
        return "name contains '/'"
    if "\0" in name:
        return "name contains a NUL character"
    try:
        os.fsencode(name)
    except UnicodeError:
        return "name cannot be encoded for this file system"
    return None


def shown(name: object) -> str:
    """A name as error messages print it (quoted when empty or not printable)."""
    return name if isinstance(name, str) and name and name.isprintable() else repr(name)


class TargetDirs:
    """The target's folders by index (0 is the target itself), with an LRU of open descriptors.

    ``at(index)`` pins a folder's descriptor for the duration of a ``with``: a pinned descriptor is
    never closed under a thread that uses it. Opening a folder that was evicted walks up to the
    nearest open ancestor and down again with ``openat(O_NOFOLLOW)``.
    """

    def __init__(self, root_fd: int, *, limit: int | None = None) -> None:
        self.parents: list[int] = [-1]
        self.names: list[str] = [""]
        self.depths: list[int] = [0]
        self._open: OrderedDict[int, int] = OrderedDict({0: root_fd})
        self._pins: dict[int, int] = {}
        # At most half the descriptor limit: at a hard limit of 256 a restore (its parent and its
        # worker each) had kept 256 folders open and could not open a pack (descriptors.py).
        self._limit = limit or target_folders(open_files_limit(), OPEN_DIRS)
        self._lock = threading.Lock()

    @property
    def root(self) -> int:
        """The target's own descriptor (never evicted)."""
        return self._open[0]

    def add(self, parent: int, name: str) -> int:
        """Register an existing folder ``name`` of folder ``parent``; returns its index."""
        self.parents.append(parent)
        self.names.append(name)
        self.depths.append(self.depths[parent] + 1)
        return len(self.names) - 1

    def path(self, index: int) -> str:
        """The folder's path inside the target, for messages."""
        parts: list[str] = []
        while index > 0:
            parts.append(shown(self.names[index]))
            index = self.parents[index]
        return "/" + "/".join(reversed(parts))

    def acquire(self, index: int) -> int:
        """The folder's descriptor, pinned until ``release(index)`` (hot path: no generator)."""
        with self._lock:
            fd = self._open.get(index)
            if fd is None:
                fd = self._fd(index)
            else:
                self._open.move_to_end(index)
            self._pins[index] = self._pins.get(index, 0) + 1
            if len(self._open) > self._limit:
                self._evict()
        return fd

    def release(self, index: int) -> None:
        with self._lock:
            count = self._pins[index] - 1
            if count:
                self._pins[index] = count
            else:
                del self._pins[index]

    @contextmanager
    def at(self, index: int) -> Iterator[int]:
        fd = self.acquire(index)
        try:
            yield fd
        finally:
            self.release(index)

    def _fd(self, index: int) -> int:
        fd = self._open.get(index)
        if fd is not None:
            self._open.move_to_end(index)
            return fd
        missing = []  # up to the nearest open ancestor (the target itself is never evicted) ...
        while index not in self._open:
            missing.append(index)
            index = self.parents[index]
        fd = self._open[index]
        for index in reversed(missing):  # ... then down again; nothing is evicted until pinned
            fd = self._open[index] = os.open(self.names[index], DIR_FLAGS, dir_fd=fd)
        return fd

    def _evict(self) -> None:
        """Close the least recently used unpinned folders down to the limit. A pinned one (or the
        target) met on the way becomes the most recent: each call looks at a few entries, where a
        copy of the whole order cost ~2 µs at every folder opened past the limit (thousands in a
        restore of a few thousand folders, in the parent and in its worker)."""
        opened, pins = self._open, self._pins
        kept = 0  # pinned ones moved to the end: once every entry was looked at, stop
        while len(opened) > self._limit and kept < len(opened):
            index = next(iter(opened))
            if index and index not in pins:
                os.close(opened.pop(index))
            else:
                opened.move_to_end(index)
                kept += 1

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


@dataclass(frozen=True)
class Defaults:
    """What a new entry below the target gets without being told: calls setting the same are skipped.

    A restored file is created, written, then given owner, mode and times: six calls, of which
    ``fchown`` and ``fchmod`` usually set what creating it already gave (a root restore of
    root's files, modes the umask leaves alone). ``None`` where the target decides otherwise
    (a set-group-id folder gives its group; a default ACL, not the umask, gives modes).
    """

    uid: int
    gid: int | None
    umask: int | None

    @classmethod
    def of(cls, root_fd: int) -> Defaults:
        group = None if os.fstat(root_fd).st_mode & stat.S_ISGID else os.getegid()
        return cls(os.geteuid(), group, _creation_umask(root_fd))

    def owns(self, uid: object, gid: object) -> bool:
        """True when a new entry already has this owner (no chown needed)."""
        return uid == self.uid and gid == self.gid

    def create_mode(self, mode: int, uid: object, gid: object) -> int | None:
        """The mode to create a file with so that it needs no chmod, or None (create private).

        Only for a file already owned as restored: a file created with its final mode but still
        root's would give root's group what the restore point gives another group.
        """
        if self.umask is None or mode & ~0o777 or mode & self.umask or not self.owns(uid, gid):
            return None
        return mode


def _creation_umask(root_fd: int) -> int | None:
    """The process umask (read, not set: ``os.umask`` changes it for every thread), or None when
    unknown or when a default ACL on the target gives new entries their modes instead."""
    try:
        os.getxattr(root_fd, "system.posix_acl_default")
        return None
    except OSError:
        pass
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return None


def _lstat_at(dir_fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def remove_existing(dir_fd: int, name: str) -> None:
    """Unlink an entry that is in the way (never a folder: its content is not restore's to drop)."""
    if stat.S_ISDIR(_lstat_at(dir_fd, name).st_mode):
        raise Refused("a folder of that name is in the way")
    os.unlink(name, dir_fd=dir_fd)


def _replacing(create: Callable[[], None], dir_fd: int, name: str) -> None:
    try:
        create()
    except FileExistsError:
        remove_existing(dir_fd, name)
        create()


def make_dir(dir_fd: int, name: str) -> bool:
    """A folder ``name``; an existing folder is reused (False), anything else there is refused (not
    followed)."""
    try:
        os.mkdir(name, 0o777, dir_fd=dir_fd)
        return True
    except FileExistsError:
        if not stat.S_ISDIR(_lstat_at(dir_fd, name).st_mode):
            raise Refused("something that is not a folder is in the way (links are never followed)") from None
        return False


def create_file(dir_fd: int, name: str, mode: int = PRIVATE) -> int:
    """A new, empty regular file opened for writing; whatever was there before is unlinked first.

    Never truncated in place: an existing file may be a hard link to something outside the target.
    """
    try:
        return os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)
    except FileExistsError:
        remove_existing(dir_fd, name)
        return os.open(name, CREATE_FLAGS, mode, dir_fd=dir_fd)


def open_created(dir_fd: int, name: str, identity: tuple[int, int]) -> int:
    """Reopen a file restore created, refusing one that was swapped for another since."""
    fd = os.open(name, WRITE_FLAGS, dir_fd=dir_fd)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != identity:
        os.close(fd)
        raise Refused("the file was replaced by something else during the restore")
    return fd


def make_symlink(dir_fd: int, name: str, target: str) -> None:
    if not isinstance(target, str) or not target or "\0" in target:
        raise Refused("symbolic link with an empty or malformed target")
    try:
        os.symlink(target, name, dir_fd=dir_fd)
    except FileExistsError:
        with contextlib.suppress(OSError):  # the same link already there (/bin -> usr/bin): keep it
            if os.readlink(name, dir_fd=dir_fd) == target:
                return
        remove_existing(dir_fd, name)
        os.symlink(target, name, dir_fd=dir_fd)


def make_fifo(dir_fd: int, name: str) -> None:
    _replacing(lambda: os.mkfifo(name, 0o600, dir_fd=dir_fd), dir_fd, name)


def make_device(dir_fd: int, name: str, mode: int, device: int) -> None:
    _replacing(lambda: os.mknod(name, mode, device, dir_fd=dir_fd), dir_fd, name)


def make_link(src_fd: int, src_name: str, identity: tuple[int, int], dst_fd: int, dst_name: str) -> None:
    """Hard link ``dst_name`` to a file this restore created (checked by identity, link not followed)."""
    st = _lstat_at(src_fd, src_name)
    if (st.st_dev, st.st_ino) != identity:
        raise Refused("the file to link to was replaced during the restore")
    _replacing(
        lambda: os.link(src_name, dst_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False),
        dst_fd,
        dst_name,
    )


def data_runs(data: bytes | memoryview, offset: int) -> list[tuple[int, int]]:
    """The ``(start, end)`` stretches of a chunk of a sparse file that must be written.

    File-system blocks of zeros (counted from the file's start; the chunk lands at ``offset``;
    partial at the chunk's edges) are skipped: the file is new and pre-sized, so what is not
    written reads as zeros, and whole blocks never written stay holes. A view is copied once:
    comparing memoryviews is element by element, far slower than comparing bytes.
    """
    buf = data if isinstance(data, bytes) else bytes(data)
    size = len(buf)
    if _all_zero(buf):
        return []
    block = len(ZERO_BLOCK)
    runs: list[tuple[int, int]] = []
    start = -1
    position = 0
    edge = (-offset) % block or block  # the first block may be partial (unaligned chunk)
    while position < size:
        end = min(position + edge, size)
        zero = buf.startswith(
            ZERO_BLOCK if end - position == block else ZERO_BLOCK[: end - position], position
        )
        if zero and start >= 0:
            runs.append((start, position))
            start = -1
        elif not zero and start < 0:
            start = position
        position, edge = end, block
    if start >= 0:
        runs.append((start, size))
    return runs


def _all_zero(buf: bytes) -> bool:
    wide = len(_ZEROS)
    whole = len(buf) - len(buf) % wide
    return all(buf.startswith(_ZEROS, p) for p in range(0, whole, wide)) and buf.startswith(
        _ZEROS[: len(buf) - whole], whole
    )
