"""Table definitions of the execution-history store (SQLAlchemy Core).

Raw tables hold one row per event and are pruned by retention. Rollup tables
hold additive aggregates, maintained in the same transaction as the rows they
count, so analytics read small tables and survive pruning. Each rollup has an
``*_archive`` twin holding the contribution of pruned rows, which lets
``update_statistics()`` rebuild a rollup from scratch (archive + live rows)
and arrive at exactly the incremental numbers.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    Uuid,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.compiler import compiles

from dendrite.telemetry.records import MAX_TOOL_NAME

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING)


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros_since_epoch(value: datetime) -> int:
    """A timestamp as SQLite keeps it: whole microseconds since 1970-01-01 UTC (a naive
    one taken as UTC). Exact for any datetime: the difference is a ``timedelta`` of
    whole days, seconds and microseconds, which no float ever holds."""
    tz = value.tzinfo
    if tz is not UTC:
        value = value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)
    since = value - EPOCH
    return (since.days * 86_400 + since.seconds) * 1_000_000 + since.microseconds


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and always read back timezone-aware.

    PostgreSQL keeps them as ``timestamptz``. SQLite has no time type: they are kept as
    whole microseconds since the Unix epoch (:func:`micros_since_epoch`), not as
    SQLAlchemy's 26 characters of text. Most indexes of the history are keyed by time;
    an 8-byte key keeps them about half as large, and a history imported out of order
    inserts into every page of them in each batch, which SQLite then writes out whole
    (docs/store.md has the figures). Either way a value written naive is taken as UTC,
    and one written in another zone is converted.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(BigInteger())
        return dialect.type_descriptor(DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return micros_since_epoch(value)
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return EPOCH + timedelta(microseconds=value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JSONValue(JSON):
    """Any JSON value, a bare number included, declared ``TEXT`` on SQLite.

    SQLite gives a column declared ``JSON`` numeric affinity, and turns the text of a
    bare number stored there into a number: a tool's result ``1.0`` came back as ``1``
    and ``2**63`` as a float. A ``TEXT`` column keeps the text as written. Objects and
    arrays are safe either way, so the columns that only hold those stay ``JSON``.
    """

    cache_ok = True


@compiles(JSONValue, "sqlite")
def _json_value_as_text(type_: JSONValue, compiler: Any, **kw: Any) -> str:
    return "TEXT"


JSONDoc = JSON().with_variant(JSONB(), "postgresql")
JSONAny = JSONValue().with_variant(JSONB(), "postgresql")
UUID = Uuid(as_uuid=False)


def _ts(name: str, **kw: Any) -> Column[Any]:
    return Column(name, UTCDateTime(), **kw)


executions = Table(
    "executions",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("goal_id", String(64), nullable=False, unique=True),
    Column("goal_text", Text, nullable=False, default=""),
    Column("intent", String(64)),
    Column("query_type", String(64)),
    Column("task_type", String(128)),
    Column("project", String(255)),
    Column("session_id", String(128)),
    Column("parent_id", UUID),
    Column("depth", Integer, nullable=False, default=0),
    Column("success", Boolean, nullable=False),
    Column("status", String(16), nullable=False),
    Column("error", Text),
    Column("error_type", String(32)),
    _ts("started_at", nullable=False),
    _ts("finished_at", nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("model_tier", String(64)),
    Column("pool", String(128)),
    Column("routing_confidence", Float),
    Column("complexity_score", Float),
    Column("confidence_score", Float),
    Column("estimated_tokens", BigInteger),
    Column("tokens_used", BigInteger),
    Column("estimated_duration_ms", Float),
    Column("cost_estimate", Float),
    Column("actual_cost", Float),
    Column("quality_score", Float),
    Column("user_accepted", Boolean),
    Column("user_rating", Integer),
    Column("peak_memory_mb", Float),
    Column("cpu_time_ms", Float),
    Column("solution_summary", Text),
    Column("metadata", JSONDoc, nullable=False),
    _ts("recorded_at", nullable=False),
    Index(None, "started_at"),
    Index(None, "intent", "started_at"),
    Index(None, "session_id", "started_at"),
    Index(None, "parent_id"),
    Index(None, "project", "task_type", "started_at"),
    Index(None, "model_tier", "success", "started_at"),
    Index(None, "pool", "success", "duration_ms"),
    Index(None, "project", "quality_score", "started_at"),
)

tool_executions = Table(
    "tool_executions",
    metadata,
    Column("id", UUID, primary_key=True),
    # Not a foreign key: steps are recorded as they happen, the goal when it ends.
    Column("execution_id", UUID, nullable=False),
    Column("step_id", String(128)),
    Column("tool_name", String(MAX_TOOL_NAME), nullable=False),
    Column("parameters", JSONDoc, nullable=False),
    Column("result", JSONAny),
    Column("result_truncated", Boolean, nullable=False, default=False),
    Column("success", Boolean, nullable=False),
    Column("error", Text),
    Column("error_type", String(32)),
    Column("attempt", Integer, nullable=False, default=1),
    Column("fallback_of", String(MAX_TOOL_NAME)),
    Column("duration_ms", Float, nullable=False),
    _ts("started_at", nullable=False),
    _ts("finished_at", nullable=False),
    Index(None, "execution_id"),
    Index(None, "tool_name", "started_at"),
    Index(None, "started_at"),
)

routing_decisions = Table(
    "routing_decisions",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("execution_id", UUID, nullable=False),
    Column("router", String(64), nullable=False),
    Column("chosen", String(128), nullable=False),
    Column("candidates", JSONDoc, nullable=False),
    Column("confidence", Float),
    Column("reason", Text),
    Column("features", JSONDoc, nullable=False),
    Column("predicted_success", Float),
    Column("predicted_cost", Float),
    Column("predicted_duration_ms", Float),
    _ts("created_at", nullable=False),
    Index(None, "execution_id"),
    Index(None, "router", "created_at"),
)

execution_feedback = Table(
    "execution_feedback",
    metadata,
    Column("id", UUID, primary_key=True),
    Column(
        "execution_id",
        UUID,
        ForeignKey("executions.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("rating", Integer),
    Column("accepted", Boolean),
    Column("feedback_text", Text),
    Column("source", String(16), nullable=False),
    _ts("created_at", nullable=False),
    _ts("recorded_at", nullable=False),  # by the writer: readers page through it
    Index(None, "execution_id"),
    Index(None, "recorded_at", "id"),
)

tool_creation_events = Table(
    "tool_creation_events",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("tool_name", String(MAX_TOOL_NAME), nullable=False),
    Column("goal_text", Text),
    Column("generated_code", Text, nullable=False),
    Column("validation_passed", Boolean, nullable=False),
    Column("validation_errors", JSONDoc, nullable=False),
    Column("execution_id", UUID),
    _ts("created_at", nullable=False),
    Index(None, "tool_name", "created_at"),
)

solutions = Table(
    "solutions",
    metadata,
    Column("id", UUID, primary_key=True),
    # The source execution may be pruned; the pattern outlives it.
    Column("execution_id", UUID),
    Column("pattern", String(512), nullable=False),
    Column("description", Text, nullable=False),
    Column("query_type", String(64)),
    Column("task_type", String(128)),
    Column("plan", JSONDoc, nullable=False),
    Column("quality_score", Float),
    _ts("created_at", nullable=False),
    Index(None, "pattern"),
    Index(None, "query_type", "created_at"),
)


def _tool_stat_columns() -> list[Column[Any]]:
    return [
        Column("tool_name", String(MAX_TOOL_NAME), primary_key=True),
        Column("total_executions", BigInteger, nullable=False),
        Column("successful_executions", BigInteger, nullable=False),
        Column("failed_executions", BigInteger, nullable=False),
        Column("duration_us_sum", BigInteger, nullable=False),
        _ts("first_used"),
        _ts("last_used"),
    ]


tool_statistics = Table(
    "tool_statistics",
    metadata,
    *_tool_stat_columns(),
    Column("success_rate", Float, nullable=False),
    Column("avg_duration_ms", Float, nullable=False),
    Column("p95_duration_ms", Float, nullable=False),
    Index(None, "success_rate", "total_executions"),
)
tool_statistics_archive = Table("tool_statistics_archive", metadata, *_tool_stat_columns())


def _histogram_columns() -> list[Column[Any]]:
    return [
        Column("tool_name", String(MAX_TOOL_NAME), primary_key=True),
        Column("bucket", Integer, primary_key=True),
        Column("count", BigInteger, nullable=False),
    ]


tool_duration_histogram = Table("tool_duration_histogram", metadata, *_histogram_columns())
tool_duration_histogram_archive = Table(
    "tool_duration_histogram_archive", metadata, *_histogram_columns()
)

ROLLUP_KEYS = ("day", "intent", "project", "task_type", "model_tier", "pool")
ROLLUP_SUMS = (
    "executions",
    "successes",
    "duration_us_sum",
    "cost_n",
    "cost_nano_sum",
    "quality_n",
    "quality_micro_sum",
    "confidence_n",
    "confidence_micro_sum",
    "tokens_sum",
    "rating_n",
    "rating_sum",
    "accepted_n",
    "accepted_yes",
)


def _rollup_columns() -> list[Column[Any]]:
    keys = [Column("day", Date, primary_key=True)]
    keys += [Column(k, String(255), primary_key=True) for k in ROLLUP_KEYS[1:]]
    sums = [Column(s, BigInteger, nullable=False) for s in ROLLUP_SUMS]
    return keys + sums


execution_rollup = Table(
    "execution_rollup",
    metadata,
    *_rollup_columns(),
    Index(None, "model_tier", "day"),
    Index(None, "pool"),
    Index(None, "intent", "day"),
)
execution_rollup_archive = Table("execution_rollup_archive", metadata, *_rollup_columns())

# Orchestrator state that outlives a process (session and global scopes): kept
# until deleted or expired, never by retention. ``scope_id`` is "" for global.
state_entries = Table(
    "state_entries",
    metadata,
    Column("scope", String(16), primary_key=True),
    Column("scope_id", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("value", JSONAny, nullable=False),
    _ts("updated_at", nullable=False),
    _ts("expires_at"),
    Index(None, "expires_at"),
)

# What the learning jobs did, one row per run (kept by retention like history).
job_runs = Table(
    "job_runs",
    metadata,
    Column("id", UUID, primary_key=True),
    Column("job", String(64), nullable=False),
    Column("trigger", String(16), nullable=False),
    _ts("started_at", nullable=False),
    _ts("finished_at", nullable=False),
    Column("success", Boolean, nullable=False),
    Column("error", Text),
    Column("report", JSONDoc, nullable=False),
    Index(None, "job", "started_at"),
)

# Which arm of an experiment each execution ran under; the outcome is the
# execution row itself, so a report is one join.
experiment_assignments = Table(
    "experiment_assignments",
    metadata,
    Column("experiment", String(128), primary_key=True),
    Column("execution_id", UUID, primary_key=True),
    Column("arm", String(64), nullable=False),
    Column("unit", String(255), nullable=False),
    _ts("assigned_at", nullable=False),
    Index(None, "execution_id"),
)

store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("int_value", BigInteger),
    Column("text_value", Text),
)

# Views over the rollups, for SQL users and dashboards (defined by the migrations;
# the Python API reads the same tables directly).
VIEW_NAMES = ("tool_performance", "tier_performance_daily", "pool_performance", "solution_patterns")

VERSION_TABLE = "dendrite_schema_version"
