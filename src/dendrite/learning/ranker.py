"""Tool ranking from history: which tool to try first for this goal, and which next.

Retrieval ranks tools by how well their descriptions match the goal's words; it
cannot know which of several look-alike tools (``get_weather``,
``Weather_1_GetWeather``, ``forecast_api``) actually answers goals like this
one, nor that the user's words ("play", "tonight") point to a tool whose
description never uses them. The goals a tool answered are the best
description of what it is for, and the goals it failed are the best
description of what it is not for. So the ranker learns, from every call made
through the orchestrator, a model of whether a tool will succeed for a goal:

``logit P(tool succeeds | goal) = a * retrieval + c + sum_w x_w * weight[w, tool]
+ global_weight * (overall record - prior) + history_weight * similar``

- ``retrieval`` is the tool's retrieval score divided by the best candidate's,
  ``x`` the goal's words (numbers dropped: they are arguments) as a unit
  vector of IDF weights over the goals seen so far;
- ``weight[w, tool]`` is learned per word and tool by online logistic
  regression on the outcomes of real calls: a success moves the tool's
  weights towards the goal's words, a failure away from them, each by how
  surprising the outcome was (``label - P``), so a tool the model already
  expects to succeed learns little more and look-alikes that keep failing on
  a kind of goal sink below the one that answers it;
- ``a`` and ``c`` (how far to trust retrieval against the learned words) are
  learned too, from the same outcomes, more slowly;
- ``overall record`` is the tool's decayed Beta posterior of success on any
  goal (a tool that recovers is believed again), ``similar`` its
  similarity-weighted successes minus failures on the most similar past goals
  (by shared words, or by the goals' embeddings when an ``embedder`` is given:
  paraphrases that share no word are found too).

Recall: the ``recall_depth`` best tools of retrieval (planners ask retrieval
for that many when a ranker is wired in, then keep their own number after
reranking) plus every tool whose learned words alone reach ``recall_min``, or
that answered a similar past goal, even if retrieval missed it. The reason
for each position is kept, so a trace can say "picked X because ...". An
optional third stage (the LLM choosing among the top few) belongs to the LLM
planner, which receives the candidates in this order, each with its reason as
its ``track_record``.

On ``bench/learn_tools.py`` (BFCL, 1,645 tools, every tool call judged by the
gold answer), first-choice accuracy in the last 200 queries of the stream is
0.730 with it and 0.580 without learning (0.685 and 0.585 over the whole stream);
with all-MiniLM-L6-v2 in retrieval for both and for similar past goals, 0.725
and 0.625 (0.710 and 0.645). docs/learning.md gives the curves.
"""

from __future__ import annotations

import math
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from dendrite.learning._checks import check_count, check_number
from dendrite.learning.similar import SimilarTexts, SimilarVectors, terms
from dendrite.retrieval import Embedder

# The cosine below which a past goal says nothing about this one: 0.5 for IDF-weighted word
# sets; all-MiniLM-L6-v2's cosines run higher for unrelated sentences (the nearest past goal
# in bench/learn_tools.py has the same gold tool 20% of the time at 0.4-0.5, 53% at 0.6-0.7).
WORDS_MIN_SIMILARITY = 0.5
EMBEDDING_MIN_SIMILARITY = 0.6


@dataclass(frozen=True, slots=True)
class Outcome:
    tool: str
    success: bool
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Ranked:
    name: str
    score: float
    reason: str


@dataclass(slots=True)
class _Record:
    successes: float = 0.0
    failures: float = 0.0
    log_ms: float | None = None  # recent successful calls' typical log10 duration


LATENCY_FLOOR_MS = 10.0
"""Durations below this count as this: a few milliseconds either way choose nothing, and
instant tools' timings are noise."""
LATENCY_MEMORY = 0.2
"""The weight of a call's duration in the tool's running typical duration."""


def _sigmoid(z: float) -> float:
    if z >= 0:
        return 1.0 / (1.0 + math.exp(-z))
    e = math.exp(z)
    return e / (1.0 + e)


