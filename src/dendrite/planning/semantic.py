"""Offline planning: choose tools by retrieval, fill their arguments from the goal's words.

The semantic planner needs no model: the hybrid tool retriever ranks the
registry against the goal (or each part of a goal that asks for several
things), and the first candidate whose required parameters can all be filled
from the text wins; the next candidates that take the same arguments become
its fallbacks.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from dendrite.planning.arguments import (
    BOUND_NAMES,
    FILLER,
    PATH_HINTS,
    PATTERN_NAMES,
    QUOTED,
    Extraction,
    asks_unit_conversion,
    bound_in,
    extract_arguments,
    names_a_pattern,
    numbers_in,
    one_goal_per_file,
    paths_in,
    resolve_ref,
    written_arithmetic,
)
from dendrite.planning.plan import Plan, Step
from dendrite.planning.planner import PlanningError
from dendrite.retrieval import Embedder, ToolRetriever, tokenize
from dendrite.tools import Tool, ToolRegistry

_REQUEST_VERBS = (
    "calculate|compute|search|find|look up|summari[sz]e|count|convert|list|read|extract|"
    "compare|normali[sz]e|lowercase|uppercase|check|get|fetch|show|tell|analy[sz]e|is|what|"
    "which|how"
)
_SEQUENTIAL = re.compile(
    r"\s*(?:;\s*(?:then\s+)?|,?\s+and then\s+|,?\s+then\s+|\s+after that\s+)\s*", re.I
)
_PARALLEL = re.compile(rf"\s*(?:,?\s+and also\s+|,?\s+and\s+(?=(?:{_REQUEST_VERBS})\b))\s*", re.I)


_LEFTOVER_WORDS = 3  # "then count the words": so few words are a reference, not an input


@dataclass(frozen=True, slots=True)
class GoalPart:
    text: str
    after_previous: bool


def split_goal(goal: str) -> list[GoalPart]:
    """Parts of a goal that asks for several things: 'then' chains them, 'and <verb>' runs apart.

    Quoted text is one value, never split: 'search for "first come then served"' is one part.
    """
    quoted: list[str] = []

    def hold(match: re.Match[str]) -> str:
        quoted.append(match.group(0))
        return f"\0{len(quoted) - 1}\0"

    held = QUOTED.sub(hold, goal)
    parts: list[GoalPart] = []
    for chunk in _SEQUENTIAL.split(held):
        first = True
        for piece in _PARALLEL.split(chunk):
            text = re.sub(r"\0(\d+)\0", lambda m: quoted[int(m.group(1))], piece).strip(" ,.")
            if not re.search(r"\w", text):  # "…; ..." or "and then ,": nothing asked
                continue
            parts.append(GoalPart(text, bool(parts) and first))
            first = False
    return parts or [GoalPart(goal.strip(), False)]


class Reranker(Protocol):
    """Reorders retrieval's candidates by what history says (``dendrite.learning.ToolRanker``).

    An optional ``recall_depth`` attribute asks for that many of retrieval's candidates.
    ``scores`` (retrieval's score of every tool with any evidence) is passed only to a
    ``rerank`` that takes it.
    """

    def rerank(
        self,
        goal: str,
        candidates: Sequence[tuple[str, float]],
        *,
        scores: Mapping[str, float] | None = None,
    ) -> Sequence[Any]: ...

    def order(self, names: Sequence[str]) -> list[str]: ...


class RetrieverCache:
    """One retriever per state of the registry: rebuilt only when tools change.

    With a ``ranker``, the candidates it returns are reordered by history.
    """

    def __init__(self, embedder: Embedder | None = None, ranker: Reranker | None = None) -> None:
        self.embedder = embedder
        self.ranker = ranker
        # A reranker written before ``scores`` existed takes (goal, candidates) only.
        self._pass_scores = ranker is not None and _accepts(ranker.rerank, "scores")
        self._key: tuple[Any, ...] | None = None
        self._retriever: ToolRetriever | None = None

    def ranked(self, text: str, registry: ToolRegistry, k: int) -> list[tuple[str, float, str]]:
        """(tool name, score, why) for ``text``, best first."""
        # Only tools retrieval judges relevant: an unrelated tool that happens to accept
        # the goal's words is a wrong answer, not a plan.
        if self.ranker is None:
            ranked = [(r.name, r.score) for r in self.get(registry).rank(text, k=k) if r.fits]
            return [(name, score, f"retrieval {score:.2f}") for name, score in ranked]
        # History can lift a tool retrieval ranks below the first k: give the ranker the
        # depth it asks for (``recall_depth``), keep k after it reorders.
        depth = max(k, getattr(self.ranker, "recall_depth", k))
        top, scores = self.get(registry).rank_scored(text, k=depth)
        ranked = [(r.name, r.score) for r in top if r.fits]
        if self._pass_scores:
            reranked = self.ranker.rerank(text, ranked, scores=scores)
        else:
            reranked = self.ranker.rerank(text, ranked)
        return [(r.name, r.score, r.reason) for r in reranked][:k]

    def get(self, registry: ToolRegistry) -> ToolRetriever:
        key = tuple((t.name, t.version, t.state.status) for t in registry)
        if self._retriever is None or key != self._key:
            self._retriever = ToolRetriever.from_registry(registry, embedder=self.embedder)
            self._key = key
        return self._retriever


def _accepts(function: Any, keyword: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read: call it the old way
        return False
    return any(
        (p.name == keyword and p.kind is not p.POSITIONAL_ONLY) or p.kind is p.VAR_KEYWORD
        for p in parameters
    )


@dataclass(frozen=True, slots=True)
class Candidate:
    tool: Tool
    extraction: Extraction
    score: float
    reason: str = ""


def candidates_for(
    text: str,
    registry: ToolRegistry,
    retrievers: RetrieverCache,
    *,
    k: int = 5,
    given: Mapping[str, Any] | None = None,
) -> tuple[list[Candidate], list[str]]:
    """Tools that can be called for ``text`` (best first), and why the others could not."""
    fits: list[Candidate] = []
    rejected: list[str] = []
    available = [t for t in registry if t.available]
    if not available:
        return [], ["no tool is available"]
    # What the goal asks done, where its words share none with the tool that does it:
    # "find all emails in x.txt" (an extractor), "what is 15% of 80" (a calculator), "how
    # many seconds in a day" (a converter); templates know these, a part of a goal too.
    pulls_out = names_a_pattern(text)
    role = (
        "extract"
        if pulls_out
        else "calculate"
        if written_arithmetic(text)
        else "convert"
        if asks_unit_conversion(text)
        else None
    )
    # Compared as retrieval reads words (stemmed): "calculate 3 + 4" already says it.
    asked = f"{role} {text}" if role and not set(tokenize(role)) <= set(tokenize(text)) else text
    # A tool that takes nothing from the goal does not stand in for one that matches it
    # better and could not be given its arguments: "list primes" (a limit missing) was
    # answered by the file lister, which needs none, with a success that learning
    # then credited to the lister for every goal about primes.
    refused: Candidate | None = None
    for name, score, reason in retrievers.ranked(asked, registry, min(k, len(available))):
        tool = registry.find(name)
        if tool is None or not tool.available:
            continue
        extraction = extract_arguments(text, tool.parameters_schema, given=dict(given or {}))
        problems = extraction.missing and [f"missing {', '.join(extraction.missing)}"]
        problems = problems or tool.check_arguments(extraction.params)
        if problems:
            rejected.append(f"{tool.name} ({'; '.join(problems)})")
            refused = refused or Candidate(tool, extraction, score, reason)
            continue
        if (
            refused
            and not extraction.used
            and not given
            and score < refused.score
            and not _names_its_subject(tool, text)
        ):
            rejected.append(
                f"{tool.name} (takes nothing from the goal; {refused.tool.name} fits it better)"
            )
            continue
        fits.append(Candidate(tool, extraction, score, reason))
    takers: list[Candidate] = []
    if pulls_out:  # "find all emails in x.txt": the tool that took their pattern
        takers = [
            c for c in fits if any(n.lower().endswith(PATTERN_NAMES) for n in c.extraction.used)
        ]
    elif (bound := bound_in(text)) is not None:  # "primes below 30": a limit's, not an n's
        takers = [c for c in fits if _takes_as_bound(c, bound)]
    return takers[:1] + [c for c in fits if c not in takers[:1]], rejected


_ASKING_WORDS = frozenset(tokenize(_REQUEST_VERBS.replace("|", " ") + " show display me there"))


def _names_its_subject(tool: Tool, text: str) -> bool:
    """Whether the tool says what the goal asks about, beyond how it asks: "show me the
    files" is the file lister's ("files"), "list primes" is not ("list" is only asking)."""
    subject = set(tokenize(text)) - _ASKING_WORDS
    return bool(subject & set(tokenize(f"{tool.name} {tool.description}")))


def _takes_as_bound(candidate: Candidate, bound: float) -> bool:
    params = candidate.extraction.params
    return any(
        name.lower().endswith(BOUND_NAMES) and params[name] in (bound, bound - 1)  # "below"
        for name in candidate.extraction.used
    )


def step_from(
    fits: Sequence[Candidate], step_id: str, description: str, why: dict[str, str] | None = None
) -> Step:
    """The best candidate as a step; the next ones that take the same arguments as fallbacks.

    A fallback takes every argument the step has, not only the ones it requires: given
    just the arguments it accepts, a tool that takes no folder ("list the documents")
    answered "list the files in reports", a folder that is not there, with a success.
    ``why`` collects, per step, the reason its tool was chosen (for the record).
    """
    best = fits[0]
    if why is not None:
        why[step_id] = f"{best.tool.name}: {best.reason}"
    params = best.extraction.params
    fallbacks = [
        c.tool.name
        for c in fits[1:3]
        if set(c.tool.parameters_schema.get("required", [])) <= set(params)
        and set(params) <= set(c.tool.parameter_names)
    ]
    return Step(
        id=step_id,
        tool=best.tool.name,
        params=params,
        fallbacks=fallbacks,
        description=description,
    )


class SemanticPlanner:
    """One step per part of the goal, each with the best-fitting tool."""

    name = "semantic"

    def __init__(
        self,
        embedder: Embedder | None = None,
        *,
        candidates: int = 5,
        split: bool = True,
        retrievers: RetrieverCache | None = None,
    ) -> None:
        self.retrievers = retrievers or RetrieverCache(embedder)
        self.candidates = candidates
        self.split = split

    async def plan(self, goal: str, registry: ToolRegistry, context: Mapping[str, Any]) -> Plan:
        text = goal.strip()
        if not text:
            raise PlanningError("the goal is empty")
        parts = split_goal(text) if self.split else [GoalPart(text, False)]
        steps: list[Step] = []
        why: dict[str, str] = {}
        group: list[Step] = []  # the steps asked for since the last "then"
        for index, part in self._per_file(parts, registry):
            sources: list[Step | None] = [None]
            if part.after_previous and group:
                sources, group = list(group), []
                if len(sources) > 1 and not self._chained(part.text, registry, sources[0])[0]:
                    sources = sources[-1:]  # its own input: planned once, after the last
            for n, source in enumerate(sources, start=1):
                # "summarize a.md and b.md then count the words": each summary's words,
                # not the last one's only.
                number = index if len(sources) == 1 else f"{index}_{n}"
                planned = self._plan_part(part, number, registry, source, why)
                steps.extend(planned)
                group.append(planned[-1])
        return Plan(goal=goal, steps=steps, planner=self.name, metadata={"why": why})

    def _plan_part(
        self,
        part: GoalPart,
        number: str,
        registry: ToolRegistry,
        source: Step | None,
        why: dict[str, str],
    ) -> list[Step]:
        """The steps for one part: its tool's, after a reader of the file it names if it
        works on text; ``source`` is the step whose output a "then" part takes."""
        fits: list[Candidate] = []
        if source is not None:
            fits, rejected = self._chained(part.text, registry, source)
        chained = bool(fits)
        if not fits:
            fits, rejected = candidates_for(part.text, registry, self.retrievers, k=self.candidates)
        if not fits:
            tried = "; ".join(rejected) or "no tool matched its words"
            raise PlanningError(f"no tool can do {part.text!r}: {tried}")
        if not chained:
            fits = _doer_first(part.text, fits)
        step = step_from(fits, f"step{number}", part.text, why)
        read = None
        if not chained:
            read = self._reader_of_named_file(fits[0], registry, f"read{number}", why)
        if read is not None:
            slot = fits[0].extraction.from_rest
            assert slot is not None
            step.params[slot] = _reference_to(read, registry, "string")
            step.fallbacks = []  # they were chosen for the goal's words as text
            if source is not None:
                read.depends_on.append(source.id)
            return [read, step]
        if source is not None and source.id not in step.dependencies():
            step.depends_on.append(source.id)
        return [step]

    def _per_file(
        self, parts: list[GoalPart], registry: ToolRegistry
    ) -> Iterator[tuple[str, GoalPart]]:
        """Each part with its step number; a part that lists files ("count the words in
        a.md and b.md") once per file, numbered "1_1", "1_2", ..., unless its best tool
        takes every file it names (a comparison). Planned whole, it counted the words of
        "a.md and b.md", or read the first file only."""
        for index, part in enumerate(parts, start=1):
            per_file = [] if part.after_previous else one_goal_per_file(part.text)
            if per_file:
                fits, _ = candidates_for(part.text, registry, self.retrievers, k=self.candidates)
                given = {str(v) for v in fits[0].extraction.params.values()} if fits else set()
                if all(name in given for name in paths_in(part.text)):  # each as an argument
                    per_file = []
            if not per_file:
                yield str(index), part
                continue
            for n, text in enumerate(per_file, start=1):
                yield f"{index}_{n}", GoalPart(text, False)

    def _reader_of_named_file(
        self, best: Candidate, registry: ToolRegistry, step_id: str, why: dict[str, str]
    ) -> Step | None:
        """For "count the words in harvest.md": a step reading the file, whose content the
        tool then takes instead of the goal's words ("the words in harvest.md", 5 words).

        Only when the goal's leftover words went to the tool's text and name one file, and a
        tool that reads files takes that name.
        """
        slot = best.extraction.from_rest
        if slot is None:
            return None
        named = paths_in(str(best.extraction.params[slot]))
        if len(named) != 1:
            return None
        fits, _ = candidates_for(
            f"read the file {named[0]}", registry, self.retrievers, k=self.candidates
        )
        readers = [
            c for c in fits if does(c.tool, "read") and named[0] in c.extraction.params.values()
        ]
        return step_from(readers, step_id, f"read {named[0]}", why) if readers else None

    def _chained(
        self, text: str, registry: ToolRegistry, previous: Step
    ) -> tuple[list[Candidate], list[str]]:
        """For 'then X': a tool whose input is the previous step's output.

        The input is the one required argument nothing in the text filled, or the main
        text argument when all that filled it was a few leftover words ("then count the
        words": the words are the previous output). Numbers and filler words are not
        counted: "then find the top 3 keywords" asks for the keywords of what came before.
        """
        fits: list[Candidate] = []
        rejected: list[str] = []
        for name, score, reason in self.retrievers.ranked(text, registry, self.candidates):
            tool = registry.find(name)
            if tool is None or not tool.available:
                continue
            extraction = extract_arguments(text, tool.parameters_schema)
            slot = None
            if len(extraction.missing) == 1:
                slot = extraction.missing.pop()
            elif (
                not extraction.missing
                and extraction.from_rest
                and _meaningful_words(str(extraction.params[extraction.from_rest]))
                <= _LEFTOVER_WORDS
            ):
                slot = extraction.from_rest
            if slot is None:
                rejected.append(f"{tool.name} (no argument takes the previous output)")
                continue
            slot_type = tool.parameters_schema.get("properties", {}).get(slot, {}).get("type")
            extraction.params[slot] = _reference_to(previous, registry, slot_type, slot)
            fits.append(Candidate(tool, extraction, score, reason))
        return fits, rejected


def _doer_first(text: str, fits: list[Candidate]) -> list[Candidate]:
    """A reader ranked first for a goal that asks for something else ("count the words in
    notes/todo.txt": the path's words are a reader's) gives way to the tool that does
    what the goal asks; the reader is then planned before it to supply the text. "how many
    words are in notes.txt" asks to count, and a counter of words before other counters."""
    counted = _HOW_MANY_OF.match(text)
    asked = _REQUEST_VERB.match(text)
    verb = "count" if counted else asked.group(1) if asked else ""
    stem = tokenize(verb)
    if not stem or stem[0] == "read" or not does(fits[0].tool, "read"):
        return fits
    # A tool with a flag the verb names does it too: "lowercase the text of x.txt"; so does
    # one with a flag the goal turns on ("convert x.txt to uppercase").
    doers = [
        c
        for c in fits[1:]
        if (does(c.tool, verb) or verb.lower() in c.tool.parameter_names or _turns_on(c))
        and c.extraction.from_rest
    ]
    if counted:
        doers.sort(key=lambda c: not does(c.tool, counted.group(1)))
    return [doers[0], *(c for c in fits if c is not doers[0])] if doers else fits


def _turns_on(candidate: Candidate) -> bool:
    """Whether the goal named one of the tool's flags, which is off unless asked for."""
    props = candidate.tool.parameters_schema.get("properties", {})
    return any(
        candidate.extraction.params[name] is True and props.get(name, {}).get("default") is False
        for name in candidate.extraction.used
    )


def does(tool: Tool, role: str) -> bool:
    """Whether the tool's name or description says it does ``role`` (same word stem)."""
    stem = tokenize(role)
    return bool(stem) and stem[0] in tokenize(f"{tool.name} {tool.description}")


_HOW_MANY_OF = re.compile(r"\s*(?:please\s+)?how\s+many\s+(\w+)", re.I)
_REQUEST_VERB = re.compile(rf"\s*(?:please\s+)?({_REQUEST_VERBS})\b", re.I)


def _meaningful_words(text: str) -> int:
    return sum(1 for w in text.split() if w.lower() not in FILLER and not numbers_in(w))


_CONTENT_FIELDS = ("summary", "text", "content", "answer", "result", "output", "value")


def _reference_to(
    previous: Step, registry: ToolRegistry, wanted: str | None, slot: str = ""
) -> str:
    """A reference to the previous output, or to the field of it that ``slot`` wants.

    A summariser returns a record (document, title, summary, ...); a word counter that
    follows it wants the summary, not the record. A search returns a list of hits; a
    summariser of a document named by ``name`` wants the best hit's document
    (``${step1.0.document}``), not the list.
    """
    tool = registry.find(previous.tool)
    schema = (tool.returns_schema if tool else None) or {}
    path = ""
    if schema.get("type") == "array" and wanted == "string":
        schema = resolve_ref(schema.get("items") or {}, schema.get("$defs") or {})
        path = ".0"
    props = schema.get("properties") or {}
    if wanted == "string" and props:
        strings = [n for n, p in props.items() if p.get("type") == "string"]
        names = [n for n in ("document", "name", "path", "file") if n in strings]
        first = strings[0] if strings and not path else None  # of a list: no guessing
        field = next((n for n in _CONTENT_FIELDS if n in strings), first)
        if path and names and any(h in slot.lower() for h in PATH_HINTS):
            field = names[0]  # a hit names the document a name or path slot wants
        if field:
            return f"${{{previous.id}{path}.{field}}}"
    return f"${{{previous.id}}}"
