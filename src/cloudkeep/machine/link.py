"""A queue handle that survives the queue service going away: reopen on failure, back off, retry.

Callers see ``QueueUnavailable`` for one failed attempt and decide when to try again; nothing is
acknowledged or forgotten on a failure, so an outage delays messages but never loses them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from cloudkeep.errors import UnreachableError
from cloudkeep.providers.base import Queue, ReceivedMessage

log = logging.getLogger(__name__)
T = TypeVar("T")


class QueueUnavailable(UnreachableError):
    """The queue service did not answer; the caller retries with back-off."""


class QueueLink:
    def __init__(
        self, info: dict[str, Any], *, opener: Callable[[dict[str, Any]], Queue] | None = None
    ) -> None:
        self.info = info
        self._opener = opener
        self._queue: Queue | None = None
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def name(self) -> str:
        return str(self.info.get("name") or self.info.get("url") or "?")

    def _open(self) -> Queue:
        with self._lock:
            if self._queue is None:
                if self._opener is not None:
                    self._queue = self._opener(self.info)
                else:
                    from cloudkeep.providers.queues import open_queue_from_info

                    self._queue = open_queue_from_info(self.info)
            return self._queue

    def _call(self, what: str, action: Callable[[Queue], T]) -> T:
        try:
            result = action(self._open())
        except Exception as exc:
            self.failures += 1
            with self._lock:
                self._queue = None  # reopen next time: the client may hold a dead connection
            log.warning("queue %s: %s failed (%s: %s)", self.name, what, type(exc).__name__, exc)
            raise QueueUnavailable(f"queue {self.name}: {what} failed: {exc}") from exc
        if self.failures:
            log.info("queue %s: reachable again after %d failed attempts", self.name, self.failures)
            self.failures = 0
        return result

    def send(self, body: str) -> str:
        return self._call("send", lambda q: q.send(body))

    def receive(
        self, *, max_messages: int, visibility_timeout: int, wait_seconds: float
    ) -> list[ReceivedMessage]:
        return self._call(
            "receive",
            lambda q: q.receive(
                max_messages=max_messages, visibility_timeout=visibility_timeout, wait_seconds=wait_seconds
            ),
        )

    def ack(self, message: ReceivedMessage) -> None:
        self._call("ack", lambda q: q.ack(message))

    def dead_letter(self, message: ReceivedMessage, reason: str) -> None:
        self._call("dead-letter", lambda q: q.dead_letter(message, reason))


def backoff(failures: int, *, base: float = 0.2, cap: float = 15.0) -> float:
    return float(min(cap, base * 2 ** min(failures, 10)))
