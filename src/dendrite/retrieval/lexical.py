"""Lexical (BM25) retrieval over short texts such as tool names and descriptions.

The index is built on :mod:`bm25s` (sparse, numpy-only). What matters for tool catalogues is
the tokenizer: identifiers like ``get_weather_forecast`` or ``findRestaurantNearby`` must
match queries written in plain English, so identifiers are split on ``snake_case``,
``camelCase``, digits and punctuation, lower-cased, stop words are dropped and a light
stemmer (Porter's steps 1 and 5a) folds plural/verb forms together (``restaurants`` ~
``restaurant``, ``calculates`` ~ ``calculated``). Text is first brought to Unicode's NFKC
form, as the text tools normalise it, so that decomposed accents (``résumé`` as macOS writes
file names), full-width letters and ligatures match their usual forms. Words are letters,
digits and combining marks of any script (``Größe``, ``café``, ``हिन्दी``); scripts written
without spaces between words (Chinese, Japanese, Thai) are cut into overlapping pairs of
characters, as CJK search indexes do, so that ``北京的天气`` and ``天气预报`` share ``天气``.
Mixed-case acronyms (``OAuth``, ``IPv6``, ``iOS``) are kept whole as well as split, so that
``refreshOAuthToken`` matches "oauth".
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

import bm25s
import numpy as np

__all__ = [
    "STOP_WORDS",
    "WORD",
    "LexicalIndex",
    "split_identifiers",
    "split_words",
    "stem",
    "tokenize",
]

# A compact English stop list (articles, pronouns, auxiliaries, prepositions, conjunctions and
# filler words common in requests such as "please", "can you", "I want to").
_STOP_WORDS_TEXT = """
    a about above after again against all also am an and any are aren as at be because been
    before being below between both but by can cannot could couldn d did didn do does doesn
    doing don down during each either else etc ever every few for from further had hadn has
    hasn have haven having he her here hers herself him himself his how i if in into is isn it
    its itself just let ll m me might more most must mustn my myself need needs no nor not now
    o of off on once only or other ought our ours ourselves out over own please re s same
    shall shan she should shouldn so some such t than that the their theirs them themselves
    then there these they this those through to too under until up us ve very was wasn we
    were weren what when where which while who whom whose why will with within without won
    would wouldn y yes yet you your yours yourself yourselves want wants like
