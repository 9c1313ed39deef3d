"""The walk-ahead process: lists and stats a backup's folders ahead of its walk (``walkahead.py``).

A backup's walk stat'ed every entry in the parent, where each ``lstat`` lets go of the GIL and
waits to take it back from the threads reading files: ~15 µs an entry instead of ~2.3 µs alone,
and the walk was the first backup's limit on small files (bench/README.md, stop 44). This process
walks the same folders in the same order (depth first, names sorted, the same exclude masks) and
sends each folder's entries with their stat keys (``fsmeta.stat_key``) as one message; the
parent only checks that the folder is the one it opened and builds its entries from them.

It opens folders as the walk does (below the root, one component at a time, never following a
symbolic link), reads nothing but listings and stats, and holds one descriptor per level of
depth. A folder of more than ``RECORD_MOST`` entries is left to the parent (which streams a large
listing, where a message would hold it whole); its subfolders are still walked here. A write to
a parent that is gone fails, and the process ends. Runs on the machines' Python (3.9+); imports
only what it uses (``procpool._BOOT``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from cloudkeep.exiting import skip_exit_collection
from cloudkeep.repo.channel import Channel
from cloudkeep.repo.fsmeta import DIR_FLAGS, StatEntry, open_below, stat_name
from cloudkeep.repo.masks import machine_path, matches
from cloudkeep.repo.tree import DIR

RECORD_MOST = 4096  # entries in one folder's message; a larger folder is listed by the parent (sent)


class _Walk:
    def __init__(self, channel: Channel, prefix: str, excludes: list[str], most: int) -> None:
        self.channel, self.prefix, self.excludes, self.most = channel, prefix, excludes, most

    def excluded(self, path: str) -> bool:
        machine = machine_path(path, self.prefix)
        return any(matches(p, machine) for p in self.excludes)

    def source(self, base: str) -> None:
        """Walk the source folder at host path ``base`` ("" is the host's root)."""
        parts = [p for p in machine_path(base, self.prefix).split("/") if p]
        fd = open_below(self.prefix, parts, DIR_FLAGS)
        if fd is None:
            return
        stack: list[tuple[str, int, Iterator[str]]] = []
        try:
            subfolders = self.folder(base, fd)
            stack.append((base, fd, iter(subfolders)))
            while stack:
                path, parent, names = stack[-1]
                for name in names:
                    try:
                        child = os.open(name, DIR_FLAGS, dir_fd=parent)
                    except OSError:
                        continue  # the walk cannot open it either: it reports it
                    child_path = f"{path}/{name}"
                    try:
                        subfolders = self.folder(child_path, child)
                    except BaseException:
                        os.close(child)
                        raise
                    stack.append((child_path, child, iter(subfolders)))
                    break
                else:
                    os.close(stack.pop()[1])
        finally:
            for _, open_fd, _ in stack:
                os.close(open_fd)

    def folder(self, path: str, fd: int) -> list[str]:
        """Send the folder ``path`` (open as ``fd``) and return its subfolders to walk, sorted."""
        try:
            st = os.fstat(fd)
            with os.scandir(fd) as it:
                listed = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]
        except OSError:
            self.channel.send(("folder", path, 0, 0, None))  # the walk lists it, and reports why not
            return []
        excludes = self.excludes
        if len(listed) > self.most:  # only its subfolders are sorted (the walk sorts its names)
            self.channel.send(("folder", path, st.st_dev, st.st_ino, None))
            folders = [n for n, is_dir in listed if is_dir]
            return sorted(n for n in folders if not (excludes and self.excluded(f"{path}/{n}")))
        listed.sort()
        entries: list[StatEntry] = []
        subfolders = []
        for name, _ in listed:
            if excludes and self.excluded(f"{path}/{name}"):
                continue
            entry = stat_name(name, fd)
            if entry is not None:
                entries.append(entry)
                if entry[1] == DIR:
                    subfolders.append(name)
        self.channel.send(("folder", path, st.st_dev, st.st_ino, entries))
        return subfolders


def serve(channel: Channel) -> None:
    """Walk the sources the parent names, in its order, then say ``end``."""
    message: tuple[Any, ...] = channel.recv()
    init = message[1]
    walk = _Walk(channel, init["prefix"], init["excludes"], init["most"])
    try:
        for base in init["bases"]:
            walk.source(base)
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
