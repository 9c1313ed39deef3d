"""Local command channel: run the script as a subprocess in the simulated machine's context."""

from __future__ import annotations

import uuid

from cloudkeep.errors import NotFoundError
from cloudkeep.providers.base import CommandChannel, CommandResult, Machine
from cloudkeep.providers.local.machine import Lab


class LocalCommandChannel(CommandChannel):
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def run(self, machine: Machine, script: str, *, timeout: float = 600.0) -> CommandResult:
        simulated = self.lab.get(machine.id)
        if simulated is None:
            raise NotFoundError(f"no local machine {machine.id!r} in lab {self.lab.path}")
        return simulated.run(script, timeout=timeout).as_result(command_id=uuid.uuid4().hex)
