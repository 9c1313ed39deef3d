"""The quickstart's scenario on AWS emulation: EC2 + SSM + SQS + S3 on the moto server.

moto runs no SSM commands, so the SSM agent stand-in (tests/support/ssm_standin.py, a separate
process) plays the agent on each instance: every EC2 instance created here with ``run_instances``
is mapped to a simulated machine whose machine-side services are real processes. The server side
is the embedded client over the AWS provider, talking to moto over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from cloudkeep.config import Settings
from cloudkeep.providers.local import SimulatedMachine
from cloudkeep.server.client import Client, open_client
from cloudkeep.server.dispatcher import stop_consumers
from cloudkeep.server.services.schemas import CredentialCreate
from tests.e2e.scenario import PYTHON_ENV, ROLES, CloudWorld, run_scenario, stop_services
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn

pytestmark = [pytest.mark.slow, pytest.mark.moto]
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
WINDOWS_AMI = "ami-12c6146b"


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    c = open_client(Settings(home=tmp_path / "server", rescan_concurrency=8))
    yield c
    stop_consumers()
    c.close()


def _bucket_exists(endpoint: str, bucket: str) -> bool:
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=KEYS["aws_access_key_id"],
        aws_secret_access_key=KEYS["aws_secret_access_key"],
    )
    return any(b["Name"] == bucket for b in s3.list_buckets().get("Buckets", []))


def test_aws_discover_deploy_backup_incremental_restore(
    client: Client, moto_server: MotoServer, ssm_standin: SsmStandIn, unique_name: str
) -> None:
    tags = {"cloudkeep-e2e": unique_name}
    machines: dict[str, SimulatedMachine] = {}
    created: list[SimulatedMachine] = []
    try:
        for role in ROLES:
            machine = ssm_standin.create_instance(f"{unique_name}-{role}", tags=tags, env=PYTHON_ENV)
            machines[machine.name] = machine
        created += machines.values()
        foreign = ssm_standin.create_instance(
            f"{unique_name}-foreign", tags={**tags, "cloudkeep:server": "ck-another0000"}, env=PYTHON_ENV
        )
        old_windows = ssm_standin.create_instance(
            f"{unique_name}-win", image_id=WINDOWS_AMI, tags=tags, powershell_version="4.0.1"
        )
        created += [foreign, old_windows]
        world = CloudWorld(
            credential=CredentialCreate(
                name=f"{unique_name}-aws",
                provider="aws",
                secret=KEYS,  # type: ignore[arg-type]
                options={
                    "endpoint_url": moto_server.endpoint,
                    "region": "us-east-1",
                    "ssm_output_bucket": f"{unique_name}-dist",
                    "machine_credentials": KEYS,
                },
            ),
            distribution_location=f"{unique_name}-dist/cloudkeep",
            backup_location=f"{unique_name}-backup/repository",
            include_tags=tags,
            machines=machines,
            refused={
                foreign.name: ("foreign", "managed by another backup server"),
                old_windows.name: ("skipped", "PowerShell 5.1 or later is required (found 4.0.1)"),
            },
        )
        report = run_scenario(client, world, name=unique_name)
        ssm_standin.assert_alive()
    finally:
        stop_services(created)
    assert _bucket_exists(moto_server.endpoint, f"{unique_name}-backup")
    assert foreign.info()["tags"]["cloudkeep:server"] == "ck-another0000"  # left untouched
    print(f"aws scenario timings: {report.timings}")
