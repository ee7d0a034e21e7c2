"""What kind of goal is this? Intent and query type, each with a confidence.

The classifier is deliberately small and transparent: weighted cue phrases,
scored and normalised, so a wrong label can be explained ("matched 'compare'
and 'versus'") and fixed by editing a table. Its confidence is the winning
share of the evidence, so an ambiguous goal gets a low confidence, and the
planner can route it to a more capable strategy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from dendrite.planning.arguments import asks_unit_conversion, written_arithmetic
from dendrite.retrieval.lexical import stem, tokenize


class Intent(StrEnum):
    TOOL_USE = "tool_use"
    GENERATIVE = "generative"
    UNKNOWN = "unknown"


class QueryType(StrEnum):
    SEARCH = "search"
    SUMMARY = "summary"
    ANALYSIS = "analysis"
    COMPARISON = "comparison"
    CALCULATION = "calculation"
    LOOKUP = "lookup"
    TRANSFORMATION = "transformation"
    GENERATION = "generation"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Classification:
    intent: Intent
    intent_confidence: float
    query_type: QueryType
    query_type_confidence: float
    signals: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {
            "intent": self.intent.value,
            "intent_confidence": self.intent_confidence,
            "query_type": self.query_type.value,
            "query_type_confidence": self.query_type_confidence,
            "signals": list(self.signals),
        }


def _cues(
    *cues: tuple[str, float] | tuple[str, float, str],
) -> list[tuple[re.Pattern[str], float, str]]:
    """Compile (pattern, weight[, label]) cues; the label is what ``signals`` shows."""
    return [
        (re.compile(rf"(?<!\w)(?:{c[0]})(?!\w)", re.I), c[1], c[2] if len(c) > 2 else c[0])
        for c in cues
    ]


_MATH = r"(?:\d[\d.,]*\s*(?:[-+*/^%x\u00d7\u00f7]|\*\*)\s*\(?\s*\d)"

_QUERY_CUES: dict[QueryType, list[tuple[re.Pattern[str], float, str]]] = {
    QueryType.COMPARISON: _cues(
        ("compare", 3.0),
        ("comparison", 3.0),
        ("versus", 3.0),
        ("vs\\.?", 2.5),
        ("difference(?:s)? between", 3.0),
        ("differ", 2.0),
        ("contrast", 2.5),
        ("better than", 2.0),
        ("similarities", 2.0),
        ("which is (?:better|faster|cheaper)", 2.5),
    ),
    QueryType.CALCULATION: _cues(
        ("calculate", 3.0),
        ("compute", 2.5),
        ("how much is", 2.0),
        ("what is \\d+", 1.5),
        ("sum of", 2.0),
        ("average of", 2.0),
        ("mean of", 2.0),
        ("median", 2.0),
        ("standard deviation", 2.5),
        ("square root", 3.0),
        ("percent(?:age)? of", 2.0),
        ("convert", 2.0),
        ("prime(?:s)?", 2.5),
        ("factorial", 3.0),
        ("multiply|divide|subtract|plus|minus|times|divided by", 1.5),
        (_MATH, 3.0, "arithmetic"),
    ),
    QueryType.SUMMARY: _cues(
        ("summar(?:ize|ise|y)", 3.0),
        ("tl;?dr", 3.0),
        ("overview", 2.0),
        ("gist", 2.5),
        ("key points", 2.5),
        ("main points", 2.5),
        ("in brief", 2.0),
        ("recap", 2.5),
        ("outline", 1.5),
    ),
    QueryType.SEARCH: _cues(
        ("search", 3.0),
        ("find", 2.0),
        ("look for", 2.5),
        ("where (?:is|are|does|do)", 1.5),
        ("which (?:documents?|files?|notes?)", 2.5),
        ("mentions?", 2.0),
        ("occurrences?", 2.0),
        ("locate", 2.0),
        ("show me", 1.0),
    ),
    QueryType.LOOKUP: _cues(
        ("what is", 1.0),
        ("what's", 1.0),
        ("who is", 2.0),
        ("when (?:is|was|did)", 1.5),
        ("look up", 3.0),
        ("lookup", 3.0),
        ("get the", 1.5),
        ("value of", 2.0),
        ("read", 1.5),
        ("list (?:the|all)", 2.0),
        ("show the", 1.5),
        ("fetch", 2.0),
        ("weather", 2.0),
        ("price of", 2.0),
    ),
    QueryType.ANALYSIS: _cues(
        ("analy[sz]e", 3.0),
        ("analysis", 3.0),
        ("trend(?:s)?", 2.5),
        ("statistics", 2.5),
        ("correlat\\w*", 2.5),
        ("breakdown", 2.0),
        ("group(?:ed)? by", 2.5),
        ("aggregate", 2.5),
        ("insights?", 2.0),
        ("evaluate", 2.0),
        ("why", 1.0),
        ("how many", 1.5),
        ("count", 1.5),
        ("keywords", 2.0),
    ),
    QueryType.TRANSFORMATION: _cues(
        ("translate", 3.0),
        ("reformat", 3.0),
        ("format (?:as|into)", 2.5),
        ("rewrite", 2.5),
        ("normali[sz]e", 3.0),
        ("extract", 2.5),
        ("to (?:json|csv|yaml|markdown|uppercase|lowercase)", 3.0),
        ("lowercase|uppercase", 2.0),
        ("clean up", 2.0),
        ("parse", 2.0),
        ("sort", 1.5),
    ),
    QueryType.GENERATION: _cues(
        ("write (?:a|an|me)", 3.0),
        ("draft", 3.0),
        ("compose", 3.0),
        ("generate", 2.0),
        ("create (?:a|an) (?:story|poem|email|letter|essay)", 3.0),
        ("brainstorm", 3.0),
        ("suggest", 2.0),
        ("ideas for", 2.5),
        ("poem|story|essay|haiku|joke|limerick", 2.5),
        ("explain", 1.5),
        ("tell me about", 1.5),
        ("opinion", 2.0),
    ),
}

_GENERATIVE_TYPES = {QueryType.GENERATION}


ACTS = ("generate", "compose", "draft", "brainstorm", "suggest", "explain")
"""The generative verbs a tool can be made for. "write" and "create" are left out: tools
named for them (``write_file``, ``create_user``) store or make records, not what a
"write a poem" goal asks for; nor do nouns count ("story" in ``story_points``)."""
_ACT_STEMS = {stem(verb): verb for verb in ACTS}


def act_named_by(goal: str, tool_text: str) -> str | None:
    """The generative act the goal asks for that ``tool_text`` (a tool's name and
    description) names too, in any form, if any: "generate a melody" and
    ``generate_melody``, "draft an email" and a tool that drafts emails. Such a tool is made
    for what the goal asks, so the goal is its call, not free text for a model to write
    (nor, offline, a refusal)."""
    asked = set(tokenize(goal)) & _ACT_STEMS.keys()
    named = asked & set(tokenize(tool_text))
    return _ACT_STEMS[min(named)] if named else None


def classify(goal: str) -> Classification:
    """Label a goal; never raises. An empty or cue-less goal is ``unknown`` with confidence 0."""
    text = goal.strip()
    if not text:
        return Classification(Intent.UNKNOWN, 0.0, QueryType.UNKNOWN, 0.0)
    scores: dict[QueryType, float] = {}
    signals: list[str] = []
    for query_type, cues in _QUERY_CUES.items():
        total = 0.0
        for pattern, weight, label in cues:
            if pattern.search(text):
                total += weight
                signals.append(f"{query_type.value}:{label}")
        if total:
            scores[query_type] = total
    # Arithmetic in words ("add 3 and 4") and a conversion asked as a question ("how many
    # miles is 10 km") are read as the argument reader reads them, not cue by cue.
    for label, reads in (("arithmetic", written_arithmetic), ("conversion", asks_unit_conversion)):
        if f"calculation:{label}" not in signals and reads(text):
            scores[QueryType.CALCULATION] = scores.get(QueryType.CALCULATION, 0.0) + 3.0
            signals.append(f"calculation:{label}")
    if not scores:
        return Classification(Intent.UNKNOWN, 0.0, QueryType.UNKNOWN, 0.0, tuple(signals))
    ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
    best, best_score = ranked[0]
    evidence = sum(scores.values())
    # Share of the evidence, damped when there is little of it (one weak cue is not certainty).
    confidence = round((best_score / evidence) * min(1.0, best_score / 3.0), 3)
    generative_score = sum(v for k, v in scores.items() if k in _GENERATIVE_TYPES)
    tool_score = evidence - generative_score
    if generative_score > tool_score:
        intent = Intent.GENERATIVE
        intent_confidence = generative_score / evidence
    else:
        intent = Intent.TOOL_USE
        intent_confidence = tool_score / evidence
    intent_confidence = round(
        intent_confidence * min(1.0, max(generative_score, tool_score) / 3.0), 3
    )
    return Classification(intent, intent_confidence, best, confidence, tuple(signals))
