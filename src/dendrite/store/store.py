"""``ExecutionStore``: the execution-history store's public face.

Writes (``store_*``) validate the record on the caller's thread, queue it and
return its id; a background writer makes them durable (see ``writer``).
Reads first wait for the writes this process queued before them, so a caller
always reads its own writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from pydantic import BaseModel, ValidationError
from sqlalchemy import Connection, delete, select, update
from sqlalchemy.exc import DBAPIError

from dendrite._ids import canonical_id
from dendrite._text import clean_text
from dendrite.config import data_dir, database_url
from dendrite.store import analytics, bookkeeping, migrate, rollups, serialize, state_entries
from dendrite.store import schema as s
from dendrite.store.analytics import (
    ExecutionDetail,
    PoolPerformance,
    RoutingOutcome,
    SolutionPattern,
    SuccessRate,
    TierPerformance,
    ToolStatistics,
)
from dendrite.store.bookkeeping import ArmOutcomes, AttemptOutcome, JobRun, RecentToolOutcomes
from dendrite.store.engine import WRITE, make_engine
from dendrite.store.errors import (
    InvalidRecordError,
    StoreError,
    StoreUnavailableError,
    UnknownExecutionError,
    driver_message,
)
from dendrite.store.execution import checked_execution
from dendrite.store.journal import SUFFIX as JOURNAL_SUFFIX
from dendrite.store.journal import Journal
from dendrite.store.state_entries import StateEntry
from dendrite.store.toolcall import ToolCall, checked_call
from dendrite.store.writer import KIND_OF, BatchWriter, is_connection_error
from dendrite.telemetry.records import (
    INT32,
    AnyRecord,
    ExecutionRecord,
    FeedbackRecord,
    RoutingCandidate,
    RoutingDecision,
    SolutionRecord,
    ToolCreationEvent,
    ToolExecutionRecord,
    named_utc,
)

log = logging.getLogger("dendrite.store")

R = TypeVar("R", bound=BaseModel)


class PruneReport(BaseModel):
    cutoff: datetime
    executions: int
    tool_executions: int
    feedback: int
    routing_decisions: int


class StoreStatus(BaseModel):
    backend: str
    url: str
    reachable: bool
    schema_revision: str | None
    pending_writes: int
    journal_records: int
    rejected_records: int
    written_records: int
    last_flush_at: datetime | None
    last_error: str | None


def _state_dir(url: str) -> Path:
    """Where a store keeps its journal and rejected records: beside a SQLite file, else per URL."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        db = Path(parsed.database).expanduser().resolve()
        return db.with_name(db.name + ".dendrite")
    # One database, one folder, however its URL is spelled: a journal kept under
    # ``postgresql://`` must be replayed by a store opened with ``postgresql+psycopg://``.
    same = parsed.set(
        drivername=parsed.get_backend_name(),
        host=parsed.host.lower() if parsed.host else parsed.host,
        port=parsed.port or (5432 if parsed.host else None),
    )
    folder = data_dir() / "stores" / _digest(same)
    _take_over(data_dir() / "stores" / _digest(parsed), folder)
    return folder


def _digest(url: Any) -> str:
    return hashlib.sha256(url.render_as_string(hide_password=True).encode()).hexdigest()[:16]


def _take_over(earlier: Path, folder: Path) -> None:
    """Move the journal segments of the folder an earlier version named after the URL
    as spelled into the database's folder, where replay looks for them."""
    old_journal = earlier / "journal"
    if earlier == folder or not old_journal.is_dir():
        return
    journal = folder / "journal"
    journal.mkdir(parents=True, exist_ok=True)
    for segment in old_journal.glob(f"*{JOURNAL_SUFFIX}"):
        segment.rename(journal / segment.name)


