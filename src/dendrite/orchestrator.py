"""The Orchestrator: goal in, answer out, and every step of the way on the record.

It ties the parts together: a planner makes a plan, the plan is validated,
the engine runs it, and the store receives the execution and every tool-call
attempt through its non-blocking writer. Recording is a side effect the
caller never has to think about, and never a reason for a run to fail: a store
error is logged and the run goes on (the store journals what it cannot write).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from dendrite._ids import new_id
from dendrite._runs import RunsInFlight
from dendrite.execution.engine import ExecutionEngine, RunOutcome
from dendrite.execution.events import Attempt, Event, EventType, StepResult, StepStatus
from dendrite.execution.records import ITEM_KEY, attempt_record
from dendrite.learning.experiments import Experiment
from dendrite.learning.health import HEALTH_LOG_KEY
from dendrite.learning.jobs import (
    LIFECYCLE_KEY,
    TOOL_STATES_KEY,
    apply_promotion,
    reopen,
    save_tool_state,
)
from dendrite.learning.loop import (
    FeedbackEffect,
    JudgedRun,
    LearningLoop,
    check_judgement,
    retrieval_shares,
)
from dendrite.learning.policies import QualityPolicies, QualityPolicy
from dendrite.learning.router import (
    ROUTE_DOWN,
    ROUTE_UNUSED,
    Router,
    RouterError,
    RoutingChoice,
    TaskFeatures,
    judged_rating,
)
from dendrite.llm import ChatLLM, LLMUsage, llm_tier, llm_usage
from dendrite.llm.tools import register_llm_tools
from dendrite.planning import PLANNERS
from dendrite.planning.classify import classify
from dendrite.planning.default import DendritePlanner, Strategy
from dendrite.planning.llm_planner import LLMPlanner
from dendrite.planning.plan import (
    Plan,
    PlanValidationError,
    RetryPolicy,
    validate,
)
from dendrite.planning.planner import Planner, PlanningError, SingleToolPlanner
from dendrite.planning.semantic import RetrieverCache, SemanticPlanner
from dendrite.planning.templates import TemplatePlanner
from dendrite.state import StateManager, StateView
from dendrite.store import ExecutionStore, UnknownExecutionError
from dendrite.store.errors import worth_a_traceback
from dendrite.store.serialize import capped, to_jsonable
from dendrite.telemetry import ErrorType, ExecutionStatus
from dendrite.telemetry.errors import described
from dendrite.telemetry.records import (
    MAX_COST,
    MAX_LABEL,
    MAX_PROJECT,
    MAX_SESSION_ID,
    MAX_TOKENS,
)
from dendrite.tools import ToolError, ToolRegistry, ToolState, ToolStatus, UnknownToolError

log = logging.getLogger("dendrite.orchestrator")
_T = TypeVar("_T")

_DEFAULT_STORE: Any = object()
_LLM_FROM_ENV: Any = object()
TOOL_STATES_REFRESH = 30.0
"""Seconds between reads of the tool states other processes saved (as quality policies)."""
CLOSE_TIMEOUT = 10.0
"""Seconds ``close()`` waits for the runs it cancelled to be recorded."""
_LEARNING_FROM_CONFIG: Any = object()
_POLICIES_FROM_CONFIG: Any = object()
_ROUTER_FROM_TIERS: Any = object()


class OrchestratorClosedError(RuntimeError):
    """A run asked of an orchestrator after ``close()``."""


class OrchestratorConfig(BaseModel):
    """Knobs of a run; every one has a default that works on a laptop."""

    model_config = ConfigDict(extra="forbid")

    max_parallel_steps: int = Field(default=16, ge=1, le=10_000)
    default_timeout: float | None = Field(
        default=60.0, gt=0, description="seconds per attempt when neither step nor tool says"
    )
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    max_depth: int = Field(default=8, ge=0, description="deepest nesting of runs within runs")
    history_ttl: float = Field(
        default=30.0, ge=0, description="seconds a tool's success history is reused for confidence"
    )
    state_ttl: float | None = Field(default=None, gt=0)
    project: str | None = Field(
        default=None,
        max_length=MAX_PROJECT,
        description="the project of runs whose context names none; refused here when longer "
        "than a record keeps, as a context's project is, or every run would go unrecorded",
    )
    max_output_bytes: int = Field(default=64 * 1024, ge=256)
    keep_traces: int = Field(default=256, ge=0, description="recent traces held in memory")
    max_replans: int = Field(
        default=1, ge=0, description="repairs asked of the planner when a step fails for good"
    )
    learning: bool = Field(
        default=True, description="learn from every run: tool ranking, health, plan memory"
    )
    warm_start: int = Field(
        default=5_000,
        ge=0,
        description="recorded executions the learning loop, and routing decisions the router, "
        "read at start",
    )


@dataclass(slots=True, repr=False)
class ExecutionResult:
    execution_id: str
    goal: str
    success: bool
    status: ExecutionStatus
    output: Any
    confidence: float
    steps: list[StepResult]
    error: str | None
    error_type: ErrorType | None
    duration_ms: float
    started_at: datetime
    plan: Plan
    session_id: str | None = None
    parent_id: str | None = None
    depth: int = 0
    route: str | None = None
    """The option (model tier or pool) the router chose for this run."""
    arm: str | None = None
    """The experiment arm this run was assigned to."""
    needs_review: bool = False
    """Confidence fell below the project's quality policy's ``min_confidence``."""
    why: dict[str, str] = field(default_factory=dict)
    """Why each choice was made: per step id, and per run-level component (route, ...)."""
    llm_usage: dict[str, Any] | None = None
    """The model calls the run made (nested runs' included): tokens and cost."""

    def __repr__(self) -> str:
        # Short on purpose: asyncio and loggers repr results, and a 1,000-step one is long.
        return (
            f"ExecutionResult(execution_id={self.execution_id!r}, status={self.status.value!r}, "
            f"confidence={self.confidence}, steps={len(self.steps)}, error={self.error!r})"
        )

    def step(self, step_id: str) -> StepResult:
        for result in self.steps:
            if result.step_id == step_id:
                return result
        raise KeyError(step_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "goal": self.goal,
            "success": self.success,
            "status": self.status.value,
            "output": self.output,
            "confidence": self.confidence,
            "error": self.error,
            "error_type": self.error_type.value if self.error_type else None,
            "duration_ms": self.duration_ms,
            "started_at": self.started_at.isoformat(),
            "planner": self.plan.planner,
            "session_id": self.session_id,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "route": self.route,
            "arm": self.arm,
            "needs_review": self.needs_review,
            "llm_usage": self.llm_usage,
            "steps": [s.to_dict() for s in self.steps],
        }


@dataclass(slots=True)
class ExecutionTrace:
    """What happened in one execution, step by step, for people and dashboards."""

    execution_id: str
    goal: str
    success: bool
    status: str
    confidence: float | None
    duration_ms: float
    started_at: datetime
    planner: str | None
    error: str | None
    parent_id: str | None
    depth: int
    steps: list[dict[str, Any]] = field(default_factory=list)
    replans: list[dict[str, Any]] = field(default_factory=list)
    why: dict[str, str] = field(default_factory=dict)
    """Per step, why its tool was chosen (the ranker's or the planner's reason)."""
    llm_usage: dict[str, Any] | None = None
    """The model calls the run made (nested runs' included): tokens and cost."""

    @property
    def fallbacks(self) -> list[str]:
        return [s["step_id"] for s in self.steps if s.get("fallback_used")]

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "goal": self.goal,
            "success": self.success,
            "status": self.status,
            "confidence": self.confidence,
            "duration_ms": self.duration_ms,
            "started_at": self.started_at.isoformat(),
            "planner": self.planner,
            "error": self.error,
            "parent_id": self.parent_id,
            "depth": self.depth,
            "steps": self.steps,
            "replans": self.replans,
            "why": self.why,
            "llm_usage": self.llm_usage,
        }


