"""The consumers' read point reaches a job runner in another server process through the database.

Two server instances on one PostgreSQL: instance A runs the server-queue consumer (a stand-in
backlog: its heartbeat writer's read point is set, as a backed-up queue leaves it), instance B
only dispatches — it runs no consumer, as a runner in another process does not. The server's
clock is injected.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.machine.harness import Harness, MachineHandle
from tests.server.jobs_fakes import fresh_postgres_url

from cloudkeep.config import Settings
from cloudkeep.server import read_point
from cloudkeep.server.clock import use_clock
from cloudkeep.server.consumer import ServerQueueConsumer, server_queue_name
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import ConsumerProgress, DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher

pytestmark = pytest.mark.postgres
NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class _Writer:
    """The consumer's heartbeat writer, reduced to the read point it keeps."""

    def __init__(self, point: datetime) -> None:
        self.read_point: datetime | None = point


@pytest.fixture
def two_servers(tmp_path: Path, postgres: Any) -> Iterator[tuple[Harness, ServerContext, MachineHandle]]:
    with use_clock(lambda: NOW):
        a = Harness.create(tmp_path / "a", heartbeat_timeout=60.0, database_url=fresh_postgres_url(postgres))
        settings = Settings(home=tmp_path / "b", heartbeat_timeout_seconds=60.0,
                            database_url=a.ctx.settings.database_url,
                            master_key_file=a.ctx.settings.effective_master_key_file)  # fmt: skip
        b = open_context(settings)
        machine = a.add_machine("busy")
        with a.ctx.db() as db:
            row = db.get(DiscoveredMachine, machine.row_id)
            assert row is not None
            row.last_heartbeat_at = NOW - timedelta(seconds=150)  # applied before the backlog built up
        yield a, b, machine
        b.close()
        a.close()


def _consumer(a: Harness) -> ServerQueueConsumer:
    queue = a.provider.queues.get_queue(server_queue_name(a.ctx.server_id))
    consumer = ServerQueueConsumer(a.ctx, queue, workers=0, credential_id=a.credential_id)
    consumer.heartbeats = _Writer(NOW - timedelta(seconds=120))  # type: ignore[assignment]
    return consumer


def test_a_runner_in_another_process_gives_the_backlog_grace(
    two_servers: tuple[Harness, ServerContext, MachineHandle],
) -> None:
    a, b, machine = two_servers
    consumer = _consumer(a)
    ticks = iter([0.0, 0.5, 5.0])  # the consumer's monotonic clock at each publish
    runner = Dispatcher(b, clock=lambda: NOW)
    assert runner.choose_channel(machine.row_id).channel != "queue"  # nothing published yet

    consumer.backlogged = True  # A has read the queue only up to 120 s ago: 150 s is 30 s old there
    consumer.publish_read_point(monotonic=lambda: next(ticks))
    choice = runner.choose_channel(machine.row_id)
    assert choice.channel == "queue" and "backlog" in choice.reason

    consumer.backlogged = False  # caught up, but within MIN_INTERVAL_SECONDS: not written yet
    consumer.publish_read_point(monotonic=lambda: next(ticks))
    assert runner.choose_channel(machine.row_id).channel == "queue"
    consumer.publish_read_point(monotonic=lambda: next(ticks))  # 5 s later: written
    assert runner.choose_channel(machine.row_id).channel != "queue"  # the catalog is current: silent


def test_a_stale_report_and_a_process_that_keeps_up_give_no_grace(
    two_servers: tuple[Harness, ServerContext, MachineHandle],
) -> None:
    a, b, _machine = two_servers
    behind = NOW - timedelta(seconds=120)
    read_point.publish(a.ctx, a.credential_id, behind, NOW, holder="a1")
    later = NOW + timedelta(seconds=read_point.FRESH_SECONDS + 1)
    assert read_point.shared(b, a.credential_id, NOW) == behind
    assert read_point.shared(b, a.credential_id, later) is None  # a stopped consumer proves nothing
    assert Dispatcher(b, clock=lambda: later).choose_channel(a.add_machine("other").row_id).channel != "queue"

    ahead = NOW - timedelta(seconds=90)
    read_point.publish(a.ctx, a.credential_id, ahead, NOW, holder="a2")
    assert read_point.shared(b, a.credential_id, NOW) == ahead  # the furthest reader: the least grace
    read_point.publish(a.ctx, a.credential_id, None, NOW, holder="a3")
    assert read_point.shared(b, a.credential_id, NOW) is None  # one consumer keeps up
    read_point.publish(a.ctx, a.credential_id, behind, NOW, holder="a3")
    assert read_point.shared(b, a.credential_id, NOW) == ahead
    with b.db() as db:
        holders = sorted(row.holder for row in db.query(ConsumerProgress))
    assert holders == ["a1", "a2", "a3"]  # one row per process, rewritten in place

    tomorrow = NOW + timedelta(seconds=read_point.FORGET_SECONDS + 1)
    read_point.publish(a.ctx, a.credential_id, None, tomorrow, holder="a4")  # a process started later
    with b.db() as db:
        assert [row.holder for row in db.query(ConsumerProgress)] == ["a4"]  # those long gone are dropped
