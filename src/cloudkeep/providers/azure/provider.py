"""The Azure provider: VM inventory, managed Run Commands, Queue Storage, Blob storage with SAS.

Credential: ``{tenant_id, client_id, client_secret, subscription_id}``; options are listed in
``cloudkeep.providers.azure.session``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from cloudkeep.errors import PermissionDeniedError
from cloudkeep.providers.azure.commands import AzureRunCommandChannel
from cloudkeep.providers.azure.errors import azure_errors
from cloudkeep.providers.azure.facts import FACTS
from cloudkeep.providers.azure.inventory import AzureInventory
from cloudkeep.providers.azure.queues import AzureQueueService
from cloudkeep.providers.azure.session import AzureSession
from cloudkeep.providers.azure.storage import AzureBlobStorageService
from cloudkeep.providers.base import CloudProvider


class AzureProvider(CloudProvider):
    facts = FACTS

    def __init__(self, credential: Mapping[str, Any], options: Mapping[str, Any]) -> None:
        self.session = AzureSession(credential, options)
        self._inventory = AzureInventory(self.session)
        self._commands = AzureRunCommandChannel(self.session)
        self._queues: AzureQueueService | None = None
        self._storage = AzureBlobStorageService(self.session)

    @property
    def inventory(self) -> AzureInventory:
        return self._inventory

    @property
    def commands(self) -> AzureRunCommandChannel:
        return self._commands

    @property
    def queues(self) -> AzureQueueService:
        if self._queues is None:
            self._queues = AzureQueueService(self.session.require_storage("Azure queues"))
        return self._queues

    @property
    def storage(self) -> AzureBlobStorageService:
        return self._storage

    def check_permissions(self) -> list[str]:
        """Harmless reads standing in for each documented action family (ARM has no dry run).

        Write actions (tags, run commands) cannot be probed without side effects; rescan reports
        them when they fail. Wrong credentials raise AuthenticationError instead of a list.
        """
        compute = self.session.compute
        checks: list[tuple[str, Callable[[], Any]]] = [
            (
                "Microsoft.Compute/virtualMachines/read",
                lambda: next(iter(compute.virtual_machines.list_all()), None),
            ),
        ]
        if self.session.storage is not None:
            checks += [
                ("Microsoft.Storage/storageAccounts/queueServices/queues/read",
                 lambda: next(iter(self.queues.service.list_queues()), None)),
                ("Microsoft.Storage/storageAccounts/blobServices/containers/read",
                 lambda: next(iter(self.queues.blobs.list_containers()), None)),
            ]  # fmt: skip
        missing = []
        for action, call in checks:
            try:
                with azure_errors(action):
                    call()
            except PermissionDeniedError:
                missing.append(action)
        return missing

    def close(self) -> None:
        self.session.close()


def create_azure_provider(credential: Mapping[str, Any], options: Mapping[str, Any]) -> AzureProvider:
    return AzureProvider(credential, options)
