"""The Agent: runs backup, retention and check for this machine, straight to object storage.

It is a ``TaskWorker`` over the ``agent`` spool; the work itself is in ``tasks`` (shared with
the fallback path).
"""

from __future__ import annotations

from cloudkeep.machine.config import MachineConfig
from cloudkeep.machine.worker import TaskWorker

AGENT_KINDS = frozenset({"backup", "retention", "check"})


def agent(config: MachineConfig) -> TaskWorker:
    return TaskWorker(config, "agent", parallel=2)
