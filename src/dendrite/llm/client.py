"""An OpenAI-compatible chat client (OpenAI, Ollama, vLLM, llama.cpp) through the ``openai`` SDK.

Configuration comes from ``DENDRITE_LLM_BASE_URL``, ``DENDRITE_LLM_MODEL`` and
``DENDRITE_LLM_API_KEY`` (local servers accept any key). Structured output is
asked for with a JSON schema; a server that refuses ``json_schema`` response
formats is asked again with ``json_object`` and remembered, since older
llama.cpp and Ollama builds only know the latter.

Model tiers: ``DENDRITE_LLM_TIERS`` names several models (``small=qwen2.5:7b,
large=qwen2.5:72b``), on the configured server unless ``DENDRITE_LLM_TIER_URLS``
(``large=https://api.example.com/v1``) and ``DENDRITE_LLM_TIER_API_KEYS`` put a tier
on a server of its own. What a call costs is set per tier, in any
one unit: ``DENDRITE_LLM_TIER_COSTS`` a price per call (``small=0.1,large=1``) and
``DENDRITE_LLM_TIER_PRICES`` a price per million tokens, prompt/completion
(``small=0.15/0.6,large=2.5/10``; one number prices both), read from the usage the
server reports; a call costs the sum, and a tier left out of both costs 0. A call
made inside :func:`llm_tier` uses that tier's model; the orchestrator enters it for
each run its router sends to a tier, so the planner and the tools of the run all
ask the model the router chose. ``DENDRITE_LLM_COST_WEIGHT`` says how much success
one unit of cost is worth to that router.

Every call is counted, with its tokens and cost, in the :func:`llm_usage` blocks it
is made in: the orchestrator opens one per run, records the run's tokens and cost
from it, and charges the run's route with them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import email.utils
import json
import math
import os
import random
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import openai

ENV_BASE_URL = "DENDRITE_LLM_BASE_URL"
ENV_MODEL = "DENDRITE_LLM_MODEL"
ENV_API_KEY = "DENDRITE_LLM_API_KEY"
ENV_TIERS = "DENDRITE_LLM_TIERS"
ENV_TIER_COSTS = "DENDRITE_LLM_TIER_COSTS"
ENV_TIER_PRICES = "DENDRITE_LLM_TIER_PRICES"
ENV_TIER_URLS = "DENDRITE_LLM_TIER_URLS"
ENV_TIER_API_KEYS = "DENDRITE_LLM_TIER_API_KEYS"
ENV_COST_WEIGHT = "DENDRITE_LLM_COST_WEIGHT"
DEFAULT_COST_WEIGHT = 0.1


@dataclass(slots=True)
class LLMUsage:
    """The calls made to the model inside one :func:`llm_usage` block: how many, the
    tokens they used and what they cost, nested blocks' calls included.

    ``cost`` stays ``None`` until a call to a priced model (one of the configured
    tiers' models) is made: an unpriced call costs something unknown, not 0.
    ``unreported`` counts the answered calls whose server reported no token usage,
    so a total that misses them can say so. Shared by every task and thread the
    block's context reaches, hence the lock.
    """

    calls: int = 0
    answered: int = 0
    """Calls the model answered: none of several calls means its tier was down."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unreported: int = 0
    cost: float | None = None
    parent: LLMUsage | None = field(default=None, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def tokens(self) -> int | None:
        """Prompt and completion tokens, or None when no call reported any."""
        if self.prompt_tokens or self.completion_tokens:
            return self.prompt_tokens + self.completion_tokens
        return None

    def add(
        self,
        prompt_tokens: int,
        completion_tokens: int,
        reported: bool,
        cost: float | None,
        *,
        answered: bool = True,
    ) -> None:
        """One call, counted here and in every enclosing block."""
        usage: LLMUsage | None = self
        while usage is not None:
            with usage._lock:
                usage.calls += 1
                usage.answered += 1 if answered else 0
                usage.prompt_tokens += prompt_tokens
                usage.completion_tokens += completion_tokens
                usage.unreported += 0 if reported else 1
                if cost is not None:
                    usage.cost = (usage.cost or 0.0) + cost
            usage = usage.parent

    def summary(self) -> dict[str, Any]:
        """What a run's record keeps of it (``metadata.llm_usage``)."""
        return {
            "calls": self.calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "unreported": self.unreported,
            "cost": None if self.cost is None else round(self.cost, 9),
        }


_tier: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "dendrite_llm_tier", default=None
)
_usage: contextvars.ContextVar[LLMUsage | None] = contextvars.ContextVar(
    "dendrite_llm_usage", default=None
)


@contextlib.contextmanager
def llm_tier(name: str | None) -> Iterator[None]:
    """Calls made in this block (and in tasks started from it) use tier ``name``'s model.

    A context variable rather than an argument, because the caller that knows
    the tier (the orchestrator) is not the one that calls the model (a planner,
    a tool). ``None``, or a tier the client does not have, means its default
    model.
    """
    token = _tier.set(name)
    try:
        yield
    finally:
        _tier.reset(token)


@contextlib.contextmanager
def llm_usage() -> Iterator[LLMUsage]:
    """Counts the calls made in this block (and in tasks started from it).

    Blocks nest: a call is counted in the innermost block and in every block
    around it, as a run's duration includes its nested runs'. The orchestrator
    opens one per run.
    """
    usage = LLMUsage(parent=_usage.get())
    token = _usage.set(usage)
    try:
        yield usage
    finally:
        _usage.reset(token)


class LLMError(RuntimeError):
    """The model server could not be reached, refused the request, or answered nothing usable."""


class LLMFormatError(LLMError):
    """The model answered, but not in the format asked for; ``text`` is what it said."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


@dataclass(frozen=True, slots=True)
class LLMTier:
    """One model a router may send a run to, and what a call to it costs (any one unit):
    ``cost`` per call, plus ``prompt_price`` and ``completion_price`` per million tokens.
    ``base_url`` and ``api_key`` put it on a server of its own (a local small model, a
    hosted large one); ``None`` means the configuration's."""

    name: str
    model: str
    cost: float = 0.0
    prompt_price: float = 0.0
    completion_price: float = 0.0
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)

    def call_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        tokens = prompt_tokens * self.prompt_price + completion_tokens * self.completion_price
        return self.cost + tokens / 1_000_000


