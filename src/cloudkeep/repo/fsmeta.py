"""Reading and applying file-system metadata (mode, owner, times, xattrs) for tree nodes."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from types import MappingProxyType
from typing import Any, NamedTuple, Optional, Union

from cloudkeep.repo.masks import matches_any
from cloudkeep.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node

StatKey = tuple[Union[int, str], ...]  # marshal-able


# The few modes, devices and owners a tree has, one int object each: every lstat boxes its own, and
# the walk keeps a key per entry until its folder's tree is stored (~6 MiB of the mail store's
# incremental). An agent lives for months: past ``_SHARED_MOST`` values it starts again.
_shared: dict[int, int] = {}
_SHARED_MOST = 1 << 16


def stat_key(name: str, st: StatLike) -> StatKey:
    """Everything an entry's node is made of, as far as ``lstat`` shows it. Changing xattrs, mode or
    owner moves the ctime; a symlink's target never changes in place; names map to owner names.
    ``Stat`` reads its fields back by these positions."""
    if len(_shared) > _SHARED_MOST:
        _shared.clear()
    one = _shared.setdefault
    uid, gid = one(st.st_uid, st.st_uid), one(st.st_gid, st.st_gid)
    return (
        name, one(st.st_mode, st.st_mode), st.st_ino, one(st.st_dev, st.st_dev), st.st_nlink, uid, gid,
        user_name(uid), group_name(gid), st.st_size, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns, st.st_rdev,
    )  # fmt: skip


class Stat:
    """An entry's ``lstat`` fields read from its stat key, which the walk keeps anyway.

    The walk holds every listed entry until its folder's tree is stored. A full ``os.stat_result``
    is ~600 bytes (a float and an int per time, every field boxed); a copy of the fields the
    backup uses still took ~350 bytes an entry (its own slots and access time), ~30 MiB at the
    peak of an incremental over two maildir folders of 50,000 and 41,000 messages. A view is
    made when a field is needed and holds nothing but the key.
    """

    __slots__ = ("key",)

    def __init__(self, key: StatKey) -> None:
        self.key: tuple[Any, ...] = key

    @property
    def st_mode(self) -> int:
        return self.key[1]

    @property
    def st_ino(self) -> int:
        return self.key[2]

    @property
    def st_dev(self) -> int:
        return self.key[3]

    @property
    def st_nlink(self) -> int:
        return self.key[4]

    @property
    def st_uid(self) -> int:
        return self.key[5]

    @property
    def st_gid(self) -> int:
        return self.key[6]

    @property
    def st_size(self) -> int:
        return self.key[9]

    @property
    def st_blocks(self) -> int:
        return self.key[10]

    @property
    def st_mtime_ns(self) -> int:
        return self.key[11]

    @property
    def st_ctime_ns(self) -> int:
        return self.key[12]

    @property
    def st_rdev(self) -> int:
        return self.key[13]


StatLike = Union[os.stat_result, Stat]


@lru_cache(maxsize=1024)
def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""


@lru_cache(maxsize=1024)
def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return ""


# How a backup opens what it walks: folders and files never through a symbolic link (one swapped in
# since the stat fails), files without blocking (a FIFO swapped in reads as empty).
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
ROOT_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC  # the host folder holding "/" may be a symlink
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_below(root: str, parts: list[str], flags: int) -> int | None:
    """``parts`` below the host folder ``root`` ("" is "/") opened one component at a time, none
    through a symbolic link: the folders with ``DIR_FLAGS``, the last part with ``flags`` (the root
    itself when there are no parts); None when one cannot be opened."""
    try:
        fd = os.open(root or "/", ROOT_FLAGS)
    except OSError:
        return None
    last = len(parts) - 1
    for i, part in enumerate(parts):
        try:
            child = os.open(part, flags if i == last else DIR_FLAGS, dir_fd=fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        fd = child
    return fd


# A listed entry, stat'ed: its name, type and stat key; or its name, None and (errno, why) when its
# stat failed. The walk makes them, or the walk-ahead process sends them (``procwalk.py``).
StatEntry = tuple[str, Optional[str], Union[StatKey, tuple[int, str]]]


def stat_name(name: str, dir_fd: int | None) -> StatEntry | None:
    """The entry ``name`` of the folder open as ``dir_fd``, stat'ed (not followed if a symlink);
    None for a socket (never backed up)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        return name, None, (exc.errno or 0, exc.strerror or str(exc))
    kind = node_type(st)
    return (name, kind, stat_key(name, st)) if kind is not None else None


