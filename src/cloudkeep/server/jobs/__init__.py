"""Backup jobs: schedules, the scheduler, the session runner, retention, notifications, health checks.

``start_job`` and ``stop_session`` are the contract the API and CLI call.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudkeep.server.jobs.lifecycle import start_job, stop_session


def __getattr__(name: str) -> Any:
    # Loaded on first use (PEP 562): every CLI start imports ``jobs.options`` (the API schema), which
    # must not pull in the session runner, the engine and the state store behind ``lifecycle``.
    if name in __all__:
        return getattr(importlib.import_module("cloudkeep.server.jobs.lifecycle"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["start_job", "stop_session"]
