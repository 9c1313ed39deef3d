"""The blob writer's shared upload rate limit."""

from __future__ import annotations

import pytest

from cloudkeep.repo.writer import RateLimiter


class _FakeClock:
    """A clock that moves only when something sleeps (no wall clock in the test)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_rate_limiter_spreads_bytes_over_time() -> None:
    clock = _FakeClock()
    limiter = RateLimiter(10 * 2**20, clock=clock, sleep=clock.sleep)  # shared by every upload thread
    for _ in range(4):
        with limiter.slot(2**20):
            pass
    assert clock.now - 100.0 == pytest.approx(0.4)  # 4 MiB at 10 MiB/s, the first MiB included


@pytest.mark.parametrize("order", [(2_000_000, 1_000), (1_000, 2_000_000)])
def test_the_bandwidth_limit_holds_whatever_order_the_uploads_run_in(order: tuple[int, int]) -> None:
    """The first upload used to go free and only later ones waited: a data pack and a tree pack
    finished at once when the tree pack happened to go first."""
    clock = _FakeClock()
    limiter = RateLimiter(500_000, clock=clock, sleep=clock.sleep)
    for size in order:
        with limiter.slot(size):
            clock.now += 0.01  # the transfer itself, faster than the limit
    fair = 2_001_000 / 500_000
    assert fair <= clock.now - 100.0 <= fair + 0.01  # the tiny pack's own transfer may end past its slot


def test_a_slow_upload_is_not_held_after_its_slot() -> None:
    clock = _FakeClock()
    limiter = RateLimiter(1_000_000, clock=clock, sleep=clock.sleep)
    with limiter.slot(1_000_000):
        clock.now += 3.0  # a slow link: slower than the limit already
    assert clock.slept == []
    with limiter.slot(1_000_000):  # the next slot starts now, not in the past
        pass
    assert clock.now == pytest.approx(104.0)