class ExecutionStore:
    """The record of every goal and tool call, and the analytics over it.

    ``url`` defaults to ``DENDRITE_DATABASE_URL``, then to a SQLite file in the
    data directory (see ``dendrite.config``). Use as a context manager, or call
    ``close()``: closing drains every pending write.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        auto_upgrade: bool | None = None,
        batch_size: int = 20_000,
        flush_interval: float = 0.05,
        max_queue: int = 100_000,
        block_timeout: float = 1.0,
        max_result_bytes: int = 64 * 1024,
        state_dir: Path | str | None = None,
    ) -> None:
        self.url = database_url(url)
        self.engine = make_engine(self.url)
        self.backend = self.engine.dialect.name
        self._auto_upgrade = auto_upgrade
        self.state_dir = Path(state_dir) if state_dir else _state_dir(self.url)
        self.journal = Journal(self.state_dir / "journal")
        self.rejected_path = self.state_dir / "rejected.jsonl"
        reachable = True
        try:
            migrate.ensure_schema(self.engine, auto_upgrade)
        except Exception as error:
            if not is_connection_error(error):
                self.engine.dispose()
                if isinstance(error, DBAPIError):  # not a database (a text file), no rights
                    message = driver_message(error)
                    raise StoreError(f"{self._where} cannot be used: {message}") from error
                raise
            log.error("store %s unreachable at start; journaling until it returns", self._where)
            reachable = False
        self._schema_ready = reachable
        self._writer = BatchWriter(
            self.engine,
            self.journal,
            self.rejected_path,
            batch_size=batch_size,
            flush_interval=flush_interval,
            max_queue=max_queue,
            block_timeout=block_timeout,
            max_result_bytes=max_result_bytes,
            on_reconnect=self._on_reconnect,
            healthy=reachable,
        )
        self._closed = False
        self._finalizer = weakref.finalize(self, _shutdown, self._writer, self.engine)

    @property
    def _where(self) -> str:
        return self.engine.url.render_as_string(hide_password=True)

    def _on_reconnect(self) -> None:
        migrate.ensure_schema(self.engine, self._auto_upgrade)
        self._schema_ready = True

    # -- lifecycle -----------------------------------------------------------

    def flush(self, timeout: float | None = 60.0) -> bool:
        """Wait until every record queued before this call is written, journaled or rejected."""
        return self._writer.flush(timeout)

    def close(self) -> None:
        """Drain pending writes (to the database, or the journal if it is down) and release it."""
        if not self._closed:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> ExecutionStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writes --------------------------------------------------------------

    def record(self, record: AnyRecord | ToolCall) -> str:
        """Queue an already-built record of any kind; returns its id."""
        if type(record) not in KIND_OF:
            raise InvalidRecordError(f"not a Dendrite record: {type(record).__name__}")
        # As it is now, whatever the caller does next.
        record = ToolCall.of(record) if type(record) is ToolExecutionRecord else _detached(record)
        self._writer.submit(record)
        return record.id

    def store_execution(
        self,
        goal_id: str | None = None,
        goal_text: str = "",
        intent: str | None = None,
        success: bool = True,
        duration_ms: float = 0.0,
        metadata: dict[str, Any] | None = None,
        **fields: Any,
    ) -> str:
        """Record one goal or task run; returns its execution id.

        ``goal_id=None`` assigns the next readable id (``goal_1``, ``goal_2``, …)
        when the record is written. Other fields are those of ``ExecutionRecord``.
        Values already of their exact types skip pydantic (see ``execution``).
        """
        values = {
            "goal_id": goal_id,
            "goal_text": goal_text,
            "intent": intent,
            "success": success,
            "duration_ms": duration_ms,
            "metadata": metadata if metadata is not None else {},
            **fields,
        }
        record = checked_execution(values)
        if record is None:
            record = _validated("execution", ExecutionRecord, **values)
        self._writer.submit(record)
        return record.id

    def store_tool_execution(
        self,
        execution_id: str,
        tool_name: str,
        parameters: dict[str, Any] | None,
        result: Any,
        success: bool,
        duration_ms: float,
        error: str | None = None,
        **fields: Any,
    ) -> str:
        """Record one attempt of one tool call; returns its id. On the orchestrator's hot path,
        so values already of their exact types skip pydantic (see ``toolcall``)."""
        call = checked_call(
            execution_id, tool_name, parameters, result, success, duration_ms, error, fields
        )
        if call is None:
            call = ToolCall.of(
                _validated(
                    "tool execution",
                    ToolExecutionRecord,
                    execution_id=execution_id,
                    tool_name=tool_name,
                    parameters=parameters if parameters is not None else {},
                    result=result,
                    success=success,
                    duration_ms=duration_ms,
                    error=error,
                    **fields,
                )
            )
        self._writer.submit(call)
        return call.id

    def store_routing_decision(
        self,
        execution_id: str,
        chosen: str,
        candidates: Sequence[RoutingCandidate | dict[str, Any]] | dict[str, float] = (),
        confidence: float | None = None,
        reason: str | None = None,
        router: str = "model_tier",
        **fields: Any,
    ) -> str:
        """Record a router's choice for a task; ``candidates`` may be ``{option: score}``
        (``None``: none recorded)."""
        if isinstance(candidates, dict):
            candidates = [{"option": k, "score": v} for k, v in candidates.items()]
        record = _validated(
            "routing decision",
            RoutingDecision,
            execution_id=execution_id,
            chosen=chosen,
            candidates=_listed("candidates", candidates),
            confidence=confidence,
            reason=reason,
            router=router,
            **fields,
        )
        self._writer.submit(record)
        return record.id

    def store_feedback(
        self,
        execution_id: str,
        rating: int | None = None,
        feedback_text: str | None = None,
        *,
        accepted: bool | None = None,
        source: Literal["human", "llm", "code"] = "human",
    ) -> str:
        """Record a judgement of an execution; raises if the execution is unknown.

        Not on a hot path: it waits for pending writes so that it can check
        the execution exists. While the database is unreachable the check is
        deferred to the write, and an unknown execution then lands in
        ``rejected.jsonl`` instead of raising.
        """
        record = _validated(
            "feedback",
            FeedbackRecord,
            execution_id=execution_id,
            rating=rating,
            feedback_text=feedback_text,
            accepted=accepted,
            source=source,
        )
        self._check_open()
        self.flush()
        if self._writer.healthy:
            try:
                with self.engine.connect() as conn:
                    exists = conn.scalar(
                        select(s.executions.c.id).where(s.executions.c.id == record.execution_id)
                    )
            except Exception as error:
                if not is_connection_error(error):
                    raise
                exists = True
            if not exists:
                raise UnknownExecutionError(execution_id)
        self._writer.submit(record)
        return record.id

    def store_tool_creation(
        self,
        tool_name: str,
        generated_code: str,
        validation_passed: bool,
        validation_errors: Sequence[str] = (),
        goal_text: str | None = None,
        execution_id: str | None = None,
    ) -> str:
        """Record a tool generated at run time and whether it passed validation;
        ``validation_errors`` may be one message or several (``None``: none)."""
        if isinstance(validation_errors, str):  # one message, not its characters
            validation_errors = [validation_errors]
        record = _validated(
            "tool creation",
            ToolCreationEvent,
            tool_name=tool_name,
            generated_code=generated_code,
            validation_passed=validation_passed,
            validation_errors=_listed("validation_errors", validation_errors),
            goal_text=goal_text,
            execution_id=execution_id,
        )
        self._writer.submit(record)
        return record.id

    def store_solution(
        self,
        pattern: str,
        description: str = "",
        *,
        execution_id: str | None = None,
        query_type: str | None = None,
        task_type: str | None = None,
        plan: dict[str, Any] | None = None,
        quality_score: float | None = None,
    ) -> str:
        """Record a reusable solution pattern taken from a successful execution."""
        record = _validated(
            "solution",
            SolutionRecord,
            pattern=pattern,
            description=description,
            execution_id=execution_id,
            query_type=query_type,
            task_type=task_type,
            plan=plan or {},
            quality_score=quality_score,
        )
        self._writer.submit(record)
        return record.id

    # -- reads ---------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[Connection]:
        """A connection (in a write transaction when ``write``); unreachable is a store error."""
        try:
            if write:
                with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                    yield conn
            else:
                with self.engine.connect() as conn:
                    yield conn
        except Exception as error:
            if is_connection_error(error):
                verb = "write to" if write else "read from"
                raise StoreUnavailableError(
                    f"cannot {verb} {self._where}: {str(error).splitlines()[0]}"
                ) from error
            raise

    def _check_open(self) -> None:
        if self._closed:
            # Its engine is disposed; connecting again would leak a pool nobody closes,
            # and the writer is gone, so a read would miss what was recorded since.
            raise StoreUnavailableError(f"the store for {self._where} is closed")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        self._check_open()
        self.flush()
        with self._connect(write=False) as conn:
            yield conn

    def get_execution(self, execution_id: str) -> ExecutionDetail | None:
        """An execution with its steps, feedback and routing decisions, or ``None``."""
        execution_id = _execution_id(execution_id)
        with self._read() as conn:
            return analytics.get_execution(conn, execution_id)

    def get_recent_executions(self, limit: int = 20, **filters: Any) -> list[ExecutionRecord]:
        """Newest first. Filters: goal_id, intent, success, project, no_project (True: runs
        without one), session_id, model_tier, pool, depth (0: goals, not nested runs), since,
        before (``before`` is the cursor for the next page)."""
        _at_least_one("limit", limit)
        for name, value in filters.items():
            if value is None:
                continue
            if name in ("since", "before"):
                filters[name] = _moment(name, value)
            elif name in ("success", "no_project"):
                _of_type(name, value, bool)
            elif name == "depth":
                _of_type(name, value, int)
                if not 0 <= value <= INT32:
                    raise ValueError(f"depth must be from 0 to {INT32:,}, got {value}")
            elif name in _TEXT_FILTERS:
                filters[name] = _text(name, value)
            else:
                raise TypeError(
                    f"get_recent_executions() got an unknown filter {name!r}; filters are "
                    f"{', '.join(sorted({*_OTHER_FILTERS, *_TEXT_FILTERS}))}"
                )
        with self._read() as conn:
            return analytics.get_recent_executions(conn, limit, **filters)

    def get_success_rate(
        self, intent: str | None = None, since: datetime | None = None
    ) -> SuccessRate:
        if since is not None:
            since = _moment("since", since)
        if intent is not None:
            intent = _text("intent", intent)
        with self._read() as conn:
            return analytics.get_success_rate(conn, intent, since)

    def get_tool_statistics(self, tool_name: str) -> ToolStatistics | None:
        tool_name = _text("tool_name", tool_name)
        with self._read() as conn:
            return analytics.get_tool_statistics(conn, tool_name)

    def get_top_tools(self, limit: int = 10, min_executions: int = 1) -> list[ToolStatistics]:
        """Best success rate first (ties: more executions first)."""
        _at_least_one("limit", limit)
        _of_type("min_executions", min_executions, int)
        # The same answer within a 64-bit column's range, which both drivers refuse past.
        least = min(max(min_executions, 0), 2**63 - 1)
        with self._read() as conn:
            return analytics.get_top_tools(conn, limit, least)

    def get_tool_performance(self) -> list[ToolStatistics]:
        with self._read() as conn:
            return analytics.get_tool_performance(conn)

    def get_tier_performance(self, days: int = 7) -> list[TierPerformance]:
        """Per model tier per UTC day, for the last ``days`` days including today."""
        _at_least_one("days", days)
        furthest = (datetime.now(UTC).date() - date.min).days + 1
        if days > furthest:
            raise ValueError(f"days must be at most {furthest:,} (back to the year 1), got {days}")
        with self._read() as conn:
            return analytics.get_tier_performance(conn, days)

    def get_pool_performance(self) -> list[PoolPerformance]:
        with self._read() as conn:
            return analytics.get_pool_performance(conn)

    def get_solution_patterns(self, query_type: str | None = None) -> list[SolutionPattern]:
        query_type = _text("query_type", query_type)
        with self._read() as conn:
            return analytics.get_solution_patterns(conn, query_type)

    def get_solutions(self, query_type: str | None = None, limit: int = 50) -> list[SolutionRecord]:
        query_type = _text("query_type", query_type)
        _at_least_one("limit", limit)
        with self._read() as conn:
            return analytics.get_solutions(conn, query_type, limit)

    def get_tool_creations(
        self, tool_name: str | None = None, limit: int = 50
    ) -> list[ToolCreationEvent]:
        tool_name = _text("tool_name", tool_name)
        _at_least_one("limit", limit)
        with self._read() as conn:
            return analytics.get_tool_creations(conn, tool_name, limit)

    def get_routing_outcomes(
        self, router: str | None = None, limit: int = 1000, since: datetime | None = None
    ) -> list[RoutingOutcome]:
        """Routing decisions joined to what happened, for offline evaluation of a policy.

        Newest first: the ``limit`` newest decisions, made at or after ``since`` if given."""
        router = _text("router", router)
        _at_least_one("limit", limit)
        if since is not None:
            since = _moment("since", since)
        with self._read() as conn:
            return analytics.get_routing_outcomes(conn, router, limit, since)

    # -- state ---------------------------------------------------------------
    #
    # Synchronous, unlike history: state is read back at once, and it does not
    # depend on history rows, so it neither queues nor waits for the writer.

    @contextlib.contextmanager
    def _state(self, *, write: bool) -> Iterator[Connection]:
        self._check_open()
        if not self._schema_ready:
            # The database was down at start and may be back before the writer noticed.
            try:
                migrate.ensure_schema(self.engine, self._auto_upgrade)
            except Exception as error:
                if is_connection_error(error):
                    raise StoreUnavailableError(
                        f"cannot reach {self._where}: {str(error).splitlines()[0]}"
                    ) from error
                raise
            self._schema_ready = True
        with self._connect(write=write) as conn:
            yield conn

    def put_state(
        self,
        scope: str,
        scope_id: str,
        key: str,
        value: Any,
        expires_at: datetime | None = None,
    ) -> None:
        """Insert or replace one state entry; ``expires_at=None`` keeps it until deleted.

        Scopes: ``global`` (``scope_id`` ""), ``session``, ``execution``, ``step``.
        The value must be JSON as it stands; anything else raises ``InvalidRecordError``.
        """
        scope = state_entries.check_scope(scope)
        scope_id = state_entries.check_scope_id(scope, scope_id)
        key = state_entries.check_key(key)
        stored = state_entries.check_value(key, value)
        expiry = state_entries.check_expiry(expires_at)
        with self._state(write=True) as conn:
            state_entries.put(conn, scope, scope_id, key, stored, expiry)

    def update_state(
        self,
        scope: str,
        scope_id: str,
        key: str,
        change: Callable[[Any], Any],
        expires_at: datetime | None = None,
    ) -> Any:
        """Replace one entry by ``change(its value)`` (``None`` when it has none), in one
        transaction that other writers of the entry wait for; returns the new value.

        For a value several processes add to (a log, a table by tool): read, change and
        write back by each, the last writer would silently undo the others' changes.
        ``change`` runs while the entry is held, so it should be quick and pure.
        """
        scope = state_entries.check_scope(scope)
        scope_id = state_entries.check_scope_id(scope, scope_id)
        key = state_entries.check_key(key)
        expiry = state_entries.check_expiry(expires_at)
        with self._state(write=True) as conn:
            current = state_entries.locked_value(conn, scope, scope_id, key)
            value = state_entries.check_value(key, change(current))
            state_entries.put(conn, scope, scope_id, key, value, expiry)
        return value

    def get_state_entries(
        self,
        scope: str | None = None,
        scope_id: str | None = None,
        *,
        key: str | None = None,
        include_expired: bool = False,
    ) -> list[StateEntry]:
        """Entries of a scope, a scope id, or all (or only those named ``key``); by scope,
        scope id and key."""
        if scope is not None:
            scope = state_entries.check_scope(scope)
        if scope_id is not None and not isinstance(scope_id, str):
            raise InvalidRecordError(
                f"state scope id must be a string, got {type(scope_id).__name__}"
            )
        if key is not None:
            key = state_entries.check_key(key)
        with self._state(write=False) as conn:
            return state_entries.entries(conn, scope, scope_id, key, include_expired)

    def delete_state(self, scope: str, scope_id: str, key: str | None = None) -> int:
        """Delete one entry, or with ``key=None`` every entry of the scope id; returns how many."""
        scope = state_entries.check_scope(scope)
        scope_id = state_entries.check_scope_id(scope, scope_id)
        if key is not None:
            key = state_entries.check_key(key)
        with self._state(write=True) as conn:
            return state_entries.remove(conn, scope, scope_id, key)

    def purge_expired_state(self, now: datetime | None = None) -> int:
        """Delete every entry whose expiry is at or before ``now``; returns how many."""
        if now is not None and not isinstance(now, datetime):
            raise InvalidRecordError(f"now must be a datetime, got {type(now).__name__}")
        moment = state_entries.aware("now", now) if now is not None else datetime.now(UTC)
        with self._state(write=True) as conn:
            return state_entries.purge_expired(conn, moment)

    # -- learning bookkeeping ------------------------------------------------

    def store_job_run(
        self,
        job: str,
        *,
        started_at: datetime,
        finished_at: datetime,
        success: bool,
        report: dict[str, Any],
        error: str | None = None,
        trigger: Literal["manual", "schedule"] = "manual",
    ) -> JobRun:
        """Record one run of a learning job (synchronously)."""
        with self._state(write=True) as conn:
            return bookkeeping.insert_job_run(
                conn, job, trigger, started_at, finished_at, success, error, report
            )

    def get_job_runs(self, job: str | None = None, limit: int = 50) -> list[JobRun]:
        """The newest job runs first, of one job or all."""
        job = _text("job", job)
        _at_least_one("limit", limit)
        with self._state(write=False) as conn:
            return bookkeeping.job_runs(conn, job, limit)

    def store_assignment(self, experiment: str, execution_id: str, arm: str, unit: str) -> None:
        """Record that ``execution_id`` ran under ``arm`` of ``experiment``."""
        with self._state(write=True) as conn:
            bookkeeping.insert_assignment(conn, experiment, execution_id, arm, unit)

    def get_arm_outcomes(self, experiment: str | None = None) -> list[ArmOutcomes]:
        """Per experiment and arm, sums over the recorded executions it ran."""
        experiment = _text("experiment", experiment)
        with self._read() as conn:
            return bookkeeping.arm_outcomes(conn, experiment)

    def get_recent_tool_outcomes(self, since: datetime) -> list[RecentToolOutcomes]:
        """Per tool, attempts and successes since ``since`` (what a tool does lately)."""
        since = _moment("since", since)
        with self._read() as conn:
            return bookkeeping.recent_tool_outcomes(conn, since)

    def get_attempt_outcomes(self, execution_ids: Sequence[str]) -> list[AttemptOutcome]:
        """Every tool call attempt of these executions, in the order they started."""
        ids = [_execution_id(execution_id) for execution_id in execution_ids]
        with self._read() as conn:
            return bookkeeping.attempt_outcomes(conn, ids)

    def get_feedback(
        self, since: datetime | None = None, limit: int = 1000, *, after_id: str | None = None
    ) -> list[FeedbackRecord]:
        """Feedback the store wrote after ``since`` (any process), in the order it wrote it.

        To page, pass the last record's ``recorded_at`` as ``since`` and its ``id`` as
        ``after_id``: rows written in the same moment (one batch) are not skipped. The
        order is the store's, not the judgements' (``created_at``): feedback replayed from
        the journal after an outage is read when it is written, not passed over.
        """
        _at_least_one("limit", limit)
        if since is not None:
            since = _moment("since", since)
        elif after_id is not None:
            raise ValueError("after_id pages from a since; give the since it goes with")
        if after_id is not None:
            after_id = _feedback_id(after_id)
        with self._read() as conn:
            return analytics.get_feedback(conn, since, limit, after_id)

    def iter_feedback(
        self, since: datetime | None = None, page: int = 1000
    ) -> Iterator[FeedbackRecord]:
        """Every feedback row the store wrote after ``since``, in that order, read
        ``page`` rows at a time (:meth:`get_feedback` paging by ``recorded_at`` and id)."""
        after_id = None
        while True:
            batch = self.get_feedback(since, page, after_id=after_id)
            yield from batch
            if len(batch) < page:
                return
            since, after_id = batch[-1].recorded_at, batch[-1].id

    # -- maintenance ---------------------------------------------------------

    @contextlib.contextmanager
    def _write(self) -> Iterator[Connection]:
        self._check_open()
        self.flush()
        with self._connect(write=True) as conn:
            yield conn

    def update_statistics(self) -> None:
        """Rebuild every rollup from scratch (archive plus live rows).

        The result equals what the incremental path maintains; this is the
        check of that, and the repair if a rollup was ever damaged by hand.
        """
        with self._write() as conn:
            rollups.rebuild(conn)

    def prune(self, older_than: timedelta | datetime) -> PruneReport:
        """Delete raw rows older than the cutoff; the rollups learning reads stay unchanged."""
        if isinstance(older_than, timedelta):
            if older_than < timedelta(0):
                raise ValueError(f"older_than must not be negative, got {older_than}")
            now = datetime.now(UTC)
            if older_than > now - datetime.min.replace(tzinfo=UTC):
                raise ValueError(f"older_than goes back before the year 1, got {older_than}")
            cutoff = now - older_than
        else:
            cutoff = _moment("older_than", older_than, "a timedelta (an age) or ")
        ex, te, fb, rd = s.executions, s.tool_executions, s.execution_feedback, s.routing_decisions
        with self._write() as conn:
            rollups.archive_before(conn, cutoff)
            runs, steps, decisions = rollups.past_retention(cutoff)
            old = select(ex.c.id).where(runs)
            feedback = conn.execute(delete(fb).where(fb.c.execution_id.in_(old))).rowcount
            ea, jr = s.experiment_assignments, s.job_runs
            conn.execute(delete(ea).where(ea.c.execution_id.in_(old)))
            conn.execute(delete(jr).where(jr.c.started_at < cutoff))
            tools = conn.execute(delete(te).where(steps)).rowcount
            routing = conn.execute(delete(rd).where(decisions)).rowcount
            executions = conn.execute(delete(ex).where(runs)).rowcount
            previous = conn.scalar(
                select(s.store_meta.c.text_value).where(s.store_meta.c.key == "pruned_before")
            )
            if previous is None or datetime.fromisoformat(previous) < cutoff:
                value = cutoff.isoformat()
                updated = conn.execute(
                    update(s.store_meta)
                    .where(s.store_meta.c.key == "pruned_before")
                    .values(text_value=value)
                ).rowcount
                if not updated:
                    conn.execute(
                        s.store_meta.insert().values(key="pruned_before", text_value=value)
                    )
        return PruneReport(
            cutoff=cutoff,
            executions=executions,
            tool_executions=tools,
            feedback=feedback,
            routing_decisions=routing,
        )

    def status(self) -> StoreStatus:
        """Health of the store for ``/system/status``: reachability, backlog, journal."""
        revision = None
        reachable = self._writer.healthy
        if reachable:
            try:
                revision = migrate.current_revision(self.engine)
            except Exception as error:
                if not is_connection_error(error):
                    raise
                reachable = False
        rejected = 0
        if self.rejected_path.exists():
            with self.rejected_path.open("rb") as handle:
                rejected = sum(1 for line in handle if line.strip())
        stats = self._writer.stats
        return StoreStatus(
            backend=self.backend,
            url=self._where,
            reachable=reachable,
            schema_revision=revision,
            pending_writes=self._writer.pending(),
            journal_records=self.journal.record_count(),
            rejected_records=rejected,
            written_records=stats.written,
            last_flush_at=stats.last_flush_at,
            last_error=stats.last_error,
        )


def _moment(name: str, value: Any, also: str = "") -> datetime:
    """A point in time given to a read or to ``prune``, in UTC (naive is taken as UTC)."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be {also}a datetime, got {type(value).__name__} {value!r}")
    return named_utc(name, value)


