"""restore points pin their manifest (digest and root tree accepted at backup time)

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:40:00.000000
"""

# ruff: noqa
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: points recorded before this revision have no pin; the server pins them on first use.
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("manifest_digest", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("root_tree", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("restore_points", schema=None) as batch_op:
        batch_op.drop_column("root_tree")
        batch_op.drop_column("manifest_digest")