@dataclass(frozen=True, slots=True)
class _Frame:
    execution_id: str
    depth: int
    route: str | None = None
    owners: frozenset[RunsInFlight] = frozenset()
    """The run registries of the orchestrators whose runs enclose this one."""


_current: contextvars.ContextVar[_Frame | None] = contextvars.ContextVar(
    "dendrite_current_run", default=None
)


def planner_name(planner: Planner) -> str:
    """A planner's name as records and the API show it: its ``name``, else its class's."""
    return str(getattr(planner, "name", type(planner).__name__))


def _strategy_of(planner: Planner) -> str | None:
    strategy = getattr(planner, "strategy", None)
    return getattr(strategy, "value", strategy)


def current_route() -> str | None:
    """The option the router chose for the run this code is part of (tools call it).

    A tool that can work at several model tiers or on several pools asks this
    which one to use; nested runs inherit their parent's choice unless the
    router decided for them too. None outside a run, or with no router.
    """
    frame = _current.get()
    return frame.route if frame else None


@dataclass(slots=True)
class _Decisions:
    """What the learned components chose for one run, before it ran."""

    project: str | None
    policy: QualityPolicy | None = None
    choice: RoutingChoice | None = None
    arm: str | None = None
    unit: str = "session"
    planner: Planner | None = None
    tier: str | None = None
    """The model tier the run was sent to."""
    usage: LLMUsage | None = None
    """The calls the run made to the model, its nested runs' included: tokens and cost."""
    model: str | None = None
    """The model the run's LLM calls ask: its tier's, a parent run's tier's, or the default."""

    @property
    def route_unused(self) -> bool:
        """Sent to a model tier, the run never called the model: nothing to learn or charge."""
        return self.tier is not None and (self.usage is None or self.usage.calls == 0)

    @property
    def route_down(self) -> bool:
        """Sent to a model tier, the run called the model and got no answer: the tier failed
        it, whatever the offline planners then made of the run."""
        usage = self.usage
        return (
            self.tier is not None and usage is not None and usage.calls > 0 and not usage.answered
        )

    def why(self) -> dict[str, str]:
        notes = {}
        if self.choice is not None:
            notes["route"] = f"picked {self.choice.option} because {self.choice.reason}"
            if self.route_unused:
                notes["route"] += "; unused: the run did not call the model"
        if self.arm is not None:
            notes["experiment"] = f"arm {self.arm}, assigned by hashing the {self.unit}"
        if self.policy is not None:
            notes["policy"] = (
                f"project {self.policy.project}: min confidence {self.policy.min_confidence}, "
                f"replan {'on' if self.policy.replan else 'off'}, "
                f"LLM {'on' if self.policy.use_llm else 'off'} ({self.policy.reason})"
            )
        return notes


class _StoreRecorder:
    """Sends each attempt to the store; a store error is logged, never raised into the run.

    The engine made every field itself, so the record is built without
    pydantic's validation (see :func:`attempt_record`).
    """

    def __init__(self, store: ExecutionStore) -> None:
        self.store = store
        self.failures = 0

    def record_attempt(
        self,
        execution_id: str,
        step_id: str,
        attempt: Attempt,
        params: str,
        result: Any,
    ) -> None:
        try:
            self.store.record(attempt_record(execution_id, step_id, attempt, params, result))
        except Exception:
            self.failures += 1
            log.warning("could not record an attempt of %s", attempt.tool, exc_info=True)


