"""The Azure provider: VMs via azure-mgmt-compute, managed Run Commands, Queue Storage, Blob SAS."""

from cloudkeep.providers.azure.provider import AzureProvider, create_azure_provider

__all__ = ["AzureProvider", "create_azure_provider"]
