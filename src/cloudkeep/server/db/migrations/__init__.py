"""Alembic environment and revisions for the state store (see ``cloudkeep.server.db.migrate``)."""