def stat_names(
    names: Iterable[str], dir_fd: int | None, base: str, excludes: list[str], prefix: str
) -> Iterator[StatEntry]:
    """``names`` of the folder at host path ``base`` (open as ``dir_fd``) stat'ed one by one as
    they are taken, none the exclude masks name (``prefix``: the host folder holding the machine's
    "/"): the walk's and the walk-ahead process's listings alike."""
    for name in names:
        if not (excludes and matches_any(excludes, f"{base}/{name}", prefix)) and (
            found := stat_name(name, dir_fd)
        ):
            yield found


def node_type(st: StatLike) -> str | None:
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return FILE
    if stat.S_ISDIR(mode):
        return DIR
    if stat.S_ISLNK(mode):
        return SYMLINK
    if stat.S_ISFIFO(mode):
        return FIFO
    if stat.S_ISCHR(mode):
        return CHARDEV
    if stat.S_ISBLK(mode):
        return BLOCKDEV
    return None  # sockets and doors are not restorable


def read_xattrs(target: str | int) -> dict[str, bytes]:
    """The xattrs of a path (never followed if a symlink) or of an open descriptor."""
    follow = isinstance(target, int)  # descriptors take no follow_symlinks=False
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return {}
    found: dict[str, bytes] = {}
    for name in names:
        with contextlib.suppress(OSError):
            found[name] = os.getxattr(target, name, follow_symlinks=follow)
    return found


PATH_MAX = 4096  # Linux: the longest path (with its NUL) a system call takes


def reachable(path: str) -> bool:
    """True when ``path`` is short enough for a path-based system call (walks open deeper entries
    relative to their directory's descriptor instead)."""
    return len(path) < PATH_MAX // 4 or len(os.fsencode(path)) < PATH_MAX


def node_from_stat(
    name: str,
    path: str,
    st: StatLike,
    kind: str,
    *,
    dir_fd: int | None = None,
    fd: int | None = None,
    xattrs: dict[str, bytes] | None = None,
) -> Node:
    """The node for an entry; with ``dir_fd`` (its directory, open) it is read relative to that
    descriptor, so paths longer than ``PATH_MAX`` work too. ``fd``: the entry itself, open (a
    file being read), whose xattrs are then read through it, without looking its path up again;
    ``xattrs``: already read (by a worker process, through its descriptor). The fields come from
    the entry's stat key (a ``Stat`` has it: one unpacking, the owner names already looked up)."""
    key: tuple[Any, ...] = st.key if isinstance(st, Stat) else stat_key(name, st)
    _, mode, inode, device, links, uid, gid, user, group, size, blocks, mtime_ns, ctime_ns, rdev = key
    node = Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(mode),
        uid=uid,
        gid=gid,
        user=user,
        group=group,
        mtime_ns=mtime_ns,
        ctime_ns=ctime_ns,
    )  # no access time: a tree does not store it (``Node.to_json``), a stat key does not hold it
    if kind == FILE:
        node.size = size
        node.sparse = blocks * 512 < size
        if links > 1:  # only then is inode identity needed (hardlink restore); keeps trees stable
            node.links, node.inode, node.device = links, inode, device
    elif kind == SYMLINK:
        node.target = os.readlink(name, dir_fd=dir_fd) if dir_fd is not None else os.readlink(path)
    elif kind in (CHARDEV, BLOCKDEV):
        node.rdev = rdev
    # listxattr takes no directory descriptor: past PATH_MAX name the entry through /proc's link
    # to that descriptor, a short path that does not follow the entry itself.
    if xattrs is not None or fd is not None:
        node.xattrs = read_xattrs(fd) if xattrs is None and fd is not None else xattrs or {}
        return node
    long = dir_fd is not None and not reachable(path)
    node.xattrs = read_xattrs(f"/proc/self/fd/{dir_fd}/{name}" if long else path)
    return node


