"""The AWS provider against S3-compatible stores: no STS, no Object Lock, HTTPS with a private CA.

The missing behaviours come from ``S3CompatStandin`` (tests/support/s3_standin.py), a proxy in
front of the real moto server that takes one behaviour away per test, as such stores do.
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.errors import NotSupportedError
from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider
from tests.providers.aws.conftest import KEYS
from tests.support.peers import MotoServer
from tests.support.s3_standin import S3CompatStandin
from tests.support.tls import TlsFiles


@pytest.fixture
def compat(standin: S3CompatStandin, tls_files: TlsFiles) -> Iterator[AwsProvider]:
    """The provider as a user of such a store configures it: endpoint and CA bundle, nothing else."""
    options = {"endpoint_url": standin.endpoint, "ca_bundle": str(tls_files.cert), "max_attempts": 2}
    provider = create_aws_provider(KEYS, options)
    yield provider
    provider.close()


def _buckets(moto_server: MotoServer) -> set[str]:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    return {b["Name"] for b in s3.list_buckets().get("Buckets", [])}


def test_refused_immutable_repository_leaves_no_bucket(
    compat: AwsProvider, standin: S3CompatStandin, moto_server: MotoServer, unique_name: str
) -> None:
    """A store that answers 501 to Object Lock: a clear refusal, and the bucket it made is gone."""
    standin.quirks.not_implemented = {"object-lock"}
    with pytest.raises(NotSupportedError, match="does not implement Object Lock"):
        compat.storage.ensure_container(unique_name, object_lock=True)
    assert unique_name not in _buckets(moto_server)


def test_existing_bucket_is_kept_when_lock_is_refused(
    compat: AwsProvider, standin: S3CompatStandin, moto_server: MotoServer, unique_name: str
) -> None:
    compat.storage.ensure_container(unique_name)
    with pytest.raises(NotSupportedError, match="without Object Lock"):
        compat.storage.ensure_container(unique_name, object_lock=True)
    assert unique_name in _buckets(moto_server)  # not ours to remove


def test_store_options_carry_https_and_checksum_settings(compat: AwsProvider, tls_files: TlsFiles) -> None:
    options = compat.session.store_options()
    assert options["verify"] == str(tls_files.cert)
    assert options["request_checksum_calculation"] == "when_required"
    assert options["response_checksum_validation"] == "when_required"


def test_http_501_and_unparseable_answers_are_not_implemented_not_retry_later() -> None:
    from botocore.exceptions import ClientError
    from botocore.parsers import ResponseParserError

    from cloudkeep.providers.aws.errors import aws_errors

    not_implemented = ClientError(
        {"Error": {"Code": "NotImplemented", "Message": "no"}, "ResponseMetadata": {"HTTPStatusCode": 501}},
        "PutObjectRetention",
    )
    expected = pytest.raises(NotSupportedError, match="does not implement s3:PutObjectRetention")
    with expected as raised, aws_errors("s3:PutObjectRetention", "bucket"):
        raise not_implemented
    assert "retry" not in str(raised.value).replace("retrying will not help", "")
    with pytest.raises(NotSupportedError, match="HTTP 404, not an AWS response"), aws_errors("sts:X"):
        raise ResponseParserError("Unable to parse response (status code: 404), invalid XML: b'Not Found'")
