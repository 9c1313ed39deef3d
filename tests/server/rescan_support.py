"""Shared set-up for the rescan tests: a server context, one protection group, and clean-up.

Rows are created directly through the models (the service layer is tested elsewhere). Every
machine service started by a rescan runs as a real process in its simulated machine; ``close``
stops them by the pids the installer recorded, and stops this process's queue consumers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloudkeep.config import Settings
from cloudkeep.providers.local import Lab, SimulatedMachine
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.db.models import (
    Credential,
    DeploymentStep,
    DiscoveredMachine,
    JobSession,
    ProtectionGroup,
    Repository,
)
from cloudkeep.server.dispatcher import stop_consumers

PYTHON_ENV = {"CLOUDKEEP_PYTHON": sys.executable}


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class RescanWorld:
    ctx: ServerContext
    lab: Lab
    group_id: str
    credential_id: str
    repository_id: str
    labs: list[Lab] = field(default_factory=list)
    only: set[str] | None = None  # machines of a shared lab this world created (None: the whole lab)

    @classmethod
    def create(
        cls,
        home: Path,
        lab: Lab,
        *,
        provider: str = "local",
        secret: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        location: str = "distribution",
        database_url: str | None = None,
        **group: Any,
    ) -> RescanWorld:
        ctx = open_context(Settings(home=home, database_url=database_url, rescan_concurrency=8))
        with ctx.db() as session:
            credential = Credential(
                name="cred", provider=provider, secret=ctx.secrets.seal(secret or {}),
                options=options if options is not None else {"lab_dir": str(lab.path)},
            )  # fmt: skip
            session.add(credential)
            session.flush()
            repository = Repository(
                name="dist", purpose="distribution", credential_id=credential.id, location=location
            )
            session.add(repository)
            session.flush()
            row = ProtectionGroup(
                name="group", credential_id=credential.id, distribution_repository_id=repository.id, **group
            )
            session.add(row)
            session.flush()
            ids = row.id, credential.id, repository.id
        return cls(ctx, lab, *ids, labs=[lab])

    def linux(self, name: str, **machine: Any) -> SimulatedMachine:
        machine.setdefault("env", PYTHON_ENV)
        return self.lab.create_machine(name, **machine)

    def update_group(self, **values: Any) -> None:
        with self.ctx.db() as session:
            group = session.get(ProtectionGroup, self.group_id)
            assert group is not None
            for key, value in values.items():
                setattr(group, key, value)

    def session(self, session_id: str) -> JobSession:
        with self.ctx.db() as session:
            row = session.get(JobSession, session_id)
            assert row is not None
            session.expunge(row)
            return row

    def machines(self) -> dict[str, DiscoveredMachine]:
        with self.ctx.db() as session:
            rows = list(session.query(DiscoveredMachine).filter_by(protection_group_id=self.group_id))
            for row in rows:
                session.expunge(row)
            return {row.name: row for row in rows}

    def steps(self, machine_name: str) -> list[tuple[str, str, str]]:
        """(step, outcome, detail) of a machine, in order."""
        with self.ctx.db() as session:
            machine = session.query(DiscoveredMachine).filter_by(name=machine_name).one()
            rows = session.query(DeploymentStep).filter_by(machine_id=machine.id).order_by(DeploymentStep.seq)
            return [(r.step, r.outcome, r.detail) for r in rows]

    def step_count(self) -> int:
        with self.ctx.db() as session:
            return session.query(DeploymentStep).count()

    def close(self) -> None:
        stop_consumers()
        for lab in self.labs:
            stop_machine_services(lab, only=self.only)
        self.ctx.close()


def stop_machine_services(lab: Lab, *, grace: float = 5.0, only: set[str] | None = None) -> None:
    """Stop the daemons the installer started in this lab's machines (by their recorded pids).

    SIGTERM first; whatever still runs after ``grace`` seconds gets SIGKILL, so no test leaves
    processes behind.
    """
    pids = []
    for pidfile in lab.path.glob("machines/*/root/var/run/cloudkeep/*.pid"):
        if only is not None and pidfile.parents[4].name not in only:
            continue
        with contextlib.suppress(ValueError, OSError):
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)  # our own child only when started by this process
    except ChildProcessError:
        reaped = 0
    if reaped:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def open_azure_world(
    tmp_path: Path, arm_standin: Any, storage_connection_string: str, location: str
) -> RescanWorld:
    """A world on the ARM stand-in + Azurite; close it when done.

    A stored credential holds JSON only, so the stand-in's token credential cannot be stored: the
    context builds its Azure provider with the stand-in's options instead (a test-only override).
    """
    from cloudkeep.providers.azure.provider import create_azure_provider
    from cloudkeep.providers.base import CloudProvider

    stored: dict[str, Any] = {
        key: value
        for key, value in arm_standin.provider_options(
            storage_connection_string=storage_connection_string, retry_backoff_factor=0.01
        ).items()
        if key != "token_credential"
    }
    world = RescanWorld.create(
        tmp_path / "home", arm_standin.lab, provider="azure", secret=arm_standin.credential(),
        options=stored, location=location,
    )  # fmt: skip

    def provider_for(credential_id: str) -> CloudProvider:
        return create_azure_provider(arm_standin.credential(), arm_standin.provider_options(**stored))

    world.ctx.provider_for = provider_for  # type: ignore[method-assign]
    return world
