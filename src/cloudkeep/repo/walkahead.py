"""The parent's side of the walk-ahead process (``procwalk.py``): folder listings, stat'ed ahead.

The walk asks for each folder's listing in its own order; the process sends them in the same
order, so the next message is either the folder asked for, one the walk has passed (it listed
that folder itself, or did not enter it: dropped), or one still ahead (kept: this folder is then
listed here). Nothing waits for the process to reach a folder: until its message has arrived, the
walk lists here. A listing is used only for the very folder the walk opened (device and inode), so
a folder renamed or swapped between the two walks is listed here; the entries are stat'ed somewhat
earlier than the walk reaches them, as a queued file is read somewhat later than its stat.

A large folder comes in parts (``procwalk.py``), taken as the walk goes; each of its subfolders'
messages come before its next part. Once its first part is used, the walk waits for the next one
(the process is on it) up to ``PART_WAIT_S``; past that, or when the process is gone, the walk
stats the folder's remaining names itself and the process is ended.

The process is started once a backup has listed ``AHEAD_FROM`` entries (a small backup starts no
interpreter), where worker processes are used (``filecontent.PROCESSES_MIN_CPUS`` cores). It walks
on from the folder the walk is listing then: started from the sources, it stat'ed again all the
walk had passed, and on a mail store (two folders of 45,000 messages) reached the second folder
after the walk did. If it cannot start, ends early or falls behind, the walk lists everything
itself, as before.
"""

from __future__ import annotations

import logging
import os
import select
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator

from cloudkeep.repo import procwalk
from cloudkeep.repo.fsmeta import StatEntry
from cloudkeep.repo.procpool import WorkerLostError, end, spawn

log = logging.getLogger(__name__)

AHEAD_FROM = 8192  # entries the walk lists itself before it starts the process
PART_WAIT_S = 2.0  # for a large folder's next part, once the walk took its first


class WalkAhead:
    """One backup's walk-ahead process, read by the walking thread only."""

    def __init__(
        self,
        bases: list[str],
        prefix: str,
        excludes: list[str],
        after: str | None = None,
        skip: list[str] | None = None,
    ) -> None:
        """Walk the source folders ``bases`` (host paths, in the walk's order) below ``prefix``,
        from the folder after ``after`` (the host path of the one the walk is listing) on, into
        none of the folders ``skip`` (worker processes take them whole: ``procsubtree.py``)."""
        self.proc: subprocess.Popen[bytes] | None
        self.proc, self.channel = spawn("procwalk")  # its pipe holds PIPE_BYTES: how far ahead it gets
        self.poller = select.poll()
        self.poller.register(self.channel.read_fd, select.POLLIN)
        self.next: tuple[object, ...] | None = None  # a message for a folder the walk has not reached
        self.inside: list[str] = []  # large folders the walk is taking in parts, outermost first
        try:
            init = {
                "bases": bases,
                "prefix": prefix,
                "excludes": excludes,
                "most": procwalk.RECORD_MOST,
                "after": after,
                "skip": skip or [],
            }
            self.channel.send(("walk", init))
        except OSError:
            self.close()

    def listing(
        self, base: str, fd: int, rest: Callable[[str | None], Iterable[StatEntry]], *, whole: bool = False
    ) -> list[StatEntry] | Iterator[StatEntry] | None:
        """The entries of the folder at host path ``base``, open as ``fd``, if the process has sent
        them (a large folder's as its parts come); None: list it here. ``rest(last)``: the
        folder's entries after the name ``last``, listed here (when its parts stop coming).

        ``whole``: the walk takes every entry before it enters any subfolder (it compares the
        listing with the last backup's), so a large folder whose subfolders' messages come
        between its parts is listed here: taking its parts would pass over theirs."""
        wanted = base.split("/")
        while self.proc is not None:
            message = self.next
            if message is None:
                if not self.poller.poll(0):
                    return None  # not here yet: never wait for it
                message = self._recv()
                if message is None or message[0] != "folder":
                    self.close()  # ended ("end") or gone: the walk lists the rest itself
                    return None
            path = message[1]
            assert isinstance(path, str)
            at = path.split("/")
            # ahead of the walk, or the next part of a large folder it is in (the process did not
            # send this subfolder: it could not open it)
            if at > wanted or (self.inside and path == self.inside[-1]):
                self.next = message
                return None
            self.next = None
            if at < wanted:  # the walk has passed it
                continue
            _, _, dev, ino, entries, more, nested = message
            try:
                st = os.fstat(fd)
            except OSError:
                return None
            if entries is None or (st.st_dev, st.st_ino) != (dev, ino) or (whole and nested):
                return None  # not listed there, or not the folder the walk opened (parts: dropped)
            assert isinstance(entries, list)
            return self._parts(base, entries, rest) if more else entries
        return None

    def _parts(
        self, base: str, first: list[StatEntry], rest: Callable[[str | None], Iterable[StatEntry]]
    ) -> Iterator[StatEntry]:
        """A large folder's entries, part after part as the walk takes them."""
        self.inside.append(base)
        try:
            yield from first
            last = first[-1][0] if first else None
            while True:
                part = self._next_part(base)
                if part is None:
                    yield from rest(last)
                    return
                entries, more = part
                yield from entries
                last = entries[-1][0] if entries else last
                if not more:
                    return
        finally:
            self.inside.pop()

    def _next_part(self, base: str) -> tuple[list[StatEntry], bool] | None:
        """The next part of the large folder ``base``, whose subfolders so far the walk has taken;
        None (and the process ended) when it does not come in time, or something else comes."""
        deadline = time.monotonic() + PART_WAIT_S
        below = base + "/"
        while self.proc is not None:
            message, self.next = self.next, None
            if message is None:
                wait_ms = (deadline - time.monotonic()) * 1000
                message = self._recv() if wait_ms > 0 and self.poller.poll(wait_ms) else None
            if message is None or message[0] != "folder":
                break
            path = message[1]
            assert isinstance(path, str)
            if path == base:
                _, _, _, _, entries, more, _ = message
                assert isinstance(entries, list) and isinstance(more, bool)
                return entries, more
            if not path.startswith(below):  # a folder below it is one the walk has passed
                break
        self.close()
        return None

    def _recv(self) -> tuple[object, ...] | None:
        try:
            return self.channel.recv()
        except (EOFError, OSError):
            return None

    def close(self) -> None:
        """End the process (it may still be walking) and reap it."""
        proc, self.proc = self.proc, None
        if proc is not None:
            end(proc)


def start(
    bases: list[str],
    prefix: str,
    excludes: list[str],
    after: str | None = None,
    skip: list[str] | None = None,
) -> WalkAhead | None:
    """A walk-ahead process, or None where none starts (the walk then lists everything itself)."""
    try:
        return WalkAhead(bases, prefix, excludes, after, skip)
    except (OSError, WorkerLostError) as exc:
        log.warning("walk-ahead process unavailable (%s): the walk stats every entry itself", exc)
        return None
