"""indexes for fleet-sized catalogs: a session's tasks, a task's commands, a machine's restore points

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 04:45:00.000000

At 20,000 machines a daily job adds 20,000 tasks and commands; paging one session's tasks and
reading a task's commands scanned the whole history without them (docs/scale.md).
"""

# ruff: noqa
from __future__ import annotations

from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = (
    ("session_tasks", "session_id"),
    ("commands", "task_id"),
    ("restore_points", "machine_id"),
)


def upgrade() -> None:
    for table, column in INDEXES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.create_index(batch_op.f(f"ix_{table}_{column}"), [column], unique=False)


def downgrade() -> None:
    for table, column in reversed(INDEXES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_{table}_{column}"))
