"""Azure Blob Storage backend (``azure://container/optional/prefix``).

Large objects are uploaded as staged blocks by the SDK (``max_single_put_size``); create-only
writes use ``If-None-Match: *``.

Immutability follows the container's settings, read from its properties on first need
(``immutability=None``, the default):

- *version-level immutability* enabled: each blob written with ``retain_until`` gets a locked
  time-based immutability policy that Azure itself enforces (no SAS, not even the account key,
  can delete or overwrite it before then); extending sets a longer policy;
- a *container-level WORM* policy: Azure protects every blob for the container's retention
  period; ``retain_until`` is recorded in metadata for reporting only;
- neither (and Azurite, which has no immutability): ``retain_until`` is a *stand-in* kept in the
  blob's metadata, which this backend honours but anyone holding a SAS with write/delete can
  change. ``lock_is_enforced`` tells which.

``immutability`` may also name the mode (``version-level``, ``container``, ``""``): the server
reads the container's settings and passes the mode to agents, whose container SAS cannot read
container properties. ``True`` / ``False`` force version-level policies or the stand-in.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any, BinaryIO, ClassVar, NoReturn
from urllib.parse import urlparse

from cloudkeep.compat import UTC
from cloudkeep.errors import ConfigurationError, PermissionDeniedError
from cloudkeep.providers.azure.errors import raise_store_error
from cloudkeep.storage.base import (
    ObjectInfo,
    ObjectLockedError,
    ObjectStore,
    RangeStream,
)

_RETAIN_KEY = "retain_until"
_MODES = ("version-level", "container", "")


class AzureBlobStore(ObjectStore):
    """One container plus an optional blob-name prefix."""

    scheme: ClassVar[str] = "azure"
    remote: ClassVar[bool] = True

    def __init__(
        self,
        container: str,
        prefix: str = "",
        *,
        connection_string: str | None = None,
        account_url: str | None = None,
        credential: Any = None,
        immutability: bool | str | None = None,
        max_single_put_size: int = 64 * 2**20,
        max_block_size: int = 8 * 2**20,
        max_get_size: int = 8 * 2**20,
        max_concurrency: int = 4,
        retry_total: int = 5,
        connection_timeout: float = 10.0,
        connection_verify: bool | str = True,
        list_page_size: int | None = None,
    ) -> None:
        if not container:
            raise ConfigurationError("Azure URL needs a container: azure://container/optional/prefix")
        from azure.storage.blob import BlobServiceClient  # on first use: the SDK is large

        options: dict[str, Any] = {
            "max_single_put_size": max_single_put_size,
            "max_block_size": max_block_size,
            # Downloads come in pieces of this size (the SDK's default first piece is 32 MiB, a
            # whole pack): a streamed restore then holds one piece, not the pack.
            "max_single_get_size": max_get_size,
            "max_chunk_get_size": max_get_size,
            "retry_total": retry_total,
            "connection_timeout": connection_timeout,
            "connection_verify": connection_verify,  # False, or a CA bundle path for a private CA
        }
        if connection_string:
            service = BlobServiceClient.from_connection_string(connection_string, **options)
        elif account_url:
            service = BlobServiceClient(account_url, credential=credential, **options)
        else:
            raise ConfigurationError(
                "Azure storage needs connection_string, or account_url + credential",
                hint="the credential is an account key or a SAS token string",
            )
        self.container_name = container
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if immutability not in (True, False, None, *_MODES):
            raise ConfigurationError(f"immutability must be one of {', '.join(_MODES)}, not {immutability!r}")
        self._immutability: str | None = (
            "version-level" if immutability is True else "" if immutability is False else immutability
        )
        self.max_concurrency = max_concurrency
        self.list_page_size = list_page_size  # None: the service's default page (5000 blobs)
        self.container = service.get_container_client(container)
        self._service = service

    @classmethod
    def from_url(cls, url: str, **options: Any) -> AzureBlobStore:
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, **options)

    def describe(self) -> str:
        return f"azure://{self.container_name}/{self.prefix}".rstrip("/")

    @property
    def immutability(self) -> bool:
        """Blobs get real, Azure-enforced time-based immutability policies (version-level)."""
        return self.immutability_mode == "version-level"

    @property
    def immutability_mode(self) -> str:
        """``version-level``, ``container`` (WORM policy on the container) or ``""`` (stand-in)."""
        if self._immutability is None:
            try:
                props = self.container.get_container_properties()
            except Exception as exc:
                try:
                    self._raise(exc, "Microsoft.Storage/containers/read")
                except PermissionDeniedError as denied:  # a container SAS cannot read them
                    raise PermissionDeniedError(
                        f"{self.describe()}: cannot read the container's immutability settings "
                        f"({denied.message})",
                        hint="open the store with immutability=<version-level|container|''> (the server "
                        "passes it to agents) or with a credential that may read container properties",
                    ) from exc
            if getattr(props, "immutable_storage_with_versioning_enabled", False):
                self._immutability = "version-level"
            elif getattr(props, "has_immutability_policy", False):
                self._immutability = "container"
            else:
                self._immutability = ""
        return self._immutability

    @property
    def lock_is_enforced(self) -> bool:
        """Azure itself enforces retention (not only this backend's metadata stand-in)."""
        return self.immutability_mode != ""

    @property
    def supports_object_lock(self) -> bool:
        return True

    @property
    def server_locks_new_objects(self) -> bool:
        """Version-level immutability: the server sets each new blob's policy itself (data plane,
        its own credential), since a container's default policy is management-plane only."""
        return self.immutability

    def _raise(self, exc: Exception, action: str, key: str = "") -> NoReturn:
        where = f"container {self.container_name}" + (f", blob {self.prefix}{key}" if key else "")
        raise_store_error(exc, action, store=self.describe(), where=where)

    def _retained(self, key: str) -> datetime | None:
        info = self.stat(key)
        if info is not None and info.retain_until is not None and info.retain_until > datetime.now(UTC):
            return info.retain_until
        return None

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        if not isinstance(data, bytes):  # the SDK treats a bytearray as an iterable of chunks
            data = bytes(data)
        self._upload(key, data, len(data), if_absent=if_absent, retain_until=retain_until)

    def put_file(
        self,
        key: str,
        path: str,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
        md5: bytes | None = None,
    ) -> None:
        """The SDK reads the staging file block by block (staged blocks above ``max_single_put_size``)."""
        try:
            with open(path, "rb") as fh:
                self._upload(
                    key, fh, os.fstat(fh.fileno()).st_size, if_absent=if_absent, retain_until=retain_until
                )
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _upload(
        self, key: str, body: bytes | BinaryIO, length: int, *, if_absent: bool, retain_until: datetime | None
    ) -> None:
        blob = self.container.get_blob_client(self.prefix + key)
        kwargs: dict[str, Any] = {"overwrite": not if_absent, "max_concurrency": self.max_concurrency}
        if if_absent:
            kwargs["if_none_match"] = "*"
        elif (until := self._retained(key)) is not None:
            raise ObjectLockedError(f"{self.describe()}/{key} is retained until {until:%Y-%m-%d %H:%M}")
        if retain_until is not None:
            if self.immutability:
                from azure.storage.blob import ImmutabilityPolicy

                kwargs["immutability_policy"] = ImmutabilityPolicy(
                    expiry_time=retain_until.astimezone(UTC), policy_mode="Locked"
                )
            else:
                kwargs["metadata"] = {_RETAIN_KEY: retain_until.astimezone(UTC).isoformat()}
        try:
            blob.upload_blob(body, length=length, **kwargs)
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/write", key)

    def get(self, key: str) -> bytes:
        try:
            return self.container.download_blob(
                self.prefix + key, max_concurrency=self.max_concurrency
            ).readall()
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read", key)

    def _range_downloader(self, key: str, offset: int, length: int) -> Any:
        """A downloader for the range clipped to the blob, or ``None`` when nothing is in it."""
        if length <= 0:
            return None
        try:
            size = self.container.get_blob_client(self.prefix + key).get_blob_properties().size
            if offset >= size:
                return None
            return self.container.download_blob(
                self.prefix + key, offset=offset, length=min(length, size - offset)
            )
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        downloader = self._range_downloader(key, offset, length)
        if downloader is None:
            return b""
        try:
            return bytes(downloader.readall())
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read", key)

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[RangeStream]:
        downloader = self._range_downloader(key, offset, length)
        yield _AzureRange(self, key, downloader) if downloader is not None else io.BytesIO()

    def stat(self, key: str) -> ObjectInfo | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            props = self.container.get_blob_client(self.prefix + key).get_blob_properties()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) == "ContainerNotFound":
                self._raise(exc, "Microsoft.Storage/blobs/read", key)
            return None
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read", key)
        return ObjectInfo(key, props.size, props.last_modified, props.etag, _retain_from(props))

    def _set_retention(self, key: str, until: datetime) -> None:
        blob = self.container.get_blob_client(self.prefix + key)
        try:
            if self.immutability:  # metadata of a locked blob cannot change: the policy is the record
                from azure.storage.blob import ImmutabilityPolicy

                policy = ImmutabilityPolicy(expiry_time=until.astimezone(UTC), policy_mode="Locked")
                blob.set_immutability_policy(policy)
            elif self.immutability_mode == "":
                blob.set_blob_metadata({_RETAIN_KEY: until.astimezone(UTC).isoformat()})
            # a container WORM policy protects every blob for its own period: nothing per blob
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/immutabilityPolicies/write", key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        try:
            for item in self.container.list_blobs(
                name_starts_with=self.prefix + prefix,
                results_per_page=self.list_page_size,
                # Only where the mode is already known: listing must not need container properties.
                include=["metadata", "immutabilitypolicy"] if self._immutability else ["metadata"],
            ):
                yield ObjectInfo(
                    item.name[len(self.prefix) :],
                    item.size,
                    item.last_modified,
                    item.etag,
                    _retain_from(item),
                )
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read (list)", prefix)

    def list_folders(self, prefix: str) -> tuple[str, ...]:
        found: set[str] = set()
        try:
            for item in self.container.walk_blobs(name_starts_with=self.prefix + prefix, delimiter="/"):
                if item.name.endswith("/"):  # a BlobPrefix
                    found.add(item.name[len(self.prefix) :])
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/read (list)", prefix)
        return tuple(sorted(found))

    def delete(self, key: str) -> None:
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        if (until := self._retained(key)) is not None:
            raise ObjectLockedError(
                f"{self.describe()}/{key} is retained until {until:%Y-%m-%d %H:%M}",
                hint="objects under retention can be deleted only after that date",
            )
        try:
            self.container.delete_blob(self.prefix + key)
        except ResourceNotFoundError:
            return
        except HttpResponseError as exc:
            if exc.status_code == 409 and self._immutability:
                raise ObjectLockedError(
                    f"{self.describe()}/{key}: delete refused (immutability policy)"
                ) from exc
            self._raise(exc, "Microsoft.Storage/blobs/delete", key)
        except Exception as exc:
            self._raise(exc, "Microsoft.Storage/blobs/delete", key)

    def close(self) -> None:
        self._service.close()


def _retain_from(props: Any) -> datetime | None:
    """A real immutability policy's expiry, else the stand-in date in the metadata."""
    policy = getattr(props, "immutability_policy", None)
    if policy is not None and policy.expiry_time is not None:
        expiry: datetime = policy.expiry_time
        return expiry if expiry.tzinfo else expiry.replace(tzinfo=UTC)
    value = (getattr(props, "metadata", None) or {}).get(_RETAIN_KEY)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


class _AzureRange:
    """A download read piece by piece as the caller consumes it; errors become cloudkeep errors."""

    def __init__(self, store: AzureBlobStore, key: str, downloader: Any) -> None:
        self.store, self.key, self.downloader = store, key, downloader

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            data = self.downloader.read(len(buffer))
        except Exception as exc:
            self.store._raise(exc, "Microsoft.Storage/blobs/read", self.key)
        buffer[: len(data)] = data
        return len(data)
