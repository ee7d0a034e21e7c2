"""The learning loop: what every finished run teaches, and where it changes the next one.

After each run the loop feeds every attempt to the tool ranker and the health
monitor, and a successful plan to plan memory. Before the next run the health
monitor lets probes through; the planner asks plan memory first and orders
candidate tools with the ranker; the engine orders fallbacks by it. At start
the loop warms up from the store, so what one process learned is not lost
when it stops.

Feedback (a rating 1-5, accepted or rejected) arrives after the run, often
much later. It becomes a reward in [0, 1] that moves the ranker (the tools that
answered) and plan memory (the plan that ran, and the plan it was reused
from), weighted by how recent the run is: a judgement of yesterday's run says
more about today's tools than one of last month's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dendrite.learning._checks import check_number
from dendrite.learning.health import (
    HEALTH_LOG_KEY,
    HealthMonitor,
    HealthPolicy,
    Transition,
    transition_log,
)
from dendrite.learning.memory import PlanMemory
from dendrite.learning.ranker import ToolRanker
from dendrite.planning.plan import HAND_WRITTEN, Plan, parse_plan
from dendrite.state import FOREVER
from dendrite.telemetry import ErrorType, ExecutionStatus
from dendrite.tools import ToolRegistry

if TYPE_CHECKING:
    from dendrite.orchestrator import ExecutionResult
    from dendrite.state import StateManager
    from dendrite.store import ExecutionStore
    from dendrite.store.analytics import ExecutionDetail
    from dendrite.store.bookkeeping import AttemptOutcome
    from dendrite.telemetry.records import ExecutionRecord

log = logging.getLogger("dendrite.learning")

REUSED = "memory"
"""The planner of a plan memory gave: remembered again only once a repair changed it."""
CALLERS_ARGUMENTS = {HAND_WRITTEN, "single_tool"}
"""Planners whose plans take their arguments from the caller (a hand-written plan, the
single-tool planner's ``context["params"]``), not from the goal's words: remembered, they
would be reused for other callers' goals, which never said those arguments (one session's
account id looked up for another's "get account details")."""


def check_judgement(rating: object, accepted: object) -> None:
    """Refuse a rating that is not an integer 1-5, or an acceptance that is not a bool,
    before anything is recorded or learned ("5" and True are not ratings)."""
    if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):
        raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
    if accepted is not None and type(accepted) is not bool:
        raise ValueError(f"accepted must be true or false, got {accepted!r}")


def reward_of(rating: int | None, accepted: bool | None) -> float | None:
    """A judgement as a reward in [0, 1]: rating 1 is 0, 5 is 1; accepted 1, rejected 0.

    Both given: their mean. Neither (a comment alone): None, nothing to learn.
    """
    check_judgement(rating, accepted)
    parts = []
    if rating is not None:
        parts.append((rating - 1) / 4)
    if accepted is not None:
        parts.append(1.0 if accepted else 0.0)
    return sum(parts) / len(parts) if parts else None


@dataclass(frozen=True, slots=True)
class JudgedRun:
    """What feedback needs to know about the run it judges, from memory or the store."""

    execution_id: str
    goal: str
    finished_at: datetime
    answered: tuple[tuple[str, str, float | None], ...]
    """(the step's text, the tool that answered it, its retrieval share when the step was
    planned, if known) per successful step."""
    remembered_from: str | None = None

    @classmethod
    def of_result(cls, result: ExecutionResult) -> JudgedRun:
        texts = step_texts(result.plan, result.goal)
        return cls(
            execution_id=result.execution_id,
            goal=result.goal,
            finished_at=result.started_at + timedelta(milliseconds=result.duration_ms),
            answered=tuple(
                (texts.get(r.step_id, result.goal), r.tool, None) for r in result.steps if r.ok
            ),
            remembered_from=result.plan.metadata.get("remembered_from"),
        )

    @classmethod
    def of_record(cls, record: ExecutionRecord | ExecutionDetail) -> JudgedRun:
        plan = record.metadata.get("plan")
        described = {}
        if isinstance(plan, dict):
            described = {
                s.get("id"): s.get("description")
                for s in plan.get("steps", [])
                if isinstance(s, dict)
            }
        steps = record.metadata.get("steps")
        shares = recorded_shares(record.metadata)
        answered = tuple(
            (
                described.get(s.get("step_id")) or record.goal_text,
                s["tool"],
                shares.get((s.get("step_id"), s["tool"])),
            )
            for s in (steps if isinstance(steps, list) else [])
            if isinstance(s, dict) and s.get("status") == "succeeded" and s.get("tool")
        )
        started = record.started_at or datetime.now(UTC)
        remembered = plan.get("metadata", {}).get("remembered_from") if plan else None
        return cls(
            execution_id=record.id,
            goal=record.goal_text,
            finished_at=started + timedelta(milliseconds=record.duration_ms or 0.0),
            answered=answered,
            remembered_from=remembered,
        )


