"""SSM SendCommand in batches of up to 50 instances, on a moto server of its own.

moto loses the InstanceIds a command was sent to (it lists every command under every instance),
so this module's moto server records its requests and the SSM agent stand-in reads the real
InstanceIds of each SendCommand from that recording (see tests/support/ssm_standin.py). Its own
server also makes the command count exact: ``list_commands()`` holds only this module's calls.
The 120-instance test comes last: the stand-in polls every instance of its lab, so the small
tests run before the lab is large.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import boto3
import pytest
from botocore.exceptions import ClientError

from cloudkeep.errors import NotFoundError
from cloudkeep.providers.aws.facts import FACTS
from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider
from cloudkeep.providers.base import Machine, Platform
from cloudkeep.providers.facts import ApiRate
from tests.providers.aws.conftest import ECHO_ID_SCRIPT, KEYS
from tests.support.pacing import CountingPacer, FakeClock, ThrottledOnce
from tests.support.peers import MotoServer
from tests.support.ssm_standin import SsmStandIn

pytestmark = [pytest.mark.slow, pytest.mark.moto]
T = TypeVar("T")
TIMEOUT = 20.0  # the silent instance is reported at the deadline; the others must answer within it
REGION = "us-east-1"


@pytest.fixture(scope="module")
def aws(recorded_moto: MotoServer) -> Iterator[AwsProvider]:
    boto3.client("s3", endpoint_url=recorded_moto.endpoint, region_name=REGION, **KEYS).create_bucket(
        Bucket="ck-ssm-output"
    )
    options = {
        "endpoint_url": recorded_moto.endpoint, "region": REGION,
        "ssm_output_bucket": "ck-ssm-output", "ssm_poll_interval": 0.2,
    }  # fmt: skip
    provider = create_aws_provider(KEYS, options)
    yield provider
    provider.close()


def _ssm(moto: MotoServer) -> Any:
    return boto3.client("ssm", endpoint_url=moto.endpoint, region_name=REGION, **KEYS)


def _commands_since(moto: MotoServer, before: set[str]) -> list[dict[str, Any]]:
    listed = _ssm(moto).list_commands().get("Commands", [])
    return [c for c in listed if c["CommandId"] not in before]


def _pacer(clock: FakeClock, burst: int) -> CountingPacer:
    """No refill within the test: write tokens count calls; reads never wait."""
    return CountingPacer(
        FACTS,
        clock,
        write=ApiRate(burst=burst, per_second=0.001),
        read=ApiRate(burst=100_000, per_second=1000),
    )


def test_throttled_batch_is_retried_as_one_batch(
    aws: AwsProvider, ssm_agent: SsmStandIn, recorded_moto: MotoServer
) -> None:
    served = [ssm_agent.create_instance(f"throttled{n}") for n in range(2)]
    machines = [aws.inventory.get_machine(s.id) for s in served]
    before = {c["CommandId"] for c in _commands_since(recorded_moto, set())}
    clock = FakeClock()
    pacer = ThrottledOnce(FACTS, clock, write=ApiRate(burst=10, per_second=0.001))

    results = aws.commands.run_many([m for m in machines if m], ECHO_ID_SCRIPT, timeout=20, pacer=pacer)
    assert pacer.throttled == 1 and clock.slept  # backed off, then sent again
    sent = _commands_since(recorded_moto, before)
    assert len(sent) == 1 and sorted(sent[0]["Comment"].split()[1:]) == sorted(s.id for s in served)
    for simulated in served:
        result = results[simulated.id]
        assert not isinstance(result, Exception) and result.ok and result.stdout == f"{simulated.id}\n"


def test_recording_is_where_the_standin_reads_targets(recorded_moto: MotoServer) -> None:
    """Guard for the stand-in: if moto stopped recording, batches would silently fan out."""
    assert isinstance(recorded_moto.recording, Path) and recorded_moto.recording.exists()


def test_an_unmanaged_instance_is_split_out_of_its_batch(
    aws: AwsProvider, ssm_agent: SsmStandIn, recorded_moto: MotoServer
) -> None:
    """Real SSM refuses a whole SendCommand naming an instance it does not manage
    (InvalidInstanceId); moto accepts any id, so a botocore hook plays that refusal here."""
    served = [ssm_agent.create_instance(f"split{n}") for n in range(3)]
    unmanaged = "i-0000000000000dead"
    machines = [
        Machine(id=s.id, name=s.name, platform=Platform.LINUX, state="running", region=REGION) for s in served
    ]
    machines.insert(
        2, Machine(id=unmanaged, name="dead", platform=Platform.LINUX, state="running", region=REGION)
    )
    attempts: list[list[str]] = []

    def refuse_unmanaged(params: dict[str, Any], **_: Any) -> None:
        attempts.append(list(params["InstanceIds"]))
        if unmanaged in params["InstanceIds"]:
            raise ClientError(
                {"Error": {"Code": "InvalidInstanceId", "Message": "Instances not in a valid state"}},
                "SendCommand",
            )

    ssm = aws.commands.session.client("ssm", REGION)
    ssm.meta.events.register("before-parameter-build.ssm.SendCommand", refuse_unmanaged)
    try:
        results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT)
    finally:
        ssm.meta.events.unregister("before-parameter-build.ssm.SendCommand", refuse_unmanaged)
    ids = [m.id for m in machines]
    # All four refused; the good half sent; the half with the culprit refused, then split in ones.
    assert attempts == [ids, ids[:2], ids[2:], ids[2:3], ids[3:]]
    assert isinstance(results[unmanaged], NotFoundError)
    for simulated in served:
        result = results[simulated.id]
        assert not isinstance(result, Exception) and result.ok and result.stdout == f"{simulated.id}\n"


def _recorded(moto: MotoServer, operation: str) -> int:
    """How many ``operation`` requests moto recorded (it records each before handling it)."""
    assert moto.recording is not None
    lines = moto.recording.read_text().splitlines() if moto.recording.exists() else []
    return sum(1 for line in lines if f'"AmazonSSM.{operation}"' in line)


def test_results_fall_back_to_per_instance_reads_where_listing_fails(
    ssm_agent: SsmStandIn, recorded_moto: MotoServer
) -> None:
    """moto answers 500 to ListCommandInvocations: the channel tries it once, then reads each
    instance with GetCommandInvocation (paced reads too), and every result is still right."""
    served = [ssm_agent.create_instance(f"nolist{n}") for n in range(3)]
    machines = [
        Machine(id=s.id, name=s.name, platform=Platform.LINUX, state="running", region=REGION) for s in served
    ]
    options = {
        "endpoint_url": recorded_moto.endpoint, "region": REGION,
        "ssm_output_bucket": "ck-ssm-output", "ssm_poll_interval": 0.2,
    }  # fmt: skip
    fresh = create_aws_provider(KEYS, options)  # its own channel: listing not yet known to fail
    lists, gets = (
        _recorded(recorded_moto, "ListCommandInvocations"),
        _recorded(recorded_moto, "GetCommandInvocation"),
    )
    clock = FakeClock()
    pacer = _pacer(clock, burst=10)
    try:
        results = fresh.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)
        again = fresh.commands.run_many(machines[:2], ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)
    finally:
        fresh.close()

    for simulated in served:
        result = results[simulated.id]
        assert not isinstance(result, Exception) and result.ok and result.stdout == f"{simulated.id}\n"
    assert all(not isinstance(r, Exception) and r.ok for r in again.values())
    # One listing attempt (no botocore retries for it), none for the second command: the region
    # reads per instance for a while. Every read was paced.
    assert _recorded(recorded_moto, "ListCommandInvocations") - lists == 1
    per_instance = _recorded(recorded_moto, "GetCommandInvocation") - gets
    assert per_instance >= 3 + 2
    assert pacer.count("read") == 1 + per_instance and pacer.count("write") == 2


def test_120_instances_in_3_calls_with_results_per_instance(
    aws: AwsProvider, ssm_agent: SsmStandIn, recorded_moto: MotoServer
) -> None:
    ec2 = boto3.client("ec2", endpoint_url=recorded_moto.endpoint, region_name=REGION, **KEYS)
    launched = ec2.run_instances(ImageId="ami-1e749f67", MinCount=120, MaxCount=120, InstanceType="t3.micro")
    ids = [i["InstanceId"] for i in launched["Instances"]]
    served = [
        ssm_agent.lab.create_machine(f"batch{n:03d}", machine_id=i, region=REGION)
        for n, i in enumerate(ids[:119])
    ]
    (served[70].root / "fail").write_text("")
    silent_id = ids[119]  # an instance with no agent: it exists in EC2 (and moto) but nobody answers for it
    machines = [Machine(id=i, name=i, platform=Platform.LINUX, state="running", region=REGION) for i in ids]
    before = {c["CommandId"] for c in _commands_since(recorded_moto, set())}
    clock = FakeClock()
    pacer = _pacer(clock, burst=4)

    # moto says Success at once: past the grace the silent one would read as an empty success
    aws.commands.output_grace_seconds = 60.0
    results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)
    ssm_agent.assert_alive()

    sent = _commands_since(recorded_moto, before)
    assert len(sent) == 3  # ceil(120 / 50) SendCommand calls, not 120
    # one token a call: 3 SendCommand, 1 CancelCommand (the silent one's batch); a 5th would wait
    writes = [region for kind, region in pacer.calls if kind == "write"]
    assert writes == [REGION] * 4 and clock.slept == []
    assert len({c["CommandId"] for c in sent}) == 3
    assert set(results) == {s.id for s in served} | {silent_id}
    for n, simulated in enumerate(served):
        result = results[simulated.id]
        assert not isinstance(result, Exception), result
        if n == 70:
            assert (result.exit_code, result.stderr, result.timed_out) == (7, "broken\n", False)
        else:
            assert result.ok and result.stdout == f"{simulated.id}\n", (simulated.id, result)
    silent = results[silent_id]
    assert not isinstance(silent, Exception) and silent.timed_out and not silent.ok
    # Every instance ran its batch's command once, and only its own (no fan-out to the others).
    batches = {r.command_id for r in results.values() if not isinstance(r, Exception)}
    assert batches == {c["CommandId"] for c in sent}
