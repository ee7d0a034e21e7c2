"""What the learning loop keeps about itself: job runs and experiment assignments.

Both are written synchronously (not through the background writer): a job
run is written once, when the job ends, and an assignment once per run of an
experiment, and a report read right after must see them. Experiment outcomes
are aggregated in SQL, so a report over a million executions reads a few rows.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, and_, bindparam, func, or_, select
from sqlalchemy import case as sql_case

from dendrite._text import clean_text
from dendrite.store import schema as s
from dendrite.store.engine import by_code_point, dialect_insert, id_chunks
from dendrite.store.errors import InvalidRecordError
from dendrite.store.serialize import exact_json
from dendrite.store.state_entries import aware
from dendrite.telemetry.errors import ErrorType
from dendrite.telemetry.records import ExecutionStatus

JOB_TRIGGERS = ("manual", "schedule")


class JobRun(BaseModel):
    id: str
    job: str
    trigger: str
    started_at: datetime
    finished_at: datetime
    success: bool
    error: str | None
    report: dict[str, Any]

    @property
    def duration_ms(self) -> float:
        return (self.finished_at - self.started_at).total_seconds() * 1000


class ArmOutcomes(BaseModel):
    """Sums over the executions one arm of an experiment ran, enough for its tests."""

    experiment: str
    arm: str
    executions: int
    successes: int
    duration_sum_ms: float
    duration_sq_sum: float
    rated: int
    rating_sum: float
    first_at: datetime | None
    last_at: datetime | None
    units: int
    """Units assigned (sessions, goals or runs); with their sums below, what a test needs
    when a unit's runs are not independent of each other."""
    unit_success_sq: float  # Σ over units of (its successes)²
    unit_cross: float  # Σ of its successes times its runs
    unit_runs_sq: float  # Σ of (its runs)²


