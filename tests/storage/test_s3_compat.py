"""S3-compatible stores as users have them: HTTPS, checksum framing, missing features.

Runs on the moto server over HTTPS (moto serves TLS with a certificate made by the fixture) and,
where a behaviour must be taken away, through ``S3CompatStandin`` — a proxy in front of moto that
imitates a less capable store (named in each test).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from cloudkeep.errors import (
    IntegrityError,
    NotSupportedError,
    PermissionDeniedError,
    RepositoryWriteError,
    UnreachableError,
)
from cloudkeep.storage import open_store
from cloudkeep.storage.s3 import S3Store
from tests.support.fault_proxy import FaultProxy
from tests.support.peers import MotoServer
from tests.support.s3_standin import S3CompatStandin
from tests.support.tls import TlsFiles


def _options(endpoint: str, ca: str, **extra: Any) -> dict[str, Any]:
    return {
        "endpoint_url": endpoint,
        "region": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
        "verify": ca,
        "multipart_threshold": 6 * 2**20,
        "multipart_chunk": 5 * 2**20,
        **extra,
    }


def _bucket(endpoint: str, ca: str | None, name: str, *, lock: bool = False) -> None:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", verify=ca,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    )  # fmt: skip
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=lock)


def test_https_roundtrip_on_moto_tls(moto_tls: MotoServer, unique_name: str, tmp_path: Path) -> None:
    """moto over TLS understands aws-chunked: both checksum settings store exactly what was sent."""
    ca = str(moto_tls.tls.cert)  # type: ignore[union-attr]
    _bucket(moto_tls.endpoint, ca, unique_name)
    big = os.urandom(11 * 2**20 + 7)  # multipart
    for setting in ("when_supported", "when_required"):
        store = open_store(
            f"s3://{unique_name}/{setting}",
            **_options(moto_tls.endpoint, ca, request_checksum_calculation=setting),
        )
        store.put("small", b"hello")
        store.put("big", big)
        staged = tmp_path / f"pack-{setting}"
        staged.write_bytes(b"p" * 70_000)
        store.put_file("pack", str(staged))
        assert store.get("small") == b"hello"
        assert store.get("big") == big
        assert store.get("pack") == b"p" * 70_000
        store.close()


def test_custom_endpoint_defaults_to_no_framing(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str
) -> None:
    """On a store that would keep aws-chunked framing (stand-in), the custom-endpoint default is safe."""
    standin.quirks.keep_chunked_framing = True
    ca = str(tls_files.cert)
    _bucket(standin.endpoint, ca, unique_name)
    store = open_store(f"s3://{unique_name}", **_options(standin.endpoint, ca))
    assert isinstance(store, S3Store) and store.send_md5
    big = os.urandom(11 * 2**20 + 7)
    store.put("small", b"hello")
    store.put("big", big)
    assert store.get("small") == b"hello" and store.get("big") == big
    assert standin.stored_framing == 0
    objects = [headers for path, headers in standin.uploads if path.count("/") > 1]  # not the bucket
    assert len(objects) >= 4 and all("content-md5" in h for h in objects), "every upload carries Content-MD5"


@pytest.mark.parametrize("size", [5, 11 * 2**20 + 7])
def test_framing_kept_as_data_fails_the_write(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str, size: int
) -> None:
    """Forcing botocore's aws-chunked uploads onto that store: the write fails, nothing damaged stays."""
    standin.quirks.keep_chunked_framing = True
    ca = str(tls_files.cert)
    _bucket(standin.endpoint, ca, unique_name)
    store = open_store(
        f"s3://{unique_name}", **_options(standin.endpoint, ca, request_checksum_calculation="when_supported")
    )
    with pytest.raises(IntegrityError, match="did not store the upload as sent"):
        store.put("obj", os.urandom(size))
    assert standin.stored_framing >= 1
    assert store.stat("obj") is None


def test_repository_create_on_framing_store_fails_at_once(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str
) -> None:
    """The damage shows when the repository is made, not later as "wrong password"."""
    from cloudkeep.repo import Repository
    from cloudkeep.repo.crypto import KdfParams

    standin.quirks.keep_chunked_framing = True
    ca = str(tls_files.cert)
    _bucket(standin.endpoint, ca, unique_name)
    store = open_store(
        f"s3://{unique_name}", **_options(standin.endpoint, ca, request_checksum_calculation="when_supported")
    )
    with pytest.raises(RepositoryWriteError, match="did not store the upload as sent") as failed:
        Repository.create(store, "correct horse", kdf=KdfParams(n=2**10))
    assert isinstance(failed.value.__cause__, IntegrityError)  # the store's own check found it
    assert "request_checksum_calculation=when_required" in (failed.value.hint or "")
    assert list(store.list("")) == []


