"""protection groups may let the installer add Python with the OS package manager (opt-in)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 00:50:00.000000
"""

# ruff: noqa
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing groups keep today's behaviour: nothing is installed on their machines but cloudkeep.
    with op.batch_alter_table("protection_groups", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("install_python", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("protection_groups", schema=None) as batch_op:
        batch_op.drop_column("install_python")
