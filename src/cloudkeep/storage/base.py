"""The one interface every storage backend implements.

The repository format (``cloudkeep.repo``) only ever talks to an ``ObjectStore``; it never
knows whether bytes live in a folder, an S3 bucket or an Azure container. Backends are
registered by URL scheme (``file``, ``s3``, ``azure``, ``memory``) and opened with
``open_store(url, **options)``.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pkgutil import resolve_name
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlparse

from cloudkeep.errors import (
    CloudkeepError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    NotSupportedError,
    PermissionDeniedError,
    RepositoryWriteError,
)
from cloudkeep.storage.backends import KNOWN_BACKENDS

if TYPE_CHECKING:
    from cloudkeep.storage.conformance import StoreCheck


class RangeStream(Protocol):
    """What ``ObjectStore.open_range`` yields (an open file is one too): ``readinto`` returns 0
    (or ``None``) at the end."""

    def readinto(self, buffer: memoryview, /) -> int | None: ...


def read_exactly(stream: RangeStream, view: memoryview) -> memoryview:
    """Fill ``view`` from the stream; shorter only where the stream ends (end of file or range)."""
    filled = 0
    while filled < len(view):
        n = stream.readinto(view[filled:])
        if not n:
            break
        filled += n
    return view[:filled]


STAGING_PREFIX = ".ck-tmp-"  # temporary files (staged packs, half-written objects); never listed as objects


class ObjectNotFoundError(NotFoundError):
    """The key does not exist."""


class ObjectExistsError(ConflictError):
    """A create-only write (``if_absent=True``) lost: the key already exists."""


class ObjectLockedError(PermissionDeniedError):
    """The object is under retention (Object Lock / immutability) and cannot be deleted yet."""


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None
    etag: str | None = None
    retain_until: datetime | None = None


class ObjectStore(ABC):
    """Keys are ``/``-separated relative paths under the store's root (bucket + optional prefix)."""

    scheme: ClassVar[str]
    # Each request costs latency and money (a cloud store): readers fetch a pack's needed blobs
    # in one request, with few threads, rather than in many small reads.
    remote: ClassVar[bool] = False
    list_page_size: int | None = None  # keys per listing request where the store pages them

    @abstractmethod
    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        """Store ``data`` durably; visible to readers only once complete.

        ``if_absent`` makes the write create-only (S3 ``If-None-Match: *``); ``retain_until`` puts the
        object under retention where the backend supports object lock.
        """

    def upload_md5(self, locked: bool, size: int) -> bool:
        """Whether ``put_file`` sends the MD5 of a file of about ``size`` bytes whole (the store
        checks the upload by it), under retention if ``locked``: a pack's writer then computes it
        while staging the pack, which spares reading and hashing the file again (``md5=``)."""
        return False

    def put_file(
        self,
        key: str,
        path: str,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
        md5: bytes | None = None,
    ) -> None:
        """Store a finished staging file (a pack) under ``key``; it is consumed when this succeeds.

        Packs are staged on disk rather than in memory so RAM stays flat whatever the pack size.
        This default reads the file whole; backends override it to stream parts from the file or,
        for a local folder, to rename it into place. ``if_absent`` as for ``put``; ``md5``: the
        file's MD5 digest as its writer computed it (see ``upload_md5``), else computed if needed.
        """
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            self.put(key, data, if_absent=if_absent, retain_until=retain_until)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    @property
    def staging_dir(self) -> str | None:
        """Where writers stage packs before ``put_file``: ``None`` is the system temporary folder."""
        return None

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, offset: int, length: int) -> bytes: ...

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[RangeStream]:
        """``length`` bytes from ``offset`` (fewer at the object's end) as a stream read on demand.

        A restore takes a pack's blobs one after another from one request, holding one blob at a
        time rather than the whole range. This default holds the range in memory; backends
        stream it.
        """
        yield io.BytesIO(self.get_range(key, offset, length))

    @abstractmethod
    def stat(self, key: str) -> ObjectInfo | None:
        """Return the object's info, or ``None`` if it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """All objects whose key starts with ``prefix``, paginating as needed."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete; raises ``ObjectLockedError`` under retention, ignores a missing key."""

    def hide(self, key: str) -> None:
        """Make ``key`` unreadable and unlisted even if it is locked: a versioned store (S3 with
        Object Lock) adds a delete marker and the locked version stays until its lock ends; other
        stores delete. For markers (sessions) written under a default retention."""
        self.delete(key)

    def delete_or_hide(self, key: str) -> None:
        """Delete a marker or a replaced index file; one locked on a versioned store (everything
        is, under a default retention) is hidden instead, its locked version kept until the lock
        ends. Not for packs or manifests: their locks must keep them."""
        self.delete(key)

    @property
    def supports_object_lock(self) -> bool:
        return False

    def extend_retention(self, key: str, until: datetime, *, known_shorter: bool = False) -> bool:
        """Keep ``key`` locked until at least ``until``: a shorter retention is extended, a longer
        one left alone (retention never shortens). ``False`` when this store has no object lock.

        A locked backup reuses chunks stored by earlier backups; without this, their packs could
        be deleted when their own (shorter) retention ends, while the new restore point needs them.
        ``known_shorter``: the caller knows the current lock ends before ``until`` (the server's
        bulk extension by generations), so the HEAD is skipped.
        """
        if not self.supports_object_lock:
            return False
        if known_shorter:
            self._set_retention(key, until)
            return True
        info = self.stat(key)
        if info is None:
            raise ObjectNotFoundError(f"{self.describe()}/{key} does not exist")
        if info.retain_until is None or info.retain_until < until:
            self._set_retention(key, until)
        return True

    @property
    def supports_default_retention(self) -> bool:
        """``set_default_retention`` works here (immutability by generations)."""
        return False

    @property
    def server_locks_new_objects(self) -> bool:
        """No default retention the server can set, but objects can be locked one by one with the
        server's credential (Azure version-level immutability): under immutability by generations
        the server locks what writers wrote soon after (``generations.lock_new_objects``)."""
        return False

    def set_default_retention(self, days: int) -> None:
        """Lock every object written from now on for ``days`` without the writer asking (S3 bucket
        default retention): writers then need no permission to set locks. Server credential only."""
        raise ConfigurationError(
            f"{self.describe()} has no default retention", hint="immutability needs S3 Object Lock or Azure"
        )

    def _set_retention(self, key: str, until: datetime) -> None:
        """Lock ``key`` until ``until`` (only called to lengthen); stores with object lock implement it."""
        raise NotImplementedError(f"{type(self).__name__} has no object lock")

    def exists(self, key: str) -> bool:
        return self.stat(key) is not None

    def list_folders(self, prefix: str) -> tuple[str, ...]:
        """The distinct ``prefix + name + "/"`` one level below ``prefix`` (a delimiter listing).

        Lets the repository find its writers' namespaces without listing their packs. This
        default walks every key; backends override it with a native delimiter listing.
        """
        found: set[str] = set()
        for info in self.list(prefix):
            rest = info.key[len(prefix) :]
            if "/" in rest:
                found.add(prefix + rest.split("/", 1)[0] + "/")
        return tuple(sorted(found))

    def compatibility_checks(self, prefix: str) -> builtins.list[StoreCheck]:
        """Checks of this backend's own features (multipart, object lock, checksum framing) that
        ``cloudkeep repository verify`` runs after the generic ones; writes only under ``prefix``."""
        return []

    def describe(self) -> str:
        """A human-readable location for messages (``s3://bucket/prefix``)."""
        return f"{self.scheme}://"

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""