class Orchestrator:
    """Plans goals, runs them, and records everything.

    ``store`` defaults to the store named by the configuration (see
    ``dendrite.config``); pass ``store=None`` to record nothing. ``learning``
    defaults to a :class:`LearningLoop` when ``config.learning`` is on. ``llm``
    defaults to the server named by ``DENDRITE_LLM_BASE_URL`` (none when it is
    unset); with one, the registry gains ``generate_text``. ``planner``
    defaults to :class:`DendritePlanner` with that model; a :class:`Plan`
    given to :meth:`run` bypasses the planner.

    ``router`` picks a model tier or pool per top-level run and learns from
    its outcome. It defaults, with learning on, to a router over the model's
    tiers when ``llm`` has two or more (``DENDRITE_LLM_TIERS``), warm-started
    from the decisions and outcomes in the store; a run sent to a tier asks
    that tier's model for its plan and its tools' completions. ``experiment``
    splits goals between planners; ``policies`` (on with learning) holds each
    project's quality thresholds.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        store: ExecutionStore | None = _DEFAULT_STORE,
        planner: Planner | None = None,
        config: OrchestratorConfig | None = None,
        *,
        llm: ChatLLM | None = _LLM_FROM_ENV,
        learning: LearningLoop | None = _LEARNING_FROM_CONFIG,
        router: Router | None = _ROUTER_FROM_TIERS,
        experiment: Experiment | None = None,
        policies: QualityPolicies | None = _POLICIES_FROM_CONFIG,
    ) -> None:
        self.registry = registry
        self.config = config or OrchestratorConfig()
        self.llm: ChatLLM | None = ChatLLM.from_env() if llm is _LLM_FROM_ENV else llm
        if self.llm is not None:
            register_llm_tools(registry, self.llm)
        self._owns_store = store is _DEFAULT_STORE
        self.store: ExecutionStore | None = ExecutionStore() if self._owns_store else store
        self.state = StateManager(self.store, default_ttl=self.config.state_ttl)
        self._apply_saved_tool_states()
        if learning is _LEARNING_FROM_CONFIG:
            learning = LearningLoop(registry, state=self.state) if self.config.learning else None
        elif learning is not None and learning.state is None:
            learning.attach(self.state)  # health transitions are kept with the rest
        self.learning = learning
        self.router: Router | None = (
            self._router_for_tiers() if router is _ROUTER_FROM_TIERS else router
        )
        self.experiment = experiment
        # Arms named by planner (``"dendrite"``, ``"semantic"``, …) get this orchestrator's
        # ranker and plan memory, as any planner asked for by name does: an experiment
        # compares planners, and must not compare them with learning switched off.
        self._arm_planners: dict[str, Planner] = (
            {
                arm: self.make_planner(given) if isinstance(given, str) else given
                for arm, given in experiment.arms.items()
            }
            if experiment is not None
            else {}
        )
        self.policies: QualityPolicies | None = (
            (QualityPolicies(self.state) if self.config.learning else None)
            if policies is _POLICIES_FROM_CONFIG
            else policies
        )
        if self.learning is not None and self.store is not None and self.config.warm_start:
            try:
                self.learning.warm_start(self.store, self.config.warm_start)
            except Exception as error:
                log.warning(
                    "learning could not read the history; starting cold: %s",
                    error,
                    exc_info=worth_a_traceback(error),
                )
        self.planner: Planner = planner or DendritePlanner(
            llm=self.llm,
            ranker=self.learning.ranker if self.learning else None,
            memory=self.learning.memory if self.learning else None,
        )
        self._recorder = _StoreRecorder(self.store) if self.store is not None else None
        self.engine = ExecutionEngine(
            registry,
            max_parallel_steps=self.config.max_parallel_steps,
            default_timeout=self.config.default_timeout,
            retry=self.config.retry,
            recorder=self._recorder,
            order_fallbacks=self.learning.ranker.order if self.learning else None,
            admit=self.learning.health.admit if self.learning else None,
        )
        self._traces: OrderedDict[str, ExecutionResult] = OrderedDict()
        self._history: dict[str, tuple[float, tuple[int, int] | None]] = {}
        self._record_failures = 0
        self._closed = False
        # close() cancels the runs in flight (their planning, repairs and steps), so that
        # they are recorded as cancelled rather than failing on a stopped thread pool as if
        # their tools had failed, and waits for them to be recorded before it closes the store.
        self._runs = RunsInFlight()

    def _router_for_tiers(self) -> Router | None:
        """A router over the model's tiers, which has learnt what the store remembers."""
        if self.llm is None or len(self.llm.config.tiers) < 2 or not self.config.learning:
            return None
        config = self.llm.config
        router = Router(
            [tier.name for tier in config.tiers],
            costs={tier.name: tier.cost for tier in config.tiers},
            cost_weight=config.cost_weight,
            store=self.store,
            # Outcomes and late ratings count by their recency, as the ranker's and plan
            # memory's do: a rating of last month's run moves the router half as much.
            half_life=self.learning.feedback_half_life if self.learning else None,
        )
        if self.store is not None and self.config.warm_start:
            try:
                router.learn_from_store(limit=self.config.warm_start)
            except Exception as error:
                log.warning(
                    "the router could not read its history; starting cold: %s",
                    error,
                    exc_info=worth_a_traceback(error),
                )
        return router

    def make_planner(self, name: str, strategy: Strategy | str | None = None) -> Planner:
        """A planner by name (``dendrite``, ``semantic``, ``template``, ``llm``, ``single``),
        wired to this orchestrator's model and learning loop as its own planner is.

        Choosing another planner or strategy for one run must not switch learning
        off: every planner that picks tools by retrieval has them reordered by the
        ranker, and the default planner also reuses past plans from plan memory.
        """
        ranker = self.learning.ranker if self.learning else None
        if name == "dendrite":
            return DendritePlanner(
                llm=self.llm,
                strategy=strategy or Strategy.ADAPTIVE,
                ranker=ranker,
                memory=self.learning.memory if self.learning else None,
            )
        if strategy is not None:
            raise ValueError(f"a strategy applies to the dendrite planner only, not {name!r}")
        retrievers = RetrieverCache(None, ranker)
        if name == "semantic":
            return SemanticPlanner(retrievers=retrievers)
        if name == "template":
            return TemplatePlanner(retrievers=retrievers)
        if name == "single":
            return SingleToolPlanner()
        if name == "llm":
            if self.llm is None:
                raise ValueError(
                    "the llm planner needs a model: set DENDRITE_LLM_BASE_URL and "
                    "DENDRITE_LLM_MODEL"
                )
            return LLMPlanner(self.llm, retrievers=retrievers)
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")

    # -- tool states ---------------------------------------------------------

    def _apply_saved_tool_states(self) -> None:
        """Tools disabled, quarantined or promoted by an earlier process stay so in this one."""
        self._tool_states_seen: dict[str, Any] = {}
        self._tool_states_read_at = time.monotonic()
        self._follow(self.state.get("global", TOOL_STATES_KEY, {}), at_start=True)
        self._apply_promotions(self.state.get("global", LIFECYCLE_KEY, {}))

    def _apply_promotions(self, stages: Any) -> None:
        for name, entry in stages.items() if isinstance(stages, dict) else ():
            if isinstance(entry, dict) and entry.get("stage") == "promoted":
                apply_promotion(self, name)

    def set_tool_status(
        self, name: str, status: ToolStatus | str, reason: str | None = None
    ) -> ToolState:
        """Enable, disable or quarantine a tool here and for every later process on this store.

        A tool this process did not register but whose state is saved (another process's
        tool that the lifecycle job archived, say) is changed in the saved states, which
        the processes that register it read at start.
        """
        wanted = ToolStatus(status)
        if wanted is ToolStatus.QUARANTINED and not reason:
            raise ValueError(f"quarantining {name!r} needs a reason")
        kept = None if wanted is ToolStatus.ENABLED else reason
        if name in self.registry:
            state = self.registry.set_state(name, wanted, kept)
        elif name in (saved := self._saved_tool_names()):
            state = ToolState(wanted, kept)
        else:
            raise UnknownToolError(name, [*(t.name for t in self.registry), *saved])
        if wanted is ToolStatus.ENABLED:
            if self.learning is not None:
                self.learning.health.reset(name, reason or "enabled by hand")  # here and later
            reopen(self.state, name, state.since)
        save_tool_state(self.state, name, state.status.value, state.reason, state.since)
        self._tool_states_seen[name] = state.since.isoformat()  # this process's own change
        return state

    def _left_out(self, plan: Plan) -> dict[str, str]:
        """The plan's reasons, each step's with the stand-ins for its tool (declared
        alternatives, either way) that could not be chosen because they are unavailable:
        a quarantine that kept a tool out of the plan is otherwise nowhere in the trace."""
        given = plan.metadata.get("why")
        # A hand-written plan's metadata is the caller's: "why" counts only as reasons by step.
        why = {str(k): str(v) for k, v in given.items()} if isinstance(given, Mapping) else {}
        # Only registered tools that are unavailable can have been left out: none, mostly.
        unavailable = sorted((t for t in self.registry if not t.available), key=lambda t: t.name)
        for step in plan.steps if unavailable else ():
            tool = self.registry.find(step.tool)
            declared = set(tool.alternatives if tool else ())
            notes = []
            for other in unavailable:
                stands_in = other.name in declared or step.tool in other.alternatives
                if stands_in and other.name not in (step.tool, *step.fallbacks):
                    try:
                        self.registry.require_available(other.name)
                    except ToolError as error:
                        notes.append(str(error))
            if notes and step.id in why:
                why[step.id] += f"; left out: {'; '.join(notes)}"
        return why

    def _follow(self, saved: Any, *, at_start: bool = False) -> None:
        """Apply the saved tool states this process has not applied yet (by their time)."""
        for name, entry in saved.items() if isinstance(saved, dict) else ():
            if name not in self.registry or not isinstance(entry, dict):
                continue
            if self._tool_states_seen.get(name) == entry.get("since"):
                continue
            self._tool_states_seen[name] = entry.get("since")
            status = entry.get("status")
            if status in ("disabled", "quarantined"):
                self.registry.set_state(name, ToolStatus(status), entry.get("reason"))
            elif status == "enabled" and not at_start:  # at start, a tool is enabled anyway
                self.registry.set_state(name, ToolStatus.ENABLED, None)
                if self.learning is not None:
                    self.learning.health.reset(name, "enabled by another process")

    async def follow_saved_tool_states(self) -> None:
        """Take up, every ``TOOL_STATES_REFRESH`` seconds, the tool states another process
        saved (``dendrite tools disable`` beside a running server, a lifecycle job run from
        the command line), and its promotions: read only at start, they waited for a
        restart. Read in a thread: a slow store must not stall the event loop. Each run
        calls it, and so do the API's tool listing, status and metrics, which showed the
        old states until the server ran a goal."""
        now = time.monotonic()
        if now - self._tool_states_read_at < TOOL_STATES_REFRESH:
            return
        self._tool_states_read_at = now
        states, stages = await asyncio.to_thread(
            lambda: (
                self.state.reread("global", TOOL_STATES_KEY, {}),
                self.state.reread("global", LIFECYCLE_KEY, {}),
            )
        )
        self._follow(states)
        self._apply_promotions(stages)

    def _saved_tool_names(self) -> set[str]:
        """Tools with a state, lifecycle stage or health transition saved by any process, as
        the store has them: an application's tool that only the health monitor quarantined
        was an "unknown tool" to ``dendrite tools enable``, and stayed quarantined."""
        names: set[str] = set()
        for key in (TOOL_STATES_KEY, LIFECYCLE_KEY):
            table = self.state.reread("global", key, {})
            names.update(table if isinstance(table, dict) else ())
        health_log = self.state.reread("global", HEALTH_LOG_KEY, [])
        for entry in health_log if isinstance(health_log, list) else ():
            if isinstance(entry, dict) and isinstance(entry.get("tool"), str):
                names.add(entry["tool"])
        return names

    # -- lifecycle -----------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Cancel the runs in flight (their planning and their steps), stop the tool threads,
        wait up to ``timeout`` seconds for the cancelled runs to be recorded, then drain and
        close the store if this orchestrator made it. A cancelled run is recorded as
        cancelled, and its caller gets :class:`OrchestratorClosedError`.

        Runs on the event loop that calls ``close()``, or on a loop that has stopped, cannot
        be recorded while it waits here: they are recorded when their loop runs them again,
        into the journal if the store has closed (and into the database at the next start).
        ``aclose()`` (and ``async with``) waits for the first kind too. Called by a sync
        tool, it waits for the tool's own run as for any other: cancelled, a run ends
        without waiting for its tools' threads.
        """
        if self._stop_runs():
            self._finish_closing(time.monotonic() + timeout)

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """:meth:`close`, awaiting the runs on the running event loop as well as the others',
        all within ``timeout``.

        Awaited by an async tool of one of this orchestrator's runs, it returns at once and
        the closing goes on in a thread of its own: the tool's run, cancelled by it, would
        cancel the wait (the store stayed open), and it can be recorded only once the tool
        has returned. Cancelled while it waits, it leaves the rest to such a thread too.
        """
        if not self._stop_runs():
            return
        deadline = time.monotonic() + timeout
        frame = _current.get()
        if frame is not None and self._runs in frame.owners:
            self._finish_closing_apart(deadline)
            return
        try:
            await self._runs.wait_here(deadline)
        except asyncio.CancelledError:
            self._finish_closing_apart(deadline)
            raise
        await asyncio.to_thread(self._finish_closing, deadline)

    def _stop_runs(self) -> bool:
        """Refuse new runs, cancel those in flight and stop the tool threads; False if this
        orchestrator was closed already."""
        if self._closed:
            return False
        self._closed = True
        self._runs.cancel()
        self.engine.close()
        return True

    def _finish_closing_apart(self, deadline: float) -> None:
        threading.Thread(
            target=self._finish_closing, args=(deadline,), name="dendrite-close"
        ).start()

    def _finish_closing(self, deadline: float) -> None:
        if not self._runs.wait_elsewhere(deadline):
            log.warning("runs still in flight after close(); they are recorded when they end")
        if self.learning is not None:
            self.learning.write_log()
        if self._owns_store and self.store is not None:
            self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Orchestrator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- running -------------------------------------------------------------

    async def run(
        self,
        goal_or_plan: str | Plan,
        session_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        planner: Planner | None = None,
    ) -> ExecutionResult:
        """Plan (unless given a plan), validate, execute and record one goal.

        ``planner`` plans this goal instead of the orchestrator's own (and of an
        experiment's arms); it plans inside the run, so under the run's route.
        Raises :class:`PlanningError` or :class:`PlanValidationError` when no
        runnable plan exists (the failed attempt is recorded all the same);
        a failing step does not raise: it is in the result.
        """
        return await self._run(goal_or_plan, session_id, context, emit=None, planner=planner)

    def process(
        self,
        goal_or_plan: str | Plan,
        session_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        planner: Planner | None = None,
    ) -> ExecutionResult:
        """Synchronous :meth:`run`, for scripts and for sync tools that start nested runs.

        The run starts outside the handler of the "no running event loop" error: inside
        it, every exception of the run (the planner's, an async tool's) would be chained to
        that error, and each traceback the caller sees would begin with it.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "Orchestrator.process() was called inside a running event loop; use `await run()`"
            )
        return asyncio.run(self.run(goal_or_plan, session_id, context, planner=planner))

    async def stream(
        self,
        goal_or_plan: str | Plan,
        session_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        *,
        planner: Planner | None = None,
    ) -> AsyncIterator[Event]:
        """The run's events as they happen, ending with ``final_answer``.

        Leaving the loop early cancels the run (recorded as cancelled).
        """
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        task = asyncio.create_task(
            self._run(goal_or_plan, session_id, context, emit=queue.put_nowait, planner=planner)
        )

        def surface_failure(done: asyncio.Task[ExecutionResult]) -> None:
            if not done.cancelled() and done.exception() is not None:
                queue.put_nowait(done.exception())  # type: ignore[arg-type]

        task.add_done_callback(surface_failure)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if item.type is EventType.FINAL_ANSWER:
                    break
            await task
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _run(
        self,
        goal_or_plan: str | Plan,
        session_id: str | None,
        context: Mapping[str, Any] | None,
        emit: Any,
        planner: Planner | None = None,
    ) -> ExecutionResult:
        with self._runs.run():  # before the check: a close() in between waits for it
            if self._closed:
                raise OrchestratorClosedError("this Orchestrator is closed")
            return await self._run_recorded(goal_or_plan, session_id, context, emit, planner)

    async def _run_recorded(
        self,
        goal_or_plan: str | Plan,
        session_id: str | None,
        context: Mapping[str, Any] | None,
        emit: Any,
        planner: Planner | None,
    ) -> ExecutionResult:
        await self.follow_saved_tool_states()
        parent = _current.get()
        depth = parent.depth + 1 if parent else 0
        if depth > self.config.max_depth:
            raise RecursionError(
                f"run nesting is {depth} deep, more than max_depth={self.config.max_depth}"
            )
        context = dict(context or {})
        _check_labels(session_id, context.get("project"))
        execution_id = new_id()
        started_at = datetime.now(UTC)
        started = time.perf_counter()
        goal = goal_or_plan.goal if isinstance(goal_or_plan, Plan) else str(goal_or_plan)
        project = context.get("project") or self.config.project
        decisions = _Decisions(
            project=project if isinstance(project, str) else None, planner=planner
        )
        try:
            await self._decide(
                decisions, goal_or_plan, goal, execution_id, session_id, context, depth
            )
        except asyncio.CancelledError as cancelled:
            # Cancelled while the router, the policy or the experiment decided, the run is
            # recorded as one cancelled while planning: else its routing decision waits for an
            # outcome that never comes, and its experiment assignment names no run.
            self._record_unplanned(
                cancelled, goal_or_plan, goal, execution_id, session_id, parent, depth,
                decisions, started_at, started,
            )  # fmt: skip
            raise
        route = decisions.choice.option if decisions.choice else (parent.route if parent else None)
        scope = contextlib.ExitStack()
        owners = (parent.owners if parent else frozenset()) | {self._runs}
        scope.callback(_current.reset, _current.set(_Frame(execution_id, depth, route, owners)))
        choice = decisions.choice
        if choice is not None and self._is_tier(choice):
            # The run's LLM calls ask the chosen tier's model.
            scope.enter_context(llm_tier(choice.option))
            decisions.tier = choice.option
        decisions.model = self.llm.model if self.llm is not None else None  # nested: the parent's
        decisions.usage = scope.enter_context(llm_usage())
        with scope:
            return await self._run_framed(
                goal_or_plan, goal, execution_id, session_id, context, emit,
                parent, depth, decisions, started_at, started,
            )  # fmt: skip

    async def _run_framed(
        self,
        goal_or_plan: str | Plan,
        goal: str,
        execution_id: str,
        session_id: str | None,
        context: dict[str, Any],
        emit: Any,
        parent: _Frame | None,
        depth: int,
        decisions: _Decisions,
        started_at: datetime,
        started: float,
    ) -> ExecutionResult:
        """The run inside its frame, which the caller leaves however this ends."""
        if self.learning is not None:
            self.learning.before_run(log_now=False)
        try:
            await self._write_health_log()
            plan = await self._plan(goal_or_plan, context, decisions)
        except BaseException as error:
            self._record_unplanned(
                error, goal_or_plan, goal, execution_id, session_id, parent, depth,
                decisions, started_at, started,
            )  # fmt: skip
            if (closed := self._closed_under(error, execution_id)) is not None:
                raise closed from None
            raise
        # Read now: the tools unavailable when the plan was made are what kept stand-ins out
        # of it. Read when the run ends, a tool quarantined meanwhile (by a run beside this
        # one, or by hand) would be named as left out of a step it may have answered.
        left_out = self._left_out(plan)
        if emit:
            emit(
                Event(
                    EventType.PLAN_CREATED,
                    execution_id,
                    data={"plan": _plan_json(plan), "parent_id": _id(parent)},
                )
            )
        steps: dict[str, StepResult] = {}
        # Failed steps that a repair renamed or never reached again: their attempts happened.
        superseded: dict[str, StepResult] = {}
        replans: list[dict[str, Any]] = []
        history: dict[str, tuple[int, int]] = {}

        async def execute(
            plan: Plan, completed: Mapping[str, StepResult] | None = None
        ) -> RunOutcome:
            steps.clear()
            return await self._cancellable(
                self.engine.execute(
                    plan,
                    execution_id=execution_id,
                    session_id=session_id,
                    context=context,
                    emit=emit,
                    state_for=lambda step_id: StateView(
                        self.state,
                        session_id=session_id,
                        execution_id=execution_id,
                        step_id=step_id,
                    ),
                    history=history,
                    results=steps,
                    completed=completed,
                )
            )

        try:
            history = await self._tool_history(plan)
            outcome = await execute(plan)
            # A plan the caller gave runs as written: its steps' fallbacks and its tools'
            # declared alternatives apply, but no tool it does not name stands in for one
            # that failed ("refund_card" looks like "charge_card" and takes its arguments).
            # Told by what the caller passed, not by the plan's planner field: a custom
            # planner's plans keep the default, and a plan re-posted from history names its
            # first planner.
            max_replans = (
                self.config.max_replans
                if (decisions.policy is None or decisions.policy.replan)
                and not isinstance(goal_or_plan, Plan)
                else 0
            )
            while not outcome.success and len(replans) < max_replans:
                repair = await self._replan(
                    decisions.planner or self.planner, plan, outcome, _planning(context, decisions)
                )
                if repair is None:
                    break
                plan, note = repair
                left_out = self._left_out(plan)
                replans.append(note)
                if emit:
                    emit(Event(EventType.REPLANNED, execution_id, note["step"], note))
                earlier = dict(outcome.steps)  # execute() empties the dict it fills
                outcome = await execute(plan, {k: r for k, r in earlier.items() if r.ok})
                for step_id, before in earlier.items():
                    result = outcome.steps.get(step_id)
                    if result is None:
                        superseded[step_id] = before
                    elif before is not result:
                        result.attempts[:0] = before.attempts  # the trace keeps the first round
        except (asyncio.CancelledError, Exception) as error:
            # Cancelled, or a bug (the engine's, a planner's): the run is recorded all the same.
            cancelled = isinstance(error, asyncio.CancelledError)
            self._finish(
                execution_id,
                plan,
                None,
                [*superseded.values(), *steps.values()],
                started_at,
                started,
                session_id,
                parent,
                depth,
                decisions,
                left_out,
                cancelled=cancelled,
                crashed=None if cancelled else error,
            )
            if (closed := self._closed_under(error, execution_id)) is not None:
                raise closed from None
            raise
        finally:
            self.state.clear_execution(execution_id)
        result = self._finish(
            execution_id,
            plan,
            outcome,
            [*superseded.values(), *outcome.steps.values()],
            started_at,
            started,
            session_id,
            parent,
            depth,
            decisions,
            left_out,
        )
        await self._write_health_log()
        if (
            self.policies is not None
            and self.store is not None
            and depth == 0
            and self.policies.ran(decisions.project)
        ):
            try:
                await asyncio.to_thread(self.policies.adapt, self.store, decisions.project)
            except Exception:
                log.warning("could not adapt the quality policy", exc_info=True)
        if emit:
            emit(
                Event(
                    EventType.FINAL_ANSWER,
                    execution_id,
                    data={
                        "output": result.output,
                        "success": result.success,
                        "confidence": result.confidence,
                        "error": result.error,
                        "duration_ms": result.duration_ms,
                    },
                )
            )
        return result

    def _closed_under(
        self, error: BaseException, execution_id: str
    ) -> OrchestratorClosedError | None:
        """What to raise instead of a run's cancellation by close(), not by its caller: say
        so, not a bare CancelledError."""
        task = asyncio.current_task()
        if (
            isinstance(error, asyncio.CancelledError)
            and self._closed
            and task is not None
            and not task.cancelling()
        ):
            return OrchestratorClosedError(
                f"the orchestrator was closed while run {execution_id} was in flight; "
                "it is recorded as cancelled"
            )
        return None

    async def _write_health_log(self) -> None:
        """Write the health transitions of the run from a thread: a transaction on the
        store's health log (another process's, a slow database) would stall the event loop,
        and every run on it, for as long as it takes. A run that ends by an exception
        leaves them to the next run, or to ``close()``."""
        if self.learning is not None and self.learning.log_pending:
            await asyncio.to_thread(self.learning.write_log)

    def _record_unplanned(
        self,
        error: BaseException,
        goal_or_plan: str | Plan,
        goal: str,
        execution_id: str,
        session_id: str | None,
        parent: _Frame | None,
        depth: int,
        decisions: _Decisions,
        started_at: datetime,
        started: float,
    ) -> None:
        """Record a run that ended before it had a plan to run, for the caller to raise.

        The planner is the caller's code: its exception's message may fail to print, and
        that must neither lose the record nor replace the exception the caller gets.
        KeyboardInterrupt and SystemExit leave no record, only to be passed on.
        """
        if isinstance(error, asyncio.CancelledError):
            status, error_type, text = (
                ExecutionStatus.CANCELLED, ErrorType.CANCELLED, "the run was cancelled",
            )  # fmt: skip
        elif isinstance(error, PlanningError | PlanValidationError):
            status, error_type, text = ExecutionStatus.FAILED, ErrorType.VALIDATION, str(error)
            error.execution_id = execution_id  # so the caller can point at the record
        elif isinstance(error, Exception):
            status, error_type = ExecutionStatus.FAILED, ErrorType.infer(error)
            text = f"the planner failed: {described(error)}"
        else:
            return
        self._record_execution(
            execution_id=execution_id,
            goal=goal,
            success=False,
            status=status,
            error=text,
            error_type=error_type,
            started_at=started_at,
            duration_ms=(time.perf_counter() - started) * 1000,
            session_id=session_id,
            parent=parent,
            depth=depth,
            decisions=decisions,
            metadata={
                "planner": planner_name(decisions.planner or self.planner)
                if not isinstance(goal_or_plan, Plan)
                else goal_or_plan.planner,
                "strategy": _strategy_of(decisions.planner or self.planner),
                "problems": [str(p) for p in getattr(error, "problems", [])],
                "why": decisions.why(),
            },
        )
        self._learn_route(
            execution_id, decisions, success=False, cancelled=status is ExecutionStatus.CANCELLED
        )

    async def _replan(
        self, planner: Planner, plan: Plan, outcome: RunOutcome, context: Mapping[str, Any]
    ) -> tuple[Plan, dict[str, Any]] | None:
        """A validated repair of ``plan`` from the planner that made it (the caller's or the
        experiment arm's, not the orchestrator's own), or None if it has none."""
        replan = getattr(planner, "replan", None)
        failed = next(
            (
                r
                for r in outcome.steps.values()
                if r.status is StepStatus.FAILED and not plan.step(r.step_id).continue_on_error
            ),
            None,
        )
        if replan is None or failed is None:
            return None
        try:
            repaired = await self._cancellable(
                replan(plan.goal, plan, failed.step_id, failed.error or "", self.registry, context)
            )
        except PlanningError as error:
            log.info("no repair for %s: %s", failed.step_id, error)
            return None
        if repaired is None or validate(repaired, self.registry):
            return None
        note = {
            "step": failed.step_id,
            "error": failed.error,
            "failed_tool": failed.tool,
            "planner": repaired.planner,
            "new_tools": sorted({s.tool for s in repaired.steps} - {s.tool for s in plan.steps}),
        }
        repaired.metadata["replans"] = [*_replans(plan.metadata), note]
        if "remembered_from" in plan.metadata:  # learning judges the plan memory gave
            repaired.metadata.setdefault("remembered_from", plan.metadata["remembered_from"])
        return repaired, note

    async def _decide(
        self,
        decisions: _Decisions,
        goal_or_plan: str | Plan,
        goal: str,
        execution_id: str,
        session_id: str | None,
        context: Mapping[str, Any],
        depth: int,
    ) -> None:
        """The policy, route and experiment arm of a run, in ``decisions`` (the caller's, so
        that a run cancelled half-way keeps what was decided); a failing component is skipped.

        A planner asked for by the caller wins over an experiment, which then
        assigns no arm: the arm would be recorded but not run."""
        planner = decisions.planner
        if self.policies is not None:
            try:  # from memory, but for a read of the store every refresh_seconds
                get, project = self.policies.get, decisions.project
                fresh = self.policies.fresh
                decisions.policy = get(project) if fresh else await asyncio.to_thread(get, project)
            except Exception as error:
                log.warning(
                    "quality policy unavailable; using defaults: %s",
                    error,
                    exc_info=worth_a_traceback(error),
                )
        if self.router is not None and depth == 0:
            features = TaskFeatures(
                text=goal,
                task_type=context.get("task_type") or classify(goal).intent.value,
                project=decisions.project,
                complexity=context.get("complexity"),
            )
            choosing = asyncio.ensure_future(
                asyncio.to_thread(self.router.choose, features, execution_id)
            )
            try:
                decisions.choice = await asyncio.shield(choosing)
            except asyncio.CancelledError:
                # Its thread decides all the same: the decision is waited for, so that the
                # caller can withdraw it, not left pending for an outcome that never comes.
                with contextlib.suppress(Exception):
                    decisions.choice = await choosing
                raise
            except Exception:
                log.warning("the router could not decide; running unrouted", exc_info=True)
        # A run a tool starts inside another is part of the goal the arm was assigned, not
        # another unit of the experiment: counted apart, it added runs the report compared.
        if (
            self.experiment is not None
            and planner is None
            and depth == 0
            and not isinstance(goal_or_plan, Plan)
        ):
            unit = self.experiment.unit_of(goal, session_id, execution_id)
            decisions.arm = self.experiment.assign(unit)
            decisions.unit = unit.split(":", 1)[0] if ":" in unit else "execution"
            decisions.planner = self._arm_planners[decisions.arm]
            if self.store is not None:
                try:
                    await asyncio.to_thread(
                        self.store.store_assignment,
                        self.experiment.name,
                        execution_id,
                        decisions.arm,
                        unit,
                    )
                except Exception:
                    log.warning("could not record the experiment assignment", exc_info=True)

    def _is_tier(self, choice: RoutingChoice) -> bool:
        """The model-tier router chose one of the model's tiers (rather than an option
        only tools read, through :func:`current_route`)."""
        router, llm = self.router, self.llm
        if router is None or llm is None or router.router_name != "model_tier":
            return False
        return llm.config.tier(choice.option) is not None

    @staticmethod
    def _route_cost(decisions: _Decisions) -> float | None:
        """What the run's model calls cost, as its record keeps it (``actual_cost``): the
        router learns the number it will read back from the store after a restart."""
        if decisions.usage is None or not decisions.usage.calls:
            return None
        return decisions.usage.summary()["cost"]

    def _learn_route(
        self, execution_id: str, decisions: _Decisions, *, success: bool, cancelled: bool = False
    ) -> None:
        """Teach the router the run's outcome, unless it says nothing about the option chosen:
        a cancelled run, or one sent to a model tier that never called the model. A run
        whose every call to the tier's model failed is a failure of the tier."""
        if self.router is None or decisions.choice is None:
            return
        if cancelled or decisions.route_unused:
            self.router.discard(execution_id)
            return
        # Learnt as a success, a tier whose model was down kept its runs.
        success = success and not decisions.route_down
        try:
            self.router.learn(execution_id, success, cost=self._route_cost(decisions))
        except (RouterError, LookupError, ValueError):
            log.warning("the router could not learn run %s", execution_id, exc_info=True)

    async def _cancellable(self, work: Awaitable[_T]) -> _T:
        """``await work`` (a plan, its repair, its execution) in a task that ``close()``
        cancels: a model taking its time to plan held close() for as long as it took."""
        task = asyncio.ensure_future(work)
        with self._runs.cancellable(task):
            if self._closed:  # closed while the run got here: none of it runs
                task.cancel()
            return await task

    async def _plan(
        self, goal_or_plan: str | Plan, context: Mapping[str, Any], decisions: _Decisions
    ) -> Plan:
        if isinstance(goal_or_plan, Plan):
            plan = goal_or_plan
        else:
            planner = decisions.planner or self.planner
            plan = await self._cancellable(
                planner.plan(goal_or_plan, self.registry, _planning(context, decisions))
            )
        problems = validate(plan, self.registry)
        if problems:
            raise PlanValidationError(problems)
        return plan

    async def _tool_history(self, plan: Plan) -> dict[str, tuple[int, int]]:
        """(total, successes) per tool from the store, cached for ``history_ttl`` seconds."""
        if self.store is None:
            return {}
        names = {s.tool for s in plan.steps} | {f for s in plan.steps for f in s.fallbacks}
        now = time.monotonic()
        stale = [
            n
            for n in names
            if n not in self._history or now - self._history[n][0] > self.config.history_ttl
        ]
        if stale:
            fetched = await asyncio.to_thread(self._fetch_history, stale)
            for name in stale:
                self._history[name] = (now, fetched.get(name))
        return {n: h for n in names if (h := self._history[n][1]) is not None}

    def _fetch_history(self, names: list[str]) -> dict[str, tuple[int, int]]:
        assert self.store is not None
        found: dict[str, tuple[int, int]] = {}
        try:
            for name in names:
                stats = self.store.get_tool_statistics(name)
                if stats is not None:
                    found[name] = (stats.total_executions, stats.successful_executions)
        except Exception as error:
            log.warning(
                "tool history unavailable; confidence uses reliability only: %s",
                error,
                exc_info=worth_a_traceback(error),
            )
        return found

    def _finish(
        self,
        execution_id: str,
        plan: Plan,
        outcome: RunOutcome | None,
        steps: list[StepResult],
        started_at: datetime,
        started: float,
        session_id: str | None,
        parent: _Frame | None,
        depth: int,
        decisions: _Decisions,
        left_out: dict[str, str],
        *,
        cancelled: bool = False,
        crashed: Exception | None = None,
    ) -> ExecutionResult:
        """The result of the run, recorded and learned from; ``left_out`` is the plan's
        reasons as ``_left_out`` gave them when the plan was made."""
        duration_ms = (time.perf_counter() - started) * 1000
        if crashed is not None:  # recorded as failed all the same, then raised to the caller
            status, success = ExecutionStatus.FAILED, False
            error = f"the run crashed: {described(crashed)}"
            error_type, output, confidence = ErrorType.UNKNOWN, None, 0.0
        elif outcome is None or cancelled:
            status, success = ExecutionStatus.CANCELLED, False
            error, error_type, output, confidence = (
                "the run was cancelled",
                ErrorType.CANCELLED,
                None,
                0.0,
            )
        else:
            success = outcome.success
            status = (
                ExecutionStatus.PARTIAL
                if outcome.partial
                else ExecutionStatus.SUCCEEDED
                if success
                else ExecutionStatus.FAILED
            )
            error, error_type = outcome.error, outcome.error_type
            output, confidence = outcome.output, outcome.confidence
        policy = decisions.policy
        needs_review = bool(policy is not None and success and confidence < policy.min_confidence)
        result = ExecutionResult(
            execution_id=execution_id,
            goal=plan.goal,
            success=success,
            status=status,
            output=output,
            confidence=confidence,
            steps=steps,
            error=error,
            error_type=error_type,
            duration_ms=duration_ms,
            started_at=started_at,
            plan=plan,
            session_id=session_id,
            parent_id=_id(parent),
            depth=depth,
            route=decisions.choice.option
            if decisions.choice and not decisions.route_unused
            else None,
            arm=decisions.arm,
            needs_review=needs_review,
            why={**left_out, **decisions.why()},
            llm_usage=decisions.usage.summary()
            if decisions.usage is not None and decisions.usage.calls
            else None,
        )
        why = result.why
        if self.store is not None:
            stored_output, _ = capped(output, self.config.max_output_bytes)
            self._record_execution(
                execution_id=execution_id,
                goal=plan.goal,
                classification=plan.metadata.get("classification"),
                success=success,
                status=status,
                error=error,
                error_type=error_type,
                started_at=started_at,
                duration_ms=duration_ms,
                session_id=session_id,
                parent=parent,
                depth=depth,
                confidence_score=confidence,
                decisions=decisions,
                metadata={
                    "planner": plan.planner,
                    "why": why,
                    "needs_review": needs_review,
                    "experiment": (
                        {"name": self.experiment.name, "arm": decisions.arm}
                        if self.experiment is not None and decisions.arm is not None
                        else None
                    ),
                    "remembered_goal": plan.metadata.get("remembered_goal"),
                    "strategy": plan.metadata.get("strategy"),
                    "llm": decisions.model,
                    "replans": _replans(plan.metadata),
                    "plan": _plan_json(plan, exclude_defaults=True),
                    "output": stored_output,
                    # Attempts are tool_executions rows already; the trace joins them back.
                    "steps": [s.summary(started_at) for s in steps],
                    "retrieval": (
                        retrieval_shares(self.learning.ranker, result) if self.learning else {}
                    ),
                },
            )
        if self.learning is not None and not cancelled:
            try:
                self.learning.after_run(result, log_now=False)  # the caller writes the health log
            except Exception:
                log.warning("learning could not take run %s", execution_id, exc_info=True)
        self._learn_route(execution_id, decisions, success=success, cancelled=cancelled)
        if self.config.keep_traces:
            self._traces[execution_id] = result
            while len(self._traces) > self.config.keep_traces:
                self._traces.popitem(last=False)
        return result

    def _record_execution(
        self,
        *,
        execution_id: str,
        goal: str,
        classification: Any = None,
        success: bool,
        status: ExecutionStatus,
        error: str | None,
        error_type: ErrorType | None,
        started_at: datetime,
        duration_ms: float,
        session_id: str | None,
        parent: _Frame | None,
        depth: int,
        metadata: dict[str, Any],
        decisions: _Decisions,
        confidence_score: float | None = None,
    ) -> None:
        if self.store is None:
            return
        intent, query_type = _labels(goal, classification)
        choice, columns, usage = decisions.choice, {}, decisions.usage
        if usage is not None and usage.calls:  # like its duration, its nested runs' included
            llm = usage.summary()
            metadata = {**metadata, "llm_usage": llm}
            columns = _usage_columns(usage.tokens, llm["cost"])
        if decisions.route_down:  # a restarted router learns what this one did
            metadata = {**metadata, ROUTE_DOWN: True}
        if decisions.route_unused:
            metadata = {**metadata, ROUTE_UNUSED: True}  # its tier did nothing: not a tier's run
        elif choice is not None and self.router is not None:
            columns |= {
                "routing_confidence": choice.confidence,
                "cost_estimate": choice.predicted_cost,
            }
            if self.router.router_name in ("model_tier", "pool"):  # the columns that exist
                columns[self.router.router_name] = choice.option
        try:
            self.store.store_execution(
                id=execution_id,
                goal_text=goal,
                intent=intent,
                query_type=query_type,
                success=success,
                status=status,
                error=error,
                error_type=error_type,
                started_at=started_at,
                duration_ms=duration_ms,
                session_id=session_id,
                parent_id=_id(parent),
                depth=depth,
                project=decisions.project,
                confidence_score=confidence_score,
                metadata=metadata,
                **columns,
            )
        except Exception:
            self._record_failures += 1
            log.warning("could not record execution %s", execution_id, exc_info=True)

    # -- feedback ------------------------------------------------------------

    def feedback(
        self,
        execution_id: str,
        rating: int | None = None,
        *,
        accepted: bool | None = None,
        comment: str | None = None,
        source: str = "human",
    ) -> FeedbackEffect:
        """Record a judgement of a run and learn from it at once.

        The store keeps the feedback (and raises ``UnknownExecutionError`` for a
        run it never recorded); the learning loop turns it into a reward for the
        tools that answered and for plan memory, and the router revises the
        outcome of the option it chose. Feedback recorded by another process is
        learned by the ``feedback`` job instead.
        """
        check_judgement(rating, accepted)
        if rating is None and accepted is None and not comment:
            # Checked here, in this method's words: the record's own check names its field,
            # feedback_text, which this method does not have.
            raise ValueError("feedback needs at least one of rating, accepted or comment")
        if self.store is None and execution_id not in self._traces:
            raise UnknownExecutionError(execution_id)  # nothing to judge, nowhere to keep it
        feedback_id = None
        if self.store is not None:
            feedback_id = self.store.store_feedback(
                execution_id,
                rating,
                comment,
                accepted=accepted,
                source=source,  # type: ignore[arg-type]
            )
        return self.learn_feedback(execution_id, rating, accepted, feedback_id=feedback_id)

    def learn_feedback(
        self,
        execution_id: str,
        rating: int | None,
        accepted: bool | None,
        *,
        feedback_id: str | None = None,
    ) -> FeedbackEffect:
        """Learn from feedback already recorded; what learned it is in the effect."""
        result = self._traces.get(execution_id)
        run: JudgedRun | None = None
        if result is not None:
            run = JudgedRun.of_result(result)
        elif self.store is not None:
            detail = self.store.get_execution(execution_id)
            run = JudgedRun.of_record(detail) if detail is not None else None
        if run is None:
            return FeedbackEffect(execution_id)
        effect = (
            self.learning.feedback(run, rating, accepted, feedback_id=feedback_id)
            if self.learning is not None
            else FeedbackEffect(execution_id)
        )
        routed = False
        judged = judged_rating(rating, accepted)
        if self.router is not None and judged is not None:
            try:
                self.router.feedback(execution_id, judged)
                routed = True
            except LookupError:
                pass  # the router did not decide this run (or forgot it)
        return dataclasses.replace(effect, router=routed, feedback_id=feedback_id)

    # -- inspection ----------------------------------------------------------

    def get_result(self, execution_id: str) -> ExecutionResult | None:
        """The full result of one of the last ``keep_traces`` runs of this orchestrator."""
        return self._traces.get(execution_id)

    def get_execution_trace(self, execution_id: str) -> ExecutionTrace | None:
        """The trace of a recent run from memory, else from the store; None if unknown."""
        result = self._traces.get(execution_id)
        if result is not None:
            return ExecutionTrace(
                execution_id=result.execution_id,
                goal=result.goal,
                success=result.success,
                status=result.status.value,
                confidence=result.confidence,
                duration_ms=result.duration_ms,
                started_at=result.started_at,
                planner=result.plan.planner,
                error=result.error,
                parent_id=result.parent_id,
                depth=result.depth,
                steps=[s.to_dict(include_output=False) for s in result.steps],
                replans=_replans(result.plan.metadata),
                why=dict(result.why),
                llm_usage=result.llm_usage,
            )
        return load_trace(self.store, execution_id) if self.store is not None else None

    def get_execution_summary(self, limit: int = 1000) -> dict[str, Any]:
        """Success, timing, confidence and error patterns over the last ``limit`` executions.

        From the store when there is one (so it covers every process that
        shares it), else from this orchestrator's recent runs.
        """
        records: list[tuple[Any, float | None]]
        if self.store is not None:
            records = [(r, r.confidence_score) for r in self.store.get_recent_executions(limit)]
            source = "store"
        else:
            records = [(r, r.confidence) for r in list(self._traces.values())[-limit:]]
            source = "memory"
        rows = [
            (
                r.success,
                r.duration_ms,
                confidence,
                r.error_type.value if r.error_type else None,
                r.error,
            )
            for r, confidence in records
        ]
        total = len(rows)
        durations = sorted(r[1] for r in rows)
        confidences = [r[2] for r in rows if r[2] is not None]
        errors = Counter(r[3] for r in rows if not r[0])
        messages = Counter((r[4] or "")[:120] for r in rows if not r[0])
        return {
            "source": source,
            "executions": total,
            "successful": sum(1 for r in rows if r[0]),
            "success_rate": (sum(1 for r in rows if r[0]) / total) if total else None,
            "avg_duration_ms": (sum(durations) / total) if total else None,
            "p95_duration_ms": durations[min(total - 1, int(0.95 * total))] if total else None,
            "avg_confidence": (sum(confidences) / len(confidences)) if confidences else None,
            "error_types": dict(errors.most_common()),
            "top_errors": [{"error": m, "count": c} for m, c in messages.most_common(5)],
            "recording_failures": self._record_failures
            + (self._recorder.failures if self._recorder else 0),
        }

    def get_state_summary(self) -> dict[str, Any]:
        return self.state.get_state_summary()


