"""The default planner: classify the goal, pick a strategy, use the planner that fits.

Offline it combines templates (for goal kinds it knows the shape of) with the
semantic planner; with an LLM configured it asks the model where the goal is
ambiguous or the strategy calls for it, and falls back to the offline
planners if the model fails. Every choice it makes (classification,
strategy, which planners were tried and why they declined, the model used)
lands in ``plan.metadata``, which the orchestrator records with the run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from dendrite.learning.memory import PlanMemory
from dendrite.llm import ChatLLM
from dendrite.llm.tools import GENERATE_TOOL
from dendrite.planning import references
from dendrite.planning.arguments import extract_arguments
from dendrite.planning.classify import Classification, Intent, act_named_by, classify
from dendrite.planning.llm_planner import LLMPlanner
from dendrite.planning.plan import Plan, Step, literal_problems, validate
from dendrite.planning.planner import Planner, PlanningError
from dendrite.planning.semantic import (
    Reranker,
    RetrieverCache,
    SemanticPlanner,
    candidates_for,
    step_from,
)
from dendrite.planning.templates import TemplatePlanner
from dendrite.retrieval import Embedder
from dendrite.tools import ToolRegistry


class Strategy(StrEnum):
    SIMPLE = "simple"  # one step, the best tool
    PARALLEL = "parallel"  # one step per part of the goal, independent parts in parallel
    ADAPTIVE = "adaptive"  # by the classifier's confidence: template, then semantic or LLM
    COMPREHENSIVE = "comprehensive"  # the most capable planner first (the LLM if configured)


class DendritePlanner:
    name = "dendrite"

    def __init__(
        self,
        *,
        llm: ChatLLM | None = None,
        embedder: Embedder | None = None,
        strategy: Strategy | str = Strategy.ADAPTIVE,
        confidence_threshold: float = 0.5,
        ranker: Reranker | None = None,
        memory: PlanMemory | None = None,
    ) -> None:
        """``ranker`` orders candidate tools by history; ``memory`` reuses past plans."""
        self.llm = llm
        self.strategy = Strategy(strategy)
        self.confidence_threshold = confidence_threshold
        self.memory = memory
        self.ranker = ranker
        retrievers = RetrieverCache(embedder, ranker)
        self.semantic = SemanticPlanner(retrievers=retrievers)
        self.simple = SemanticPlanner(split=False, retrievers=retrievers)
        self.template = TemplatePlanner(retrievers=retrievers)
        self.llm_planner = LLMPlanner(llm, retrievers=retrievers) if llm else None

    def choose(self, classification: Classification) -> list[Planner]:
        """The planners to try, in order, for this goal under this strategy."""
        confident = classification.query_type_confidence >= self.confidence_threshold
        match self.strategy:
            case Strategy.SIMPLE:
                order: list[Planner | None] = [self.simple]
            case Strategy.PARALLEL:
                order = [self.semantic]
            case Strategy.COMPREHENSIVE:
                order = [self.llm_planner, self.template, self.semantic]
            case Strategy.ADAPTIVE if confident:
                order = [self.template, self.semantic, self.llm_planner]
            case _:
                order = [self.llm_planner, self.semantic, self.template]
        return [p for p in order if p is not None]

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan:
        if not goal.strip():
            raise PlanningError("the goal is empty")
        if not re.search(r"\w", goal):
            raise PlanningError(f"the goal {goal.strip()!r} has no words to plan from")
        classification = classify(goal)
        declined: list[dict[str, str]] = []
        recalled = None
        if self.memory is not None and classification.intent is not Intent.GENERATIVE:
            recalled = self.memory.recall(goal, registry)
        if recalled is not None:
            plan = self._reordered(recalled.plan, goal, registry)
            plan.metadata["similarity"] = round(recalled.similarity, 3)
            plan.metadata["why"] = {
                s.id: f"{s.tool}: reused the plan of {recalled.source.goal!r} "
                f"(similarity {recalled.similarity:.2f})"
                for s in plan.steps
            }
        elif classification.intent is Intent.GENERATIVE:
            plan = self._made_for(goal, registry)
            if plan is None and classification.intent_confidence < 1.0 and not _can_write(registry):
                plan, declined = await self._tools_first(goal, registry, context, classification)
            plan = plan or self._generative(goal, registry)
        else:
            plan, declined = await self._first_that_plans(goal, registry, context, classification)
        plan.metadata.update(
            classification=classification.to_dict(),
            strategy=self.strategy.value,
            declined=declined,
            llm=self.llm.model if self.llm else None,
        )
        return plan

    async def _first_that_plans(
        self,
        goal: str,
        registry: ToolRegistry,
        context: Mapping[str, Any],
        classification: Classification,
    ) -> tuple[Plan, list[dict[str, str]]]:
        declined: list[dict[str, str]] = []
        planners = self.choose(classification)
        if context.get("use_llm") is False:  # the project's quality policy says so
            planners = [p for p in planners if p is not self.llm_planner]
        for planner in planners:
            try:
                plan = await planner.plan(goal, registry, context)
            except PlanningError as error:
                declined.append({"planner": planner.name, "reason": str(error)})
                continue
            # A plan that cannot run is a planner's decline, not the goal's end: the next
            # planner may do better ("then round the result" chained a number into the
            # calculator's text, which validation refuses).
            problems = validate(plan, registry)
            if not problems:
                return plan, declined
            reason = "; ".join(str(p) for p in problems)
            declined.append({"planner": planner.name, "reason": f"its plan cannot run: {reason}"})
        reasons = "; ".join(f"{d['planner']}: {d['reason']}" for d in declined)
        raise PlanningError(f"no planner could plan {goal!r} ({reasons})")

    async def _tools_first(
        self,
        goal: str,
        registry: ToolRegistry,
        context: Mapping[str, Any],
        classification: Classification,
    ) -> tuple[Plan | None, list[dict[str, str]]]:
        """Offline, a goal that only hints at writing, planned as tool use if a tool fits.

        One soft cue ("suggest", "explain", a noun such as "story" in "buy tickets for Toy
        Story") is weak evidence that the user wants prose. With no model to write it, a
        registered tool that fits the goal answers better than the documents or a refusal;
        with a model, the model writes, as for any generative goal.
        """
        try:
            return await self._first_that_plans(goal, registry, context, classification)
        except PlanningError as error:
            return None, [{"planner": "tools", "reason": str(error)}]

    def _reordered(self, plan: Plan, goal: str, registry: ToolRegistry) -> Plan:
        """A recalled plan's steps led by the tool the ranker expects to work now, not then.

        The ranker judges the plan's own tools for the new goal (a one-step plan) or the
        step's text, so a tool that has since failed on goals like this one steps back.
        Only a tool that takes the step's arguments as they are can lead it (a fallback
        is called with those it takes; a lead is called with all of them).
        """
        if self.ranker is None:
            return plan
        steps = []
        for step in plan.steps:
            names = list(dict.fromkeys([step.tool, *step.fallbacks]))
            text = goal if len(plan.steps) == 1 else step.description or goal
            ranked = self.ranker.rerank(text, [(name, 1.0) for name in names])
            names = [r.name for r in ranked if r.name in names]
            lead = next(
                (
                    name
                    for name in names
                    if (tool := registry.find(name)) is not None
                    and not literal_problems(tool, step.params)
                ),
                step.tool,
            )
            fallbacks = [name for name in names if name != lead]
            steps.append(step.model_copy(update={"tool": lead, "fallbacks": fallbacks}))
        return plan.model_copy(update={"steps": steps})

    def _made_for(self, goal: str, registry: ToolRegistry) -> Plan | None:
        """A generative goal as the call of a tool made for its act, if one fits.

        A registered tool that generates melodies does what "generate a melody" asks,
        with or without a model; the others among the candidates stay as fallbacks.
        """
        found, _ = candidates_for(goal, registry, self.simple.retrievers, k=self.simple.candidates)
        fits = [fit for fit in found if fit.tool.name != GENERATE_TOOL]  # the model: not a tool
        named = [
            (fit, act)
            for fit in fits
            if (act := act_named_by(goal, f"{fit.tool.name} {fit.tool.description}"))
        ]
        if not named:
            return None
        best, act = named[0]
        why: dict[str, str] = {}
        step = step_from([best, *(fit for fit in fits if fit is not best)], "step1", goal, why)
        why[step.id] += f"; made for the goal's act ({act!r})"
        return Plan(goal=goal, steps=[step], planner="semantic", metadata={"why": why})

    def _generative(self, goal: str, registry: ToolRegistry) -> Plan:
        """Writing needs a model; offline, the session's documents answer, or nothing does.

        The goal is the user's text, passed as written: a ``${cost}`` in "write a poem
        about ${cost}" is words, not a reference to a step (:func:`references.literal`).
        """
        text = references.literal(goal)
        if _can_write(registry):
            return Plan(
                goal=goal,
                steps=[Step(id="generate", tool=GENERATE_TOOL, params={"prompt": text})],
                planner="llm",
            )
        fits, _ = candidates_for(
            f"search documents {goal}", registry, self.semantic.retrievers, given={"query": goal}
        )
        documents = [f for f in fits if "query" in f.tool.parameter_names]
        if documents:
            step = Step(id="documents", tool=documents[0].tool.name, params={"query": text})
            return Plan(goal=goal, steps=[step], planner="documents")
        raise PlanningError(
            "this goal needs a generative model and none is configured (set "
            "DENDRITE_LLM_BASE_URL and DENDRITE_LLM_MODEL), and no documents are loaded to "
            "answer from; Dendrite does not invent answers"
        )

    def _replacement(self, step: Step, goal: str, registry: ToolRegistry) -> Step | None:
        """The step again with the most similar tool not tried yet that takes its arguments.

        Similar means: ranked for the failed tool's own name and description, and
        taking every argument the step gives (a summariser is not a stand-in for a
        search, however well it ranks for the goal's words, and a word counter that
        shares ``text`` with a regex extractor would drop its ``pattern`` and answer
        another question).
        """
        failed = registry.find(step.tool)
        tried = {step.tool, *step.fallbacks, *(failed.alternatives if failed else ())}
        about = f"{step.tool.replace('_', ' ')} {failed.description if failed else ''}"
        text = step.description or goal
        usable: list[Step] = []
        for name, _, _ in self.semantic.retrievers.ranked(about, registry, 10):
            tool = registry.find(name)
            if tool is None or not tool.available or tool.name in tried:
                continue
            if not set(step.params) <= set(tool.parameter_names):
                continue
            extraction = extract_arguments(text, tool.parameters_schema, given=step.params)
            if extraction.missing or literal_problems(tool, extraction.params):
                continue
            usable.append(step.model_copy(update={"tool": tool.name, "params": extraction.params}))
        if not usable:
            return None
        return usable[0].model_copy(update={"fallbacks": [s.tool for s in usable[1:2]]})

    async def replan(
        self,
        goal: str,
        plan: Plan,
        failed_step: str,
        error: str,
        registry: ToolRegistry,
        context: Mapping[str, Any],
    ) -> Plan | None:
        """A repaired plan after ``failed_step`` failed beyond its retries and fallbacks.

        With a model: a new plan that knows what failed. Offline: the failed step
        with the best tool not yet tried for it, its arguments read again. None
        when nothing else can do the step.
        """
        if self.llm_planner is not None and context.get("use_llm") is not False:
            try:
                repaired = await self.llm_planner.plan(
                    goal, registry, {**context, "failure": f"step {failed_step}: {error}"}
                )
            except PlanningError:
                repaired = None
            if repaired is not None:
                why = {**_reasons(plan), **_reasons(repaired)}
                for new in repaired.steps:  # an old reason would name the old plan's tool
                    if not why.get(new.id, "").startswith(f"{new.tool}: "):
                        why[new.id] = (
                            f"{new.tool}: in the model's repair after {failed_step} failed"
                        )
                repaired.metadata = {
                    **plan.metadata,
                    **repaired.metadata,
                    "why": why,
                    "replanned_from": failed_step,
                }
                return repaired
        step = plan.step(failed_step)
        replacement = self._replacement(step, goal, registry)
        if replacement is None:
            return None
        steps = [replacement if s.id == failed_step else s for s in plan.steps]
        why = {
            **plan.metadata.get("why", {}),
            failed_step: f"{replacement.tool}: replaces {step.tool}, which failed "
            "(the tool most like it not tried yet that takes its arguments)",
        }
        return plan.model_copy(
            update={
                "steps": steps,
                "metadata": {**plan.metadata, "why": why, "replanned_from": failed_step},
            }
        )


def _can_write(registry: ToolRegistry) -> bool:
    """Whether a model is registered to write free text (the generative path's own tool)."""
    generate = registry.find(GENERATE_TOOL)
    return generate is not None and generate.available


def _reasons(plan: Plan) -> dict[str, str]:
    """A plan's ``why`` (step id -> reason), when it has one of that shape: a plan given
    to the orchestrator may carry any metadata."""
    why = plan.metadata.get("why")
    if not isinstance(why, dict):
        return {}
    return {str(k): v for k, v in why.items() if isinstance(v, str)}
