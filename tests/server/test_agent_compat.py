"""Agents older than the server are refused clearly, before anything is recorded or sent."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from tests.server.fixtures import Seeded, add_machine

from cloudkeep.machine.keys import AGENT_LEVEL, AgentKeys
from cloudkeep.server import agent_compat
from cloudkeep.server.agent_compat import AgentOutdatedError, split_registration
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import CommandRecord, DiscoveredMachine, ProtectionGroup
from cloudkeep.server.dispatcher import Dispatcher

BACKUP = {"sources": ["/data"], "hostname": "web-1"}


def _registered(ctx: ServerContext, seeded: Seeded, level: int | None) -> tuple[str, str]:
    """A deployed machine with keys, an agent queue and a fresh heartbeat (commands go by queue)."""
    machine_id = add_machine(ctx, seeded.group, "web-1")
    queue = f"ck-{ctx.server_id}-{machine_id[:12]}"
    with ctx.db() as session:
        row = session.get(DiscoveredMachine, machine_id)
        assert row is not None
        keys, _ = split_registration(AgentKeys.generate().public())
        row.agent_public_key, row.agent_level = json.dumps(keys), level
        row.agent_queue, row.last_heartbeat_at = queue, utcnow() - timedelta(seconds=1)
        credential_id = session.scalars(select(ProtectionGroup.credential_id)).first()
    assert credential_id is not None
    ctx.provider_for(credential_id).queues.ensure_queue(queue)
    return machine_id, queue


def _commands(ctx: ServerContext) -> int:
    with ctx.db() as session:
        return session.scalar(select(func.count()).select_from(CommandRecord)) or 0


def _queued(ctx: ServerContext, queue: str) -> int:
    with ctx.db() as session:
        credential_id = session.scalars(select(ProtectionGroup.credential_id)).first()
    assert credential_id is not None
    return ctx.provider_for(credential_id).queues.get_queue(queue).approximate_count()


def test_the_table() -> None:
    assert agent_compat.needed_level("backup") == 2 and agent_compat.needed_level("ping") == 1
    assert agent_compat.needed_level("a-kind-nobody-listed") == 1
    assert agent_compat.SERVER_NEEDS <= AGENT_LEVEL  # the bundle this server installs can do everything
    assert agent_compat.agent_level(None) == 1 and agent_compat.agent_level(2) == 2
    assert agent_compat.outdated_reason(None) == "agent level 1 installed, this server needs level 2"
    assert agent_compat.outdated_reason(AGENT_LEVEL) is None


@pytest.mark.parametrize(
    "reported", [{"agent_level": "2"}, {"agent_level": True}, {"agent_level": 10**9}, {}]
)
def test_a_level_the_machine_reports_badly_counts_as_legacy(reported: dict[str, object]) -> None:
    keys, level = split_registration({"signing_public_key": "k", **reported})
    assert keys == {"signing_public_key": "k"} and level is None


def test_the_installer_registers_the_agent_level_with_its_keys() -> None:
    keys, level = split_registration(AgentKeys.generate().public())
    assert level == AGENT_LEVEL and set(keys) == {"signing_public_key", "encryption_public_key"}


def test_an_agent_without_a_level_is_refused_before_anything_is_sent(
    ctx: ServerContext, seeded: Seeded
) -> None:
    machine_id, queue = _registered(ctx, seeded, level=None)
    dispatcher = Dispatcher(ctx)
    with pytest.raises(AgentOutdatedError) as caught:
        dispatcher.send(machine_id, "backup", BACKUP)
    assert str(caught.value) == (
        "machine web-1 runs agent level 1; this server needs agent level ≥ 2 for `backup`; nothing was "
        "sent to the machine — `cloudkeep machine upgrade web-1` installs the current agent"
    )
    assert _commands(ctx) == 0 and _queued(ctx, queue) == 0  # nothing recorded, nothing sent
    dispatcher.send(machine_id, "ping", {})  # what a level-1 agent understands still goes
    assert _commands(ctx) == 1 and _queued(ctx, queue) == 1


def test_a_current_agent_gets_the_command(ctx: ServerContext, seeded: Seeded) -> None:
    machine_id, queue = _registered(ctx, seeded, level=AGENT_LEVEL)
    command_id = Dispatcher(ctx).send(machine_id, "backup", BACKUP)
    with ctx.db() as session:
        record = session.get(CommandRecord, command_id)
        assert record is not None and record.kind == "backup" and record.channel == "queue"
    assert _queued(ctx, queue) == 1


def test_the_api_answers_409_with_the_reason(ctx: ServerContext, seeded: Seeded) -> None:
    from cloudkeep.server.api.errors import status_for

    machine_id, _ = _registered(ctx, seeded, level=1)
    with pytest.raises(AgentOutdatedError) as caught:
        Dispatcher(ctx).send(machine_id, "restore", {"snapshot_id": "a" * 64, "target": "/r"})
    assert status_for(caught.value) == (409, "conflict")
