"""Engines for the two supported backends, configured for many concurrent writers.

SQLite: WAL so readers never block the writer, a 30 s busy timeout, foreign
keys on, and write transactions opened with ``BEGIN IMMEDIATE`` so that two
processes never both start as readers and then deadlock upgrading to writers
(the usual cause of "database is locked"). PostgreSQL: psycopg 3 with a
pre-pinged connection pool and a connect timeout, so a dead server is noticed
in seconds rather than hanging a flush.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url

from dendrite.store import serialize

WRITE = {"dendrite_write": True}
SQLITE_PAGE_SIZE = 16_384
"""Bytes a page of a new SQLite database: a quarter as many pages as SQLite's 4,096 for
the same history. Backfilled goals (bench/store_bench.py, ``backfill``) insert all over
the history's time-ordered indexes, and every page a batch touches costs a look-up, a
write to the WAL at commit and a copy back at the checkpoint: the writer's CPU per row
went down by about a tenth. A database made before keeps its page size."""
SQLITE_AUTOCHECKPOINT_BYTES = 40 * 1024 * 1024
SQLITE_LIMIT_VARIABLE_NUMBER = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)


def parse_url(url: str) -> URL:
    """The URL, or a ``ValueError`` that says what one looks like."""
    try:
        return make_url(url)
    except sa_exc.ArgumentError:
        raise ValueError(
            f"{url!r} is not a database URL: give sqlite:///path/history.db or "
            "postgresql+psycopg://user@host/db"
        ) from None


def make_engine(url: str) -> Engine:
    parsed = parse_url(url)
    common: dict[str, Any] = {
        "json_serializer": serialize.dumps,
        "json_deserializer": json.loads,
    }
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(
                "an in-memory SQLite database cannot be shared between the store's writer "
                "thread and its readers; give a file path (sqlite:///path/history.db)"
            )
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # ``?timeout=N`` in the URL sets how long a writer waits for a lock
        # before its batch goes to the journal; 30 s unless given.
        connect_args = {} if "timeout" in parsed.query else {"timeout": 30}
        engine = create_engine(parsed, connect_args=connect_args, **common)
        _configure_sqlite(engine)
        return engine
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = create_engine(
            parsed,
            pool_size=5,
            max_overflow=5,
            pool_pre_ping=True,
            pool_recycle=1800,
            # No server-side prepared statements (psycopg prepares a query
            # after its fifth run): PostgreSQL then keeps a generic plan made
            # when the history was small, and the writer's existence check
            # (``id IN (...)`` over 500 ids) went on scanning the whole
            # executions table long after an index lookup had become far
            # cheaper, slowing each batch in proportion to the history.
            # Planning every statement costs well under a millisecond.
            connect_args={"connect_timeout": 5, "prepare_threshold": None},
            **common,
        )
        _configure_postgresql(engine)
        return engine
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string(hide_password=True)!r}: "
        "Dendrite stores history in SQLite (sqlite:///path) or PostgreSQL "
        "(postgresql+psycopg://user@host/db)"
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below decide how transactions start.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # taken by a new file only
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # A checkpoint every ~40 MB of WAL rather than SQLite's 4 MB: each one
        # copies back every page the batches since the last one touched, and
        # the history's indexes take inserts all over, so fewer, larger
        # checkpoints copy a hot page once instead of ten times (sustained
        # ingest into SQLite went up by about a third). The writer also
        # checkpoints whenever it is idle, so the WAL rarely gets that big.
        page_size = cursor.execute("PRAGMA page_size").fetchone()[0]
        cursor.execute(f"PRAGMA wal_autocheckpoint={SQLITE_AUTOCHECKPOINT_BYTES // page_size}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        if conn.get_execution_options().get("dendrite_write"):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")


def _configure_postgresql(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # The formats psycopg reads back, whatever the server, database or role sets:
        # it parses timestamps only in the ISO DateStyle (under "SQL, DMY" or "German"
        # every read of a time raised NotImplementedError), and with extra_float_digits
        # at 0 floats came back rounded to 15 digits (durations and costs read back
        # other than written, and update_statistics() disagreed with the rollups).
        # Any value above 0 sends the shortest exact text from PostgreSQL 12 on, and 3
        # seventeen digits before it.
        with dbapi_conn.cursor() as cursor:
            cursor.execute("SET DateStyle TO ISO")
            cursor.execute("SET extra_float_digits TO 3")
        dbapi_conn.commit()


def dialect_insert(conn: Connection, table: Table) -> Any:
    """An INSERT with the dialect's ``on_conflict_*`` clauses (SQLite's or PostgreSQL's)."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


