"""What the model's calls used and cost: tokens as the server reports them, priced per tier.

The server is the local one that speaks the OpenAI protocol (``tests/openai_server.py``);
it reports the words of a request's messages and of its answer as their tokens, so every
figure below can be computed by hand from the requests it received.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from typer.testing import CliRunner

from dendrite import Orchestrator
from dendrite.cli import app
from dendrite.learning import Router
from dendrite.llm import (
    ChatLLM,
    LLMConfig,
    LLMError,
    LLMFormatError,
    LLMTier,
    llm_tier,
    llm_usage,
)
from dendrite.llm import client as llm_client
from dendrite.orchestrator import _usage_columns
from dendrite.planning import Plan, Step
from dendrite.retrieval import EmbeddingError, OpenAIEmbedder
from dendrite.store import ExecutionStore
from dendrite.telemetry.errors import ErrorType, described
from dendrite.tools import ToolRegistry
from tests.conftest import wait_until_drained
from tests.openai_server import ChatServer, chat_server, usage_of

PLAN = json.dumps(
    {"steps": [{"id": "calc", "tool": "calculate", "params": {"expression": "6 * 7"}}]}
)
SMALL = LLMTier("small", "mini-7b", cost=0.01, prompt_price=100.0, completion_price=400.0)
LARGE = LLMTier("large", "maxi-70b", cost=0.1, prompt_price=1_000.0, completion_price=3_000.0)


def priced(url: str, model: str = "mini-7b") -> ChatLLM:
    return ChatLLM(LLMConfig(url, model, tiers=(SMALL, LARGE)))


def reported(server: ChatServer, answers: list[str], tier: LLMTier) -> tuple[int, int, float]:
    """Prompt tokens, completion tokens and cost of the server's requests, by hand."""
    prompt = completion = 0
    for request, answer in zip(server.requests, answers, strict=True):
        p, c = usage_of(request, answer)
        prompt, completion = prompt + p, completion + c
    cost = len(answers) * tier.cost
    cost += (prompt * tier.prompt_price + completion * tier.completion_price) / 1e6
    return prompt, completion, cost


# -- configuration ---------------------------------------------------------------------------


def test_token_prices_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", "small=qwen2.5:7b, large=org/m:70b, free=m")
    monkeypatch.setenv("DENDRITE_LLM_TIER_COSTS", "large=0.5")
    monkeypatch.setenv("DENDRITE_LLM_TIER_PRICES", "small=0.15/0.6, large = 2.5")
    config = LLMConfig.from_env()
    assert config is not None
    assert config.tiers == (
        LLMTier("small", "qwen2.5:7b", 0.0, 0.15, 0.6),
        LLMTier("large", "org/m:70b", 0.5, 2.5, 2.5),  # one number prices both
        LLMTier("free", "m"),
    )
    assert config.tiers[1].call_cost(1_000_000, 2_000_000) == pytest.approx(0.5 + 2.5 + 5.0)


@pytest.mark.parametrize(
    ("prices", "message"),
    [
        ("small", "DENDRITE_LLM_TIER_PRICES: 'small' is not NAME=VALUE"),
        ("tiny=1", "DENDRITE_LLM_TIER_PRICES: 'tiny' is not a tier"),
        ("small=cheap", "the price of 'small' is not a number: 'cheap'"),
        ("small=1/", "the price of 'small' is not a number: ''"),
        ("small=1/x", "the price of 'small' is not a number: 'x'"),
        ("small=-1", "the price of 'small' must be a number >= 0"),
        ("small=1/inf", "the price of 'small' must be a number >= 0"),
    ],
)
def test_bad_token_prices_are_named(monkeypatch: pytest.MonkeyPatch, prices: str, message: str):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", "small=m")
    monkeypatch.setenv("DENDRITE_LLM_TIER_PRICES", prices)
    with pytest.raises(ValueError, match=message):
        LLMConfig.from_env()
    with pytest.raises(ValueError, match="completion_price must be a number >= 0"):
        LLMConfig("http://x", "m", tiers=(LLMTier("t", "m", completion_price=-1.0),))


# -- counting --------------------------------------------------------------------------------


