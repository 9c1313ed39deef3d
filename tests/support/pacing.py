"""The pacer's clock for tests, and a pacer that records the calls it paced.

``FakeClock`` is monotonic time that moves only when someone sleeps, so refills and backoffs
cost no wall time and waits are exact. ``CountingPacer`` is the server's real ``ApiPacer`` on
such a clock that also records each call's kind and region: tests count tokens from it;
``ThrottledOnce`` is one whose cloud refuses the first write once.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TypeVar

from cloudkeep.errors import ThrottledError
from cloudkeep.providers.facts import ApiRate, ProviderFacts
from cloudkeep.server.pacing import ApiPacer

T = TypeVar("T")


class FakeClock:
    """Monotonic time that only moves when someone sleeps (thread-safe)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self.now += seconds


class CountingPacer(ApiPacer):
    """An ``ApiPacer`` on a ``FakeClock`` that records ``(kind, region)`` of every paced call
    (once per call, not per retry)."""

    def __init__(self, facts: ProviderFacts, clock: FakeClock, **rates: ApiRate) -> None:
        merged = {**dict(facts.api_rates), **rates}
        super().__init__(
            dataclasses.replace(facts, api_rates=tuple(merged.items())), clock=clock, sleep=clock.sleep
        )
        self.calls: list[tuple[str, str]] = []
        self._calls_lock = threading.Lock()

    def call(self, kind: str, region: str, action: Callable[[], T]) -> T:
        with self._calls_lock:
            self.calls.append((kind, region))
        return super().call(kind, region, action)

    def count(self, kind: str) -> int:
        with self._calls_lock:
            return sum(1 for k, _ in self.calls if k == kind)


class ThrottledOnce(CountingPacer):
    """The cloud refuses the first try of the first write (e.g. SendCommand) for its rate, once."""

    refused = False

    def call(self, kind: str, region: str, action: Callable[[], T]) -> T:
        def refuse_once() -> T:
            if kind == "write" and not self.refused:
                self.refused = True
                raise ThrottledError("Rate exceeded (ThrottlingException)")
            return action()

        return super().call(kind, region, refuse_once)
