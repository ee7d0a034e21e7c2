"""The HTTP API: run and stream goals, read the history, manage tools, watch the system.

``create_app(orchestrator)`` returns a FastAPI app bound to one orchestrator.
Runs happen on the server's event loop (``await orch.run``); every store call
blocks, so each goes to a worker thread. With ``store=None`` the routes that
read the history answer 503 ("recording is off").
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import Annotated, Any, TypeVar

from fastapi import Body, Depends, FastAPI, Path, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from dendrite.api.guard import Guard
from dendrite.api.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from dendrite.api.models import (
    ExecutionPage,
    ExecutionSummary,
    ExperimentList,
    FeedbackCreated,
    FeedbackRequest,
    GoalRequest,
    GoalResult,
    Health,
    JobList,
    LLMInfo,
    OrchestratorInfo,
    PlannerInfo,
    PolicyList,
    PoolPerformanceList,
    RouteAccuracyList,
    RouterInfo,
    StoreHealth,
    SuccessRateOut,
    SystemStatus,
    TierInfo,
    TierPerformanceList,
    ToolCounts,
    ToolDescription,
    ToolList,
    ToolPerformanceList,
    ToolStateChange,
    TraceOut,
)
from dendrite.api.problems import (
    Problem,
    ProblemError,
    install_handlers,
    problem_body,
    responses,
)
from dendrite.api.sse import KEEPALIVE, EventStreamResponse, sse
from dendrite.config import MAX_REPORT_DAYS
from dendrite.execution.events import EventType
from dendrite.learning import experiments as ab
from dendrite.learning.calibration import routing_accuracy
from dendrite.learning.jobs import JOBS, JobContext, JobScheduler, describe, run_job
from dendrite.llm.client import redacted_url
from dendrite.orchestrator import (
    ExecutionResult,
    Orchestrator,
    OrchestratorClosedError,
    planner_name,
)
from dendrite.planning import (
    PLANNERS,
    DendritePlanner,
    LLMPlanner,
    Plan,
    Planner,
    PlanningError,
    PlanValidationError,
    SemanticPlanner,
    SingleToolPlanner,
    Strategy,
    TemplatePlanner,
    classify,
)
from dendrite.store import ExecutionStore
from dendrite.store.analytics import ExecutionDetail
from dendrite.store.bookkeeping import JobRun
from dendrite.store.errors import (
    InvalidRecordError,
    StoreUnavailableError,
    UnknownExecutionError,
)
from dendrite.store.serialize import dumps
from dendrite.store.writer import is_connection_error
from dendrite.telemetry import ExecutionStatus
from dendrite.telemetry.records import MAX_TOOL_NAME, ExecutionRecord, Moment, as_utc
from dendrite.tools import ToolStatus, UnknownToolError

log = logging.getLogger("dendrite.api")

T = TypeVar("T")

KEEPALIVE_SECONDS = 15.0
"""Seconds of silence after which a stream sends a comment line (proxies close idle streams)."""

UNWIND_SECONDS = 5.0
"""At shutdown, the most seconds to wait for cancelled runs to be recorded."""

_PLANNER_CLASSES: dict[str, type] = {
    "dendrite": DendritePlanner,
    "semantic": SemanticPlanner,
    "template": TemplatePlanner,
    "llm": LLMPlanner,
    "single": SingleToolPlanner,
}


def _version() -> str:
    try:
        return metadata.version("dendrite")
    except metadata.PackageNotFoundError:  # pragma: no cover - running from a bare tree
        return "0+unknown"


def _json(content: Any, status: int = 200) -> Response:
    """JSON that never fails to encode: tool outputs are whatever Python objects tools return."""
    return Response(_encoded(content), status_code=status, media_type="application/json")


_TOO_DEEP = '"$error":"circular or too deeply nested"}'


def _encoded(value: Any, part: str = "response") -> str:
    """``value`` as JSON, a part too deep for JSON (a tool's nested output) as the marker
    ``dumps`` writes for it, and only that part: encoded whole, one deep answer turned the
    whole response into the marker, its execution id and steps lost. Only the response's
    own structure is taken apart (its fields, its ``steps`` and each step's fields); a
    tool's output is the marker whole."""
    text = dumps(value)
    if not text.endswith(_TOO_DEEP):
        return text
    if part in ("response", "step") and isinstance(value, dict):
        parts = (
            f"{json.dumps(str(k))}:"
            f"{_encoded(v, 'steps' if part == 'response' and k == 'steps' else 'field')}"
            for k, v in value.items()
        )
        return "{" + ",".join(parts) + "}"
    if part == "steps" and isinstance(value, list):
        return "[" + ",".join(_encoded(v, "step") for v in value) + "]"
    return text


# -- cursors -----------------------------------------------------------------


def _encode_cursor(record: ExecutionRecord) -> str:
    assert record.started_at is not None
    raw = json.dumps({"t": record.started_at.isoformat(), "id": record.id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(raw)
        # as_utc: a time outside the years 1 to 9999 in UTC is one no store can compare.
        started_at = as_utc(datetime.fromisoformat(data["t"]))
        execution_id = str(uuid.UUID(data["id"]))
        started_at + timedelta(microseconds=1)  # the page's bound: 9999-12-31 has none
    except (
        binascii.Error,
        ValueError,
        TypeError,
        KeyError,
        UnicodeDecodeError,
        OverflowError,
        AttributeError,  # an "id" that is not a string: uuid.UUID(5)
    ):
        raise ProblemError(
            400,
            "invalid-cursor",
            "Invalid cursor",
            "the cursor is not one this API handed out; pass the 'next_cursor' of a previous "
            "page unchanged, or leave it out for the first page",
        ) from None
    return started_at, execution_id


def _page(
    store: ExecutionStore,
    limit: int,
    filters: dict[str, Any],
    position: tuple[datetime, str] | None,
) -> tuple[list[ExecutionRecord], bool]:
    """One page, newest first, strictly after ``position`` in (started_at, id) order.

    The store's ``before`` is strict on ``started_at`` alone; runs that started in
    the same microsecond are told apart by id here, fetching more until the page
    is full or the history ends.
    """
    want = limit + 1
    fetch = want
    while True:
        before = position[0] + timedelta(microseconds=1) if position else None
        rows = store.get_recent_executions(fetch, before=before, **filters)
        exhausted = len(rows) < fetch
        if position is not None:
            rows = [r for r in rows if r.started_at is None or (r.started_at, r.id) < position]
        if len(rows) >= want or exhausted:
            return rows[:limit], len(rows) > limit
        fetch *= 2


def _summary(record: ExecutionRecord) -> dict[str, Any]:
    data = record.model_dump(
        mode="json",
        include=set(ExecutionSummary.model_fields) - {"planner"},
    )
    data["planner"] = record.metadata.get("planner")
    return data


# -- the app -----------------------------------------------------------------


@dataclass
class _State:
    orch: Orchestrator
    metrics: ApiMetrics
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.monotonic)
    planners: dict[tuple[str, str | None], Planner] = field(default_factory=dict)
    background: set[asyncio.Task[Any]] = field(default_factory=set)
    streams: set[asyncio.Queue[tuple[str, Any]]] = field(default_factory=set)

    def end_streams(self) -> None:
        """Tell every open event stream that the server is shutting down: each ends and
        cancels its run, which a server would otherwise wait for however long it takes."""
        for queue in self.streams:
            queue.put_nowait(("shutdown", None))

    # -- store access --------------------------------------------------------

    def store(self) -> ExecutionStore:
        if self.orch.store is None:
            raise ProblemError(
                503,
                "recording-off",
                "Recording is off",
                "this orchestrator was started without an execution store (store=None), so it "
                "keeps no history to list, analyse or attach feedback to",
            )
        return self.orch.store

    async def blocking(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking (store) call in a worker thread; store outages become 503."""
        try:
            return await run_in_threadpool(func, *args, **kwargs)
        except StoreUnavailableError as error:
            raise ProblemError(503, "store-unavailable", "Store unavailable", str(error)) from None
        except UnknownExecutionError as error:
            raise ProblemError(404, "unknown-execution", "Unknown execution", str(error)) from None
        except InvalidRecordError as error:
            raise ProblemError(422, "invalid-request", "Invalid request", str(error)) from None
        except Exception as error:
            if is_connection_error(error):
                first = str(error).strip().splitlines()[0] if str(error).strip() else ""
                raise ProblemError(
                    503,
                    "store-unavailable",
                    "Store unavailable",
                    f"the execution store cannot be reached ({type(error).__name__}: {first}); "
                    "writes are journaled and nothing is lost, reads must wait for it",
                ) from None
            raise

    # -- planning ------------------------------------------------------------

    def planner_for(self, request: GoalRequest) -> Planner | None:
        """The planner asked for, or None to let the orchestrator plan with its own."""
        if request.planner is None and request.strategy is None:
            return None
        name = request.planner or "dendrite"
        current = self.orch.planner
        if type(current) is _PLANNER_CLASSES[name] and (
            request.strategy is None or getattr(current, "strategy", None) == request.strategy
        ):
            return None
        key = (name, request.strategy.value if request.strategy else None)
        found = self.planners.get(key)
        if found is not None:
            return found
        if name == "llm" and self.orch.llm is None:
            raise ProblemError(
                422,
                "no-model",
                "No model configured",
                "the 'llm' planner needs a model and this server has none; set "
                "DENDRITE_LLM_BASE_URL and DENDRITE_LLM_MODEL, or choose another planner",
            )
        # Wired to the orchestrator's ranker and plan memory, as its own planner is.
        planner = self.orch.make_planner(name, request.strategy if name == "dendrite" else None)
        self.planners[key] = planner
        return planner

    @staticmethod
    def target(request: GoalRequest) -> str | Plan:
        """What to hand to the orchestrator: the given plan, or the goal to plan."""
        if request.plan is not None:
            return request.plan
        assert request.goal is not None
        return request.goal

    # -- results -------------------------------------------------------------

    def observe(self, result: ExecutionResult | None, status: str, started: float) -> None:
        steps = (
            [
                {"attempts": [{"tool": a.tool, "success": a.success} for a in s.attempts]}
                for s in result.steps
            ]
            if result is not None
            else []
        )
        self.metrics.observe_run(status, time.perf_counter() - started, steps)


def _planning_problem(error: PlanningError | PlanValidationError) -> ProblemError:
    problems = [str(p) for p in getattr(error, "problems", [])] or [str(error)]
    return ProblemError(
        422,
        "planning-failed",
        "The goal could not be planned",
        str(error),
        problems=problems,
        execution_id=error.execution_id,  # the recorded attempt, for its trace and feedback
    )


def _closed_problem() -> ProblemError:
    return ProblemError(
        503, "orchestrator-closed", "Orchestrator closed", "the orchestrator has been closed"
    )


def _result(result: ExecutionResult) -> dict[str, Any]:
    labels = result.plan.metadata.get("classification")
    if not isinstance(labels, dict):
        labels = classify(result.goal).to_dict()
    return {
        "execution_id": result.execution_id,
        "goal": result.goal,
        "answer": result.output,
        "success": result.success,
        "status": result.status.value,
        "confidence": result.confidence,
        "intent": labels.get("intent"),
        "query_type": labels.get("query_type"),
        "planner": result.plan.planner,
        "strategy": result.plan.metadata.get("strategy"),
        "route": result.route,
        "llm_usage": result.llm_usage,
        "error": result.error,
        "error_type": result.error_type.value if result.error_type else None,
        "duration_ms": result.duration_ms,
        "started_at": result.started_at.isoformat(),
        "session_id": result.session_id,
        "steps": [
            {
                "step_id": s.step_id,
                "tool": s.tool,
                "status": s.status.value,
                "duration_ms": s.duration_ms,
                "attempts": len(s.attempts),
                "retries": s.retries,
                "fallback_used": s.fallback_used,
                "error": s.error,
                "skip_reason": s.skip_reason,
                "confidence": s.confidence,
                "not_tried": list(s.not_tried),
            }
            for s in result.steps
        ],
    }


_SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": [*(t.value for t in EventType), "error"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "description": "the event as JSON: type, execution_id, step_id, data, at; for an "
            "error event, a problem",
        },
        "id": {"type": "string", "description": "the event's number in the stream"},
    },
}

_GOAL_EXAMPLES: dict[str, Any] = {
    "goal": {"summary": "a goal in plain words", "value": {"goal": "calculate 6 * 7"}},
    "plan": {
        "summary": "an explicit plan",
        "value": {
            "plan": {
                "goal": "count the words",
                "steps": [{"id": "count", "tool": "word_count", "params": {"text": "a b c"}}],
            }
        },
    },
}


GoalBody = Annotated[GoalRequest, Body(openapi_examples=_GOAL_EXAMPLES)]
ExecutionId = Annotated[uuid.UUID, Path(description="the execution's id (a UUID)")]
ToolName = Annotated[str, Path(max_length=MAX_TOOL_NAME, description="the tool's registered name")]
Since = Annotated[Moment | None, Query(description="ISO 8601; naive means UTC")]
"""Converted to UTC as it is read: a time outside the years 1 to 9999 in UTC is a 422
naming ``since``, not an overflow in the store."""


def _query_parameters(dependant: Dependant) -> frozenset[str]:
    """The query parameters a route takes: its own and those of its dependencies."""
    known: set[str] = set()
    pending = [dependant]
    while pending:
        current = pending.pop()
        known.update(param.alias for param in current.query_params)
        pending.extend(current.dependencies)
    return frozenset(known)


class _Route(APIRoute):
    """A route that knows the query parameters it takes from when it is built: its
    dependency tree does not change after, so no request needs to walk it again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.query_parameters = _query_parameters(self.dependant)


async def _known_query_parameters(request: Request) -> None:
    """A query parameter the route does not take is refused: a misspelled filter
    (``?sesion_id=``) would otherwise be ignored and answer the unfiltered list."""
    route = request.scope.get("route")
    if not isinstance(route, _Route):
        return
    known = route.query_parameters
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ProblemError(
            422,
            "invalid-request",
            "Invalid request",
            f"unknown query parameter(s) {', '.join(map(repr, unknown))}; this route takes {takes}",
        )


def create_app(
    orchestrator: Orchestrator,
    *,
    token: str | None = None,
    max_body_bytes: int = 1_000_000,
    jobs: JobScheduler | None = None,
) -> FastAPI:
    """The HTTP API over ``orchestrator``.

    ``token``: when given, every route but ``/healthz`` needs ``Authorization:
    Bearer <token>``. ``max_body_bytes``: larger request bodies get 413.
    ``jobs``: a scheduler that runs the learning jobs while the app serves. The
    app never closes the orchestrator: whoever made it does.

    A server stops only once its open responses end, and an event stream lasts
    as long as its run: call :func:`end_streams` when shutdown begins
    (:func:`dendrite.api.serve` does).
    """
    if token is not None and not token.strip():
        raise ValueError("the API token must not be empty; pass None for no token")
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be at least 1, got {max_body_bytes}")
    version = _version()

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if jobs is not None:
            jobs.start()
        try:
            yield
        finally:
            if state.background:  # runs the streams cancelled, still being recorded
                await asyncio.wait(state.background, timeout=UNWIND_SECONDS)
            if jobs is not None:
                await jobs.stop()

    app = FastAPI(
        lifespan=lifespan,
        title="Dendrite",
        version=version,
        description="Run goals, stream their events, read the execution history and its "
        "analytics, and manage tools. Errors are application/problem+json (RFC 9457).",
        dependencies=[Depends(_known_query_parameters)],
    )
    app.router.route_class = _Route  # every route below: see _known_query_parameters
    state = _State(orchestrator, ApiMetrics())
    app.state.dendrite = state
    orch = orchestrator
    install_handlers(app)

    # -- goals ---------------------------------------------------------------

    @app.post(
        "/v1/goals",
        tags=["goals"],
        summary="Run a goal and wait for its answer",
        response_model=GoalResult,
        responses=responses(400, 413, 422, 503),
    )
    async def run_goal(request: GoalBody) -> Response:
        planner = state.planner_for(request)
        started = time.perf_counter()
        state.metrics.start()
        try:
            result = await orch.run(
                state.target(request),
                session_id=request.session_id,
                context=request.context,
                planner=planner,
            )
        except (PlanningError, PlanValidationError) as error:
            state.metrics.planning_errors.inc()
            state.observe(None, ExecutionStatus.FAILED.value, started)
            raise _planning_problem(error) from None
        except OrchestratorClosedError:  # not any error whose text says "closed"
            raise _closed_problem() from None
        finally:
            state.metrics.stop()
        state.observe(result, result.status.value, started)
        return _json(_result(result))

    @app.post(
        "/v1/goals/stream",
        tags=["goals"],
        summary="Run a goal and stream its events (Server-Sent Events)",
        response_class=EventStreamResponse,
        responses={
            200: {
                "description": "`event: <type>` and `data: <JSON of the event>` per event, "
                "from plan_created to final_answer; a goal that cannot be planned gives one "
                "`error` event holding a problem",
                "content": {"text/event-stream": {"schema": _SSE_EVENT_SCHEMA}},
            },
            **responses(400, 413, 422),
        },
    )
    async def stream_goal(request: GoalBody) -> Response:
        planner = state.planner_for(request)
        return EventStreamResponse(
            _events(state, request, planner),
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    # -- executions ----------------------------------------------------------

    @app.get(
        "/v1/executions",
        tags=["executions"],
        summary="List executions, newest first",
        response_model=ExecutionPage,
        responses=responses(400, 422, 503),
    )
    async def list_executions(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        intent: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        success: bool | None = None,
        session_id: Annotated[str | None, Query(min_length=1, max_length=255)] = None,
        since: Since = None,
        cursor: Annotated[
            str | None, Query(max_length=512, description="the next_cursor of a page")
        ] = None,
    ) -> Response:
        store = state.store()
        position = _decode_cursor(cursor) if cursor else None
        filters: dict[str, Any] = {
            "intent": intent,
            "success": success,
            "session_id": session_id,
            "since": since,
        }
        rows, more = await state.blocking(_page, store, limit, filters, position)
        return _json(
            {
                "items": [_summary(r) for r in rows],
                "next_cursor": _encode_cursor(rows[-1]) if more and rows else None,
            }
        )

    @app.get(
        "/v1/executions/{execution_id}",
        tags=["executions"],
        summary="One execution with its tool calls, feedback and routing decisions",
        response_model=ExecutionDetail,
        responses=responses(404, 422, 503),
    )
    async def get_execution(execution_id: ExecutionId) -> Response:
        store = state.store()
        detail = await state.blocking(store.get_execution, str(execution_id))
        if detail is None:
            raise _unknown_execution(execution_id)
        return _json(detail.model_dump(mode="json"))

    @app.get(
        "/v1/executions/{execution_id}/trace",
        tags=["executions"],
        summary="What happened, step by step: timing, attempts, errors, fallbacks, confidence",
        response_model=TraceOut,
        responses=responses(404, 422, 503),
    )
    async def get_trace(execution_id: ExecutionId) -> Response:
        trace = await state.blocking(orch.get_execution_trace, str(execution_id))
        if trace is None:
            raise _unknown_execution(execution_id)
        return _json(trace.to_dict())

    @app.post(
        "/v1/executions/{execution_id}/feedback",
        tags=["executions"],
        summary="Judge an execution: a rating from 1 to 5, accepted or not, a comment",
        status_code=201,
        response_model=FeedbackCreated,
        responses=responses(400, 404, 413, 422, 503),
    )
    async def post_feedback(execution_id: ExecutionId, feedback: FeedbackRequest) -> Response:
        state.store()  # 503 without one
        effect = await state.blocking(
            orch.feedback,
            str(execution_id),
            feedback.rating,
            accepted=feedback.accepted,
            comment=feedback.comment,
            source=feedback.source,
        )
        learned = effect.to_dict()
        return _json(
            {
                "feedback_id": learned.pop("feedback_id"),
                "execution_id": learned.pop("execution_id"),
                "learned": learned,
            },
            201,
        )

    # -- tools ---------------------------------------------------------------

    @app.get(
        "/v1/tools",
        tags=["tools"],
        summary="Every registered tool with its schema and state",
        response_model=ToolList,
    )
    async def list_tools() -> Response:
        await orch.follow_saved_tool_states()
        return _json({"tools": orch.registry.describe(include_unavailable=True)})

    def _tool(name: str) -> Any:
        try:
            return orch.registry.get(name)
        except UnknownToolError as error:
            raise ProblemError(404, "unknown-tool", "Unknown tool", str(error)) from None

    @app.post(
        "/v1/tools/{name}/enable",
        tags=["tools"],
        summary="Let plans use a tool again (also ends a quarantine)",
        response_model=ToolDescription,
        responses=responses(404, 413, 422),
    )
    async def enable_tool(name: ToolName) -> Response:
        _tool(name)
        await state.blocking(orch.set_tool_status, name, "enabled")
        return _json(orch.registry.get(name).describe())

    @app.post(
        "/v1/tools/{name}/disable",
        tags=["tools"],
        summary="Stop plans from using a tool",
        response_model=ToolDescription,
        responses=responses(400, 404, 413, 422),
    )
    async def disable_tool(name: ToolName, change: ToolStateChange | None = None) -> Response:
        _tool(name)
        await state.blocking(
            orch.set_tool_status, name, "disabled", change.reason if change else None
        )
        return _json(orch.registry.get(name).describe())

    # -- analytics -----------------------------------------------------------

    @app.get(
        "/v1/analytics/tools",
        tags=["analytics"],
        summary="Per tool: calls, success rate, mean and p95 duration",
        response_model=ToolPerformanceList,
        responses=responses(503),
    )
    async def tool_analytics() -> Response:
        store = state.store()
        rows = await state.blocking(store.get_tool_performance)
        return _json({"tools": [r.model_dump(mode="json") for r in rows]})

    @app.get(
        "/v1/analytics/tiers",
        tags=["analytics"],
        summary="Per model tier per UTC day, for the last `days` days",
        response_model=TierPerformanceList,
        responses=responses(422, 503),
    )
    async def tier_analytics(days: Annotated[int, Query(ge=1, le=MAX_REPORT_DAYS)] = 7) -> Response:
        store = state.store()
        rows = await state.blocking(store.get_tier_performance, days)
        return _json({"days": days, "tiers": [r.model_dump(mode="json") for r in rows]})

    @app.get(
        "/v1/analytics/routing",
        tags=["analytics"],
        summary="How well each router predicted its runs, per option, for the last `days` days",
        response_model=RouteAccuracyList,
        responses=responses(422, 503),
    )
    async def routing_analytics(
        days: Annotated[int, Query(ge=1, le=MAX_REPORT_DAYS)] = 7,
    ) -> Response:
        store = state.store()
        since = datetime.now(UTC) - timedelta(days=days)
        rows = await state.blocking(routing_accuracy, store, since=since)
        return _json({"days": days, "routes": [r.model_dump(mode="json") for r in rows]})

    @app.get(
        "/v1/analytics/pools",
        tags=["analytics"],
        summary="Per worker pool: runs, success rate, duration, cost, quality",
        response_model=PoolPerformanceList,
        responses=responses(503),
    )
    async def pool_analytics() -> Response:
        store = state.store()
        rows = await state.blocking(store.get_pool_performance)
        return _json({"pools": [r.model_dump(mode="json") for r in rows]})

    @app.get(
        "/v1/analytics/success-rate",
        tags=["analytics"],
        summary="Share of executions that succeeded, optionally by intent and since a time",
        response_model=SuccessRateOut,
        responses=responses(422, 503),
    )
    async def success_rate(
        intent: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
        since: Since = None,
    ) -> Response:
        store = state.store()
        rate = await state.blocking(store.get_success_rate, intent, since)
        return _json(
            {
                **rate.model_dump(mode="json"),
                "intent": intent,
                "since": since.isoformat() if since else None,
            }
        )

    @app.get(
        "/v1/analytics/experiments",
        tags=["analytics"],
        summary="A/B experiments: per arm outcomes and significance against the control",
        response_model=ExperimentList,
        responses=responses(404, 422, 503),
    )
    async def experiment_analytics(
        experiment: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        alpha: Annotated[float, Query(gt=0, lt=1)] = 0.05,
    ) -> Response:
        store = state.store()
        reports = await state.blocking(ab.report, store, experiment, alpha=alpha)
        if experiment is not None and not reports:  # as `dendrite stats experiments` says
            raise ProblemError(
                404, "not-found", "Not found", f"no experiment {experiment!r} recorded"
            )
        return _json({"experiments": [r.to_dict() for r in reports]})

    @app.get(
        "/v1/analytics/policies",
        tags=["analytics"],
        summary="Quality policies per project, with the measured success behind them",
        response_model=PolicyList,
        responses=responses(503),
    )
    async def policy_analytics() -> Response:
        policies = orch.policies
        found = await state.blocking(policies.all) if policies is not None else []
        return _json({"policies": [p.model_dump(mode="json") for p in found]})

    # -- jobs ----------------------------------------------------------------

    @app.get(
        "/v1/jobs",
        tags=["jobs"],
        summary="The learning jobs, their schedule and their last run",
        response_model=JobList,
        responses=responses(503),
    )
    async def list_jobs() -> Response:
        store = state.store()

        def last_runs() -> dict[str, Any]:
            return {name: store.get_job_runs(name, limit=1) for name in JOBS}

        last = await state.blocking(last_runs)
        return _json(
            {
                "scheduled": jobs is not None,
                "jobs": [
                    {
                        "name": name,
                        "description": describe(name),
                        "every_seconds": (
                            jobs.intervals[name] if jobs is not None else every
                        ).total_seconds(),
                        "last_run": last[name][0].model_dump(mode="json") if last[name] else None,
                    }
                    for name, (_, every) in JOBS.items()
                ],
            }
        )

    @app.post(
        "/v1/jobs/{name}/run",
        tags=["jobs"],
        summary="Run a learning job now; the run is recorded like a scheduled one",
        status_code=201,
        response_model=JobRun,
        responses=responses(404, 422, 503),
    )
    async def run_job_now(name: Annotated[str, Path(min_length=1, max_length=64)]) -> Response:
        store = state.store()
        if name not in JOBS:
            raise ProblemError(
                404, "unknown-job", "Unknown job", f"no job {name!r}; jobs are {', '.join(JOBS)}"
            )
        context = jobs.context if jobs is not None else JobContext(store, orch)
        run = await state.blocking(run_job, name, context)
        return _json(run.model_dump(mode="json"), 201)

    # -- system --------------------------------------------------------------

    @app.get("/healthz", tags=["system"], summary="Liveness: always ok", response_model=Health)
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get(
        "/system/status",
        tags=["system"],
        summary="Store reachability and backlog, tools, uptime",
        response_model=SystemStatus,
    )
    async def system_status() -> Response:
        await orch.follow_saved_tool_states()
        store_status = None
        if orch.store is not None:
            store_status = await state.blocking(orch.store.status)
        counts = dict.fromkeys(ToolStatus, 0)
        for tool in orch.registry:
            counts[tool.state.status] += 1
        degraded = store_status is not None and (
            not store_status.reachable or store_status.journal_records > 0
        )
        body = SystemStatus(
            status="degraded" if degraded else "ok",
            version=version,
            started_at=state.started_at,
            uptime_s=time.monotonic() - state.started,
            recording=orch.store is not None,
            store=StoreHealth(**store_status.model_dump()) if store_status else None,
            tools=ToolCounts(
                total=len(orch.registry),
                enabled=counts[ToolStatus.ENABLED],
                disabled=counts[ToolStatus.DISABLED],
                quarantined=counts[ToolStatus.QUARANTINED],
            ),
            runs_in_progress=state.metrics.running,
        )
        return _json(body.model_dump(mode="json"))

    @app.get(
        "/system/orchestrator",
        tags=["system"],
        summary="Planner and strategy, planners and strategies on offer, model, configuration",
        response_model=OrchestratorInfo,
    )
    async def system_orchestrator() -> Response:
        planner, router = orch.planner, orch.router
        strategy = getattr(planner, "strategy", None)
        llm = orch.llm
        body = OrchestratorInfo(
            planner=PlannerInfo(
                name=planner_name(planner),
                kind=type(planner).__name__,
                strategy=str(strategy.value if isinstance(strategy, Strategy) else strategy)
                if strategy is not None
                else None,
            ),
            planners=[p for p in PLANNERS if p != "llm" or llm is not None],
            strategies=[s.value for s in Strategy],
            llm=LLMInfo(
                configured=llm is not None,
                model=llm.config.model_for(None) if llm else None,
                base_url=redacted_url(llm.config.server_for(None)[0]) if llm else None,
                default_tier=llm.config.default_tier if llm else None,
                tiers=[
                    TierInfo(
                        name=tier.name,
                        model=tier.model,
                        cost=tier.cost,
                        prompt_price=tier.prompt_price,
                        completion_price=tier.completion_price,
                        base_url=redacted_url(tier.base_url) if tier.base_url else None,
                    )
                    for tier in (llm.config.tiers if llm else ())
                ],
                cost_weight=llm.config.cost_weight if llm and llm.config.tiers else None,
            ),
            router=None
            if router is None
            else RouterInfo(
                name=router.router_name,
                options=list(router.options),
                policy=router.policy,
                cost_weight=router.cost_weight,
                observations={
                    name: int(stats["observations"]) for name, stats in router.stats().items()
                },
            ),
            config=orch.config.model_dump(mode="json"),
        )
        return _json(body.model_dump(mode="json"))

    @app.get(
        "/metrics",
        tags=["system"],
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def prometheus() -> Response:
        await orch.follow_saved_tool_states()
        store_status = await state.blocking(orch.store.status) if orch.store else None
        text = state.metrics.render(store_status, orch.registry, time.monotonic() - state.started)
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    # -- OpenAPI -------------------------------------------------------------

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = Problem.model_json_schema()
        if orch.llm is None:  # this server cannot plan with a model: do not offer it
            planner = components["schemas"]["GoalRequest"]["properties"]["planner"]
            for option in planner.get("anyOf", [planner]):
                if "llm" in option.get("enum", ()):
                    option["enum"] = [p for p in option["enum"] if p != "llm"]
        if token is not None:
            components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearerAuth": []}]
            unauthorized = responses(401)[401]
            for path, operations in schema.get("paths", {}).items():
                for operation in operations.values():
                    if path == "/healthz":
                        operation["security"] = []
                    else:
                        operation.setdefault("responses", {})["401"] = unauthorized
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(Guard, token=token, max_body_bytes=max_body_bytes)
    return app


def end_streams(app: FastAPI) -> None:
    """End the open event streams of ``app`` (from :func:`create_app`), cancelling their
    runs; they are recorded as cancelled while the app's lifespan shuts down."""
    app.state.dendrite.end_streams()


def _unknown_execution(execution_id: uuid.UUID) -> ProblemError:
    return ProblemError(
        404,
        "unknown-execution",
        "Unknown execution",
        f"no execution {execution_id} is recorded (it may have been pruned)",
    )


async def _events(
    state: _State, request: GoalRequest, planner: Planner | None
) -> AsyncIterator[str]:
    """The run's events as SSE; leaving early (the client disconnects) cancels the run."""
    orch = state.orch
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    started = time.perf_counter()
    outcome: dict[str, Any] = {"status": None, "execution_id": None}

    async def produce() -> None:
        try:
            async for event in orch.stream(
                state.target(request),
                session_id=request.session_id,
                context=request.context,
                planner=planner,
            ):
                await queue.put(("event", event))
            await queue.put(("end", None))
        except (PlanningError, PlanValidationError) as error:
            state.metrics.planning_errors.inc()
            problem = _planning_problem(error)
            await queue.put(("error", problem.body("/v1/goals/stream")))
        except OrchestratorClosedError:  # the answer /v1/goals gives
            await queue.put(("error", _closed_problem().body("/v1/goals/stream")))
        except Exception as error:
            log.error("stream of %r failed", request.goal, exc_info=error)
            await queue.put(
                (
                    "error",
                    problem_body(
                        500,
                        "internal-error",
                        "Internal server error",
                        f"the run failed inside the server ({type(error).__name__}); "
                        "the server log has the details",
                        "/v1/goals/stream",
                    ),
                )
            )

    async def observe(execution_id: str, duration_s: float) -> None:
        # A cancelled run is recorded, attempts and all, while its task unwinds: its trace
        # is complete only once that task is done.
        await asyncio.wait({task})
        try:
            trace = await state.blocking(orch.get_execution_trace, execution_id)
        except Exception:
            trace = None
        steps = trace.steps if trace is not None else []
        status = trace.status if trace is not None else outcome["status"] or "failed"
        state.metrics.observe_run(status, duration_s, steps)

    state.metrics.start()
    task = asyncio.create_task(produce())
    state.background.add(task)  # so that shutdown waits for its run to be recorded
    task.add_done_callback(state.background.discard)
    state.streams.add(queue)
    sequence = 0
    try:
        while True:
            try:
                kind, item = await asyncio.wait_for(queue.get(), KEEPALIVE_SECONDS)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if kind == "event":
                sequence += 1
                outcome["execution_id"] = item.execution_id
                if item.type is EventType.FINAL_ANSWER:
                    outcome["status"] = "succeeded" if item.data.get("success") else "failed"
                yield sse(item.type.value, item.to_dict(), sequence)
            elif kind == "error":
                outcome["status"] = "failed"
                sequence += 1
                yield sse("error", item, sequence)
                break
            elif kind == "shutdown":
                sequence += 1
                problem = problem_body(
                    503,
                    "shutting-down",
                    "Server shutting down",
                    "the server is shutting down, so this run was cancelled (and is recorded "
                    "as cancelled); run the goal again once the server is back",
                    "/v1/goals/stream",
                )
                yield sse("error", problem, sequence)
                break
            else:
                break
    finally:
        state.streams.discard(queue)
        state.metrics.stop()
        if not task.done():
            task.cancel()  # the client left: cancelling the stream cancels the run
            outcome["status"] = outcome["status"] or "cancelled"
        execution_id = outcome["execution_id"]
        duration_s = time.perf_counter() - started
        if execution_id is not None:  # its trace has the attempts, a cancelled run's too
            recorder = asyncio.get_running_loop().create_task(observe(execution_id, duration_s))
            state.background.add(recorder)
            recorder.add_done_callback(state.background.discard)
        else:  # refused or cancelled before it had an id: no attempts to count
            state.metrics.observe_run(outcome["status"] or "cancelled", duration_s)


__all__ = ["create_app", "end_streams"]
