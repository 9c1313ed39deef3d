"""Queue plumbing shared by every provider.

``open_queue_from_info(info)`` lets the machine side open its queue from what the server's
``QueueService.connection_info(name)`` returned, without knowing which cloud it is on:
``info["kind"]`` names the provider, whose facts name its opener (imported only then).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pkgutil import resolve_name
from typing import Any, TypeVar, cast

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.base import Queue
from cloudkeep.providers.registry import provider_facts, provider_kinds

T = TypeVar("T")


def open_queue_from_info(info: Mapping[str, Any]) -> Queue:
    """Open the queue described by ``connection_info`` (a JSON-decoded dict)."""
    kind = str(info.get("kind"))
    if kind not in provider_kinds():
        raise ConfigurationError(
            f"queue connection info names unknown kind {kind!r}",
            hint=f"expected one of: {', '.join(provider_kinds())} (from QueueService.connection_info)",
        )
    opener = cast(Callable[[Mapping[str, Any]], Queue], resolve_name(provider_facts(kind).queue_opener))
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
