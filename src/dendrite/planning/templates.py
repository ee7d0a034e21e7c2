"""Plans by query type: the shapes that most goals of a kind share.

A comparison is two searches side by side and then a comparison; a summary
of something not named is a search and then a summary of the best hit. A
template names each step by what it must do ("compare two documents"); the
tool for it is found by retrieval and its arguments by the argument reader,
so templates work with any registry that has tools for those roles, and do
not apply (raise :class:`PlanningError`) when it has not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from dendrite.planning.arguments import (
    extract_arguments,
    one_goal_per_file,
    paths_in,
    reads_as_conversion,
    written_arithmetic,
)
from dendrite.planning.classify import QueryType, classify
from dendrite.planning.plan import Plan, Step
from dendrite.planning.planner import PlanningError
from dendrite.planning.semantic import (
    RetrieverCache,
    candidates_for,
    does,
    split_goal,
    step_from,
)
from dendrite.retrieval import Embedder, tokenize
from dendrite.tools import ToolRegistry

_SUBJECTS = re.compile(
    r"(?:between\s+)?(?P<a>[\w./-]+(?:\s[\w./-]+){0,3}?)\s+(?:and|vs\.?|versus|with|to)\s+"
    r"(?P<b>[\w./-]+(?:\s[\w./-]+){0,3}?)"
    r"(?=\s+(?:say|says|said|about|regarding|on|in|for)\b|[?.!,]|$)",
    re.I,
)
_LEAD = re.compile(
    r"^\s*(?:please\s+)?(?:compare|contrast|what(?:'s| is| are)? the differences? between|"
    r"how do(?:es)?|what do(?:es)?)\s+(?:what\s+)?",
    re.I,
)
_TOPIC = re.compile(r"\b(?:about|regarding|on|in terms of)\s+(?P<topic>.+?)\s*[?.!]?$", re.I)


class TemplatePlanner:
    """Plans for comparison, summary, search and calculation goals."""

    name = "template"

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        candidates: int = 5,
        retrievers: RetrieverCache | None = None,
    ) -> None:
        self.retrievers = retrievers or RetrieverCache(embedder)
        self.candidates = candidates

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan:
        if len(split_goal(goal)) > 1:
            raise PlanningError("the goal asks for several things; templates plan one")
        query_type = classify(goal).query_type
        builder = {
            QueryType.COMPARISON: self._comparison,
            QueryType.SUMMARY: self._summary,
            QueryType.SEARCH: self._single,
            QueryType.CALCULATION: self._calculation,
        }.get(query_type)
        if builder is None:
            raise PlanningError(f"no template for {query_type.value} goals")
        why: dict[str, str] = {}
        steps = builder(goal, registry, why)
        return Plan(
            goal=goal,
            steps=steps,
            planner=self.name,
            metadata={"template": query_type, "why": why},
        )

    def _role(
        self, role: str, text: str, registry: ToolRegistry, step_id: str, why: dict[str, str]
    ) -> Step:
        """The step for ``role`` (what it must do) with arguments read from ``text``."""
        ranked, _ = candidates_for(f"{role} {text}", registry, self.retrievers, k=self.candidates)
        fits = [
            c
            for c in ranked
            if does(c.tool, role) and extract_arguments(text, c.tool.parameters_schema).complete
        ]
        if not fits:
            raise PlanningError(f"no tool can {role} for {text!r}")
        step = step_from(fits, step_id, f"{role}: {text}", why)
        step.params = extract_arguments(text, fits[0].tool.parameters_schema).params
        return step

    def _single(self, goal: str, registry: ToolRegistry, why: dict[str, str]) -> list[Step]:
        fits, rejected = candidates_for(goal, registry, self.retrievers, k=self.candidates)
        if not fits:
            tried = "; ".join(rejected) or "no tool matched its words"  # not a bare ": "
            raise PlanningError(f"no tool fits {goal!r}: {tried}")
        slot = fits[0].extraction.from_rest
        is_text = slot is not None and slot.lower() in ("text", "content", "input")
        if is_text and paths_in(str(fits[0].extraction.params[slot])):
            # "find all emails in contacts.txt" is about the file's text, not these words:
            # the semantic planner reads the file first.
            raise PlanningError(
                f"{fits[0].tool.name} would take the words naming a file as its text"
            )
        return [step_from(fits, "step1", goal, why)]

    def _calculation(self, goal: str, registry: ToolRegistry, why: dict[str, str]) -> list[Step]:
        """Arithmetic written out goes to a calculator and a unit conversion to a converter;
        other calculations to the tool retrieval finds for the goal's words, else to a
        calculator for its numbers.

        "what is 2+2" has no word a tool's description shares once the numbers are left out
        (retrieval ignores them, and "what is" is no request), and "the square root of 144"
        shares "root" with a file lister: both are arithmetic. "how many miles is 10 km"
        shares "many" with a keyword counter: it is a conversion.
        """
        arithmetic = written_arithmetic(goal)
        if arithmetic:
            try:
                return [self._role("calculate", goal, registry, "step1", why)]
            except PlanningError:
                pass
        elif reads_as_conversion(goal):  # "how many inches in 2 feet" says no "convert"
            asked = goal if "convert" in tokenize(goal) else f"convert {goal}"
            fits, _ = candidates_for(asked, registry, self.retrievers, k=self.candidates)
            converters = [c for c in fits if does(c.tool, "convert")]
            if converters:
                return [step_from(converters, "step1", goal, why)]
        try:
            return self._single(goal, registry, why)
        except PlanningError as unmatched:
            if arithmetic:  # the calculator was asked first, and could not
                raise
            try:
                return [self._role("calculate", goal, registry, "step1", why)]
            except PlanningError:
                raise unmatched from None

    def _comparison(self, goal: str, registry: ToolRegistry, why: dict[str, str]) -> list[Step]:
        """Two searches in parallel (one per subject), then a comparison that waits for both."""
        body = _LEAD.sub("", goal)
        subjects = _SUBJECTS.search(body)
        if not subjects:
            raise PlanningError(f"cannot tell what to compare in {goal!r}")
        first, second = subjects.group("a").strip(), subjects.group("b").strip()
        found = _TOPIC.search(body[subjects.end() :])
        topic = found.group("topic") if found else ""
        about = f" about {topic}" if topic else ""
        compare = self._role(
            "compare", f"compare {first} and {second}{about}", registry, "compare", why
        )
        searches = []
        for step_id, subject in (("search_first", first), ("search_second", second)):
            step = self._role("search", f"search {subject} {topic}".strip(), registry, step_id, why)
            step.continue_on_error = True  # evidence; the comparison stands without it
            searches.append(step)
        compare.depends_on = [s.id for s in searches]
        return [*searches, compare]

    def _summary(self, goal: str, registry: ToolRegistry, why: dict[str, str]) -> list[Step]:
        """Summarise what the goal names (each of the files it lists: "a.md and b.md" is
        two summaries, side by side); if it names nothing, the best search hit."""
        per_file = one_goal_per_file(goal)
        try:
            if per_file:
                return [
                    self._role("summarize", text, registry, f"summarize{i}", why)
                    for i, text in enumerate(per_file, start=1)
                ]
            return [self._role("summarize", goal, registry, "summarize", why)]
        except PlanningError:
            pass
        search = self._role("search", goal, registry, "search", why)
        ranked, _ = candidates_for(
            "summarize a document",
            registry,
            self.retrievers,
            k=self.candidates,
            given={"name": f"${{{search.id}.0.document}}"},
        )
        summarize_fits = [c for c in ranked if does(c.tool, "summarize")]
        if not summarize_fits:
            raise PlanningError(f"no tool can summarize for {goal!r}")
        summarize = step_from(summarize_fits, "summarize", "summarize the best match", why)
        return [search, summarize]
