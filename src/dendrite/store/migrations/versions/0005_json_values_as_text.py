"""SQLite: a tool's result and a state value are kept as TEXT, so bare numbers survive.

A column declared ``JSON`` has numeric affinity in SQLite, which rewrote the text of a
bare number (``1.0`` read back as ``1``, ``2**63`` as a float). The two columns that
may hold one are rebuilt as ``TEXT``; what was already rewritten cannot be recovered,
and is copied as it is. PostgreSQL keeps JSONB, which holds numbers exactly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"tool_executions": ("result", True), "state_entries": ("value", False)}


def _retype(new: sa.types.TypeEngine, old: sa.types.TypeEngine) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table, (column, nullable) in COLUMNS.items():
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(column, type_=new, existing_type=old, existing_nullable=nullable)


def upgrade() -> None:
    _retype(sa.Text(), sa.JSON())


def downgrade() -> None:
    _retype(sa.JSON(), sa.Text())
