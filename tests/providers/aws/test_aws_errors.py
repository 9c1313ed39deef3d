"""Bad input against AWS: wrong keys, missing permissions, unreachable endpoint, throttling.

Throttling and 5xx are injected by a loopback fault proxy (tests/support/fault_proxy.py) in front
of the moto server, so botocore's real retry logic handles real HTTP responses.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.errors import AuthenticationError, PermissionDeniedError, ThrottledError, UnreachableError
from cloudkeep.providers import InventoryScope, get_provider
from tests.providers.aws.conftest import KEYS
from tests.support.fault_proxy import FaultProxy
from tests.support.peers import MotoServer, free_port

THROTTLED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    b"<Message>Request limit exceeded.</Message></Error></Errors><RequestID>x</RequestID></Response>"
)


@pytest.fixture
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    fault_proxy = FaultProxy(moto_server.endpoint)
    yield fault_proxy
    fault_proxy.close()


def test_throttling_and_5xx_are_retried(proxy: FaultProxy) -> None:
    provider = get_provider("aws", KEYS, {"endpoint_url": proxy.endpoint, "max_attempts": 5})
    proxy.fail_next(1, status=503)
    proxy.fail_next(1, status=400, body=THROTTLED, headers={"Content-Type": "text/xml"})
    list(provider.inventory.list_machines(InventoryScope()))
    assert proxy.injected == 2 and proxy.requests >= 3


def test_persistent_throttling_gives_an_actionable_error(proxy: FaultProxy) -> None:
    provider = get_provider("aws", KEYS, {"endpoint_url": proxy.endpoint, "max_attempts": 2})
    proxy.fail_next(10, status=400, body=THROTTLED, headers={"Content-Type": "text/xml"})
    # typed, so rescan's pacing backs off (server/pacing.py); still an UnreachableError
    with pytest.raises(ThrottledError, match="throttling ec2:DescribeInstances") as raised:
        list(provider.inventory.list_machines(InventoryScope()))
    assert "concurrency" in str(raised.value)
    assert proxy.injected == 3  # the first try and max_attempts retries, then give up


def test_unreachable_endpoint() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    provider = get_provider("aws", KEYS, {"endpoint_url": dead, "max_attempts": 2, "connect_timeout": 1})
    with pytest.raises(UnreachableError, match="cannot reach AWS for ec2:DescribeInstances"):
        list(provider.inventory.list_machines(InventoryScope()))


@pytest.fixture(scope="module")
def moto_with_auth() -> Iterator[MotoServer]:
    """A second moto server with IAM enforcement switched on (the shared one accepts any key)."""
    peer = MotoServer.start(auth=True)
    yield peer
    peer.stop()


def _iam_user(endpoint: str, name: str, policy: dict[str, object] | None) -> dict[str, str]:
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **KEYS)
    iam.create_user(UserName=name)
    if policy is not None:
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}


def _set_auth(endpoint: str, enforced: bool) -> None:
    """moto's own switch: no authentication for setup calls, then enforcement for the test."""
    request = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=b"0" if enforced else b"inf",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def admin_keys(moto_with_auth: MotoServer) -> dict[str, str]:
    everything = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
    _set_auth(moto_with_auth.endpoint, enforced=False)
    keys = _iam_user(moto_with_auth.endpoint, "ck-admin", everything)
    _set_auth(moto_with_auth.endpoint, enforced=True)
    return keys


def test_wrong_keys_are_an_authentication_error(
    moto_with_auth: MotoServer, admin_keys: dict[str, str]
) -> None:
    wrong = {"aws_access_key_id": admin_keys["aws_access_key_id"], "aws_secret_access_key": "not-the-secret"}
    provider = get_provider("aws", wrong, {"endpoint_url": moto_with_auth.endpoint})
    with pytest.raises(AuthenticationError, match="check the access key"):
        provider.check_permissions()
    with pytest.raises(AuthenticationError):
        list(provider.inventory.list_machines(InventoryScope()))


def test_missing_permissions_are_listed(moto_with_auth: MotoServer, admin_keys: dict[str, str]) -> None:
    read_ec2 = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:Describe*", "sts:GetCallerIdentity"], "Resource": "*"}
        ],
    }
    _set_auth(moto_with_auth.endpoint, enforced=False)
    keys = _iam_user(moto_with_auth.endpoint, "ck-readonly", read_ec2)
    ec2 = boto3.client("ec2", endpoint_url=moto_with_auth.endpoint, region_name="us-east-1", **KEYS)
    instance = ec2.run_instances(ImageId="ami-1e749f67", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    _set_auth(moto_with_auth.endpoint, enforced=True)
    provider = get_provider("aws", keys, {"endpoint_url": moto_with_auth.endpoint})
    missing = provider.check_permissions()
    assert "ec2:DescribeInstances" not in missing
    # moto enforces IAM on EC2 and S3 here, not on ssm:ListCommands / sqs:ListQueues
    assert {"ec2:CreateTags", "s3:ListAllMyBuckets"} <= set(missing)
    with pytest.raises(PermissionDeniedError, match="ec2:CreateTags"):
        provider.inventory.set_tag(instance, "k", "v")
    full = get_provider("aws", admin_keys, {"endpoint_url": moto_with_auth.endpoint})
    assert full.check_permissions() == []
