"""Ranking the tools of a catalogue for a goal: BM25, an optional embedder, and their fusion.

Each tool becomes two short documents. BM25 (:class:`LexicalIndex`) indexes its name split
into words, its description, its parameter names and descriptions, and its tags; the embedder
(optional) sees its description followed by its name in words. Without an embedder the ranking
is BM25's; with one, the two are fused by a weighted blend of the BM25 score divided by the
best BM25 score for the goal and the cosine similarity (``"blend"``), or by reciprocal-rank
fusion (``"rrf"``). On BFCL (``bench/tool_selection.py``, 2,111 goals against a pooled
catalogue of 2,489 tools) the blend ranks better than RRF (top-1 0.723 against 0.703, nDCG@10
0.835 against 0.819), so it is the default. A tool the goal names (see
:meth:`ToolRetriever._named`) goes ahead of the tools it does not name.

"No tool fits" is an absolute signal, separate from the ranking: each ranked tool gets a
``relevance`` in [0, 1], a logistic function of its cosine similarity and of how many distinct
words of the goal it contains (a count, which unlike a BM25 score does not depend on the rest
of the catalogue; like BM25 it leaves out the goal's standalone numbers), fitted on BFCL with
relevant and irrelevant goals weighted equally. A tool ``fits`` when its relevance reaches
the retriever's ``threshold``; when none fits, a planner should call no tool. Two operating
points, measured on BFCL (each goal against its own candidate tools):

- :data:`LENIENT_THRESHOLD` (0.25, the default): with an embedder, refuses 5% of the goals
  that have a right tool and catches 62% of the irrelevant ones; with BM25 alone (where it
  means "shares at least one word with the goal"), 2.5% and 48%.
- :data:`BALANCED_THRESHOLD` (0.5): with an embedder, catches 79% of the irrelevant goals and
  refuses 16% of the relevant ones; with BM25 alone (two shared words), 72% and 10%.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dendrite.retrieval.embedding import Embedder, EmbeddingError
from dendrite.retrieval.lexical import LexicalIndex, split_words, tokenize

if TYPE_CHECKING:
    from dendrite.tools.registry import ToolRegistry

__all__ = [
    "BALANCED_THRESHOLD",
    "HYBRID_CALIBRATION",
    "LENIENT_THRESHOLD",
    "LEXICAL_CALIBRATION",
    "Calibration",
    "Fusion",
    "RankedTool",
    "ToolDoc",
    "ToolRetriever",
]

Fusion = Literal["blend", "rrf"]


def name_words(name: str) -> str:
    """``"weather_api.getForecast"`` -> ``"weather api get forecast"``.

    The tokenizer's own word rules, so that a name in any script (``météo_prévision``,
    ``天气``) is indexed as the words a goal would write, not as ASCII fragments.
    """
    return " ".join(split_words(name))


@dataclass(frozen=True, slots=True)
class ToolDoc:
    """What retrieval knows about a tool; ``parameters`` is its JSON Schema (an object)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    tags: Sequence[str] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"a tool needs a non-empty name, got {self.name!r}")
        if not isinstance(self.description, str):
            raise TypeError(f"tool {self.name!r}: description must be a string")
        if not isinstance(self.parameters, Mapping):
            raise TypeError(
                f"tool {self.name!r}: parameters must be a JSON Schema object (a mapping), "
                f"got {type(self.parameters).__name__}"
            )
        if isinstance(self.tags, str):
            raise TypeError(f"tool {self.name!r}: tags must be a sequence of strings")

    @classmethod
    def from_mapping(cls, spec: Mapping[str, Any]) -> ToolDoc:
        """From an OpenAI/BFCL-style function spec ``{name, description, parameters, tags?}``."""
        if "name" not in spec:
            raise ValueError(f"a tool spec needs a 'name': {dict(spec)!r:.200}")
        return cls(
            name=str(spec["name"]),
            description=str(spec.get("description") or ""),
            parameters=spec.get("parameters") or {},
            tags=tuple(str(t) for t in spec.get("tags") or ()),
        )

    def parameter_items(self) -> list[tuple[str, str]]:
        """``(name, description)`` of each top-level parameter."""
        props = self.parameters.get("properties") or {}
        if not isinstance(props, Mapping):
            return []
        return [
            (
                str(pname),
                str(schema.get("description") or "") if isinstance(schema, Mapping) else "",
            )
            for pname, schema in props.items()
        ]

    def lexical_text(self) -> str:
        """The document BM25 indexes: name words, description, parameters, tags."""
        params = self.parameter_items()
        parts = (
            name_words(self.name),
            self.description,
            " ".join(name_words(p) for p, _ in params),
            " ".join(d for _, d in params),
            " ".join(self.tags),
        )
        return "\n".join(p for p in parts if p)

    def semantic_text(self) -> str:
        """The document the embedder sees: the description, then the name in words."""
        words = name_words(self.name)
        text = f"{self.description.strip()} ({words})" if self.description.strip() else words
        if self.tags:
            text += f" [{', '.join(self.tags)}]"
        return text