class ToolRanker:
    """Learns from outcomes (``observe``) and reorders candidates (``rerank``)."""

    def __init__(
        self,
        *,
        similar_k: int = 12,
        min_similarity: float | None = None,
        history_weight: float = 0.5,
        global_weight: float = 0.5,
        decay: float = 0.99,
        prior: float = 0.8,
        prior_weight: float = 4.0,
        capacity: int = 20_000,
        learning_rate: float = 2.0,
        shared_rate: float = 0.05,
        retrieval_weight: float = 4.0,
        intercept: float = -2.0,
        recall_depth: int = 20,
        recall_min: float = 0.5,
        context_size: int = 2_000,
        latency_weight: float = 0.5,
        embedder: Embedder | None = None,
    ) -> None:
        """``learning_rate`` moves the per-word weights, ``shared_rate`` the trust in
        retrieval (``retrieval_weight``, ``intercept`` are where it starts: a tool that
        retrieval ranks first is expected to work, P = 0.88, one at half its score is a coin
        toss). ``context_size`` goals' retrieval scores are kept from ``rerank`` until their
        outcomes are observed. With an ``embedder``, similar past goals are found by the cosine
        of the goals' embeddings (``min_similarity`` defaults to
        :data:`EMBEDDING_MIN_SIMILARITY`), else by shared words
        (:data:`WORDS_MIN_SIMILARITY`). ``latency_weight`` is what a tool loses in the
        logit per tenfold of its typical duration over the fastest candidate's, so that of
        tools equally likely to answer the quicker is tried first."""
        for label, value in (
            ("latency_weight", latency_weight),
            ("learning_rate", learning_rate),
            ("shared_rate", shared_rate),
            ("history_weight", history_weight),
            ("global_weight", global_weight),
            ("prior_weight", prior_weight),
        ):
            check_number(label, value)
        check_number("retrieval_weight", retrieval_weight, minimum=-math.inf)
        check_number("intercept", intercept, minimum=-math.inf)
        check_number("prior", prior, maximum=1.0)
        check_number("decay", decay, maximum=1.0, strict=True)
        check_count("similar_k", similar_k)
        check_count("recall_depth", recall_depth)
        check_count("context_size", context_size)
        check_number("recall_min", recall_min, minimum=-math.inf)
        self.similar_k = similar_k
        if min_similarity is None:
            min_similarity = WORDS_MIN_SIMILARITY if embedder is None else EMBEDDING_MIN_SIMILARITY
        check_number("min_similarity", min_similarity, minimum=-1.0, maximum=1.0)
        self.min_similarity = min_similarity
        self.history_weight = history_weight
        self.global_weight = global_weight
        self.decay = decay
        self.prior = prior
        self.prior_weight = prior_weight
        self.learning_rate = learning_rate
        self.shared_rate = shared_rate
        self.retrieval_weight = retrieval_weight
        self.intercept = intercept
        self.recall_depth = recall_depth
        self.recall_min = recall_min
        self.context_size = context_size
        self.latency_weight = latency_weight
        self._goals: SimilarTexts[Outcome] | SimilarVectors[Outcome] = (
            SimilarTexts(capacity) if embedder is None else SimilarVectors(embedder, capacity)
        )
        self._records: dict[str, _Record] = {}
        self._weights: dict[str, dict[str, float]] = {}  # word -> tool -> weight
        self._learned_from: Counter[str] = Counter()  # tool -> goals it was observed on
        self._document_frequency: Counter[str] = Counter()
        self._documents = 0
        # goal -> (tool -> retrieval share) of its latest rerank; the goals counted for IDF
        self._context: OrderedDict[str, dict[str, float]] = OrderedDict()
        self._counted: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    # -- learning ----------------------------------------------------------------------------

    def observe(
        self,
        goal: str,
        tool: str,
        success: bool,
        count: int = 1,
        weight: float = 1.0,
        retrieval: float | None = None,
    ) -> None:
        """``count`` calls of ``tool`` for ``goal`` with the same outcome.

        Counting repeats (a 1,000-step plan calling one tool) as one entry with a
        weight keeps the goal index small and learning cheap per run. ``weight``
        scales the evidence: a user's rating of an old run counts less than a
        fresh outcome. The word model learns once per entry (a repeated outcome
        says nothing new about which words point to the tool). ``retrieval`` is
        the tool's retrieval share when the goal was ranked, for outcomes read
        back from the store (``retrieval_share`` gives it at run time): without
        it a process that did not rank the goal itself would learn as if
        retrieval had not suggested the tool at all.
        """
        count = check_count("count", count)
        weight = check_number("weight", weight)
        if retrieval is not None:
            retrieval = check_number("retrieval", retrieval)  # one NaN would reach every score
        with self._lock:
            record = self._records.setdefault(tool, _Record())
            for _ in range(min(count, 50)):  # beyond that the decay has forgotten the start
                record.successes = record.successes * self.decay + (weight if success else 0.0)
                record.failures = record.failures * self.decay + (0.0 if success else weight)
            if goal.strip():
                self._goals.add(goal, Outcome(tool, success, float(min(count, 5)) * weight))
                self._learn_words(goal, tool, success, weight, retrieval)

    def observe_latency(self, tool: str, duration_ms: float) -> None:
        """Take the duration of a successful call of ``tool`` (failures say nothing of it)."""
        if not math.isfinite(duration_ms) or duration_ms < 0:
            return
        value = math.log10(max(duration_ms, LATENCY_FLOOR_MS))
        with self._lock:
            record = self._records.setdefault(tool, _Record())
            previous = record.log_ms
            record.log_ms = (
                value if previous is None else previous + LATENCY_MEMORY * (value - previous)
            )

    def typical_ms(self, tool: str) -> float | None:
        """The tool's typical duration of late (at least ``LATENCY_FLOOR_MS``), if known."""
        record = self._records.get(tool)
        return None if record is None or record.log_ms is None else 10**record.log_ms

    def retrieval_share(self, goal: str, tool: str) -> float | None:
        """The retrieval share ``tool`` had when ``goal`` was last ranked, if it was."""
        with self._lock:
            return self._context.get(goal, {}).get(tool)

    def _learn_words(
        self, goal: str, tool: str, success: bool, weight: float, retrieval: float | None
    ) -> None:
        """One logistic-regression step on (goal, tool, outcome); the lock is held."""
        if goal not in self._counted:
            self._counted[goal] = None
            self._documents += 1
            self._document_frequency.update(terms(goal))
            while len(self._counted) > self.context_size:
                self._counted.popitem(last=False)
        x = self._vector(goal)
        if retrieval is None:
            retrieval = self._context.get(goal, {}).get(tool, 0.0)
        z = self._logit(tool, x, retrieval)[0]
        step = ((1.0 if success else 0.0) - _sigmoid(z)) * weight
        for word, value in x.items():
            tools = self._weights.setdefault(word, {})
            tools[tool] = tools.get(tool, 0.0) + self.learning_rate * step * value
        self.retrieval_weight += self.shared_rate * step * retrieval
        self.intercept += self.shared_rate * step
        self._learned_from[tool] += 1

    def _vector(self, goal: str) -> dict[str, float]:
        """The goal's words as a unit vector of IDF weights (rare words say more)."""
        words = terms(goal)
        idf = {
            w: math.log(1 + (self._documents + 1) / (1 + self._document_frequency[w]))
            for w in words
        }
        norm = math.sqrt(sum(v * v for v in idf.values())) or 1.0
        return {w: v / norm for w, v in idf.items()}

    def _learned(self, x: dict[str, float]) -> dict[str, float]:
        """Per tool, the learned words' part of the logit for goal vector ``x``."""
        scores: dict[str, float] = {}
        for word, value in x.items():
            for tool, w in self._weights.get(word, {}).items():
                scores[tool] = scores.get(tool, 0.0) + value * w
        return scores

    def _logit(
        self, tool: str, x: dict[str, float], retrieval: float, learned: float | None = None
    ) -> tuple[float, float]:
        """(logit, its learned-words part) of ``tool`` succeeding for goal vector ``x``."""
        if learned is None:
            learned = sum(value * self._weights.get(w, {}).get(tool, 0.0) for w, value in x.items())
        overall = self.global_weight * (self.posterior(tool) - self.prior)
        z = self.retrieval_weight * retrieval + self.intercept + learned + overall
        return z, learned

    # -- reading -----------------------------------------------------------------------------

    def posterior(self, tool: str) -> float:
        """Success probability of ``tool`` over all goals (decayed Beta posterior)."""
        record = self._records.get(tool)
        if record is None:
            return self.prior
        weight = self.prior_weight
        return (record.successes + weight * self.prior) / (
            record.successes + record.failures + weight
        )

    def similar_evidence(self, goal: str) -> dict[str, tuple[float, float]]:
        """Per tool, similarity-weighted (successes, failures) on the most similar past goals."""
        evidence: dict[str, tuple[float, float]] = {}
        with self._lock:
            matches = self._goals.search(goal, k=self.similar_k, min_similarity=self.min_similarity)
        for match in matches:
            good, bad = evidence.get(match.item.tool, (0.0, 0.0))
            if match.item.success:
                good += match.similarity * match.item.weight
            else:
                bad += match.similarity * match.item.weight
            evidence[match.item.tool] = (good, bad)
        return evidence

    def rerank(
        self,
        goal: str,
        candidates: Sequence[tuple[str, float]],
        *,
        recall: bool = True,
        scores: Mapping[str, float] | None = None,
    ) -> list[Ranked]:
        """``candidates`` (name, retrieval score) reordered by history, best first.

        ``score`` is the logit of the tool succeeding for this goal. With ``recall``,
        tools whose learned words fit the goal, or that succeeded on similar goals,
        join the candidates even if retrieval ranked them below the candidates; ``scores``
        (retrieval's score of any tool, by name) gives them their own retrieval score,
        without which they count as retrieval's least likely (zero).
        """
        evidence = self.similar_evidence(goal)
        retrieval = dict(candidates)
        lower = scores or {}
        top = max(retrieval.values(), default=0.0) or max(lower.values(), default=0.0) or 1.0
        with self._lock:
            x = self._vector(goal)
            learned = self._learned(x)
            if recall:
                recalled = [tool for tool, value in learned.items() if value >= self.recall_min]
                recalled += [tool for tool, (good, _) in evidence.items() if good > 0]
                for tool in recalled:
                    retrieval.setdefault(tool, min(lower.get(tool, 0.0), top))
            # A share of the best score; scores below zero (a blend with cosines) are
            # shifted first, or dividing by a negative best would reverse the order.
            low = min([0.0, *retrieval.values()])
            span = (top - low) or 1.0
            shares = {name: (score - low) / span for name, score in retrieval.items()}
            self._context[goal] = shares
            self._context.move_to_end(goal)
            while len(self._context) > self.context_size:
                self._context.popitem(last=False)
            speeds = {
                name: record.log_ms
                for name in shares
                if (record := self._records.get(name)) is not None and record.log_ms is not None
            }
            fastest = min(speeds.values(), default=0.0)
            ranked = []
            for name, share in shares.items():
                z, words = self._logit(name, x, share, learned.get(name, 0.0))
                good, bad = evidence.get(name, (0.0, 0.0))
                z += self.history_weight * (good - bad) / (1.0 + good + bad)
                # The success it expects, then what slowness takes off the score (once).
                reason = self._reason(name, z, share, words, good, bad)
                slower = self.latency_weight * (speeds.get(name, fastest) - fastest)
                if slower > 0:
                    reason += f", typically {10 ** speeds[name]:.0f} ms (-{slower:.1f})"
                ranked.append(Ranked(name, z - slower, reason))
        ranked.sort(key=lambda r: r.score, reverse=True)
        return ranked

    def _reason(
        self, name: str, z: float, share: float, words: float, good: float, bad: float
    ) -> str:
        """Why ``name`` stands where it does, for the trace: "picked X because <this>"."""
        reason = f"expected success {_sigmoid(z):.2f}: retrieval {share:.2f}"
        if self._learned_from[name]:
            reason += (
                f", learned from {self._learned_from[name]} outcomes "
                f"{'+' if words >= 0 else '-'}{abs(words):.1f} for these words"
            )
        if good or bad:
            reason += f", on similar goals {good:.1f} worked / {bad:.1f} failed"
        if name in self._records:
            reason += f", success overall {self.posterior(name):.2f}"
        return reason

    def order(self, names: Iterable[str]) -> list[str]:
        """Fallbacks by overall record, best first; of equal records the quicker first."""
        names = list(names)
        return sorted(names, key=lambda n: (-self.posterior(n), self.typical_ms(n) or 0.0))