def test_each_call_is_counted_with_its_tokens_and_its_tiers_prices_in_every_enclosing_block():
    answers = ["forty two", "six times seven is forty two", "seven"]
    with chat_server() as server:
        server.say(*answers)
        llm = priced(server.url)
        messages = [{"role": "user", "content": "what is six times seven"}]

        async def calls() -> tuple[Any, ...]:
            with llm_tier("large"), llm_usage() as run:
                await llm.complete(messages)
                with llm_usage() as nested:  # a nested run's block
                    await llm.complete(messages)
                await llm.complete(messages)
            return run, nested

        run, nested = asyncio.run(calls())
        prompt, completion, cost = reported(server, answers, LARGE)
        _, _, nested_cost = reported(
            ChatServer("", requests=server.requests[1:2]), answers[1:2], LARGE
        )
    assert [r["model"] for r in server.requests] == ["maxi-70b"] * 3
    assert (run.calls, run.prompt_tokens, run.completion_tokens) == (3, prompt, completion)
    assert run.cost == pytest.approx(cost) and run.tokens == prompt + completion
    assert nested.calls == 1 and nested.cost == pytest.approx(nested_cost)
    assert run.summary() == {
        "calls": 3,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "unreported": 0,
        "cost": round(run.cost, 9),
    }


def test_failed_and_unreported_calls_are_counted_without_tokens():
    with chat_server() as server:
        server.say(503, "fine", "fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), max_retries=0))
        messages = [{"role": "user", "content": "hello there"}]

        async def calls() -> Any:
            with llm_usage() as run:
                with pytest.raises(LLMError):
                    await llm.complete(messages)  # failed: charged per call, no tokens
                server.report_usage = False
                await llm.complete(messages)  # answered, no usage reported
                server.report_usage = True
                await llm.complete(messages)
            return run

        run = asyncio.run(calls())
    p, c = usage_of(server.requests[-1], "fine")
    assert (run.calls, run.unreported, run.tokens) == (3, 1, p + c)
    assert run.cost == pytest.approx(3 * SMALL.cost + (p * 100.0 + c * 400.0) / 1e6)


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None},
        {},
        {"total_tokens": 57},
        {"prompt_tokens": "n/a", "completion_tokens": 3},
        {"prompt_tokens": -50, "completion_tokens": 3},
        {"prompt_tokens": 5, "completion_tokens": 2.5},
    ],
)
def test_usage_that_is_not_two_counts_is_unreported_not_zero(usage: dict[str, Any]):
    with chat_server() as server:
        server.usage = usage
        server.say("fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,)))

        async def call() -> Any:
            with llm_usage() as run:
                assert await llm.complete([{"role": "user", "content": "hello"}]) == "fine"
            return run

        run = asyncio.run(call())
    assert (run.calls, run.unreported, run.tokens) == (1, 1, None)
    assert run.cost == pytest.approx(SMALL.cost)  # the price per call: all that is known


@pytest.mark.parametrize(
    "body",
    [
        b'"hello"',
        b"[1, 2, 3]",
        b"null",
        b"<html>bad gateway</html>",
        b'{"choices": [{"index": 0}]}',
        b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "caf\xe9"}}]}',
    ],
    ids=["a string", "a list", "null", "html", "no message", "not utf-8"],
)
def test_an_answer_that_is_not_a_chat_completion_is_an_llm_error_and_one_call(body: bytes):
    """These escaped as AttributeError, JSONDecodeError or UnicodeDecodeError: no planner
    fell back on them, nothing named the server, and some were not counted."""
    with chat_server() as server:
        server.say(body)
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), max_retries=0))

        async def call() -> Any:
            with (
                llm_usage() as run,
                pytest.raises(LLMError, match=r"mini-7b at http://127\.0\.0\.1"),
            ):
                await llm.complete([{"role": "user", "content": "hello"}])
            return run

        run = asyncio.run(call())
    assert run.calls == 1 and run.tokens is None
    assert run.cost == pytest.approx(SMALL.cost)


def test_a_call_is_bounded_by_its_timeout_retries_included(monkeypatch: pytest.MonkeyPatch):
    """The SDK's timeout bounds each read: a server sending a byte at a time held the call
    for ever. The bound is every attempt's timeout and the longest pause between them
    (``RETRY_PAUSE``)."""
    monkeypatch.setattr(llm_client, "RETRY_PAUSE", 0.5)
    with chat_server() as server:
        server.trickle = 0.1  # each byte well inside the timeout; the whole answer, not
        server.say("too late")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), timeout=0.5, max_retries=1))

        async def call() -> None:
            with llm_usage() as run, pytest.raises(LLMError, match=r"did not answer within 1\.5s"):
                await llm.complete([{"role": "user", "content": "hello"}])
            assert run.calls == 1

        asyncio.run(call())


