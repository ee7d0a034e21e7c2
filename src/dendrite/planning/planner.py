"""Planners turn a goal into a :class:`Plan`.

The protocol is one coroutine so that an LLM-backed planner and an offline
one are interchangeable. :class:`SingleToolPlanner` is the trivial default:
it is honest about what it can do (one step, with a tool the goal names) and
refuses with the list of tools otherwise, rather than guessing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from dendrite.planning import references
from dendrite.planning.plan import Plan, Step
from dendrite.tools import ToolRegistry


class PlanningError(ValueError):
    """The planner could not make a plan for the goal.

    ``execution_id`` names the recorded attempt when the orchestrator ran it.
    """

    execution_id: str | None = None


@runtime_checkable
class Planner(Protocol):
    name: str

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan: ...


class SingleToolPlanner:
    """One step calling the tool whose name the goal mentions.

    ``context["params"]`` gives the arguments; a tool with exactly one required
    string parameter that is not given receives the goal's text after the
    tool's name (or the whole goal), so ``"word_count the quick brown fox"``
    works as typed. That text is the user's, never a reference (a ``${PRICE}`` in it
    stays as typed), and the step is ``step1`` whatever the tool is called: a tool's
    name need not be a valid step id (``item``, or longer than a step id may be).
    """

    name = "single_tool"

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan:
        text = goal.strip()
        if not text:
            raise PlanningError("the goal is empty")
        lowered = text.lower()
        matches = []
        for candidate in registry:
            if not candidate.available:
                continue
            for form in {candidate.name, candidate.name.replace("_", " ")}:
                found = re.search(rf"(?<!\w){re.escape(form.lower())}(?!\w)", lowered)
                if found:
                    matches.append((len(form), found.end(), candidate))
        if not matches:
            names = ", ".join(t.name for t in registry if t.available) or "none"
            raise PlanningError(
                f"no registered tool is named in the goal {goal!r} (available: {names}); "
                "pass a Plan, or configure a planner that can choose tools"
            )
        _, end, chosen = max(matches, key=lambda m: m[0])
        params = dict(context.get("params", {}))
        required_text = [
            name
            for name, prop in chosen.parameters_schema.get("properties", {}).items()
            if prop.get("type") == "string" and name in chosen.parameters_schema.get("required", [])
        ]
        if len(required_text) == 1 and required_text[0] not in params:
            rest = text[end:].strip(" :,-")
            params[required_text[0]] = references.literal(rest or text)
        return Plan(
            goal=goal,
            steps=[Step(id="step1", tool=chosen.name, params=params)],
            planner=self.name,
        )
