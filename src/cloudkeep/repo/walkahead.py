"""The parent's side of the walk-ahead process (``procwalk.py``): folder listings, stat'ed ahead.

The walk asks for each folder's listing in its own order; the process sends them in the same
order, so the next message is either the folder asked for, one the walk has passed (it listed
that folder itself, or did not enter it: dropped), or one still ahead (kept: this folder is then
listed here). Nothing waits for the process: until its next message has arrived, the walk lists
here. A listing is used only for the very folder the walk opened (device and inode), so a folder
renamed or swapped between the two walks is listed here; the entries are stat'ed somewhat
earlier than the walk reaches them, as a queued file is read somewhat later than its stat.

The process is started once a backup has listed ``AHEAD_FROM`` entries (a small backup starts no
interpreter), where worker processes are used (``filecontent.PROCESSES_MIN_CPUS`` cores). If it
cannot start, ends early or falls behind, the walk lists everything itself, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import subprocess

from cloudkeep.repo import procwalk
from cloudkeep.repo.fsmeta import StatEntry
from cloudkeep.repo.procpool import WorkerLostError, end, spawn

log = logging.getLogger(__name__)

AHEAD_FROM = 8192  # entries the walk lists itself before it starts the process
PIPE_BYTES = 2**20  # how far ahead the process may get (its messages wait in the pipe)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class WalkAhead:
    """One backup's walk-ahead process, read by the walking thread only."""

    def __init__(self, bases: list[str], prefix: str, excludes: list[str]) -> None:
        """Walk the source folders ``bases`` (host paths, in the walk's order) below ``prefix``."""
        self.proc: subprocess.Popen[bytes] | None
        self.proc, self.channel = spawn("procwalk")
        with contextlib.suppress(OSError):  # a smaller pipe only lets it get less far ahead
            fcntl.fcntl(self.channel.read_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        self.poller = select.poll()
        self.poller.register(self.channel.read_fd, select.POLLIN)
        self.next: tuple[object, ...] | None = None  # a message for a folder the walk has not reached
        try:
            init = {"bases": bases, "prefix": prefix, "excludes": excludes, "most": procwalk.RECORD_MOST}
            self.channel.send(("walk", init))
        except OSError:
            self.close()

    def listing(self, base: str, fd: int) -> list[StatEntry] | None:
        """The entries of the folder at host path ``base``, open as ``fd``, if the process has sent
        them; None: list it here."""
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
            if at > wanted:  # ahead of the walk
                self.next = message
                return None
            self.next = None
            if at < wanted:  # the walk has passed it
                continue
            _, _, dev, ino, entries = message
            try:
                st = os.fstat(fd)
            except OSError:
                return None
            if entries is None or (st.st_dev, st.st_ino) != (dev, ino):
                return None  # too large to send, not listed there, or not the folder the walk opened
            assert isinstance(entries, list)
            return entries
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


def start(bases: list[str], prefix: str, excludes: list[str]) -> WalkAhead | None:
    """A walk-ahead process, or None where none starts (the walk then lists everything itself)."""
    try:
        return WalkAhead(bases, prefix, excludes)
    except (OSError, WorkerLostError) as exc:
        log.warning("walk-ahead process unavailable (%s): the walk stats every entry itself", exc)
        return None
