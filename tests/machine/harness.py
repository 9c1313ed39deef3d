"""A server context, a lab of simulated machines and machine services run as real subprocesses.

The server side is the real ServerContext (SQLite) with a real provider (local SQLite queue, or
SQS on the moto server, or Azure Queue Storage on Azurite); each machine's services are
``python -m cloudkeep.machine …`` processes with the machine's folder as ROOT.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudkeep.config import Settings
from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.keys import AgentKeys
from cloudkeep.providers.base import CloudProvider, Queue
from cloudkeep.providers.local import Lab, SimulatedMachine
from cloudkeep.server.agent_compat import split_registration
from cloudkeep.server.consumer import server_queue_name
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import (
    CommandRecord,
    Credential,
    DiscoveredMachine,
    ProtectionGroup,
    Repository,
)

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def wait_for(
    predicate: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition", poll: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


@dataclass
class MachineHandle:
    harness: Harness
    name: str
    row_id: str
    sim: SimulatedMachine
    config: MachineConfig
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.config.root / "etc/cloudkeep/machine.json"

    def start(
        self, service: str = "message-service", *, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.config.root / f"{service}.out").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloudkeep.machine", service, "--config", str(self.config_path)],
            stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT, start_new_session=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.processes[service] = proc
        self.harness.processes.append(proc)
        return proc

    def kill(self, service: str = "message-service", sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(service)
        os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def output(self, service: str = "message-service") -> str:
        path = self.config.root / f"{service}.out"
        return path.read_text(errors="replace") if path.exists() else ""

    def agent_queue(self) -> Queue:
        return self.harness.provider.queues.get_queue(self.row_queue_name)

    @property
    def row_queue_name(self) -> str:
        return f"ck-{self.harness.ctx.server_id}-{self.row_id[:12]}"


@dataclass
class Harness:
    ctx: ServerContext
    lab: Lab
    provider: CloudProvider
    credential_id: str
    group_id: str
    tmp: Path
    heartbeat_seconds: float = 1.0
    clock_skew_seconds: float = 300.0
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    def create(
        cls, tmp: Path, *, provider_kind: str = "local", secret: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None, heartbeat_timeout: float = 3.0,
        database_url: str | None = None,
    ) -> Harness:  # fmt: skip
        settings = Settings(
            home=tmp / "server", heartbeat_timeout_seconds=heartbeat_timeout, database_url=database_url
        )
        ctx = open_context(settings)
        lab = Lab(tmp / "lab")
        opts = options if options is not None else {"lab_dir": str(lab.path)}
        with ctx.db() as session:
            credential = Credential(
                name=f"cred-{uuid.uuid4().hex[:6]}", provider=provider_kind,
                secret=ctx.secrets.seal(secret or {}), options=opts,
            )  # fmt: skip
            session.add(credential)
            session.flush()
            dist = Repository(name=f"dist-{uuid.uuid4().hex[:6]}", purpose="distribution",
                              credential_id=credential.id, location="dist")  # fmt: skip
            session.add(dist)
            session.flush()
            group = ProtectionGroup(name=f"pg-{uuid.uuid4().hex[:6]}", credential_id=credential.id,
                                    distribution_repository_id=dist.id)  # fmt: skip
            session.add(group)
            session.flush()
            credential_id, group_id = credential.id, group.id
        provider = ctx.provider_for(credential_id)
        provider.queues.ensure_queue(server_queue_name(ctx.server_id))
        return cls(ctx, lab, provider, credential_id, group_id, tmp)

    def server_queue(self) -> Queue:
        return self.provider.queues.get_queue(server_queue_name(self.ctx.server_id))

    def add_machine(
        self, name: str, *, sim: SimulatedMachine | None = None, **config_overrides: Any
    ) -> MachineHandle:
        """Register a machine as rescan would; ``sim``: a machine made elsewhere (an SSM stand-in one)."""
        if sim is None:
            sim = self.lab.create_machine(name, env={"CLOUDKEEP_PYTHON": sys.executable})
        with self.ctx.db() as session:
            row = DiscoveredMachine(
                protection_group_id=self.group_id,
                cloud_id=sim.id,
                name=name,
                platform="linux",
                status="deployed",
            )
            session.add(row)
            session.flush()
            row_id = row.id
        queue_name = f"ck-{self.ctx.server_id}-{row_id[:12]}"
        self.provider.queues.ensure_queue(queue_name)
        # as rescan does: the server queue is add-only for machines (where the cloud can enforce it)
        queues = self.provider.queues
        server_queue = queues.connection_info(server_queue_name(self.ctx.server_id), access="send")
        config = MachineConfig(
            machine_id=row_id, cloud_id=sim.id, server_id=self.ctx.server_id,
            server_public_key=self.ctx.public_key_b64,
            agent_queue=self.provider.queues.connection_info(queue_name),
            server_queue=server_queue,
            heartbeat_seconds=self.heartbeat_seconds, clock_skew_seconds=self.clock_skew_seconds,
            receive_wait_seconds=1.0, root=sim.root, **config_overrides,
        )  # fmt: skip
        config.write()
        keys = AgentKeys.load_or_create(config.state_dir)
        with self.ctx.db() as session:
            stored = session.get(DiscoveredMachine, row_id)
            assert stored is not None
            public, stored.agent_level = split_registration(keys.public())  # as install registers it
            stored.agent_public_key = json.dumps(public)
            stored.agent_queue = queue_name
        return MachineHandle(self, name, row_id, sim, config)

    def record(self, command_id: str) -> CommandRecord:
        with self.ctx.db() as session:
            record = session.get(CommandRecord, command_id)
            assert record is not None
            return record

    def heartbeat_age(self, machine: MachineHandle) -> float | None:
        with self.ctx.db() as session:
            row = session.get(DiscoveredMachine, machine.row_id)
            assert row is not None
            if row.last_heartbeat_at is None:
                return None
            from datetime import UTC, datetime

            at = (
                row.last_heartbeat_at
                if row.last_heartbeat_at.tzinfo
                else row.last_heartbeat_at.replace(tzinfo=UTC)
            )
            return (datetime.now(UTC) - at).total_seconds()

    def close(self) -> None:
        from cloudkeep.server.dispatcher import stop_consumers

        for proc in self.processes:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        stop_consumers()
        self.provider.close()
        self.ctx.close()
