"""The audit log: one row per administrator change, with secrets scrubbed from the details."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from cloudkeep.server.db.models import AuditEvent

# Keys whose values are never written to the audit log, API responses or logs.
SECRET_KEYS = frozenset(
    {
        "password",
        "secret",
        "secrets",
        "token",
        "secret_access_key",
        "aws_secret_access_key",
        "agent_secret_access_key",
        "aws_session_token",
        "session_token",
        "client_secret",
        "account_key",
        "connection_string",
        "sas_token",
        "private_key",
        "signing_key",
    }
)
REDACTED = "***"


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return lowered in SECRET_KEYS or lowered.endswith(("_secret", "_password", "_key_secret"))


def scrub(value: Any) -> Any:
    """A copy of ``value`` with every secret-named field replaced by ``***``."""
    if isinstance(value, Mapping):
        return {k: REDACTED if is_secret_key(str(k)) else scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrub(v) for v in value]
    return value


def record(
    session: Session, actor: str, action: str, target: str = "", detail: Mapping[str, Any] | None = None
) -> None:
    """Add an audit row in the caller's transaction, so it commits (or not) with the change."""
    session.add(AuditEvent(actor=actor, action=action, target=target, detail=scrub(dict(detail or {}))))
