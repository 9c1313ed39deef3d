"""Stage busy times of a backup, measured outside the engine, so sessions can name a bottleneck.

The engine reports no timings and runs reading, chunking and uploads in parallel pipelines, so
the agent measures what it can see from outside: the wall time during which at least one pack
upload (``upload``) or one metadata write — index, snapshot, locks — (``commit``) was in flight,
through the store the engine writes to. The rest of the engine's wall time had nothing in flight
to storage, so the pipeline was waiting for the source to be read and processed (``read``). Busy
times are unions of intervals (parallel uploads count once), so they add up to the engine time.
These keys are what ``server/jobs/stats.bottleneck`` maps to source / network / target.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


def is_pack_key(key: str) -> bool:
    """``data/…`` or a writer's ``writers/<m>/data/…``: pack data, as opposed to metadata."""
    return key.startswith("data/") or "/data/" in key


class StageClock:
    """Thread-safe busy-time accounting per stage: wall time with at least one call in flight."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._since: dict[str, float] = {}
        self.wall: dict[str, float] = {}  # union of busy intervals
        self.thread_seconds: dict[str, float] = {}  # sum over threads (parallelism shows here)

    @contextmanager
    def busy(self, stage: str) -> Iterator[None]:
        started = self._now()
        with self._lock:
            if self._active.get(stage, 0) == 0:
                self._since[stage] = started
            self._active[stage] = self._active.get(stage, 0) + 1
        try:
            yield
        finally:
            ended = self._now()
            with self._lock:
                self._active[stage] -= 1
                self.thread_seconds[stage] = self.thread_seconds.get(stage, 0.0) + ended - started
                if self._active[stage] == 0:
                    self.wall[stage] = self.wall.get(stage, 0.0) + ended - self._since.pop(stage)

    def timed_put(self, put: Callable[..., Any]) -> Callable[..., Any]:
        """Wrap a store's ``put`` so pack uploads count as ``upload`` and other writes as ``commit``."""

        def put_timed(key: str, *args: Any, **kwargs: Any) -> Any:
            with self.busy("upload" if is_pack_key(key) else "commit"):
                return put(key, *args, **kwargs)

        return put_timed

    def timings(self, engine_seconds: float) -> dict[str, float]:
        """``read_seconds`` / ``upload_seconds`` / ``commit_seconds`` for the backup result's stats."""
        upload, commit = self.wall.get("upload", 0.0), self.wall.get("commit", 0.0)
        return {
            "read_seconds": round(max(engine_seconds - upload - commit, 0.0), 3),
            "upload_seconds": round(upload, 3),
            "commit_seconds": round(commit, 3),
            "engine_seconds": round(engine_seconds, 3),
            "upload_thread_seconds": round(self.thread_seconds.get("upload", 0.0), 3),
        }