@pytest.mark.parametrize(
    "retry_after",
    [
        lambda: {"Retry-After": "30"},
        lambda: {"retry-after-ms": "30000"},
        lambda: {"Retry-After": email.utils.formatdate(time.time() + 30, usegmt=True)},
        lambda: {"Retry-After": "600"},  # past RETRY_AFTER_MAX as well
    ],
    ids=["seconds", "milliseconds", "a date", "ten minutes"],
)
def test_a_rate_limit_asking_for_a_wait_past_the_deadline_fails_at_once_as_one(
    retry_after: Callable[[], dict[str, str]],
):
    """The SDK slept through a 429's ``Retry-After: 30`` until the call's 12 s deadline cut
    it, and the call failed as "did not answer within 12s": a timeout, to the analytics
    and the learning that group failures by type, where the server had said rate limit."""
    with chat_server() as server:
        server.error_headers = retry_after()  # a date 30 s from now, not from collection
        server.say(429, "too late")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), timeout=2, max_retries=1))

        async def call() -> tuple[LLMError, Any]:
            with llm_usage() as run, pytest.raises(LLMError) as raised:
                await llm.complete([{"role": "user", "content": "hello"}])
            return raised.value, run

        error, run = asyncio.run(call())
        assert len(server.requests) == 1  # not asked again: no wait made, nor cut short
    assert ErrorType.infer(error) is ErrorType.RATE_LIMIT
    assert ErrorType.infer(described(error)) is ErrorType.RATE_LIMIT  # as a record keeps it
    asked = re.search(r"was rate limited \(429\) and asked to retry after ([\d.]+) s", str(error))
    assert asked, error
    assert 20 < float(asked[1]) <= 30 or float(asked[1]) == 600  # a date: to the second, late
    assert run.calls == 1 and run.answered == 0 and run.cost == pytest.approx(SMALL.cost)


def _pauses(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The pauses the client chooses between attempts, as they are chosen: a server's
    wait, else its backoff (wall times are no test's business)."""
    chosen: list[float] = []
    asked, backoff = llm_client.asked_wait, llm_client.backoff

    def asked_wait(error: Any) -> float | None:
        wait = asked(error)
        if wait is not None:
            chosen.append(wait)
        return wait

    def backed_off(retries: int) -> float:
        chosen.append(backoff(retries))
        return chosen[-1]

    monkeypatch.setattr(llm_client, "asked_wait", asked_wait)
    monkeypatch.setattr(llm_client, "backoff", backed_off)
    return chosen


def _one_call(llm: ChatLLM) -> Any:
    async def call() -> Any:
        with llm_usage() as run:
            assert await llm.complete([{"role": "user", "content": "hello"}]) == "fine"
        return run

    return asyncio.run(call())


def test_a_rate_limit_with_a_short_wait_is_retried_after_it_as_one_call(
    monkeypatch: pytest.MonkeyPatch,
):
    """The server's wait is made (not the backoff's, here much shorter), and the retry
    that answers is the same call, counted once with its tokens."""
    monkeypatch.setattr(llm_client, "RETRY_PAUSE", 0.01)
    pauses = _pauses(monkeypatch)
    with chat_server() as server:
        server.error_headers = {"Retry-After": "0.4"}
        server.say(429, "fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), timeout=2, max_retries=1))
        run = _one_call(llm)
        prompt, completion = usage_of(server.requests[-1], "fine")
        assert len(server.requests) == 2
    assert pauses == [0.4]
    assert (run.calls, run.answered, run.tokens) == (1, 1, prompt + completion)
    assert run.cost == pytest.approx(SMALL.call_cost(prompt, completion))


def test_a_server_error_is_retried_after_a_backoff_pause_no_longer_than_retry_pause(
    monkeypatch: pytest.MonkeyPatch,
):
    """Retries and their pauses are the client's own: ``RETRY_PAUSE``, which the deadline
    allows for, caps the backoff; the SDK's pauses (0.5 s, then 1 s) ignored it."""
    monkeypatch.setattr(llm_client, "RETRY_PAUSE", 0.01)
    pauses = _pauses(monkeypatch)
    with chat_server() as server:
        server.say(500, 502, "fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), timeout=2, max_retries=2))
        run = _one_call(llm)
        assert len(server.requests) == 3
    assert (run.calls, run.answered) == (1, 1)
    assert len(pauses) == 2 and all(0 < pause <= 0.01 for pause in pauses)


def test_a_failure_no_retry_can_mend_is_not_retried_and_max_retries_must_be_a_count():
    with chat_server() as server:
        server.error_headers = {"x-should-retry": "false"}
        server.say(503, "fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", timeout=2, max_retries=2))
        with pytest.raises(LLMError, match=r"failed: Error code: 503"):
            asyncio.run(llm.complete([{"role": "user", "content": "hello"}]))
        assert len(server.requests) == 1
    for retries in (-1, 1.5, True):
        with pytest.raises(ValueError, match="max_retries must be a whole number >= 0"):
            LLMConfig("http://127.0.0.1:9/v1", "m", max_retries=retries)  # type: ignore[arg-type]


def test_slow_failures_may_use_every_retry_and_no_timeout_means_none():
    """Attempts that each fail inside their timeout, with the pauses between them,
    went past a bound of timeout x attempts and the last retry never started; a timeout of
    None (the SDK's "wait for ever") raised a TypeError."""

    def slow_failure(request: dict[str, Any]) -> int:
        time.sleep(0.3)
        return 503

    with chat_server() as server:
        server.say(slow_failure, slow_failure, "hello")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", timeout=0.4, max_retries=2))
        assert asyncio.run(llm.complete([{"role": "user", "content": "hi"}])) == "hello"
        assert len(server.requests) == 3
    with chat_server() as server:
        server.say("hello")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", timeout=None))  # type: ignore[arg-type]
        assert asyncio.run(llm.complete([{"role": "user", "content": "hi"}])) == "hello"


def test_a_bad_request_that_is_not_about_the_schema_keeps_json_schema():
    """Any 400 on a json_schema request (a prompt past the context) turned json_schema off
    for that server and model for good; a refusal of it sent as 422 was not retried."""
    schema = {"type": "object"}
    with chat_server() as server:
        server.say(400, '{"ok": true}')
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", max_retries=0))
        messages = [{"role": "user", "content": "hello"}]
        with pytest.raises(LLMError, match="refused the request"):
            asyncio.run(llm.complete(messages, json_schema=schema))
        assert asyncio.run(llm.complete(messages, json_schema=schema)) == '{"ok": true}'
        assert [r["response_format"]["type"] for r in server.requests] == ["json_schema"] * 2
    with chat_server() as server:
        server.reject_json_schema, server.reject_status = True, 422
        server.say('{"ok": true}')
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", max_retries=0))
        assert asyncio.run(llm.complete(messages, json_schema=schema)) == '{"ok": true}'
        assert [r["response_format"]["type"] for r in server.requests] == [
            "json_schema",
            "json_object",
        ]


def test_usage_counts_no_call_can_have_used_are_unreported_and_the_run_keeps_its_record():
    """10**30 prompt tokens made a successful run's record one the store refused: the run
    was missing from the history."""
    with chat_server() as server:
        server.usage = {"prompt_tokens": 10**30, "completion_tokens": 1}
        server.say("fine")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,)))

        async def call() -> Any:
            with llm_usage() as run:
                await llm.complete([{"role": "user", "content": "hello"}])
            return run

        run = asyncio.run(call())
    assert (run.calls, run.unreported, run.tokens) == (1, 1, None)
    assert _usage_columns(10**13, 2e6) == {}  # totals past a record's bounds: metadata only
    assert _usage_columns(None, 0.5) == {"tokens_used": None, "actual_cost": 0.5}


