"""Schema migrations (Alembic) behind ``dendrite db …`` and the store's first use.

A new, empty database is brought to the current schema on first use, so the
embedded default needs no set-up step. A database at an older revision is
upgraded automatically only where that is safe to do unasked (a SQLite file,
which belongs to one user); a PostgreSQL database is refused with a message
naming ``dendrite db upgrade``, because a shared server is upgraded
deliberately. Concurrent first uses are serialised by a file lock (SQLite) or
an advisory lock (PostgreSQL), so four processes starting on a new file at
once migrate it once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, func, inspect, select, text

from dendrite.store.engine import WRITE
from dendrite.store.errors import SchemaError
from dendrite.store.schema import VERSION_TABLE, VIEW_NAMES, metadata

log = logging.getLogger("dendrite.store.migrate")

_ADVISORY_KEY = 0x64656E64  # "dend"


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", "dendrite.store:migrations")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite":
        database = engine.url.database
        if not database or database == ":memory:":
            yield
            return
        lock_path = Path(database).with_name(Path(database).name + ".migrate.lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        return
    with engine.connect() as conn:
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _ADVISORY_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _ADVISORY_KEY})
            conn.commit()


def _run(engine: Engine, action: Any, *args: Any) -> None:
    with _migration_lock(engine), engine.connect().execution_options(**WRITE) as conn:
        action(_config(conn), *args)
        conn.commit()


def _has_tables(engine: Engine) -> bool:
    with engine.connect() as conn:
        return "executions" in inspect(conn).get_table_names()


def _unversioned(engine: Engine) -> bool:
    """Whether Dendrite's tables are there without the revision that says what they are."""
    return current_revision(engine) is None and _has_tables(engine)


def upgrade(engine: Engine, revision: str = "head") -> None:
    if _unversioned(engine):
        where = engine.url.render_as_string(hide_password=True)
        raise SchemaError(
            f"{where} has Dendrite tables but no schema version, so there is no telling "
            "which migrations they need: `dendrite db validate` compares them with this "
            "version, and `dendrite db reset --yes` drops them and starts again (their "
            "history is lost)"
        )
    current = current_revision(engine)
    if current is not None and revision != current and revision in _ancestors(current):
        raise SchemaError(
            f"the schema is at {current}, past {revision}: `dendrite db downgrade {revision}` "
            "goes back (and deletes what the later revisions keep)"
        )
    _run(engine, command.upgrade, revision)
    if current_revision(engine) == head_revision():  # "head", "0004", "+3": all the same
        _fill_rollups(engine)


def _ancestors(revision: str) -> set[str]:
    """The revisions below ``revision`` (none when this version does not know it)."""
    script = ScriptDirectory.from_config(_config())
    try:
        return {rev.revision for rev in script.iterate_revisions(revision, "base")} - {revision}
    except CommandError:
        return set()


def _fill_rollups(engine: Engine) -> None:
    """Rebuild the rollups when they are empty beside raw history: a downgrade below the
    revision that made them (0002) dropped them, and the upgrade made them again, empty,
    which left every statistic at zero over a history that is still there."""
    from dendrite.store import rollups, schema

    checks = (
        (schema.execution_rollup, schema.executions),
        (schema.tool_statistics, schema.tool_executions),
    )
    with engine.connect().execution_options(**WRITE) as conn:
        if any(
            conn.scalar(select(raw.c.id).limit(1)) is not None
            and conn.scalar(select(func.count()).select_from(rolled)) == 0
            for rolled, raw in checks
        ):
            rollups.rebuild(conn)
            conn.commit()


def downgrade(engine: Engine, revision: str = "-1") -> None:
    if current_revision(engine) is None:
        raise SchemaError("the database has no schema version: there is nothing to downgrade")
    _run(engine, command.downgrade, revision)


def reset(engine: Engine) -> None:
    """Drop everything Dendrite created and build the current schema again (data is lost).

    Dropped directly, not by going down the migrations: those expect the schema
    each revision made, and reset is the repair for one that drifted from it (an
    index dropped by hand stopped the way down half-way, on SQLite with the
    rollups already gone).
    """
    with _migration_lock(engine), engine.connect().execution_options(**WRITE) as conn:
        for view in VIEW_NAMES:
            conn.execute(text(f"DROP VIEW IF EXISTS {view}"))
        metadata.drop_all(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
        conn.commit()
    upgrade(engine, "head")


def validate(engine: Engine) -> list[str]:
    """Every difference between the live schema and the code's, in words; empty when none."""
    problems: list[str] = []
    head = head_revision()
    current = current_revision(engine)
    if current != head:
        problems.append(f"schema revision is {current or 'none'}, the code expects {head}")
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "compare_type": True,
                # A database shared with an application holds its tables too.
                "include_name": _ours,
            },
        )
        diffs = compare_metadata(context, metadata)
        missing = {d[1].name for d in diffs if isinstance(d, tuple) and d[0] == "add_table"}
        for diff in diffs:
            if isinstance(diff, tuple) and diff[0] == "add_index" and diff[1].table.name in missing:
                continue  # implied by the missing table
            problems.append(_describe_diff(diff, conn.dialect))
        problems.extend(_view_differences(conn))
    return problems


