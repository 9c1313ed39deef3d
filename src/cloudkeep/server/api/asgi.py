"""The ASGI entry point uvicorn imports in each worker process (``cloudkeep server start``).

This is an edge: settings come from ``CLOUDKEEP_*`` environment variables, which
``cloudkeep server start`` sets from its flags before starting uvicorn.
"""

from __future__ import annotations

import logging
import os

from fastapi import FastAPI

from cloudkeep.config import Settings
from cloudkeep.server.api.app import create_app
from cloudkeep.server.context import ServerContext, open_context
from cloudkeep.server.dispatcher import ensure_consumers
from cloudkeep.server.scheduling.scheduler import start_scheduler

log = logging.getLogger(__name__)
BACKGROUND_ENV = "CLOUDKEEP_SERVER_BACKGROUND"


def start_background(ctx: ServerContext) -> list[str]:
    """Start the scheduler and the server-queue consumers; returns what was started."""
    start_scheduler(ctx)
    ensure_consumers(ctx)
    return ["scheduler", "server-queue consumers"]


def create_asgi_app() -> FastAPI:
    ctx = open_context(Settings())
    if os.environ.get(BACKGROUND_ENV, "1") != "0":
        start_background(ctx)
    return create_app(ctx)
