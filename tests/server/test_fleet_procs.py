"""The fleet simulator and the server's consumers in processes of their own (issue 18): 60 agents in
2 simulator processes, the consumers in 2 server processes, one real job from this process.

Real PostgreSQL (the test peer), the local queue provider shared by all processes, the signed
protocol; the results are applied in the consumer processes, so this process's waiters are woken
through LISTEN/NOTIFY (``result_notify``), never by a result applied here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests.server.jobs_fakes import build_world, fresh_postgres_url, make_context
from tests.support.fleet import wait_until
from tests.support.fleet_procs import ConsumerProcs, SimulatorProcs

from cloudkeep.server import result_notify
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine, JobSession, RestorePoint
from cloudkeep.server.dispatcher import Dispatcher, stop_consumers
from cloudkeep.server.jobs import start_job

AGENTS = 60

pytestmark = pytest.mark.postgres


@pytest.fixture
def ctx(tmp_path: Path, postgres: Any) -> Iterator[ServerContext]:
    context = make_context(tmp_path, fresh_postgres_url(postgres))
    yield context
    stop_consumers()
    context.close()


def test_agents_and_consumers_in_their_own_processes_run_a_job(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=0)
    simulators = SimulatorProcs(ctx, world.group_id, AGENTS, procs=2)
    consumers = ConsumerProcs(ctx, procs=2, workers=2)
    try:
        assert simulators.started == [30, 30]
        listener = result_notify.listener_for(ctx)
        assert listener is not None
        wait_until(listener.listening.is_set, timeout=30, what="this process to LISTEN")
        simulators.heartbeat_all()
        consumers.start()

        def beating() -> bool:
            with ctx.db() as db:
                stmt = select(func.count()).where(DiscoveredMachine.last_heartbeat_at.is_not(None))
                return db.scalar(stmt) == AGENTS

        wait_until(beating, timeout=60, what="every heartbeat applied by the consumer processes")
        job_id = world.add_job(options={"parallel_machines": 16, "poll_slice_seconds": 2})
        simulators.start(threads=2, idle_seconds=0.02)
        session_id = start_job(ctx, job_id, wait=True, dispatcher=Dispatcher(ctx))
        counts = simulators.counts
        cpu, rss = consumers.usage()
    finally:
        simulators.close()
        consumers.close()
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        assert (session.state, session.reason) == ("success", f"{AGENTS} machine(s) backed up")
        assert db.scalar(select(func.count()).where(CommandRecord.channel != "queue")) == 0
        assert db.scalar(select(func.count()).where(CommandRecord.state != "done")) == 0
        assert db.scalar(select(func.count()).select_from(RestorePoint)) == AGENTS
    assert counts.by_kind == {"backup": AGENTS} and counts.rejected == 0
    assert listener.woken >= AGENTS  # every result was applied in another process and announced
    assert cpu > 0 and rss > 0