@dataclass(frozen=True, slots=True)
class LLMConfig:
    base_url: str
    model: str
    api_key: str = field(default="not-needed", repr=False)
    timeout: float = 60.0
    max_retries: int = 2
    tiers: tuple[LLMTier, ...] = ()
    cost_weight: float = DEFAULT_COST_WEIGHT
    default_tier: str | None = None
    """The tier whose model, server and prices calls made outside any tier use; when not
    given, the first tier whose model is ``model`` (with ``DENDRITE_LLM_MODEL`` unset,
    ``model`` is the first tier's), if any. No such tier: ``model`` on ``base_url``."""

    def __post_init__(self) -> None:
        names = [tier.name for tier in self.tiers]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"tier names must be distinct; repeated: {', '.join(repeated)}")
        if self.default_tier is not None and self.default_tier not in names:
            raise ValueError(f"default_tier {self.default_tier!r} is not a tier")
        if self.default_tier is None:
            same = next((tier.name for tier in self.tiers if tier.model == self.model), None)
            object.__setattr__(self, "default_tier", same)
        if not _is_http_url(self.base_url):  # every call would fail with "Connection error."
            raise ValueError(
                f"{ENV_BASE_URL} (base_url) must start with http:// or https://, "
                f"got {redacted_url(self.base_url)!r}"
            )
        check_key(f"{ENV_API_KEY} (api_key)", self.api_key)
        for tier in self.tiers:
            if tier.api_key is not None:
                check_key(f"tier {tier.name!r}: {ENV_TIER_API_KEYS} (api_key)", tier.api_key)
            if tier.base_url is not None and not _is_http_url(tier.base_url):
                raise ValueError(
                    f"tier {tier.name!r}: base_url must be an http:// or https:// URL, "
                    f"got {redacted_url(tier.base_url)!r}"
                )
            for label, value in (
                ("cost", tier.cost),
                ("prompt_price", tier.prompt_price),
                ("completion_price", tier.completion_price),
            ):
                if not math.isfinite(value) or value < 0:
                    raise ValueError(
                        f"tier {tier.name!r}: {label} must be a number >= 0, got {value}"
                    )
        if not math.isfinite(self.cost_weight) or self.cost_weight < 0:
            raise ValueError(f"cost_weight must be a number >= 0, got {self.cost_weight}")
        check_timeout(self.timeout)
        # Retried by ChatLLM itself, so not checked by the SDK any more.
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_retries must be a whole number >= 0, got {retries!r}")

    def tier(self, name: str | None) -> LLMTier | None:
        for candidate in self.tiers:
            if candidate.name == name:
                return candidate
        return None

    def in_effect(self, tier: str | None) -> LLMTier | None:
        """The tier whose model, server and prices a call in ``tier`` uses: ``tier`` when
        configured, else (outside any tier) the default tier; None: the configuration's
        model and server, at no known price."""
        found = self.tier(tier)
        return found if found is not None else self.tier(self.default_tier)

    def server_for(self, tier: str | None) -> tuple[str, str]:
        """(base URL, API key) of the server a call in ``tier`` goes to: the tier's own when
        it has one (outside any tier, the default tier's), else the configuration's."""
        found = self.in_effect(tier)
        if found is None:
            return self.base_url, self.api_key
        return found.base_url or self.base_url, found.api_key or self.api_key

    def model_for(self, tier: str | None) -> str:
        """The model of ``tier``; the default model for None or a tier not configured."""
        found = self.in_effect(tier)
        return found.model if found is not None else self.model

    @classmethod
    def from_env(cls) -> LLMConfig | None:
        """The configured server, or None when ``DENDRITE_LLM_BASE_URL`` is unset."""
        base_url = os.environ.get(ENV_BASE_URL, "").strip()
        tiers = _tiers_from_env()
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
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{ENV_COST_WEIGHT} must be a number >= 0, got {weight_text!r}")
        api_key = os.environ.get(ENV_API_KEY, "").strip() or "not-needed"
        return cls(base_url, model, api_key, tiers=tiers, cost_weight=weight)


