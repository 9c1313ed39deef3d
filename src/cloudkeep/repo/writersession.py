"""A backup session's lease: its markers under ``sessions/``, refreshed while it writes.

Split from ``writer.py`` (which writes the blobs). Agents' credentials may only create objects
(docs/security.md): the session never overwrites or must delete anything. Its first marker is
``sessions/<id>``, each refresh a new ``sessions/<id>.<n>``, and its end ``sessions/<id>.end``
when the marker cannot be deleted; the end marker carries a secret whose hash is in the first
marker, so nobody else can end it.

The session is a lease (docs/format.md, "Concurrency and the prune protocol"): its marker is
written before the dedup index is final and removed only after the manifest is stored; it is
refreshed every ``HEARTBEAT_S``; a session whose last refresh is older than ``SESSION_LEASE_S``
(paused, partitioned) or whose marker prune removed as stale writes no index file and commits
nothing, since packs it deduplicated against may be gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable
from datetime import datetime

from cloudkeep.errors import ConflictError, PermissionDeniedError
from cloudkeep.repo.repository import Repository
from cloudkeep.repo.steps import step

HEARTBEAT_S = 300.0
# A session not refreshed for this long stops writing. Prune's grace is at least twice this
# (prune.min_grace): the rest covers requests still in flight and clock skew.
SESSION_LEASE_S = 1800.0


END_SUFFIX = ".end"


def end_hash(secret: str) -> str:
    """What the first marker holds so that only the session itself can write its end marker."""
    return hashlib.sha256(secret.encode()).hexdigest()


def session_name(key: str) -> str:
    """The session a marker key belongs to: its first marker's key (``.<n>``/``.end`` removed)."""
    folder, _, leaf = key.rpartition("/")
    return f"{folder}/{leaf.split('.', 1)[0]}" if folder else leaf.split(".", 1)[0]


class SessionExpiredError(ConflictError):
    """The backup session lost its lease: a prune may have removed packs it relies on."""


def session_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended (unlike monotonic)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


class SessionLease:
    """The marker side of ``BlobWriter`` (a mixin: the state below is the writer's)."""

    repo: Repository
    hostname: str
    started: datetime
    session_key: str
    _beats: int
    _end_secret: str
    _clock: Callable[[], float]
    _now: Callable[[], datetime]  # the writer's wall clock: dates its markers (tests move it)
    _refreshed: float | None
    _expired: str | None
    _stop: threading.Event

    def heartbeat(self, seen: datetime | None = None) -> None:
        """Refresh the session marker (``seen`` is for tests that simulate the passage of time).

        Never re-creates a marker prune removed as stale: that session is over.
        """
        started = self._clock()
        if self._refreshed is not None:
            self._check_alive()
        body = {
            "hostname": self.hostname,
            "started": self.started.isoformat(),
            "seen": (seen or self._now()).isoformat(),
        }
        if self._refreshed is None:
            body["end_hash"] = end_hash(self._end_secret)
            self.repo.write_marker(self.session_key, body, if_absent=True)
        else:
            with self.repo.lock:
                self._beats += 1
                key = f"{self.session_key}.{self._beats:06d}"
            self.repo.write_marker(key, body, if_absent=True)
        self._refreshed = started

    def check_lease(self) -> None:
        """Raise ``SessionExpiredError`` once the session was not refreshed within its lease."""
        if self._expired is None and self._refreshed is not None:
            idle = self._clock() - self._refreshed
            if idle > SESSION_LEASE_S:
                self._expire(f"not refreshed for {idle:.0f} s (lease {SESSION_LEASE_S:.0f} s)")
        if self._expired is not None:
            raise SessionExpiredError(
                f"backup session {self.session_key} expired: {self._expired}; nothing more is committed",
                hint="run the backup again (what was uploaded and indexed is reused)",
            )

    def _check_alive(self) -> None:
        """Within the lease, and prune has not removed the marker as stale (one HEAD)."""
        self.check_lease()
        if self.repo.store.stat(self.session_key) is None:
            self._expire("its session marker was removed by prune (it looked stale)")

    def _expire(self, why: str) -> None:
        self._expired = self._expired or why
        self.check_lease()

    def _beat(self) -> None:
        # On a thread of its own: a slow answer must not hold up the heartbeats.
        threading.Thread(target=self._probe_locks, name="ck-lock-probe", daemon=True).start()
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.heartbeat()
            except SessionExpiredError:
                return
            except Exception:
                continue

    def _probe_locks(self) -> None:
        """Learn now whether the store locks objects: the session's end deletes its markers
        according to it, and an S3 store learns it by a request (its first, ~25 ms on the emulator
        with botocore's error classes built), asked here rather than after the restore point is
        stored. A failure is left for the end, which asks again and reports it."""
        with contextlib.suppress(Exception):
            _ = self.repo.store.supports_object_lock

    # -- blobs -----------------------------------------------------------------------------

    def _end_session(self) -> None:
        self._remove_markers()
        step("backup:session-ended")

    def _remove_markers(self) -> None:
        """Delete the session's markers, or, where the credential cannot delete, say it ended.

        The first marker goes first: from then on the session counts as ended for prune.
        """
        try:  # hidden, not deleted, where the store's default retention locks it (generations)
            self.repo.store.delete_or_hide(self.session_key)
        except PermissionDeniedError:
            body = {"hostname": self.hostname, "end": self._end_secret, "seen": self._now().isoformat()}
            self.repo.write_marker(self.session_key + END_SUFFIX, body, if_absent=True)
            return
        for n in range(1, self._beats + 1):
            with contextlib.suppress(Exception):  # leftovers of an ended session: prune removes them
                self.repo.store.delete_or_hide(f"{self.session_key}.{n:06d}")
