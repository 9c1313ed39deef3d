"""Commands that fall back to the cloud's command channel are paced with the account's pacer.

Real server context (SQLite), real dispatcher, local provider: the machine has never sent a
heartbeat, so every command takes the fallback (``cloudkeep.machine exec`` through the local
command channel). The dispatcher's pacer is the test's: the server's ``ApiPacer`` on a clock that
moves only when it sleeps, with a write budget small enough to see each command wait its turn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from tests.machine.harness import Harness, MachineHandle
from tests.support.pacing import CountingPacer, FakeClock, ThrottledOnce

from cloudkeep.providers.aws.facts import FACTS as AWS
from cloudkeep.providers.facts import ApiRate, ProviderFacts
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher
from cloudkeep.server.pacing import pacer_for

pytestmark = pytest.mark.slow
T = TypeVar("T")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Harness, MachineHandle]]:
    harness = Harness.create(tmp_path)
    yield harness, harness.add_machine("silent")
    harness.close()


def _set_region(harness: Harness, machine: MachineHandle, region: str) -> None:
    with harness.ctx.db() as db:
        row = db.get(DiscoveredMachine, machine.row_id)
        assert row is not None
        row.region = region


def _dispatcher(harness: Harness, pacer: CountingPacer) -> Dispatcher:
    def pacers(credential_id: str, facts: ProviderFacts) -> CountingPacer:
        assert credential_id == harness.credential_id
        return pacer

    return Dispatcher(harness.ctx, pacers=pacers)


def test_fallback_commands_wait_for_the_accounts_write_tokens(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    _set_region(harness, machine, "lab-1")
    clock = FakeClock()
    # one write at once, then one every 10 s (on the fake clock)
    pacer = CountingPacer(harness.provider.facts, clock, write=ApiRate(burst=1, per_second=0.1))
    dispatcher = _dispatcher(harness, pacer)

    first = dispatcher.call(machine.row_id, "run_script", {"script": "echo one"}, timeout=60)
    second = dispatcher.call(machine.row_id, "run_script", {"script": "echo two"}, timeout=60)

    assert (first["stdout"], second["stdout"]) == ("one\n", "two\n")
    assert pacer.calls == [("write", "lab-1"), ("write", "lab-1")]  # the region from the catalog
    assert clock.slept == [pytest.approx(10.0)]  # the second command waited for its token


def test_a_machine_recorded_without_region_is_looked_up_with_a_paced_read(
    world: tuple[Harness, MachineHandle],
) -> None:
    harness, machine = world
    clock = FakeClock()
    rates = {"write": ApiRate(burst=5, per_second=1.0), "read": ApiRate(burst=5, per_second=1.0)}
    pacer = CountingPacer(harness.provider.facts, clock, **rates)

    result = _dispatcher(harness, pacer).call(machine.row_id, "run_script", {"script": "echo hi"}, timeout=60)

    assert result["stdout"] == "hi\n"
    region = machine.sim.info()["region"]
    assert pacer.calls == [("read", ""), ("write", region)]


def test_a_throttled_fallback_start_backs_off_and_runs_once(world: tuple[Harness, MachineHandle]) -> None:
    harness, machine = world
    _set_region(harness, machine, "lab-1")
    clock = FakeClock()
    pacer = ThrottledOnce(harness.provider.facts, clock, write=ApiRate(burst=10, per_second=1.0))
    marker = machine.sim.root / "ran.log"

    result = _dispatcher(harness, pacer).call(
        machine.row_id, "run_script", {"script": f"echo once >> {marker}; echo ok"}, timeout=60
    )

    assert result["stdout"] == "ok\n" and marker.read_text() == "once\n"  # retried, run once
    assert pacer.throttled == 1 and clock.slept and clock.slept[0] >= 1.0


def test_by_default_fallbacks_share_the_pacer_rescan_uses(world: tuple[Harness, MachineHandle]) -> None:
    harness, _ = world
    pacers = Dispatcher(harness.ctx).pacers
    assert pacers(harness.credential_id, AWS) is pacer_for(harness.credential_id, AWS)