@dataclass(frozen=True, slots=True)
class Calibration:
    """``relevance = sigmoid(semantic * cosine + lexical * ln(1 + matched words) + bias)``."""

    semantic: float
    lexical: float
    bias: float

    def relevance(self, cosine: np.ndarray | None, matched: np.ndarray) -> np.ndarray:
        z = self.lexical * np.log1p(matched.astype(np.float64)) + self.bias
        if cosine is not None:
            z = z + self.semantic * cosine.astype(np.float64)
        return 1.0 / (1.0 + np.exp(-z))


# Fitted by bench/tool_selection.py --calibrate (class-balanced logistic regression on BFCL:
# every goal against its own candidate tools, irrelevance and live_irrelevance as negatives),
# then rounded. BM25 alone gives semantic=0, lexical=2.354, bias=-2.584; rounding keeps the
# steps of the word count (1 word: 0.28, 2 words: 0.51, 3 words: 0.67) off the thresholds.
# The semantic coefficient is for all-MiniLM-L6-v2: other models have other cosine scales
# and should be calibrated the same way (pass ``calibration=``).
LEXICAL_CALIBRATION = Calibration(semantic=0.0, lexical=2.4, bias=-2.6)
HYBRID_CALIBRATION = Calibration(semantic=4.92, lexical=1.40, bias=-3.41)
LENIENT_THRESHOLD = 0.25
BALANCED_THRESHOLD = 0.5


@dataclass(frozen=True, slots=True)
class RankedTool:
    """One tool in a ranking, best first.

    ``score`` orders the ranking (the fused score); ``lexical_score`` is the raw BM25 score;
    ``semantic_score`` the cosine similarity (``None`` without an embedder); ``relevance``
    the calibrated absolute relevance in [0, 1]; ``fits`` whether it reaches the retriever's
    threshold; ``index`` the tool's position in the catalogue.
    """

    name: str
    score: float
    lexical_score: float
    semantic_score: float | None
    relevance: float = 0.0
    fits: bool = False
    index: int = -1


# A goal's numbers are its arguments ("calculate 1 + 1"), not what it asks for: matching them
# against digits in tool descriptions ("(1-based)") ranked unrelated tools.
_STANDALONE_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?![\w.])")


@dataclass(frozen=True, slots=True)
class _Name:
    """A tool's name as a goal can name it (see :meth:`ToolRetriever._named`)."""

    words: str  # its words, stop words kept, between spaces for a whole-word search
    content: int  # how many of its words are not stop words
    written: str | None  # the name in lower case, when it has several words

    @classmethod
    def of(cls, name: str) -> _Name:
        # Words as written, not stemmed: "is it prime" names neither primes nor is_prime.
        words = tokenize(name, drop_stop_words=False, stemming=False)
        return cls(
            f" {' '.join(words)} ",
            len(tokenize(name, stemming=False)),
            name.lower() if _SEVERAL_WORDS.search(name) else None,
        )

    def named_by(self, sequence: str, content: int, goal: str) -> bool:
        """Whether a goal names this tool: its words between spaces (``sequence``, stop words
        kept), how many of them are not stop words, and the goal in lower case."""
        if content == self.content and self.words in sequence:
            return True
        return (
            self.written is not None
            and self.written in goal
            and re.search(rf"(?<!\w){re.escape(self.written)}(?!\w)", goal) is not None
        )


# A name of several words as written: "web_search", "webSearch"; not "eBay" or "iPhone",
# one word whose acronym the tokenizer also splits, which any goal about them says.
_SEVERAL_WORDS = re.compile(r"[_\-. ]|[a-z]{2,}[A-Z]")


def _without_numbers(goal: str) -> str:
    """The goal without its standalone numbers, the words that retrieval matches."""
    return _STANDALONE_NUMBER.sub(" ", goal)