def test_a_call_cancelled_while_the_server_works_is_counted():
    def slow(request: dict[str, Any]) -> str:
        time.sleep(1.0)
        return "too late"

    with chat_server() as server:
        server.say(slow)
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), max_retries=0))

        async def call() -> Any:
            with llm_usage() as run, pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await llm.complete([{"role": "user", "content": "hello"}])
            return run

        run = asyncio.run(call())
        assert len(server.requests) == 1
    assert (run.calls, run.tokens) == (1, None) and run.cost == pytest.approx(SMALL.cost)


def test_calls_to_a_model_no_tier_prices_cost_nothing_known():
    with chat_server() as server:
        server.say("hi")
        llm = priced(server.url, model="other-model")  # the default is no tier's model

        async def call() -> Any:
            with llm_usage() as run:
                await llm.complete([{"role": "user", "content": "hello"}])
            return run

        run = asyncio.run(call())
    assert run.calls == 1 and run.tokens == 2 and run.cost is None  # unknown, not 0


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (
            b'{"error": {"message": "Rate limit exceeded: free-models-per-min", "code": 429}}',
            r"answered with an error \(429\): Rate limit exceeded: free-models-per-min",
        ),
        (
            b'{"object": "error", "message": "The model is overloaded", "code": 503}',
            r"answered with an error \(503\): The model is overloaded",
        ),
    ],
    ids=["openai's shape", "vllm's shape"],
)
def test_a_200_whose_body_is_an_error_is_a_call_the_model_did_not_answer(body: bytes, said: str):
    """It read as "returned no message", an answered call: the server's words were lost,
    the failure was a tool_error, and a tier failing every call so never counted as down."""
    with chat_server() as server:
        server.say(body)
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=(SMALL,), max_retries=0))

        async def call() -> tuple[LLMError, Any]:
            with llm_usage() as run, pytest.raises(LLMError, match=said) as raised:
                await llm.complete([{"role": "user", "content": "hello"}])
            return raised.value, run

        error, run = asyncio.run(call())
    assert (run.calls, run.answered, run.tokens) == (1, 0, None)
    expected = ErrorType.RATE_LIMIT if b"429" in body else ErrorType.CONNECTION
    assert ErrorType.infer(error) is expected
    assert ErrorType.infer(described(error)) is expected


