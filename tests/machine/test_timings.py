"""Stage busy-time accounting (``cloudkeep.machine.timings``) with an injected clock."""

from __future__ import annotations

from typing import Any

from cloudkeep.machine.timings import StageClock, is_pack_key
from cloudkeep.server.jobs.stats import bottleneck


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_parallel_uploads_count_once_and_the_rest_is_reading() -> None:
    now = FakeTime()
    clock = StageClock(now)
    first = clock.busy("upload")
    second = clock.busy("upload")
    now.now = 1.0
    first.__enter__()
    now.now = 2.0
    second.__enter__()  # overlaps the first one
    now.now = 3.0
    first.__exit__(None, None, None)
    now.now = 4.0
    second.__exit__(None, None, None)
    timings = clock.timings(engine_seconds=10.0)
    assert timings["upload_seconds"] == 3.0  # the union 1..4, not 2 + 2
    assert timings["upload_thread_seconds"] == 4.0
    assert timings["read_seconds"] == 7.0 and timings["commit_seconds"] == 0.0
    assert bottleneck(timings) == "source"


def test_put_wrapper_classifies_packs_and_metadata() -> None:
    now = FakeTime()
    clock = StageClock(now)
    calls: list[tuple[str, Any]] = []

    def put(key: str, data: bytes, **kwargs: Any) -> None:
        calls.append((key, kwargs))
        now.now += 2.0 if is_pack_key(key) else 0.5

    timed = clock.timed_put(put)
    timed("data/ab/abcdef", b"x", retain_until=None)
    timed("writers/m1/data/cd/cdef", b"x")
    timed("index/123", b"x")
    assert [c[0] for c in calls] == ["data/ab/abcdef", "writers/m1/data/cd/cdef", "index/123"]
    assert calls[0][1] == {"retain_until": None}  # arguments pass through unchanged
    timings = clock.timings(engine_seconds=5.0)
    assert timings["upload_seconds"] == 4.0 and timings["commit_seconds"] == 0.5
    assert timings["read_seconds"] == 0.5
    assert bottleneck(timings) == "network"
