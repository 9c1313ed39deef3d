"""consumers publish their read point of the server queue for runners in other processes

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 17:30:00.000000

Without it the backlog grace (a machine whose heartbeat may still wait unread on a backed-up
server queue) was known only in the process running the consumers (server/read_point.py).
"""

# ruff: noqa
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "consumer_progress",
        sa.Column("credential_id", sa.String(length=32), nullable=False),
        sa.Column("holder", sa.String(length=100), nullable=False),
        sa.Column("read_point", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", "holder"),
    )


def downgrade() -> None:
    op.drop_table("consumer_progress")
