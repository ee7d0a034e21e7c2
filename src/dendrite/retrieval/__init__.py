"""Retrieval: ranking tools (and other short texts) for a goal, lexically and semantically.

- :class:`LexicalIndex`: BM25 over short texts with an identifier-aware tokenizer.
- :class:`Embedder`: texts to unit vectors; :class:`SentenceTransformerEmbedder` (the
  ``neural`` extra) and :class:`OpenAIEmbedder` (any OpenAI-compatible endpoint).
- :class:`ToolRetriever`: hybrid ranking of tools for a goal, with a "no tool fits" signal.
"""

from dendrite.retrieval.embedding import (
    Embedder,
    EmbeddingError,
    NeuralExtraMissingError,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    normalize_rows,
)
from dendrite.retrieval.lexical import LexicalIndex, tokenize
from dendrite.retrieval.tools import (
    BALANCED_THRESHOLD,
    HYBRID_CALIBRATION,
    LENIENT_THRESHOLD,
    LEXICAL_CALIBRATION,
    Calibration,
    RankedTool,
    ToolDoc,
    ToolRetriever,
)

__all__ = [
    "BALANCED_THRESHOLD",
    "HYBRID_CALIBRATION",
    "LENIENT_THRESHOLD",
    "LEXICAL_CALIBRATION",
    "Calibration",
    "Embedder",
    "EmbeddingError",
    "LexicalIndex",
    "NeuralExtraMissingError",
    "OpenAIEmbedder",
    "RankedTool",
    "SentenceTransformerEmbedder",
    "ToolDoc",
    "ToolRetriever",
    "normalize_rows",
    "tokenize",
]
