"""Azure VM inventory and managed Run Commands through azure-mgmt-compute, served by the ARM
stand-in (tests/support/arm_standin.py: no emulator covers ARM). Output blobs live on Azurite."""

from __future__ import annotations

import shutil

import pytest

from cloudkeep.errors import AuthenticationError, PermissionDeniedError, UnreachableError
from cloudkeep.providers import InventoryScope, get_provider
from cloudkeep.providers.azure.provider import AzureProvider
from tests.support.arm_standin import ArmStandIn


def test_inventory_pages_filters_and_reports_security(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    arm_standin.create_vm("web1", tags={"Env": "prod"}, secure_boot=True)
    arm_standin.create_vm("web2", tags={"env": "dev"}, resource_group="rg-other", security_type=None)
    arm_standin.create_vm("win1", platform="windows", tags={"env": "prod"}, power_state="stopped")
    machines = {m.name: m for m in azure.inventory.list_machines(InventoryScope())}
    assert set(machines) == {"web1", "web2", "win1"}  # three VMs over two pages of two
    listings = [p for method, p in arm_standin.requests if method == "GET" and p.endswith("/virtualMachines")]
    assert len(listings) == 4  # models and power states, each followed to its second page by nextLink
    assert machines["web1"].boot_mode == "uefi" and machines["web1"].secure_boot is True
    assert machines["web2"].boot_mode is None and machines["web2"].secure_boot is False
    assert machines["win1"].platform == "windows" and machines["win1"].state == "deallocated"
    assert machines["web1"].state == "running" and machines["web1"].region == "westeurope"
    assert machines["web2"].extra["resource_group"] == "rg-other"
    prod = azure.inventory.list_machines(
        InventoryScope(include_tags={"env": "prod"}, exclude_tags={"x": "y"})
    )
    assert sorted(m.name for m in prod) == ["web1", "win1"]
    assert list(azure.inventory.list_machines(InventoryScope(regions=("eastus",)))) == []


def test_tags_round_trip(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    vm = arm_standin.create_vm("web1", tags={"keep": "me"})
    azure.inventory.set_tag(vm.id, "cloudkeep:server", "srv-1")
    assert vm.info()["tags"] == {"keep": "me", "cloudkeep:server": "srv-1"}
    azure.inventory.remove_tag(vm.id, "cloudkeep:server")
    assert azure.inventory.get_machine(vm.id).tags == {"keep": "me"}  # type: ignore[union-attr]
    assert azure.inventory.get_machine(arm_standin.vm_id("rg-cloudkeep", "nope")) is None


def test_run_command_full_output_exit_code_and_cleanup(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    vm = arm_standin.create_vm("web1")
    machine = azure.inventory.get_machine(vm.id)
    assert machine is not None
    assert azure.commands.managed_command_count(machine) == 0
    result = azure.commands.run(machine, "head -c 30000 /dev/zero | tr '\\0' 'y'; echo; echo err >&2; exit 4")
    assert result.exit_code == 4 and not result.ok
    assert len(result.stdout) == 30001  # the instance view alone holds only the last 4,096
    assert result.stderr == "err\n"
    assert azure.commands.managed_command_count(machine) == 0  # ours was deleted afterwards
    assert ("DELETE", f"{vm.id}/runCommands/{result.command_id}") in arm_standin.requests


def test_existing_run_commands_are_counted(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    from tests.support.arm_standin import RunCommandState

    vm = arm_standin.create_vm("busy")
    for i in range(24):
        arm_standin.run_commands[(vm.id.lower(), f"other-{i}")] = RunCommandState(
            f"other-{i}", vm.id, "westeurope", {}
        )
    machine = azure.inventory.get_machine(vm.id)
    assert machine is not None
    assert azure.commands.managed_command_count(machine) == 24
    room = azure.commands.command_capacity(machine)  # the last slot is ours
    assert room.in_use == "24 managed run commands" and room.refusal is None
    arm_standin.run_commands[(vm.id.lower(), "other-24")] = RunCommandState(
        "other-24", vm.id, "westeurope", {}
    )
    full = azure.commands.command_capacity(machine)
    assert full.refusal == "the VM already has 25 managed run commands" and "Azure allows 25" in full.remedy


@pytest.mark.skipif(shutil.which("pwsh") is not None, reason="pwsh installed: real PowerShell runs instead")
def test_windows_vm_runs_powershell(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    vm = arm_standin.create_vm("win1", platform="windows", execution_policy="Restricted")
    result = azure.commands.run(azure.inventory.get_machine(vm.id), "$PSVersionTable.PSVersion")  # type: ignore[arg-type]
    assert result.exit_code == 1 and "running scripts is disabled on this system" in result.stderr


def test_run_command_timeout(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    vm = arm_standin.create_vm("slow")
    result = azure.commands.run(azure.inventory.get_machine(vm.id), "sleep 10", timeout=1)  # type: ignore[arg-type]
    assert result.timed_out and not result.ok


def test_throttling_is_retried(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    arm_standin.create_vm("web1")
    arm_standin.fail_next(3, status=429)
    assert [m.name for m in azure.inventory.list_machines(InventoryScope())] == ["web1"]
    arm_standin.fail_next(50, status=503)
    with pytest.raises(UnreachableError, match="after retries"):
        list(azure.inventory.list_machines(InventoryScope()))


def test_permissions_and_bad_token(azure: AzureProvider, arm_standin: ArmStandIn) -> None:
    assert azure.check_permissions() == []
    arm_standin.deny("GET", "vms")
    assert azure.check_permissions() == ["Microsoft.Compute/virtualMachines/read"]
    with pytest.raises(PermissionDeniedError, match="virtualMachines/read"):
        list(azure.inventory.list_machines(InventoryScope()))

    class WrongToken:
        def get_token(self, *scopes: str, **kwargs: object) -> object:
            from azure.core.credentials import AccessToken

            return AccessToken("wrong", 2**31)

    options = {**arm_standin.provider_options(), "token_credential": WrongToken(), "retry_total": 0}
    provider = get_provider("azure", arm_standin.credential(), options)
    with pytest.raises(AuthenticationError, match="tenant id, client id and secret"):
        list(provider.inventory.list_machines(InventoryScope()))


def test_unreachable_arm_endpoint(arm_standin: ArmStandIn) -> None:
    from tests.support.peers import free_port

    options = {
        **arm_standin.provider_options(),
        "arm_endpoint": f"https://127.0.0.1:{free_port()}",
        "retry_total": 1,
    }
    provider = get_provider("azure", arm_standin.credential(), options)
    with pytest.raises(UnreachableError, match="cannot reach Azure"):
        list(provider.inventory.list_machines(InventoryScope()))


def test_inventory_limited_to_resource_groups(arm_standin: ArmStandIn) -> None:
    arm_standin.create_vm("in1", resource_group="rg-a")
    arm_standin.create_vm("in2", resource_group="rg-a", power_state="stopped")
    arm_standin.create_vm("out", resource_group="rg-b")
    provider = get_provider(
        "azure", arm_standin.credential(), arm_standin.provider_options(resource_groups=["rg-a"])
    )
    machines = {m.name: m.state for m in provider.inventory.list_machines(InventoryScope())}
    assert machines == {"in1": "running", "in2": "deallocated"}  # states fetched per VM (instance view)
