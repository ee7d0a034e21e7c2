"""Additive aggregates over the raw history: one code path for every way they are built.

The same accumulators build rollups incrementally (from each flushed batch),
from scratch (``update_statistics()``: archive plus every live row) and for
retention (``prune()``: the rows about to be deleted go into the archive).
All sums are integers (microseconds, nano-dollars, micro-units of a score),
so the three paths agree exactly rather than to within float rounding.

Durations per tool are also kept as a log-scale histogram with
``BUCKETS_PER_DOUBLING`` buckets per power of two; the p95 reported is the
upper edge of the bucket holding the 95th percentile, within 2.2 % above the
exact value, and it survives pruning because the histogram does.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from dendrite.store import schema as s
from dendrite.store.engine import built_once, insert_rows
from dendrite.telemetry.errors import ErrorType

BUCKETS_PER_DOUBLING = 32
MIN_BUCKET = -10 * BUCKETS_PER_DOUBLING  # ~1 microsecond; shorter durations share it


WRITERS_LOCK = 0x646E647274526C70
"""PostgreSQL advisory lock (any constant key) between writer batches and whole-history work."""


def as_writer(conn: Connection) -> None:
    """Open a writer's batch transaction: alongside other writers, never inside a rebuild.

    ``update_statistics()`` and ``prune()`` read raw rows and change rollups
    (or delete rows) in several statements; under PostgreSQL's read committed,
    a batch committed between them was counted twice by a rebuild, or deleted
    by a prune without being archived. SQLite needs nothing: ``BEGIN
    IMMEDIATE`` admits one writing transaction at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock_shared({WRITERS_LOCK})")


