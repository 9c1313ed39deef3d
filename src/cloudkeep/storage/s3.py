"""Amazon S3 backend (``s3://bucket/optional/prefix``), also used against moto and S3-compatible stores.

Big objects go up as multipart uploads; throttling and 5xx are retried by botocore's adaptive
retry mode with backoff. Create-only writes use ``If-None-Match: *``. Retention uses Object Lock
(the bucket must have been created with it); it is read back from ``head_object`` because some
S3 implementations (moto) lack ``get_object_retention``.

Every upload is checked against what the store says it holds, at no extra request where the
store echoes a checksum or an MD5 ETag (a HEAD for the size otherwise): a store that kept
aws-chunked framing as data fails the backup instead of leaving a damaged object behind.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import io
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import datetime
from typing import Any, ClassVar, NoReturn, cast
from urllib.parse import urlparse

from botocore.exceptions import ClientError, ResponseStreamingError

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers.aws.errors import (
    NO_LOCK_CODES,
    OBJECT_DENIED_CODES,
    OBJECT_NOT_FOUND_CODES,
    error_code,
    is_not_implemented,
    raise_store_error,
)
from cloudkeep.storage.base import (
    ObjectInfo,
    ObjectLockedError,
    ObjectStore,
    RangeStream,
)
from cloudkeep.storage.conformance import StoreCheck
from cloudkeep.storage.s3_compat import checksum_settings, config_args
from cloudkeep.storage.s3_upload import body_md5, file_md5, put_multipart, verify_stored

_LOADERS: dict[str, Any] = {}
_LOADERS_LOCK = threading.Lock()


# Services a store's session knows (entries of the endpoints file, models it may load): S3, and
# what botocore's credential chain may create a client for (role, web identity, SSO, console sign-in).
ENDPOINT_SERVICES = frozenset({"s3", "sts", "sso", "sso-oidc", "signin"})


def shared_loader(session: Any) -> Any:
    """One botocore data loader per process (per data path): a new session would read and parse
    the S3 model, endpoint rules and partitions again (most of a client's construction). The
    loader only caches those read-only files; credentials, config and events stay per session.

    Of the endpoints file it keeps each partition but only the entries of ``ENDPOINT_SERVICES``:
    the other ~400 services' entries were 6.9 MiB of parsed JSON, more than half of what an S3
    client holds, in every process that opens a store (bench/README.md, stop 30)."""
    data_path = session.get_config_variable("data_path") or ""
    with _LOADERS_LOCK:
        if data_path not in _LOADERS:
            _LOADERS[data_path] = _store_loader(data_path)
        return _LOADERS[data_path]


def _store_loader(data_path: str) -> Any:
    """botocore's ``create_loader(data_path)``, with a file loader that parses models into plain
    dicts with their documentation emptied and trims the endpoints file, and a service listing that
    knows ``ENDPOINT_SERVICES`` only."""
    from botocore.exceptions import DataNotFoundError
    from botocore.loaders import JSONFileLoader, Loader, instance_cache

    class TrimmingFileLoader(JSONFileLoader):
        def load_file(self, file_path: str) -> Any:
            data = _parse_model(file_path)
            if data is None:  # a file botocore stores some other way: its own parse
                data = super().load_file(file_path)
            if data is not None and os.path.basename(file_path) == "endpoints":
                data = store_endpoints(data)
            return data

    class StoreLoader(Loader):
        @instance_cache
        def list_available_services(self, type_name: str) -> list[str]:
            """Of ``ENDPOINT_SERVICES``, those with ``type_name`` data. botocore's own lists every
            folder of its data (~400 services, ~900 folder reads per model type): a client's
            slowest start-up step when the page cache is cold (bench/README.md, stop 46)."""
            found = []
            for name in sorted(ENDPOINT_SERVICES):
                with contextlib.suppress(DataNotFoundError):
                    self.list_api_versions(name, type_name)
                    found.append(name)
            return found

    paths = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep) if p]
    return StoreLoader(extra_search_paths=paths or None, file_loader=TrimmingFileLoader())


def _parse_model(file_path: str) -> Any:
    """A botocore data file (``file_path`` without its extension, as botocore stores them) parsed
    into plain dicts, each ``documentation`` text emptied; None when there is no such file.

    botocore parses every object into an ``OrderedDict`` (a plain dict keeps its order too) and
    keeps the model's documentation, text for its docs builder (a client reads a few of the keys,
    so they stay, empty): the S3 model held 3.3 MiB
    parsed, 1.2 this way, and its endpoint rules 1.3 MiB, 0.8 (a store's client holds both for
    the process's life; the endpoints file, 6.7 MiB parsed before trimming, is 3.9 at its peak)."""
    for extension, opener in ((".json", open), (".json.gz", gzip.open)):
        path = file_path + extension
        if os.path.isfile(path):
            with opener(path, "rb") as fh:
                return json.loads(fh.read().decode("utf-8"), object_pairs_hook=_without_documentation)
    return None


def _without_documentation(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's pairs, its documentation text emptied (the key stays: botocore reads some)."""
    return {key: "" if key == "documentation" and isinstance(value, str) else value for key, value in pairs}


def store_endpoints(data: Any) -> Any:
    """botocore's endpoints data with each partition's services cut to ``ENDPOINT_SERVICES``."""
    partitions = data.get("partitions") if isinstance(data, dict) else None
    if not isinstance(partitions, list):
        return data  # not the layout this knows: left whole
    trimmed = []
    for partition in partitions:
        services = partition.get("services") if isinstance(partition, dict) else None
        if isinstance(services, dict):
            kept = {name: entry for name, entry in services.items() if name in ENDPOINT_SERVICES}
            partition = {**partition, "services": kept}
        trimmed.append(partition)
    return {**data, "partitions": trimmed}


def _botocore_session(
    *,
    checksums: dict[str, str],
    credentials: tuple[str | None, str | None, str | None],
    max_attempts: int,
    connect_timeout: float,
    read_timeout: float,
    max_pool_connections: int,
) -> tuple[Any, Any]:
    """A botocore session (the process's shared loader, the store's credentials) and client config.

    botocore alone: boto3's session adds imports and handlers this store never uses (resources,
    transfer methods): ~15 % of a client's start-up CPU."""
    import botocore.session
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": max_attempts, "mode": "adaptive"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        **config_args(checksums),  # type: ignore[arg-type]
    )
    session = botocore.session.Session()
    session.register_component("data_loader", shared_loader(session))
    key_id, secret, token = credentials
    if key_id or secret:  # else botocore's chain: env, profile, role
        session.set_credentials(key_id or "", secret or "", token)
    return session, config


def _unsigned_body_when_md5(client: Any) -> None:
    """Over plain HTTP (an S3-compatible store on a LAN, the emulator) botocore signs every upload
    with the SHA-256 of its body: a second pass over each pack beside its MD5, ~0.5 s of a core per
    360 MiB here. An upload that carries Content-MD5 is signed ``UNSIGNED-PAYLOAD`` instead, as
    botocore does over HTTPS: the MD5 is a signed header and the store refuses a body that does not
    match it, so a body signature adds nothing (and every pack is authenticated by its own seal)."""
    if not str(client.meta.endpoint_url).startswith("http:"):
        return
    from botocore.config import Config

    config = client.meta.config
    unsigned = config.merge(Config(s3={**(config.s3 or {}), "payload_signing_enabled": False}))

    def checked(request: Any, **_: Any) -> None:
        if "Content-MD5" in request.headers:
            request.context["client_config"] = unsigned  # what botocore's S3 signer reads the setting from

    for operation in ("PutObject", "UploadPart"):
        client.meta.events.register(f"before-sign.s3.{operation}", checked)


class S3Store(ObjectStore):
    """One bucket plus an optional key prefix."""

    scheme: ClassVar[str] = "s3"
    remote: ClassVar[bool] = True

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        aws_access_key_id: str | None = None,
        aws_secret_access_key: str | None = None,
        aws_session_token: str | None = None,
        multipart_threshold: int = 64 * 2**20,
        multipart_chunk: int = 8 * 2**20,
        multipart_concurrency: int = 4,
        object_lock_mode: str = "COMPLIANCE",
        max_attempts: int = 8,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        max_pool_connections: int = 16,
        request_checksum_calculation: str | None = None,
        response_checksum_validation: str | None = None,
        verify: bool | str | None = None,
        list_page_size: int = 1000,
    ) -> None:
        if not bucket:
            raise ConfigurationError("S3 URL needs a bucket: s3://bucket/optional/prefix")
        if multipart_chunk < 5 * 2**20:
            raise ConfigurationError("multipart_chunk must be at least 5 MiB (S3's minimum part size)")
        if object_lock_mode not in ("COMPLIANCE", "GOVERNANCE"):
            raise ConfigurationError(
                f"object_lock_mode must be COMPLIANCE or GOVERNANCE, not {object_lock_mode!r}"
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.multipart_threshold = max(multipart_threshold, multipart_chunk)
        self.multipart_chunk = multipart_chunk
        self.multipart_concurrency = multipart_concurrency
        self.object_lock_mode = object_lock_mode
        checksums = checksum_settings(
            endpoint_url, request_checksum_calculation, response_checksum_validation
        )
        # Without botocore's flexible checksums, cloudkeep sends Content-MD5 itself: the store
        # checks the body, its ETag echoes it, and Object Lock PUTs carry the checksum they need.
        self.send_md5 = checksums["request_checksum_calculation"] == "when_required"
        self.endpoint_url = endpoint_url
        self.list_page_size = self._page_size = list_page_size
        self._verify, self._region = verify, region
        # botocore is set up on a thread of its own: importing it and parsing its models for the
        # first client of a process take ~0.25 s, which a repository's open overlaps with its key
        # derivation (bench/README.md, stop 29, "No-change rerun on S3"): none of it on this thread.
        self._botocore: Future[tuple[Any, Any]] = Future()  # (session, client config)
        self._client: Future[Any] = Future()
        setup = {
            "checksums": checksums,
            "credentials": (aws_access_key_id, aws_secret_access_key, aws_session_token),
            "max_attempts": max_attempts,
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "max_pool_connections": max_pool_connections,
        }
        threading.Thread(target=self._build_client, args=(setup,), name="s3-client", daemon=True).start()
        self._lock_enabled: bool | None = None
        self._lock_probe = threading.Lock()

    def _build_client(self, setup: dict[str, Any]) -> None:
        try:
            self._botocore.set_result(_botocore_session(**setup))
            self._client.set_result(self.client_with())
        except BaseException as exc:  # raised where the client is first used
            if not self._botocore.done():
                self._botocore.set_exception(exc)
            self._client.set_exception(exc)

    @property
    def session(self) -> Any:
        """The botocore session behind the client (waits for its setup)."""
        return self._botocore.result()[0]

    @property
    def client(self) -> Any:
        """The botocore S3 client (waits for its construction)."""
        return self._client.result()

    def client_with(self, **config: str) -> Any:
        """A client for this store; with some botocore settings changed (for checks) if given."""
        from botocore.config import Config

        session, base = self._botocore.result()
        merged = base.merge(Config(**config_args(config))) if config else base  # type: ignore[arg-type]
        client = session.create_client(
            "s3", region_name=self._region, endpoint_url=self.endpoint_url, config=merged, verify=self._verify
        )
        _unsigned_body_when_md5(client)
        return client

    def compatibility_checks(self, prefix: str) -> list[StoreCheck]:
        from cloudkeep.storage.s3_checks import s3_checks

        return s3_checks(self, prefix)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Store:
        parsed = urlparse(url)
        return cls(parsed.netloc, parsed.path, **options)

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    # -- errors ----------------------------------------------------------------------------

    def _raise(self, exc: Exception, action: str, key: str = "") -> NoReturn:
        where = f"bucket {self.bucket}" + (f", key {self.prefix}{key}" if key else "")
        raise_store_error(exc, action, store=self.describe(), bucket=self.bucket, where=where)

    # -- object lock -----------------------------------------------------------------------

    @property
    def supports_object_lock(self) -> bool:
        with self._lock_probe:
            if self._lock_enabled is None:
                try:
                    conf = self.client.get_object_lock_configuration(Bucket=self.bucket)
                    self._lock_enabled = (
                        conf.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
                    )
                except ClientError as exc:
                    if error_code(exc) not in NO_LOCK_CODES and not is_not_implemented(exc):
                        self._raise(exc, "s3:GetBucketObjectLockConfiguration")
                    self._lock_enabled = False
                except Exception as exc:
                    self._raise(exc, "s3:GetBucketObjectLockConfiguration")
            return self._lock_enabled

    def _lock_args(self, retain_until: datetime | None) -> dict[str, Any]:
        if retain_until is None or not self.supports_object_lock:
            return {}
        return {"ObjectLockMode": self.object_lock_mode, "ObjectLockRetainUntilDate": retain_until}

    # -- interface -------------------------------------------------------------------------

    def put(
        self, key: str, data: bytes, *, if_absent: bool = False, retain_until: datetime | None = None
    ) -> None:
        extra = self._lock_args(retain_until)
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if len(data) > self.multipart_threshold:
            view = memoryview(data)
            put_multipart(self, key, len(data), lambda start, n: bytes(view[start : start + n]), extra)
            return
        body = data if isinstance(data, bytes) else bytes(data)
        md5 = body_md5(self, body, bool(extra.get("ObjectLockMode")))
        if md5 is not None:
            extra["ContentMD5"] = base64.b64encode(md5.digest()).decode()
        try:
            response = self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=body, **extra)
        except Exception as exc:
            self._raise(exc, "s3:PutObject", key)
        verify_stored(self, key, len(body), md5.hexdigest() if md5 else None, response)

    def upload_md5(self, locked: bool, size: int) -> bool:
        return (self.send_md5 or locked) and size <= self.multipart_threshold  # parts have their own

    def put_file(
        self,
        key: str,
        path: str,
        *,
        if_absent: bool = False,
        retain_until: datetime | None = None,
        md5: bytes | None = None,
    ) -> None:
        """Straight from the staging file: one streamed PUT up to ``multipart_threshold`` (S3 bills
        per request), parallel parts above it; only the parts in flight are in memory. ``if_absent``
        sends ``If-None-Match: *`` on the PUT, or on the multipart upload's completion; ``md5``, the
        writer's digest of the file, is sent as its Content-MD5 (read and hashed here otherwise)."""
        try:
            size = os.path.getsize(path)
            extra = self._lock_args(retain_until)
            if if_absent:
                extra["IfNoneMatch"] = "*"
            if size <= self.multipart_threshold:
                if md5 is None and (self.send_md5 or "ObjectLockMode" in extra):
                    md5 = file_md5(path).digest()
                if md5 is not None:
                    extra["ContentMD5"] = base64.b64encode(md5).decode()
                with open(path, "rb") as body:  # botocore rewinds it for checksums and retries
                    try:
                        response = self.client.put_object(
                            Bucket=self.bucket, Key=self.prefix + key, Body=body, ContentLength=size, **extra
                        )
                    except Exception as exc:
                        self._raise(exc, "s3:PutObject", key)
                verify_stored(self, key, size, md5.hex() if md5 else None, response)
                return
            fd = os.open(path, os.O_RDONLY)
            try:
                put_multipart(self, key, size, lambda start, n: os.pread(fd, n, start), extra)
            finally:
                os.close(fd)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()
        except Exception as exc:
            self._raise(exc, "s3:GetObject", key)

    def _range_body(self, key: str, offset: int, length: int) -> Any:
        """The unread body of a ranged GET, or ``None`` when the range is empty or past the end."""
        if length <= 0:
            return None
        try:
            return self.client.get_object(
                Bucket=self.bucket, Key=self.prefix + key, Range=f"bytes={offset}-{offset + length - 1}"
            )["Body"]
        except ClientError as exc:
            if error_code(exc) == "InvalidRange":
                return None
            self._raise(exc, "s3:GetObject", key)
        except Exception as exc:
            self._raise(exc, "s3:GetObject", key)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        body = self._range_body(key, offset, length)
        if body is None:
            return b""
        with contextlib.closing(body):
            try:
                return bytes(body.read())
            except Exception as exc:
                self._raise(exc, "s3:GetObject", key)

    @contextlib.contextmanager
    def open_range(self, key: str, offset: int, length: int) -> Iterator[RangeStream]:
        """One GET whose body is read as the caller consumes it (never the whole pack in memory)."""
        body = self._range_body(key, offset, length)
        if body is None:
            yield io.BytesIO()
            return
        with contextlib.closing(body):
            yield _S3Range(self, key, body)

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.prefix + key)
        except ClientError as exc:
            if error_code(exc) in OBJECT_NOT_FOUND_CODES:
                return None
            self._raise(exc, "s3:GetObject", key)
        except Exception as exc:
            self._raise(exc, "s3:GetObject", key)
        return ObjectInfo(
            key,
            int(head["ContentLength"]),
            head.get("LastModified"),
            head.get("ETag"),
            head.get("ObjectLockRetainUntilDate"),
        )

    def _set_retention(self, key: str, until: datetime) -> None:
        try:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=self.prefix + key,
                Retention=cast(Any, {"Mode": self.object_lock_mode, "RetainUntilDate": until}),
            )
        except Exception as exc:
            self._raise(exc, "s3:PutObjectRetention", key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            pages = paginator.paginate(
                Bucket=self.bucket,
                Prefix=self.prefix + prefix,
                PaginationConfig={"PageSize": self._page_size},
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self.prefix) :]
                    yield ObjectInfo(key, int(item["Size"]), item.get("LastModified"), item.get("ETag"))
        except Exception as exc:
            self._raise(exc, "s3:ListBucket", prefix)

    def list_folders(self, prefix: str) -> tuple[str, ...]:
        paginator = self.client.get_paginator("list_objects_v2")
        found: set[str] = set()
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, Delimiter="/"):
                found.update(item["Prefix"][len(self.prefix) :] for item in page.get("CommonPrefixes", []))
        except Exception as exc:
            self._raise(exc, "s3:ListBucket", prefix)
        return tuple(sorted(found))

    def delete(self, key: str) -> None:
        full = self.prefix + key
        try:
            if not self.supports_object_lock:
                self.client.delete_object(Bucket=self.bucket, Key=full)
                return
            # With Object Lock (hence versioning) a plain delete only adds a delete marker; remove
            # every version so space is really reclaimed, and let S3 refuse the locked ones.
            info = self.stat(key)
            if (
                info is not None
                and info.retain_until is not None
                and info.retain_until > _now(info.retain_until)
            ):
                raise ObjectLockedError(
                    f"bucket {self.bucket}, key {full}: retained until {info.retain_until:%Y-%m-%d %H:%M}",
                    hint="objects under Object Lock can be deleted only after that date",
                )
            versions = self.client.list_object_versions(Bucket=self.bucket, Prefix=full)
            for item in versions.get("Versions", []) + versions.get("DeleteMarkers", []):
                if item["Key"] == full:
                    self.client.delete_object(Bucket=self.bucket, Key=full, VersionId=item["VersionId"])
        except ObjectLockedError:
            raise
        except ClientError as exc:
            if error_code(exc) in OBJECT_DENIED_CODES and self.supports_object_lock:
                raise ObjectLockedError(
                    f"bucket {self.bucket}, key {full}: delete refused (object lock)"
                ) from exc
            self._raise(exc, "s3:DeleteObject", key)
        except Exception as exc:
            self._raise(exc, "s3:DeleteObject", key)

    def delete_or_hide(self, key: str) -> None:
        try:
            self.delete(key)
        except ObjectLockedError:
            self.hide(key)

    def hide(self, key: str) -> None:
        if not self.supports_object_lock:
            self.delete(key)
            return
        try:  # no version id: a delete marker, which Object Lock allows whatever the locks
            self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            self._raise(exc, "s3:DeleteObject", key)

    @property
    def supports_default_retention(self) -> bool:
        return self.supports_object_lock

    def set_default_retention(self, days: int) -> None:
        """Bucket default retention (Object Lock ``DefaultRetention``) in this store's mode."""
        rule: Any = {"DefaultRetention": {"Mode": self.object_lock_mode, "Days": days}}
        try:  # idempotent: the same rule again is no request (some stores refuse it on a full bucket)
            current = self.client.get_object_lock_configuration(Bucket=self.bucket)["ObjectLockConfiguration"]
            have = current.get("Rule", {}).get("DefaultRetention", {})
            same = (have.get("Mode"), have.get("Days"), have.get("Years") or 0) == (
                self.object_lock_mode,
                days,
                0,
            )
            if current.get("ObjectLockEnabled") == "Enabled" and same:
                return
        except Exception as exc:
            self._raise(exc, "s3:GetBucketObjectLockConfiguration")
        try:
            self.client.put_object_lock_configuration(
                Bucket=self.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled", "Rule": rule}
            )
        except Exception as exc:
            self._raise(exc, "s3:PutBucketObjectLockConfiguration")

    def close(self) -> None:
        self.client.close()