def _planning(context: Mapping[str, Any], decisions: _Decisions) -> Mapping[str, Any]:
    """The context a planner sees, plan or repair: a project whose policy turned the
    model off gets ``use_llm: False``, which the planners honour."""
    if decisions.policy is not None and not decisions.policy.use_llm:
        return {**context, "use_llm": False}
    return context


def _check_labels(session_id: object, project: object) -> None:
    """Refuse a session id or project the history cannot keep, before the run: after it,
    the store would refuse the execution's record and the run would be lost to history."""
    for name, value, limit in (
        ("session_id", session_id, MAX_SESSION_ID),
        ("project", project, MAX_PROJECT),
    ):
        if value is None:
            continue
        if type(value) is not str:  # dropped, the run would be unlabelled
            raise TypeError(f"{name} must be a string, got {type(value).__name__}")
        if len(value) > limit:
            raise ValueError(f"{name} is {len(value)} characters long; at most {limit} are kept")


def _plan_json(plan: Plan, **options: Any) -> Any:
    """The plan as JSON values: pydantic's own dump, or, where a hand-written plan's params
    or metadata hold what JSON cannot (an object, bytes that are not UTF-8), the store's
    fallbacks (three times slower on a plan of a thousand steps, so only then)."""
    try:
        return plan.model_dump(mode="json", **options)
    except ValueError:  # pydantic's serialization error, a UnicodeDecodeError
        return to_jsonable(plan.model_dump(**options))


