"""Cloud providers (``aws``, ``azure``, ``local``): inventory, command channel, queues, storage.

The rest of the system reaches a cloud only through ``get_provider(kind, credential, options)``
and asks ``provider_facts(kind)`` what it needs to know about one; nothing outside
``cloudkeep.providers`` and ``cloudkeep.storage`` imports boto3 or the Azure SDK, and importing
this package imports neither (see ``registry``).
"""

from cloudkeep.providers.base import (
    CloudProvider,
    CommandCapacity,
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
)
from cloudkeep.providers.facts import CredentialField, ProviderFacts
from cloudkeep.providers.registry import get_provider, provider_facts, provider_kinds, register_provider

__all__ = [
    "CloudProvider",
    "CommandCapacity",
    "CommandChannel",
    "CommandResult",
    "CredentialField",
    "Inventory",
    "InventoryScope",
    "Machine",
    "Platform",
    "ProviderFacts",
    "Queue",
    "QueueService",
    "ReceivedMessage",
    "ScopedCredentials",
    "StorageService",
    "get_provider",
    "provider_facts",
    "provider_kinds",
    "register_provider",
]
