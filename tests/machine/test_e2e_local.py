"""End to end on the local provider: real machine-service subprocesses, the SQLite queue, the dispatcher."""

from __future__ import annotations

import pytest

from cloudkeep.server.dispatcher import CommandFailed, Dispatcher, ensure_consumers
from tests.machine.harness import Harness, wait_for

pytestmark = pytest.mark.slow


def test_ping_and_run_script_round_trip_through_the_queues(harness: Harness) -> None:
    machine = harness.add_machine("web1")
    ensure_consumers(harness.ctx, workers=2)
    machine.start()
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)

    pong = dispatcher.call(machine.row_id, "ping", {}, timeout=30)
    assert pong["services"]["message-service"]["state"] == "running"

    command_id = dispatcher.send(
        machine.row_id, "run_script", {"script": "echo hello; pwd; echo oops >&2; exit 3"}
    )
    result = dispatcher.wait(command_id, timeout=30)
    assert result["exit_code"] == 3
    assert result["stdout"].splitlines() == ["hello", str(machine.sim.root)]
    assert result["stderr"] == "oops\n"
    assert harness.record(command_id).channel == "queue"
    assert harness.record(command_id).state == "done"


def test_failure_is_reported_not_raised_inside_the_service(harness: Harness) -> None:
    machine = harness.add_machine("web2")
    ensure_consumers(harness.ctx)
    machine.start()
    machine.start("agent")
    wait_for(lambda: harness.heartbeat_age(machine) is not None, what="first heartbeat")
    dispatcher = Dispatcher(harness.ctx)
    # check needs the engine and a sealed repository; without sealed secrets it fails cleanly
    command_id = dispatcher.send(machine.row_id, "check", {})
    with pytest.raises(CommandFailed, match="no sealed secrets"):
        dispatcher.wait(command_id, timeout=30)
