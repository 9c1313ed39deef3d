"""The fleet simulator keeps working: 100 simulated agents through one real backup job (≤ 20 s).

Real server side (SQLite context, local queue provider, dispatcher, consumers, session runner,
catalog, retention planning); the agents are ``tests/support/fleet.py``'s in-process stand-ins
that speak the signed protocol but read no files (see that module's docstring).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.server.jobs_fakes import World, build_world, make_context
from tests.support.fleet import SimulatedFleet, wait_until

from cloudkeep.server.consumer import server_queue_name
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import (
    CommandRecord,
    DiscoveredMachine,
    JobSession,
    ProtectionGroup,
    RestorePoint,
)
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers, stop_consumers
from cloudkeep.server.jobs import start_job

AGENTS = 100  # ~60 ms of server + simulator CPU each: the test stays well under 20 s


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ServerContext]:
    context = make_context(tmp_path)
    yield context
    stop_consumers()
    context.close()


def _fleet(ctx: ServerContext, world: World) -> SimulatedFleet:
    with ctx.db() as db:
        group = db.get(ProtectionGroup, world.group_id)
        assert group is not None
        credential_id = group.credential_id
    provider = ctx.provider_for(credential_id)
    provider.queues.ensure_queue(server_queue_name(ctx.server_id))
    return SimulatedFleet.register(ctx, provider, world.group_id, AGENTS)


def test_a_hundred_agents_heartbeat_then_back_up_through_one_job(ctx: ServerContext, tmp_path: Path) -> None:
    world = build_world(ctx, tmp_path / "lab", machines=0)
    fleet = _fleet(ctx, world)
    ensure_consumers(ctx, workers=2)
    fleet.heartbeat_all()

    def beating() -> bool:
        stmt = select(func.count()).where(DiscoveredMachine.last_heartbeat_at.is_not(None))
        with ctx.db() as db:
            return db.scalar(stmt) == AGENTS

    wait_until(beating, timeout=15, what="every agent's heartbeat applied")
    # No retention: forget and prune run on the server against the repository (docs/security.md),
    # and the simulated agents write no data there; the control plane is what this measures.
    job_id = world.add_job(options={"parallel_machines": 32, "poll_slice_seconds": 1})
    fleet.start(threads=2, idle_seconds=0.02)
    try:
        session_id = start_job(ctx, job_id, wait=True, dispatcher=Dispatcher(ctx))
    finally:
        fleet.stop()
    with ctx.db() as db:
        session = db.get(JobSession, session_id)
        assert session is not None
        assert (session.state, session.reason) == ("success", f"{AGENTS} machine(s) backed up")
        grouped = db.execute(select(CommandRecord.kind, func.count()).group_by(CommandRecord.kind))
        kinds = {kind: int(n) for kind, n in grouped}
        # every command went through the agents' queues and was answered
        assert db.scalar(select(func.count()).where(CommandRecord.channel != "queue")) == 0
        assert db.scalar(select(func.count()).where(CommandRecord.state != "done")) == 0
        live = db.scalar(select(func.count()).where(RestorePoint.removed_at.is_(None)))
        total = db.scalar(select(func.count()).select_from(RestorePoint))
    # one backup per machine, each recorded as a restore point
    assert kinds == {"backup": AGENTS}
    assert fleet.counts.by_kind == kinds and fleet.counts.rejected == 0
    assert (total, live) == (AGENTS, AGENTS)
    assert all(agent.backups == 1 for agent in fleet)


def test_the_simulator_receives_only_from_queues_that_hold_a_visible_message(
    ctx: ServerContext, tmp_path: Path
) -> None:
    """At 20,000 agents a receive from every queue each round cost more CPU than the server;
    ``ready`` names the queues worth a receive in one read of the local queue file."""
    world = build_world(ctx, tmp_path / "lab", machines=0)
    fleet = _fleet(ctx, world)
    agents = fleet.agents
    assert fleet.ready(agents) == []
    agents[3].queue.send("a")
    agents[7].queue.send("b", delay_seconds=600)  # not visible yet: no receive for it
    agents[9].queue.send("c")
    assert fleet.ready(agents) == [agents[3], agents[9]]
    assert fleet.ready(agents[:5]) == [agents[3]]  # a thread's shard: only its own agents
    (taken,) = agents[3].queue.receive(max_messages=1, visibility_timeout=600)
    assert fleet.ready(agents) == [agents[9]]  # in flight, so not visible
    agents[3].queue.ack(taken)
    assert fleet.sweep(agents) == 1 and fleet.counts.rejected == 1  # "c" is no signed command
    assert fleet.ready(agents) == []