def apply_metadata_at(dir_fd: int, name: str, node: Node, *, set_owner: bool) -> None:
    """Owner, xattrs (ACLs), mode and times of one restored entry, never through a symbolic link.

    The entry is opened with ``O_NOFOLLOW`` (devices with ``O_PATH``, so no driver is opened) and
    changed through that descriptor after checking it is of the restored type; a symbolic link
    itself gets owner, xattrs and times with the ``*at`` calls that do not follow it. Best effort
    for owner (needs root) and xattrs (some namespaces need privileges).
    """
    times = (node.atime_ns or node.mtime_ns, node.mtime_ns)
    if node.type == SYMLINK:
        if set_owner:
            with contextlib.suppress(OSError):
                os.chown(name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        for key, value in node.xattrs.items():  # l*xattr on the link below the folder's descriptor
            with contextlib.suppress(OSError):
                os.setxattr(f"/proc/self/fd/{dir_fd}/{name}", key, value, follow_symlinks=False)
        with contextlib.suppress(OSError, NotImplementedError):
            os.utime(name, ns=times, dir_fd=dir_fd, follow_symlinks=False)
        return
    device = node.type in (CHARDEV, BLOCKDEV)
    flags = (os.O_PATH if device else os.O_RDONLY | os.O_NONBLOCK) | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        if node_type(os.fstat(fd)) != node.type:
            raise OSError(errno.ESTALE, "changed type during the restore")
        # O_PATH descriptors take no f*() calls: their /proc link names the very same inode.
        apply_metadata_fd(f"/proc/self/fd/{fd}" if device else fd, node, set_owner=set_owner)
    finally:
        os.close(fd)


NO_XATTRS: Mapping[str, bytes] = MappingProxyType({})  # shared by every ``FileMeta`` without xattrs


class FileMeta(NamedTuple):
    """What ``apply_metadata_fd`` sets on a file, without the rest of its node: a restore keeps it
    for every one-chunk file until its data is written, and a whole ``Node`` (with its chunk list
    and empty xattrs dict) was ~350 bytes more per file (a restore from S3 plans every file first)."""

    uid: int
    gid: int
    mode: int
    atime_ns: int
    mtime_ns: int
    xattrs: Mapping[str, bytes]

    @classmethod
    def of(cls, node: Node) -> FileMeta:
        """One per one-chunk file of a restore's plan: the tuple made directly, not through the
        named tuple's constructor (a Python function around it)."""
        return _new_tuple(
            cls, (node.uid, node.gid, node.mode, node.atime_ns, node.mtime_ns, node.xattrs or NO_XATTRS)
        )


_new_tuple = tuple.__new__


def apply_metadata_fd(
    target: int | str, node: Node | FileMeta, *, set_owner: bool, set_mode: bool = True
) -> None:
    """Owner, xattrs, mode and times through an open descriptor of the restored entry (not a link).

    ``set_mode=False``: the entry was created with its mode (and has no xattrs that change it).
    """
    if set_owner:
        with contextlib.suppress(OSError):
            os.chown(target, node.uid, node.gid)  # before chmod: chown clears set-id bits
    for key, value in node.xattrs.items():
        with contextlib.suppress(OSError):
            os.setxattr(target, key, value)
    if set_mode or node.xattrs:
        os.chmod(target, node.mode & 0o7777)
    with contextlib.suppress(OSError):
        os.utime(target, ns=(node.atime_ns or node.mtime_ns, node.mtime_ns))