@dataclass(frozen=True, slots=True)
class FeedbackEffect:
    """What one judgement changed, for the caller and the trace."""

    execution_id: str
    reward: float | None = None
    """None: nothing to learn (no judgement, or this feedback was learned before)."""
    weight: float = 0.0
    tools: tuple[str, ...] = ()
    plans_judged: tuple[str, ...] = ()
    router: bool = False
    feedback_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "feedback_id": self.feedback_id,
            "reward": self.reward,
            "weight": round(self.weight, 4),
            "tools": list(self.tools),
            "plans_judged": list(self.plans_judged),
            "router": self.router,
        }


class LearningLoop:
    def __init__(
        self,
        registry: ToolRegistry,
        *,
        ranker: ToolRanker | None = None,
        memory: PlanMemory | None = None,
        health_policy: HealthPolicy | None = None,
        state: StateManager | None = None,
        clock: Callable[[], float] = time.monotonic,
        feedback_half_life: timedelta = timedelta(days=14),
        feedback_weight: float = 2.0,
    ) -> None:
        """``clock`` drives health cooldowns (a simulation passes its own).

        A judgement of a run that ended ``feedback_half_life`` ago counts half as
        much as one of a run just ended; a fresh, clear judgement (rating 1 or 5)
        counts as ``feedback_weight`` outcomes of each tool that answered.
        """
        if feedback_half_life <= timedelta(0):
            raise ValueError(f"feedback_half_life must be positive, got {feedback_half_life}")
        check_number("feedback_weight", feedback_weight)
        self.feedback_half_life = feedback_half_life
        self.feedback_weight = feedback_weight
        self._judged: OrderedDict[str, None] = OrderedDict()
        self._judged_lock = threading.Lock()
        self.registry = registry
        self.ranker = ranker or ToolRanker()
        self.memory = memory or PlanMemory()
        self.state: StateManager | None = None
        self._unlogged: deque[Transition] = deque()
        self._log_lock = threading.Lock()
        self._deferring = threading.local()
        self.health = HealthMonitor(
            registry, health_policy, on_transition=self._persist, clock=clock
        )
        if state is not None:
            self.attach(state)

    def attach(self, state: StateManager) -> None:
        """Keep health transitions in ``state``, and take up the quarantines it holds,
        which outlive the process that decided them."""
        self.state = state
        self.health.restore(state.get("global", HEALTH_LOG_KEY, []))

    def _persist(self, transition: Transition) -> None:
        """Queue ``transition`` for the store's health log; the monitor calls this holding
        its lock, which every tool call of every run asks for (``admit``).

        Within :meth:`before_run` and :meth:`after_run` the log is written once the lock is
        released: written here, a slow store (another process's transaction on the log) would
        hold every run's calls for as long. Any other transition (a monitor method called
        directly) is written at once: its caller reads the log as soon as the call returns.
        """
        if self.state is None:
            return
        self._unlogged.append(transition)  # under the monitor's lock: in decision order
        if not getattr(self._deferring, "active", False):
            self.write_log()

    @property
    def log_pending(self) -> bool:
        """Whether transitions wait for :meth:`write_log`."""
        return bool(self._unlogged)

    def write_log(self) -> None:
        """Write the transitions waiting for the store's health log, oldest first.

        A thread may write another's: the queue keeps the order they were decided in,
        which restarts read the log by (the last entry of a tool is its state).
        """
        with self._log_lock:
            while self._unlogged and self.state is not None:
                transition = self._unlogged.popleft()
                try:
                    self.state.update(
                        "global",
                        HEALTH_LOG_KEY,
                        lambda previous, moved=transition: transition_log(previous, moved),
                        ttl=FOREVER,
                    )
                except Exception:
                    log.warning("could not record a health transition", exc_info=True)

    @contextlib.contextmanager
    def _logged_after(self, log_now: bool) -> Iterator[None]:
        """Transitions made inside are queued, then written (``log_now``) or left waiting for
        :meth:`write_log`, so a caller on an event loop can write them from a thread."""
        self._deferring.active = True
        try:
            yield
        finally:
            self._deferring.active = False
            if log_now:
                self.write_log()

    def before_run(self, *, log_now: bool = True) -> None:
        """Let probes through; ``log_now=False`` leaves the transitions for :meth:`write_log`."""
        with self._logged_after(log_now):
            self.health.tick()

    def after_run(self, result: ExecutionResult, *, log_now: bool = True) -> None:
        """Learn from a finished run; ``log_now=False`` leaves the health transitions it
        causes for :meth:`write_log`."""
        with self._logged_after(log_now):
            self._take_outcomes(result)
        self._learn_plan(result.goal, result.plan, result.success, result.execution_id, result)

    def _take_outcomes(self, result: ExecutionResult) -> None:
        texts = step_texts(result.plan, result.goal)
        outcomes = []
        for step_result in result.steps:
            text = texts.get(step_result.step_id, result.goal)
            attempts = [a for a in step_result.attempts if a.error_type is not ErrorType.CANCELLED]
            # Input refused by every tool that tried it is the caller's fault, not the tools':
            # a validation error counts against a tool only where another one took the input.
            taken = {a.item for a in attempts if a.success}
            calls: dict[tuple[str, int | None], list[tuple[bool, datetime]]] = {}
            for attempt in attempts:
                outcomes.append((text, attempt.tool, attempt.success, attempt.duration_ms, None))
                if attempt.error_type is ErrorType.VALIDATION and attempt.item not in taken:
                    continue
                call = calls.setdefault((attempt.tool, attempt.item), [])
                call.append((attempt.success, attempt.started_at))
            for (tool, _), tries in calls.items():
                self.health.observe_call(tool, tries)
        self._observe_outcomes(outcomes)

    def _observe_outcomes(
        self, outcomes: Iterable[tuple[str, str, bool, float, float | None]]
    ) -> None:
        """Teach the ranker one run's attempts: (the step's text, the tool, success, duration,
        the tool's retrieval share when known). Repeats of one outcome for one text are one
        observation of their number (a for_each step's items), live and at warm start alike.
        """
        seen: Counter[tuple[str, str, bool]] = Counter()
        shares: dict[tuple[str, str, bool], float | None] = {}
        for text, tool, success, duration_ms, share in outcomes:
            seen[(text, tool, success)] += 1
            shares.setdefault((text, tool, success), share)
            if success:
                self.ranker.observe_latency(tool, duration_ms)
        for (text, tool, success), count in seen.items():
            self.ranker.observe(text, tool, success, count, retrieval=shares[(text, tool, success)])

    def _learn_plan(
        self,
        goal: str,
        plan: Plan,
        success: bool,
        execution_id: str,
        result: ExecutionResult | None = None,
    ) -> None:
        """Judge the remembered plan a run reused, and remember the plan of a run that worked.

        A reuse is judged by its first round: good when it succeeded without a repair.
        A repaired plan that then worked is remembered even when memory planned the first
        round, but never a plan with the caller's arguments (``CALLERS_ARGUMENTS``), repaired
        or not. ``result``, in this process, remembers the plan led by the tools that
        answered; a run read back from the store is remembered as it was recorded.
        """
        replanned = bool(plan.metadata.get("replans"))
        source = plan.metadata.get("remembered_from")
        if source:
            self.memory.judge(source, 1.0 if success and not replanned else 0.0)
        callers = plan.planner in CALLERS_ARGUMENTS
        if success and not callers and (replanned or plan.planner != REUSED):
            remembered = _as_answered(result) if result is not None else plan
            self.memory.remember(goal, remembered, execution_id)

    def recency(self, finished_at: datetime, now: datetime | None = None) -> float:
        """The weight of a judgement of a run that finished at ``finished_at``."""
        age = ((now or datetime.now(UTC)) - finished_at).total_seconds()
        return math.pow(0.5, max(age, 0.0) / self.feedback_half_life.total_seconds())

    def feedback(
        self,
        run: JudgedRun,
        rating: int | None = None,
        accepted: bool | None = None,
        *,
        feedback_id: str | None = None,
        now: datetime | None = None,
    ) -> FeedbackEffect:
        """Learn from a judgement of ``run``; a ``feedback_id`` seen before is not learned twice.

        Reward r in [0, 1] becomes the signal 2r - 1: a middling rating (3)
        teaches nothing, a rating of 1 counts against each tool that answered as
        a failure would, 5 as a success would. Plan memory stops reusing a plan
        judged more bad than good.
        """
        reward = reward_of(rating, accepted)
        weight = self.recency(run.finished_at, now)
        if feedback_id is not None:
            # Checked and marked at once: the API's request threads and the feedback job
            # may hand in the same judgement together, and it must teach only once.
            with self._judged_lock:
                if feedback_id in self._judged:
                    return FeedbackEffect(run.execution_id)
                self._judged[feedback_id] = None
                while len(self._judged) > 100_000:
                    self._judged.popitem(last=False)
        if reward is None:
            return FeedbackEffect(run.execution_id, weight=weight)
        signal = 2 * reward - 1
        strength = weight * abs(signal) * self.feedback_weight
        tools: list[str] = []
        if strength > 0:
            for text, tool, share in run.answered:
                self.ranker.observe(text, tool, signal > 0, weight=strength, retrieval=share)
                tools.append(tool)
        plans = tuple(
            p
            for p in dict.fromkeys([run.execution_id, run.remembered_from])
            if p and self.memory.judge(p, reward, weight)
        )
        return FeedbackEffect(run.execution_id, reward, weight, tuple(tools), plans)

    def warm_start(self, store: ExecutionStore, limit: int = 5_000) -> int:
        """Learn from the last ``limit`` recorded executions; returns how many were read."""
        records = store.get_recent_executions(limit)
        # A cancelled run taught the live loop nothing (the orchestrator does not hand it
        # over): learned here, its reuse of a remembered plan would veto that plan after a
        # restart, though the process that saw it go on reusing it.
        learned = [r for r in records if r.status != ExecutionStatus.CANCELLED]
        # Every attempt, as ``after_run`` learned them: a step's summary names only the
        # tool that answered, and a first choice that a fallback rescued would be trusted
        # again after a restart.
        attempts: dict[str, list[AttemptOutcome]] = {}
        for attempt in store.get_attempt_outcomes([r.id for r in learned]):
            attempts.setdefault(attempt.execution_id, []).append(attempt)
        for record in reversed(learned):
            plan_data = record.metadata.get("plan")
            if not isinstance(plan_data, dict):
                continue
            try:
                plan: Plan = parse_plan({**plan_data, "goal": record.goal_text})
            except ValueError:
                continue
            texts = step_texts(plan, record.goal_text)
            shares = recorded_shares(record.metadata)
            self._observe_outcomes(
                (
                    texts.get(a.step_id, record.goal_text),
                    a.tool_name,
                    a.success,
                    a.duration_ms,
                    shares.get((a.step_id, a.tool_name)),
                )
                for a in attempts.get(record.id, ())
                if a.error_type != ErrorType.CANCELLED.value
            )
            self._learn_plan(record.goal_text, plan, record.success, record.id)
        self._warm_feedback(store, records)
        return len(records)

    def _warm_feedback(self, store: ExecutionStore, records: list[ExecutionRecord]) -> None:
        """Learn the feedback given on ``records``, each judgement by its id, so the
        ``feedback`` job (which reads feedback rows too) does not learn it a second time."""
        by_id = {r.id: r for r in records}
        if not by_id:
            return
        since = min(r.started_at for r in records if r.started_at) - timedelta(microseconds=1)
        for row in store.iter_feedback(since):
            record = by_id.get(row.execution_id)
            if record is not None:
                run = JudgedRun.of_record(record)
                self.feedback(run, row.rating, row.accepted, feedback_id=row.id)