class ToolRetriever:
    """Hybrid (BM25 + optional embedder) ranking of a tool catalogue for a goal.

    ``fusion``: ``"blend"`` (default; ``(1 - w) * bm25 / max_bm25 + w * cosine`` with
    ``w = semantic_weight``) or ``"rrf"`` (reciprocal-rank fusion with constant ``rrf_k``).
    ``calibration`` and ``threshold`` set the "no tool fits" decision; the defaults are the
    BFCL-fitted :data:`LEXICAL_CALIBRATION` / :data:`HYBRID_CALIBRATION` and
    :data:`LENIENT_THRESHOLD` (pass :data:`BALANCED_THRESHOLD` to refuse more readily).
    """

    def __init__(
        self,
        tools: Sequence[ToolDoc],
        embedder: Embedder | None = None,
        *,
        fusion: Fusion = "blend",
        semantic_weight: float = 0.7,
        rrf_k: int = 60,
        calibration: Calibration | None = None,
        threshold: float = LENIENT_THRESHOLD,
    ) -> None:
        if isinstance(tools, (str, bytes, Mapping)):
            raise TypeError("tools must be a sequence of ToolDoc")
        docs = list(tools)
        if not docs:
            raise ValueError("cannot rank tools in an empty catalogue: give at least one tool")
        for i, doc in enumerate(docs):
            if not isinstance(doc, ToolDoc):
                raise TypeError(f"tools[{i}] is {type(doc).__name__}, not ToolDoc")
        if fusion not in ("blend", "rrf"):
            raise ValueError(f"fusion must be 'blend' or 'rrf', got {fusion!r}")
        if not 0.0 <= semantic_weight <= 1.0:
            raise ValueError(f"semantic_weight must be within [0, 1], got {semantic_weight}")
        if rrf_k < 1:
            raise ValueError(f"rrf_k must be at least 1, got {rrf_k}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be within [0, 1], got {threshold}")
        if embedder is not None and not isinstance(embedder, Embedder):
            raise TypeError(f"{embedder!r} is not an Embedder (needs 'name' and 'embed(texts)')")
        self.tools: tuple[ToolDoc, ...] = tuple(docs)
        self.embedder = embedder
        self.fusion: Fusion = fusion
        self.semantic_weight = float(semantic_weight)
        self.rrf_k = int(rrf_k)
        self.threshold = float(threshold)
        if calibration is None:
            calibration = HYBRID_CALIBRATION if embedder is not None else LEXICAL_CALIBRATION
        self.calibration = calibration
        self._lexical = LexicalIndex([d.lexical_text() for d in docs])
        self._names = [_Name.of(d.name) for d in docs]
        self._vectors: np.ndarray | None = None
        if embedder is not None:
            self._vectors = self._embed([d.semantic_text() for d in docs])

    @classmethod
    def from_registry(
        cls,
        registry: ToolRegistry | Iterable[Any],
        embedder: Embedder | None = None,
        **options: Any,
    ) -> ToolRetriever:
        """A retriever over the registry's available (enabled) tools."""
        docs = [
            ToolDoc(
                name=t.name,
                description=t.description or "",
                parameters=t.parameters_schema or {},
                tags=tuple(t.tags),
            )
            for t in registry
            if getattr(t, "available", True)
        ]
        if not docs:
            raise ValueError("the registry has no available tool to rank")
        return cls(docs, embedder, **options)

    def __len__(self) -> int:
        return len(self.tools)

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.embedder is not None
        vectors = np.asarray(self.embedder.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise EmbeddingError(
                f"embedder {self.embedder.name!r} returned shape {vectors.shape} "
                f"for {len(texts)} texts"
            )
        if self._vectors is not None and vectors.shape[1] != self._vectors.shape[1]:
            raise EmbeddingError(
                f"embedder {self.embedder.name!r} returned {vectors.shape[1]} dimensions, "
                f"the catalogue was embedded with {self._vectors.shape[1]}"
            )
        return vectors

    # -- scoring ---------------------------------------------------------------------------

    def scores(self, goal: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """For every tool: BM25 score, cosine similarity (``None`` without an embedder) and
        calibrated relevance."""
        if not isinstance(goal, str):
            raise TypeError(f"goal must be a string, got {type(goal).__name__}")
        if not goal.strip():
            raise ValueError("the goal is empty: nothing to rank tools against")
        # Relevance counts the same words BM25 scores: a number the goal passes as an argument
        # is no evidence that a tool mentioning that number fits.
        words = _without_numbers(goal)
        lexical = self._lexical.scores(words)
        semantic = None
        if self._vectors is not None:
            semantic = self._vectors @ self._embed([goal])[0]
        relevance = self.calibration.relevance(semantic, self._lexical.matches(words))
        return lexical, semantic, relevance

    def _fuse(self, lexical: np.ndarray, semantic: np.ndarray | None) -> np.ndarray:
        if semantic is None:
            return lexical
        if self.fusion == "rrf":
            # BM25 only ranks the tools it scores; the others get no lexical vote.
            votes = _reciprocal_ranks(lexical, self.rrf_k) * (lexical > 0)
            return votes + _reciprocal_ranks(semantic, self.rrf_k)
        best = float(lexical.max())
        lexical_part = lexical / best if best > 0 else np.zeros_like(lexical)
        w = self.semantic_weight
        return (1.0 - w) * lexical_part + w * semantic

    def _named(self, goal: str) -> np.ndarray:
        """Which tools ``goal`` names, as a boolean per tool.

        BM25 cannot tell the tool ``search`` from ``web_search`` for the goal "search": both
        contain the word, and length normalisation favours the shorter description. A goal
        names a tool when its words are the tool's name, in order, stop words and numbers
        aside ("primes", "is 7 prime?"; the name's stop words count, so that "primes" does
        not name ``is_prime``), or when it writes a name of several words as it is written
        (``celsius_to_fahrenheit``), which no request does by accident. A name that is merely
        one word of a longer request is no such evidence: many of BFCL's tools are named by a
        common word ("help", "add"), and lifting every tool whose name words occur in the goal
        cost its pooled catalogue a quarter of its right first choices (top-1 0.651 to 0.476).
        """
        words = _without_numbers(goal)
        content = len(tokenize(words, stemming=False))
        sequence = f" {' '.join(tokenize(words, drop_stop_words=False, stemming=False))} "
        lowered = goal.lower()
        return np.array([n.named_by(sequence, content, lowered) for n in self._names], dtype=bool)

    def rank(self, goal: str, k: int = 10) -> list[RankedTool]:
        """The ``k`` best tools for ``goal``, best first.

        Fewer than ``k`` come back when the catalogue is smaller or, without an embedder, when
        fewer tools share a word with the goal (a tool with no evidence is never ranked). A
        ranked tool is not necessarily a fitting one: check :attr:`RankedTool.fits`, or use
        :meth:`fitting`, before calling it.
        """
        return self._ranked(goal, k)[0]

    def rank_scored(self, goal: str, k: int = 10) -> tuple[list[RankedTool], dict[str, float]]:
        """:meth:`rank`, and the score of every tool with any evidence, by name.

        A reranker that lifts a tool from below the first ``k`` (because history says it
        answers goals like this one) needs that tool's own score to weigh it, not zero.
        """
        ranked, fused = self._ranked(goal, k)
        return ranked, {self.tools[i].name: float(fused[i]) for i in np.flatnonzero(fused > 0)}

    def _ranked(self, goal: str, k: int) -> tuple[list[RankedTool], np.ndarray]:
        """The ``k`` best tools, and every tool's fused score."""
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"k must be an int, got {type(k).__name__}")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        lexical, semantic, relevance = self.scores(goal)
        fused = self._fuse(lexical, semantic)
        # A named tool gets the best score on top of its own: ahead of every tool not named,
        # and, when the goal names several, in their usual order.
        fused = fused + self._named(goal) * max(float(fused.max()), 0.0)
        order = np.lexsort((np.arange(len(fused)), -fused))
        if semantic is None:
            order = order[lexical[order] > 0]
        ranked = [
            RankedTool(
                name=self.tools[i].name,
                score=float(fused[i]),
                lexical_score=float(lexical[i]),
                semantic_score=None if semantic is None else float(semantic[i]),
                relevance=float(relevance[i]),
                fits=bool(relevance[i] >= self.threshold),
                index=int(i),
            )
            for i in order[:k]
        ]
        return ranked, fused

    def fitting(self, goal: str, k: int = 10) -> list[RankedTool]:
        """:meth:`rank` keeping only the tools that fit; an empty list means: call no tool."""
        return [r for r in self.rank(goal, k) if r.fits]

    def best_relevance(self, goal: str) -> float:
        """The highest calibrated relevance of any tool for ``goal`` (0 to 1)."""
        return float(self.scores(goal)[2].max())


def _reciprocal_ranks(scores: np.ndarray, k: int) -> np.ndarray:
    """``1 / (k + rank)`` for each item, rank 1 being the highest score (ties by position)."""
    n = len(scores)
    order = np.lexsort((np.arange(n), -scores))
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.arange(1, n + 1)
    return 1.0 / (k + ranks)
