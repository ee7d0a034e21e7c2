"""Tool ranking from history: which tool to try first for this goal, and which next.

Three stages. Recall: the tools retrieval finds for the goal, plus every tool
that answered goals like this one before (its own past goals are the best
description of what a tool is for). Rank: each candidate's retrieval score,
moved by its record on similar past goals (similarity-weighted successes
minus failures, smoothed so that one outcome is a hint and twenty are
evidence) and by its overall record (a Beta posterior around its reliability
prior, with older outcomes decayed so a tool that recovers is believed). The
reason for each position is kept, so a trace can say "picked X because ...".
An optional third stage (the LLM choosing among the top few) belongs to the
LLM planner, which receives the candidates in this order.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from dendrite.learning.similar import SimilarTexts


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


class ToolRanker:
    """Learns from outcomes (``observe``) and reorders candidates (``rerank``)."""

    def __init__(
        self,
        *,
        similar_k: int = 12,
        min_similarity: float = 0.5,
        history_weight: float = 1.5,
        global_weight: float = 0.5,
        decay: float = 0.99,
        prior: float = 0.8,
        prior_weight: float = 4.0,
        capacity: int = 20_000,
    ) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        self.similar_k = similar_k
        self.min_similarity = min_similarity
        self.history_weight = history_weight
        self.global_weight = global_weight
        self.decay = decay
        self.prior = prior
        self.prior_weight = prior_weight
        self._goals: SimilarTexts[Outcome] = SimilarTexts(capacity)
        self._records: dict[str, _Record] = {}
        self._lock = threading.Lock()

    def observe(
        self, goal: str, tool: str, success: bool, count: int = 1, weight: float = 1.0
    ) -> None:
        """``count`` calls of ``tool`` for ``goal`` with the same outcome.

        Counting repeats (a 1,000-step plan calling one tool) as one entry with a
        weight keeps the goal index small and learning cheap per run. ``weight``
        scales the evidence: a user's rating of an old run counts less than a
        fresh outcome.
        """
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        with self._lock:
            record = self._records.setdefault(tool, _Record())
            for _ in range(min(count, 50)):  # beyond that the decay has forgotten the start
                record.successes = record.successes * self.decay + (weight if success else 0.0)
                record.failures = record.failures * self.decay + (0.0 if success else weight)
            if goal.strip():
                self._goals.add(goal, Outcome(tool, success, float(min(count, 5)) * weight))

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
        self, goal: str, candidates: Sequence[tuple[str, float]], *, recall: bool = True
    ) -> list[Ranked]:
        """``candidates`` (name, retrieval score) reordered by history, best first.

        With ``recall``, tools that succeeded on similar goals join the candidates
        even if retrieval missed them.
        """
        evidence = self.similar_evidence(goal)
        scores = dict(candidates)
        if recall:
            for tool, (good, _) in evidence.items():
                if good > 0:
                    scores.setdefault(tool, 0.0)
        top = max(scores.values(), default=0.0) or 1.0
        ranked = []
        for name, retrieval in scores.items():
            base = retrieval / top
            good, bad = evidence.get(name, (0.0, 0.0))
            similar = (good - bad) / (1.0 + good + bad)
            overall = self.posterior(name) - self.prior
            score = base + self.history_weight * similar + self.global_weight * overall
            reason = f"retrieval {base:.2f}"
            if good or bad:
                reason += f", on similar goals {good:.1f} worked / {bad:.1f} failed"
            if name in self._records:
                reason += f", success overall {self.posterior(name):.2f}"
            ranked.append(Ranked(name, score, reason))
        ranked.sort(key=lambda r: r.score, reverse=True)
        return ranked

    def order(self, names: Iterable[str]) -> list[str]:
        """Fallbacks by overall record, best first (stable for ties)."""
        names = list(names)
        return sorted(names, key=lambda n: -self.posterior(n))
