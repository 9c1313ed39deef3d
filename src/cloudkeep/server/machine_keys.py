"""Machine signing keys for verifying reports, cached per consumer or dispatcher.

A 20,000-machine fleet sends ~670 heartbeats a second. Keys were cached 30 s, the heartbeat
interval, so nearly every heartbeat's key had expired: a key query per received batch was ~22 %
of a consumer's CPU. Keys now stay cached 5 minutes; a message that fails to verify with a key
cached longer than ``KEY_RECHECK_SECONDS`` is checked once more against the stored key, so an agent
re-installed with new keys (or a machine registered after its first message) is recognised at
once, and a flood of forged messages costs at most one query per claimed sender in that time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import bindparam, select

from cloudkeep.protocol import (
    REPORT_BODIES,
    BadSignature,
    Envelope,
    MessageValidator,
    ProtocolError,
    UnknownSender,
)
from cloudkeep.protocol.crypto import load_verify_key
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine

log = logging.getLogger(__name__)
KEY_CACHE_SECONDS = 300.0  # how long a key (or its absence) is trusted without reading it again
KEY_RECHECK_SECONDS = 5.0  # a key cached this long is read again when a message fails with it

# Built once: at fleet scale (hundreds of heartbeats a second) building these expressions for every
# message cost more CPU than running them.
_KEY_OF_MACHINE = select(DiscoveredMachine.agent_public_key).where(
    DiscoveredMachine.id == bindparam("machine_id")
)
_KEYS_OF_MACHINES = select(DiscoveredMachine.id, DiscoveredMachine.agent_public_key).where(
    DiscoveredMachine.id.in_(bindparam("machine_ids", expanding=True))
)


class MachineKeys:
    """Machine signing keys from ``DiscoveredMachine.agent_public_key``, cached."""

    def __init__(self, ctx: ServerContext, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ctx = ctx
        self.clock = clock
        self._cache: dict[str, tuple[float, Ed25519PublicKey | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, machine_id: str) -> Ed25519PublicKey | None:
        now = self.clock()
        with self._lock:
            hit = self._cache.get(machine_id)
        if hit is not None and now - hit[0] < KEY_CACHE_SECONDS:
            return hit[1]
        with self.ctx.db() as session:
            stored = session.scalar(_KEY_OF_MACHINE, {"machine_id": machine_id})
        return self._remember(machine_id, stored, now)

    def prefetch(self, machine_ids: set[str]) -> None:
        """Load the keys of a received batch's senders with one query instead of one each."""
        now = self.clock()
        with self._lock:
            missing = [m for m in machine_ids if now - self._cache.get(m, (-KEY_CACHE_SECONDS, None))[0]
                       >= KEY_CACHE_SECONDS]  # fmt: skip
        if not missing:
            return
        with self.ctx.db() as session:
            found = {row[0]: row[1] for row in session.execute(_KEYS_OF_MACHINES, {"machine_ids": missing})}
        for machine_id in missing:
            self._remember(machine_id, found.get(machine_id), now)

    def forget_stale(self, machine_id: str) -> bool:
        """Drop a key cached at least ``KEY_RECHECK_SECONDS`` (a message failed with it): True when
        dropped, so that the next look-up reads the stored key."""
        now = self.clock()
        with self._lock:
            hit = self._cache.get(machine_id)
            if hit is None or now - hit[0] < KEY_RECHECK_SECONDS:
                return False
            del self._cache[machine_id]
            return True

    def _remember(self, machine_id: str, stored: str | None, now: float) -> Ed25519PublicKey | None:
        key = None
        if stored:
            try:
                key = load_verify_key(json.loads(stored)["signing_public_key"])
            except (ValueError, KeyError, ProtocolError):
                log.error(
                    "machine %s has an unreadable agent_public_key; its messages are refused", machine_id
                )
        with self._lock:
            self._cache[machine_id] = (now, key)
        return key


class ReportValidator(MessageValidator):
    """Verifies machine reports; a signature that fails with a cached key is checked once more
    against the stored key (the machine may have been re-keyed since it was cached)."""

    def __init__(self, ctx: ServerContext, keys: MachineKeys) -> None:
        super().__init__(
            me=ctx.server_id,
            sender_key=keys,
            kinds=frozenset(REPORT_BODIES),
            clock=utcnow,  # the server's one clock: expiry is judged by the same "now" as everything else
        )
        self.keys = keys

    def validate(
        self, text: str | bytes, *, seen: Callable[[str], bool] | None = None, check_time: bool = True
    ) -> Envelope:
        try:
            return super().validate(text, seen=seen, check_time=check_time)
        except (BadSignature, UnknownSender):
            if not self.keys.forget_stale(self.parse(text)[0].sender):
                raise
        return super().validate(text, seen=seen, check_time=check_time)


def report_validator(ctx: ServerContext, keys: MachineKeys | None = None) -> ReportValidator:
    return ReportValidator(ctx, keys if keys is not None else MachineKeys(ctx))
