"""Machine signing keys: cached across heartbeats, re-read when a signature fails with an old one."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import event
from tests.server.fixtures import Seeded, add_machine

from cloudkeep.protocol import BadSignature, UnknownSender, make_envelope, sign_envelope
from cloudkeep.protocol.bodies import Heartbeat
from cloudkeep.protocol.crypto import b64encode
from cloudkeep.server.clock import use_clock
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.machine_keys import (
    KEY_CACHE_SECONDS,
    KEY_RECHECK_SECONDS,
    MachineKeys,
    report_validator,
)

NOW = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class _Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def machine(ctx: ServerContext, seeded: Seeded) -> Iterator[str]:
    with use_clock(lambda: NOW):  # the server's "now", which judges the heartbeats' expiry
        yield add_machine(ctx, seeded.group, "web")


def _register(ctx: ServerContext, machine: str) -> Ed25519PrivateKey:
    """What an install does: store the agent's new public signing key."""
    key = Ed25519PrivateKey.generate()
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    with ctx.db() as db:
        row = db.get(DiscoveredMachine, machine)
        assert row is not None
        row.agent_public_key = json.dumps({"signing_public_key": b64encode(raw)})
    return key


def _heartbeat(ctx: ServerContext, machine: str, key: Ed25519PrivateKey) -> str:
    envelope = make_envelope(
        "heartbeat", Heartbeat(services={}, version="t"), sender=machine, recipient=ctx.server_id, now=NOW
    )
    return sign_envelope(envelope, key)


def test_a_reinstalled_agent_is_recognised_at_once(ctx: ServerContext, machine: str) -> None:
    clock = _Clock()
    validator = report_validator(ctx, MachineKeys(ctx, clock=clock))
    old = _register(ctx, machine)
    assert validator.validate(_heartbeat(ctx, machine, old)).sender == machine
    new = _register(ctx, machine)  # re-installed: the cached key is the old one
    clock.now += KEY_RECHECK_SECONDS
    assert validator.validate(_heartbeat(ctx, machine, new)).sender == machine
    with pytest.raises(BadSignature):  # the old key is not trusted any more
        validator.validate(_heartbeat(ctx, machine, old))
    # a failure re-reads a key at most once per KEY_RECHECK_SECONDS: forged messages cannot make
    # every message a query, and a key changed again within that time waits for it
    newest = _register(ctx, machine)
    clock.now += KEY_RECHECK_SECONDS - 1
    with pytest.raises(BadSignature):
        validator.validate(_heartbeat(ctx, machine, newest))
    clock.now += 1
    assert validator.validate(_heartbeat(ctx, machine, newest)).sender == machine


def test_a_machine_registered_after_its_first_message(ctx: ServerContext, machine: str) -> None:
    """A sender unknown when first seen is looked up again (no key cached for five minutes)."""
    clock = _Clock()
    validator = report_validator(ctx, MachineKeys(ctx, clock=clock))
    key = Ed25519PrivateKey.generate()
    with pytest.raises(UnknownSender):
        validator.validate(_heartbeat(ctx, machine, key))
    key = _register(ctx, machine)
    clock.now += KEY_RECHECK_SECONDS
    assert validator.validate(_heartbeat(ctx, machine, key)).sender == machine


def test_keys_are_read_once_per_cache_period_not_per_heartbeat(ctx: ServerContext, machine: str) -> None:
    clock = _Clock()
    keys = MachineKeys(ctx, clock=clock)
    _register(ctx, machine)
    reads: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "agent_public_key" in statement:
            reads.append(statement)

    event.listen(ctx.engine, "before_cursor_execute", count)
    try:
        for _ in range(int(KEY_CACHE_SECONDS // 30)):  # a heartbeat every 30 s
            keys.prefetch({machine})
            assert keys(machine) is not None
            clock.now += 30
        assert len(reads) == 1
        keys.prefetch({machine})
        assert len(reads) == 2
    finally:
        event.remove(ctx.engine, "before_cursor_execute", count)