def _pairs(variable: str) -> list[tuple[str, str]]:
    """``NAME=VALUE`` items separated by commas; the value is everything after the first ``=``.

    A malformed item of a variable of keys is not quoted back: it may be a bare key."""
    pairs = []
    items = [part.strip() for part in os.environ.get(variable, "").split(",")]
    for number, item in enumerate((i for i in items if i), start=1):
        name, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not name or not value:
            shown = f"item {number}" if variable == ENV_TIER_API_KEYS else repr(item)
            raise ValueError(f"{variable}: {shown} is not NAME=VALUE")
        pairs.append((name, value))
    return pairs


def _tiers_from_env() -> tuple[LLMTier, ...]:
    """Model names may hold ``:``, ``@``, ``/`` or ``=`` (``claude-3-5-haiku@20241022``),
    so costs come in a variable of their own rather than inside the model's name."""
    tiers = _pairs(ENV_TIERS)
    names = [name for name, _ in tiers]
    costs = {
        name: _price(ENV_TIER_COSTS, name, text)
        for name, text in _tier_pairs(ENV_TIER_COSTS, names)
    }
    prices: dict[str, tuple[float, float]] = {}
    for name, text in _tier_pairs(ENV_TIER_PRICES, names):
        prompt, slash, completion = text.partition("/")
        prices[name] = (
            _price(ENV_TIER_PRICES, name, prompt),
            _price(ENV_TIER_PRICES, name, completion)
            if slash
            else _price(ENV_TIER_PRICES, name, prompt),
        )
    urls = dict(_tier_pairs(ENV_TIER_URLS, names))
    for name, url in urls.items():
        if not _is_http_url(url):
            raise ValueError(
                f"{ENV_TIER_URLS}: the URL of {name!r} must start with http:// "
                f"or https://, got {redacted_url(url)!r}"
            )
    keys = dict(_tier_pairs(ENV_TIER_API_KEYS, names))
    return tuple(
        LLMTier(
            name,
            model,
            costs.get(name, 0.0),
            *prices.get(name, (0.0, 0.0)),
            base_url=urls.get(name),
            api_key=keys.get(name),
        )
        for name, model in tiers
    )


def redacted_url(url: str) -> str:
    """``url`` without a user name or password, for messages and status pages."""
    try:
        parts = urlsplit(url if "://" in url else f"//{url}")
        host = parts.hostname or ""
        if parts.username is None and parts.password is None:
            return url
        if parts.port is not None:
            host = f"{host}:{parts.port}"
    except ValueError:  # not a URL at all: say nothing of it
        return "<unreadable URL>"
    text = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return text if "://" in url else text.removeprefix("//")


