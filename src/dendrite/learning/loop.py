"""The learning loop: what every finished run teaches, and where it changes the next one.

After each run the loop feeds every attempt to the tool ranker and the health
monitor, and a successful plan to plan memory. Before the next run the health
monitor lets probes through; the planner asks plan memory first and orders
candidate tools with the ranker; the engine orders fallbacks by it. At start
the loop warms up from the store, so what one process learned is not lost
when it stops.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dendrite.learning.health import HEALTH_LOG_KEY, HealthMonitor, HealthPolicy, transition_log
from dendrite.learning.memory import PlanMemory
from dendrite.learning.ranker import ToolRanker
from dendrite.planning.plan import Plan, parse_plan
from dendrite.tools import ToolRegistry

if TYPE_CHECKING:
    from dendrite.orchestrator import ExecutionResult
    from dendrite.state import StateManager
    from dendrite.store import ExecutionStore

log = logging.getLogger("dendrite.learning")

NOT_REMEMBERED = {"memory", "explicit"}  # plans memory did not need to learn


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
    ) -> None:
        """``clock`` drives health cooldowns (a simulation passes its own)."""
        self.registry = registry
        self.ranker = ranker or ToolRanker()
        self.memory = memory or PlanMemory()
        self.state = state
        self.health = HealthMonitor(
            registry, health_policy, on_transition=self._persist, clock=clock
        )

    def _persist(self, transition: Any) -> None:
        if self.state is not None:
            previous = self.state.get("global", HEALTH_LOG_KEY, [])
            self.state.set("global", HEALTH_LOG_KEY, transition_log(previous, transition))

    def before_run(self) -> None:
        self.health.tick()

    def after_run(self, result: ExecutionResult) -> None:
        steps = {s.id: s for s in result.plan.steps}
        seen: Counter[tuple[str, str, bool]] = Counter()
        for step_result in result.steps:
            step = steps.get(step_result.step_id)
            text = (step.description if step is not None else "") or result.goal
            for attempt in step_result.attempts:
                if attempt.error_type is not None and attempt.error_type.value == "cancelled":
                    continue
                seen[(text, attempt.tool, attempt.success)] += 1
                self.health.observe(attempt.tool, attempt.success)
        for (text, tool, success), count in seen.items():
            self.ranker.observe(text, tool, success, count)
        if result.success and result.plan.planner not in NOT_REMEMBERED:
            self.memory.remember(result.goal, _as_answered(result), result.execution_id)

    def warm_start(self, store: ExecutionStore, limit: int = 5_000) -> int:
        """Learn from the last ``limit`` recorded executions; returns how many were read."""
        records = store.get_recent_executions(limit)
        for record in reversed(records):
            plan_data = record.metadata.get("plan")
            steps = record.metadata.get("steps")
            if not isinstance(plan_data, dict) or not isinstance(steps, list):
                continue
            try:
                plan: Plan = parse_plan({**plan_data, "goal": record.goal_text})
            except ValueError:
                continue
            described = {s.id: s.description for s in plan.steps}
            for step in steps:
                if step.get("status") in ("succeeded", "failed") and step.get("tool"):
                    text = described.get(step.get("step_id")) or record.goal_text
                    self.ranker.observe(text, step["tool"], step["status"] == "succeeded")
            if record.success and plan.planner not in NOT_REMEMBERED:
                self.memory.remember(record.goal_text, plan, record.id)
        return len(records)


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