def _name(kind: str, value: Any, width: int, *, cut: bool = False) -> str:
    """A name as every backend stores it (``clean_text``: NUL becomes U+FFFD); ``cut``
    shortens one over ``width`` instead of refusing it."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecordError(f"{kind} must be a non-empty string, got {value!r}")
    if cut:
        value = value[:width]
    if len(value) > width:
        raise InvalidRecordError(f"{kind} is {len(value)} characters, at most {width} allowed")
    return clean_text(value)


def _id(value: Any) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise InvalidRecordError(f"execution id must be a UUID, got {value!r}") from None


def insert_job_run(
    conn: Connection,
    job: str,
    trigger: str,
    started_at: datetime,
    finished_at: datetime,
    success: bool,
    error: str | None,
    report: dict[str, Any],
) -> JobRun:
    job = _name("job name", job, 64)
    if trigger not in JOB_TRIGGERS:
        raise InvalidRecordError(f"job trigger must be one of {JOB_TRIGGERS}, got {trigger!r}")
    if type(success) is not bool:  # bool("no") is True
        raise InvalidRecordError(f"job success must be True or False, got {success!r}")
    for name, moment in (("started_at", started_at), ("finished_at", finished_at)):
        if not isinstance(moment, datetime):
            raise InvalidRecordError(f"job {name} must be a datetime, got {moment!r}")
    started_at = aware("job started_at", started_at)
    finished_at = aware("job finished_at", finished_at)
    if finished_at < started_at:
        raise InvalidRecordError(
            f"job finished_at {finished_at.isoformat()} is before its started_at "
            f"{started_at.isoformat()}"
        )
    if error is not None and not isinstance(error, str):
        raise InvalidRecordError(f"job error must be a string or None, got {error!r}")
    try:
        stored = exact_json(report)
    except TypeError as error:
        raise InvalidRecordError(f"job report of {job!r}: {error}") from None
    run = JobRun(
        id=str(uuid.uuid4()),
        job=job,
        trigger=trigger,
        started_at=started_at,
        finished_at=finished_at,
        success=success,
        error=clean_text(error) if error is not None else None,
        report=stored,
    )
    conn.execute(s.job_runs.insert().values(**run.model_dump()))
    return run


def job_runs(conn: Connection, job: str | None, limit: int) -> list[JobRun]:
    jr = s.job_runs
    query = select(jr).order_by(jr.c.started_at.desc(), jr.c.id.desc()).limit(limit)
    if job is not None:
        query = query.where(jr.c.job == job)
    return [JobRun.model_validate(dict(row._mapping)) for row in conn.execute(query)]


def insert_assignment(
    conn: Connection, experiment: str, execution_id: str, arm: str, unit: str
) -> None:
    """Record an assignment; assigning one execution twice keeps the first (replays are safe)."""
    values = {
        "experiment": _name("experiment name", experiment, 128),
        "execution_id": _id(execution_id),
        "arm": _name("arm", arm, 64),
        "unit": _name("unit", unit, 255, cut=True),  # a goal's text, when runs have no session
        "assigned_at": datetime.now(UTC),
    }
    conn.execute(
        dialect_insert(conn, s.experiment_assignments).values(**values).on_conflict_do_nothing()
    )


def arm_outcomes(conn: Connection, experiment: str | None) -> list[ArmOutcomes]:
    ea, ex = s.experiment_assignments, s.executions
    success = func.sum(sql_case((ex.c.success.is_(True), 1), else_=0))
    duration = func.coalesce(ex.c.duration_ms, 0.0)
    per_unit = (
        select(
            ea.c.experiment,
            ea.c.arm,
            func.count().label("runs"),
            func.coalesce(success, 0).label("successes"),
            func.coalesce(func.sum(duration), 0.0).label("duration"),
            func.coalesce(func.sum(duration * duration), 0.0).label("duration_sq"),
            func.count(ex.c.user_rating).label("rated"),
            func.coalesce(func.sum(ex.c.user_rating), 0).label("ratings"),
            func.min(ea.c.assigned_at).label("first_at"),
            func.max(ea.c.assigned_at).label("last_at"),
        )
        .join(ex, ex.c.id == ea.c.execution_id)
        .where(ex.c.status != ExecutionStatus.CANCELLED.value)  # stopped: no outcome to compare
        .group_by(ea.c.experiment, ea.c.arm, ea.c.unit)
    )
    if experiment is not None:
        per_unit = per_unit.where(ea.c.experiment == experiment)
    u = per_unit.subquery()
    query = (
        select(
            u.c.experiment,
            u.c.arm,
            func.sum(u.c.runs).label("executions"),
            func.sum(u.c.successes).label("successes"),
            func.sum(u.c.duration).label("duration_sum_ms"),
            func.sum(u.c.duration_sq).label("duration_sq_sum"),
            func.sum(u.c.rated).label("rated"),
            func.sum(u.c.ratings).label("rating_sum"),
            func.min(u.c.first_at).label("first_at"),
            func.max(u.c.last_at).label("last_at"),
            func.count().label("units"),
            func.sum(u.c.successes * u.c.successes).label("unit_success_sq"),
            func.sum(u.c.successes * u.c.runs).label("unit_cross"),
            func.sum(u.c.runs * u.c.runs).label("unit_runs_sq"),
        )
        .group_by(u.c.experiment, u.c.arm)
        .order_by(by_code_point(conn, u.c.experiment), by_code_point(conn, u.c.arm))
    )
    return [ArmOutcomes.model_validate(dict(row._mapping)) for row in conn.execute(query)]


class RecentToolOutcomes(BaseModel):
    tool_name: str
    attempts: int
    successes: int
    last_used: datetime | None

    @property
    def success_rate(self) -> float:
        return self.successes / self.attempts if self.attempts else 0.0


def recent_tool_outcomes(conn: Connection, since: datetime) -> list[RecentToolOutcomes]:
    """Attempts per tool since ``since``, from the raw rows (the rollups are all-time).

    As the health monitor judges them: a cancelled attempt is not the tool's doing, and a
    validation error counts only where another attempt of its step answered (or where
    the attempt names no step). Input every tool refused is the caller's fault: counted,
    it got correct tools deprecated.
    """
    te = s.tool_executions
    other = te.alias("other")
    validation = ErrorType.VALIDATION.value
    # The steps that some attempt answered, joined once (a correlated EXISTS per row was
    # planned at many times the cost on PostgreSQL).
    answered = (
        select(other.c.execution_id, other.c.step_id)
        .where(other.c.started_at >= since, other.c.success.is_(True))
        .group_by(other.c.execution_id, other.c.step_id)
        .subquery("answered")
    )
    joined = te.outerjoin(
        answered,
        and_(answered.c.execution_id == te.c.execution_id, answered.c.step_id == te.c.step_id),
    )
    query = (
        select(
            te.c.tool_name,
            func.count().label("attempts"),
            func.coalesce(func.sum(sql_case((te.c.success.is_(True), 1), else_=0)), 0).label(
                "successes"
            ),
            func.max(te.c.started_at).label("last_used"),
        )
        .select_from(joined)
        .where(
            te.c.started_at >= since,
            or_(
                te.c.error_type.is_(None),
                and_(
                    te.c.error_type != ErrorType.CANCELLED.value,
                    or_(
                        te.c.error_type != validation,
                        te.c.step_id.is_(None),
                        answered.c.execution_id.is_not(None),
                    ),
                ),
            ),
        )
        .group_by(te.c.tool_name)
        .order_by(by_code_point(conn, te.c.tool_name))
    )
    return [RecentToolOutcomes.model_validate(dict(row._mapping)) for row in conn.execute(query)]


class AttemptOutcome(BaseModel):
    """One tool call attempt without its parameters and result: what learning replays."""

    execution_id: str
    step_id: str | None
    tool_name: str
    success: bool
    error_type: str | None
    duration_ms: float
    started_at: datetime


_ATTEMPT = tuple(AttemptOutcome.model_fields)


def attempt_outcomes(conn: Connection, execution_ids: list[str]) -> list[AttemptOutcome]:
    """The attempts of the given executions, in the order they started."""
    te = s.tool_executions
    query = (
        select(*(te.c[name] for name in _ATTEMPT))
        .where(te.c.execution_id.in_(bindparam("ids", expanding=True)))
        .order_by(te.c.started_at, te.c.id)
    )
    found = []
    for chunk in id_chunks(execution_ids):
        rows = conn.execute(query, {"ids": chunk})
        found.extend(
            AttemptOutcome.model_validate(dict(zip(_ATTEMPT, row, strict=True))) for row in rows
        )
    found.sort(key=lambda a: a.started_at)
    return found