def test_a_call_cut_off_by_its_deadline_is_recorded_as_a_timeout():
    """ "did not answer within 0.3s" named no timeout: the failure was a tool_error."""
    with chat_server() as server:
        server.trickle = 0.05
        server.say("too late")
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", timeout=0.3, max_retries=0))
        with pytest.raises(LLMError, match=r"did not answer within 0\.3s") as raised:
            asyncio.run(llm.complete([{"role": "user", "content": "hello"}]))
    assert ErrorType.infer(raised.value) is ErrorType.TIMEOUT
    assert ErrorType.infer(described(raised.value)) is ErrorType.TIMEOUT


@pytest.mark.parametrize(
    "number",
    ["NaN", "-Infinity", "1e999", "1" + "0" * 5000],
    ids=["NaN", "-Infinity", "past a float", "past Python's int digits"],
)
def test_a_structured_answer_with_a_number_json_has_not_is_a_format_error(number: str):
    """NaN and 1e999 came back as "NaN" and "Infinity", text no JSON parser takes, and
    reached a tool's parameters; 5,000 digits escaped as a bare ValueError, which no
    planner falls back on."""
    answer = '{"value": ' + number + "}"
    with chat_server() as server:
        server.say(answer)
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", max_retries=0))
        with pytest.raises(LLMFormatError, match="the answer is not JSON") as raised:
            asyncio.run(
                llm.complete([{"role": "user", "content": "hi"}], json_schema={"type": "object"})
            )
    assert raised.value.text == answer


@pytest.mark.parametrize(
    ("finish", "said", "schema"),
    [
        ("length", "stopped at its output token limit", None),
        ("length", "stopped at its output token limit", {"type": "object"}),
        ("content_filter", "had its answer stopped by its content filter", None),
    ],
    ids=["text cut at the limit", "JSON cut at the limit", "filtered"],
)
def test_an_answer_the_server_cut_short_is_not_taken_as_the_answer(
    finish: str, said: str, schema: dict[str, Any] | None
):
    """A summary cut mid-sentence at the token limit came back as the answer (a tool's
    success), and a cut plan as "not JSON", which the planner asked to repair and got cut
    again."""
    text = '{"steps": [{"id": "s1", "tool": "sum' if schema else "The report says that the"
    body = {
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4096},
    }
    with chat_server() as server:
        server.say(json.dumps(body).encode())
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", max_retries=0))

        async def call() -> tuple[LLMError, Any]:
            with llm_usage() as run, pytest.raises(LLMError, match=said) as raised:
                await llm.complete([{"role": "user", "content": "hi"}], json_schema=schema)
            return raised.value, run

        error, run = asyncio.run(call())
    assert not isinstance(error, LLMFormatError)
    assert f"finish_reason {finish!r}" in str(error) and f"the {len(text)} characters" in str(error)
    assert (run.calls, run.answered, run.tokens) == (1, 1, 4099)  # answered, and paid for


def test_a_content_of_parts_is_read_as_its_text_parts():
    """Mistral's reasoning models answer with a list of parts, a "thinking" one first:
    the call failed as "returned no message"."""
    body = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": [
                        {"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
                        {"type": "text", "text": '{"ok": '},
                        {"type": "text", "text": "true}"},
                    ],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4},
    }
    with chat_server() as server:
        server.say(json.dumps(body).encode())
        llm = ChatLLM(LLMConfig(server.url, "mini-7b"))
        answer = asyncio.run(
            llm.complete([{"role": "user", "content": "hi"}], json_schema={"type": "object"})
        )
    assert json.loads(answer) == {"ok": True}