"""
STOP_WORDS: frozenset[str] = frozenset(_STOP_WORDS_TEXT.split())

# camelCase / PascalCase / acronym boundaries, e.g. "getHTTPResponseCode" ->
# "get HTTP Response Code"; digits are separated from letters.
_CAMEL_1 = re.compile(r"([a-z0-9])([A-Z])")
_CAMEL_2 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_LETTER_DIGIT = re.compile(r"(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
# A mixed-case acronym that camelCase splitting would break, leaving a lone letter (mostly a
# stop word): "OAuth" -> "O Auth", "IPv6" -> "I Pv 6", "iOS" -> "i OS", "eBay" -> "e Bay".
_MIXED_ACRONYM = re.compile(
    r"(?<![A-Za-z0-9])[a-z](?:[A-Z]+(?![a-z])|[A-Z][a-z]+)|(?<![A-Z])[A-Z][A-Z][a-z]+"
)
# Scripts without spaces between words: Thai, kana, CJK ideographs (and their extensions).
_UNSPACED = "\u0e00-\u0e7f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"


def _combining_marks() -> str:
    """The combining marks (Unicode category M) as the body of a regex character class.

    Python's ``re`` has no ``\\p{M}``, and its ``\\w`` leaves marks out: Hindi's vowel signs
    and viramas would cut its words into letters. Marks are only found in planes 0, 1 and 14
    (plane 2 and 3 hold ideographs, the rest nothing or private use), so only those are
    scanned, which keeps the import fast; a test checks the whole code space.
    """
    marks = [
        c
        for plane in (0, 1, 14)
        for c in range(plane << 16, (plane + 1) << 16)
        if unicodedata.category(chr(c)).startswith("M")
    ]
    ranges: list[list[int]] = []
    for c in marks:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    return "".join(f"{chr(a)}-{chr(b)}" for a, b in ranges)


WORD = re.compile(f"(?:[^\\W_]|[{_UNSPACED}{_combining_marks()}])+")
"""A word as the index reads one before cutting it at case and digit changes: letters and
digits of any script, and the marks those scripts write their words with."""
_HAS_UNSPACED = re.compile(f"[{_UNSPACED}]").search
_UNSPACED_RUNS = re.compile(f"[{_UNSPACED}]+|[^{_UNSPACED}]+").findall


def _pairs(words: list[str]) -> list[str]:
    """Runs of unspaced scripts as overlapping character pairs (a lone character stays)."""
    out = []
    for word in words:
        for run in _UNSPACED_RUNS(word):
            if len(run) > 1 and _HAS_UNSPACED(run):
                out.extend(run[i : i + 2] for i in range(len(run) - 1))
            else:
                out.append(run)
    return out


def split_identifiers(text: str) -> str:
    """``"getHTTPResponse_v2"`` -> ``"get HTTP Response_v 2"``: camelCase and digit boundaries."""
    text = _CAMEL_2.sub(r"\1 \2", _CAMEL_1.sub(r"\1 \2", text))
    return _LETTER_DIGIT.sub(" ", text)


def split_words(text: str) -> list[str]:
    """The lower-case words of ``text``, in order, before stop words and stemming.

    ``"getWeather_v2"`` -> ``["get", "weather", "v", "2"]``; a mixed-case acronym comes whole
    before its pieces (``"refreshOAuthToken"`` -> ``["refresh", "oauth", "o", "auth",
    "token"]``), since its lone first letter, dropped as a stop word, left ``"auth"`` alone.
    Lower-casing Turkish ``İ`` leaves a dot above ``i``, which is dropped: ``İstanbul`` is
    ``istanbul``.
    """
    text = unicodedata.normalize("NFKC", text)
    text = _MIXED_ACRONYM.sub(lambda m: f" {m[0].lower()} {m[0]}", text)
    return WORD.findall(split_identifiers(text).lower().replace("i\u0307", "i"))


def _is_consonant(word: str, i: int) -> bool:
    ch = word[i]
    if ch in "aeiou":
        return False
    if ch == "y":
        return i == 0 or not _is_consonant(word, i - 1)
    return True


def _measure(stem_: str) -> int:
    """Porter's *m*: the number of vowel-consonant sequences in ``stem_``."""
    m, prev_vowel = 0, False
    for i in range(len(stem_)):
        vowel = not _is_consonant(stem_, i)
        if prev_vowel and not vowel:
            m += 1
        prev_vowel = vowel
    return m


def _has_vowel(stem_: str) -> bool:
    return any(not _is_consonant(stem_, i) for i in range(len(stem_)))


def _ends_cvc(w: str) -> bool:
    return (
        len(w) >= 3
        and _is_consonant(w, len(w) - 3)
        and not _is_consonant(w, len(w) - 2)
        and _is_consonant(w, len(w) - 1)
        and w[-1] not in "wxy"
    )


