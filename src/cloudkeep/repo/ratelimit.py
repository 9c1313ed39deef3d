"""The upload bandwidth limit shared by a backup's upload threads (split from ``writer.py``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator


class RateLimiter:
    """``bandwidth_limit`` bytes per second overall, shared by all upload threads.

    Each upload of n bytes gets the next slot of n / rate seconds: it starts when its slot does
    and its thread is held until the slot ends, so no upload (the first one included) goes faster
    than the limit on average, whatever order the pool runs them in.
    """

    def __init__(
        self,
        rate: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.rate = rate
        self.clock, self.sleep = clock, sleep
        self.lock = threading.Lock()
        self.next_free = clock()

    @contextlib.contextmanager
    def slot(self, nbytes: int) -> Iterator[None]:
        with self.lock:
            now = self.clock()
            start = max(now, self.next_free)
            self.next_free = end = start + nbytes / self.rate
        if start > now:
            self.sleep(start - now)
        yield
        rest = end - self.clock()
        if rest > 0:
            self.sleep(rest)
