"""Step 7: confirm through the queues that the machine's services answer.

First the message service's heartbeat must reach the server queue (sent at start, signed with
the agent key registered just before), then a ``ping`` goes to the agent queue and its signed
result must come back on the server queue. The dispatcher records the channel it used; anything
but ``queue`` means the queues do not work yet, and the step fails with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cloudkeep.errors import CloudkeepError
from cloudkeep.protocol.bodies import PingResult
from cloudkeep.providers.base import Machine
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine
from cloudkeep.server.dispatcher import Dispatcher, ensure_consumers
from cloudkeep.server.rescan.deploy import CONFIRM_TIMEOUT, StepStop
from cloudkeep.server.sessions import TaskFailed, read_result

Confirm = Callable[[DiscoveredMachine, Machine, datetime | None], str]


def heartbeat_is_fresh(ctx: ServerContext, row: DiscoveredMachine, since: datetime | None = None) -> bool:
    """A heartbeat newer than the heartbeat timeout (and than ``since``, when given)."""
    beat = row.last_heartbeat_at
    if beat is None:
        return False
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=UTC)
    limit = utcnow() - timedelta(seconds=ctx.settings.heartbeat_timeout_seconds)
    return beat >= limit and (since is None or beat >= since - timedelta(seconds=1))


def make_confirm(ctx: ServerContext) -> tuple[Confirm, Callable[[DiscoveredMachine], bool]]:
    ensure_consumers(ctx)
    dispatcher = Dispatcher(ctx)

    def confirm(row: DiscoveredMachine, machine: Machine, since: datetime | None) -> str:
        ensure_consumers(ctx)  # idempotent; the group's credential may be new since the session began
        waited = _wait_for_heartbeat(ctx, row.id, since)
        try:
            command_id = dispatcher.send(row.id, "ping", {}, ttl=max(CONFIRM_TIMEOUT, 60.0))
            payload = dispatcher.wait(command_id, timeout=CONFIRM_TIMEOUT)
        except CloudkeepError as exc:
            raise StepStop("failed", f"the services did not answer a ping through the queues: {exc}") from exc
        with ctx.db() as session:
            record = session.get(CommandRecord, command_id)
            channel = record.channel if record else "?"
        if channel != "queue":
            raise StepStop("failed", f"the ping was answered over the {channel} channel, not the queues")
        try:
            answer = read_result(PingResult, row.name, payload)
        except TaskFailed as exc:
            raise StepStop("failed", exc.message) from None
        names = ", ".join(sorted(answer.services))
        return (
            f"heartbeat after {waited:.1f} s; ping answered through the queues "
            f"(version {answer.version or '?'}; {names or 'no service list'})"
        )

    return confirm, lambda row: heartbeat_is_fresh(ctx, row)


def _wait_for_heartbeat(ctx: ServerContext, machine_id: str, since: datetime | None) -> float:
    start = time.monotonic()
    while True:
        with ctx.db() as session:
            row = session.get(DiscoveredMachine, machine_id)
            fresh = row is not None and heartbeat_is_fresh(ctx, row, since)
        if fresh:
            return time.monotonic() - start
        if time.monotonic() - start > CONFIRM_TIMEOUT:
            raise StepStop(
                "failed",
                f"the message service sent no heartbeat to the server queue within {CONFIRM_TIMEOUT:.0f} s "
                "(see var/log/cloudkeep/message.log on the machine)",
            )
        time.sleep(0.1)