# -- errors that must not mislead (issue 15, point 4) -------------------------------------------


def _plain(standin: S3CompatStandin, tls_files: TlsFiles, name: str, **extra: Any) -> S3Store:
    ca = str(tls_files.cert)
    _bucket(standin.endpoint, ca, name)
    store = open_store(f"s3://{name}", **_options(standin.endpoint, ca, max_attempts=2, **extra))
    assert isinstance(store, S3Store)
    return store


def test_http_501_says_not_implemented(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str
) -> None:
    """A store answering 501 to retention calls (stand-in): a clear "does not implement", no retry talk."""
    store = _plain(standin, tls_files, unique_name)
    store.put("k", b"x")
    standin.quirks.not_implemented = {"retention"}
    with pytest.raises(NotSupportedError, match="does not implement s3:PutObjectRetention") as raised:
        store._set_retention("k", datetime.now(UTC) + timedelta(days=1))
    assert "retry" not in str(raised.value)


def test_no_lock_only_for_no_configuration_or_501(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str
) -> None:
    store = _plain(standin, tls_files, unique_name)
    assert store.supports_object_lock is False  # moto: ObjectLockConfigurationNotFoundError
    standin.quirks.not_implemented = {"object-lock"}
    assert _plain(standin, tls_files, unique_name + "b").supports_object_lock is False  # 501


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [(403, "AccessDenied", PermissionDeniedError), (503, "SlowDown", UnreachableError)],
)
def test_lock_probe_failures_are_not_no_lock(
    moto_server: MotoServer, unique_name: str, status: int, code: str, error: type[Exception]
) -> None:
    """Denied or throttled must raise: taking them as "no lock" would silently drop retain_until."""
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "aws_access_key_id": "testing",
               "aws_secret_access_key": "testing"}  # fmt: skip
    _bucket(moto_server.endpoint, None, unique_name, lock=True)
    proxy = FaultProxy(moto_server.endpoint)
    try:
        store = open_store(
            f"s3://{unique_name}", **{**options, "endpoint_url": proxy.endpoint}, max_attempts=2
        )
        body = f"<Error><Code>{code}</Code><Message>no</Message></Error>".encode()
        proxy.fail_next(10, status, body, {"Content-Type": "application/xml"})
        with pytest.raises(error):
            _ = store.supports_object_lock
        proxy.clear()
        assert store.supports_object_lock is True  # not cached as "no lock" after the failure
    finally:
        proxy.close()


def test_failed_abort_of_multipart_is_reported(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str
) -> None:
    """Parts that cannot be aborted cost money: the error names the upload left behind (stand-in 501s)."""
    store = _plain(standin, tls_files, unique_name)
    standin.quirks.not_implemented = {"uploadId"}  # parts, completion and abort all refused
    with pytest.raises(UnreachableError, match="stay stored and billed") as raised:
        store.put("big", os.urandom(11 * 2**20))
    assert "abort-multipart-upload" in str(raised.value)


def test_object_lock_puts_carry_an_explicit_checksum(
    standin: S3CompatStandin, tls_files: TlsFiles, unique_name: str, tmp_path: Path
) -> None:
    """Without botocore's flexible checksums, locked PUTs (and their parts) still carry Content-MD5."""
    ca = str(tls_files.cert)
    _bucket(standin.endpoint, ca, unique_name, lock=True)
    store = open_store(f"s3://{unique_name}", **_options(standin.endpoint, ca))
    until = datetime.now(UTC) + timedelta(days=1)
    store.put("snap", b"restore point", retain_until=until)
    staged = tmp_path / "pack"
    staged.write_bytes(os.urandom(11 * 2**20))
    store.put_file("pack", str(staged), retain_until=until)
    locked = [h for path, h in standin.uploads if path.count("/") > 1]
    assert len(locked) >= 4 and all("content-md5" in h for h in locked)
    assert store.stat("snap").retain_until is not None  # type: ignore[union-attr]