def _usage_columns(tokens: int | None, cost: float | None) -> dict[str, Any]:
    """A run's model tokens and cost as its record's columns, each where a record can hold
    it (``metadata.llm_usage`` keeps them whole): a server's absurd usage counts must not
    cost the run its record."""
    columns: dict[str, Any] = {}
    if tokens is None or tokens <= MAX_TOKENS:
        columns["tokens_used"] = tokens
    if cost is None or cost <= MAX_COST:
        columns["actual_cost"] = cost
    return columns


def _replans(metadata: Mapping[str, Any]) -> list[Any]:
    """The repairs a plan went through: a list, unless a hand-written plan's metadata
    holds something else under the name (then Dendrite made none)."""
    replans = metadata.get("replans")
    return list(replans) if isinstance(replans, list) else []


def _labels(goal: str, given: Any) -> tuple[str, str]:
    """The intent and query type a run is recorded with: those of the plan's
    classification (a planner's) where it holds them as text a record keeps, else the
    goal's own. A hand-written plan's metadata is the caller's, and an odd one
    (``{"classification": 5}``) must not keep the run out of the history."""
    own: dict[str, object] | None = None
    labels = []
    for name in ("intent", "query_type"):
        value = given.get(name) if isinstance(given, Mapping) else None
        if not (isinstance(value, str) and len(value) <= MAX_LABEL):
            own = own or classify(goal).to_dict()
            value = own[name]
        labels.append(str(value))
    return labels[0], labels[1]


