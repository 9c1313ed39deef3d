"""The REST API (FastAPI): thin routes over ``cloudkeep.server.services``."""

from cloudkeep.server.api.app import create_app

__all__ = ["create_app"]
