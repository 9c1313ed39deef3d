"""Queue plumbing shared by every provider.

``open_queue_from_info(info)`` lets the machine side open its queue from what the server's
``QueueService.connection_info(name)`` returned, without knowing which cloud it is on: each
provider registers an opener for its ``info["kind"]``.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.base import Queue

QueueOpener = Callable[[Mapping[str, Any]], Queue]
_OPENERS: dict[str, QueueOpener] = {}
T = TypeVar("T")


def register_queue_opener(kind: str) -> Callable[[QueueOpener], QueueOpener]:
    def decorate(opener: QueueOpener) -> QueueOpener:
        _OPENERS[kind] = opener
        return opener

    return decorate


def open_queue_from_info(info: Mapping[str, Any]) -> Queue:
    """Open the queue described by ``connection_info`` (a JSON-decoded dict)."""
    kind = info.get("kind")
    if kind in ("aws", "azure", "local"):
        # Only this cloud's module (and SDK): a machine never pays for the other clouds' imports.
        importlib.import_module(f"cloudkeep.providers.{kind}.queues")
    else:
        import cloudkeep.providers.registry  # noqa: F401 - registers every opener (to name them)
    try:
        opener = _OPENERS[str(kind)]
    except KeyError:
        raise ConfigurationError(
            f"queue connection info names unknown kind {kind!r}",
            hint=f"expected one of: {', '.join(sorted(_OPENERS))} (from QueueService.connection_info)",
        ) from None
    return opener(info)


def poll_with_backoff(
    attempt: Callable[[], list[T]], wait_seconds: float, *, first_delay: float = 0.05, max_delay: float = 1.0
) -> list[T]:
    """Call ``attempt`` until it returns something or ``wait_seconds`` pass (no native long polling)."""
    deadline = time.monotonic() + max(0.0, wait_seconds)
    delay = first_delay
    while True:
        found = attempt()
        remaining = deadline - time.monotonic()
        if found or remaining <= 0:
            return found
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, max_delay)
