"""Rescan on AWS: EC2 inventory, SSM Run Command, SQS queues and an S3 distribution bucket on moto.

moto runs no SSM command, so the SSM agent stand-in (tests/support/ssm_standin.py) executes each
script in the instance's simulated machine and writes its output to S3 like the real agent. The
services installed on the machine reach SQS on moto with the lab's ``machine_credentials``.
moto does not enforce presigned URLs (see notes), so the tampered/expired URL cases are tested
on the local signed-URL server and on Azurite.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from tests.server.rescan_support import PYTHON_ENV, RescanWorld
from tests.support.pacing import CountingPacer, FakeClock
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn

from cloudkeep.providers.facts import ProviderFacts
from cloudkeep.server.rescan import bundles, deploy, start_rescan
from cloudkeep.server.rescan import session as rescan_session
from cloudkeep.server.rescan.deploy import OWNER_TAG

pytestmark = [pytest.mark.slow, pytest.mark.moto]
KEYS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
WINDOWS_AMI = "ami-12c6146b"
SECURE_BOOT_VAR = "sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


@pytest.fixture
def aws_world(
    tmp_path: Path, moto_server: MotoServer, ssm_standin: SsmStandIn, unique_name: str
) -> Iterator[RescanWorld]:
    s3 = boto3.client("s3", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    s3.create_bucket(Bucket=f"{unique_name}-ssm")
    options = {
        "endpoint_url": moto_server.endpoint, "region": "us-east-1",
        "ssm_output_bucket": f"{unique_name}-ssm", "ssm_poll_interval": 0.1, "machine_credentials": KEYS,
    }  # fmt: skip
    world = RescanWorld.create(
        tmp_path / "home", ssm_standin.lab, provider="aws", secret=KEYS, options=options,
        location=unique_name, regions=["us-east-1"], include_tags={"cktest": unique_name},
    )  # fmt: skip
    world.only = set()
    yield world
    world.close()


def _instance(world: RescanWorld, standin: SsmStandIn, tag: str, name: str, **machine: object) -> str:
    world.only.add(name)  # type: ignore[union-attr]
    tags = {"cktest": tag, **machine.pop("tags", {})}  # type: ignore[dict-item]
    return standin.create_instance(name, tags=tags, **machine).id


def _ec2_tags(moto_server: MotoServer, instance_id: str) -> dict[str, str]:
    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    described = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [instance_id]}])
    return {t["Key"]: t["Value"] for t in described["Tags"]}


def test_rescan_deploys_an_ec2_instance_over_ssm_and_sqs(
    aws_world: RescanWorld, ssm_standin: SsmStandIn, moto_server: MotoServer, unique_name: str
) -> None:
    instance = _instance(aws_world, ssm_standin, unique_name, f"{unique_name}-web", env=PYTHON_ENV)

    session = aws_world.session(start_rescan(aws_world.ctx, aws_world.group_id, wait=True))

    assert session.state == "success", (session.reason, aws_world.machines())
    row = aws_world.machines()[f"{unique_name}-web"]
    assert row.status == "deployed", row.status_reason
    assert row.cloud_id == instance and row.agent_public_key
    assert _ec2_tags(moto_server, instance)[OWNER_TAG] == aws_world.ctx.server_id
    assert "ping answered through the queues" in aws_world.steps(row.name)[-1][2]
    assert "uploaded to" in aws_world.steps(row.name)[4][2]

    again = aws_world.session(start_rescan(aws_world.ctx, aws_world.group_id, wait=True))
    assert again.state == "success" and again.stats["installed"] == 0
    assert len(aws_world.steps(row.name)) == 7


def test_refusals_on_aws(
    aws_world: RescanWorld,
    ssm_standin: SsmStandIn,
    moto_server: MotoServer,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(deploy, "PROBE_TIMEOUT", 5.0)
    u = unique_name
    _instance(aws_world, ssm_standin, u, f"{u}-foreign", env=PYTHON_ENV, tags={OWNER_TAG: "ck-other"})
    secure = _instance(aws_world, ssm_standin, u, f"{u}-secure", env=PYTHON_ENV)
    variable = ssm_standin.lab.get(secure).root / SECURE_BOOT_VAR  # type: ignore[union-attr]
    variable.parent.mkdir(parents=True)
    variable.write_bytes(b"\x06\x00\x00\x00\x01")  # attributes + value 1: Secure Boot on
    _instance(aws_world, ssm_standin, u, f"{u}-oldps", image_id=WINDOWS_AMI, powershell_version="4.0")
    _instance(aws_world, ssm_standin, u, f"{u}-blocked", image_id=WINDOWS_AMI, execution_policy="Restricted")
    ec2 = boto3.client("ec2", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    stopped = _instance(aws_world, ssm_standin, u, f"{u}-stopped")
    ec2.stop_instances(InstanceIds=[stopped])
    ec2.run_instances(  # an instance no SSM agent serves
        ImageId="ami-1e749f67", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "cktest", "Value": u},
                                                                  {"Key": "Name", "Value": f"{u}-noagent"}]}],
    )  # fmt: skip

    session = aws_world.session(start_rescan(aws_world.ctx, aws_world.group_id, wait=True))

    machines = aws_world.machines()
    expected = {
        "foreign": ("foreign", "managed by another backup server (cloudkeep:server=ck-other)"),
        "secure": ("skipped", "no Linux agent on UEFI Secure Boot machines"),
        "oldps": ("skipped", "Windows PowerShell 5.1 or later is required (found 4.0)"),
        "blocked": ("failed", "scripts are blocked by the PowerShell execution policy"),
        "stopped": ("skipped", "not running"),
        "noagent": ("failed", "the cloud agent on the machine (SSM agent / Azure VM agent) is missing"),
    }
    for suffix, (status, reason) in expected.items():
        row = machines[f"{u}-{suffix}"]
        assert row.status == status and reason in row.status_reason, (suffix, row.status, row.status_reason)
    assert session.state == "warning" and session.stats["found"] == 6
    assert machines[f"{u}-secure"].facts.get("secure_boot") is True
    assert OWNER_TAG not in _ec2_tags(moto_server, secure)
    # The probes went out in one SendCommand per platform (up to 50 instances a call), not one each.
    ids = {machines[f"{u}-{s}"].cloud_id: s for s in ("foreign", "secure", "noagent", "oldps", "blocked")}
    ssm = boto3.client("ssm", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)
    sent = [set(c["Comment"].split()[1:]) for c in ssm.list_commands()["Commands"]
            if set(c["Comment"].split()) & set(ids)]  # fmt: skip
    assert sorted(sorted(ids[i] for i in named) for named in sent) == [
        ["blocked", "oldps"],
        ["foreign", "noagent", "secure"],
    ]


def test_probes_take_one_write_token_per_batch_even_a_batch_of_one(
    aws_world: RescanWorld,
    ssm_standin: SsmStandIn,
    moto_server: MotoServer,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checks-only rescan makes one write per probe batch (SendCommand), whatever the batch's
    size: one machine costs one token, three machines too. The account's pacer is the test's."""
    clock = FakeClock()
    pacers: list[CountingPacer] = []

    def counting_pacer(credential_id: str, facts: ProviderFacts) -> CountingPacer:
        pacers.append(CountingPacer(facts, clock))
        return pacers[-1]

    monkeypatch.setattr(rescan_session, "pacer_for", counting_pacer)
    u = unique_name
    first = _instance(aws_world, ssm_standin, u, f"{u}-one", env=PYTHON_ENV)
    ssm = boto3.client("ssm", endpoint_url=moto_server.endpoint, region_name="us-east-1", **KEYS)

    def sent_to(ids: set[str]) -> list[set[str]]:
        named = [set(c["Comment"].split()[1:]) for c in ssm.list_commands()["Commands"]]
        return [n for n in named if n & ids]

    one = aws_world.session(start_rescan(aws_world.ctx, aws_world.group_id, wait=True, deploy=False))
    assert one.state == "success", (one.reason, aws_world.machines())
    assert pacers[-1].count("write") == 1 and sent_to({first}) == [{first}]

    more = [_instance(aws_world, ssm_standin, u, f"{u}-more{n}", env=PYTHON_ENV) for n in range(2)]
    three = aws_world.session(start_rescan(aws_world.ctx, aws_world.group_id, wait=True, deploy=False))
    assert three.state == "success", (three.reason, aws_world.machines())
    assert pacers[-1].count("write") == 1  # one SendCommand for the three
    assert sent_to(set(more)) == [{first, *more}]
    # Status reads are paced reads too (on moto: per instance, as listing answers 500).
    assert pacers[-1].count("read") >= 3


def test_the_bundle_in_s3_is_handed_out_by_a_short_lived_presigned_url(
    aws_world: RescanWorld, unique_name: str
) -> None:
    """moto does not enforce presigned URLs (notes/emulators.md): here we check generation and content."""
    provider = aws_world.ctx.provider_for(aws_world.credential_id)
    try:
        manifest, folder = bundles.current_bundle(aws_world.ctx)
        first = bundles.publish(provider.storage, unique_name, manifest, folder)
        again = bundles.publish(provider.storage, unique_name, manifest, folder)
        assert first.uploaded and not again.uploaded  # uploaded once, then found in place
        url = again.signed_url(provider.storage, "linux")
    finally:
        provider.close()
    query = parse_qs(urlsplit(url).query)
    assert query["X-Amz-Expires"] == [str(bundles.URL_EXPIRES_SECONDS)] and query["X-Amz-Signature"]
    with urllib.request.urlopen(url, timeout=30) as response:
        assert hashlib.sha256(response.read()).hexdigest() == manifest.archives["linux"].sha256
