"""Cloud providers (``aws``, ``azure``, ``local``): inventory, command channel, queues, storage.

The rest of the system reaches a cloud only through ``get_provider(kind, credential, options)``;
nothing outside ``cloudkeep.providers`` and ``cloudkeep.storage`` imports boto3 or the Azure SDK.
"""

from cloudkeep.providers.base import (
    CloudProvider,
    CommandChannel,
    CommandResult,
    Inventory,
    InventoryScope,
    Machine,
    Platform,
    Queue,
    QueueService,
    ReceivedMessage,
    ScopedCredentials,
    StorageService,
    get_provider,
    register_provider,
)

__all__ = [
    "CloudProvider",
    "CommandChannel",
    "CommandResult",
    "Inventory",
    "InventoryScope",
    "Machine",
    "Platform",
    "Queue",
    "QueueService",
    "ReceivedMessage",
    "ScopedCredentials",
    "StorageService",
    "get_provider",
    "register_provider",
]
