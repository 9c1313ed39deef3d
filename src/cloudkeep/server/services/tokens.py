"""API tokens: created (shown once), listed, revoked. Only SHA-256 hashes are stored."""

from __future__ import annotations

from sqlalchemy import select

from cloudkeep.server import audit
from cloudkeep.server.auth import hash_token, new_token
from cloudkeep.server.clock import utcnow
from cloudkeep.server.context import ServerContext
from cloudkeep.server.db.models import ApiToken
from cloudkeep.server.services.common import ensure_unique_name, paginate, resolve
from cloudkeep.server.services.schemas import Page, TokenCreate, TokenCreated, TokenView


def view(row: ApiToken) -> TokenView:
    return TokenView.model_validate(row)


def create_token(ctx: ServerContext, data: TokenCreate, *, actor: str = "local") -> TokenCreated:
    token = new_token()
    with ctx.db() as session:
        ensure_unique_name(session, ApiToken, data.name, "token")
        row = ApiToken(name=data.name, scope=data.scope, token_hash=hash_token(token))
        session.add(row)
        session.flush()
        audit.record(session, actor, "token.create", row.id, {"name": row.name, "scope": row.scope})
        return TokenCreated(**view(row).model_dump(), token=token)


def list_tokens(ctx: ServerContext, *, limit: int = 100, offset: int = 0) -> Page[TokenView]:
    with ctx.db() as session:
        return paginate(session, select(ApiToken).order_by(ApiToken.name), view, limit, offset)


def revoke_token(ctx: ServerContext, ref: str, *, actor: str = "local") -> TokenView:
    with ctx.db() as session:
        row = resolve(session, ApiToken, ref, "token")
        if row.revoked_at is None:
            row.revoked_at = utcnow()
            audit.record(session, actor, "token.revoke", row.id, {"name": row.name})
        return view(row)
