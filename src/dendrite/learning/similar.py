"""Finding past goals like a new one: an incremental TF-IDF index over goal texts.

Learning keeps adding goals while it answers queries, so the index must take
additions cheaply (no rebuild): an inverted index from word stems to entries,
scored by the cosine of IDF-weighted word sets, with document frequencies kept
up to date as entries arrive.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Generic, TypeVar

from dendrite.retrieval import tokenize

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    item: T
    similarity: float
    text: str


def terms(text: str) -> frozenset[str]:
    """The words that say what a goal is about; numbers are its arguments, not its kind."""
    return frozenset(t for t in tokenize(text) if not t.replace(".", "").isdigit())


class SimilarTexts(Generic[T]):
    def __init__(self, capacity: int = 20_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._texts: dict[int, tuple[str, frozenset[str], T]] = {}
        self._postings: dict[str, set[int]] = defaultdict(set)
        self._next = 0

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str, item: T) -> None:
        words = terms(text)
        if not words:
            return
        if len(self._texts) >= self.capacity:
            self._drop(min(self._texts))
        key = self._next
        self._next += 1
        self._texts[key] = (text, words, item)
        for term in words:
            self._postings[term].add(key)

    def _drop(self, key: int) -> None:
        _, terms, _ = self._texts.pop(key)
        for term in terms:
            keys = self._postings[term]
            keys.discard(key)
            if not keys:
                del self._postings[term]

    def _idf(self, term: str) -> float:
        return math.log(1 + len(self._texts) / (1 + len(self._postings.get(term, ()))))

    def search(self, text: str, k: int = 10, min_similarity: float = 0.0) -> list[Match[T]]:
        """The ``k`` most similar entries (cosine of IDF-weighted word sets), best first."""
        words = terms(text)
        if not words or not self._texts:
            return []
        weights = {t: self._idf(t) for t in words}
        query_norm = math.sqrt(sum(w * w for w in weights.values()))
        overlap: dict[int, float] = defaultdict(float)
        for term, weight in weights.items():
            for key in self._postings.get(term, ()):
                overlap[key] += weight * weight
        scored = []
        for key, dot in overlap.items():
            entry_text, entry_terms, item = self._texts[key]
            norm = math.sqrt(sum(self._idf(t) ** 2 for t in entry_terms))
            similarity = dot / (query_norm * norm) if norm and query_norm else 0.0
            if similarity >= min_similarity:
                scored.append(Match(item, similarity, entry_text))
        scored.sort(key=lambda m: m.similarity, reverse=True)
        return scored[:k]
