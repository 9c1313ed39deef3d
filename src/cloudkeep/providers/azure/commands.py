"""Azure managed Run Commands: create, wait, read the output, delete.

A VM holds at most 25 managed run commands; ``command_capacity`` lets rescan refuse a VM
that already has more than 24. The instance view carries only the last 4,096 bytes of output, so
when a storage account is configured the full stdout/stderr go to append blobs
(``outputBlobUri``/``errorBlobUri``, SAS URLs valid for the command's lifetime) and are read from
there. Our run command is deleted afterwards, whatever happened, so it never counts against the
limit. Each ARM call goes through the caller's pacer: ARM counts reads and writes per subscription,
and a fleet's worth of run commands polled unpaced would exceed its read bucket.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from cloudkeep.compat import UTC
from cloudkeep.errors import CloudkeepError, ThrottledError
from cloudkeep.providers.azure.errors import azure_errors
from cloudkeep.providers.azure.inventory import _as_dict, _field, parse_vm_id
from cloudkeep.providers.azure.session import AzureSession
from cloudkeep.providers.base import CallPacer, CommandCapacity, CommandChannel, CommandResult, Machine, paced

log = logging.getLogger(__name__)
OUTPUT_CONTAINER = "cloudkeep-run-command-output"
MAX_MANAGED_RUN_COMMANDS = 25
MAX_EXISTING_MANAGED_COMMANDS = MAX_MANAGED_RUN_COMMANDS - 1  # we need one


class AzureRunCommandChannel(CommandChannel):
    def __init__(self, session: AzureSession) -> None:
        self.session = session

    def command_capacity(self, machine: Machine) -> CommandCapacity:
        """Counted before the probe, which itself needs one of the VM's run-command slots."""
        count = self.managed_command_count(machine)
        if count <= MAX_EXISTING_MANAGED_COMMANDS:
            return CommandCapacity(f"{count} managed run commands")
        return CommandCapacity(
            f"{count} managed run commands",
            refusal=f"the VM already has {count} managed run commands",
            remedy=f"Azure allows {MAX_MANAGED_RUN_COMMANDS} per VM and cloudkeep needs one — delete unused "
            "run commands and rescan",
        )

    def managed_command_count(self, machine: Machine) -> int:
        group, name = parse_vm_id(machine.id)
        with azure_errors("Microsoft.Compute/virtualMachines/runCommands/read", machine.id):
            return sum(
                1
                for _ in self.session.compute.virtual_machine_run_commands.list_by_virtual_machine(
                    group, name
                )
            )

    def _output_blobs(self, command_name: str, timeout: float) -> tuple[str, str] | None:
        """Append-blob SAS URLs (create/write/append/read) for stdout and stderr, if storage is configured."""
        account = self.session.storage
        if account is None or not account.account_key:
            return None
        from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

        service = BlobServiceClient(account.blob_endpoint, credential=account.credential)
        with (
            azure_errors("Microsoft.Storage/storageAccounts/blobServices/containers/write", OUTPUT_CONTAINER),
            contextlib.suppress(Exception),
        ):  # exists already
            service.create_container(OUTPUT_CONTAINER)
        expiry = datetime.now(UTC) + timedelta(seconds=timeout + 3600)
        urls = []
        for stream in ("stdout", "stderr"):
            blob = f"{command_name}/{stream}"
            sas = generate_blob_sas(
                account.account_name, OUTPUT_CONTAINER, blob, account_key=account.account_key,
                permission=BlobSasPermissions(read=True, add=True, create=True, write=True), expiry=expiry,
            )  # fmt: skip
            urls.append(f"{account.blob_endpoint}/{OUTPUT_CONTAINER}/{blob}?{sas}")
        return urls[0], urls[1]

    def _read_blob(self, url: str) -> str | None:
        from azure.core.exceptions import ResourceNotFoundError
        from azure.storage.blob import BlobClient

        try:
            return BlobClient.from_blob_url(url).download_blob().readall().decode(errors="replace")
        except ResourceNotFoundError:
            return None

    def _delete_blobs(self, urls: tuple[str, str] | None) -> None:
        from azure.storage.blob import BlobClient

        for url in urls or ():
            with contextlib.suppress(Exception):
                BlobClient.from_blob_url(url).delete_blob()

    def run(
        self, machine: Machine, script: str, *, timeout: float = 600.0, pacer: CallPacer | None = None
    ) -> CommandResult:
        """Create (a paced write), read the instance view at the session's polling interval (paced
        reads) until the script ends, delete (a paced write). The SDK's own long-running-operation
        polling is off (``polling=False``): its reads would bypass the pacer."""
        group, vm_name = parse_vm_id(machine.id)
        command_name = f"cloudkeep-{uuid.uuid4().hex[:12]}"
        blobs = self._output_blobs(command_name, timeout)
        properties: dict[str, Any] = {
            "source": {"script": script},
            "asyncExecution": False,
            "timeoutInSeconds": max(1, int(timeout)),
            "treatFailureAsDeploymentFailure": False,
        }
        if blobs:
            properties["outputBlobUri"], properties["errorBlobUri"] = blobs
        run_commands = self.session.compute.virtual_machine_run_commands

        def create() -> None:
            with azure_errors("Microsoft.Compute/virtualMachines/runCommands/write", machine.id):
                run_commands.begin_create_or_update(
                    group, vm_name, command_name, {"location": machine.region, "properties": properties},
                    polling=False,
                )  # fmt: skip

        def delete() -> None:
            run_commands.begin_delete(group, vm_name, command_name, polling=False)

        try:
            paced(pacer, "write", machine.region, create)
            # Azure enforces timeoutInSeconds; the extra 30 s are a safety net.
            view = self._await_view(group, vm_name, command_name, machine, timeout + 30, pacer)
            if view.get("executionState") in (None, "Pending", "Running"):
                return CommandResult(-1, "", "", command_id=command_name, timed_out=True)
            return self._result(command_name, view, blobs)
        finally:
            with contextlib.suppress(Exception):  # best effort: a leftover counts against the 25 limit
                paced(pacer, "write", machine.region, delete)
            self._delete_blobs(blobs)

    def _await_view(
        self,
        group: str,
        vm_name: str,
        command_name: str,
        machine: Machine,
        wait: float,
        pacer: CallPacer | None,
    ) -> dict[str, Any]:
        """The run command's instance view once its script ended, or as it is after ``wait`` seconds."""
        run_commands = self.session.compute.virtual_machine_run_commands
        deadline = time.monotonic() + wait

        def read() -> dict[str, Any]:
            with azure_errors("Microsoft.Compute/virtualMachines/runCommands/read", machine.id):
                return _as_dict(
                    run_commands.get_by_virtual_machine(group, vm_name, command_name, expand="instanceView")
                )

        while True:
            try:
                resource = paced(pacer, "read", machine.region, read)
            except ThrottledError as error:  # beyond the pacer's retries: read again next round
                log.warning(
                    "run command %s on %s: instance view throttled: %s", command_name, machine.id, error
                )
                resource = {}
            properties = resource.get("properties") or resource
            view = _field(properties, "instanceView") or {}
            if view.get("executionState") not in (None, "Pending", "Running") or time.monotonic() > deadline:
                return dict(view)
            if _field(properties, "provisioningState") == "Failed":  # what the SDK's poller raised for
                raise CloudkeepError(
                    f"Azure could not start run command {command_name} on {machine.id} (provisioning failed)",
                    hint="check the VM agent's state on the VM (Azure portal: Run command, extensions)",
                )
            time.sleep(self.session.polling_interval)

    def _result(
        self, command_name: str, view: dict[str, Any], blobs: tuple[str, str] | None
    ) -> CommandResult:
        stdout = str(view.get("output") or "")
        stderr = str(view.get("error") or "")
        if blobs:
            stdout = self._read_blob(blobs[0]) or stdout
            stderr = self._read_blob(blobs[1]) or stderr
        state = str(view.get("executionState") or view.get("execution_state") or "")
        exit_code = view.get("exitCode", view.get("exit_code"))
        if exit_code is None:
            exit_code = 0 if state == "Succeeded" else 1
        return CommandResult(
            int(exit_code), stdout, stderr, command_id=command_name, timed_out=state == "TimedOut"
        )
