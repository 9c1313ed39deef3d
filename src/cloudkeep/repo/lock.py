"""The maintenance lock: one prune or repair at a time per repository (backups never take it).

Two prunes at once could undo each other's work: one consolidates an index file naming packs
the other is deleting. ``locks/maintenance`` is created create-only (``if_absent``); a lock not
refreshed within ``grace`` (a killed prune) is taken over. Staleness is judged from the store's
own modification time (and the holder's ``seen``), whichever is later. Like a backup session, a
holder checks before each step that the lock is still its own and was refreshed within the
session lease: a prune paused long enough to be taken over stops instead of resuming.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from cloudkeep.errors import ConflictError, IntegrityError
from cloudkeep.repo import writer as backup_session
from cloudkeep.repo.repository import Repository
from cloudkeep.storage.base import ObjectExistsError, ObjectInfo, ObjectNotFoundError

LOCK_KEY = "locks/maintenance"


class MaintenanceBusyError(ConflictError):
    """Another live prune or repair holds the lock: this one did not run (nothing is wrong).

    Every machine of a job runs retention with prune; when two finish together one prune runs
    and the other is skipped, which its caller reports as such rather than as a failure.
    """


def last_refresh(info: ObjectInfo, body: dict[str, Any] | None) -> datetime | None:
    """The later of the store's modification time and the writer's own ``seen`` (either may lack)."""
    times = [info.modified] if info.modified is not None else []
    with contextlib.suppress(KeyError, TypeError, ValueError):
        if body is not None:
            times.append(datetime.fromisoformat(body["seen"]))
    return max(times) if times else None


class MaintenanceLock:
    def __init__(self, repo: Repository, what: str, now: datetime) -> None:
        self.repo, self.what, self.now = repo, what, now
        self.owner = secrets.token_hex(8)
        self._refreshed = backup_session.session_clock()

    def _body(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "what": self.what,
            "host": socket.gethostname(),
            "seen": self.now.isoformat(),
        }

    def acquire(self, grace: timedelta) -> None:
        for _ in range(2):
            try:
                self.repo.write_marker(LOCK_KEY, self._body(), if_absent=True)
                return
            except ObjectExistsError:
                if not self._stale(grace):
                    raise MaintenanceBusyError(
                        f"another maintenance task holds {LOCK_KEY}; {self.what} does not run beside it",
                        hint=f"wait for it; a lock not refreshed for {grace} is taken over",
                    ) from None
                # A killed task's lock. Two takers racing here could both proceed: maintenance is
                # scheduled by one server, so this only guards against accidental overlap.
                self.repo.store.delete_or_hide(LOCK_KEY)
        raise ConflictError(f"{LOCK_KEY} was taken over by another maintenance task; {self.what} stopped")

    def _stale(self, grace: timedelta) -> bool:
        """Not refreshed within ``grace`` (an unreadable lock is judged by its age alone)."""
        info = self.repo.store.stat(LOCK_KEY)
        if info is None:
            return True
        body: dict[str, Any] | None
        try:
            body = self.repo.read_marker(LOCK_KEY)
        except ObjectNotFoundError:
            return True
        except (IntegrityError, ValueError):
            body = None
        seen = last_refresh(info, body)
        return seen is not None and self.now - seen > grace

    def check(self) -> None:
        """``ConflictError`` unless the lock is still ours and was refreshed within the lease."""
        idle = backup_session.session_clock() - self._refreshed
        if idle > backup_session.SESSION_LEASE_S:
            raise ConflictError(f"{self.what} was paused for {idle:.0f} s: its lock may have been taken over")
        try:
            owner = self.repo.read_marker(LOCK_KEY).get("owner")
        except (ObjectNotFoundError, IntegrityError, ValueError):
            owner = None
        if owner != self.owner:
            raise ConflictError(f"{LOCK_KEY} was taken over by another maintenance task; {self.what} stopped")

    def refresh(self) -> None:
        started = backup_session.session_clock()
        self.check()
        self.repo.write_marker(LOCK_KEY, self._body())
        self._refreshed = started

    def release(self) -> None:
        with contextlib.suppress(Exception):
            if self.repo.read_marker(LOCK_KEY).get("owner") == self.owner:
                self.repo.store.delete_or_hide(LOCK_KEY)


@contextlib.contextmanager
def maintenance_lock(
    repo: Repository, what: str, *, now: datetime, grace: timedelta
) -> Iterator[MaintenanceLock]:
    lock = MaintenanceLock(repo, what, now)
    lock.acquire(grace)
    try:
        yield lock
    finally:
        lock.release()
