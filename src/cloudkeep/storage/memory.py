"""In-process object store (``memory://name``) for fast tests of the layers above storage.

Stores opened with the same name share their objects, like two clients of one bucket. Retention
(``retain_until``) is enforced, so the repository's immutability rules can be tested without a peer;
by the bucket's own clock, which a test sets (as S3 judges a lock by its own time, not the client's).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlparse

from cloudkeep.compat import UTC
from cloudkeep.storage.base import (
    ObjectExistsError,
    ObjectInfo,
    ObjectLockedError,
    ObjectNotFoundError,
    ObjectStore,
)


@dataclass
class _Stored:
    data: bytes
    modified: datetime
    retain_until: datetime | None


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class _Bucket:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.clock: Callable[[], datetime] = _wall_clock  # when objects are written and locks end
        self.objects: dict[str, _Stored] = {}
        # Like an S3 bucket with Object Lock default retention: every new object is locked this long,
        # and (versioning) an overwrite or hide keeps the locked older version in ``hidden``.
        self.default_retention: timedelta | None = None
        self.hidden: list[tuple[str, _Stored]] = []


_BUCKETS: dict[str, _Bucket] = {}
_BUCKETS_LOCK = threading.Lock()


class MemoryStore(ObjectStore):
    """Objects in a dict guarded by a lock; shared by name within the process."""

    scheme: ClassVar[str] = "memory"

    def __init__(self, name: str = "default", *, clock: Callable[[], datetime] | None = None) -> None:
        """``clock``: the bucket's time from now on, for every store of that name (tests)."""
        self.name = name
        with _BUCKETS_LOCK:
            self._bucket = _BUCKETS.setdefault(name, _Bucket())
            if clock is not None:
                self._bucket.clock = clock

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MemoryStore:
        parsed = urlparse(url)
        return cls((parsed.netloc + parsed.path).strip("/") or "default")

    @classmethod
    def forget(cls, name: str) -> None:
        """Drop a named store's contents (test clean-up)."""
        with _BUCKETS_LOCK:
            _BUCKETS.pop(name, None)

    @property
    def supports_object_lock(self) -> bool:
        return True

    def _set_retention(self, key: str, until: datetime) -> None:
        with self._bucket.lock:
            stored = self._bucket.objects.get(key)
            if stored is None:  # deleted since extend_retention looked
                raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist")
            stored.retain_until = until

    @property
    def supports_default_retention(self) -> bool:
        return True

    def set_default_retention(self, days: int) -> None:
        with self._bucket.lock:
            self._bucket.default_retention = timedelta(days=days)

    def delete_or_hide(self, key: str) -> None:
        try:
            self.delete(key)
        except ObjectLockedError:
            if self._bucket.default_retention is None:  # not versioned: the lock refuses
                raise
            self.hide(key)

    def hide(self, key: str) -> None:
        if self._bucket.default_retention is None:  # not versioned: a plain delete
            self.delete(key)
            return
        with self._bucket.lock:
            stored = self._bucket.objects.pop(key, None)
            if stored is not None:
                self._bucket.hidden.append((key, stored))

    def describe(self) -> str:
        return f"memory://{self.name}"

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        now = self._bucket.clock()
        with self._bucket.lock:
            current = self._bucket.objects.get(key)
            if if_absent and current is not None:
                raise ObjectExistsError(f"{self.describe()}/{key} already exists")
            default = self._bucket.default_retention
            if current is not None and current.retain_until and current.retain_until > now:
                if default is None:
                    raise ObjectLockedError(
                        f"{self.describe()}/{key} is retained until {current.retain_until:%Y-%m-%d %H:%M}"
                    )
                self._bucket.hidden.append((key, current))  # versioned: the locked version stays
            if retain_until is None and default is not None:
                retain_until = now + default
            self._bucket.objects[key] = _Stored(bytes(data), now, retain_until)

    def _get(self, key: str) -> _Stored:
        with self._bucket.lock:
            stored = self._bucket.objects.get(key)
        if stored is None:
            raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist")
        return stored

    def get(self, key: str) -> bytes:
        return self._get(key).data

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        return self._get(key).data[offset : offset + length]

    def stat(self, key: str) -> ObjectInfo | None:
        with self._bucket.lock:
            stored = self._bucket.objects.get(key)
        if stored is None:
            return None
        return ObjectInfo(key, len(stored.data), stored.modified, None, stored.retain_until)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._bucket.lock:
            items = sorted((k, v) for k, v in self._bucket.objects.items() if k.startswith(prefix))
        for key, stored in items:
            yield ObjectInfo(key, len(stored.data), stored.modified, None, stored.retain_until)

    def delete(self, key: str) -> None:
        with self._bucket.lock:
            stored = self._bucket.objects.get(key)
            if stored is None:
                return
            if stored.retain_until and stored.retain_until > self._bucket.clock():
                raise ObjectLockedError(
                    f"{self.describe()}/{key} is retained until {stored.retain_until:%Y-%m-%d %H:%M}",
                    hint="objects under retention can be deleted only after that date",
                )
            del self._bucket.objects[key]
