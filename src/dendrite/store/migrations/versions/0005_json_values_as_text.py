"""SQLite: a tool's result and a state value are kept as TEXT, so bare numbers survive.

A column declared ``JSON`` has numeric affinity in SQLite, which rewrote the text of a
bare number (``1.0`` read back as ``1``, ``2**63`` as a float). The two columns that
may hold one are rebuilt as ``TEXT``. A number already rewritten is kept as it reads
now: SQLite's own ``CAST`` of a float to text keeps 15 digits (1/3 would lose its last
one, the largest float would become infinity), so floats are written back from Python.
PostgreSQL keeps JSONB, which holds numbers exactly.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.engine import Connection

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table: (column, nullable, primary key)
COLUMNS = {
    "tool_executions": ("result", True, ("id",)),
    "state_entries": ("value", False, ("scope", "scope_id", "key")),
}
_SAVED = "_dendrite_floats"
_CHUNK = 10_000


def _retype(new: sa.types.TypeEngine, old: sa.types.TypeEngine, *, keep_floats: bool) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, (column, nullable, key) in COLUMNS.items():
        if keep_floats:  # a REAL kept in a table of its own stays the exact double
            bind.exec_driver_sql(
                f"CREATE TEMP TABLE {_SAVED} AS SELECT {', '.join(key)}, {column} AS v "
                f"FROM {table} WHERE typeof({column}) = 'real'"
            )
        with op.batch_alter_table(table, recreate="always") as batch:
            batch.alter_column(column, type_=new, existing_type=old, existing_nullable=nullable)
        if keep_floats:
            _write_back(bind, table, column, key)
            bind.exec_driver_sql(f"DROP TABLE {_SAVED}")


def _write_back(bind: Connection, table: str, column: str, key: tuple[str, ...]) -> None:
    update = f"UPDATE {table} SET {column} = ? WHERE " + " AND ".join(f"{k} = ?" for k in key)
    last = 0
    while True:
        rows = bind.exec_driver_sql(
            f"SELECT rowid, {', '.join(key)}, v FROM {_SAVED} WHERE rowid > ? "
            f"ORDER BY rowid LIMIT {_CHUNK}",
            (last,),
        ).fetchall()
        if not rows:
            return
        bind.exec_driver_sql(update, [(json.dumps(row[-1]), *row[1:-1]) for row in rows])
        last = rows[-1][0]


def upgrade() -> None:
    _retype(sa.Text(), sa.JSON(), keep_floats=True)


def downgrade() -> None:
    _retype(sa.JSON(), sa.Text(), keep_floats=False)