_STATEMENTS: dict[tuple[Any, ...], Any] = {}


def built_once(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The statement ``build()`` gives, built on first use of ``key`` and reused after.

    The writer runs the same few statements for every batch, and building one
    (its columns, operators and cache key) cost more than SQLite running it.
    ``key`` must name everything the statement depends on (dialect, table,
    columns); two threads building the same one at once is harmless.
    """
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = build()
    return statement


IDS_PER_QUERY = 500
"""Ids looked up per ``IN (...)``: PostgreSQL takes at most 65,535 parameters to a
statement, and a few hundred keep each statement's plan and text small."""


def id_chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    """``ids`` in lists of at most ``IDS_PER_QUERY``, for an expanding ``IN`` each."""
    for start in range(0, len(ids), IDS_PER_QUERY):
        yield ids[start : start + IDS_PER_QUERY]


def by_code_point(conn: Connection, column: Any) -> Any:
    """``column`` to order by as SQLite orders text, by code point, on either backend.

    PostgreSQL orders text by the database's collation, on most servers a language's
    (``en_US.UTF-8``: ``_z``, ``a``, ``A``, ``B``, where SQLite has ``A``, ``B``, ``_z``,
    ``a``), so lists ordered by name, and those cut by a limit among ties, differed
    between the backends. Its ``"C"`` collation compares as SQLite does.
    """
    return column.collate("C") if conn.dialect.name == "postgresql" else column


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


SQLITE_ROWS_PER_INSERT = 1024
"""At most this many rows per ``INSERT`` (and as many as SQLite's variable limit allows):
each statement hands the GIL back and forth once, so fewer, larger ones leave the caller
more time to run beside the writer (bench/store_bench.py, SQLite arrival: 35,800
rows/s at 1024 against 32,500 at 256, means of three runs)."""


_PLAIN_INSERT = "INSERT INTO "


def insert_rows(
    conn: Connection, insert: str, rows: list[tuple[Any, ...]], suffix: str = ""
) -> int:
    """Insert rows (``insert`` has one row of markers, ``suffix`` follows the rows: an
    ``ON CONFLICT`` clause); returns how many went in.

    SQLite gets them many rows to an ``INSERT``: ``executemany`` lets go of
    the GIL around every row, and a thread that wants it back waits for the
    switch interval (5 ms) whenever another thread (the caller, recording
    more) is running Python, which made the writer crawl under load.

    On SQLite the statement is ``INSERT OR FAIL``. With the default ``ABORT``, a
    statement of many rows inside a transaction could fail halfway and be undone on
    its own, so SQLite first copies every page it changes to a statement journal: in
    a history imported out of order, whose time-ordered indexes take inserts all
    over, that was about 300 MB of temporary file per batch of 16,000 rows, more
    than the database itself. ``FAIL`` keeps the rows before a failing one instead,
    which changes nothing here: every caller writes in a transaction that a failed
    statement rolls back whole.
    """
    if conn.dialect.name != "sqlite" or len(rows) < 2:
        return conn.exec_driver_sql(insert + suffix, rows).rowcount
    raw = conn.connection.dbapi_connection
    width = len(rows[0])
    per = max(1, min(SQLITE_ROWS_PER_INSERT, raw.getlimit(SQLITE_LIMIT_VARIABLE_NUMBER) // width))
    if not insert.startswith(_PLAIN_INSERT):
        raise ValueError(f"insert_rows takes an {_PLAIN_INSERT!r} statement, not {insert!r}")
    into, values = insert.removeprefix(_PLAIN_INSERT).split(" VALUES ", 1)
    inserted = 0
    cursor = raw.cursor()
    try:
        for start in range(0, len(rows), per):
            chunk = rows[start : start + per]
            sql = f"INSERT OR FAIL INTO {into} VALUES {', '.join([values] * len(chunk))}{suffix}"
            cursor.execute(sql, list(chain.from_iterable(chunk)))
            inserted += cursor.rowcount
    except Exception as error:
        raise sa_exc.DBAPIError.instance(
            insert, None, error, sqlite3.Error, dialect=conn.dialect
        ) from error
    finally:
        cursor.close()
    return inserted
