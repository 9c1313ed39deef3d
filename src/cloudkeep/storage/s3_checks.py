"""S3-specific store checks for ``cloudkeep repository verify``: multipart and abort, Object Lock
calls, and whether the store understands botocore's aws-chunked uploads."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.aws.errors import sdk_errors
from cloudkeep.storage.base import ObjectLockedError
from cloudkeep.storage.conformance import StoreCheck

if TYPE_CHECKING:
    from cloudkeep.storage.s3 import S3Store

_CHECK_FAILURES: tuple[type[Exception], ...] = (*sdk_errors(), CloudkeepError)  # reported, not raised
PART = 5 * 2**20  # S3's minimum part size


def _md5_arg(store: S3Store, body: bytes) -> dict[str, Any]:
    if not store.send_md5:
        return {}
    return {"ContentMD5": base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()}


def check_multipart(store: S3Store, prefix: str) -> StoreCheck:
    """A two-part upload reads back whole; an aborted upload is really gone (no billed orphans)."""
    name = "multipart and abort"
    client, bucket, key = store.client, store.bucket, store.prefix + prefix + "multipart"
    try:
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        first, tail = os.urandom(PART), b"tail"
        parts: list[Any] = []
        for number, body in ((1, first), (2, tail)):
            answer = client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body, **_md5_arg(store, body)
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        client.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
        whole = store.get(prefix + "multipart") == first + tail
        store.delete(prefix + "multipart")
        orphan = client.create_multipart_upload(Bucket=bucket, Key=key + "-aborted")["UploadId"]
        client.abort_multipart_upload(Bucket=bucket, Key=key + "-aborted", UploadId=orphan)
        listed = client.list_multipart_uploads(Bucket=bucket, Prefix=key + "-aborted").get("Uploads", [])
        gone = all(item.get("UploadId") != orphan for item in listed)
    except _CHECK_FAILURES as exc:
        return StoreCheck(
            name, False, f"failed: {exc}", "packs above the multipart threshold cannot be stored"
        )
    if not whole:
        return StoreCheck(name, False, "a completed upload read back wrong", "large packs would be damaged")
    if not gone:
        return StoreCheck(
            name, False, "an aborted upload is still listed",
            "failed uploads may leave billed parts: add a lifecycle rule AbortIncompleteMultipartUpload",
        )  # fmt: skip
    return StoreCheck(name, True, "parts assemble correctly; abort removes the upload")


def check_object_lock(
    store: S3Store, prefix: str, *, now: Callable[[], datetime] | None = None
) -> StoreCheck:
    """The lock configuration answers clearly; where enabled, a retained object refuses deletion."""
    name = "object lock"
    clock = now or (lambda: datetime.now(UTC))
    try:
        enabled = store.supports_object_lock
    except CloudkeepError as exc:
        return StoreCheck(name, False, f"the lock configuration cannot be read: {exc}",
                          "immutable repositories are refused until it can")  # fmt: skip
    if not enabled:
        return StoreCheck(
            name, True, "no Object Lock on this bucket (or the store has none)",
            "immutable repositories are refused here; use a bucket created with Object Lock",
        )  # fmt: skip
    key = prefix + "locked"
    try:
        store.put(key, b"locked", retain_until=clock() + timedelta(seconds=2))
        info = store.stat(key)
        held = info is not None and info.retain_until is not None
        try:
            store.delete(key)
            refused = False
        except ObjectLockedError:
            refused = True
        deadline = time.monotonic() + 15
        while store.exists(key) and time.monotonic() < deadline:  # the probe expires in seconds
            with contextlib.suppress(ObjectLockedError):
                store.delete(key)
            time.sleep(0.5)
    except CloudkeepError as exc:
        return StoreCheck(name, False, f"a locked write failed: {exc}", "immutable backups would fail")
    if not (held and refused):
        return StoreCheck(
            name, False, "retention was not kept or a retained object could be deleted",
            "do not use immutable repositories on this store",
        )  # fmt: skip
    return StoreCheck(name, True, f"enabled; retained objects refuse deletion ({store.object_lock_mode})")


def check_checksum_framing(store: S3Store, prefix: str) -> StoreCheck:
    """Does the store understand botocore's default uploads (aws-chunked with a trailing checksum
    over HTTPS)? If not, cloudkeep must not send them."""
    name = "checksum framing"
    key = store.prefix + prefix + "framed"
    data = os.urandom(70_000)
    framed = store.client_with(
        request_checksum_calculation="when_supported", response_checksum_validation="when_required"
    )
    try:
        framed.put_object(Bucket=store.bucket, Key=key, Body=data)
        understood = store.get(prefix + "framed") == data
    except _CHECK_FAILURES as exc:
        understood, error = False, str(exc)
    else:
        error = ""
    finally:
        with contextlib.suppress(Exception):
            store.client.delete_object(Bucket=store.bucket, Key=key)
        framed.close()
    if understood:
        mode = "Content-MD5 (when_required)" if store.send_md5 else "flexible checksums (when_supported)"
        return StoreCheck(name, True, f"aws-chunked uploads are understood; cloudkeep sends {mode}")
    seen = error or "the object read back differs from what was sent (framing kept as data)"
    if store.send_md5:
        return StoreCheck(
            name, True, f"aws-chunked uploads are not understood: {seen}",
            "cloudkeep sends Content-MD5 instead (request_checksum_calculation=when_required)",
        )  # fmt: skip
    return StoreCheck(
        name, False, f"aws-chunked uploads are not understood: {seen}",
        "set request_checksum_calculation=when_required for this store; uploads would be damaged",
    )  # fmt: skip


def s3_checks(store: S3Store, prefix: str) -> list[StoreCheck]:
    return [check(store, prefix) for check in (check_multipart, check_object_lock, check_checksum_framing)]
