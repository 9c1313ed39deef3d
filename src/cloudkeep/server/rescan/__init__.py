"""Rescan: discover a protection group's machines and deploy the machine-side services on each.

Public surface: ``start_rescan`` (contract), ``wait_for_session``, ``current_bundle_version`` /
``set_bundle_version`` (the fleet's target bundle); scheduled rescans are in
``cloudkeep.server.scheduling.rescans``. See ``docs/deployment.md`` for the state machine.
"""

from cloudkeep.server.rescan.bundles import current_bundle_version, set_bundle_version
from cloudkeep.server.rescan.deploy import STEPS, agent_queue_name, server_queue_name
from cloudkeep.server.rescan.session import start_rescan, wait_for_session

__all__ = [
    "STEPS",
    "agent_queue_name",
    "current_bundle_version",
    "server_queue_name",
    "set_bundle_version",
    "start_rescan",
    "wait_for_session",
]
