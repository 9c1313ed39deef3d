"""machines record the agent level their agent registered at install

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 14:30:00.000000

Agents installed before levels existed registered none: NULL, which counts as level 1, so the
server refuses them the commands a newer agent is needed for until a rescan upgrades them
(server/agent_compat.py).
"""

# ruff: noqa
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.add_column(sa.Column("agent_level", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("machines", schema=None) as batch_op:
        batch_op.drop_column("agent_level")
