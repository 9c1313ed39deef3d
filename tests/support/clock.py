"""A wall clock a test sets: stores, writers and the server read it instead of the machine's date."""

from __future__ import annotations

from datetime import datetime

from cloudkeep.compat import UTC

# Any date: nothing a test asserts may depend on which.
FIXED_NOW = datetime(2031, 3, 14, 9, 26, tzinfo=UTC)


class SetClock:
    """Returns ``now``, which only the test moves."""

    def __init__(self, now: datetime = FIXED_NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now
