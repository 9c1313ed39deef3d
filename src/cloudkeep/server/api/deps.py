"""Request dependencies: the server context, the calling principal, pagination."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloudkeep.server.auth import LOCAL, Principal, authenticate
from cloudkeep.server.context import ServerContext

MAX_OFFSET = 2**31 - 1
_bearer = HTTPBearer(auto_error=False, description="An API token from `cloudkeep server token create`.")


def get_ctx(request: Request) -> ServerContext:
    ctx: ServerContext = request.app.state.ctx
    return ctx


def reader(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any valid token (or nobody when the app was built without authentication, for embedded use)."""
    if not request.app.state.require_auth:
        return LOCAL
    with get_ctx(request).db() as session:
        return authenticate(session, credentials.credentials if credentials else None)


def admin(principal: Annotated[Principal, Depends(reader)], request: Request) -> Principal:
    principal.require_admin(f"{request.method} {request.url.path}")
    return principal


Ctx = Annotated[ServerContext, Depends(get_ctx)]
Reader = Annotated[Principal, Depends(reader)]
Admin = Annotated[Principal, Depends(admin)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip.")]
