"""A store wrapper that fails chosen operations: simulates crashes and outages in-process.

No peer can be told to fail the N-th write, so this stand-in wraps a real backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from cloudkeep.errors import UnreachableError
from cloudkeep.storage import ObjectInfo, ObjectStore


class FaultyStore(ObjectStore):
    scheme = "faulty"

    def __init__(
        self,
        inner: ObjectStore,
        fail_put: Callable[[str], bool] = lambda key: False,
        error: Callable[[str], Exception] = lambda key: UnreachableError(f"injected failure writing {key}"),
    ) -> None:
        self.inner = inner
        self.fail_put = fail_put
        self.error = error
        self.puts: list[str] = []

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        if self.fail_put(key):
            raise self.error(key)
        self.puts.append(key)
        self.inner.put(key, data, if_absent=if_absent, retain_until=retain_until)

    def get(self, key: str) -> bytes:
        return self.inner.get(key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self.inner.get_range(key, offset, length)

    def stat(self, key: str) -> ObjectInfo | None:
        return self.inner.stat(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    @property
    def supports_object_lock(self) -> bool:
        return self.inner.supports_object_lock