def test_keys_and_timeouts_no_call_can_use_are_refused_at_once_without_the_key():
    """A key with a "…" failed every call as a server that "sent what is not a chat
    completion" (the embedder's as a UnicodeEncodeError), one with a line break as
    "Connection error." after every retry; a timeout of 0 or NaN failed every call as
    "Request timed out." without sending one."""
    url = "http://127.0.0.1:9/v1"
    secret = "sk-proj-SECRET\u2026"
    with pytest.raises(ValueError, match=r"DENDRITE_LLM_API_KEY \(api_key\) holds a char") as bad:
        LLMConfig(url, "m", api_key=secret)
    assert "SECRET" not in str(bad.value)
    tier = LLMTier("large", "m", api_key="sk-SECRET\nrest")
    with pytest.raises(ValueError, match=r"tier 'large': DENDRITE_LLM_TIER_API_KEYS") as bad:
        LLMConfig(url, "m", tiers=(tier,))
    assert "SECRET" not in str(bad.value)
    with pytest.raises(ValueError, match="api_key holds a character") as bad:
        OpenAIEmbedder(url, "m", secret)
    assert "SECRET" not in str(bad.value)
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="timeout must be seconds > 0"):
            LLMConfig(url, "m", timeout=timeout)
        with pytest.raises(ValueError, match="timeout must be seconds > 0"):
            OpenAIEmbedder(url, "m", timeout=timeout)


# -- the embeddings endpoint -----------------------------------------------------------------

EmbeddingReply = tuple[int, bytes, dict[str, str]]


@contextmanager
def embeddings_server() -> Iterator[tuple[str, deque[EmbeddingReply], list[dict[str, Any]]]]:
    """A ``/v1/embeddings`` server that answers each request with the next scripted
    (status, body, headers): its URL, the script, and the requests it received."""
    replies: deque[EmbeddingReply] = deque()
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def do_POST(self) -> None:
            requests.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            status, body, headers = replies.popleft() if replies else (500, b"{}", {})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", replies, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _embeddings(*items: dict[str, Any]) -> EmbeddingReply:
    return 200, json.dumps({"object": "list", "data": list(items)}).encode(), {}


@pytest.mark.parametrize(
    ("reply", "said"),
    [
        (
            (200, b'{"error": {"message": "model overloaded", "code": 503}}', {}),
            r"failed: it answered with an error \(503\): model overloaded",
        ),
        ((200, b'{"object": "list", "data": null}', {}), "not a list of embeddings"),
        ((200, b"[1, 2]", {}), "not a list of embeddings"),
        ((200, b"<html>bad gateway</html>", {}), "not a list of embeddings"),
        (_embeddings({"index": 0, "embedding": None}), "embedding 0, which is not a list"),
        (_embeddings({"index": 0, "embedding": "AACAPwAAAEA="}), "which is not a list"),
        (_embeddings({"index": 0, "embedding": ["a", "b"]}), "which is not a list"),
        (_embeddings({"index": 0, "embedding": []}), r"of shape \(0,\)"),
        (
            _embeddings({"index": 0, "embedding": [1, 2]}, {"index": 0, "embedding": [3, 4]}),
            r"numbered \[0, 0\] for 2 texts",
        ),
        (
            _embeddings({"index": 1, "embedding": [1, 2]}, {"index": 2, "embedding": [3, 4]}),
            r"numbered \[1, 2\] for 2 texts",
        ),
        (
            _embeddings({"embedding": [1, 2]}, {"index": 0, "embedding": [3, 4]}),
            r"numbered \[None, 0\] for 2 texts",
        ),
    ],
    ids=[
        "a 200 whose body is an error",
        "no data",
        "a list",
        "html",
        "a null vector",
        "base64",
        "strings",
        "an empty vector",
        "an index twice",
        "an index past the batch",
        "an index missing",
    ],
)
def test_an_embeddings_answer_that_is_not_one_vector_per_text_is_an_embedding_error(
    reply: EmbeddingReply, said: str
):
    """These escaped as TypeError, AttributeError or ValueError, past callers that catch
    ``EmbeddingError``; an index given twice or past the batch put one text's vector in
    another's place without a word."""
    with embeddings_server() as (url, replies, _):
        replies.append(reply)
        embedder = OpenAIEmbedder(url, "m", "k", max_retries=0)
        data = json.loads(reply[1]) if reply[1].startswith(b"{") else None
        count = len(data["data"]) if data and isinstance(data.get("data"), list) else 1
        with pytest.raises(EmbeddingError, match=said):
            embedder.embed(["first", "second"][:count])
        embedder.close()


def test_an_embeddings_answer_without_indexes_is_in_the_order_of_the_texts():
    """Sorting by an index no item had raised a TypeError for two texts or more."""
    with embeddings_server() as (url, replies, _):
        replies.append(_embeddings({"embedding": [3, 4]}, {"embedding": [0, 2]}))
        vectors = OpenAIEmbedder(url, "m", "k").embed(["first", "second"])
    assert vectors.tolist() == [pytest.approx([0.6, 0.8]), [0.0, 1.0]]


