"""Stand-in for Azure Resource Manager (a test fake, clearly named): VMs and managed Run Commands.

No emulator covers ARM, so this small HTTPS server on loopback serves exactly what
azure-mgmt-compute calls for cloudkeep, and nothing more:

* ``GET  …/providers/Microsoft.Compute/virtualMachines`` (subscription or resource group; pages
  of two with ``nextLink``; ``statusOnly=true`` returns power states),
* ``GET|PATCH …/virtualMachines/{vm}`` (details, ``$expand=instanceView``; tag updates),
* ``PUT|GET|DELETE …/virtualMachines/{vm}/runCommands/{name}`` and ``GET …/runCommands``.

Each VM is a ``SimulatedMachine`` in a ``Lab``; a run command executes its script there in a
thread (``provisioningState`` Creating → Succeeded, like ``asyncExecution=false``), reports the
last 4,096 characters of output in the instance view as Azure does, and appends the full output
to ``outputBlobUri``/``errorBlobUri`` when given (SAS URLs on Azurite), as the real agent does.

The SDK sends bearer tokens only over HTTPS, so the server uses a self-signed certificate
generated here (``ca_path`` for ``connection_verify``) and expects the token of ``FakeCredential``.
``fail_next`` injects 429/5xx responses; ``deny`` answers 403 AuthorizationFailed for an action;
a VM named in ``broken_agents`` has run commands end in ``provisioningState`` Failed, never run.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from azure.core.credentials import AccessToken

from cloudkeep.providers.local.machine import Lab, SimulatedMachine
from tests.support.proxy import LoopbackServer, StandInHandler
from tests.support.tls import make_self_signed

TOKEN = "cloudkeep-arm-standin-token"
OUTPUT_TAIL = 4096
PAGE = 2
_VM_PATH = re.compile(
    r"^/subscriptions/(?P<sub>[^/]+)(?:/resourceGroups/(?P<rg>[^/]+))?/providers/Microsoft\.Compute/"
    r"virtualMachines(?:/(?P<vm>[^/]+)(?:/runCommands(?:/(?P<cmd>[^/]+))?)?)?$",
    re.IGNORECASE,
)


class FakeCredential:
    """A TokenCredential handing out the stand-in's token (the real one is ClientSecretCredential)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(TOKEN, int(time.time()) + 3600)

    def get_token_info(self, *scopes: str, options: Mapping[str, Any] | None = None) -> Any:
        from azure.core.credentials import AccessTokenInfo

        return AccessTokenInfo(TOKEN, int(time.time()) + 3600)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


@dataclass
class RunCommandState:
    name: str
    vm_id: str
    location: str
    properties: dict[str, Any]
    provisioning_state: str = "Creating"
    instance_view: dict[str, Any] = field(default_factory=lambda: {"executionState": "Pending"})

    def body(self, with_instance_view: bool) -> dict[str, Any]:
        properties = {**self.properties, "provisioningState": self.provisioning_state}
        if with_instance_view:
            properties["instanceView"] = self.instance_view
        return {
            "id": f"{self.vm_id}/runCommands/{self.name}",
            "name": self.name,
            "type": "Microsoft.Compute/virtualMachines/runCommands",
            "location": self.location,
            "properties": properties,
        }