def check_key(label: str, key: str) -> None:
    """Refuses a key no ``Authorization`` header can carry (a "…" or a line break pasted
    with it): every call failed, as "Connection error." after retries, or as a server that
    "sent what is not a chat completion". The key is not quoted, only where it is wrong."""
    if not isinstance(key, str):
        raise ValueError(f"{label} must be a string, got {type(key).__name__}")
    for position, char in enumerate(key, start=1):
        if not (char.isascii() and char.isprintable()):
            raise ValueError(
                f"{label} holds a character an HTTP header cannot carry "
                f"(U+{ord(char):04X}, character {position} of {len(key)})"
            )


def check_timeout(timeout: Any) -> None:
    """Refuses a timeout of 0 or less, or NaN: "no limit" to some, every call to the SDK,
    which failed them all as "Request timed out." without sending one request. ``None``
    (no limit) and an ``httpx.Timeout`` are the SDK's to read."""
    if isinstance(timeout, bool) or (isinstance(timeout, int | float) and not timeout > 0):
        raise ValueError(f"timeout must be seconds > 0, or None for no limit; got {timeout!r}")


def _is_http_url(text: str) -> bool:
    parts = urlsplit(text)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def _tier_pairs(variable: str, names: list[str]) -> list[tuple[str, str]]:
    pairs = _pairs(variable)
    for name, _ in pairs:
        if name not in names:
            known = ", ".join(names) or f"none: {ENV_TIERS} is empty"
            raise ValueError(f"{variable}: {name!r} is not a tier (tiers: {known})")
    return pairs


def _price(variable: str, name: str, text: str) -> float:
    what = "cost" if variable == ENV_TIER_COSTS else "price"
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{variable}: the {what} of {name!r} is not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{variable}: the {what} of {name!r} must be a number >= 0, got {text!r}")
    return value