def _expected_views() -> dict[str, str]:
    """Each view's query as the migrations up to the newest leave it (``VIEWS`` of a
    revision's module; a later revision's replaces an earlier one's)."""
    script = ScriptDirectory.from_config(_config())
    views: dict[str, str] = {}
    for revision in reversed(list(script.walk_revisions())):  # oldest first
        views.update(getattr(revision.module, "VIEWS", {}))
    return views


def _view_differences(conn: Connection) -> list[str]:
    """Missing views, and views whose definition is not the code's: compared as the
    database itself renders them, the live one beside one made from the code's query
    in a transaction that is rolled back."""
    live = set(inspect(conn).get_view_names())
    problems = [f"missing view {name}" for name in VIEW_NAMES if name not in live]
    expected = _expected_views()
    with conn.begin_nested() if conn.in_transaction() else conn.begin() as probe:
        for name in VIEW_NAMES:
            if name in live and _view_text(conn, name) != _view_text(conn, name, expected[name]):
                problems.append(f"view {name} differs from the code's definition")
        probe.rollback()
    return problems


def _view_text(conn: Connection, name: str, query: str | None = None) -> str:
    """The view ``name`` as the database renders it; with ``query``, a temporary view
    of that query rendered the same way (SQLite keeps a view's text as written)."""
    if conn.dialect.name == "sqlite":
        if query is not None:
            return " ".join(f"CREATE VIEW {name} AS {query}".split())
        stored = conn.scalar(
            text("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = :n"), {"n": name}
        )
        return " ".join((stored or "").split())
    if query is not None:
        name = f"dendrite_expected_{name}"
        conn.execute(text(f"CREATE TEMPORARY VIEW {name} AS {query}"))
    return conn.scalar(text("SELECT pg_get_viewdef(CAST(:n AS regclass), true)"), {"n": name})


def _ours(name: str | None, kind: str, _parents: Any) -> bool:
    return kind != "table" or name in metadata.tables


def _describe_diff(diff: Any, dialect: Any) -> str:
    if isinstance(diff, list):  # column-level modifications come grouped
        return "; ".join(_describe_diff(d, dialect) for d in diff)
    kind = diff[0]
    if kind == "add_table":
        return f"missing table {diff[1].name}"
    if kind == "remove_table":
        return f"unexpected table {diff[1].name}"
    if kind == "add_column":
        return f"missing column {diff[2]}.{diff[3].name}"
    if kind == "remove_column":
        return f"unexpected column {diff[2]}.{diff[3].name}"
    if kind == "add_index":
        return f"missing index {diff[1].name} on {diff[1].table.name}"
    if kind == "remove_index":
        return f"unexpected index {diff[1].name} on {diff[1].table.name}"
    if kind == "modify_type":
        live, expected = (t.compile(dialect=dialect) for t in (diff[5], diff[6]))
        return f"column {diff[2]}.{diff[3]} has type {live}, expected {expected}"
    if kind == "modify_nullable":
        expected = "NULL" if diff[6] else "NOT NULL"
        return f"column {diff[2]}.{diff[3]} should be {expected}"
    if kind in ("add_constraint", "remove_constraint", "add_fk", "remove_fk"):
        constraint = diff[1]
        what = "missing" if kind.startswith("add") else "unexpected"
        columns = ", ".join(c.name for c in constraint.columns)
        if kind.endswith("fk"):
            target = constraint.elements[0].target_fullname.split(".")[0]
            what += f" foreign key to {target}"
        else:
            what += f" {type(constraint).__name__.removesuffix('Constraint').lower()} constraint"
        named = f" {constraint.name}" if constraint.name else ""
        return f"{what}{named} on {constraint.table.name}({columns})"
    return f"{kind}: {diff[1:]}"


def ensure_schema(engine: Engine, auto_upgrade: bool | None = None) -> None:
    """Bring a new database to the current schema; upgrade or refuse an older one."""
    head = head_revision()
    if current_revision(engine) == head:
        return
    if auto_upgrade is None:
        auto_upgrade = engine.dialect.name == "sqlite"
    with _migration_lock(engine):
        current = current_revision(engine)
        if current == head:
            return
        where = engine.url.render_as_string(hide_password=True)
        if current is None:
            if _has_tables(engine):
                raise SchemaError(
                    f"{where} has Dendrite tables but no schema version; "
                    "run `dendrite db validate` to compare it with this version"
                )
        else:
            known = {
                rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions()
            }
            if current not in known:
                raise SchemaError(
                    f"{where} is at schema revision {current}, which this version of "
                    f"Dendrite does not know (its newest is {head}); upgrade Dendrite"
                )
            if not auto_upgrade:
                raise SchemaError(
                    f"{where} is at schema revision {current}, this version of Dendrite "
                    f"needs {head}: run `dendrite db upgrade`"
                )
            # Some upgrades rewrite every row (0007: about 10 s a million on SQLite): a
            # store that takes that long to open says why.
            log.warning("upgrading %s from schema revision %s to %s", where, current, head)
        with engine.connect().execution_options(**WRITE) as conn:
            command.upgrade(_config(conn), "head")
            conn.commit()
        _fill_rollups(engine)
