"""Local inventory: the simulated machines of a ``Lab`` on this host; tags live in ``machine.json``."""

from __future__ import annotations

from collections.abc import Iterator

from cloudkeep.errors import NotFoundError
from cloudkeep.providers.base import Inventory, InventoryScope, Machine
from cloudkeep.providers.local.machine import Lab, SimulatedMachine


class LocalInventory(Inventory):
    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    def list_machines(self, scope: InventoryScope) -> Iterator[Machine]:
        for simulated in self.lab.list():
            machine = simulated.describe()
            if scope.regions and machine.region not in scope.regions:
                continue
            if scope.matches(machine):
                yield machine

    def get_machine(self, machine_id: str) -> Machine | None:
        simulated = self.lab.get(machine_id)
        return simulated.describe() if simulated else None

    def _require(self, machine_id: str) -> SimulatedMachine:
        simulated = self.lab.get(machine_id)
        if simulated is None:
            raise NotFoundError(f"no local machine {machine_id!r} in lab {self.lab.path}")
        return simulated

    def set_tag(self, machine_id: str, key: str, value: str) -> None:
        self._require(machine_id).set_tag(key, value)

    def remove_tag(self, machine_id: str, key: str) -> None:
        self._require(machine_id).remove_tag(key)