def test_the_embedder_retries_as_the_chat_client_does_within_its_bound():
    """The SDK retried for it and slept through a ``Retry-After`` of up to two minutes
    per retry, whatever ``timeout`` said; now a wait past the call's bound fails it at
    once, as a rate limit, and a short one or a backoff is made."""
    limited = (429, b'{"error": {"message": "slow down"}}', {"Retry-After": "20"})
    with embeddings_server() as (url, replies, requests):
        replies.extend([limited, _embeddings({"index": 0, "embedding": [1, 0]})])
        embedder = OpenAIEmbedder(url, "m", "k", timeout=2, max_retries=1)
        started = time.monotonic()
        with pytest.raises(EmbeddingError) as raised:
            embedder.embed(["hello"])
        assert time.monotonic() - started < 5 and len(requests) == 1
    assert "was rate limited (429) and asked to retry after 20 s" in str(raised.value)
    assert "this call's 12 s limit" in str(raised.value)
    assert ErrorType.infer(raised.value) is ErrorType.RATE_LIMIT
    with embeddings_server() as (url, replies, requests):
        short = (429, b"{}", {"Retry-After": "0.2"})
        replies.extend([short, (503, b"{}", {}), _embeddings({"index": 0, "embedding": [1, 0]})])
        embedder = OpenAIEmbedder(url, "m", "k", timeout=2, max_retries=2)
        assert embedder.embed(["hello"]).tolist() == [[1.0, 0.0]]
        assert len(requests) == 3
    with embeddings_server() as (url, replies, requests):
        replies.extend([(503, b"{}", {"x-should-retry": "false"})])
        with pytest.raises(EmbeddingError, match="Error code: 503"):
            OpenAIEmbedder(url, "m", "k", timeout=2, max_retries=2).embed(["hello"])
        assert len(requests) == 1


def test_a_password_in_the_embedders_url_is_never_shown():
    with embeddings_server() as (url, replies, _):
        replies.append((401, b'{"error": {"message": "bad key"}}', {}))
        embedder = OpenAIEmbedder(url.replace("//", "//alice:hunter2@"), "m", "k", max_retries=0)
        with pytest.raises(EmbeddingError, match="failed: Error code: 401") as raised:
            embedder.embed(["hello"])
    assert "hunter2" not in str(raised.value) and "hunter2" not in repr(embedder)
    assert "alice" not in str(raised.value)


# -- through the orchestrator, on a real store -----------------------------------------------


def calculator(holder: dict[str, Orchestrator]) -> ToolRegistry:
    registry = ToolRegistry()

    def calculate(expression: str) -> float:
        """Calculate the value of an arithmetic expression."""
        return float(eval(expression, {"__builtins__": {}}))  # digits and operators only

    async def recalculate(expression: str) -> float:
        """Ask a nested run, planned by the model too, for the value of an expression."""
        inner = await holder["o"].run(f"calculate {expression}")
        return float(inner.output)

    registry.register_function(calculate)
    registry.register_function(recalculate)
    return registry


def test_a_run_records_its_tokens_and_cost_nested_runs_included_and_its_route_learns_them(
    store: ExecutionStore,
):
    outer_plan = json.dumps(
        {"steps": [{"id": "re", "tool": "recalculate", "params": {"expression": "6 * 7"}}]}
    )
    holder: dict[str, Orchestrator] = {}
    router = Router(["small", "large"], costs={"small": 0.0, "large": 0.0}, store=store, seed=3)
    with chat_server() as server:
        server.say(outer_plan, PLAN)  # the outer run's plan, then the nested run's
        with Orchestrator(
            calculator(holder), store=store, llm=priced(server.url), router=router
        ) as orch:
            holder["o"] = orch
            orch.planner = orch.make_planner("llm")
            top = orch.process("recalculate 6 * 7 with a nested run")
        assert top.success and top.output == 42.0
        wait_until_drained(store)
        outer = store.get_execution(top.execution_id)
        inner = next(r for r in store.get_recent_executions(5) if r.parent_id == outer.id)
        tier = SMALL if outer.model_tier == "small" else LARGE
        both = reported(server, [outer_plan, PLAN], tier)
        theirs = reported(ChatServer("", requests=server.requests[1:]), [PLAN], tier)
    assert [r["model"] for r in server.requests] == [tier.model] * 2  # the nested run's too
    # Like its duration, a run's tokens and cost include its nested runs'.
    assert outer.tokens_used == both[0] + both[1] and inner.tokens_used == theirs[0] + theirs[1]
    assert outer.actual_cost == pytest.approx(both[2])
    assert inner.actual_cost == pytest.approx(theirs[2])
    assert (outer.metadata["llm_usage"]["calls"], inner.metadata["llm_usage"]["calls"]) == (2, 1)
    assert inner.model_tier is None  # only the top run is routed
    day = {r.model_tier: r for r in store.get_tier_performance(1)}[tier.name]
    assert day.tokens_used == outer.tokens_used  # the nested run has no tier of its own
    # The route was charged what the store holds, so a router that starts from the store
    # expects the same cost of the tier as the one that learnt it live.
    again = Router(["small", "large"], costs={"small": 0.0, "large": 0.0}, store=store)
    assert again.learn_from_store().learned == 1
    goal = "recalculate 6 * 7 with a nested run"
    assert again.predict(goal)[tier.name].cost == pytest.approx(
        router.predict(goal)[tier.name].cost
    )
    assert router.predict(goal)[tier.name].cost > 0