def stem(word: str) -> str:
    """Porter's steps 1 and 5a (plurals, ``-ed``/``-ing``, final ``-y``/``-e``): a light stemmer.

    It folds the inflections that matter when matching requests to tool descriptions
    (``restaurants`` ~ ``restaurant``, ``stored`` ~ ``store``, ``calculates`` ~ ``calculated``,
    ``cities`` ~ ``city``) without the aggressive derivational stripping of the full algorithm.
    """
    if len(word) <= 2 or not word.isalpha() or not word.isascii():
        return word
    w = word
    # Step 1a: plurals.
    if w.endswith(("sses", "ies")):
        w = w[:-2]
    elif w.endswith("s") and not w.endswith(("ss", "us", "is")):
        w = w[:-1]
    # Step 1b: -eed / -ed / -ing.
    if w.endswith("eed"):
        if _measure(w[:-3]) > 0:
            w = w[:-1]
    else:
        for suffix in ("ed", "ing"):
            if w.endswith(suffix) and _has_vowel(w[: -len(suffix)]):
                w = w[: -len(suffix)]
                if w.endswith(("at", "bl", "iz")):
                    w += "e"
                elif len(w) >= 2 and w[-1] == w[-2] and w[-1] not in "lsz":
                    w = w[:-1]
                elif _measure(w) == 1 and _ends_cvc(w):
                    w += "e"
                break
    # Step 1c: final y -> i when the stem has a vowel (city / cities -> citi).
    if w.endswith("y") and _has_vowel(w[:-1]):
        w = w[:-1] + "i"
    # Step 5a: a final -e goes unless the stem is short and ends consonant-vowel-consonant
    # (matche/match, calculate/calculat, but store and price keep it).
    if w.endswith("e") and len(w) >= 3:
        m = _measure(w[:-1])
        if m > 1 or (m == 1 and not _ends_cvc(w[:-1])):
            w = w[:-1]
    return w


def tokenize(text: str, *, drop_stop_words: bool = True, stemming: bool = True) -> list[str]:
    """Split ``text`` into lower-case word tokens.

    ``snake_case``, ``kebab-case``, ``dotted.names``, ``camelCase`` and letter/digit boundaries
    all separate words; English stop words are removed (unless ``drop_stop_words`` is false) and
    a light stemmer is applied (unless ``stemming`` is false).
    """
    words = split_words(text)
    if _HAS_UNSPACED(text):
        words = _pairs(words)
    if drop_stop_words:
        words = [w for w in words if w not in STOP_WORDS]
    if stemming:
        words = [stem(w) for w in words]
    return words


class LexicalIndex:
    """BM25 over short texts (bm25s), with a tokenizer that splits snake_case/camelCase and
    drops English stop words."""

    def __init__(
        self,
        documents: Sequence[str],
        *,
        k1: float = 1.2,
        b: float = 0.75,
    ) -> None:
        if isinstance(documents, str):
            raise TypeError("documents must be a sequence of strings, not a single string")
        self._size = len(documents)
        self._bm25: bm25s.BM25 | None = None
        self._postings: dict[str, np.ndarray] = {}
        if self._size == 0:
            return
        corpus = [tokenize(doc) for doc in documents]
        postings: dict[str, list[int]] = {}
        for i, tokens in enumerate(corpus):
            for token in set(tokens):
                postings.setdefault(token, []).append(i)
        if not postings:
            # No document has a word (stop words only, or empty texts): bm25s cannot index an
            # empty vocabulary, and there is nothing a query could match anyway.
            return
        self._postings = {t: np.asarray(ids, dtype=np.int64) for t, ids in postings.items()}
        self._bm25 = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._bm25.index(corpus, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every document for ``query`` (0 where no query term matches)."""
        if self._bm25 is None:
            return np.zeros(self._size, dtype=np.float32)
        ids = self._bm25.get_tokens_ids([t for t in tokenize(query) if t])
        if not ids:
            return np.zeros(self._size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores_from_ids(ids), dtype=np.float32)

    def matches(self, query: str) -> np.ndarray:
        """How many distinct query terms (after tokenizing) occur in each document.

        Unlike a BM25 score this does not depend on the rest of the collection, which makes it
        usable as an absolute relevance signal.
        """
        counts = np.zeros(self._size, dtype=np.int64)
        if self._bm25 is None:
            return counts
        for token in set(tokenize(query)):
            ids = self._postings.get(token)
            if ids is not None:
                counts[ids] += 1
        return counts

    def search(self, query: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` best documents for ``query`` as ``(document index, score)``, best first.

        Only documents with a positive score are returned, so the list may be shorter than
        ``k`` (or empty when no query term occurs in the index).
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        scores = self.scores(query)
        if scores.size == 0:
            return []
        # Higher score first, ties by document index (deterministic).
        top = np.lexsort((np.arange(scores.size), -scores))[:k]
        return [(int(i), float(scores[i])) for i in top if scores[i] > 0]

    def __len__(self) -> int:
        return self._size
