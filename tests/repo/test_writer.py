"""The blob writer's shared upload rate limit."""

from __future__ import annotations


def test_rate_limiter_spreads_bytes_over_time() -> None:
    import time

    from cloudkeep.repo.writer import RateLimiter

    limiter = RateLimiter(10 * 2**20)  # 10 MiB/s shared by every upload thread
    start = time.monotonic()
    for _ in range(4):
        limiter.acquire(2**20)
    assert time.monotonic() - start >= 0.29  # the first MiB is free, the next three cost 0.1 s each
