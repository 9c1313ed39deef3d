"""The process's slots for machine tasks: ``settings.parallel_machines`` of them, shared by all its
sessions, and following the setting when a later context changes it.

They bound the machine threads working on the catalog at once, which is what sizes the database
pool (``db/pool.py``); a session's further tasks wait for a slot. A semaphore sized once kept the
first settings' number for the life of the process (an embedded server or a test opening a second
context with another ``parallel_machines`` got the first one's).
"""

from __future__ import annotations

import threading
from types import TracebackType


class Slots:
    """At most ``limit`` holders at once; ``resize`` applies to the next ones (holders above a
    smaller limit finish first: a running task is never cut)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("machine slots need a limit of at least one")
        self.limit = limit
        self.held = 0
        self._cond = threading.Condition()

    def resize(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("machine slots need a limit of at least one")
        with self._cond:
            self.limit = limit
            self._cond.notify_all()

    def __enter__(self) -> Slots:
        with self._cond:
            while self.held >= self.limit:
                self._cond.wait()
            self.held += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        with self._cond:
            self.held -= 1
            self._cond.notify()


_SLOTS: Slots | None = None
_SLOTS_LOCK = threading.Lock()


def machine_slots(parallel_machines: int) -> Slots:
    """This process's slots, sized to the ``parallel_machines`` of the latest session that asked."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = Slots(parallel_machines)
        else:
            _SLOTS.resize(parallel_machines)
        return _SLOTS
