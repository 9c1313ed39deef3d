"""Routes: server information, API tokens, the audit log, master-key rotation, doctor."""

from __future__ import annotations

from fastapi import APIRouter

from cloudkeep.server.api.deps import Admin, Ctx, Limit, Offset, Reader
from cloudkeep.server.services import admin, credentials, tokens
from cloudkeep.server.services.schemas import (
    AuditView,
    CredentialTest,
    KeyRotation,
    Page,
    ServerInfo,
    TokenCreate,
    TokenCreated,
    TokenView,
)

router = APIRouter()


@router.get("/info", tags=["server"])
def info(ctx: Ctx, _: Reader) -> ServerInfo:
    return admin.server_info(ctx)


@router.post("/server/rotate-key", tags=["server"])
def rotate_key(ctx: Ctx, who: Admin) -> KeyRotation:
    return admin.rotate_master_key(ctx, actor=who.name)


@router.get("/tokens", tags=["server"])
def list_tokens(ctx: Ctx, _: Admin, limit: Limit = 100, offset: Offset = 0) -> Page[TokenView]:
    return tokens.list_tokens(ctx, limit=limit, offset=offset)


@router.post("/tokens", status_code=201, tags=["server"])
def create_token(ctx: Ctx, who: Admin, data: TokenCreate) -> TokenCreated:
    return tokens.create_token(ctx, data, actor=who.name)


@router.delete("/tokens/{ref}", tags=["server"])
def revoke_token(ctx: Ctx, who: Admin, ref: str) -> TokenView:
    return tokens.revoke_token(ctx, ref, actor=who.name)


@router.get("/audit", tags=["server"])
def list_audit(
    ctx: Ctx,
    _: Reader,
    actor: str | None = None,
    action: str | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[AuditView]:
    return admin.list_audit(ctx, actor=actor, action=action, limit=limit, offset=offset)


@router.post("/doctor", tags=["server"])
def doctor(ctx: Ctx, _: Admin, credential: str | None = None) -> list[CredentialTest]:
    return credentials.doctor(ctx, credential)
