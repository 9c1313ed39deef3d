"""The memory store judges locks by its bucket's clock, which a test sets (S3 uses its own time,
not the client's): immutability tests then run at a fixed date instead of the machine's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest

from cloudkeep.storage.base import ObjectLockedError
from cloudkeep.storage.memory import MemoryStore
from tests.support.clock import FIXED_NOW, SetClock

T0 = FIXED_NOW


@pytest.fixture
def name() -> Iterator[str]:
    name = "clock-" + uuid.uuid4().hex
    yield name
    MemoryStore.forget(name)


def test_locks_end_by_the_bucket_clock(name: str) -> None:
    clock = SetClock()
    store = MemoryStore(name, clock=clock)
    store.put("k", b"locked", retain_until=T0 + timedelta(days=1))
    other = MemoryStore(name)  # another client of the same bucket: the bucket's time, not its own
    with pytest.raises(ObjectLockedError):
        other.delete("k")
    clock.now = T0 + timedelta(days=1, seconds=1)
    other.delete("k")
    assert store.stat("k") is None


def test_default_retention_and_write_time_come_from_the_bucket_clock(name: str) -> None:
    clock = SetClock()
    store = MemoryStore(name, clock=clock)
    store.set_default_retention(3)
    clock.now = T0 + timedelta(hours=5)
    store.put("k", b"kept")
    info = store.stat("k")
    assert info is not None and info.modified == clock.now
    assert info.retain_until == clock.now + timedelta(days=3)
    clock.now += timedelta(days=3, microseconds=-1)
    with pytest.raises(ObjectLockedError):  # until the end of the period, not a moment less
        store.delete("k")
    clock.now += timedelta(microseconds=1)
    store.delete("k")
    assert store.stat("k") is None
