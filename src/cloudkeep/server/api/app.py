"""``create_app(ctx)``: the FastAPI application over one ``ServerContext``."""

from __future__ import annotations

from fastapi import FastAPI

from cloudkeep import __version__
from cloudkeep.server.api import errors, routes
from cloudkeep.server.context import ServerContext

API_PREFIX = "/api/v1"


def create_app(ctx: ServerContext, *, require_auth: bool = True) -> FastAPI:
    """Build the API. ``require_auth=False`` treats every caller as the local administrator."""
    app = FastAPI(
        title="cloudkeep",
        version=__version__,
        description="Backup server for cloud machines. Authenticate with `Authorization: Bearer <token>`.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.require_auth = require_auth
    errors.install(app)
    app.include_router(routes.build_router(), prefix=API_PREFIX)

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, str]:
        """Liveness for load balancers (no authentication)."""
        return {"status": "ok", "server_id": ctx.server_id}

    return app