def _id(frame: _Frame | None) -> str | None:
    return frame.execution_id if frame else None


_STEP_FIELDS: dict[str, Any] = dict.fromkeys(
    [
        "error",
        "error_type",
        "started_at",
        "finished_at",
        "fallback_used",
        "skip_reason",
        "confidence",
    ]
)


def _recorded_step(
    summary: dict[str, Any], attempts: list[dict[str, Any]], origin: datetime | None
) -> dict[str, Any]:
    """A step as ``StepResult.to_dict`` gives it, from its recorded summary and attempt rows.

    Summaries (``StepResult.summary``) keep the step's timestamps as
    milliseconds after the run's start; older records kept ISO strings.
    """
    step = {**_STEP_FIELDS, "not_tried": [], **summary, "attempts": attempts}
    for name in ("started", "finished"):
        offset = step.pop(f"{name}_ms", None)
        if offset is not None and origin is not None:
            with contextlib.suppress(OverflowError):  # an offset past the calendar: unknown
                step[f"{name}_at"] = (origin + timedelta(milliseconds=offset)).isoformat()
    return step


def _is_step_summary(item: Any) -> bool:
    """Whether an entry of a record's ``metadata["steps"]`` is the orchestrator's summary
    of a step: a run recorded by something else may keep anything under that name."""
    return (
        isinstance(item, dict)
        and isinstance(item.get("step_id"), str)
        and all(
            isinstance(item.get(f"{name}_ms"), int | float | None)
            for name in ("started", "finished")
        )
    )


