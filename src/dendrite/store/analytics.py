"""Read-side queries of the store, and the typed results they return.

Aggregate questions (per tool, per tier per day, per pool, success rates) are
answered from the rollup tables, which are small and survive retention; only
questions about individual runs read the raw tables, through the composite
indexes declared in ``schema``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import Connection, Integer, Row, and_, bindparam, func, or_, select

from dendrite.store import schema as s
from dendrite.store.engine import by_code_point, id_chunks
from dendrite.telemetry.records import (
    ExecutionRecord,
    FeedbackRecord,
    RoutingDecision,
    SolutionRecord,
    ToolCreationEvent,
    ToolExecutionRecord,
)


class ToolStatistics(BaseModel):
    tool_name: str
    total_executions: int
    successful_executions: int
    failed_executions: int
    success_rate: float
    avg_duration_ms: float
    p95_duration_ms: float
    first_used: datetime | None
    last_used: datetime | None


class SuccessRate(BaseModel):
    total: int
    successful: int
    success_rate: float | None
    """``None`` when there were no executions to judge."""


class TierPerformance(BaseModel):
    day: date
    model_tier: str
    executions: int
    successes: int
    success_rate: float
    avg_duration_ms: float
    avg_cost: float | None
    avg_quality: float | None
    avg_rating: float | None
    tokens_used: int
    """Tokens the day's runs on this tier used, as their servers reported them."""


class PoolPerformance(BaseModel):
    pool: str
    executions: int
    successes: int
    success_rate: float
    avg_duration_ms: float
    avg_cost: float | None
    avg_quality: float | None


class SolutionPattern(BaseModel):
    pattern: str
    query_type: str | None
    occurrences: int
    avg_quality: float | None
    first_seen: datetime
    last_seen: datetime


class ExecutionDetail(ExecutionRecord):
    """An execution with every tool-call attempt, feedback and routing decision it has."""

    steps: list[ToolExecutionRecord] = Field(default_factory=list)
    feedback: list[FeedbackRecord] = Field(default_factory=list)
    routing: list[RoutingDecision] = Field(default_factory=list)


class RoutingOutcome(BaseModel):
    decision: RoutingDecision
    outcome: ExecutionRecord | None
    """``None`` while the routed execution has not been recorded (or was pruned)."""


def _execution(row: Row[Any]) -> ExecutionRecord:
    data = row._asdict()
    data.pop("recorded_at", None)
    return ExecutionRecord.model_validate(data)


def _record(model: type[Any], row: Row[Any]) -> Any:
    data = row._asdict()
    data.pop("result_truncated", None)
    return model.model_validate(data)


def get_execution(conn: Connection, execution_id: str) -> ExecutionDetail | None:
    ex = s.executions
    row = conn.execute(select(ex).where(ex.c.id == execution_id)).first()
    if row is None:
        return None
    te, fb, rd = s.tool_executions, s.execution_feedback, s.routing_decisions
    steps = conn.execute(
        select(te)
        .where(te.c.execution_id == execution_id)
        .order_by(te.c.started_at, te.c.attempt, te.c.id)
    )
    feedback = conn.execute(
        select(fb).where(fb.c.execution_id == execution_id).order_by(fb.c.created_at, fb.c.id)
    )
    routing = conn.execute(
        select(rd).where(rd.c.execution_id == execution_id).order_by(rd.c.created_at, rd.c.id)
    )
    return ExecutionDetail(
        **_execution(row).model_dump(),
        steps=[_record(ToolExecutionRecord, r) for r in steps],
        feedback=[_record(FeedbackRecord, r) for r in feedback],
        routing=[_record(RoutingDecision, r) for r in routing],
    )


def get_feedback(
    conn: Connection, since: datetime | None, limit: int, after_id: str | None = None
) -> list[FeedbackRecord]:
    fb = s.execution_feedback
    query = select(fb).order_by(fb.c.recorded_at, fb.c.id).limit(limit)
    if since is not None and after_id is not None:
        query = query.where(
            or_(
                fb.c.recorded_at > since,
                and_(fb.c.recorded_at == since, fb.c.id > after_id),
            )
        )
    elif since is not None:
        query = query.where(fb.c.recorded_at > since)
    return [_record(FeedbackRecord, r) for r in conn.execute(query)]


