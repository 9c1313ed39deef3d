"""Pacing of cloud API calls (server/pacing.py) on an injected clock: no real sleeping."""

from __future__ import annotations

import pytest
from tests.support.pacing import FakeClock

from cloudkeep.errors import ThrottledError
from cloudkeep.providers.aws.facts import FACTS as AWS
from cloudkeep.providers.azure.facts import FACTS as AZURE
from cloudkeep.providers.facts import ApiRate
from cloudkeep.providers.local.facts import FACTS as LOCAL
from cloudkeep.server.pacing import ApiPacer, TokenBucket


def test_a_bucket_allows_its_burst_then_the_refill_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(ApiRate(burst=250, per_second=25), clock=clock, sleep=clock.sleep)
    for _ in range(250):
        assert bucket.take() == 0.0
    started = clock.now
    for _ in range(100):
        bucket.take()
    assert clock.now - started == pytest.approx(100 / 25)  # 4 s for 100 more calls
    clock.now += 3600  # idle: the bucket refills, but never beyond its burst
    for _ in range(250):
        assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(1 / 25)


def test_a_pause_stops_every_caller_then_the_rate_resumes() -> None:
    clock = FakeClock()
    bucket = TokenBucket(ApiRate(burst=10, per_second=10), clock=clock, sleep=clock.sleep)
    bucket.pause(5.0)  # throttled: nothing for 5 s, and the saved-up burst is gone
    started = clock.now
    bucket.take()
    assert clock.now - started == pytest.approx(5.0 + 0.1)
    bucket.take()
    assert clock.now - started == pytest.approx(5.0 + 0.2)


def test_throttling_backs_off_doubling_then_succeeds() -> None:
    clock = FakeClock()
    pacer = ApiPacer(AZURE, clock=clock, sleep=clock.sleep, first_backoff=1.0)
    answers: list[BaseException | str] = [ThrottledError("429"), ThrottledError("429"), "ran"]

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    started = clock.now
    assert pacer.call("write", "westeurope", call) == "ran"
    assert pacer.throttled == 2
    # paused 1 s, then 2 s, each followed by the time to earn one write token (1/10 s)
    assert clock.now - started == pytest.approx(1.0 + 0.1 + 2.0 + 0.1)


def test_throttling_that_never_ends_raises_after_the_retries() -> None:
    clock = FakeClock()
    pacer = ApiPacer(AWS, clock=clock, sleep=clock.sleep, retries=3, first_backoff=1.0, max_backoff=2.0)
    calls = 0

    def call() -> None:
        nonlocal calls
        calls += 1
        raise ThrottledError("ThrottlingException")

    with pytest.raises(ThrottledError):
        pacer.call("read", "eu-west-1", call)
    assert calls == 4 and pacer.throttled == 4


def test_scopes_follow_the_provider_facts() -> None:
    clock = FakeClock()
    aws = ApiPacer(AWS, clock=clock, sleep=clock.sleep)
    azure = ApiPacer(AZURE, clock=clock, sleep=clock.sleep)
    # EC2/SSM count per region; Azure Resource Manager per subscription (every region shares it)
    assert aws.bucket("write", "eu-west-1") is not aws.bucket("write", "us-east-1")
    assert azure.bucket("write", "westeurope") is azure.bucket("write", "eastus")
    assert aws.bucket("read", "eu-west-1") is not aws.bucket("write", "eu-west-1")
    # a local lab has no published limits: not paced, and throttling (never seen there) still retried
    local = ApiPacer(LOCAL, clock=clock, sleep=clock.sleep)
    assert local.bucket("write", "") is None
    for _ in range(10_000):
        local.call("write", "", lambda: None)
    assert clock.slept == []


def test_aws_writes_are_paced_to_five_a_second_after_the_burst() -> None:
    clock = FakeClock()
    pacer = ApiPacer(AWS, clock=clock, sleep=clock.sleep)
    for _ in range(200 + 50):
        pacer.call("write", "eu-west-1", lambda: None)
    assert clock.now - 1000.0 == pytest.approx(50 / 5)
