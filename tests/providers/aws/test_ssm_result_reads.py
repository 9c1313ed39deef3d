"""SSM results are read per command (ListCommandInvocations), paced, not per instance.

moto cannot make this case: it answers 500 to ListCommandInvocations and says ``Success`` the
moment a command is sent. So a local stand-in for SSM's status reads sits in front of moto
(tests/support/ssm_reads_standin.py): it answers both status reads as real SSM does (InProgress
until the output is in S3), in small pages, and can throttle them; everything else goes to moto,
and the SSM agent stand-in runs the scripts. The fallback to per-instance reads where listing
fails is tested on moto itself (test_ssm_batches.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest

from cloudkeep.providers.aws.facts import FACTS
from cloudkeep.providers.aws.provider import AwsProvider, create_aws_provider
from cloudkeep.providers.base import Machine, Platform
from cloudkeep.providers.facts import ApiRate
from tests.providers.aws.conftest import ECHO_ID_SCRIPT, KEYS
from tests.support.pacing import CountingPacer, FakeClock
from tests.support.peers import MotoServer
from tests.support.ssm_reads_standin import SsmReadsStandIn
from tests.support.ssm_standin import SsmStandIn

pytestmark = [pytest.mark.slow, pytest.mark.moto]
REGION = "us-east-1"
TIMEOUT = 30.0
PAGE = 4  # the stand-in's page size: 6 instances take two pages a listing


@pytest.fixture(scope="module")
def reads(recorded_moto: MotoServer) -> Iterator[SsmReadsStandIn]:
    standin = SsmReadsStandIn(recorded_moto.endpoint, REGION, page_size=PAGE)
    yield standin
    standin.close()


@pytest.fixture
def aws(recorded_moto: MotoServer, reads: SsmReadsStandIn) -> Iterator[AwsProvider]:
    s3 = boto3.client("s3", endpoint_url=recorded_moto.endpoint, region_name=REGION, **KEYS)
    s3.create_bucket(Bucket="ck-ssm-reads")
    options = {
        "endpoint_url": reads.endpoint, "region": REGION,
        "ssm_output_bucket": "ck-ssm-reads", "ssm_poll_interval": 0.1,
    }  # fmt: skip
    provider = create_aws_provider(KEYS, options)
    yield provider
    provider.close()


def _machines(ssm_agent: SsmStandIn, prefix: str, count: int) -> list[Machine]:
    served = [ssm_agent.create_instance(f"{prefix}{n}") for n in range(count)]
    return [
        Machine(id=s.id, name=s.name, platform=Platform.LINUX, state="running", region=REGION) for s in served
    ]


def _pacer(clock: FakeClock, *, reads: ApiRate) -> CountingPacer:
    return CountingPacer(FACTS, clock, write=ApiRate(burst=10, per_second=0.001), read=reads)


def test_a_batch_is_read_with_one_listing_a_round_not_one_read_per_instance(
    aws: AwsProvider, ssm_agent: SsmStandIn, reads: SsmReadsStandIn
) -> None:
    machines = _machines(ssm_agent, "listed", 6)
    (ssm_agent.lab.get(machines[2].id).root / "fail").write_text("")  # type: ignore[union-attr]
    before = dict(reads.requests)
    clock = FakeClock()
    pacer = _pacer(clock, reads=ApiRate(burst=1000, per_second=1000.0))

    results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)
    ssm_agent.assert_alive()

    for n, machine in enumerate(machines):
        result = results[machine.id]
        assert not isinstance(result, Exception), result
        if n == 2:
            assert (result.exit_code, result.stderr) == (7, "broken\n")
        else:
            assert result.ok and result.stdout == f"{machine.id}\n", result
    listings = reads.requests["ListCommandInvocations"] - before.get("ListCommandInvocations", 0)
    gets = reads.requests["GetCommandInvocation"] - before.get("GetCommandInvocation", 0)
    assert gets == 0  # never one read per instance
    # Two pages a round (6 instances, pages of 4), a round every 2 s at most: the script takes
    # well under the timeout, so a handful of rounds, each a paced read per page.
    assert listings >= 2 and listings % 2 == 0 and listings <= 2 * (TIMEOUT / 2 + 1)
    assert pacer.count("read") == listings and pacer.count("write") == 1


def test_status_reads_take_read_tokens_and_wait_for_them(
    aws: AwsProvider, ssm_agent: SsmStandIn, reads: SsmReadsStandIn
) -> None:
    """With a read budget of one token and one every 10 s, each listing page waits its turn
    (on the pacer's clock, which moves only when the pacer sleeps)."""
    machines = _machines(ssm_agent, "budget", 6)
    clock = FakeClock()
    pacer = _pacer(clock, reads=ApiRate(burst=1, per_second=0.1))

    results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)

    assert all(not isinstance(r, Exception) and r.ok for r in results.values()), results
    pages = pacer.count("read")
    assert pages >= 2 and clock.slept  # the first page took the burst; every later one waited
    assert clock.now - 1000.0 == pytest.approx((pages - 1) * 10.0)


def test_a_throttled_listing_backs_off_and_is_read_again(
    aws: AwsProvider, ssm_agent: SsmStandIn, reads: SsmReadsStandIn
) -> None:
    machines = _machines(ssm_agent, "throttled", 3)
    clock = FakeClock()
    pacer = _pacer(clock, reads=ApiRate(burst=1000, per_second=1000.0))
    before = reads.requests["ListCommandInvocations"]
    reads.throttle_next(2)  # SSM refuses the first two status reads: ThrottlingException

    results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=pacer)

    assert all(not isinstance(r, Exception) and r.ok for r in results.values()), results
    assert pacer.throttled == 2
    assert clock.slept[:2] == [pytest.approx(1.0, abs=0.01), pytest.approx(2.0, abs=0.01)]  # doubling backoff
    # The listing stays in use (throttling is no reason to read per instance).
    assert reads.requests["ListCommandInvocations"] - before >= 3
    assert reads.requests["GetCommandInvocation"] == 0


def test_a_command_not_yet_listed_is_read_again_not_given_up_on(
    aws: AwsProvider, ssm_agent: SsmStandIn, reads: SsmReadsStandIn
) -> None:
    """Right after SendCommand SSM may not know the command yet (InvalidCommandId): that is no
    reason to stop listing and read each instance."""
    machines = _machines(ssm_agent, "unknown", 3)
    before = dict(reads.requests)
    reads.unknown_next(1)

    results = aws.commands.run_many(machines, ECHO_ID_SCRIPT, timeout=TIMEOUT, pacer=None)

    assert all(not isinstance(r, Exception) and r.ok for r in results.values()), results
    assert reads.requests["ListCommandInvocations"] - before.get("ListCommandInvocations", 0) >= 2
    assert reads.requests["GetCommandInvocation"] == before.get("GetCommandInvocation", 0)
