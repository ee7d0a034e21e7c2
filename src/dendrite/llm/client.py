"""An OpenAI-compatible chat client (OpenAI, Ollama, vLLM, llama.cpp) through the ``openai`` SDK.

Configuration comes from ``DENDRITE_LLM_BASE_URL``, ``DENDRITE_LLM_MODEL`` and
``DENDRITE_LLM_API_KEY`` (local servers accept any key). Structured output is
asked for with a JSON schema; a server that refuses ``json_schema`` response
formats is asked again with ``json_object`` and remembered, since older
llama.cpp and Ollama builds only know the latter.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import openai

ENV_BASE_URL = "DENDRITE_LLM_BASE_URL"
ENV_MODEL = "DENDRITE_LLM_MODEL"
ENV_API_KEY = "DENDRITE_LLM_API_KEY"


class LLMError(RuntimeError):
    """The model server could not be reached, refused the request, or answered nothing usable."""


class LLMFormatError(LLMError):
    """The model answered, but not in the format asked for; ``text`` is what it said."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True, slots=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str = "not-needed"
    timeout: float = 60.0
    max_retries: int = 2

    @classmethod
    def from_env(cls) -> LLMConfig | None:
        """The configured server, or None when ``DENDRITE_LLM_BASE_URL`` is unset."""
        base_url = os.environ.get(ENV_BASE_URL, "").strip()
        if not base_url:
            return None
        model = os.environ.get(ENV_MODEL, "").strip()
        if not model:
            raise ValueError(f"{ENV_BASE_URL} is set but {ENV_MODEL} is not: name the model to use")
        return cls(base_url, model, os.environ.get(ENV_API_KEY, "").strip() or "not-needed")


class ChatLLM:
    """One model on one OpenAI-compatible server."""

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
        return f"{self.config.model} at {self.config.base_url}"

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
            "model": self.config.model,
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
