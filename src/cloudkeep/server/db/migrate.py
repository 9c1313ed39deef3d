"""Schema migrations. Placeholder until the Alembic environment lands: creates the tables."""

from __future__ import annotations

from sqlalchemy import Engine

from cloudkeep.server.db.models import Base


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest revision (idempotent, safe for concurrent workers)."""
    Base.metadata.create_all(engine)
