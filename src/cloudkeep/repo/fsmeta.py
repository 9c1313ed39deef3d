"""Reading and applying file-system metadata (mode, owner, times, xattrs) for tree nodes."""

from __future__ import annotations

import contextlib
import errno
import grp
import os
import pwd
import stat
from functools import lru_cache
from typing import Union

from cloudkeep.repo.tree import BLOCKDEV, CHARDEV, DIR, FIFO, FILE, SYMLINK, Node


class Stat:
    """The ``lstat`` fields a backup uses, kept per listed entry until its folder's tree is stored.

    An ``os.stat_result`` is ~600 bytes (a float and an int per time, all fields boxed); the walk
    holds one per entry not yet in a tree, which made ~13 MiB of the usr incremental's peak. The
    ints here are the same objects the entry's stat key holds, so an entry costs ~150 bytes.
    """

    __slots__ = (
        "st_atime_ns",
        "st_blocks",
        "st_ctime_ns",
        "st_dev",
        "st_gid",
        "st_ino",
        "st_mode",
        "st_mtime_ns",
        "st_nlink",
        "st_rdev",
        "st_size",
        "st_uid",
    )  # fmt: skip

    def __init__(self, st: os.stat_result) -> None:
        self.st_mode, self.st_ino, self.st_dev, self.st_nlink = st.st_mode, st.st_ino, st.st_dev, st.st_nlink
        self.st_uid, self.st_gid, self.st_size = st.st_uid, st.st_gid, st.st_size
        self.st_blocks = st.st_blocks
        self.st_atime_ns, self.st_mtime_ns, self.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        self.st_rdev = st.st_rdev


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
    ``xattrs``: already read (by a worker process, through its descriptor)."""
    node = Node(
        name=name,
        type=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=user_name(st.st_uid),
        group=group_name(st.st_gid),
        mtime_ns=st.st_mtime_ns,
        atime_ns=st.st_atime_ns,
        ctime_ns=st.st_ctime_ns,
    )
    if kind == FILE:
        node.size = st.st_size
        node.sparse = st.st_blocks * 512 < st.st_size
        if st.st_nlink > 1:  # only then is inode identity needed (hardlink restore); keeps trees stable
            node.links, node.inode, node.device = st.st_nlink, st.st_ino, st.st_dev
    elif kind == SYMLINK:
        node.target = os.readlink(name, dir_fd=dir_fd) if dir_fd is not None else os.readlink(path)
    elif kind in (CHARDEV, BLOCKDEV):
        node.rdev = st.st_rdev
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


def apply_metadata_fd(target: int | str, node: Node, *, set_owner: bool, set_mode: bool = True) -> None:
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
