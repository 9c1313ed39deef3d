"""S3 uploads: multipart for big objects, and the check that the store holds what was sent.

Split from ``s3`` (reads, listing, deletion and locks stay there): the upload path is the part
of the backend that has to cope with stores that accept a body and keep something else.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from cloudkeep.errors import IntegrityError, UnreachableError
from cloudkeep.providers.aws.errors import error_code
from cloudkeep.storage.s3_compat import response_checksum_echoed

if TYPE_CHECKING:
    from cloudkeep.storage.s3 import S3Store


def body_md5(store: S3Store, data: bytes, locked: bool) -> Any:
    """The body's MD5 when cloudkeep sends Content-MD5 itself (custom endpoints, locked PUTs)."""
    if not (store.send_md5 or locked):
        return None
    return hashlib.md5(data, usedforsecurity=False)


def verify_stored(
    store: S3Store, key: str, size: int, md5_hex: str | None, response: Mapping[str, Any]
) -> None:
    """Fail the write if the store does not hold what was sent.

    Free when the store echoes a flexible checksum (it decoded and checked the body) or an
    ETag equal to the body's MD5; otherwise one HEAD compares the size, which catches a store
    that kept aws-chunked framing (or anything else) as the object's bytes.
    """
    if response_checksum_echoed(response):
        return
    if md5_hex is not None and str(response.get("ETag", "")).strip('"') == md5_hex:
        return
    info = store.stat(key)
    if info is not None and info.size == size:
        return
    held = "nothing" if info is None else f"{info.size} bytes"
    with contextlib.suppress(Exception):  # best effort: a damaged object must not pass as data
        store.client.delete_object(Bucket=store.bucket, Key=store.prefix + key)
    raise IntegrityError(
        f"bucket {store.bucket}, key {store.prefix}{key}: the store holds {held} where {size} were "
        "sent: it did not store the upload as sent (e.g. it kept aws-chunked framing as data)",
        hint="use request_checksum_calculation=when_required for this store "
        "(the default for custom endpoints); `cloudkeep repository verify` checks it",
    )


def put_multipart(
    store: S3Store, key: str, size: int, read: Callable[[int, int], bytes], extra: dict[str, Any]
) -> None:
    if_none_match = extra.pop("IfNoneMatch", None)
    full = store.prefix + key
    try:
        upload_id = store.client.create_multipart_upload(Bucket=store.bucket, Key=full, **extra)["UploadId"]
    except Exception as exc:
        store._raise(exc, "s3:PutObject", key)

    locked = bool(extra.get("ObjectLockMode"))
    digests: dict[int, bytes] = {}

    def upload(number: int) -> dict[str, Any]:
        body = read((number - 1) * store.multipart_chunk, store.multipart_chunk)
        md5 = body_md5(store, body, locked)
        checksum: dict[str, Any] = {"ContentMD5": base64.b64encode(md5.digest()).decode()} if md5 else {}
        resp = store.client.upload_part(
            Bucket=store.bucket, Key=full, UploadId=upload_id, PartNumber=number, Body=body, **checksum
        )
        if md5 is not None:
            digests[number] = md5.digest()
        return {"PartNumber": number, "ETag": resp["ETag"]}

    try:
        count = (size + store.multipart_chunk - 1) // store.multipart_chunk
        # Parts go up in parallel: one big pack saturates the link without many packs in memory.
        with ThreadPoolExecutor(max_workers=store.multipart_concurrency) as pool:
            parts: list[Any] = list(pool.map(upload, range(1, count + 1)))
        complete: dict[str, Any] = {"IfNoneMatch": if_none_match} if if_none_match else {}
        response = store.client.complete_multipart_upload(
            Bucket=store.bucket, Key=full, UploadId=upload_id, MultipartUpload={"Parts": parts}, **complete
        )
    except Exception as exc:
        _abort_multipart(store, key, upload_id, exc)
        store._raise(exc, "s3:PutObject", key)
    # A multipart ETag is the MD5 of the parts' MD5s and "-<count>" where the store follows S3.
    multipart_etag = None
    if len(digests) == count:
        joined = b"".join(digests[n] for n in range(1, count + 1))
        multipart_etag = hashlib.md5(joined, usedforsecurity=False).hexdigest() + f"-{count}"
    verify_stored(store, key, size, multipart_etag, response)


def _abort_multipart(store: S3Store, key: str, upload_id: str, cause: Exception) -> None:
    """Abort a failed upload; if that fails too, say so: its parts stay stored and billed."""
    try:
        store.client.abort_multipart_upload(Bucket=store.bucket, Key=store.prefix + key, UploadId=upload_id)
    except ClientError as exc:
        if error_code(exc) == "NoSuchUpload":
            return  # nothing left to abort
        abort_error: Exception = exc
    except Exception as exc:
        abort_error = exc
    else:
        return
    raise UnreachableError(
        f"bucket {store.bucket}, key {store.prefix}{key}: upload failed ({cause}), and aborting "
        f"multipart upload {upload_id} failed too ({abort_error}): its parts stay stored and billed",
        hint="abort it with `aws s3api abort-multipart-upload`, or add a lifecycle rule "
        "AbortIncompleteMultipartUpload to the bucket",
    ) from cause


def file_md5(path: str) -> Any:
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while block := fh.read(2**20):
            md5.update(block)
    return md5
