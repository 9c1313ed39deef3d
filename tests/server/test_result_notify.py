"""A result applied by another server process wakes this process's waiter through PostgreSQL
LISTEN/NOTIFY, not through polling its command row; SQLite keeps the in-process wake and short poll.

The other process is real (a subprocess opening its own context on the same database and applying a
machine-signed result through the consumer's path); the PostgreSQL server is the one the tests start.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.machine.harness import Harness, MachineHandle
from tests.server.jobs_fakes import fresh_postgres_url
from tests.support.fleet import wait_until

from cloudkeep.machine.keys import AgentKeys
from cloudkeep.protocol import make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Result
from cloudkeep.server import result_notify
from cloudkeep.server.db.models import CommandRecord
from cloudkeep.server.dispatcher import Dispatcher

APPLY_ELSEWHERE = """
import sys
from cloudkeep.config import Settings
from cloudkeep.server.consumer import apply_report
from cloudkeep.server.machine_keys import report_validator
from cloudkeep.server.context import open_context
home, url, body = sys.argv[1], sys.argv[2], sys.stdin.read()
ctx = open_context(Settings(home=home, database_url=url))
print(apply_report(ctx, report_validator(ctx).validate(body)))
ctx.close()
"""


@pytest.fixture
def pg_harness(tmp_path: Path, postgres: Any) -> Iterator[Harness]:
    h = Harness.create(tmp_path, database_url=fresh_postgres_url(postgres))
    yield h
    h.close()  # stops the listener too (``stop_consumers``)


def _open_command(harness: Harness, machine: MachineHandle, command_id: str) -> None:
    with harness.ctx.db() as session:
        session.add(CommandRecord(id=command_id, machine_id=machine.row_id, kind="backup", channel="queue"))


def _result(harness: Harness, machine: MachineHandle, command_id: str) -> str:
    envelope = make_envelope(
        "result", Result(command_id=command_id, ok=True, payload={"files": 3}), sender=machine.row_id,
        recipient=harness.ctx.server_id, ttl=600,
    )  # fmt: skip
    return sign_envelope(envelope, AgentKeys.load(machine.config.state_dir).signing)


@pytest.mark.postgres
def test_a_result_applied_in_another_process_wakes_the_waiter(
    pg_harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Polling alone would take 120 s here: only a notification can end the wait sooner.
    monkeypatch.setattr(result_notify, "SAFETY_POLL_SECONDS", 120.0)
    machine = pg_harness.add_machine("m")
    _open_command(pg_harness, machine, "cmd-1")
    listener = result_notify.listener_for(pg_harness.ctx)
    assert listener is not None
    wait_until(listener.listening.is_set, timeout=30, what="the listener to LISTEN")
    assert result_notify.wait_poll(pg_harness.ctx, 0.2) == 120.0

    outcome: dict[str, Any] = {}

    def wait() -> None:
        outcome["payload"] = Dispatcher(pg_harness.ctx).wait("cmd-1", timeout=110)
        outcome["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    home = pg_harness.ctx.settings.home
    applied = subprocess.run(
        [sys.executable, "-c", APPLY_ELSEWHERE, str(home), pg_harness.ctx.settings.effective_database_url],
        input=_result(pg_harness, machine, "cmd-1"), capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    done = time.monotonic()
    assert applied.stdout.strip() == "applied", applied.stderr
    waiter.join(timeout=60)
    assert not waiter.is_alive(), "the waiter was not woken"
    assert outcome["payload"] == {"files": 3}
    assert outcome["at"] - done < 30  # woken, not polled (the poll would come after 120 s)
    assert listener.woken >= 1


def test_sqlite_has_no_listener_and_keeps_the_short_poll(tmp_path: Path) -> None:
    h = Harness.create(tmp_path)
    try:
        assert result_notify.listener_for(h.ctx) is None
        assert result_notify.wait_poll(h.ctx, 0.2) == 0.2
    finally:
        h.close()