def _now(like: datetime) -> datetime:
    from cloudkeep.compat import UTC

    return datetime.now(UTC) if like.tzinfo else datetime.now()


class _S3Range:
    """A GET body whose read errors (reset connections, timeouts) become cloudkeep errors.

    A plain body (botocore's own ``StreamingBody``: no checksum to check on the way, no content
    encoding) is read straight into the caller's buffer by http.client's response under it.
    Through urllib3, each ``readinto`` read a new ``bytes`` of the buffer's size (http.client's
    ``read``) and copied it in: per MiB restored, a fresh mmap'd MiB faulted in page by page
    (``heap.limit_heap_fragmentation``) and a copy (bench/README.md, stop 55). What urllib3 and
    botocore do on the way is done here too: a body cut short raises (``_verify_content_length``),
    read errors become botocore's, and the connection goes back to the pool once the body is read.
    """

    def __init__(self, store: S3Store, key: str, body: Any) -> None:
        self.store, self.key, self.body = store, key, body
        self.direct = _plain_response(body)

    def readinto(self, buffer: memoryview, /) -> int:
        try:
            if self.direct is None:
                return int(self.body.readinto(buffer))
            return self._read_direct(self.direct, buffer)
        except Exception as exc:
            self.store._raise(exc, "s3:GetObject", self.key)

    def _read_direct(self, response: Any, buffer: memoryview) -> int:
        try:
            count = int(response.readinto(buffer))
        except (OSError, http.client.HTTPException) as exc:  # a reset, a timeout: as botocore says them
            raise ResponseStreamingError(error=exc) from exc
        body = self.body
        body._amount_read += count
        if not count and len(buffer):
            body._verify_content_length()  # the server ended the body early: as botocore's own read
        if response.isclosed():
            body._raw_stream.release_conn()  # read to its end: the connection is reused
        return count


def _plain_response(body: Any) -> Any:
    """http.client's response under a botocore body read as it is (None: read through botocore)."""
    from botocore.response import StreamingBody

    raw = getattr(body, "_raw_stream", None)
    response = getattr(raw, "_fp", None)
    if type(body) is not StreamingBody or not isinstance(response, http.client.HTTPResponse):
        return None
    headers = getattr(raw, "headers", None)
    if headers is None or headers.get("content-encoding") or not hasattr(raw, "release_conn"):
        return None
    if not hasattr(body, "_amount_read") or not hasattr(body, "_verify_content_length"):
        return None
    return response
