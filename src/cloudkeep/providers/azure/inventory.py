"""Azure VM inventory through azure-mgmt-compute (``virtual_machines.list_all`` / ``list``).

Power state comes from a second, ``statusOnly=true`` listing (the model listing carries none).
Boot mode and Secure Boot come from ``securityProfile``: Trusted Launch and confidential VMs boot
UEFI and report ``uefiSettings.secureBootEnabled``; Secure Boot needs Trusted Launch, so a VM
without it has Secure Boot off, while its boot mode (Gen1 BIOS or Gen2 UEFI) stays unknown.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from cloudkeep.errors import ConfigurationError, NotFoundError
from cloudkeep.providers.azure.errors import azure_errors
from cloudkeep.providers.azure.session import AzureSession
from cloudkeep.providers.base import Inventory, InventoryScope, Machine, Platform

_UEFI_TYPES = {"trustedlaunch", "confidentialvm"}


def parse_vm_id(vm_id: str) -> tuple[str, str]:
    """``/subscriptions/…/resourceGroups/<rg>/providers/Microsoft.Compute/virtualMachines/<name>``."""
    parts = vm_id.strip("/").split("/")
    lowered = [p.lower() for p in parts]
    try:
        return parts[lowered.index("resourcegroups") + 1], parts[lowered.index("virtualmachines") + 1]
    except (ValueError, IndexError):
        raise ConfigurationError(f"not an Azure VM resource id: {vm_id!r}") from None


def _as_dict(model: Any) -> dict[str, Any]:
    return model.as_dict() if hasattr(model, "as_dict") else dict(model)


def _field(data: dict[str, Any], *path: str) -> Any:
    """Read a nested field under either its REST (camelCase) or Python (snake_case) name."""
    current: Any = data
    for name in path:
        if not isinstance(current, dict):
            return None
        snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in name)
        current = current.get(name, current.get(snake))
    return current


def _props(vm: dict[str, Any]) -> dict[str, Any]:
    return vm.get("properties") or vm  # flattened models keep fields at the top


def _power_state(vm: dict[str, Any]) -> str | None:
    for status in _field(_props(vm), "instanceView", "statuses") or []:
        code = str(status.get("code", ""))
        if code.startswith("PowerState/"):
            return code.split("/", 1)[1]
    return None


def to_machine(vm: dict[str, Any], state: str | None) -> Machine:
    props = _props(vm)
    os_type = str(_field(props, "storageProfile", "osDisk", "osType") or "Linux")
    security_type = str(_field(props, "securityProfile", "securityType") or "").lower()
    secure_boot = _field(props, "securityProfile", "uefiSettings", "secureBootEnabled")
    uefi = security_type in _UEFI_TYPES
    return Machine(
        id=str(vm["id"]),
        name=str(vm["name"]),
        platform=Platform.WINDOWS if os_type.lower() == "windows" else Platform.LINUX,
        state=state or _power_state(vm) or "unknown",
        region=str(vm.get("location", "")),
        tags=dict(vm.get("tags") or {}),
        boot_mode="uefi" if uefi else None,
        secure_boot=bool(secure_boot) if uefi else False,
        hostname=_field(props, "osProfile", "computerName"),
        extra={
            "resource_group": parse_vm_id(str(vm["id"]))[0],
            "vm_size": _field(props, "hardwareProfile", "vmSize"),
            "security_type": security_type or None,
            "vm_uuid": _field(props, "vmId"),
        },
    )


class AzureInventory(Inventory):
    def __init__(self, session: AzureSession) -> None:
        self.session = session

    def _pages(self, status_only: bool) -> Iterable[Any]:
        vms = self.session.compute.virtual_machines
        extra = {"status_only": "true"} if status_only else {}
        if not self.session.resource_groups:
            yield from vms.list_all(**extra)
            return
        for group in self.session.resource_groups:
            if status_only:  # per-group listing has no statusOnly; fetch states per VM later
                return
            yield from vms.list(group)

    def list_machines(self, scope: InventoryScope) -> Iterator[Machine]:
        with azure_errors("Microsoft.Compute/virtualMachines/read", self.session.subscription_id):
            states = {str(_as_dict(vm)["id"]).lower(): _power_state(_as_dict(vm)) for vm in self._pages(True)}
            for model in self._pages(False):
                vm = _as_dict(model)
                if scope.regions and str(vm.get("location", "")).lower() not in {
                    r.lower() for r in scope.regions
                }:
                    continue
                state = states.get(str(vm["id"]).lower())
                if state is None and self.session.resource_groups:
                    state = self._state(str(vm["id"]))
                machine = to_machine(vm, state)
                if scope.matches(machine):
                    yield machine

    def _state(self, vm_id: str) -> str | None:
        group, name = parse_vm_id(vm_id)
        with azure_errors("Microsoft.Compute/virtualMachines/read", vm_id):
            return _power_state(
                _as_dict(self.session.compute.virtual_machines.get(group, name, expand="instanceView"))
            )

    def get_machine(self, machine_id: str) -> Machine | None:
        group, name = parse_vm_id(machine_id)
        try:
            with azure_errors("Microsoft.Compute/virtualMachines/read", machine_id):
                vm = _as_dict(self.session.compute.virtual_machines.get(group, name, expand="instanceView"))
        except NotFoundError:
            return None
        return to_machine(vm, None)

    def _update_tags(self, machine_id: str, change: dict[str, str | None]) -> None:
        machine = self.get_machine(machine_id)
        if machine is None:
            raise NotFoundError(f"Azure VM {machine_id} not found")
        tags = {k: v for k, v in {**machine.tags, **change}.items() if v is not None}
        group, name = parse_vm_id(machine_id)
        with azure_errors("Microsoft.Compute/virtualMachines/write", machine_id):
            poller = self.session.compute.virtual_machines.begin_update(
                group, name, {"tags": tags}, polling_interval=self.session.polling_interval
            )
            poller.result()

    def set_tag(self, machine_id: str, key: str, value: str) -> None:
        self._update_tags(machine_id, {key: value})

    def remove_tag(self, machine_id: str, key: str) -> None:
        self._update_tags(machine_id, {key: None})
