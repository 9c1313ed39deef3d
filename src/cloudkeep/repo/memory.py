"""Keep the engine's resident memory close to what it actually holds: reused buffers, and no
collector passes over long-lived objects (the C heap's setup is ``cloudkeep.heap``).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

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


T = TypeVar("T")


class Lent(Generic[T]):
    """Objects lent to one thread at a time and kept for the next borrower, whichever thread.

    For zstd contexts: one per thread, each kept at the size of the largest input it had
    compressed, was 14 MiB in a mail store's incremental (11 contexts over the file, chunk and
    tree threads), where a few at a time compress. ``list.pop`` and ``append`` are atomic."""

    def __init__(self, make: Callable[[], T]) -> None:
        self._make = make
        self._free: list[T] = []

    def take(self) -> T:
        try:
            return self._free.pop()
        except IndexError:
            return self._make()

    def give(self, item: T) -> None:
        self._free.append(item)


class BufferPool:
    """Byte buffers lent out and given back, shared by threads, kept only while someone uses them.

    A large file's chunks are copied out of the chunker's buffer before another thread encodes
    them. Fresh ``bytes`` per ~0.6 MiB chunk were served by ``mmap`` (when the threshold of
    ``limit_heap_fragmentation`` was 256 KiB) and unmapped at once: every copy faulted its pages
    in anew, a third of a first backup's page faults on a real tree. Buffers are whole MiB (most
    chunks fit any), at most ``KEEP_MAX`` bytes each are kept (a rare larger chunk gets memory of
    its own), and every idle one is freed when the last user (``using``) leaves: the pool holds
    memory only during large files.
    """

    KEEP_MAX = 2 * 2**20

    def __init__(self) -> None:
        self._idle: list[bytearray] = []
        self._users = 0
        self._lock = threading.Lock()

    @contextmanager
    def using(self) -> Iterator[None]:
        """Inside, buffers given back are kept for the next ``copy``."""
        with self._lock:
            self._users += 1
        try:
            yield
        finally:
            with self._lock:
                self._users -= 1
                if not self._users:
                    self._idle.clear()

    def copy(self, data: bytes | memoryview) -> tuple[bytearray, memoryview]:
        """A buffer holding a copy of ``data`` and the view of it to use; ``give_back`` it after."""
        size = len(data)
        buf = None
        with self._lock:
            for i, idle in enumerate(self._idle):
                if len(idle) >= size:
                    buf = self._idle.pop(i)
                    break
        if buf is None:
            buf = bytearray(-(-max(size, 1) // 2**20) * 2**20)
        view = memoryview(buf)[:size]
        view[:] = data
        return buf, view

    def give_back(self, buf: bytearray) -> None:
        with self._lock:
            if self._users and len(buf) <= self.KEEP_MAX:
                self._idle.append(buf)