class ArmStandIn:
    def __init__(self, folder: Path, subscription_id: str = "00000000-0000-0000-0000-0000000000aa") -> None:
        self.subscription_id = subscription_id
        self.lab = Lab(folder / "lab")
        tls = make_self_signed(folder / "tls")
        self.ca_path = tls.cert  # the certificate signs itself: it is the CA bundle clients trust
        self.run_commands: dict[tuple[str, str], RunCommandState] = {}
        self.requests: list[tuple[str, str]] = []
        self.denied: set[tuple[str, str]] = set()  # (method, kind) → 403
        self.broken_agents: set[str] = set()  # VM names whose run commands fail to provision
        self._faults: list[int] = []
        self._lock = threading.Lock()
        self._server = LoopbackServer(self._handler(), tls=tls)

    @property
    def endpoint(self) -> str:
        return self._server.url

    def provider_options(self, **extra: Any) -> dict[str, Any]:
        """Options for the Azure provider pointing at this stand-in."""
        return {
            "arm_endpoint": self.endpoint,
            "connection_verify": str(self.ca_path),
            "token_credential": FakeCredential(),
            "polling_interval": 0.05,
            **extra,
        }

    def credential(self) -> dict[str, str]:
        return {
            "tenant_id": "t",
            "client_id": "c",
            "client_secret": "s",
            "subscription_id": self.subscription_id,
        }

    def vm_id(self, resource_group: str, name: str) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{name}"
        )

    def create_vm(
        self,
        name: str,
        *,
        resource_group: str = "rg-cloudkeep",
        location: str = "westeurope",
        platform: str = "linux",
        security_type: str | None = "TrustedLaunch",
        secure_boot: bool | None = False,
        power_state: str = "running",
        tags: dict[str, str] | None = None,
        **machine: Any,
    ) -> SimulatedMachine:
        return self.lab.create_machine(
            name, machine_id=self.vm_id(resource_group, name), platform=platform, tags=tags, region=location,
            state=power_state, secure_boot=secure_boot, boot_mode="uefi" if security_type else None,
            azure={"resource_group": resource_group, "security_type": security_type,
                   "vm_id": str(uuid.uuid4())},
            **machine,
        )  # fmt: skip

    def fail_next(self, count: int, status: int = 429) -> None:
        with self._lock:
            self._faults.extend([status] * count)

    def deny(self, method: str, kind: str) -> None:
        """Answer 403 to ``method`` on ``kind`` ("vms", "vm", "runcommand", "runcommands")."""
        self.denied.add((method, kind))

    def close(self) -> None:
        self._server.close()

    # --- resources ----------------------------------------------------------------------------

    def _vm_body(
        self, machine: SimulatedMachine, *, instance_view: bool = False, status_only: bool = False
    ) -> dict:
        info = machine.info()
        azure = info.get("azure", {})
        statuses = [
            {"code": "ProvisioningState/succeeded", "level": "Info"},
            {
                "code": f"PowerState/{'running' if info['state'] == 'running' else 'deallocated'}",
                "level": "Info",
            },
        ]
        body: dict[str, Any] = {
            "id": info["id"], "name": info["name"], "type": "Microsoft.Compute/virtualMachines",
            "location": info["region"], "tags": info.get("tags", {}),
        }  # fmt: skip
        if status_only:
            body["properties"] = {"instanceView": {"statuses": statuses}}
            return body
        security: dict[str, Any] = {}
        if azure.get("security_type"):
            security = {
                "securityType": azure["security_type"],
                "uefiSettings": {"secureBootEnabled": bool(info.get("secure_boot")), "vTpmEnabled": True},
            }
        body["properties"] = {
            "vmId": azure.get("vm_id"),
            "provisioningState": "Succeeded",
            "hardwareProfile": {"vmSize": "Standard_B2s"},
            "storageProfile": {"osDisk": {"osType": "Windows" if info["platform"] == "windows" else "Linux",
                                          "name": f"{info['name']}-os", "createOption": "FromImage"}},
            "osProfile": {"computerName": info.get("hostname", info["name"])},
            **({"securityProfile": security} if security else {}),
        }  # fmt: skip
        if instance_view:
            body["properties"]["instanceView"] = {"statuses": statuses}
        return body

    def _find_vm(self, vm_id: str) -> SimulatedMachine | None:
        return next((m for m in self.lab.list() if m.id.lower() == vm_id.lower()), None)

    def _execute(self, state: RunCommandState, machine: SimulatedMachine) -> None:
        if machine.name in self.broken_agents:  # the VM agent never picks it up: Azure gives up
            state.provisioning_state = "Failed"
            return
        started = _now()
        state.instance_view = {"executionState": "Running", "startTime": started}
        script = str(state.properties.get("source", {}).get("script", ""))
        timeout = float(state.properties.get("timeoutInSeconds") or 5400)
        outcome = machine.run(script, timeout=timeout)
        for stream, uri_key in ((outcome.stdout, "outputBlobUri"), (outcome.stderr, "errorBlobUri")):
            uri = state.properties.get(uri_key)
            if uri:
                _append_blob(str(uri), stream.encode())
        state.instance_view = {
            "executionState": "TimedOut"
            if outcome.timed_out
            else ("Succeeded" if outcome.exit_code == 0 else "Failed"),
            "exitCode": outcome.exit_code,
            "output": outcome.stdout[-OUTPUT_TAIL:],
            "error": outcome.stderr[-OUTPUT_TAIL:],
            "startTime": started,
            "endTime": _now(),
        }
        state.provisioning_state = "Succeeded"

    # --- HTTP ---------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(StandInHandler):
            def _send(self, status: int, body: Any = None, headers: Mapping[str, str] | None = None) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                base = {"Content-Type": "application/json", "x-ms-request-id": str(uuid.uuid4())}
                self.answer(status, data, {**base, **(headers or {})})

            def _error(
                self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
            ) -> None:
                self._send(status, {"error": {"code": code, "message": message}}, headers)

            def _handle(self) -> None:
                raw = self.read_body()
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                standin.requests.append((self.command, parts.path))
                with standin._lock:
                    fault = standin._faults.pop(0) if standin._faults else None
                if fault is not None:
                    return self._error(fault, "TooManyRequests" if fault == 429 else "InternalServerError",
                                       "injected by the ARM stand-in", {"Retry-After": "0"})  # fmt: skip
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._error(401, "InvalidAuthenticationToken", "The access token is invalid.")
                match = _VM_PATH.match(parts.path)
                if not match or match["sub"] != standin.subscription_id:
                    return self._error(404, "ResourceNotFound", f"no resource at {parts.path}")
                kind = _kind(match, parts.path)
                if (self.command, kind) in standin.denied:
                    message = f"The client does not have authorization to perform {self.command} on {kind}."
                    return self._error(403, "AuthorizationFailed", message)
                body = json.loads(raw) if raw else {}
                if kind == "vms":
                    return self._list_vms(match["rg"], query)
                vm_id = standin.vm_id(match["rg"] or "", match["vm"])
                machine = standin._find_vm(vm_id)
                if machine is None:
                    return self._error(
                        404, "ResourceNotFound", f"The Resource '{match['vm']}' was not found."
                    )
                if kind == "vm":
                    return self._vm(machine, body, query)
                if kind == "runcommands":
                    items = [
                        s.body(False) for (v, _), s in standin.run_commands.items() if v == vm_id.lower()
                    ]
                    return self._send(200, {"value": items})
                return self._run_command(machine, vm_id, match["cmd"], body, query)

            def _list_vms(self, resource_group: str | None, query: dict[str, str]) -> None:
                machines = [
                    m for m in standin.lab.list()
                    if resource_group is None or m.info().get("azure", {}).get("resource_group", "").lower()
                    == resource_group.lower()
                ]  # fmt: skip
                start = int(query.get("$skiptoken", "0"))
                status_only = query.get("statusOnly") == "true"
                page = [standin._vm_body(m, status_only=status_only) for m in machines[start : start + PAGE]]
                result: dict[str, Any] = {"value": page}
                if start + PAGE < len(machines):
                    next_query = {**query, "$skiptoken": str(start + PAGE)}
                    result["nextLink"] = (
                        f"{standin.endpoint}{urlsplit(self.path).path}?{urlencode(next_query)}"
                    )
                self._send(200, result)

            def _vm(self, machine: SimulatedMachine, body: dict[str, Any], query: dict[str, str]) -> None:
                if self.command == "PATCH":
                    if "tags" in body:
                        machine.update(tags=dict(body["tags"] or {}))
                    return self._send(200, standin._vm_body(machine))
                if self.command != "GET":
                    return self._error(405, "MethodNotAllowed", self.command)
                self._send(
                    200, standin._vm_body(machine, instance_view=query.get("$expand") == "instanceView")
                )

            def _run_command(
                self,
                machine: SimulatedMachine,
                vm_id: str,
                name: str,
                body: dict[str, Any],
                query: dict[str, str],
            ) -> None:
                key = (vm_id.lower(), name)
                state = standin.run_commands.get(key)
                if self.command == "PUT":
                    if state is None and sum(1 for v, _ in standin.run_commands if v == key[0]) >= 25:
                        return self._error(409, "OperationNotAllowed", "at most 25 run commands per VM")
                    state = RunCommandState(
                        name, vm_id, str(body.get("location", "")), dict(body.get("properties", {}))
                    )
                    standin.run_commands[key] = state
                    threading.Thread(target=standin._execute, args=(state, machine), daemon=True).start()
                    return self._send(201, state.body(False))
                if state is None:
                    if self.command == "DELETE":
                        return self._send(204)
                    return self._error(404, "ResourceNotFound", f"run command {name} not found")
                if self.command == "DELETE":
                    del standin.run_commands[key]
                    return self._send(200)
                self._send(200, state.body(query.get("$expand") == "instanceView"))

            do_GET = do_PUT = do_PATCH = do_DELETE = _handle

        return Handler


def _kind(match: re.Match[str], path: str) -> str:
    if match["cmd"]:
        return "runcommand"
    if path.lower().endswith("/runcommands"):
        return "runcommands"
    return "vm" if match["vm"] else "vms"


def _append_blob(uri: str, data: bytes) -> None:
    """Write ``data`` to an append blob through its SAS URL, as the Run Command agent does."""
    from azure.storage.blob import BlobClient

    blob = BlobClient.from_blob_url(uri)
    blob.create_append_blob()
    for offset in range(0, len(data), 4 * 1024 * 1024):
        blob.append_block(data[offset : offset + 4 * 1024 * 1024])
