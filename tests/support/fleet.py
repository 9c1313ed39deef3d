"""A fleet simulator: thousands of machine agents in one process, speaking the real signed protocol.

Each simulated agent has its own keys (registered on its ``DiscoveredMachine`` row as rescan
does), its own agent queue on the server's real provider (the local SQLite queue, or SQS on a
moto server) and posts to the one server queue. A few threads sweep the agents' queues, verify
every command with the server's public key exactly as ``machine/message_service`` does, open
the sealed storage credentials, and answer: heartbeats, a progress report and a result with
plausible statistics for ``backup``, the ``forget`` list for ``retention``, an empty result for
the rest. What is NOT real: no files are read and nothing is written to the repository (each
agent reports a made-up snapshot id; the server then records the reported manifest pin, as it
does when it cannot read the repository) — this measures the control plane, not the engine.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cloudkeep.machine.keys import AGENT_LEVEL, AgentKeys
from cloudkeep.protocol import COMMAND_BODIES, MessageValidator, ProtocolError, make_envelope, sign_envelope
from cloudkeep.protocol.crypto import load_verify_key
from cloudkeep.providers.base import CloudProvider, Queue
from cloudkeep.providers.local.queues import LocalQueueService
from cloudkeep.server.consumer import server_queue_name
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine

REGISTER_BATCH = 500  # machine rows per transaction when registering a fleet
# The simulator's own read of the local queue file (not product API): which queues hold a message
# that could be received now. Acked messages are deleted, so this scans only what is waiting.
READY_QUEUES_SQL = "SELECT DISTINCT queue FROM messages WHERE visible_at <= ?"
HEARTBEAT = {"services": {"message-service": "running"}, "version": "sim"}


@dataclass
class SimulatedAgent:
    machine_id: str
    keys: AgentKeys
    queue: Queue
    validator: MessageValidator
    backups: int = 0


@dataclass
class FleetCounts:
    commands: int = 0
    rejected: int = 0
    reports_sent: int = 0
    heartbeat_late_max: float = 0.0  # seconds the heartbeat thread fell behind its schedule at worst
    by_kind: dict[str, int] = field(default_factory=dict)


class SimulatedFleet:
    """``count`` agents of one protection group; ``start`` answers commands until ``stop``."""

    def __init__(
        self, ctx: ServerContext, provider: CloudProvider, agents: list[SimulatedAgent], *, seed: int = 18
    ) -> None:
        self.ctx = ctx
        self.provider = provider
        self.agents = agents
        self.server_queue = provider.queues.get_queue(server_queue_name(ctx.server_id))
        self.counts = FleetCounts()
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    @classmethod
    def register(
        cls, ctx: ServerContext, provider: CloudProvider, group_id: str, count: int, *, prefix: str = "sim"
    ) -> SimulatedFleet:
        """Register ``count`` deployed machines with fresh keys and create their agent queues."""
        server_key = load_verify_key(ctx.public_key_b64)
        made: list[tuple[str, AgentKeys]] = []
        for start in range(0, count, REGISTER_BATCH):
            with ctx.db() as session:
                rows = []
                for n in range(start, min(count, start + REGISTER_BATCH)):
                    keys = AgentKeys.generate()
                    row = DiscoveredMachine(
                        protection_group_id=group_id, cloud_id=f"{prefix}-{n}", name=f"{prefix}-{n}",
                        platform="linux", status="deployed", agent_public_key=json.dumps(keys.public()),
                        agent_level=AGENT_LEVEL,
                    )  # fmt: skip
                    rows.append((row, keys))
                session.add_all([row for row, _ in rows])
                session.flush()
                for row, keys in rows:
                    row.agent_queue = f"ck-{ctx.server_id}-{row.id[:12]}"
                    made.append((row.id, keys))
        agents = []
        for machine_id, keys in made:
            queue = provider.queues.ensure_queue(f"ck-{ctx.server_id}-{machine_id[:12]}")
            validator = MessageValidator(
                me=machine_id, sender_key=lambda s: server_key if s == ctx.server_id else None,
                kinds=frozenset(COMMAND_BODIES),
            )  # fmt: skip
            agents.append(SimulatedAgent(machine_id, keys, queue, validator))
        return cls(ctx, provider, agents)

    # --- what an agent sends ---------------------------------------------------------------------

    def _report(
        self, agent: SimulatedAgent, kind: str, body: dict[str, Any], correlation: str | None
    ) -> None:
        envelope = make_envelope(
            kind, body, sender=agent.machine_id, recipient=self.ctx.server_id, ttl=3600,
            correlation_id=correlation,
        )  # fmt: skip
        self.server_queue.send(sign_envelope(envelope, agent.keys.signing))
        with self._lock:
            self.counts.reports_sent += 1

    def heartbeat_all(self) -> int:
        """One signed heartbeat from every agent (what each sends every ``heartbeat_seconds``)."""
        for agent in self.agents:
            self._report(agent, "heartbeat", HEARTBEAT, None)
        return len(self.agents)

    def _backup_stats(self) -> dict[str, Any]:
        with self._lock:
            total = self._random.randint(2 << 30, 40 << 30)  # 2-40 GiB machines
            changed = self._random.uniform(0.002, 0.05)  # a day's change
            files = self._random.randint(50_000, 400_000)
        read = int(total * changed)
        added = int(read * 0.6)
        return {
            "bytes_total": total, "bytes_processed": total, "bytes_read": read, "data_added": added,
            "bytes_uploaded": int(added * 0.45), "files": files,
            "timings": {"read_seconds": read / 200e6, "upload_seconds": added / 80e6},
        }  # fmt: skip

    def _answer(self, agent: SimulatedAgent, kind: str, envelope: Any) -> dict[str, Any]:
        body = envelope.body
        if kind == "backup":
            envelope.open_sealed(agent.keys.encryption)  # as the agent does: storage access is sealed
            stats = self._backup_stats()
            progress = {"command_id": envelope.id, "bytes_read": stats["bytes_read"] // 2,
                        "bytes_total": stats["bytes_read"], "files": stats["files"] // 2}  # fmt: skip
            self._report(agent, "progress", progress, envelope.id)
            agent.backups += 1
            return {
                "snapshot_id": uuid.uuid4().hex + uuid.uuid4().hex,
                "snapshot_time": datetime.now(UTC).isoformat(),
                "manifest_digest": uuid.uuid4().hex * 2, "root_tree": uuid.uuid4().hex * 2,
                "stats": stats,
            }  # fmt: skip
        if kind == "retention":
            forget = list(body.get("forget") or [])
            return {"kept": [], "removed": forget}
        return {}

    # --- the receive loop ---------------------------------------------------------------------------

    def handle(self, agent: SimulatedAgent, text: str) -> None:
        try:
            envelope = agent.validator.validate(text)
        except ProtocolError:
            with self._lock:
                self.counts.rejected += 1
            return
        payload = self._answer(agent, envelope.kind, envelope)
        result = {"command_id": envelope.id, "ok": True, "payload": payload}
        self._report(agent, "result", result, envelope.id)
        with self._lock:
            self.counts.commands += 1
            self.counts.by_kind[envelope.kind] = self.counts.by_kind.get(envelope.kind, 0) + 1

    def ready(self, agents: list[SimulatedAgent]) -> list[SimulatedAgent]:
        """The agents whose queue holds a visible message, in one query on the local queue file.

        Receiving from every queue in turn made the simulator's CPU grow with the fleet: at 20,000
        agents its processes out-ate the server and sent heartbeats late. Other providers (SQS on
        moto) have no such read, so every agent is returned and swept as before.
        """
        queues = self.provider.queues
        if not isinstance(queues, LocalQueueService):
            return agents
        names = ready_queue_names(queues)
        return [agent for agent in agents if agent.queue.name in names] if names else []

    def sweep(self, agents: list[SimulatedAgent]) -> int:
        """Read once (no wait) each agent's queue that holds something; returns the commands handled."""
        handled = 0
        for agent in self.ready(agents):
            if self._stopping.is_set():
                break
            for message in agent.queue.receive(max_messages=10, visibility_timeout=60, wait_seconds=0):
                self.handle(agent, message.body)
                agent.queue.ack(message)
                handled += 1
        return handled

    def start(
        self, threads: int = 4, idle_seconds: float = 0.05, heartbeat_seconds: float | None = None
    ) -> SimulatedFleet:
        """Answer commands on ``threads`` threads; with ``heartbeat_seconds``, every agent also
        heartbeats that often (spread evenly, as real agents started at different times do)."""
        if heartbeat_seconds is not None:
            beat = threading.Thread(target=self._beat, args=(heartbeat_seconds,), name="ck-fleet-beat",
                                    daemon=True)  # fmt: skip
            beat.start()
            self._threads.append(beat)
        shards = [self.agents[n::threads] for n in range(threads)]
        for n, shard in enumerate(shards):
            thread = threading.Thread(target=self._run, args=(shard, idle_seconds), name=f"ck-fleet-{n}",
                                      daemon=True)  # fmt: skip
            thread.start()
            self._threads.append(thread)
        return self

    def _run(self, shard: list[SimulatedAgent], idle_seconds: float) -> None:
        while not self._stopping.is_set():
            if not self.sweep(shard):
                self._stopping.wait(idle_seconds)

    def _beat(self, interval: float) -> None:
        """Agent ``n`` beats at ``start + n * gap + k * interval``; when this thread falls behind
        (the process is short of CPU) it catches up back to back instead of drifting late."""
        gap = interval / max(1, len(self.agents))
        due = time.monotonic()
        while not self._stopping.is_set():
            for agent in self.agents:
                ahead = due - time.monotonic()
                if ahead > 0 and self._stopping.wait(ahead):
                    return
                if self._stopping.is_set():
                    return
                self.counts.heartbeat_late_max = max(self.counts.heartbeat_late_max, -ahead)
                self._report(agent, "heartbeat", HEARTBEAT, None)
                due += gap

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(30)
        self._threads.clear()
        self._stopping.clear()  # ready to ``start`` again

    def __iter__(self) -> Iterator[SimulatedAgent]:
        return iter(self.agents)


def ready_queue_names(queues: LocalQueueService) -> set[str]:
    """The local queues holding a message that a receive would return now (one read, no lock)."""
    with queues.database.connect() as db:
        return {name for (name,) in db.execute(READY_QUEUES_SQL, (time.time(),))}


def wait_until(predicate: Any, *, timeout: float, what: str, poll: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)
