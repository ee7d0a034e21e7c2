"""Feedback rows say when the store wrote them, so readers can page through them.

The feedback job read feedback after the ``created_at`` of the last row it had read. A
row written later with an earlier ``created_at`` (replayed from the journal after an
outage, or sent by a process whose judgement was made before) was never read, nor were
rows sharing that moment past a page's end. ``recorded_at`` is the writer's time; rows
already there take their ``created_at``.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_execution_feedback_recorded_at_id"


def upgrade() -> None:
    with op.batch_alter_table("execution_feedback") as batch:
        batch.add_column(sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE execution_feedback SET recorded_at = created_at")
    with op.batch_alter_table("execution_feedback") as batch:
        batch.alter_column("recorded_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.create_index(INDEX, ["recorded_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("execution_feedback") as batch:
        batch.drop_index(INDEX)
        batch.drop_column("recorded_at")
