"""Python 3.9 stand-ins for the few newer features the machine side uses.

The machine side (repo/, storage/, protocol/, machine/, the providers' queue and storage modules)
runs on CPython 3.9-3.13; the server needs 3.11. On 3.11+ every name here is the standard one.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from datetime import timezone
from enum import Enum
from typing import Any, TypeVar

UTC = timezone.utc  # datetime.UTC is 3.11+

# ``@dataclass(frozen=True, **SLOTS)``: slotted where dataclasses can (3.10+), plain on 3.9.
SLOTS: dict[str, Any] = {"slots": True} if sys.version_info >= (3, 10) else {}

T = TypeVar("T")
U = TypeVar("U")

if sys.version_info >= (3, 11):
    from enum import StrEnum
else:

    class StrEnum(str, Enum):
        """enum.StrEnum (3.11+): members are strings and format as their value."""

        def __str__(self) -> str:
            return str(self.value)

        def __format__(self, spec: str) -> str:
            return format(str(self.value), spec)


def zip_strict(first: Iterable[T], second: Iterable[U]) -> Iterator[tuple[T, U]]:
    """``zip(first, second, strict=True)`` (3.10+): ValueError when the lengths differ."""
    if sys.version_info >= (3, 10):
        return zip(first, second, strict=True)
    return _zip_checked(first, second)


def _zip_checked(first: Iterable[T], second: Iterable[U]) -> Iterator[tuple[T, U]]:
    done = object()
    left, right = iter(first), iter(second)
    while True:
        a, b = next(left, done), next(right, done)
        if a is done and b is done:
            return
        if a is done or b is done:
            raise ValueError("zip_strict: the iterables have different lengths")
        yield a, b  # type: ignore[misc]


__all__ = ["SLOTS", "UTC", "StrEnum", "zip_strict"]
