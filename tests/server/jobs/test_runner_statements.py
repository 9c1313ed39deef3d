"""The database work per machine of one backup job stays bounded (issue 18, docs/scale.md).

Counted on 50 machines of the fleet simulator (real SQLite context, local queue provider,
dispatcher, consumers, session runner; the agents are ``tests/support/fleet.py``'s in-process
stand-ins, periodic heartbeats off), every thread's statements included. The result wait
(``commands.await_result``: the command row and the stop flag, read as often as the timing
allows, 4-6 times) is counted apart and bounded loosely; the rest is the work per machine:

    before: 36.0 statements in 18.8 transactions per machine, 31.5 in 14.3 outside the wait
    after:  28.7 statements in 14.5 transactions per machine, 23.4 in 9.2 outside the wait

PostgreSQL (the test peer) counts the same outside the wait (31.5/14.3 → 23.2/9.3).

(the runner starts a task in one transaction and ends it, statistics included, in one; the pin's
notes go with the restore point; GFS flags already so are not re-read; the consumers read the
command row once; the dispatcher reads machine and credential in one statement.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.server.jobs_fakes import build_world, fresh_postgres_url, make_context
from tests.support.fleet import SimulatedFleet, wait_until
from tests.support.sqlcount import StatementCounter

from cloudkeep.server.consumer import server_queue_name
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine, JobSession, ProtectionGroup, SessionTask
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers, stop_consumers
from cloudkeep.server.jobs import start_job

MACHINES = 50
MAX_STATEMENTS = 25.0  # per machine, outside the result wait
MAX_TRANSACTIONS = 10.5
MAX_WAITING = 20.0  # statements per machine in the result wait: only a busy loop would pass this


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def ctx(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerContext]:
    url = fresh_postgres_url(request.getfixturevalue("postgres")) if request.param == "postgresql" else None
    context = make_context(tmp_path, url)
    yield context
    stop_consumers()
    context.close()


def test_one_job_costs_a_bounded_number_of_statements_per_machine(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=0)
    with ctx.db() as db:
        group = db.get(ProtectionGroup, world.group_id)
        assert group is not None
        provider = ctx.provider_for(group.credential_id)
    provider.queues.ensure_queue(server_queue_name(ctx.server_id))
    fleet = SimulatedFleet.register(ctx, provider, world.group_id, MACHINES)
    ensure_consumers(ctx, workers=2)
    fleet.heartbeat_all()

    def beating() -> bool:
        stmt = select(func.count()).where(DiscoveredMachine.last_heartbeat_at.is_not(None))
        with ctx.db() as db:
            return db.scalar(stmt) == MACHINES

    wait_until(beating, timeout=15, what="every agent's heartbeat applied")
    job_id = world.add_job(options={"parallel_machines": 16, "poll_slice_seconds": 1})
    fleet.start(threads=2, idle_seconds=0.02)
    try:
        with StatementCounter(ctx.engine, waiting=("commands.await_result",)) as counted:
            session_id = start_job(ctx, job_id, wait=True, dispatcher=Dispatcher(ctx))
    finally:
        fleet.stop()
        provider.close()
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        assert (session.state, session.reason) == ("success", f"{MACHINES} machine(s) backed up")
        tasks = db.scalars(select(SessionTask).where(SessionTask.session_id == session_id)).all()
    # what the merged writes must still leave on every task
    for task in tasks:
        assert task.state == "success" and task.started_at and task.ended_at and task.progress == 1.0
        assert task.command_id and task.stats["snapshot_id"] and task.bytes_read and task.files
        assert [entry["message"].split(" ", 1)[0] for entry in task.log] == [
            "backing", "backup", "restore", "restore"
        ]  # fmt: skip
    statements = (counted.statements - counted.waiting_statements) / MACHINES
    transactions = (counted.transactions - counted.waiting_transactions) / MACHINES
    assert statements <= MAX_STATEMENTS, f"{statements:.1f} statements per machine"
    assert transactions <= MAX_TRANSACTIONS, f"{transactions:.1f} transactions per machine"
    assert 0 < counted.waiting_statements / MACHINES <= MAX_WAITING
