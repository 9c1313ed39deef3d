"""The Azure provider: VMs via azure-mgmt-compute, managed Run Commands, Queue Storage, Blob SAS.

Importing this package imports no Azure SDK: ``facts`` and ``errors`` are what others may import
alone; ``provider`` builds the provider (through ``cloudkeep.providers.get_provider``).
"""