def load_trace(store: ExecutionStore, execution_id: str) -> ExecutionTrace | None:
    """The trace of a recorded execution: its steps with their attempts joined back in."""
    detail = store.get_execution(execution_id)
    if detail is None:
        return None
    attempts: dict[str | None, list[dict[str, Any]]] = {}
    for row in sorted(detail.steps, key=lambda a: (a.started_at, a.attempt)):
        attempts.setdefault(row.step_id, []).append(
            {
                "tool": row.tool_name,
                "number": row.attempt,
                "started_at": row.started_at.isoformat() if row.started_at else None,
                "duration_ms": row.duration_ms,
                "success": row.success,
                "error": row.error,
                "error_type": row.error_type.value if row.error_type else None,
                "fallback_of": row.fallback_of,
                "item": row.parameters.get(ITEM_KEY),
            }
        )
    recorded = detail.metadata.get("steps")
    if isinstance(recorded, list) and all(_is_step_summary(step) for step in recorded):
        steps = [
            _recorded_step(step, attempts.get(step.get("step_id"), []), detail.started_at)
            for step in recorded
        ]
    else:  # an execution recorded by something other than the orchestrator
        steps = [
            {
                "step_id": step_id,
                "tool": rows[-1]["tool"],
                "attempts": rows,
                "status": "succeeded" if rows[-1]["success"] else "failed",
            }
            for step_id, rows in attempts.items()
        ]
    return ExecutionTrace(
        execution_id=detail.id,
        goal=detail.goal_text,
        success=detail.success,
        status=str(detail.status),
        confidence=detail.confidence_score,
        duration_ms=detail.duration_ms,
        started_at=detail.started_at or datetime.now(UTC),
        planner=detail.metadata.get("planner"),
        error=detail.error,
        parent_id=detail.parent_id,
        depth=detail.depth,
        steps=steps,
        replans=_replans(detail.metadata),
        why=dict(detail.metadata.get("why") or {}),
        llm_usage=detail.metadata.get("llm_usage"),
    )