def step_texts(plan: Plan, goal: str) -> dict[str, str]:
    """What each step stands for when the ranker learns from it: its description, else the
    goal's text (the same key at run time, at warm start and for feedback)."""
    return {step.id: step.description or goal for step in plan.steps}


def retrieval_shares(ranker: ToolRanker, result: ExecutionResult) -> dict[str, dict[str, float]]:
    """Per step, the retrieval share of each tool it tried, as recorded with the run.

    A later process learning from the record (warm start, feedback given from
    the command line) needs them to learn what the process that ran it learned.
    """
    texts = step_texts(result.plan, result.goal)
    out: dict[str, dict[str, float]] = {}
    for step in result.steps:
        text = texts.get(step.step_id, result.goal)
        for tool in dict.fromkeys(a.tool for a in step.attempts):
            share = ranker.retrieval_share(text, tool)
            if share is not None:
                out.setdefault(step.step_id, {})[tool] = round(share, 6)
    return out


def recorded_shares(metadata: dict[str, Any]) -> dict[tuple[str, str], float]:
    """``retrieval_shares`` as read back from a record's metadata (absent in older records)."""
    found: dict[tuple[str, str], float] = {}
    data = metadata.get("retrieval")
    if isinstance(data, dict):
        for step_id, tools in data.items():
            if isinstance(tools, dict):
                for tool, share in tools.items():
                    if isinstance(share, int | float) and math.isfinite(share):
                        found[(step_id, tool)] = float(share)
    return found


def _as_answered(result: ExecutionResult) -> Plan:
    """The plan as it ended up working: each step led by the tool that answered it.

    Remembering the plan as first planned would replay a failing first choice on
    every reuse; the tools tried before stay as fallbacks.
    """
    answered = {r.step_id: r for r in result.steps if r.ok}
    steps = []
    for step in result.plan.steps:
        found = answered.get(step.id)
        if found is None or found.tool == step.tool:
            steps.append(step)
            continue
        tried = [a.tool for a in found.attempts]
        fallbacks = [
            n for n in dict.fromkeys([*tried, step.tool, *step.fallbacks]) if n != found.tool
        ]
        steps.append(step.model_copy(update={"tool": found.tool, "fallbacks": fallbacks}))
    return result.plan.model_copy(update={"steps": steps})
