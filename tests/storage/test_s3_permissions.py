"""S3 permission errors against a moto server with IAM enforcement on: named actions, nothing written."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.storage import open_store
from tests.support.peers import MotoServer

ROOT_KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[MotoServer]:
    """A separate moto server with authentication switched on (the shared one accepts any key)."""
    peer = MotoServer.start(auth=True)
    yield peer
    peer.stop()


def _enforce(endpoint: str, enforced: bool) -> None:
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if enforced else b"inf",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


def test_read_only_credentials_are_denied_writes(moto_with_auth: MotoServer, unique_name: str) -> None:
    endpoint = moto_with_auth.endpoint
    _enforce(endpoint, enforced=False)
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **ROOT_KEYS)
    s3.create_bucket(Bucket=unique_name)
    s3.put_object(Bucket=unique_name, Key="existing", Body=b"x")
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **ROOT_KEYS)
    iam.create_user(UserName=unique_name)
    read_only = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName=unique_name, PolicyName="ro", PolicyDocument=json.dumps(read_only))
    key = iam.create_access_key(UserName=unique_name)["AccessKey"]
    _enforce(endpoint, enforced=True)
    try:
        store = open_store(
            f"s3://{unique_name}",
            endpoint_url=endpoint,
            region="us-east-1",
            aws_access_key_id=key["AccessKeyId"],
            aws_secret_access_key=key["SecretAccessKey"],
            max_attempts=1,
        )
        assert store.get("existing") == b"x"
        with pytest.raises(
            PermissionDeniedError, match=f"bucket {unique_name}.*access denied for s3:PutObject"
        ):
            store.put("new", b"y")
        with pytest.raises(PermissionDeniedError, match="s3:DeleteObject"):
            store.delete("existing")
    finally:
        _enforce(endpoint, enforced=False)
    assert s3.get_object(Bucket=unique_name, Key="existing")["Body"].read() == b"x"
    assert s3.list_objects_v2(Bucket=unique_name, Prefix="new").get("KeyCount") == 0
