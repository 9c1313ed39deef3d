"""Keep the engine's resident memory close to what it actually holds.

The engine allocates many short-lived buffers of 0.25 to 8 MiB (file reads, chunks, compressed and
sealed copies) on several threads. glibc's default *dynamic* mmap threshold climbs after the first
large free, after which such buffers come from per-thread heaps that are rarely returned to the
OS: measured peak RSS of a 200 MiB backup fell from ~210 MiB to ~135 MiB with a fixed threshold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_MMAP_THRESHOLD = -3
_THRESHOLD = 256 * 1024
_done = False


def limit_heap_fragmentation() -> None:
    """Serve allocations ≥ 256 KiB with mmap so freeing them returns memory at once (glibc only)."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return
    _done = True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)
    except (OSError, AttributeError):
        pass  # not glibc (musl, …): nothing to tune


_paused = 0  # users of ``collector_paused`` inside it now
_enable_after = False  # the collector's state when the first of them came in
_paused_lock = threading.Lock()


@contextmanager
def collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside (for the process; nested and concurrent uses stack).

    A restore plans tens of thousands of long-lived objects (nodes, files, targets) that hold
    no cycles: every few thousand allocations the collector walks all of them again, 15-20 %
    of a restore's user time on a real tree, to free nothing. Cycles made meanwhile elsewhere in
    the process are collected once the last user leaves.
    """
    global _paused, _enable_after
    with _paused_lock:
        if _paused == 0:
            _enable_after = gc.isenabled()
            gc.disable()
        _paused += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused -= 1
            if _paused == 0 and _enable_after:
                gc.enable()


class ThreadBuffers:
    """Named byte buffers, one set per thread, reused from one chunk to the next.

    A fresh object per ~1 MiB chunk costs an allocation, a copy and its page faults (kernel
    time); a buffer grows to the largest size its thread has asked for and stays.
    """

    def __init__(self, minimum: int = 2**20) -> None:
        self.minimum = minimum
        self._local = threading.local()

    def get(self, name: str, size: int) -> memoryview:
        """This thread's buffer ``name``, exactly ``size`` bytes long (contents undefined)."""
        buf: bytearray | None = getattr(self._local, name, None)
        if buf is None or len(buf) < size:
            buf = bytearray(max(size, self.minimum))
            setattr(self._local, name, buf)
        return memoryview(buf)[:size]
