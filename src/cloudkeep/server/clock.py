"""The server's one notion of "now": timezone-aware UTC, injectable where a test controls time.

Server code reads the time only through ``utcnow`` (or takes a ``Clock`` argument defaulting to it), so
``use_clock`` moves every reading at once: expiry, heartbeat freshness, rescan and revocation stamps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def _wall() -> datetime:
    return datetime.now(UTC)


_source: Clock = _wall


def utcnow() -> datetime:
    return _source()


@contextmanager
def use_clock(clock: Clock) -> Iterator[None]:
    """Read ``clock`` for "now" everywhere on the server inside the block (process-wide, for tests)."""
    global _source
    previous, _source = _source, clock
    try:
        yield
    finally:
        _source = previous