class ChatLLM:
    """An OpenAI-compatible server and its default model, and the tiers' models if
    configured (on that server, or on servers of their own)."""

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        # One client per event loop, server and key: an httpx client's pooled connections
        # belong to the loop that opened them, and ``Orchestrator.process`` (or a sync tool
        # starting a nested run) runs each call in a loop of its own.
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[tuple[str, str], openai.AsyncOpenAI]
        ] = weakref.WeakKeyDictionary()
        self._clients_lock = threading.Lock()
        # (server, model) pairs whose server refused json_schema
        self._no_json_schema: set[tuple[str, str]] = set()

    def _client_for(self, tier: str | None) -> tuple[str, openai.AsyncOpenAI]:
        """The server a call in ``tier`` goes to, and this loop's client for it."""
        url, key = self.config.server_for(tier)
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            clients = self._clients.setdefault(loop, {})
            client = clients.get((url, key))
            if client is None:
                client = clients[(url, key)] = openai.AsyncOpenAI(
                    base_url=url,
                    api_key=key,
                    timeout=self.config.timeout,
                    max_retries=0,  # see _attempts
                )
        return url, client

    @property
    def name(self) -> str:
        return f"{self.model} at {redacted_url(self.config.server_for(_tier.get())[0])}"

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
        """The assistant's text; with ``json_schema``, text that parses as a JSON object.

        Inside an :func:`llm_usage` block each call is counted once, answered,
        failed or cancelled (a tier that fails every call has been tried, and
        failed); its retries (:meth:`_attempts`), and the second request after a
        refused ``json_schema``, are part of the same call.
        """
        model = self.model
        url, client = self._client_for(_tier.get())
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": list(messages),
            "temperature": temperature,
        }
        schema_ok = (url, model) not in self._no_json_schema
        if json_schema is not None:
            if schema_ok:
                kwargs["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "response", "schema": json_schema},
                }
            else:
                kwargs["response_format"] = {"type": "json_object"}
        deadline = call_deadline(self.config.timeout, self.config.max_retries)
        try:
            response = await self._attempts(client, kwargs, deadline)
        except (openai.BadRequestError, openai.UnprocessableEntityError) as error:
            if json_schema is None or not schema_ok or not _refuses_schema(error):
                self._count(None, answered=False)
                raise LLMError(f"{self.name} refused the request: {error}") from error
            self._no_json_schema.add((url, model))  # asked again, and counted then
            return await self.complete(messages, json_schema=json_schema, temperature=temperature)
        except openai.APIError as error:
            self._count(None, answered=False)  # a tier whose calls fail was still used, and failed
            raise LLMError(f"{self.name} failed: {error}") from error
        except LLMError:  # asked to wait longer than this call can
            self._count(None, answered=False)
            raise
        except TimeoutError:
            self._count(None, answered=False)
            if deadline is None:  # not this call's deadline
                raise
            # "timed out" so that ``ErrorType.infer`` reads it as the timeout it is.
            raise LLMError(
                f"{self.name} timed out: it did not answer within {deadline:g}s"
            ) from None
        except ValueError as error:  # a body that is not JSON, or not UTF-8
            self._count(None, answered=False)
            raise LLMError(f"{self.name} sent what is not a chat completion: {error}") from None
        except asyncio.CancelledError:  # a cancelled run: it was asked all the same
            self._count(None, answered=False)
            raise
        message = _message(response)
        if message is None and (failure := error_in(response)) is not None:
            # A 200 whose body is the server's error (OpenRouter and proxies send them): no
            # answer, so a tier whose calls all end so is seen to be down.
            self._count(None, answered=False)
            raise LLMError(f"{self.name} answered with an error{failure}")
        self._count(response)
        text = _text_of(getattr(message, "content", None))
        if text is None:
            refusal = getattr(message, "refusal", None)  # a structured-output refusal
            if isinstance(refusal, str) and refusal.strip():
                raise LLMError(f"{self.name} refused to answer: {refusal}")
            raise LLMError(f"{self.name} returned no message")
        stopped = getattr(_first_choice(response), "finish_reason", None)
        if stopped in CUT_SHORT:
            # Not a format error: asking again for a repair is cut off the same way.
            raise LLMError(
                f"{self.name} {CUT_SHORT[stopped]} (finish_reason {stopped!r}); the "
                f"{len(text)} characters it sent are not the whole answer"
            )
        if json_schema is not None:
            try:
                parsed = json.loads(
                    _strip_fence(text), parse_constant=_not_json, parse_float=_finite
                )
            except ValueError as error:  # a JSONDecodeError, or a number no JSON number is
                raise LLMFormatError(f"the answer is not JSON: {error}", text) from None
            except RecursionError:  # nested past what Python's parser takes
                raise LLMFormatError("the answer is JSON nested too deeply", text) from None
            if not isinstance(parsed, dict):
                raise LLMFormatError("the answer is JSON but not an object", text)
            return json.dumps(parsed)
        return text

    async def _attempts(
        self, client: openai.AsyncOpenAI, kwargs: dict[str, Any], deadline: float | None
    ) -> Any:
        """The chat completion, asked again up to ``max_retries`` times after a failure
        another attempt may get past (:func:`retryable`), all within ``deadline``.

        The deadline, because the SDK's timeout bounds each read, not the request: a
        server that sends a byte at a time held a call for minutes. Retried here, not
        by the SDK: the SDK sleeps through whatever ``Retry-After`` a server asks, up
        to minutes, the deadline cut the sleep short, and a rate limit was reported as
        a timeout. Here the server's wait, else a backoff pause, is made only when it
        leaves the next attempt its whole timeout before the deadline (and is at most
        ``RETRY_AFTER_MAX``); otherwise the call fails now, with what the server said.
        """
        retries = 0
        async with asyncio.timeout(deadline) as bound:
            while True:
                try:
                    return await client.chat.completions.create(**kwargs)
                except (openai.APIConnectionError, openai.APIStatusError) as error:
                    if retries == self.config.max_retries or not retryable(error):
                        raise
                    asked = asked_wait(error)
                    pause = backoff(retries) if asked is None else asked
                    if pause > self._room(bound):
                        if asked is not None and isinstance(error, openai.APIStatusError):
                            message = asked_too_long(self.name, error, asked, deadline)
                            raise LLMError(message) from error
                        raise
                await asyncio.sleep(pause)
                retries += 1

    def _room(self, bound: asyncio.Timeout) -> float:
        """The longest pause this call can make now and still give its next attempt a
        whole timeout before its deadline; ``RETRY_AFTER_MAX`` at most."""
        stop = bound.when()
        if stop is None:  # no deadline: the timeout is not a number of seconds
            return RETRY_AFTER_MAX
        left = stop - asyncio.get_running_loop().time() - self.config.timeout
        return min(left, RETRY_AFTER_MAX)

    def _count(self, response: Any, *, answered: bool = True) -> None:
        """Adds one call to the current :func:`llm_usage` blocks.

        A call that got no answer (it failed, or was cancelled) costs its tier's
        price per call and no tokens; an answer whose usage is missing or not two
        counts is counted as unreported, with no tokens.
        """
        usage = _usage.get()
        if usage is None:
            return
        tokens = _reported_tokens(getattr(response, "usage", None))
        prompt, completion = tokens or (0, 0)
        tier = self.config.in_effect(_tier.get())
        usage.add(
            prompt,
            completion,
            reported=not answered or tokens is not None,
            cost=tier.call_cost(prompt, completion) if tier is not None else None,
            answered=answered,
        )

    async def aclose(self) -> None:
        """Closes this loop's clients; those of loops already closed went with them."""
        with self._clients_lock:
            clients = self._clients.pop(asyncio.get_running_loop(), {})
        for client in clients.values():
            await client.close()


