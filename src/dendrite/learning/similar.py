"""Finding past goals like a new one: incremental indexes over goal texts.

Learning keeps adding goals while it answers queries, so an index must take
additions cheaply (no rebuild). :class:`SimilarTexts` is an inverted index from
word stems to entries, scored by the cosine of IDF-weighted word sets, with
document frequencies kept up to date as entries arrive; :class:`SimilarVectors`
scores by the cosine of the goals' embeddings when an embedder is configured.
"""

from __future__ import annotations

import math
from collections import OrderedDict, defaultdict
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from dendrite.retrieval import Embedder, tokenize

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
        """The ``k`` most similar entries (cosine of IDF-weighted word sets), best first and,
        among equally similar ones, newest first: a goal asked again and again is judged
        by its latest outcomes."""
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
                scored.append((similarity, key, Match(item, similarity, entry_text)))
        scored.sort(key=lambda entry: entry[:2], reverse=True)
        return [match for _, _, match in scored[:k]]


class SimilarVectors(Generic[T]):
    """Finding past goals like a new one by the cosine of their embeddings.

    Word overlap misses paraphrases ("put on something by Prince" / "play a Prince
    song" share one word) and is fooled by shared filler; an embedder places goals
    that ask for the same thing close together whatever their words. Same interface
    as :class:`SimilarTexts`; entries are rows of a matrix (grown as entries arrive,
    the oldest overwritten at ``capacity``), so a search is one matrix-vector product.
    A goal is usually searched and then added with each of its outcomes, so the
    vectors of the last ``cache`` texts are kept rather than embedded again.
    """

    def __init__(self, embedder: Embedder, capacity: int = 20_000, cache: int = 256) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.embedder = embedder
        self.capacity = capacity
        self.cache = cache
        self._vectors: np.ndarray | None = None
        self._entries: list[tuple[str, T]] = []
        self._added: list[int] = []  # each row's place in the order entries arrived
        self._arrivals = 0
        self._next = 0  # the row the next entry takes once the index is full
        self._recent: OrderedDict[str, np.ndarray] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def vector(self, text: str) -> np.ndarray:
        """The embedding of ``text`` (kept for the last ``cache`` texts)."""
        vector = self._recent.get(text)
        if vector is None:
            vector = np.asarray(self.embedder.embed([text]), dtype=np.float32)[0]
            self._recent[text] = vector
            while len(self._recent) > self.cache:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(text)
        return vector

    def add(self, text: str, item: T) -> None:
        vector = self.vector(text)
        count = len(self._entries)
        if self._vectors is None:
            self._vectors = np.zeros((min(self.capacity, 64), vector.shape[0]), dtype=np.float32)
        if count < self.capacity:
            if count == len(self._vectors):
                grown = np.zeros((min(self.capacity, 2 * count), vector.shape[0]), np.float32)
                grown[:count] = self._vectors
                self._vectors = grown
            row = count
            self._entries.append((text, item))
            self._added.append(self._arrivals)
        else:
            row = self._next
            self._next = (self._next + 1) % self.capacity
            self._entries[row] = (text, item)
            self._added[row] = self._arrivals
        self._arrivals += 1
        self._vectors[row] = vector

    def search(self, text: str, k: int = 10, min_similarity: float = 0.0) -> list[Match[T]]:
        """The ``k`` most similar entries (cosine of the embeddings), best first and, among
        equally similar ones, newest first."""
        if not self._entries or self._vectors is None or not text.strip():
            return []
        similarity = self._vectors[: len(self._entries)] @ self.vector(text)
        # Rounded first: identical rows' products differ in their last float32 bits.
        best = np.lexsort((-np.asarray(self._added), -np.round(similarity, 5)))[:k]
        return [
            Match(self._entries[row][1], float(similarity[row]), self._entries[row][0])
            for row in best
            if similarity[row] >= min_similarity
        ]