def hold_writers(conn: Connection) -> None:
    """Make writer batches wait until this transaction ends (see :func:`as_writer`)."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({WRITERS_LOCK})")


def duration_bucket(duration_ms: float) -> int:
    if duration_ms <= 0:
        return MIN_BUCKET
    return max(MIN_BUCKET, math.ceil(math.log2(duration_ms) * BUCKETS_PER_DOUBLING))


def bucket_upper_ms(bucket: int) -> float:
    return 2.0 ** (bucket / BUCKETS_PER_DOUBLING)


def _scaled(value: float | None, scale: int) -> int:
    return round(value * scale) if value is not None else 0


@dataclass
class ToolAggregate:
    total: int = 0
    successful: int = 0
    duration_us_sum: int = 0
    first_used: datetime | None = None
    last_used: datetime | None = None
    histogram: Counter[int] = field(default_factory=Counter)

    def add(self, success: bool, duration_ms: float, started_at: datetime) -> None:
        self.total += 1
        self.successful += 1 if success else 0
        self.duration_us_sum += _scaled(duration_ms, 1000)
        if self.first_used is None or started_at < self.first_used:
            self.first_used = started_at
        if self.last_used is None or started_at > self.last_used:
            self.last_used = started_at
        self.histogram[duration_bucket(duration_ms)] += 1


RollupKey = tuple[date, str, str, str, str, str]


def rollup_key(row: Any) -> RollupKey:
    return (
        row.started_at.date(),
        row.intent or "",
        row.project or "",
        row.task_type or "",
        row.model_tier or "",
        row.pool or "",
    )


def aggregate_tools(rows: Iterable[Any]) -> dict[str, ToolAggregate]:
    """Per-tool aggregates of tool-execution rows (anything with the row's attributes).

    A cancelled attempt (the run was stopped: a client closed its stream) is neither a
    success nor a failure of the tool, and is left out, as learning leaves it out.
    """
    out: dict[str, ToolAggregate] = {}
    for row in rows:
        if row.error_type == ErrorType.CANCELLED:  # a row's text or a record's enum alike
            continue
        agg = out.get(row.tool_name)
        if agg is None:
            agg = out[row.tool_name] = ToolAggregate()
        agg.add(row.success, row.duration_ms, row.started_at)
    return out


def aggregate_executions(rows: Iterable[Any]) -> dict[RollupKey, list[int]]:
    """Rollup sums (in ``schema.ROLLUP_SUMS`` order) of execution rows, by rollup key."""
    out: dict[RollupKey, list[int]] = {}
    zero = [0] * len(s.ROLLUP_SUMS)
    for row in rows:
        key = rollup_key(row)
        acc = out.get(key)
        if acc is None:
            acc = out[key] = zero.copy()
        acc[0] += 1
        acc[1] += 1 if row.success else 0
        acc[2] += _scaled(row.duration_ms, 1000)
        if row.actual_cost is not None:
            acc[3] += 1
            acc[4] += _scaled(row.actual_cost, 1_000_000_000)
        if row.quality_score is not None:
            acc[5] += 1
            acc[6] += _scaled(row.quality_score, 1_000_000)
        if row.confidence_score is not None:
            acc[7] += 1
            acc[8] += _scaled(row.confidence_score, 1_000_000)
        acc[9] += row.tokens_used or 0
    return out


def aggregate_feedback(
    rows: Iterable[tuple[Any, Any]], into: dict[RollupKey, list[int]] | None = None
) -> dict[RollupKey, list[int]]:
    """Add (feedback, its execution) pairs to rollup sums: ratings and acceptance."""
    out = {} if into is None else into
    zero = [0] * len(s.ROLLUP_SUMS)
    for feedback, execution in rows:
        key = rollup_key(execution)
        acc = out.get(key)
        if acc is None:
            acc = out[key] = zero.copy()
        if feedback.rating is not None:
            acc[10] += 1
            acc[11] += feedback.rating
        if feedback.accepted is not None:
            acc[12] += 1
            acc[13] += 1 if feedback.accepted else 0
    return out


def _upsert(
    conn: Connection,
    table: Table,
    names: tuple[str, ...],
    rows: list[tuple[Any, ...]],
    keys: Sequence[str],
    set_: Callable[[Any], dict[str, Any]],
) -> None:
    """Insert rows (values of the columns ``names``, in order), or update the row
    with the same key by ``set_(excluded)``.

    PostgreSQL gets one statement over arrays (``INSERT ... SELECT unnest(...)``):
    a row per statement execution costs a round of psycopg's Python per row,
    more than the database's own work. SQLite gets SQLAlchemy's compiled text
    and plain tuples, many rows to a statement: a batch upserts up to one
    histogram row per two tool calls, and handing them to SQLAlchemy as
    dictionaries cost more than SQLite's work on them; the values
    go through the same bind processors (dates and timestamps as SQLite text).
    The keys of ``rows`` are distinct, as one PostgreSQL statement requires.
    Each call site passes the same ``keys`` and ``set_`` for a table, so the
    statement is built once per dialect, table and columns.
    """
    if not rows:
        return
    if conn.dialect.name == "sqlite":
        upsert: _DriverUpsert = built_once(
            ("upsert", "sqlite", table.name, names),
            lambda: _DriverUpsert.compile(conn.dialect, table, names, keys, set_),
        )
        processors = upsert.processors
        if any(processors):
            rows = [
                tuple(
                    v if p is None or v is None else p(v)
                    for v, p in zip(row, processors, strict=True)
                )
                for row in rows
            ]
        insert_rows(conn, upsert.insert, rows, upsert.suffix)
        return

    def build() -> Any:
        source = select(
            *(
                func.unnest(bindparam(n, type_=postgresql.ARRAY(table.c[n].type))).label(n)
                for n in names
            )
        )
        ins = postgresql.insert(table).from_select(names, source)
        return ins.on_conflict_do_update(index_elements=list(keys), set_=set_(ins.excluded))

    statement = built_once(("upsert", conn.dialect.name, table.name, names), build)
    conn.execute(statement, dict(zip(names, map(list, zip(*rows, strict=True)), strict=True)))


@dataclass(frozen=True)
class _DriverUpsert:
    """An SQLite upsert as the driver takes it: SQL text and each column's bind processor.

    The text is split after its one row of markers, so that many rows go to one statement
    (:func:`~dendrite.store.engine.insert_rows`): a batch upserts thousands of histogram
    rows, and one statement per row handed the GIL to the caller's thread thousands of
    times, each time waiting up to the switch interval to get it back.
    """

    insert: str
    suffix: str
    processors: tuple[Callable[[Any], Any] | None, ...]

    @classmethod
    def compile(
        cls,
        dialect: Any,
        table: Table,
        names: tuple[str, ...],
        keys: Sequence[str],
        set_: Callable[[Any], dict[str, Any]],
    ) -> _DriverUpsert:
        ins = sqlite.insert(table)
        stmt = ins.on_conflict_do_update(index_elements=list(keys), set_=set_(ins.excluded))
        compiled = stmt.compile(dialect=dialect, column_keys=list(names))
        if compiled.positiontup != list(names):
            raise RuntimeError(f"unexpected parameter order in the upsert of {table.name}")
        processors = tuple(
            table.c[n].type.dialect_impl(dialect).bind_processor(dialect) for n in names
        )
        row = f" VALUES ({', '.join(['?'] * len(names))})"
        sql = str(compiled)
        if sql.count(row) != 1:
            raise RuntimeError(f"unexpected VALUES clause in the upsert of {table.name}: {sql}")
        head, suffix = sql.split(row)
        return cls(head + row, suffix, processors)


def _earliest(table: Table, excluded: Any, name: str, pick_later: bool) -> Any:
    current, new = table.c[name], excluded[name]
    better = new > current if pick_later else new < current
    return case((current.is_(None), new), (better, new), else_=current)


def add_tool_aggregates(
    conn: Connection,
    aggs: dict[str, ToolAggregate],
    stats_table: Table = s.tool_statistics,
    hist_table: Table = s.tool_duration_histogram,
) -> None:
    """Add aggregates to a tool-statistics table and its histogram (upsert, sorted keys).

    Derived columns are left to ``refresh_tool_derived``. Keys are written in
    sorted order so that concurrent PostgreSQL writers take row locks in the
    same order and cannot deadlock.
    """
    if not aggs:
        return
    tools = sorted(aggs)
    counters = ("total_executions", "successful_executions", "failed_executions", "duration_us_sum")
    columns = ("tool_name", *counters, "first_used", "last_used")
    rows = []
    for name in tools:
        agg = aggs[name]
        rows.append(
            (
                name,
                agg.total,
                agg.successful,
                agg.total - agg.successful,
                agg.duration_us_sum,
                agg.first_used,
                agg.last_used,
            )
        )
    if stats_table is s.tool_statistics:  # its derived columns, set by refresh_tool_derived
        columns += ("success_rate", "avg_duration_ms", "p95_duration_ms")
        rows = [(*row, 0.0, 0.0, 0.0) for row in rows]
    _upsert(
        conn,
        stats_table,
        columns,
        rows,
        ["tool_name"],
        lambda excluded: (
            {c: stats_table.c[c] + excluded[c] for c in counters}
            | {
                "first_used": _earliest(stats_table, excluded, "first_used", False),
                "last_used": _earliest(stats_table, excluded, "last_used", True),
            }
        ),
    )
    _upsert(
        conn,
        hist_table,
        ("tool_name", "bucket", "count"),
        [
            (name, bucket, count)
            for name in tools
            for bucket, count in sorted(aggs[name].histogram.items())
        ],
        ["tool_name", "bucket"],
        lambda excluded: {"count": hist_table.c["count"] + excluded["count"]},
    )


def refresh_tool_derived(conn: Connection, tool_names: Sequence[str] | None = None) -> None:
    """Recompute success rate, mean and p95 of the given tools (all when ``None``)."""
    if tool_names is not None and conn.dialect.name == "sqlite":
        p95_rows = _p95_from_the_top(conn, tool_names)
    else:
        p95_rows = conn.execute(
            built_once(("p95", tool_names is None), lambda: _p95_query(tool_names is None)),
            {} if tool_names is None else {"names": list(tool_names)},
        ).all()
    if not p95_rows:
        return
    conn.execute(
        built_once(("derived",), _derived_update),
        [{"tn": name, "p95": bucket_upper_ms(bucket)} for name, bucket in sorted(p95_rows)],
    )


def _p95_query(every_tool: bool) -> Any:
    """Per tool, the first histogram bucket whose running count reaches 95 % of its total."""
    st, hist = s.tool_statistics, s.tool_duration_histogram
    cumulative = select(
        hist.c.tool_name,
        hist.c.bucket,
        func.sum(hist.c["count"])
        .over(partition_by=hist.c.tool_name, order_by=hist.c.bucket)
        .label("cum"),
    )
    if not every_tool:
        cumulative = cumulative.where(hist.c.tool_name.in_(bindparam("names", expanding=True)))
    cum = cumulative.subquery()
    return (
        select(cum.c.tool_name, func.min(cum.c.bucket))
        .join(st, st.c.tool_name == cum.c.tool_name)
        .where(cum.c.cum * 100 >= st.c.total_executions * 95)
        .group_by(cum.c.tool_name)
    )


def _p95_from_the_top(conn: Connection, tool_names: Sequence[str]) -> list[tuple[str, int]]:
    """``_p95_query`` for a few tools on SQLite, reading each histogram from its top bucket.

    The writer refreshes every tool of every batch, and the window query reads
    each of those tools' whole histogram (hundreds of buckets), which cost
    more than the batch's histogram upserts. The p95 bucket is the lowest one
    with at most 5 % of the executions above it, and walking down from the top
    stops there, after the few buckets of the tail. The histogram's counts add
    up to the tool's ``total_executions`` (both come from the same aggregates),
    so this is the bucket the window query finds. Errors are SQLAlchemy's, as
    from any other statement, so the writer tells "unreachable" from "bad data".
    """
    st, hist = s.tool_statistics, s.tool_duration_histogram
    raw = conn.connection.dbapi_connection
    cursor = raw.cursor()
    try:
        found = []
        for name in tool_names:
            row = cursor.execute(
                f"SELECT total_executions FROM {st.name} WHERE tool_name = ?", (name,)
            ).fetchone()
            if row is None:
                continue
            total, above, p95 = row[0], 0, None
            for bucket, count in cursor.execute(
                f"SELECT bucket, count FROM {hist.name} WHERE tool_name = ? ORDER BY bucket DESC",
                (name,),
            ):
                if above * 100 > total * 5:  # this bucket's running count is under 95 %
                    break
                p95, above = bucket, above + count
            if p95 is not None:
                found.append((name, p95))
        return found
    except sqlite3.Error as error:
        raise DBAPIError.instance(
            "p95 from the top of the histogram", None, error, sqlite3.Error, dialect=conn.dialect
        ) from error
    finally:
        cursor.close()


def _derived_update() -> Any:
    st = s.tool_statistics
    return (
        update(st)
        .where(st.c.tool_name == bindparam("tn"))
        .values(
            success_rate=st.c.successful_executions * 1.0 / st.c.total_executions,
            avg_duration_ms=st.c.duration_us_sum / 1000.0 / st.c.total_executions,
            p95_duration_ms=bindparam("p95"),
        )
    )


def add_execution_rollup(
    conn: Connection, sums: dict[RollupKey, list[int]], table: Table = s.execution_rollup
) -> None:
    if not sums:
        return
    _upsert(
        conn,
        table,
        s.ROLLUP_KEYS + s.ROLLUP_SUMS,
        [(*key, *values) for key, values in sorted(sums.items())],
        s.ROLLUP_KEYS,
        lambda excluded: {c: table.c[c] + excluded[c] for c in s.ROLLUP_SUMS},
    )


_TOOL_COLS = (
    s.tool_executions.c.tool_name,
    s.tool_executions.c.error_type,
    s.tool_executions.c.success,
    s.tool_executions.c.duration_ms,
    s.tool_executions.c.started_at,
)
EXEC_COLUMNS = (
    s.executions.c.id,
    s.executions.c.started_at,
    s.executions.c.intent,
    s.executions.c.project,
    s.executions.c.task_type,
    s.executions.c.model_tier,
    s.executions.c.pool,
    s.executions.c.success,
    s.executions.c.duration_ms,
    s.executions.c.actual_cost,
    s.executions.c.quality_score,
    s.executions.c.confidence_score,
    s.executions.c.tokens_used,
)
STREAM = {"yield_per": 20_000, "stream_results": True}


def _aggregate_live(conn: Connection, exec_where: Any, tool_where: Any) -> tuple[Any, Any]:
    tools = aggregate_tools(
        conn.execute(select(*_TOOL_COLS).where(tool_where), execution_options=STREAM)
    )
    sums = aggregate_executions(
        conn.execute(select(*EXEC_COLUMNS).where(exec_where), execution_options=STREAM)
    )
    fb, ex = s.execution_feedback, s.executions
    pairs = conn.execute(
        select(fb.c.rating, fb.c.accepted, *EXEC_COLUMNS)
        .join(ex, ex.c.id == fb.c.execution_id)
        .where(exec_where),
        execution_options=STREAM,
    )
    aggregate_feedback(((row, row) for row in pairs), into=sums)
    return tools, sums


def past_retention(cutoff: datetime) -> tuple[Any, Any, Any]:
    """What retention deletes, as where-clauses on executions, tool executions and routing
    decisions (delete the executions last: the others refer to them).

    A run goes whole, with its steps and its routing, by when it started; a step or a
    decision whose run is not stored goes by its own time. By their own times, a step of
    a pruned run that ended after the cutoff stayed without its run, and a decision made
    just before the cutoff went from a run that started just after it and stayed.
    """
    ex, te, rd = s.executions, s.tool_executions, s.routing_decisions
    old = select(ex.c.id).where(ex.c.started_at < cutoff)

    def runless(column: Any) -> Any:
        return ~select(ex.c.id).where(ex.c.id == column).exists()

    return (
        ex.c.started_at < cutoff,
        or_(te.c.execution_id.in_(old), and_(te.c.started_at < cutoff, runless(te.c.execution_id))),
        or_(rd.c.execution_id.in_(old), and_(rd.c.created_at < cutoff, runless(rd.c.execution_id))),
    )


def archive_before(conn: Connection, cutoff: datetime) -> None:
    """Fold the rows that retention is about to delete into the archive rollups.

    Writers wait until the caller's transaction, which deletes those rows, ends.
    """
    hold_writers(conn)
    executions, tool_executions, _ = past_retention(cutoff)
    tools, sums = _aggregate_live(conn, executions, tool_executions)
    add_tool_aggregates(conn, tools, s.tool_statistics_archive, s.tool_duration_histogram_archive)
    add_execution_rollup(conn, sums, s.execution_rollup_archive)


def rebuild(conn: Connection) -> None:
    """Rebuild every rollup from the archive plus all live raw rows."""
    hold_writers(conn)
    for table in (s.tool_statistics, s.tool_duration_histogram, s.execution_rollup):
        conn.execute(delete(table))
    conn.execute(
        s.tool_statistics.insert().from_select(
            [c.name for c in s.tool_statistics_archive.c]
            + ["success_rate", "avg_duration_ms", "p95_duration_ms"],
            select(*s.tool_statistics_archive.c, 0.0, 0.0, 0.0),
        )
    )
    conn.execute(
        s.tool_duration_histogram.insert().from_select(
            [c.name for c in s.tool_duration_histogram_archive.c],
            select(*s.tool_duration_histogram_archive.c),
        )
    )
    conn.execute(
        s.execution_rollup.insert().from_select(
            [c.name for c in s.execution_rollup_archive.c], select(*s.execution_rollup_archive.c)
        )
    )
    tools, sums = _aggregate_live(conn, true(), true())
    add_tool_aggregates(conn, tools)
    add_execution_rollup(conn, sums)
    refresh_tool_derived(conn)