def _execution_id(value: Any) -> str:
    """An execution id in its canonical spelling, or ``InvalidRecordError`` naming it."""
    try:
        return canonical_id(value)
    except (ValueError, TypeError, AttributeError):
        raise InvalidRecordError(f"execution id must be a UUID, got {value!r}") from None


def _feedback_id(value: Any) -> str:
    """``after_id`` in its canonical spelling: compared with ``>``, an id in upper case
    read every row after it on SQLite (which keeps ids as lower-case text) again, and one
    that is no UUID answered a page there and a raw database error on PostgreSQL."""
    try:
        return canonical_id(value)
    except (ValueError, TypeError, AttributeError):
        raise ValueError(f"after_id must be a feedback id (a UUID), got {value!r}") from None


def _at_least_one(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= INT32:
        raise ValueError(f"{name} must be a positive integer up to {INT32:,}, got {value!r}")


_TEXT_FILTERS = ("goal_id", "intent", "project", "session_id", "model_tier", "pool")
_OTHER_FILTERS = ("since", "before", "success", "no_project", "depth")


def _listed(name: str, values: Any) -> list[Any]:
    if values is None:
        return []
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise InvalidRecordError(f"{name} must be a list, got {type(values).__name__} {values!r}")
    return list(values)


@overload
def _text(name: str, value: str) -> str: ...
@overload
def _text(name: str, value: str | None) -> str | None: ...
def _text(name: str, value: str | None) -> str | None:
    """A text filter as the values it is compared with were stored (``clean_text``: a NUL
    written is read back as U+FFFD), or ``TypeError`` naming it."""
    if value is None:
        return None
    _of_type(name, value, str)
    return clean_text(value)


def _of_type(name: str, value: Any, kind: type) -> None:
    """A filter of the wrong type matches nothing in SQL: say so instead of answering []."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = {bool: "True or False", str: "a string", int: "an integer"}[kind]
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")


def _validated(kind: str, model: type[R], **values: Any) -> R:
    """Build a record, turning pydantic's error into one that names the record kind."""
    try:
        record = model(**values)
    except ValidationError as error:
        raise InvalidRecordError.from_validation(kind, error) from None
    record.__dict__.update(_json_as_now(record))  # ours alone: no copy needed
    return record


_JSON_FIELDS: dict[type, tuple[str, ...]] = {
    ExecutionRecord: ("metadata",),
    RoutingDecision: ("features",),
    SolutionRecord: ("plan",),
}


def _json_as_now(record: AnyRecord) -> dict[str, Any]:
    """The record's free-form JSON values as they are now, as the store will keep them:
    pydantic copies a dict but not what is inside it, and the writer encodes it later,
    after the caller may have changed the objects it passed (a run's output)."""
    return {
        name: serialize.to_jsonable(value)
        for name in _JSON_FIELDS.get(type(record), ())
        if (value := getattr(record, name))
    }


def _detached(record: R) -> R:
    """A caller's record, copied with its JSON values as they are now (see ``_json_as_now``)."""
    update = _json_as_now(record)
    return record.model_copy(update=update) if update else record


def _shutdown(writer: BatchWriter, engine: Any) -> None:
    writer.close()
    engine.dispose()
