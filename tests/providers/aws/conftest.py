"""An AWS provider pointed at the shared moto server, with an SSM output bucket."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider
from tests.support.peers import MotoServer

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@pytest.fixture(scope="session")
def ssm_output_bucket(moto_server: MotoServer) -> str:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    s3.create_bucket(Bucket="ck-ssm-output")
    return "ck-ssm-output"


@pytest.fixture
def aws(moto_server: MotoServer, ssm_output_bucket: str) -> Iterator[AwsProvider]:
    options = {
        "endpoint_url": moto_server.endpoint,
        "region": "us-east-1",
        "ssm_output_bucket": ssm_output_bucket,
        "ssm_poll_interval": 0.1,
    }
    provider = create_aws_provider(KEYS, options)
    yield provider
    provider.close()
