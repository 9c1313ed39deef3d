"""The local provider: simulated machines in a lab folder, an SQLite queue, folders for storage."""

from cloudkeep.providers.local.machine import Lab, SimulatedMachine
from cloudkeep.providers.local.provider import LocalProvider, create_local_provider

__all__ = ["Lab", "LocalProvider", "SimulatedMachine", "create_local_provider"]