def get_recent_executions(
    conn: Connection,
    limit: int,
    *,
    intent: str | None = None,
    success: bool | None = None,
    project: str | None = None,
    session_id: str | None = None,
    model_tier: str | None = None,
    pool: str | None = None,
    goal_id: str | None = None,
    depth: int | None = None,
    no_project: bool = False,
    since: datetime | None = None,
    before: datetime | None = None,
) -> list[ExecutionRecord]:
    ex = s.executions
    query = select(ex).order_by(ex.c.started_at.desc(), ex.c.id.desc()).limit(limit)
    for column, value in (
        (ex.c.goal_id, goal_id),
        (ex.c.intent, intent),
        (ex.c.success, success),
        (ex.c.project, project),
        (ex.c.session_id, session_id),
        (ex.c.model_tier, model_tier),
        (ex.c.pool, pool),
        (ex.c.depth, depth),
    ):
        if value == "" and column is not ex.c.goal_id:
            # A record keeps an empty label as none: "" asks for the runs without one, as
            # it does of get_success_rate, not for none at all.
            query = query.where(column.is_(None))
        elif value is not None:
            query = query.where(column == value)
    if no_project:
        query = query.where(ex.c.project.is_(None))
    if since is not None:
        query = query.where(ex.c.started_at >= since)
    if before is not None:
        query = query.where(ex.c.started_at < before)
    return [_execution(row) for row in conn.execute(query)]


def _meta_time(conn: Connection, key: str) -> datetime | None:
    value = conn.scalar(select(s.store_meta.c.text_value).where(s.store_meta.c.key == key))
    return datetime.fromisoformat(value) if value else None


def get_success_rate(
    conn: Connection, intent: str | None = None, since: datetime | None = None
) -> SuccessRate:
    """Counts whole days from the rollup and the partial first day from raw rows.

    When ``since`` falls in history already pruned, the raw rows of that first
    day are gone and the whole day is counted from the rollup instead.
    """
    ru, ex = s.execution_rollup, s.executions
    rollup_q = select(
        func.coalesce(func.sum(ru.c.executions), 0), func.coalesce(func.sum(ru.c.successes), 0)
    )
    if intent is not None:
        rollup_q = rollup_q.where(ru.c.intent == intent)
    total = successful = 0
    if since is not None:
        since = since.astimezone(UTC) if since.tzinfo else since.replace(tzinfo=UTC)
        first_day = since.date()
        pruned_before = _meta_time(conn, "pruned_before")
        if pruned_before is not None and since < pruned_before:
            rollup_q = rollup_q.where(ru.c.day >= first_day)
        else:
            rollup_q = rollup_q.where(ru.c.day > first_day)
            raw_q = select(
                func.count(), func.coalesce(func.sum(func.cast(ex.c.success, Integer)), 0)
            ).where(ex.c.started_at >= since)
            if first_day < date.max:  # the calendar's last day has no next midnight
                next_midnight = datetime.combine(
                    first_day + timedelta(days=1), datetime.min.time(), UTC
                )
                raw_q = raw_q.where(ex.c.started_at < next_midnight)
            if intent is not None:  # "" asks for runs without one, as the rollup keeps them
                raw_q = raw_q.where(ex.c.intent == intent if intent else ex.c.intent.is_(None))
            raw_total, raw_ok = conn.execute(raw_q).one()
            total, successful = int(raw_total), int(raw_ok)
    rollup_total, rollup_ok = conn.execute(rollup_q).one()
    total += int(rollup_total)
    successful += int(rollup_ok)
    return SuccessRate(
        total=total, successful=successful, success_rate=successful / total if total else None
    )


def _tool_stats_query() -> Any:
    st = s.tool_statistics
    return select(
        st.c.tool_name,
        st.c.total_executions,
        st.c.successful_executions,
        st.c.failed_executions,
        st.c.success_rate,
        st.c.avg_duration_ms,
        st.c.p95_duration_ms,
        st.c.first_used,
        st.c.last_used,
    )


def get_tool_statistics(conn: Connection, tool_name: str) -> ToolStatistics | None:
    row = conn.execute(
        _tool_stats_query().where(s.tool_statistics.c.tool_name == tool_name)
    ).first()
    return ToolStatistics.model_validate(row._asdict()) if row else None


def get_top_tools(conn: Connection, limit: int, min_executions: int) -> list[ToolStatistics]:
    st = s.tool_statistics
    query = (
        _tool_stats_query()
        .where(st.c.total_executions >= min_executions)
        .order_by(
            st.c.success_rate.desc(),
            st.c.total_executions.desc(),
            by_code_point(conn, st.c.tool_name),
        )
        .limit(limit)
    )
    return [ToolStatistics.model_validate(r._asdict()) for r in conn.execute(query)]


def get_tool_performance(conn: Connection) -> list[ToolStatistics]:
    st = s.tool_statistics
    query = _tool_stats_query().order_by(
        st.c.total_executions.desc(), by_code_point(conn, st.c.tool_name)
    )
    return [ToolStatistics.model_validate(r._asdict()) for r in conn.execute(query)]


def _ratio(numerator: Any, denominator: Any, scale: float = 1.0) -> float | None:
    """A mean from the rollups' integer sums, computed alike on both backends (and as the
    views compute it): PostgreSQL's ``SUM`` of a ``BIGINT`` is a ``Decimal``, and divided
    as one it differed from SQLite's answer in the last digit."""
    if not denominator:
        return None
    return int(numerator) / int(denominator) / scale


