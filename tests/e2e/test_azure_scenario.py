"""The quickstart's scenario on Azure emulation: VMs + Run Command via the ARM stand-in, Azure Queue
Storage and Blob containers on Azurite.

Nothing emulates Azure Resource Manager, so the ARM stand-in (tests/support/arm_standin.py, an
HTTPS server in this process) serves VM listing, tags and managed run commands, each VM being a
simulated machine whose machine-side services are real processes. The stand-in accepts only its
own bearer token, so the server-side Azure session is given the stand-in's ``FakeCredential``
instead of a service principal (a monkeypatch: a stored credential holds JSON, not objects).
Queues and blobs are real Azurite, reached by the server and by the machines.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudkeep.config import Settings
from cloudkeep.providers.azure.session import AzureSession
from cloudkeep.providers.local import SimulatedMachine
from cloudkeep.server.client import Client, open_client
from cloudkeep.server.dispatcher import stop_consumers
from cloudkeep.server.services.schemas import CredentialCreate
from tests.e2e.scenario import PYTHON_ENV, ROLES, CloudWorld, run_scenario, stop_services
from tests.support.arm_standin import ArmStandIn, FakeCredential, RunCommandState
from tests.support.peers import Azurite

pytestmark = [pytest.mark.slow, pytest.mark.azurite]


@pytest.fixture
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    def stand_in_token(credential: Any, options: Any) -> FakeCredential:
        return FakeCredential()

    monkeypatch.setattr(AzureSession, "_service_principal", staticmethod(stand_in_token))
    c = open_client(Settings(home=tmp_path / "server", rescan_concurrency=8))
    yield c
    stop_consumers()
    c.close()


def _fill_run_commands(standin: ArmStandIn, vm: SimulatedMachine, count: int) -> None:
    """Run commands someone else left on the VM (Azure allows 25 managed run commands per VM)."""
    for i in range(count):
        name = f"someone-else-{i}"
        standin.run_commands[(vm.id.lower(), name)] = RunCommandState(
            name, vm.id, "westeurope", {}, provisioning_state="Succeeded"
        )


def test_azure_discover_deploy_backup_incremental_restore(
    client: Client, arm_standin: ArmStandIn, azurite: Azurite, unique_name: str
) -> None:
    tags = {"cloudkeep-e2e": unique_name}
    machines: dict[str, SimulatedMachine] = {}
    for role in ROLES:
        vm = arm_standin.create_vm(f"{unique_name}-{role}", tags=tags, env=PYTHON_ENV)
        machines[vm.name] = vm
    foreign = arm_standin.create_vm(
        f"{unique_name}-foreign", tags={**tags, "cloudkeep:server": "ck-another0000"}, env=PYTHON_ENV
    )
    busy = arm_standin.create_vm(f"{unique_name}-busy", tags=tags, env=PYTHON_ENV)
    _fill_run_commands(arm_standin, busy, 25)
    options = {
        key: value
        for key, value in arm_standin.provider_options(retry_backoff_factor=0.01).items()
        if key != "token_credential"
    }
    # The storage account key travels in the encrypted credential, not in the (visible) options.
    secret = {**arm_standin.credential(), "storage_connection_string": azurite.connection_string}
    world = CloudWorld(
        credential=CredentialCreate(
            name=f"{unique_name}-azure",
            provider="azure",
            secret=secret,  # type: ignore[arg-type]
            options=options,
        ),
        distribution_location=f"{unique_name}-dist/cloudkeep",
        backup_location=f"{unique_name}-backup/repository",
        include_tags=tags,
        machines=machines,
        refused={
            foreign.name: ("foreign", "managed by another backup server"),
            busy.name: ("skipped", "the VM already has 25 managed run commands"),
        },
    )
    try:
        report = run_scenario(client, world, name=unique_name)
    finally:
        stop_services([*machines.values(), foreign, busy])
    assert foreign.info()["tags"]["cloudkeep:server"] == "ck-another0000"  # left untouched
    for vm in machines.values():  # the channel deleted its run commands after each use
        assert not [n for v, n in arm_standin.run_commands if v == vm.id.lower()]
    print(f"azure scenario timings: {report.timings}")
