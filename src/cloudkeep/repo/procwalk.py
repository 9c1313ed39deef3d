"""The walk-ahead process: lists and stats a backup's folders ahead of its walk (``walkahead.py``).

A backup's walk stat'ed every entry in the parent, where each ``lstat`` lets go of the GIL and
waits to take it back from the threads reading files: ~15 µs an entry instead of ~2.3 µs alone,
and the walk was the first backup's limit on small files (bench/README.md, stop 44). This process
walks the same folders in the same order (depth first, names sorted, the same exclude masks) and
sends each folder's entries with their stat keys (``fsmeta.stat_key``) as one message; the
parent only checks that the folder is the one it opened and builds its entries from them.

A folder of more than ``RECORD_MOST`` entries goes in parts, as the walk takes it (it streams a
large listing, where one message would hold it whole): a part ends at ``RECORD_MOST`` entries or
at a subfolder, whose own messages follow before the folder's next part, since the walk enters a
subfolder as it reaches it. A maildir folder of 45,000 messages had been stat'ed by the parent,
~15 µs an entry.

It opens folders as the walk does (below the root, one component at a time, never following a
symbolic link), reads nothing but listings and stats, and holds one descriptor per level of
depth. A write to a parent that is gone fails, and the process ends. Runs on the machines' Python
(3.9+); imports only what it uses (``procpool._BOOT``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

from cloudkeep.exiting import skip_exit_collection
from cloudkeep.repo.channel import Channel
from cloudkeep.repo.fsmeta import DIR_FLAGS, StatEntry, open_below, stat_names
from cloudkeep.repo.masks import machine_path, matches_any
from cloudkeep.repo.tree import DIR

RECORD_MOST = 4096  # entries in one message; a larger folder goes in parts (sent to the process)


class _Walk:
    def __init__(
        self, channel: Channel, prefix: str, excludes: list[str], most: int, after: str | None, skip: set[str]
    ) -> None:
        self.channel, self.prefix, self.excludes, self.most = channel, prefix, excludes, most
        self.skip = skip  # folders a worker process takes whole: the walk asks for none below them
        # The folder the walk was listing itself when it started this process: it and the folders
        # before it are not sent (nor stat'ed), only walked through to what comes after.
        self.after = after.split("/") if after is not None else None

    def excluded(self, path: str) -> bool:
        return matches_any(self.excludes, path, self.prefix)

    def source(self, base: str) -> None:
        """Walk the source folder at host path ``base`` ("" is the host's root)."""
        parts = [p for p in machine_path(base, self.prefix).split("/") if p]
        fd = open_below(self.prefix, parts, DIR_FLAGS)
        if fd is None:
            return
        stack: list[tuple[str, int, Iterator[str]]] = []  # a large folder's iterator sends its parts
        try:
            stack.append((base, fd, iter(self.folder(base, fd))))
            while stack:
                path, parent, names = stack[-1]
                for name in names:
                    child_path = f"{path}/{name}"
                    if child_path in self.skip:
                        continue
                    try:
                        child = os.open(name, DIR_FLAGS, dir_fd=parent)
                    except OSError:
                        continue  # the walk cannot open it either: it reports it
                    try:
                        subfolders = iter(self.folder(child_path, child))
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append((child_path, child, subfolders))
                    break
                else:
                    os.close(stack.pop()[1])
        finally:
            for _, open_fd, _ in stack:
                os.close(open_fd)

    def folder(self, path: str, fd: int) -> Iterable[str]:
        """Send the folder ``path`` (open as ``fd``); its subfolders to walk, in order. A large
        folder's are yielded as its parts are sent: the walk here resumes it after each subtree.

        A message is ``("folder", path, device, inode, entries, more, nested)``: ``entries`` None
        when the folder cannot be listed here, ``more`` when a part of the folder follows, and
        ``nested`` when its subfolders' messages come between its parts (it has subfolders)."""
        try:
            st = os.fstat(fd)
            with os.scandir(fd) as it:
                listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
        except OSError:
            if self.after is None or not _within(path.split("/"), self.after):
                self.channel.send(("folder", path, 0, 0, None, False, False))  # the walk lists it, says why
            return []
        if self.after is not None:
            at = path.split("/")
            if _within(at, self.after):  # the walk's folder or one above it: only its way on
                return self.passed(path, at, listed)
            self.after = None  # past it: everything from here on is sent
        names = sorted(name for name, _ in listed)
        if len(names) > self.most:
            nested = any(is_dir for _, is_dir in listed)
            return self.parts(path, fd, (st.st_dev, st.st_ino, nested), names)
        entries = list(self.entries(path, fd, names))
        self.channel.send(("folder", path, st.st_dev, st.st_ino, entries, False, False))
        return [entry[0] for entry in entries if entry[1] == DIR]

    def passed(self, path: str, at: list[str], listed: list[tuple[str, bool]]) -> list[str]:
        """The subfolders to walk of a folder the walk listed itself (``after``) or one above it:
        none before the way down to it, which the walk has passed."""
        assert self.after is not None
        below = self.after[len(at)] if len(at) < len(self.after) else None
        folders = [name for name, is_dir in listed if is_dir and (below is None or name >= below)]
        return sorted(n for n in folders if not (self.excludes and self.excluded(f"{path}/{n}")))

    def parts(self, path: str, fd: int, ident: tuple[int, int, bool], names: list[str]) -> Iterator[str]:
        """Send a large folder in parts, each up to its next subfolder (yielded after it)."""
        dev, ino, nested = ident
        part: list[StatEntry] = []
        for entry in self.entries(path, fd, names):
            part.append(entry)
            if entry[1] == DIR or len(part) >= self.most:
                self.channel.send(("folder", path, dev, ino, part, True, nested))
                part = []
                if entry[1] == DIR:
                    yield entry[0]
        self.channel.send(("folder", path, dev, ino, part, False, nested))

    def entries(self, path: str, fd: int, names: list[str]) -> Iterator[StatEntry]:
        """``names`` of the folder stat'ed, the exclude masks applied."""
        return stat_names(names, fd, path, self.excludes, self.prefix)


def _within(at: list[str], folder: list[str]) -> bool:
    """``at`` is ``folder`` or a folder above it (paths split at "/")."""
    return folder[: len(at)] == at


def serve(channel: Channel) -> None:
    """Walk the sources the parent names, in its order, then say ``end``."""
    message: tuple[Any, ...] = channel.recv()
    init = message[1]
    after = init.get("after")
    walk = _Walk(channel, init["prefix"], init["excludes"], init["most"], after, set(init.get("skip", ())))
    try:
        for base in init["bases"]:
            if after is None or base.split("/") >= after.split("/")[: len(base.split("/"))]:
                walk.source(base)  # (a source before the walk's folder is passed)
        channel.send(("end",))
    except (BrokenPipeError, EOFError):
        return  # the parent is gone, or stopped reading


def main() -> None:
    """Entry point: the protocol on stdin/stdout; stray prints go to stderr, not into the channel."""
    out = os.dup(1)
    os.dup2(2, 1)
    serve(Channel(0, out))
    skip_exit_collection()


if __name__ == "__main__":
    main()
