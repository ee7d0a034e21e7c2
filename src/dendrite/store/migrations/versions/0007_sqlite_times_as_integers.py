"""SQLite: timestamps are kept as whole microseconds since the Unix epoch (UTC).

They were SQLAlchemy's text, ``YYYY-MM-DD HH:MM:SS.ffffff``: 26 characters in every key
of the history's time-ordered indexes, where an integer takes 8 bytes. Each table is
rebuilt with its time columns as ``BIGINT``, every value converted exactly (the text's
seconds by SQLite's ``strftime('%s')``, its microseconds as written). PostgreSQL keeps
``timestamptz``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: its time columns, each with whether it may be NULL
COLUMNS = {
    "executions": {"started_at": False, "finished_at": False, "recorded_at": False},
    "tool_executions": {"started_at": False, "finished_at": False},
    "routing_decisions": {"created_at": False},
    "execution_feedback": {"created_at": False, "recorded_at": False},
    "tool_creation_events": {"created_at": False},
    "solutions": {"created_at": False},
    "tool_statistics": {"first_used": True, "last_used": True},
    "tool_statistics_archive": {"first_used": True, "last_used": True},
    "state_entries": {"updated_at": False, "expires_at": True},
    "job_runs": {"started_at": False, "finished_at": False},
    "experiment_assignments": {"assigned_at": False},
}


# Rebuilding a table drops the old one, and with foreign keys on (they cannot be turned
# off inside the migration's transaction) dropping ``executions`` deletes its feedback
# by ``ON DELETE CASCADE``: those rows are kept aside and put back.
CHILDREN = {"executions": ("execution_feedback",)}


def _to_micros(column: str) -> str:
    fraction = f"substr(substr({column}, 21) || '000000', 1, 6)"
    return (
        f"CASE WHEN typeof({column}) = 'text' THEN"
        f" CAST(strftime('%s', substr({column}, 1, 19)) AS INTEGER) * 1000000"
        f" + CASE WHEN substr({column}, 20, 1) = '.' THEN CAST({fraction} AS INTEGER) ELSE 0 END"
        f" ELSE {column} END"
    )


def _to_text(column: str) -> str:
    micros = f"(({column} % 1000000) + 1000000) % 1000000"  # of the second before, if negative
    return (
        f"CASE WHEN typeof({column}) = 'integer' THEN"
        f" strftime('%Y-%m-%d %H:%M:%S', ({column} - {micros}) / 1000000, 'unixepoch')"
        f" || printf('.%06d', {micros})"
        f" ELSE {column} END"
    )


def _retype(table: str, new: sa.types.TypeEngine, old: sa.types.TypeEngine) -> None:
    children = CHILDREN.get(table, ())
    for child in children:
        op.execute(f"CREATE TEMP TABLE _dendrite_{child} AS SELECT * FROM {child}")
    with op.batch_alter_table(table, recreate="always") as batch:
        for column, nullable in COLUMNS[table].items():
            batch.alter_column(column, type_=new, existing_type=old, existing_nullable=nullable)
    for child in children:
        op.execute(f"INSERT INTO {child} SELECT * FROM _dendrite_{child}")
        op.execute(f"DROP TABLE _dendrite_{child}")


def _convert(table: str, to: Callable[[str], str]) -> None:
    op.execute(f"UPDATE {table} SET {', '.join(f'{c} = {to(c)}' for c in COLUMNS[table])}")


@contextlib.contextmanager
def _views_set_aside() -> Iterator[None]:
    """SQLite checks every view when a table is renamed, and one over a table being
    rebuilt names a table that is gone for a moment: the views (an application's own
    too) are dropped and made again, as they were."""
    views = (
        op.get_bind()
        .exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'view'")
        .fetchall()
    )
    for name, _ in views:
        op.execute(f'DROP VIEW "{name}"')
    yield
    for _, sql in views:
        op.execute(sql)


@contextlib.contextmanager
def _time_indexes_set_aside(table: str) -> Iterator[None]:
    """Updating every row's time moves its entry in each index on a time column, one
    random B-tree delete and insert at a time (21.6 s for a million tool executions);
    dropped first and made again afterwards, 2.2 s and 1.1 s. The table's other
    indexes the rebuild makes again itself."""
    bind = op.get_bind()
    columns = set(COLUMNS[table])
    indexes = [
        (name, sql)
        for name, sql in bind.exec_driver_sql(
            "SELECT name, sql FROM sqlite_master"
            " WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL",
            (table,),
        )
        if columns & {row[2] for row in bind.exec_driver_sql(f'PRAGMA index_info("{name}")')}
    ]
    for name, _ in indexes:
        op.execute(f'DROP INDEX "{name}"')
    yield
    for _, sql in indexes:
        op.execute(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with _views_set_aside():
        for table in COLUMNS:
            with _time_indexes_set_aside(table):
                _convert(table, _to_micros)
                _retype(table, sa.BigInteger(), sa.DateTime(timezone=True))


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with _views_set_aside():
        for table in COLUMNS:
            with _time_indexes_set_aside(table):
                _retype(table, sa.DateTime(timezone=True), sa.BigInteger())
                _convert(table, _to_text)
