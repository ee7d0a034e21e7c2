"""Planning with a model: the goal and the best few tools in, a validated plan out.

The prompt carries only the top-k tools that retrieval ranks for the goal
(the whole catalogue would not fit, and would distract). The answer must
match a JSON schema; a plan that does not validate goes back to the model
with every problem listed, a bounded number of times, so a small local model
can still converge on a runnable plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dendrite.llm import ChatLLM, LLMError, LLMFormatError
from dendrite.planning.plan import Plan, PlanValidationError, parse_plan, validate
from dendrite.planning.planner import PlanningError
from dendrite.planning.semantic import RetrieverCache
from dendrite.retrieval import Embedder
from dendrite.tools import ToolRegistry

PLAN_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "steps": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
                    "tool": {"type": "string"},
                    "params": {"type": "object"},
                    "depends_on": {"type": "array", "items": {"type": "string"}},
                    "when": {"type": "string"},
                    "for_each": {"type": "string"},
                },
                "required": ["id", "tool", "params"],
            },
        },
        "output": {"type": "string"},
    },
    "required": ["steps"],
}

SYSTEM_PROMPT = """You plan tool calls for an orchestrator. Answer with one JSON object:
{"steps": [{"id": "...", "tool": "...", "params": {...}, "depends_on": [...]}], "output": "${step}"}
Rules:
- Use only the tools listed, with parameters from their JSON schemas.
- To use an earlier step's output write "${step_id}" or "${step_id.field.0}" as a parameter value;
  that makes the step wait for the earlier one. Steps without dependencies run in parallel.
- "when" (optional) is a condition such as "${search.count} > 0"; "for_each" (optional) is one
  reference to a list, and "${item}" is its current element.
- "output" is a reference to the step whose output answers the goal: "${step_id}", not the bare id.
- Tools are listed best first. A "track_record" says how a tool has done on goals like this one;
  of tools that fit the goal equally, prefer the one with the better record.
- Keep plans short: as few steps as the goal needs."""


class LLMPlanner:
    name = "llm"

    def __init__(
        self,
        llm: ChatLLM,
        *,
        embedder: Embedder | None = None,
        top_k: int = 8,
        max_repairs: int = 2,
        retrievers: RetrieverCache | None = None,
    ) -> None:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if max_repairs < 0:
            raise ValueError(f"max_repairs must be >= 0, got {max_repairs}")
        self.llm = llm
        self.retrievers = retrievers or RetrieverCache(embedder)
        self.top_k = top_k
        self.max_repairs = max_repairs

    def tools_for(self, goal: str, registry: ToolRegistry) -> list[dict[str, Any]]:
        available = [t for t in registry if t.available]
        if not available:
            raise PlanningError("no tool is available to plan with")
        ranked = self.retrievers.ranked(goal, registry, min(self.top_k, len(available)))
        tools = [registry.get(name) for name, _, _ in ranked]
        # With a ranker, the model picks among the candidates knowing how each has done on
        # goals like this one: words alone cannot tell look-alike tools apart, history can.
        records = {name: why for name, _, why in ranked} if self.retrievers.ranker else {}
        # Lexical ranking stops at tools sharing a word with the goal; the model may see
        # a better fit among the rest, so the prompt is filled up to top_k.
        tools += [t for t in available if t not in tools][: self.top_k - len(tools)]
        listed = []
        for t in tools:
            entry: dict[str, Any] = {"name": t.name, "description": t.description}
            entry["parameters"] = t.parameters_schema
            if t.name in records:
                entry["track_record"] = records[t.name]
            listed.append(entry)
        return listed

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan:
        if not goal.strip():
            raise PlanningError("the goal is empty")
        tools = self.tools_for(goal, registry)
        request = f"Goal: {goal}\n\nTools:\n{json.dumps(tools, indent=1)}"
        if context.get("failure"):
            request += f"\n\nA previous plan failed: {context['failure']}. Plan around it."
        return await self._converse(goal, request, registry)

    async def _converse(self, goal: str, request: str, registry: ToolRegistry) -> Plan:
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": request},
        ]
        problems: list[str] = []
        for attempt in range(self.max_repairs + 1):
            try:
                text = await self.llm.complete(messages, json_schema=PLAN_SCHEMA)
            except LLMFormatError as error:
                text, plan, problems = error.text, None, [str(error)]
            except LLMError as error:
                raise PlanningError(f"the LLM planner could not get a plan: {error}") from error
            else:
                plan, problems = self._check(goal, text, registry)
            if plan is not None:
                plan.metadata["repairs"] = attempt
                plan.metadata["llm"] = self.llm.model
                return plan
            messages.append({"role": "assistant", "content": text})
            messages.append(
                {
                    "role": "user",
                    "content": "That plan cannot run:\n"
                    + "\n".join(f"- {p}" for p in problems)
                    + "\nAnswer with the corrected plan as JSON.",
                }
            )
        raise PlanningError(
            f"the LLM's plan still had problems after {self.max_repairs} repair(s): "
            + "; ".join(problems)
        )

    def _check(self, goal: str, text: str, registry: ToolRegistry) -> tuple[Plan | None, list[str]]:
        """The plan if it is runnable, else every problem with it."""
        try:
            data = {**_as_offered(json.loads(text)), "goal": goal, "planner": self.name}
            plan = parse_plan(data)
        except PlanValidationError as error:
            return None, [str(p) for p in error.problems]
        except (json.JSONDecodeError, TypeError, RecursionError) as error:
            return None, [f"the answer is not a JSON object: {error}"]
        found = validate(plan, registry)
        return (None, [str(p) for p in found]) if found else (plan, [])


_STEP_FIELDS = frozenset(PLAN_SCHEMA["properties"]["steps"]["items"]["properties"])
_PLAN_FIELDS = frozenset(PLAN_SCHEMA["properties"]) - {"steps"}


def _as_offered(answer: Any) -> Any:
    """The model's plan with only the fields its schema offers: a step's own ``retry`` or
    ``timeout`` (100 attempts at a failing model in one run), or the plan's ``metadata``
    (the intent recorded, a plan memory link, a ``why`` that broke a repair) are the
    orchestrator's to set, not the model's."""
    if not isinstance(answer, dict):
        return answer
    kept = {k: v for k, v in answer.items() if k in _PLAN_FIELDS}
    steps = answer.get("steps")
    if isinstance(steps, list):
        steps = [
            {k: v for k, v in step.items() if k in _STEP_FIELDS} if isinstance(step, dict) else step
            for step in steps
        ]
    return {**kept, "steps": steps} if "steps" in answer else kept