def _rollup_sums() -> list[Any]:
    ru = s.execution_rollup
    return [func.sum(ru.c[name]).label(name) for name in s.ROLLUP_SUMS]


def get_tier_performance(conn: Connection, days: int) -> list[TierPerformance]:
    ru = s.execution_rollup
    today = datetime.now(UTC).date()
    first_day = today - timedelta(days=days - 1)
    query = (
        select(ru.c.day, ru.c.model_tier, *_rollup_sums())
        # Runs dated after today (a clock ahead, an import) are not among the last days.
        .where(ru.c.day >= first_day, ru.c.day <= today, ru.c.model_tier != "")
        .group_by(ru.c.day, ru.c.model_tier)
        .order_by(ru.c.day, by_code_point(conn, ru.c.model_tier))
    )
    out = []
    for row in conn.execute(query):
        out.append(
            TierPerformance(
                day=row.day,
                model_tier=row.model_tier,
                executions=row.executions,
                successes=row.successes,
                success_rate=_ratio(row.successes, row.executions),
                avg_duration_ms=_ratio(row.duration_us_sum, row.executions, 1000),
                avg_cost=_ratio(row.cost_nano_sum, row.cost_n, 1e9),
                avg_quality=_ratio(row.quality_micro_sum, row.quality_n, 1e6),
                avg_rating=_ratio(row.rating_sum, row.rating_n),
                tokens_used=row.tokens_sum,
            )
        )
    return out


def get_pool_performance(conn: Connection) -> list[PoolPerformance]:
    ru = s.execution_rollup
    query = (
        select(ru.c.pool, *_rollup_sums())
        .where(ru.c.pool != "")
        .group_by(ru.c.pool)
        .order_by(by_code_point(conn, ru.c.pool))
    )
    return [
        PoolPerformance(
            pool=row.pool,
            executions=row.executions,
            successes=row.successes,
            success_rate=_ratio(row.successes, row.executions),
            avg_duration_ms=_ratio(row.duration_us_sum, row.executions, 1000),
            avg_cost=_ratio(row.cost_nano_sum, row.cost_n, 1e9),
            avg_quality=_ratio(row.quality_micro_sum, row.quality_n, 1e6),
        )
        for row in conn.execute(query)
    ]


def get_solution_patterns(conn: Connection, query_type: str | None = None) -> list[SolutionPattern]:
    so = s.solutions
    query = (
        select(
            so.c.pattern,
            so.c.query_type,
            func.count().label("occurrences"),
            func.avg(so.c.quality_score).label("avg_quality"),
            func.min(so.c.created_at).label("first_seen"),
            func.max(so.c.created_at).label("last_seen"),
        )
        .group_by(so.c.pattern, so.c.query_type)
        .order_by(
            func.count().desc(),
            by_code_point(conn, so.c.pattern),
            by_code_point(conn, so.c.query_type).nulls_first(),
        )
    )
    if query_type is not None:
        query = query.where(so.c.query_type == query_type)
    return [SolutionPattern.model_validate(r._asdict()) for r in conn.execute(query)]


def get_solutions(conn: Connection, query_type: str | None, limit: int) -> list[SolutionRecord]:
    so = s.solutions
    query = select(so).order_by(so.c.created_at.desc(), so.c.id.desc()).limit(limit)
    if query_type is not None:
        query = query.where(so.c.query_type == query_type)
    return [_record(SolutionRecord, r) for r in conn.execute(query)]


def get_tool_creations(
    conn: Connection, tool_name: str | None, limit: int
) -> list[ToolCreationEvent]:
    tc = s.tool_creation_events
    query = select(tc).order_by(tc.c.created_at.desc(), tc.c.id.desc()).limit(limit)
    if tool_name is not None:
        query = query.where(tc.c.tool_name == tool_name)
    return [_record(ToolCreationEvent, r) for r in conn.execute(query)]


def get_routing_outcomes(
    conn: Connection, router: str | None, limit: int, since: datetime | None = None
) -> list[RoutingOutcome]:
    rd, ex = s.routing_decisions, s.executions
    decisions = select(rd).order_by(rd.c.created_at.desc(), rd.c.id.desc()).limit(limit)
    if router is not None:
        decisions = decisions.where(rd.c.router == router)
    if since is not None:
        decisions = decisions.where(rd.c.created_at >= since)
    rows = conn.execute(decisions).all()
    runs = select(ex).where(ex.c.id.in_(bindparam("ids", expanding=True)))
    outcomes = {}
    for chunk in id_chunks(sorted({row.execution_id for row in rows})):
        outcomes.update({row.id: _execution(row) for row in conn.execute(runs, {"ids": chunk})})
    return [
        RoutingOutcome(
            decision=_record(RoutingDecision, row), outcome=outcomes.get(row.execution_id)
        )
        for row in rows
    ]