def test_a_run_that_never_calls_the_model_records_no_tokens_or_cost(store: ExecutionStore):
    with chat_server() as server:
        with Orchestrator(calculator({}), store=store, llm=priced(server.url)) as orch:
            plan = Plan(
                goal="six times seven",
                steps=[Step(id="c", tool="calculate", params={"expression": "6 * 7"})],
            )
            result = orch.process(plan)
        wait_until_drained(store)
        record = store.get_execution(result.execution_id)
    assert not server.requests
    assert (record.tokens_used, record.actual_cost) == (None, None)
    assert "llm_usage" not in record.metadata


def test_the_cli_prices_a_run_from_the_environment_and_its_trace_shows_it(
    store_url: str, monkeypatch: pytest.MonkeyPatch
):
    with chat_server() as server:
        server.say(PLAN)
        monkeypatch.setenv("DENDRITE_LLM_BASE_URL", server.url)
        monkeypatch.setenv("DENDRITE_LLM_TIERS", "main=mini-7b")  # one tier: no router
        monkeypatch.setenv("DENDRITE_LLM_TIER_PRICES", "main=100/400")
        monkeypatch.setenv("COLUMNS", "200")
        runner = CliRunner()
        args = ["run", "calculate 6 * 7", "--planner", "llm", "--url", store_url]
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output
        prompt, completion = usage_of(server.requests[0], PLAN)
    with ExecutionStore(store_url) as store:
        run = store.get_recent_executions(1)[0]
    cost = (prompt * 100 + completion * 400) / 1e6
    assert run.tokens_used == prompt + completion
    assert run.actual_cost == pytest.approx(cost)
    shown = runner.invoke(app, ["trace", run.id, "--url", store_url])
    assert shown.exit_code == 0, shown.output
    expected = (
        f"model: 1 call, {prompt + completion:,} tokens ({prompt:,} prompt, "
        f"{completion:,} completion), cost {round(cost, 9):g}"
    )
    assert expected in shown.output, shown.output
    as_json = json.loads(runner.invoke(app, ["trace", run.id, "--json", "--url", store_url]).output)
    assert as_json["llm_usage"]["calls"] == 1
    listed = runner.invoke(app, ["history", "--url", store_url])
    assert listed.exit_code == 0, listed.output
    header = next(line for line in listed.output.splitlines() if "goal text" in line)
    assert "tokens" in header and "cost" in header and "tier" not in header  # never routed
    assert f"{prompt + completion:,}" in listed.output and f"{round(cost, 9):g}" in listed.output


def test_a_router_that_is_not_a_tier_router_learns_the_cost_the_store_keeps(
    store: ExecutionStore,
):
    """A pool router's runs ask the default model: what they spent is their cost, live and
    on replay alike (otherwise a restarted router would expect other costs)."""
    router = Router(["fast", "slow"], store=store, router_name="pool", seed=5)
    with chat_server() as server:
        server.say(*[PLAN] * 6)
        with Orchestrator(
            calculator({}), store=store, llm=priced(server.url), router=router
        ) as orch:
            orch.planner = orch.make_planner("llm")
            for _ in range(6):
                orch.process("calculate 6 * 7")
        wait_until_drained(store)
    runs = store.get_recent_executions(6)
    assert all(run.pool in ("fast", "slow") and run.actual_cost for run in runs)
    assert router.learn_from_store().corrected == 0  # nothing it learnt differs from the store
    again = Router(["fast", "slow"], store=store, router_name="pool")
    assert again.learn_from_store().learned == 6
    live, replayed = router.predict("calculate 6 * 7"), again.predict("calculate 6 * 7")
    for option in ("fast", "slow"):
        assert replayed[option].cost == pytest.approx(live[option].cost)
