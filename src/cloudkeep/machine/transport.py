"""The Transport Service: restores, volume restores and browsing, in its own process.

Separate from the Agent so a restore never waits behind (or slows) a running backup.
"""

from __future__ import annotations

from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.worker import TaskWorker

TRANSPORT_KINDS = frozenset({"restore", "restore_volume", "browse"})


def transport(config: MachineConfig) -> TaskWorker:
    return TaskWorker(config, "transport", parallel=4)
