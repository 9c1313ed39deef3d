"""The ASGI entry point uvicorn imports in each worker process (``cloudkeep server start``).

This is an edge: settings come from ``CLOUDKEEP_*`` environment variables, which
``cloudkeep server start`` sets from its flags before starting uvicorn.
"""

from __future__ import annotations

import importlib
import logging
import os

from fastapi import FastAPI

from cloudkeep.config import Settings
from cloudkeep.server.api.app import create_app
from cloudkeep.server.context import ServerContext, open_context

log = logging.getLogger(__name__)
BACKGROUND_ENV = "CLOUDKEEP_SERVER_BACKGROUND"


def start_background(ctx: ServerContext) -> list[str]:
    """Start the scheduler and the server-queue consumers when this build has them."""
    started = []
    for module, function in (
        ("cloudkeep.server.jobs.scheduler", "start_scheduler"),
        ("cloudkeep.server.dispatcher", "ensure_consumers"),
    ):
        try:
            entry = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError):
            log.info("%s.%s not available; skipped", module, function)
            continue
        entry(ctx)
        started.append(f"{module}.{function}")
    return started


def create_asgi_app() -> FastAPI:
    ctx = open_context(Settings())
    if os.environ.get(BACKGROUND_ENV, "1") != "0":
        start_background(ctx)
    return create_app(ctx)
