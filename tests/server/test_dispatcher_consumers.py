"""Competing server-queue consumers in separate processes apply every result exactly once.

Two consumer processes (two worker threads each) share the server queue and the state store;
every result is on the queue twice (a redelivery), plus heartbeats and progress messages.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.machine.harness import PROJECT_ROOT, Harness, wait_for

from cloudkeep.machine.handlers import progress_body, sign_report, sign_result
from cloudkeep.machine.keys import AgentKeys
from cloudkeep.server.db.models import CommandRecord

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    url = request.getfixturevalue("postgres").url if request.param == "postgresql" else None
    h = Harness.create(tmp_path, database_url=url)
    yield h
    h.close()


COMMANDS = 150

CONSUMER = """
import json, sys, time
from cloudkeep.config import Settings
from cloudkeep.server.context import open_context
from cloudkeep.server.consumer import ServerQueueConsumer, server_queue_name
ctx = open_context(Settings(home=sys.argv[1], database_url=sys.argv[4] or None))
provider = ctx.provider_for(sys.argv[2])
consumer = ServerQueueConsumer(ctx, provider.queues.get_queue(server_queue_name(ctx.server_id)), workers=2,
                               wait_seconds=0.5).start()
deadline = time.monotonic() + 120
while time.monotonic() < deadline and not __import__("os").path.exists(sys.argv[3]):
    time.sleep(0.1)
consumer.stop()
print(json.dumps(consumer.counts))
"""


def test_two_consumer_processes_apply_each_result_exactly_once(harness: Harness, tmp_path: Path) -> None:
    machine = harness.add_machine("busy")
    keys = AgentKeys.load(machine.config.state_dir)
    ids = []
    with harness.ctx.db() as session:
        for n in range(COMMANDS):
            record = CommandRecord(id=f"{n:032x}", machine_id=machine.row_id, kind="ping", channel="queue")
            session.add(record)
            ids.append(record.id)
    queue = harness.server_queue()
    for command_id in ids:
        queue.send(sign_report(machine.config, keys, "progress", progress_body(command_id, {"bytes_read": 1}),
                               correlation_id=command_id))  # fmt: skip
        result = sign_result(
            machine.config, keys, {"command_id": command_id, "ok": True, "payload": {"n": 1}}
        )
        queue.send(result)
        queue.send(result)  # delivered twice
    stop_file = tmp_path / "stop"
    argv = [
        sys.executable,
        "-c",
        CONSUMER,
        str(harness.ctx.settings.home),
        harness.credential_id,
        str(stop_file),
        harness.ctx.settings.database_url or "",
    ]
    procs = [
        subprocess.Popen(argv, cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]

    def all_done() -> bool:
        with harness.ctx.db() as session:
            done = session.scalar(select(func.count()).where(CommandRecord.state == "done"))
        return done == COMMANDS and queue.approximate_count() == 0

    try:
        wait_for(all_done, timeout=120, poll=0.2, what="every result applied and the queue drained")
    finally:
        stop_file.touch()
        outputs = [p.communicate(timeout=60) for p in procs]
        for proc, (_, err) in zip(procs, outputs, strict=True):
            assert proc.returncode == 0, err[-3000:]
    counts = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert all(c for c in counts), (
        f"both consumers must have worked: {counts} {[e[-500:] for _, e in outputs]}"
    )
    total = {
        k: sum(c.get(k, 0) for c in counts)
        for k in ("applied", "duplicate", "late-progress", "stale-progress")
    }
    assert total["duplicate"] == COMMANDS  # the second copy of every result changed nothing
    # every result applied once, and each progress message either applied or (after its result) ignored
    assert total["applied"] + total["late-progress"] + total["stale-progress"] == 2 * COMMANDS
    assert sum(c.get("rejected", 0) + c.get("error", 0) for c in counts) == 0
    with harness.ctx.db() as session:
        rows = session.scalars(select(CommandRecord).where(CommandRecord.machine_id == machine.row_id)).all()
    assert {r.state for r in rows} == {"done"} and all(
        r.result and r.result["payload"] == {"n": 1} for r in rows
    )
