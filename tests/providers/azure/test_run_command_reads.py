"""Every ARM call of a managed Run Command is paced: create and delete as writes, each read of
its instance view as a read; the SDK's own long-running-operation polling (reads the pacer would
not see) is off. Served by the ARM stand-in (no emulator covers ARM), output blobs on Azurite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.azure.facts import FACTS
from cloudkeep.providers.azure.provider import AzureProvider, create_azure_provider
from cloudkeep.providers.base import Machine
from cloudkeep.providers.facts import ApiRate
from tests.support.arm_standin import ArmStandIn
from tests.support.pacing import CountingPacer, FakeClock
from tests.support.peers import Azurite

T = TypeVar("T")
SLOW = "sleep 0.5; echo done"  # long enough for several instance-view reads at 0.05 s


@pytest.fixture
def unretried(arm_standin: ArmStandIn, azurite: Azurite) -> Iterator[AzureProvider]:
    """No SDK retries: a 429 reaches the pacer at once (it backs off on its own clock)."""
    options = arm_standin.provider_options(storage_connection_string=azurite.connection_string, retry_total=0)
    provider = create_azure_provider(arm_standin.credential(), options)
    yield provider
    provider.close()


def _machine(azure: AzureProvider, arm_standin: ArmStandIn, name: str) -> Machine:
    machine = azure.inventory.get_machine(arm_standin.create_vm(name).id)
    assert machine is not None
    return machine


def _requests(arm_standin: ArmStandIn, machine: Machine, command: str | None) -> list[str]:
    path = f"{machine.id}/runCommands/{command}"
    return [method for method, p in arm_standin.requests if p == path]


def test_every_arm_call_of_a_run_command_takes_a_token(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    machine = _machine(azure, arm_standin, "paced1")
    clock = FakeClock()
    pacer = CountingPacer(FACTS, clock)

    result = azure.commands.run(machine, SLOW, timeout=60, pacer=pacer)

    assert result.ok and result.stdout == "done\n"
    methods = _requests(arm_standin, machine, result.command_id)
    assert methods[0] == "PUT" and methods[-1] == "DELETE" and methods.count("PUT") == 1
    reads = methods.count("GET")
    assert reads >= 2  # Pending/Running at first, then Succeeded
    # Nothing unpaced: the SDK polled nothing, each GET is one read token, PUT and DELETE writes.
    assert pacer.count("read") == reads and pacer.count("write") == 2
    assert {region for _, region in pacer.calls} == {machine.region}


def test_instance_view_reads_wait_for_read_tokens(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    """A read budget of one token and one every 4 s: each read after the first waits 4 s on the
    pacer's clock (which moves only when the pacer sleeps); the writes' budget is untouched."""
    machine = _machine(azure, arm_standin, "paced2")
    clock = FakeClock()
    pacer = CountingPacer(FACTS, clock, read=ApiRate(burst=1, per_second=0.25))

    result = azure.commands.run(machine, SLOW, timeout=60, pacer=pacer)

    assert result.ok
    reads = pacer.count("read")
    assert reads >= 2 and clock.now - 1000.0 == pytest.approx((reads - 1) * 4.0)


class ThrottledReads(CountingPacer):
    """Makes ARM refuse the first ``refusals`` instance-view reads with 429, as a subscription over
    its read budget is answered."""

    def __init__(self, arm_standin: ArmStandIn, clock: FakeClock, refusals: int) -> None:
        super().__init__(FACTS, clock)
        self.arm_standin, self.refusals = arm_standin, refusals

    def call(self, kind: str, region: str, action: Callable[[], T]) -> T:
        def refused_first() -> T:
            if kind == "read" and self.refusals:
                self.refusals -= 1
                self.arm_standin.fail_next(1, 429)
            return action()

        return super().call(kind, region, refused_first)


def test_a_throttled_instance_view_read_backs_off_and_reads_again(
    unretried: AzureProvider, arm_standin: ArmStandIn
) -> None:
    machine = _machine(unretried, arm_standin, "throttled1")
    clock = FakeClock()
    pacer = ThrottledReads(arm_standin, clock, refusals=2)

    result = unretried.commands.run(machine, "echo fine", timeout=60, pacer=pacer)

    assert result.ok and result.stdout == "fine\n"
    assert pacer.throttled == 2
    # paused 1 s, then 2 s, each followed by the time to earn one read token (1/25 s)
    assert clock.slept[:2] == [pytest.approx(1.0 + 0.04), pytest.approx(2.0 + 0.04)]
    assert _requests(arm_standin, machine, result.command_id)[-1] == "DELETE"  # cleaned up all the same


def test_a_run_command_that_fails_to_provision_is_an_error_and_deleted(
    azure: AzureProvider, arm_standin: ArmStandIn
) -> None:
    """With the SDK's polling off, the instance-view reads see the failed provisioning: a clear
    error at once (not a wait until the timeout), and the run command is still deleted."""
    machine = _machine(azure, arm_standin, "noagent1")
    arm_standin.broken_agents.add("noagent1")
    pacer = CountingPacer(FACTS, FakeClock())

    with pytest.raises(CloudkeepError, match="provisioning failed"):
        azure.commands.run(machine, "echo never", timeout=600, pacer=pacer)

    assert azure.commands.managed_command_count(machine) == 0
    assert pacer.count("write") == 2  # create, then delete
