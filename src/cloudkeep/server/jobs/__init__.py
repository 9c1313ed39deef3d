"""Backup jobs: schedules, the scheduler, the session runner, retention, notifications, health checks.

``start_job`` and ``stop_session`` are the contract the API and CLI call.
"""

from cloudkeep.server.jobs.lifecycle import start_job, stop_session

__all__ = ["start_job", "stop_session"]
