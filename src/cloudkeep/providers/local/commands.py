"""Local command channel: run the script as a subprocess in the simulated machine's context."""

from __future__ import annotations

import uuid

from cloudkeep.errors import NotFoundError
from cloudkeep.providers.base import CallPacer, CommandChannel, CommandResult, Machine, paced
from cloudkeep.providers.local.machine import Lab


class LocalCommandChannel(CommandChannel):
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def run(
        self, machine: Machine, script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
    ) -> CommandResult:
        """One write of the pacer, like a cloud's start call (the local lab publishes no limits, so
        the server's pacer lets it through at once; a test's pacer sees it)."""
        simulated = self.lab.get(machine.id)
        if simulated is None:
            raise NotFoundError(f"no local machine {machine.id!r} in lab {self.lab.path}")

        def start() -> CommandResult:
            return simulated.run(script, timeout=timeout).as_result(command_id=uuid.uuid4().hex)

        return paced(pacer, "write", machine.region, start)
