"""Rescan on Azure: VM inventory and managed Run Commands on the ARM stand-in, queues and the
distribution container on Azurite (which enforces SAS, so expired and tampered URLs are refused).

No emulator covers Azure Resource Manager, so tests/support/arm_standin.py serves it and runs
each run command's script in the VM's simulated machine. Its SDK credential is an in-process
object that cannot be stored in the credential row, so the test hands the context a provider
factory that adds it (``ctx.provider_for``), the one seam used here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.server.rescan_support import PYTHON_ENV, RescanWorld, open_azure_world
from tests.support.arm_standin import ArmStandIn, RunCommandState
from tests.support.peers import Azurite

from cloudkeep.server.rescan import bundles, scripts, start_rescan
from cloudkeep.server.rescan.deploy import OWNER_TAG

pytestmark = [pytest.mark.slow, pytest.mark.azurite]


@pytest.fixture
def azure_world(
    tmp_path: Path, arm_standin: ArmStandIn, azurite: Azurite, unique_name: str
) -> Iterator[RescanWorld]:
    world = open_azure_world(tmp_path, arm_standin, azurite.connection_string, unique_name)
    yield world
    world.close()


def _existing_run_commands(standin: ArmStandIn, vm_id: str, count: int) -> None:
    for i in range(count):
        name = f"someone-else-{i}"
        standin.run_commands[(vm_id.lower(), name)] = RunCommandState(
            name, vm_id, "westeurope", {}, "Succeeded"
        )


def test_rescan_deploys_an_azure_vm_over_run_command_and_queue_storage(
    azure_world: RescanWorld, arm_standin: ArmStandIn
) -> None:
    vm = arm_standin.create_vm("web1", env=PYTHON_ENV)
    _existing_run_commands(arm_standin, vm.id, 24)  # the limit allows one more: ours

    session = azure_world.session(start_rescan(azure_world.ctx, azure_world.group_id, wait=True))

    assert session.state == "success", (session.reason, azure_world.machines())
    row = azure_world.machines()["web1"]
    assert row.status == "deployed", row.status_reason
    assert vm.info()["tags"][OWNER_TAG] == azure_world.ctx.server_id
    assert "24 managed run commands" in azure_world.steps("web1")[2][2]
    assert "ping answered through the queues" in azure_world.steps("web1")[-1][2]
    ours = [
        name for vm_id, name in arm_standin.run_commands if vm_id == vm.id.lower() and name.startswith("ck")
    ]
    assert ours == []  # every run command cloudkeep created was deleted after use

    again = azure_world.session(start_rescan(azure_world.ctx, azure_world.group_id, wait=True))
    assert again.state == "success" and again.stats["installed"] == 0


def test_refusals_on_azure(azure_world: RescanWorld, arm_standin: ArmStandIn) -> None:
    crowded = arm_standin.create_vm("crowded", env=PYTHON_ENV)
    _existing_run_commands(arm_standin, crowded.id, 25)
    arm_standin.create_vm("secure", secure_boot=True, env=PYTHON_ENV)
    arm_standin.create_vm("oldps", platform="windows", powershell_version="5.0.10586.117")
    arm_standin.create_vm("blocked", platform="windows", execution_policy="Restricted")
    arm_standin.create_vm("foreign", tags={OWNER_TAG: "ck-other"}, env=PYTHON_ENV)
    arm_standin.create_vm("off", power_state="deallocated")

    session = azure_world.session(start_rescan(azure_world.ctx, azure_world.group_id, wait=True))

    machines = azure_world.machines()
    expected = {
        "crowded": ("skipped", "the VM already has 25 managed run commands; Azure allows 25 per VM"),
        "secure": ("skipped", "no Linux agent on UEFI Secure Boot machines"),
        "oldps": ("skipped", "Windows PowerShell 5.1 or later is required (found 5.0.10586.117)"),
        "blocked": ("failed", "scripts are blocked by the PowerShell execution policy"),
        "foreign": ("foreign", "cloudkeep:server=ck-other"),
        "off": ("skipped", "not running"),
    }
    for name, (status, reason) in expected.items():
        row = machines[name]
        assert row.status == status and reason in row.status_reason, (name, row.status, row.status_reason)
    assert azure_world.steps("crowded")[0][:2] == ("probe", "skipped")  # no slot was used to probe
    assert len([k for k in arm_standin.run_commands if k[0] == crowded.id.lower()]) == 25
    assert session.state == "warning" and session.stats["found"] == 6


def test_expired_and_tampered_sas_urls_are_refused_by_azurite(
    azure_world: RescanWorld, arm_standin: ArmStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    vm = arm_standin.create_vm("web1", env=PYTHON_ENV)
    monkeypatch.setattr(bundles, "URL_EXPIRES_SECONDS", -600)  # already expired (beyond the clock skew)

    start_rescan(azure_world.ctx, azure_world.group_id, wait=True)

    row = azure_world.machines()["web1"]
    assert row.status == "failed" and "download of the bundle was refused" in row.status_reason
    assert "403" in row.status_reason

    # A URL whose signature was altered, handed to the machine by a bootstrap script.
    provider = azure_world.ctx.provider_for(azure_world.credential_id)
    try:
        manifest, _ = bundles.current_bundle(azure_world.ctx)
        key = f"bundles/{manifest.version}/{manifest.archives['linux'].file}"  # uploaded by the rescan
        url = provider.storage.signed_url(_location(azure_world), key, method="GET", expires_seconds=600)
        tampered = url.replace("sig=", "sig=AAAA")
        script = scripts.linux_bootstrap(
            version=manifest.version, url=tampered, sha256=manifest.archives["linux"].sha256, config={}
        )
        machine = provider.inventory.get_machine(vm.id)
        assert machine is not None
        result = provider.commands.run(machine, script, timeout=120)
    finally:
        provider.close()
    outcome = scripts.read_install(result.exit_code, result.stdout, result.stderr)
    assert not outcome.ok and "download of the bundle was refused" in outcome.reason
    assert "403" in outcome.reason


def _location(world: RescanWorld) -> str:
    from cloudkeep.server.db.models import Repository

    with world.ctx.db() as session:
        repo = session.get(Repository, world.repository_id)
        assert repo is not None
        return repo.location
