"""Pacing of cloud control-plane calls (rescan, deployment, fallback commands): token buckets, backoff.

A rescan of thousands of machines makes several API calls per machine (run-command slots,
probe, install, confirm, tags), and so does each command the dispatcher sends over a cloud's
command channel when a machine's queue is silent (start, status reads). The clouds count them
per account and region (EC2/SSM) or per subscription (Azure Resource Manager) in token buckets
whose sizes the provider's facts state
(``ProviderFacts.api_rates``). Each server process keeps one ``TokenBucket`` per (credential,
scope, read/write) and takes a token before each call, so rescans and fallbacks share the budget;
a call the cloud still throttles (``ThrottledError``) empties its bucket for a backoff that
doubles per attempt, then is retried a bounded number of times.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cloudkeep.errors import ThrottledError
from cloudkeep.providers.facts import ApiRate, ProviderFacts

T = TypeVar("T")
Clock = Callable[[], float]
Sleep = Callable[[float], None]
_EPSILON = 1e-9  # a token refilled to 0.9999999… is a token (else float rounding spins forever)


class TokenBucket:
    """``rate.burst`` tokens, refilled at ``rate.per_second``; ``take`` blocks until one is free."""

    def __init__(self, rate: ApiRate, *, clock: Clock = time.monotonic, sleep: Sleep = time.sleep) -> None:
        if rate.burst < 1 or rate.per_second <= 0:
            raise ValueError(f"invalid API rate {rate}")
        self.rate = rate
        self._clock, self._sleep = clock, sleep
        self._tokens = float(rate.burst)
        self._updated = clock()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def _refill(self, now: float) -> None:
        start = max(self._updated, self._paused_until)
        if now > start:
            self._tokens = min(float(self.rate.burst), self._tokens + (now - start) * self.rate.per_second)
        self._updated = max(now, self._updated)

    def take(self) -> float:
        """Take one token, sleeping until there is one; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._refill(now)
                if now >= self._paused_until and self._tokens >= 1.0 - _EPSILON:
                    self._tokens = max(0.0, self._tokens - 1.0)
                    return waited
                if now < self._paused_until:
                    delay = self._paused_until - now + (1.0 - min(self._tokens, 1.0)) / self.rate.per_second
                else:
                    delay = (1.0 - self._tokens) / self.rate.per_second
            self._sleep(delay)
            waited += delay

    def pause(self, seconds: float) -> None:
        """The cloud throttled us: no tokens for ``seconds`` and none saved up (every caller slows)."""
        with self._lock:
            now = self._clock()
            self._refill(now)
            self._tokens = 0.0
            self._paused_until = max(self._paused_until, now + seconds)


class ApiPacer:
    """The buckets of one credential's cloud API; ``call`` paces a call and retries it when throttled."""

    def __init__(
        self,
        facts: ProviderFacts,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = time.sleep,
        retries: int = 5,
        first_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        self.rates = dict(facts.api_rates)
        self.scope_kind = facts.api_rate_scope
        self._clock, self._sleep = clock, sleep
        self.retries, self.first_backoff, self.max_backoff = retries, first_backoff, max_backoff
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._lock = threading.Lock()
        self.throttled = 0  # calls the cloud refused for its rate (for logs and tests)

    def scope(self, region: str) -> str:
        """The bucket a call to ``region`` counts against (every region alike for account scopes)."""
        return region if self.scope_kind == "region" else ""

    def bucket(self, kind: str, region: str) -> TokenBucket | None:
        rate = self.rates.get(kind)
        if rate is None:
            return None  # no published limit (the local lab): not paced
        key = (kind, self.scope(region))
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, clock=self._clock, sleep=self._sleep)
            return bucket

    def call(self, kind: str, region: str, action: Callable[[], T]) -> T:
        """Run ``action`` (one API call of ``kind`` "read"/"write" in ``region``) within the limits."""
        bucket = self.bucket(kind, region)
        backoff = self.first_backoff
        attempt = 0
        while True:
            if bucket is not None:
                bucket.take()
            try:
                return action()
            except ThrottledError:
                with self._lock:
                    self.throttled += 1
                attempt += 1
                if attempt > self.retries:
                    raise
                if bucket is not None:
                    bucket.pause(backoff)
                else:
                    self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)


_PACERS: dict[tuple[str, str], ApiPacer] = {}
_PACERS_LOCK = threading.Lock()


def pacer_for(credential_id: str, facts: ProviderFacts) -> ApiPacer:
    """This process's pacer for one credential: every rescan of that account shares its buckets."""
    with _PACERS_LOCK:
        key = (credential_id, facts.kind)
        pacer = _PACERS.get(key)
        if pacer is None:
            pacer = _PACERS[key] = ApiPacer(facts)
        return pacer