FIRST_PAUSE = 0.5
"""The pause before the first retry when the server names none; it doubles with each."""
RETRY_PAUSE = 8.0
"""The longest pause between attempts when the server names none (the ``openai`` SDK's
backoff, which this copies, has the same cap)."""
RETRY_AFTER_MAX = 60.0
"""The longest wait a server may ask for (``Retry-After``) and get: "come back tomorrow"
from a spent quota fails the call rather than holding it (and its run) for a day."""


def asked_too_long(
    who: str, error: openai.APIStatusError, wait: float, deadline: float | None
) -> str:
    """Why a call gave up on a server that asked it to wait: a 429 says "rate limited",
    so that ``ErrorType.infer`` reads the failure as one."""
    status = error.status_code
    what = "was rate limited" if status == 429 else "failed"
    if deadline is None or wait > RETRY_AFTER_MAX:
        limit = f"the {RETRY_AFTER_MAX:g} s a call waits at most"
    else:
        limit = f"this call's {deadline:g} s limit"
    return (
        f"{who} {what} ({status}) and asked to retry after {round(wait, 2):g} s, "
        f"too long for {limit}: {error}"
    )


def call_deadline(timeout: Any, max_retries: int) -> float | None:
    """How long one call may take in all: every attempt its ``timeout``, and the longest
    backoff pause between them. None (no bound) for a timeout that is not a number of
    seconds (``None``, which the SDK takes as "wait for ever", or an ``httpx.Timeout``)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        return None
    return timeout * (max_retries + 1) + RETRY_PAUSE * max_retries


def retryable(error: openai.APIConnectionError | openai.APIStatusError) -> bool:
    """Whether another attempt may fare better, as the SDK judged it when it retried: no
    answer at all (a connection failure, a read timeout), or a status saying the server
    is busy or broken (408, 409, 429, 5xx), unless its ``x-should-retry`` header says."""
    if isinstance(error, openai.APIConnectionError):
        return True
    said = error.response.headers.get("x-should-retry")
    if said in ("true", "false"):
        return said == "true"
    return error.status_code in (408, 409, 429) or error.status_code >= 500


def asked_wait(error: openai.APIConnectionError | openai.APIStatusError) -> float | None:
    """The seconds a server asked to wait before the next attempt (``retry-after-ms``, or
    ``Retry-After`` in seconds or as a date), or None when it named no wait still to come
    (none, a malformed one, 0, a date past), read as the SDK read them."""
    if not isinstance(error, openai.APIStatusError):
        return None
    headers = error.response.headers
    for name, seconds in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        try:
            wait = float(headers.get(name, ""))
        except ValueError:  # absent or not a number (maybe a date)
            continue
        return wait * seconds if wait > 0 else None  # NaN is no wait either
    try:
        parsed = email.utils.parsedate_tz(headers.get("retry-after", ""))
        wait = email.utils.mktime_tz(parsed) - time.time() if parsed else 0.0
    except (OverflowError, ValueError, OSError):  # a date no clock reaches
        return None
    return wait if wait > 0 else None


def backoff(retries: int) -> float:
    """The pause before a retry when the server names none, ``retries`` made before it:
    exponential, and up to a quarter shorter at random, so that clients that failed
    together do not all come back at once (the SDK's backoff)."""
    pause = min(FIRST_PAUSE * 2.0 ** min(retries, 32), RETRY_PAUSE)
    return pause * (1 - 0.25 * random.random())


def _reported_tokens(usage: Any) -> tuple[int, int] | None:
    """Prompt and completion tokens of a server's ``usage``, or None unless both are
    counts a call can have used: servers leave them out, or send null (the SDK does not
    check them), and a count past ``MAX_CALL_TOKENS`` is a server's mistake, which would
    make the run's cost absurd and its record one the store refuses."""
    prompt = getattr(usage, "prompt_tokens", None)
    completion = getattr(usage, "completion_tokens", None)
    if all(type(n) is int and 0 <= n <= MAX_CALL_TOKENS for n in (prompt, completion)):
        return prompt, completion
    return None


MAX_CALL_TOKENS = 100_000_000
"""The most tokens one call is believed to have used, either way (the largest context
windows are about a hundredth of it)."""


CUT_SHORT = {
    "length": "stopped at its output token limit before the answer was complete",
    "content_filter": "had its answer stopped by its content filter",
}
"""Why a server ended an answer early, by the ``finish_reason`` it gave: the text is a part,
which read as a whole answer (a summary cut mid-sentence recorded as a success)."""


def _first_choice(response: Any) -> Any:
    """The answer's first choice, or None when it has none (a server's body that is a
    string, a list, an object without choices)."""
    choices = getattr(response, "choices", None)
    return choices[0] if isinstance(choices, list) and choices else None


def _message(response: Any) -> Any:
    """The first choice's message, or None when the answer has no such thing."""
    return getattr(_first_choice(response), "message", None)


def error_in(response: Any) -> str | None:
    """The error a server sent in place of a completion, as " (429): Rate limit exceeded",
    or None when the body holds none: ``{"error": {...}}`` (OpenAI's shape), or vLLM's
    ``{"object": "error", "message": ...}``. The SDK reads either as a completion with no
    choices, since their status was 200."""
    error = getattr(response, "error", None)
    if error is None and getattr(response, "object", None) == "error":
        error = response
    if error is None:
        return None
    if isinstance(error, dict):
        message, code = error.get("message"), error.get("code")
    else:
        message, code = getattr(error, "message", error), getattr(error, "code", None)
    status = f" ({code})" if isinstance(code, int | str) and str(code).strip() else ""
    return f"{status}: {message}" if message not in (None, "") else status


def _refuses_schema(error: openai.APIStatusError) -> bool:
    """Whether a 400 or 422 is the server refusing the ``json_schema`` response format (its
    message names it), not the request for another reason (a prompt past the context)."""
    message = str(getattr(error, "message", "") or error).lower()
    return any(word in message for word in ("response_format", "json_schema", "schema"))


def _text_of(content: Any) -> str | None:
    """The message's text: its content, or the text parts of a content that is a list of
    parts (Mistral's reasoning models put a "thinking" part before the answer's "text"
    parts), which read as "returned no message"."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    texts = [
        part["text"]
        for part in content
        if isinstance(part, dict)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    ]
    return "".join(texts) if texts else None


def _not_json(name: str) -> Any:
    """Python's parser takes ``NaN`` and ``Infinity``, which JSON has not: they reached a
    tool's parameters, and the text given back as JSON was not."""
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    """A number the answer wrote, refused where no float holds it (``1e999``), as
    ``_not_json`` refuses ``Infinity``; an integer past Python's 4,300 digits raises
    ``ValueError`` on its own (a small model repeating a digit writes one)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:20]} is past the largest number a float holds")
    return value


def _strip_fence(text: str) -> str:
    """Models asked for JSON sometimes wrap it in a Markdown code fence anyway."""
    stripped = text.strip()
    if stripped.startswith("```"):
        stripped = stripped.split("\n", 1)[1] if "\n" in stripped else ""
        stripped = stripped.rsplit("```", 1)[0]
    return stripped.strip()
