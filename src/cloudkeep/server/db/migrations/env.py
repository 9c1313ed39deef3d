"""Alembic environment: runs on the connection that ``cloudkeep.server.db.migrate`` passes in."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext

from cloudkeep.server.db.models import Base, UTCDateTime


def _render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Render our UTCDateTime as a plain ``sa.DateTime(timezone=True)`` so revisions never import models."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the programmatic entry point is supported
    raise RuntimeError("run migrations through cloudkeep.server.db.migrate.upgrade(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite can only ALTER through table copies
    compare_type=True,
    render_item=_render_item,
)
with context.begin_transaction():
    context.run_migrations()
