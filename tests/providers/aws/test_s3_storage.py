"""S3 storage service on moto: buckets, presigned URLs (generation: moto does not verify them),
STS credentials scoped to a prefix (moto returns working credentials; it does not enforce session
policies, so the policy document itself is checked)."""

from __future__ import annotations

import json
import urllib.request
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest

from cloudkeep.errors import ConfigurationError
from cloudkeep.providers import get_provider
from cloudkeep.providers.aws.provider import AwsProvider
from cloudkeep.providers.aws.storage import session_policy
from tests.providers.aws.conftest import KEYS
from tests.support.peers import MotoServer


def test_presigned_get_and_put_are_sigv4_with_expiry(aws: AwsProvider, unique_name: str) -> None:
    aws.storage.ensure_container(unique_name)
    aws.storage.ensure_container(unique_name)  # idempotent
    aws.storage.open_store(f"{unique_name}/dist").put("agent.tar.gz", b"payload")
    url = aws.storage.signed_url(f"{unique_name}/dist", "agent.tar.gz", method="GET", expires_seconds=300)
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    assert parts.path == f"/{unique_name}/dist/agent.tar.gz"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert query["X-Amz-Expires"] == ["300"]
    assert "X-Amz-Signature" in query and "host" in query["X-Amz-SignedHeaders"][0]
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"payload"
    put = aws.storage.signed_url(unique_name, "upload/x", method="PUT", expires_seconds=60)
    request = urllib.request.Request(
        put, data=b"uploaded", method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    assert aws.storage.open_store(unique_name).get("upload/x") == b"uploaded"
    with pytest.raises(ConfigurationError, match="7 days"):
        aws.storage.signed_url(unique_name, "k", method="GET", expires_seconds=8 * 86400)


def test_object_lock_bucket(aws: AwsProvider, unique_name: str) -> None:
    aws.storage.ensure_container(unique_name, object_lock=True)
    aws.storage.ensure_container(unique_name, object_lock=True)
    other = unique_name + "-plain"
    aws.storage.ensure_container(other)
    with pytest.raises(ConfigurationError, match="without Object Lock"):
        aws.storage.ensure_container(other, object_lock=True)


def test_scoped_credentials_from_sts_work(aws: AwsProvider, unique_name: str) -> None:
    aws.storage.ensure_container(unique_name)
    creds = aws.storage.scoped_credentials(f"{unique_name}/repo", "machines/web1/", expires_seconds=3600)
    assert creds.provider == "aws" and creds.store_url == f"s3://{unique_name}/repo"
    assert creds.options["aws_session_token"] and creds.options["aws_access_key_id"] != "testing"
    assert creds.expires_at > datetime.now(UTC) + timedelta(minutes=50)
    json.dumps({**creds.options, "expires_at": creds.expires_at.isoformat()})  # JSON-serialisable
    store = creds.open_store()
    store.put("machines/web1/pack", b"data")
    assert aws.storage.open_store(f"{unique_name}/repo").get("machines/web1/pack") == b"data"


def test_session_policy_writes_only_the_prefix() -> None:
    """The statements' shape; tests/providers/aws/test_session_policy.py evaluates the document."""
    policy = session_policy("bucket", "repo/machines/web1/", "repo")
    allowed = [s for s in policy["Statement"] if s["Effect"] == "Allow"]
    writes = [s for s in allowed if "s3:PutObject" in s["Action"]]
    assert [s["Resource"] for s in writes] == ["arn:aws:s3:::bucket/repo/machines/web1/*"]
    granted = {a for s in allowed for a in s["Action"]}
    assert not {"s3:DeleteObject", "s3:PutObjectRetention", "s3:PutObjectLegalHold"} & granted


def test_scoped_credentials_by_assume_role(moto_server: MotoServer, unique_name: str) -> None:
    """With ``agent_role_arn`` the server assumes the agent role with the session policy."""
    iam = boto3.client("iam", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    trust = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}],
    }
    role = iam.create_role(RoleName=unique_name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    options = {"endpoint_url": moto_server.endpoint, "region": "us-east-1", "agent_role_arn": role}
    provider = get_provider("aws", KEYS, options)
    provider.storage.ensure_container(unique_name)
    creds = provider.storage.scoped_credentials(unique_name, "machines/a/", expires_seconds=900)
    assert creds.options["aws_access_key_id"].startswith("ASIA")  # temporary (session) credentials
    creds.open_store().put("machines/a/x", b"1")
    assert provider.storage.open_store(unique_name).get("machines/a/x") == b"1"


def test_expired_session_token_is_an_actionable_error() -> None:
    """Pure translation (moto never expires tokens): ExpiredToken → AuthenticationError saying what to do."""
    from botocore.exceptions import ClientError

    from cloudkeep.errors import AuthenticationError
    from cloudkeep.providers.aws.errors import aws_errors

    error = ClientError(
        {
            "Error": {
                "Code": "ExpiredToken",
                "Message": "The security token included in the request is expired",
            }
        },
        "ListBuckets",
    )
    with (
        pytest.raises(AuthenticationError, match=r"expired.*refresh the temporary credentials"),
        aws_errors("s3:ListAllMyBuckets"),
    ):
        raise error
