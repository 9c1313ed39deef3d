"""API tokens: random bearer secrets stored only as SHA-256 hashes, each with a scope.

A token has 256 bits of entropy, so a plain SHA-256 (not a slow password hash) is enough to make
a stolen database useless for calling the API. Scopes: ``admin`` may change anything,
``read-only`` may only read.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudkeep.errors import AuthenticationError, PermissionDeniedError
from cloudkeep.server.db.models import ApiToken

Scope = Literal["admin", "read-only"]
SCOPES: tuple[Scope, ...] = ("admin", "read-only")
TOKEN_PREFIX = "ck_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: a token's name and scope, or ``local`` for the embedded CLI."""

    name: str
    scope: Scope

    @property
    def is_admin(self) -> bool:
        return self.scope == "admin"

    def require_admin(self, action: str) -> None:
        if not self.is_admin:
            raise PermissionDeniedError(
                f"token {self.name!r} is read-only and cannot {action}",
                hint="use a token created with --scope admin",
            )


LOCAL = Principal("local", "admin")


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def authenticate(session: Session, token: str | None) -> Principal:
    """Resolve a bearer token to its principal, or raise ``AuthenticationError``."""
    hint = "pass --token / set CLOUDKEEP_API_TOKEN (create one with `cloudkeep server token create`)"
    if not token:
        raise AuthenticationError("this API needs a bearer token", hint=hint)
    digest = hash_token(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        raise AuthenticationError("the API token is not valid", hint=hint)
    if row.revoked_at is not None:
        raise AuthenticationError(f"the API token {row.name!r} was revoked", hint=hint)
    scope: Scope = "admin" if row.scope == "admin" else "read-only"
    return Principal(row.name, scope)
