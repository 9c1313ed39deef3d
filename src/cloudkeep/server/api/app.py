"""``create_app(ctx)``: the FastAPI application over one ``ServerContext``."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi_offline import FastAPIOffline

from cloudkeep import __version__
from cloudkeep.server import metrics
from cloudkeep.server.api import errors, routes
from cloudkeep.server.api.deps import Reader
from cloudkeep.server.api.descriptions import describe
from cloudkeep.server.context import ServerContext
from cloudkeep.server.dispatcher import consumer_queue_depths

API_PREFIX = "/api/v1"
DOCS_ASSETS = f"{API_PREFIX}/docs/assets"
DESCRIPTION = """Backup server for cloud machines.

Authenticate with `Authorization: Bearer <token>` (tokens: `cloudkeep server token create`);
read-only tokens may call every `GET`. Errors always answer `{"error": {"type", "message", "hint"}}`.
Long operations (job start, restore, rescan) return a session at once: follow it with
`GET /api/v1/sessions/{id}` or stream it from `/api/v1/sessions/{id}/events`.
"""


def create_app(ctx: ServerContext, *, require_auth: bool = True) -> FastAPI:
    """Build the API. ``require_auth=False`` treats every caller as the local administrator."""
    # Swagger UI's assets come from the fastapi-offline package and are served here: the docs
    # page works on a server without internet access (no CDN).
    app = FastAPIOffline(
        title="cloudkeep",
        version=__version__,
        description=DESCRIPTION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        static_url=DOCS_ASSETS,
        swagger_ui_oauth2_redirect_url=f"{API_PREFIX}/docs/oauth2-redirect",
    )
    app.state.ctx = ctx
    app.state.require_auth = require_auth
    errors.install(app)
    router = routes.build_router()
    describe(router)
    app.include_router(router, prefix=API_PREFIX, responses=errors.ERROR_RESPONSES)
    scrapes = metrics.RenderCache(
        metrics.build_registry(ctx, queue_depths=consumer_queue_depths),
        min_interval=ctx.settings.metrics_min_interval_seconds,
    )

    @app.get("/healthz", tags=["server"])
    def healthz() -> dict[str, str]:
        """Liveness for load balancers (no authentication)."""
        return {"status": "ok", "server_id": ctx.server_id}

    @app.get("/metrics", tags=["server"], response_class=Response, responses=errors.ERROR_RESPONSES)
    def prometheus_metrics(_principal: Reader) -> Response:
        """Prometheus metrics (text format). Needs an API token, like the API: a read-only one
        is enough (Prometheus: ``authorization: {credentials: <token>}`` in the scrape config)."""
        return Response(scrapes.render(), media_type=metrics.CONTENT_TYPE)

    return app