def as_write_error(store: ObjectStore, exc: BaseException) -> BaseException:
    """``exc`` as the ``RepositoryWriteError`` it is when it ended a write to ``store``; ``exc``
    itself when it is not a refused write (a lost create-only race, an expired session, a bug).

    Raw ``OSError`` counts too: a backup must never mistake a failed write for a source file it
    could not read and carry on without it.
    """
    if isinstance(exc, RepositoryWriteError):
        return exc
    if isinstance(exc, ConflictError) or (
        isinstance(exc, ConfigurationError) and not isinstance(exc, NotSupportedError)
    ):
        return exc
    where = store.describe()
    if isinstance(exc, CloudkeepError):
        reason, hint = exc.message, exc.hint
    elif isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0)
        reason = f"{exc.strerror or exc} ({name})" if name else str(exc)
        hint = None
    else:
        return exc
    for own in (where.rstrip("/") + "/", where + ": "):  # the reason often starts with the location
        if reason.startswith(own):
            reason = reason[len(own) :]
            break
    error = RepositoryWriteError.refused(where, reason, hint=hint)
    error.__cause__ = exc
    return error


@contextlib.contextmanager
def store_writes(store: ObjectStore) -> Iterator[None]:
    """Writes to ``store`` inside: one it refuses raises ``RepositoryWriteError`` (``as_write_error``)."""
    try:
        yield
    except Exception as exc:
        error = as_write_error(store, exc)
        if error is exc:
            raise
        raise error from exc


_BACKENDS: dict[str, Callable[..., ObjectStore]] = {}


def register_backend(scheme: str) -> Callable[[type[ObjectStore]], type[ObjectStore]]:
    """Class decorator: make ``open_store("<scheme>://…")`` build this backend via ``from_url``."""

    def decorate(cls: type[ObjectStore]) -> type[ObjectStore]:
        _BACKENDS[scheme] = cls.from_url  # type: ignore[attr-defined]
        return cls

    return decorate


def open_store(url: str, **options: Any) -> ObjectStore:
    """Open the backend named by ``url``'s scheme; options are backend-specific (endpoint, credentials)."""
    scheme = urlparse(url).scheme or "file"
    factory = _BACKENDS.get(scheme)
    if factory is None and scheme in KNOWN_BACKENDS:  # imported on first use (its SDK with it)
        factory = resolve_name(KNOWN_BACKENDS[scheme]).from_url
    if factory is None:
        known = ", ".join(sorted({*_BACKENDS, *KNOWN_BACKENDS}))
        raise ConfigurationError(f"unknown storage scheme {scheme!r} in {url!r}", hint=f"use one of: {known}")
    return factory(url, **options)
