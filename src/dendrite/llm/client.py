"""An OpenAI-compatible chat client (OpenAI, Ollama, vLLM, llama.cpp) through the ``openai`` SDK.

Configuration comes from ``DENDRITE_LLM_BASE_URL``, ``DENDRITE_LLM_MODEL`` and
``DENDRITE_LLM_API_KEY`` (local servers accept any key). Structured output is
asked for with a JSON schema; a server that refuses ``json_schema`` response
formats is asked again with ``json_object`` and remembered, since older
llama.cpp and Ollama builds only know the latter.

Model tiers: ``DENDRITE_LLM_TIERS`` names several models on the same server,
each with a relative cost per call (``small=qwen2.5:7b@0.1,large=qwen2.5:72b@1``).
A call made inside :func:`llm_tier` uses that tier's model; the orchestrator
enters it for each run its router sends to a tier, so the planner and the
tools of the run all ask the model the router chose. ``DENDRITE_LLM_COST_WEIGHT``
says how much success one unit of cost is worth to that router.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import openai

ENV_BASE_URL = "DENDRITE_LLM_BASE_URL"
ENV_MODEL = "DENDRITE_LLM_MODEL"
ENV_API_KEY = "DENDRITE_LLM_API_KEY"
ENV_TIERS = "DENDRITE_LLM_TIERS"
ENV_COST_WEIGHT = "DENDRITE_LLM_COST_WEIGHT"
DEFAULT_COST_WEIGHT = 0.1

_tier: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dendrite_llm_tier", default=None
)


@contextlib.contextmanager
def llm_tier(name: str | None) -> Iterator[None]:
    """Calls made in this block (and in tasks started from it) use tier ``name``'s model.

    A context variable rather than an argument, because the caller that knows
    the tier (the orchestrator) is not the one that calls the model (a planner,
    a tool). ``None``, or a tier the client does not have, means its default model.
    """
    token = _tier.set(name)
    try:
        yield
    finally:
        _tier.reset(token)


class LLMError(RuntimeError):
    """The model server could not be reached, refused the request, or answered nothing usable."""


class LLMFormatError(LLMError):
    """The model answered, but not in the format asked for; ``text`` is what it said."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True, slots=True)
class LLMTier:
    """One model a router may send a task to, and what a call to it costs (relative units)."""

    name: str
    model: str
    cost: float = 0.0


@dataclass(frozen=True, slots=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str = "not-needed"
    timeout: float = 60.0
    max_retries: int = 2
    tiers: tuple[LLMTier, ...] = ()
    cost_weight: float = DEFAULT_COST_WEIGHT

    def __post_init__(self) -> None:
        names = [tier.name for tier in self.tiers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tier names must be distinct; repeated: {', '.join(repeated)}")
        for tier in self.tiers:
            if not math.isfinite(tier.cost) or tier.cost < 0:
                raise ValueError(f"tier {tier.name!r}: cost must be a number >= 0, got {tier.cost}")
        if not math.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise ValueError(f"cost_weight must be a number >= 0, got {self.cost_weight}")

    def model_for(self, tier: str | None) -> str:
        """The model of ``tier``; the default model for None or a tier not configured."""
        for candidate in self.tiers:
            if candidate.name == tier:
                return candidate.model
        return self.model

    @classmethod
    def from_env(cls) -> LLMConfig | None:
        """The configured server, or None when ``DENDRITE_LLM_BASE_URL`` is unset."""
        base_url = os.environ.get(ENV_BASE_URL, "").strip()
        tiers = _parse_tiers(os.environ.get(ENV_TIERS, ""))
        if not base_url:
            if tiers:
                raise ValueError(f"{ENV_TIERS} is set but {ENV_BASE_URL} is not: name the server")
            return None
        model = os.environ.get(ENV_MODEL, "").strip() or (tiers[0].model if tiers else "")
        if not model:
            raise ValueError(
                f"{ENV_BASE_URL} is set but {ENV_MODEL} is not: name the model to use "
                f"(or several, with {ENV_TIERS})"
            )
        weight_text = os.environ.get(ENV_COST_WEIGHT, "").strip()
        try:
            weight = float(weight_text) if weight_text else DEFAULT_COST_WEIGHT
        except ValueError:
            raise ValueError(f"{ENV_COST_WEIGHT} must be a number, got {weight_text!r}") from None
        api_key = os.environ.get(ENV_API_KEY, "").strip() or "not-needed"
        return cls(base_url, model, api_key, tiers=tiers, cost_weight=weight)


def _parse_tiers(text: str) -> tuple[LLMTier, ...]:
    """``name=model@cost`` items separated by commas; the cost is optional (0)."""
    tiers = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, equals, rest = item.partition("=")
        model, at, cost_text = rest.rpartition("@") if "@" in rest else (rest, "", "")
        name, model, cost_text = name.strip(), model.strip(), cost_text.strip()
        if not equals or not name or not model:
            raise ValueError(f"{ENV_TIERS}: {item!r} is not NAME=MODEL or NAME=MODEL@COST")
        try:
            cost = float(cost_text) if at else 0.0
        except ValueError:
            raise ValueError(f"{ENV_TIERS}: the cost in {item!r} is not a number") from None
        if not math.isfinite(cost) or cost < 0:
            raise ValueError(f"{ENV_TIERS}: the cost in {item!r} must be a number >= 0")
        tiers.append(LLMTier(name, model, cost))
    return tuple(tiers)


class ChatLLM:
    """One OpenAI-compatible server: its default model, and its tiers' models if configured."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=config.api_key,
            timeout=config.timeout,
            max_retries=config.max_retries,
        )
        self._json_schema_supported = True

    @property
    def name(self) -> str:
        return f"{self.model} at {self.config.base_url}"

    @property
    def model(self) -> str:
        """The model a call made here and now would ask: the current tier's, or the default."""
        return self.config.model_for(_tier.get())

    @classmethod
    def from_env(cls) -> ChatLLM | None:
        config = LLMConfig.from_env()
        return cls(config) if config else None

    async def complete(
        self,
        messages: Sequence[dict[str, str]],
        *,
        json_schema: dict[str, Any] | None = None,
        temperature: float = 0.0,
    ) -> str:
        """The assistant's text; with ``json_schema``, text that parses as a JSON object."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": list(messages),
            "temperature": temperature,
        }
        if json_schema is not None:
            if self._json_schema_supported:
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": json_schema},
                }
            else:
                kwargs["response_format"] = {"type": "json_object"}
        try:
            response = await self._client.chat.completions.create(**kwargs)
        except openai.BadRequestError as error:
            if json_schema is None or not self._json_schema_supported:
                raise LLMError(f"{self.name} refused the request: {error}") from error
            self._json_schema_supported = False
            return await self.complete(messages, json_schema=json_schema, temperature=temperature)
        except openai.APIError as error:
            raise LLMError(f"{self.name} failed: {error}") from error
        if not response.choices or response.choices[0].message.content is None:
            raise LLMError(f"{self.name} returned no message")
        text = response.choices[0].message.content
        if json_schema is not None:
            try:
                parsed = json.loads(_strip_fence(text))
            except json.JSONDecodeError as error:
                raise LLMFormatError(f"the answer is not JSON: {error}", text) from None
            if not isinstance(parsed, dict):
                raise LLMFormatError("the answer is JSON but not an object", text)
            return json.dumps(parsed)
        return text

    async def aclose(self) -> None:
        await self._client.close()


def _strip_fence(text: str) -> str:
    """Models asked for JSON sometimes wrap it in a Markdown code fence anyway."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()
