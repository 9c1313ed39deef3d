"""Step 7: confirm that the machine's services answer.

The proof is a ``ping`` sent to the agent queue and answered on the server queue, through the
dispatcher. Until a dispatcher is available in this build, the check falls back to asking the
command channel whether the three services run (and says so in the step's detail).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from cloudkeep.errors import CloudkeepError
from cloudkeep.providers.base import CloudProvider, Machine, Platform
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import DiscoveredMachine
from cloudkeep.server.rescan import scripts
from cloudkeep.server.rescan.deploy import CONFIRM_TIMEOUT, StepStop

WINDOWS_SERVICES_CHECK = """$ErrorActionPreference = 'Stop'
$Names = 'cloudkeep-message', 'cloudkeep-agent', 'cloudkeep-transport'
$Down = @(Get-Service -Name $Names | Where-Object { $_.Status -ne 'Running' })
if ($Down.Count -gt 0) { Write-Output "CLOUDKEEP-ERROR not running: $($Down.Name -join ', ')"; exit 1 }
Write-Output CLOUDKEEP-SERVICES-OK
"""


def make_confirm(ctx: ServerContext, provider: CloudProvider) -> Callable[[DiscoveredMachine, Machine], str]:
    try:
        dispatcher_module = importlib.import_module("cloudkeep.server.dispatcher")
    except ImportError:
        dispatcher_module = None

    def confirm(row: DiscoveredMachine, machine: Machine) -> str:
        if dispatcher_module is not None:
            return _ping(ctx, dispatcher_module, row)
        return _services_check(provider, machine)

    return confirm


def _ping(ctx: ServerContext, module: object, row: DiscoveredMachine) -> str:
    module.ensure_consumers(ctx)  # type: ignore[attr-defined]
    dispatcher = module.Dispatcher(ctx)  # type: ignore[attr-defined]
    try:
        payload = dispatcher.call(row.id, "ping", {}, timeout=CONFIRM_TIMEOUT)
    except CloudkeepError as exc:
        raise StepStop("failed", f"the services did not answer a ping through the queues: {exc}") from exc
    except TimeoutError as exc:
        raise StepStop(
            "failed", f"no answer to a ping through the queues within {CONFIRM_TIMEOUT:.0f} s"
        ) from exc
    version = payload.get("version", "?") if isinstance(payload, dict) else "?"
    return f"ping answered through the queues (services version {version})"


def _services_check(provider: CloudProvider, machine: Machine) -> str:
    script = (
        WINDOWS_SERVICES_CHECK if machine.platform == Platform.WINDOWS else scripts.services_check_script()
    )
    try:
        result = provider.commands.run(machine, script, timeout=CONFIRM_TIMEOUT)
    except CloudkeepError as exc:
        raise StepStop("failed", f"could not check the services: {exc}") from exc
    if not result.ok or "CLOUDKEEP-SERVICES-OK" not in result.stdout:
        error = next(
            (
                ln.removeprefix("CLOUDKEEP-ERROR ")
                for ln in result.stdout.splitlines()
                if ln.startswith("CLOUDKEEP-ERROR ")
            ),
            "",
        )
        raise StepStop(
            "failed", f"the services do not run after install: {error or result.stderr.strip()[:300]}"
        )
    return "message service, agent and transport service run (command channel check)"
