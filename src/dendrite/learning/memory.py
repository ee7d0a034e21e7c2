"""Plan memory: a goal close enough to a past successful one reuses its plan.

What is reused is the plan's shape (tools, dependencies, conditions); what the
old goal's words filled in is read again from the new goal's words, by the same
argument reader the offline planner uses. A parameter whose old value came
from the old goal's text but that the new text cannot fill makes the memory
decline, rather than run a plan with the old goal's arguments.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from dendrite.learning._checks import check_number
from dendrite.learning.similar import SimilarTexts
from dendrite.planning.arguments import (
    as_read,
    extract_arguments,
    numbers_in,
    paths_in,
    spoken_math,
)
from dendrite.planning.plan import Plan
from dendrite.planning.references import has_references, literal, resolve
from dendrite.planning.semantic import split_goal
from dendrite.retrieval import tokenize
from dendrite.tools import ToolRegistry


@dataclass(frozen=True, slots=True)
class Remembered:
    goal: str
    plan: Plan
    execution_id: str | None


@dataclass(frozen=True, slots=True)
class Recall:
    plan: Plan
    similarity: float
    source: Remembered


class PlanMemory:
    """Successful plans by goal; feedback (``judge``) can veto reusing one."""

    def __init__(self, *, threshold: float = 0.75, capacity: int = 5_000) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.capacity = capacity
        self._index: SimilarTexts[Remembered] = SimilarTexts(capacity)
        self._judgements: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._remembered: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._index)

    def remember(self, goal: str, plan: Plan, execution_id: str | None = None) -> None:
        """Keep a plan that answered ``goal`` (only successful runs belong here)."""
        with self._lock:
            self._index.add(goal, Remembered(goal, plan, execution_id))
            if execution_id is not None:
                self._remembered[execution_id] = None
                while len(self._remembered) > self.capacity:
                    self._remembered.popitem(last=False)

    def judge(self, execution_id: str, reward: float, weight: float = 1.0) -> bool:
        """Feedback on the plan of ``execution_id``; True if that plan is remembered.

        A plan judged worse than good (weighted rewards below 0.5 on balance)
        is not reused; later good judgements can restore it.
        """
        if not 0 <= reward <= 1:  # NaN too
            raise ValueError(f"reward must be in [0, 1], got {reward}")
        check_number("weight", weight)  # a negative one would turn praise into a veto
        with self._lock:
            good, bad = self._judgements.pop(execution_id, (0.0, 0.0))
            self._judgements[execution_id] = (good + weight * reward, bad + weight * (1 - reward))
            while len(self._judgements) > self.capacity:
                self._judgements.popitem(last=False)
            return execution_id in self._remembered

    def vetoed(self, execution_id: str | None) -> bool:
        good, bad = self._judgements.get(execution_id or "", (0.0, 0.0))
        return bad > good

    def recall(self, goal: str, registry: ToolRegistry) -> Recall | None:
        """The most similar remembered plan not vetoed by feedback, re-bound to ``goal``.

        Vetoed plans are left out before the few best are taken, so that a good plan
        remembered after several bad ones of the same goal is still found.
        """
        with self._lock:
            matches = self._index.search(goal, k=len(self._index), min_similarity=self.threshold)
            matches = [m for m in matches if not self.vetoed(m.item.execution_id)][:3]
        for match in matches:
            plan = self._rebind(match.item, goal, registry)
            if plan is not None:
                return Recall(plan, match.similarity, match.item)
        return None

    @staticmethod
    def _rebind(source: Remembered, goal: str, registry: ToolRegistry) -> Plan | None:
        """The plan with each step's goal-given arguments read again from the part of the
        new goal that stands where the step's part stood in the old one (goals split as
        the planner splits them); ``None`` when a tool is gone or an argument is not there.

        Fallbacks no longer available are dropped: the plan would not validate with them.
        """
        old_words = source.goal.lower()
        old_tokens = set(tokenize(source.goal))
        old_parts = [part.text for part in split_goal(source.goal)]
        new_parts = [part.text for part in split_goal(goal)]
        used: set[int] = set()
        steps = []
        for step in source.plan.steps:
            tool = registry.find(step.tool)
            if tool is None or not tool.available:
                return None
            params = dict(step.params)
            from_goal = [
                name
                for name, value in params.items()
                if not has_references(value) and _said_in(value, source.goal, old_words)
            ]
            # Words of the old goal in a value it does not say whole: text the argument
            # reader or a template put together ("... a spa on in Rome", around a date);
            # and a flag, which the goal sets by naming it ("strip punctuation").
            # And a value the reader derived from the old goal, which the goal does not say
            # as such: "primes below 30" gave the limit 29, reused for "list primes up to
            # 50", and even for "list primes", which names no limit at all.
            derived = extract_arguments(source.goal, tool.parameters_schema).params
            echoes = [
                name
                for name, value in params.items()
                if name not in from_goal
                and not has_references(value)
                and (
                    isinstance(value, bool)
                    or set(_words(value)) & old_tokens
                    or (name in derived and derived[name] == value)
                )
            ]
            update: dict[str, object] = {
                "fallbacks": [
                    name for name in step.fallbacks if (f := registry.find(name)) and f.available
                ]
            }
            if from_goal or echoes:
                if len(new_parts) != len(old_parts):
                    return None  # no telling which part of the new goal answers to the step's
                part = _part_of(old_parts, step.description, [params[n] for n in from_goal], used)
                if part is None:
                    return None
                schema = tool.parameters_schema
                before = extract_arguments(old_parts[part], schema).params
                if any(before.get(name) != params[name] for name in echoes):
                    return None  # not read from its part as the reader reads: unknown source
                from_goal += echoes
                fresh = extract_arguments(new_parts[part], schema).params
                if _adds_arguments(fresh, before, params):
                    return None
                for name in from_goal:
                    if name not in fresh:
                        return None
                    params[name] = _nth_path(params[name], old_parts[part], new_parts[part])
                    if params[name] is None:
                        params[name] = fresh[name]
                update["description"] = _retold(step.description, old_parts[part], new_parts[part])
            else:
                same = len(new_parts) == len(old_parts) and step.description in old_parts
                at = old_parts.index(step.description) if same else -1
                old_text, new_text = (old_parts[at], new_parts[at]) if same else (source.goal, goal)
                schema = tool.parameters_schema
                before = extract_arguments(old_text, schema).params
                if _adds_arguments(extract_arguments(new_text, schema).params, before, params):
                    return None
                update["description"] = _retold(step.description, old_text, new_text)
            steps.append(step.model_copy(update={**update, "params": params}))
        return source.plan.model_copy(
            update={
                "goal": goal,
                "steps": steps,
                "planner": "memory",
                "metadata": {
                    "remembered_goal": source.goal,
                    "remembered_from": source.execution_id,
                },
            }
        )


def _retold(description: str, old: str, new: str) -> str:
    """The step's description with the old goal's words in it replaced by the new goal's
    ("calculate: calculate 6 * 7" for a run of "calculate (1 + 2) * 14" read as the old
    goal's step in traces and the API)."""
    return description.replace(old, new) if old and old in description else description


def _adds_arguments(
    fresh: dict[str, object], before: dict[str, object], params: dict[str, object]
) -> bool:
    """Whether the new goal gives the step's tool an argument the old goal did not and the
    step does not set: "the weather for city Tokyo" after "the weather for city" would run
    with the tool's default city, not Tokyo."""
    return bool(set(fresh) - set(before) - set(params))


def _part_of(
    parts: list[str], description: str, values: list[object], used: set[int]
) -> int | None:
    """The step's part of the old goal: the one its description is (the semantic planner
    gives each step its part), else the first, not taken by an earlier step if another
    will do, that says every one of ``values``; ``None`` when none does."""
    if description in parts:
        part = parts.index(description)
        used.add(part)
        return part
    fits = [
        i for i, part in enumerate(parts) if all(_said_in(v, part, part.lower()) for v in values)
    ]
    if not fits:
        return None
    part = next((i for i in fits if i not in used), fits[0])
    used.add(part)
    return part


def _nth_path(value: object, old: str, new: str) -> str | None:
    """The new text's file in the place ``value`` had among the old text's files ("summarize
    a.md and b.md": one step each), where both list as many; the argument reader would give
    every step the first. ``None`` when ``value`` is not one of several files."""
    if not isinstance(value, str):
        return None
    old_paths, new_paths = paths_in(old), paths_in(new)
    value = resolve(value, {})  # as the goal wrote it (see references.literal)
    if len(old_paths) < 2 or len(new_paths) != len(old_paths) or value not in old_paths:
        return None
    return literal(new_paths[old_paths.index(value)])


def _words(value: object) -> list[str]:
    if isinstance(value, str):
        return tokenize(resolve(value, {}))
    if isinstance(value, list):
        return [word for item in value for word in _words(item)]
    return []


def _said_in(value: object, text: str, lowered: str) -> bool:
    """Whether ``value`` was read from ``text`` (numbers compare as numbers: 5.0 is "5"),
    as the argument reader reads it: "minus 5" says -5."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value in numbers_in(as_read(text))
    if isinstance(value, list):
        return bool(value) and all(_said_in(v, text, lowered) for v in value)
    if not isinstance(value, str) or not value:
        return False
    value = resolve(value, {})  # the goal's own "${...}", as the argument reader wrote it
    # An expression the argument reader wrote from words ("7 times 6" is "7 * 6") was read
    # from the goal too, though the goal never says it.
    return (
        value.lower() in lowered
        or value.lower() in spoken_math(text).lower()
        or value.lower() in as_read(text).lower()
    )
