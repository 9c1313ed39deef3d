"""An AWS provider pointed at the shared moto server, with an SSM output bucket; and, for the SSM
modules that need exact command targets, a moto server of their own with the agent stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn

KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
# Fails where the instance's folder has a ``fail`` file; else prints the instance's own id, so a
# result mapped to the wrong machine shows.
ECHO_ID_SCRIPT = 'if [ -e fail ]; then echo broken >&2; exit 7; fi\necho "$CLOUDKEEP_MACHINE_ID"'


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


@pytest.fixture(scope="module")
def recorded_moto() -> Iterator[MotoServer]:
    """A moto server of the module's own that records its requests: moto loses the InstanceIds a
    command was sent to, so the agent stand-in reads them there (and the module's command count
    is exact)."""
    peer = MotoServer.start(record=True)
    yield peer
    peer.stop()


@pytest.fixture(scope="module")
def ssm_agent(recorded_moto: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SsmStandIn]:
    """The SSM agent stand-in (us-east-1) serving ``recorded_moto``'s instances."""
    lab_dir = tmp_path_factory.mktemp("ssm-agent-lab")
    peer = SsmStandIn.start(recorded_moto.endpoint, "us-east-1", lab_dir, recording=recorded_moto.recording)
    yield peer
    peer.stop()
