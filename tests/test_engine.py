"""The DAG engine: shapes, concurrency, retries, timeouts, fallbacks, skips, cancellation.

Timing-sensitive behaviour is asserted through ordering (events that must
happen before others), never through wall-clock durations.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dendrite._ids import new_id
from dendrite.execution import Attempt, Event, EventType, ExecutionEngine, StepStatus
from dendrite.execution.engine import YIELD_EVERY
from dendrite.execution.records import attempt_record
from dendrite.planning import Plan, RetryPolicy, Step
from dendrite.store import serialize
from dendrite.store.toolcall import ToolCall
from dendrite.telemetry import ErrorType, ToolExecutionRecord
from dendrite.tools import ToolContext, ToolRegistry

NO_WAIT = RetryPolicy(max_attempts=3, backoff=0.0, jitter=0.0)


def run(engine: ExecutionEngine, plan: Plan, **kwargs: Any):
    events: list[Event] = []

    async def go():
        return await engine.execute(plan, execution_id="e1", emit=events.append, **kwargs)

    return asyncio.run(go()), events


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    def echo(value: Any = None) -> Any:
        return value

    async def add(a: int, b: int = 0) -> int:
        return a + b

    def collect(values: list[Any]) -> list[Any]:
        return list(values)

    registry.register_function(echo)
    registry.register_function(add)
    registry.register_function(collect)
    return registry


def test_chain_passes_outputs_along():
    engine = ExecutionEngine(make_registry())
    plan = Plan(
        goal="chain",
        steps=[
            Step(id="one", tool="add", params={"a": 1}),
            Step(id="two", tool="add", params={"a": "${one}", "b": 10}),
            Step(id="three", tool="add", params={"a": "${two}", "b": 100}),
        ],
    )
    outcome, events = run(engine, plan)
    assert outcome.success and outcome.output == 111
    started = [e.step_id for e in events if e.type is EventType.STEP_STARTED]
    assert started == ["one", "two", "three"]


def test_fan_out_fan_in_and_diamond():
    engine = ExecutionEngine(make_registry(), max_parallel_steps=4)
    fan = Plan(
        goal="fan",
        steps=[
            Step(id="root", tool="add", params={"a": 1}),
            *[Step(id=f"w{i}", tool="add", params={"a": "${root}", "b": i}) for i in range(20)],
            Step(id="join", tool="collect", params={"values": [f"${{w{i}}}" for i in range(20)]}),
        ],
    )
    outcome, _ = run(engine, fan)
    assert outcome.output == [1 + i for i in range(20)]
    diamond = Plan(
        goal="diamond",
        steps=[
            Step(id="top", tool="add", params={"a": 2}),
            Step(id="left", tool="add", params={"a": "${top}", "b": 1}),
            Step(id="right", tool="add", params={"a": "${top}", "b": 2}),
            Step(id="bottom", tool="add", params={"a": "${left}", "b": "${right}"}),
        ],
    )
    outcome, events = run(engine, diamond)
    assert outcome.output == 7
    order = [e.step_id for e in events if e.type is EventType.STEP_FINISHED]
    assert order[0] == "top" and order[-1] == "bottom"


def test_the_concurrency_bound_is_honoured():
    registry = ToolRegistry()
    lock = threading.Lock()
    seen = {"now": 0, "peak": 0}

    async def busy(i: int) -> int:
        with lock:
            seen["now"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        await asyncio.sleep(0.005)
        with lock:
            seen["now"] -= 1
        return i

    def busy_sync(i: int) -> int:
        with lock:
            seen["now"] += 1
            seen["peak"] = max(seen["peak"], seen["now"])
        time.sleep(0.005)
        with lock:
            seen["now"] -= 1
        return i

    registry.register_function(busy)
    registry.register_function(busy_sync)
    for tool_name in ("busy", "busy_sync"):
        seen["peak"] = 0
        engine = ExecutionEngine(registry, max_parallel_steps=3)
        plan = Plan(
            goal="many",
            steps=[Step(id=f"s{i}", tool=tool_name, params={"i": i}) for i in range(30)],
        )
        outcome, _ = run(engine, plan)
        assert outcome.success
        assert seen["peak"] == 3, (tool_name, seen)
        engine.close()


def test_a_step_starts_as_soon_as_its_own_dependencies_are_done():
    """'after_fast' depends only on 'fast'; 'slow' (same level as 'fast') waits for it to start.

    With a level-by-level barrier 'after_fast' could not start before 'slow'
    finished, and 'slow' would wait forever (the test would time out).
    """
    registry = ToolRegistry()
    started_after_fast = asyncio.Event()

    async def fast() -> str:
        return "fast"

    async def slow() -> str:
        await asyncio.wait_for(started_after_fast.wait(), timeout=10)
        return "slow"

    async def after_fast(x: str) -> str:
        started_after_fast.set()
        return x + "!"

    for func in (fast, slow, after_fast):
        registry.register_function(func)
    engine = ExecutionEngine(registry)
    plan = Plan(
        goal="uneven",
        steps=[
            Step(id="fast", tool="fast"),
            Step(id="slow", tool="slow"),
            Step(id="after", tool="after_fast", params={"x": "${fast}"}),
            Step(id="end", tool="after_fast", params={"x": "${slow}"}, depends_on=["after"]),
        ],
    )
    outcome, events = run(engine, plan)
    assert outcome.success, outcome.error
    finished = [e.step_id for e in events if e.type is EventType.STEP_FINISHED]
    assert finished.index("after") < finished.index("slow")


def test_retries_count_and_back_off_for_retryable_errors_only():
    registry = ToolRegistry()
    calls = {"flaky": 0, "wrong": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] < 3:
            raise ConnectionResetError("connection reset by peer")
        return "ok"

    def wrong() -> str:
        calls["wrong"] += 1
        raise ValueError("bad input")

    registry.register_function(flaky)
    registry.register_function(wrong)
    policy = RetryPolicy(max_attempts=4, backoff=0.01, multiplier=3, jitter=0.0)
    engine = ExecutionEngine(registry, retry=policy)
    plan = Plan(goal="r", steps=[Step(id="f", tool="flaky"), Step(id="w", tool="wrong")])
    outcome, events = run(engine, plan)
    flaky_result = outcome.steps["f"]
    assert flaky_result.status is StepStatus.SUCCEEDED and calls["flaky"] == 3
    assert [a.number for a in flaky_result.attempts] == [1, 2, 3]
    assert flaky_result.retries == 2
    assert [a.error_type for a in flaky_result.attempts[:2]] == [ErrorType.CONNECTION] * 2
    delays = [e.data["delay_s"] for e in events if e.type is EventType.STEP_RETRY]
    assert delays == pytest.approx([0.01, 0.03])
    # A validation-type error is not retried.
    assert calls["wrong"] == 1 and outcome.steps["w"].error_type is ErrorType.VALIDATION
    assert not outcome.success


def test_a_tools_own_retry_on_exceptions_are_retried():
    registry = ToolRegistry()

    class Busy(Exception):
        pass

    calls = {"n": 0}

    def picky() -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            raise Busy("try later")
        return 1

    registry.register_function(picky, retry_on=[Busy])
    outcome, _ = run(
        ExecutionEngine(registry, retry=NO_WAIT), Plan(goal="p", steps=[Step(id="p", tool="picky")])
    )
    assert outcome.success and calls["n"] == 2


def test_timeouts_for_async_and_sync_tools():
    registry = ToolRegistry()
    stopped = threading.Event()

    async def hang() -> None:
        await asyncio.sleep(30)

    def hang_sync(ctx: ToolContext) -> None:
        ctx.cancel_event.wait(30)
        if ctx.cancelled:
            stopped.set()

    registry.register_function(hang)
    registry.register_function(hang_sync)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=2, backoff=0, jitter=0))
    plan = Plan(
        goal="t",
        steps=[
            Step(id="a", tool="hang", timeout=0.05),
            Step(id="s", tool="hang_sync", timeout=0.05),
        ],
    )
    outcome, _ = run(engine, plan)
    for step_id in ("a", "s"):
        result = outcome.steps[step_id]
        assert result.status is StepStatus.FAILED
        assert result.error_type is ErrorType.TIMEOUT
        assert len(result.attempts) == 2  # a timeout is retryable
        assert "timed out after 0.05s" in result.error
    assert stopped.wait(5), "the sync tool was told to stop through its context"
    engine.close()


def test_async_tools_that_wait_or_not_and_fail_before_or_after_waiting():
    """Async tools are run up to their first wait before any timer is set: every case still ends
    as if the coroutine had simply been awaited."""
    registry = ToolRegistry()

    async def instant(x: int) -> int:
        return x + 1

    async def waits(x: int) -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(0.001)
        return x * 2

    async def fails_at_once(x: int) -> int:
        raise KeyError("no such key")

    async def fails_later(x: int) -> int:
        await asyncio.sleep(0.001)
        raise ConnectionResetError("connection reset by peer")

    async def hangs_later(x: int) -> int:
        await asyncio.sleep(0)
        await asyncio.sleep(30)
        return x

    for func in (instant, waits, fails_at_once, fails_later, hangs_later):
        registry.register_function(func)
    engine = ExecutionEngine(registry, retry=NO_WAIT, default_timeout=5)
    plan = Plan(
        goal="async",
        steps=[
            Step(id="i", tool="instant", params={"x": 1}),
            Step(id="w", tool="waits", params={"x": "${i}"}),
            Step(id="now", tool="fails_at_once", params={"x": 1}),
            Step(id="later", tool="fails_later", params={"x": 1}),
            Step(id="hang", tool="hangs_later", params={"x": 1}, timeout=0.05),
        ],
    )
    outcome, _ = run(engine, plan)
    assert outcome.steps["w"].output == 4
    now, later = outcome.steps["now"], outcome.steps["later"]
    assert now.error.endswith("KeyError: 'no such key'") and len(now.attempts) == 1
    assert later.error_type is ErrorType.CONNECTION and len(later.attempts) == 3
    hang = outcome.steps["hang"]
    assert hang.error_type is ErrorType.TIMEOUT and len(hang.attempts) == 3


def test_an_async_timeout_counts_from_the_start_of_the_attempt():
    """A tool that used up its time before its first wait is stopped at that wait."""
    registry = ToolRegistry()
    reached = []

    async def slow_start() -> None:
        time.sleep(0.1)  # blocks the loop past the deadline; nothing can interrupt this
        reached.append("wait")
        await asyncio.sleep(30)
        reached.append("after")

    registry.register_function(slow_start)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    plan = Plan(goal="t", steps=[Step(id="s", tool="slow_start", timeout=0.05)])
    outcome, _ = run(engine, plan)
    result = outcome.steps["s"]
    assert result.error_type is ErrorType.TIMEOUT and "timed out after 0.05s" in result.error
    assert reached == ["wait"]


def test_a_long_chain_of_steps_that_never_wait_lets_other_tasks_run():
    engine = ExecutionEngine(make_registry())
    steps = [Step(id="s0", tool="add", params={"a": 0})]
    steps += [
        Step(id=f"s{i}", tool="add", params={"a": f"${{s{i - 1}}}", "b": 1}) for i in range(1, 300)
    ]
    ticks = 0

    async def go():
        nonlocal ticks

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        beside = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        outcome = await engine.execute(Plan(goal="chain", steps=steps), execution_id="c")
        during = ticks - before
        beside.cancel()
        return outcome, during

    outcome, during = asyncio.run(go())
    assert outcome.output == 299
    assert during >= 300 // YIELD_EVERY


def test_fallbacks_the_steps_own_then_the_tools_alternatives():
    registry = ToolRegistry()

    def primary(q: str) -> str:
        raise RuntimeError("primary is down")

    def also_down(q: str) -> str:
        raise RuntimeError("also down")

    def backup(q: str, extra: int = 0) -> str:
        return f"backup:{q}"

    registry.register_function(primary, alternatives=["backup"])
    registry.register_function(also_down)
    registry.register_function(backup)
    engine = ExecutionEngine(registry, retry=NO_WAIT)
    plan = Plan(
        goal="f", steps=[Step(id="s", tool="primary", params={"q": "x"}, fallbacks=["also_down"])]
    )
    outcome, events = run(engine, plan)
    result = outcome.steps["s"]
    assert outcome.success and outcome.output == "backup:x"
    assert result.tool == "backup" and result.fallback_used == "backup"
    assert [(a.tool, a.fallback_of) for a in result.attempts] == [
        ("primary", None),
        ("also_down", "primary"),
        ("backup", "primary"),
    ]
    used = [e.data["tool"] for e in events if e.type is EventType.FALLBACK_USED]
    assert used == ["also_down", "backup"]
    registry.quarantine("backup", "failing")
    outcome, _ = run(engine, plan)
    assert not outcome.success
    assert outcome.steps["s"].error == (
        "failed after trying primary, also_down: also_down: RuntimeError: also down "
        "(not tried: tool 'backup' is quarantined: failing)"
    )


def test_a_for_each_step_names_the_fallback_of_its_first_item_that_needed_one():
    """Each item wrote the step's tool as it finished: the step named the primary and a
    fallback at once, and which depended on the order the items finished in."""
    registry = ToolRegistry()

    async def primary(x: str) -> str:
        if x != "ok":
            raise ConnectionError("down")
        await asyncio.sleep(0.2)  # the primary's item finishes last
        return f"p:{x}"

    async def first(x: str) -> str:
        if x == "y":
            raise ConnectionError("down too")
        await asyncio.sleep(0.05)  # item 2 finishes after item 1
        return f"1:{x}"

    def second(x: str) -> str:
        return f"2:{x}"

    for tool in (primary, first, second):
        registry.register_function(tool)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    plan = Plan(
        goal="g",
        steps=[
            Step(
                id="e",
                tool="primary",
                params={"x": "${item}"},
                fallbacks=["first", "second"],
                for_each="${context.items}",
            )
        ],
        output="${e}",
    )
    outcome, events = run(engine, plan, context={"items": ["ok", "y", "x"]})
    assert outcome.output == ["p:ok", "2:y", "1:x"]
    each = outcome.steps["e"]
    assert (each.tool, each.fallback_used) == ("second", "second")  # item 1's, in item order
    (finished,) = [e for e in events if e.type is EventType.STEP_FINISHED]
    assert finished.data["tool"] == "second"
    engine.close()


def test_failures_skip_dependents_unless_continue_on_error():
    registry = make_registry()

    def boom() -> int:
        raise RuntimeError("boom")

    registry.register_function(boom)
    engine = ExecutionEngine(registry, retry=NO_WAIT)
    plan = Plan(
        goal="skip",
        steps=[
            Step(id="bad", tool="boom"),
            Step(id="child", tool="add", params={"a": "${bad}"}),
            Step(id="grandchild", tool="add", params={"a": "${child}"}),
            Step(id="independent", tool="add", params={"a": 1}),
        ],
    )
    outcome, events = run(engine, plan)
    assert not outcome.success and outcome.error.startswith("step 'bad' failed")
    assert outcome.steps["child"].status is StepStatus.SKIPPED
    assert outcome.steps["child"].skip_reason == "dependency 'bad' failed"
    assert outcome.steps["grandchild"].skip_reason == "dependency 'child' was skipped"
    assert outcome.steps["independent"].status is StepStatus.SUCCEEDED
    assert [e.step_id for e in events if e.type is EventType.STEP_SKIPPED] == [
        "child",
        "grandchild",
    ]
    tolerant = Plan(
        goal="tolerant",
        steps=[
            Step(id="bad", tool="boom", continue_on_error=True),
            Step(id="child", tool="echo", params={"value": "${bad}"}),
        ],
    )
    outcome, _ = run(engine, tolerant)
    assert outcome.success and outcome.partial
    assert outcome.steps["child"].status is StepStatus.SUCCEEDED and outcome.output is None
    # A path into it is None too, in params, in text and in when, as in the plan's output:
    # "${bad.summary}" failed the dependant ("NoneType value has no 'summary'").
    paths = Plan(
        goal="paths",
        steps=[
            Step(id="bad", tool="boom", continue_on_error=True),
            Step(id="whole", tool="echo", params={"value": ["${bad.summary}", "${bad.0.x}"]}),
            Step(id="text", tool="echo", params={"value": "summary: ${bad.summary}"}),
            Step(id="cond", tool="echo", params={"value": "ran"}, when="${bad.count} is None"),
        ],
    )
    outcome, _ = run(engine, paths)
    assert outcome.success and outcome.partial
    assert outcome.output == {"whole": [None, None], "text": "summary: None", "cond": "ran"}
    engine.close()


def test_conditions_over_a_step_that_failed_with_continue_on_error_are_decided():
    """Its dependants see None, as its output and any path into it: "${bad.count} > 0"
    failed the step it guarded ("'>' not supported between instances of 'NoneType' and
    'int'"), and the run with it, instead of skipping it."""
    registry = make_registry()

    def boom() -> dict:
        raise RuntimeError("boom")

    registry.register_function(boom)
    engine = ExecutionEngine(registry, retry=NO_WAIT)
    conditions = {
        "gt": ("${bad.count} > 0", False),
        "lt": ("${bad.count} < 3", False),
        "eq": ("${bad.count} == 0", False),
        "ne": ("${bad.count} != 0", True),
        "in": ("'x' in ${bad.tags}", False),
        "not_in": ("'x' not in ${bad.tags}", True),
        "in_text": ("${bad.name} in 'abc'", False),
        "truthy": ("${bad.count}", False),
        "not_": ("not ${bad.count}", True),
        "not_gt": ("not ${bad.count} > 0", True),
        "len": ("len(${bad.items}) >= 1", False),
        "neg": ("-${bad.count} < 0", False),
        "whole": ("${bad} is None", True),
    }
    plan = Plan(
        goal="conditions",
        steps=[
            Step(id="bad", tool="boom", continue_on_error=True),
            *[
                Step(id=name, tool="echo", params={"value": name}, when=text)
                for name, (text, _) in conditions.items()
            ],
        ],
    )
    outcome, events = run(engine, plan)
    assert outcome.success and outcome.partial, outcome.error
    for name, (text, runs) in conditions.items():
        result = outcome.steps[name]
        if runs:
            assert result.status is StepStatus.SUCCEEDED and result.output == name, name
        else:
            assert result.status is StepStatus.SKIPPED, (name, result.error)
            assert result.skip_reason == f"condition false: {text}"
    assert [e.step_id for e in events if e.type is EventType.STEP_FAILED] == ["bad"]
    engine.close()


def test_a_wrong_argument_from_a_reference_names_the_reference():
    """The value came from an earlier step: the error said what the parameter expected and
    what came, but not which reference gave it, nor that its step had no output."""
    registry = make_registry()

    def boom() -> dict:
        raise RuntimeError("boom")

    def label() -> str:
        return "many"

    registry.register_function(boom)
    registry.register_function(label)
    engine = ExecutionEngine(registry, retry=NO_WAIT)
    plan = Plan(
        goal="refs",
        steps=[
            Step(id="bad", tool="boom", continue_on_error=True),
            Step(id="l", tool="label"),
            Step(id="text", tool="add", params={"a": "${l}", "b": "x"}, continue_on_error=True),
            Step(id="none", tool="add", params={"a": "${bad.count}"}, continue_on_error=True),
            Step(id="n", tool="echo", params={"value": [1, ["2"]]}),
            Step(
                id="items",
                tool="add",
                params={"a": "${item}", "b": 1},
                for_each="${n}",
                continue_on_error=True,
            ),
        ],
    )
    outcome, _ = run(engine, plan)
    assert outcome.steps["text"].error == (
        "failed after trying add: add: tool 'add': parameter 'b': expected integer, got 'x' "
        "(str): Input should be a valid integer, unable to parse string as an integer; "
        "parameter 'a': expected integer, got 'many' (str): Input should be a valid integer, "
        "unable to parse string as an integer (the value of ${l})"
    )
    assert outcome.steps["none"].error == (
        "failed after trying add: add: tool 'add': parameter 'a': expected integer, got None "
        "(NoneType): Input should be a valid integer (the value of ${bad.count}, None: step "
        "'bad' failed and has no output)"
    )
    assert outcome.steps["items"].error == (
        "item 1: failed after trying add: add: tool 'add': parameter 'a': expected integer, "
        "got ['2'] (list): Input should be a valid integer (the value of ${item})"
    )
    assert outcome.steps["items"].error_type is ErrorType.VALIDATION
    engine.close()


def test_conditions_and_for_each():
    engine = ExecutionEngine(make_registry())
    plan = Plan(
        goal="cond",
        steps=[
            Step(id="n", tool="echo", params={"value": [1, 2, 3]}),
            Step(id="big", tool="echo", params={"value": "many"}, when="len(${n}) > 2"),
            Step(id="small", tool="echo", params={"value": "few"}, when="len(${n}) <= 2"),
            Step(id="after_small", tool="echo", params={"value": "${small}"}),
            Step(id="each", tool="add", params={"a": "${item}", "b": 10}, for_each="${n}"),
        ],
        output="${each}",
    )
    outcome, _ = run(engine, plan)
    assert outcome.success and outcome.output == [11, 12, 13]
    assert outcome.steps["small"].skip_reason == "condition false: len(${n}) <= 2"
    assert outcome.steps["after_small"].status is StepStatus.SKIPPED
    assert [a.item for a in outcome.steps["each"].attempts] == [0, 1, 2]
    # Condition-skipped steps do not lower the coverage part of the confidence.
    assert outcome.confidence == pytest.approx(0.85)


def test_a_reference_to_a_missing_field_fails_the_step_clearly():
    engine = ExecutionEngine(make_registry())
    plan = Plan(
        goal="ref",
        steps=[
            Step(id="a", tool="echo", params={"value": {"x": 1}}),
            Step(id="b", tool="echo", params={"value": "${a.y}"}),
        ],
    )
    outcome, _ = run(engine, plan)
    assert outcome.steps["b"].error == "${a.y}: dict value has no 'y'"
    assert outcome.steps["b"].error_type is ErrorType.VALIDATION


def test_bad_arguments_at_run_time_fail_the_attempt_with_the_tools_message():
    engine = ExecutionEngine(make_registry(), retry=NO_WAIT)
    plan = Plan(
        goal="bad",
        steps=[
            Step(id="a", tool="echo", params={"value": "text"}),
            Step(id="b", tool="add", params={"a": "${a}"}),
        ],
    )
    outcome, _ = run(engine, plan)
    result = outcome.steps["b"]
    assert result.error_type is ErrorType.VALIDATION and len(result.attempts) == 1
    assert "tool 'add': parameter 'a': expected integer, got 'text' (str)" in result.error


def test_cancelling_the_run_cancels_running_steps():
    registry = ToolRegistry()
    entered = asyncio.Event()
    sync_stopped = threading.Event()

    async def wait_forever() -> None:
        entered.set()
        await asyncio.sleep(60)

    def wait_sync(ctx: ToolContext) -> None:
        if ctx.cancel_event.wait(60):
            sync_stopped.set()

    registry.register_function(wait_forever)
    registry.register_function(wait_sync)
    engine = ExecutionEngine(registry)
    plan = Plan(
        goal="cancel",
        steps=[
            Step(id="a", tool="wait_forever"),
            Step(id="s", tool="wait_sync"),
            Step(id="after", tool="wait_forever", depends_on=["a"]),
        ],
    )
    results: dict = {}

    async def go():
        task = asyncio.create_task(engine.execute(plan, execution_id="c", results=results))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert {r.status for r in results.values()} == {StepStatus.CANCELLED}
    assert results["a"].attempts[0].error_type is ErrorType.CANCELLED
    assert sync_stopped.wait(5)
    engine.close()


def test_engine_settings_are_checked():
    with pytest.raises(ValueError, match="max_parallel_steps must be >= 1, got 0"):
        ExecutionEngine(ToolRegistry(), max_parallel_steps=0)
    with pytest.raises(ValueError, match="default_timeout must be > 0"):
        ExecutionEngine(ToolRegistry(), default_timeout=0)


@pytest.mark.parametrize("success", [True, False])
def test_attempt_records_equal_the_validated_record_of_the_same_values(success: bool):
    """The hot-path record skips validation: it must still be exactly the validated record."""
    started = datetime.now(UTC)
    attempt = Attempt(
        "search",
        2,
        started,
        12.5,
        success,
        None if success else "TimeoutError: slow",
        None if success else ErrorType.TIMEOUT,
        "primary",
    )
    params = serialize.dumps({"q": "x", "n": [1, 2]})
    record = attempt_record(new_id(), "s1", attempt, params, {"hits": 3})
    assert record.finished_at == started + timedelta(milliseconds=12.5)
    as_journaled = json.loads(serialize.dumps_fields(record.fields()))
    validated = ToolExecutionRecord.model_validate(as_journaled)
    assert record == ToolCall.of(validated)
    assert [type(v) for v in record] == [type(v) for v in ToolCall.of(validated)]


def test_a_for_each_attempts_record_keeps_its_item_index():
    """The record had no place for the item: a trace read back from the store could not
    say which item each attempt of a for_each step was for."""
    started = datetime.now(UTC)
    for params, stored in (({"q": "x"}, {"$item": 2, "q": "x"}), ({}, {"$item": 2})):
        attempt = Attempt("search", 1, started, 1.0, True, item=2)
        record = attempt_record(new_id(), "s1", attempt, serialize.dumps(params), None)
        assert json.loads(record.parameters) == stored
        validated = ToolExecutionRecord.model_validate(record.fields())
        assert record == ToolCall.of(validated)
    alone = attempt_record(new_id(), "s1", Attempt("search", 1, started, 1.0, True), "{}", None)
    assert alone.parameters == "{}"  # an attempt that is not an item's has no such key


def test_a_candidate_passed_over_is_named_once_for_a_for_each_step():
    registry = make_registry()

    async def plus(a: int, b: int = 0) -> int:
        return a + b

    registry.register_function(plus)
    registry.disable("add", "under maintenance")
    engine = ExecutionEngine(registry)
    plan = Plan(
        goal="each",
        steps=[
            Step(id="n", tool="echo", params={"value": [1, 2, 3]}),
            Step(
                id="each", tool="add", params={"a": "${item}"}, fallbacks=["plus"], for_each="${n}"
            ),
        ],
        output="${each}",
    )
    outcome, _ = run(engine, plan)
    assert outcome.success and outcome.output == [1, 2, 3]
    (why,) = outcome.steps["each"].not_tried
    assert "'add'" in why and "under maintenance" in why


def test_a_tool_raising_cancelled_or_a_broken_event_sink_does_not_hang_the_run():
    """A tool's own CancelledError (a future it waited on was cancelled) hung the run for
    ever, and so did an event sink that raised."""
    registry = make_registry()

    async def gives_up() -> int:
        raise asyncio.CancelledError("the upstream request was cancelled")

    def waits_on_a_cancelled_future() -> int:
        import concurrent.futures

        future: concurrent.futures.Future[int] = concurrent.futures.Future()
        future.cancel()
        return future.result()

    registry.register_function(gives_up)
    registry.register_function(waits_on_a_cancelled_future)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1), default_timeout=5)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="a", tool="gives_up"),
            Step(id="b", tool="waits_on_a_cancelled_future"),
            Step(id="c", tool="echo", params={"value": 1}),
        ],
    )

    async def go(emit):
        return await asyncio.wait_for(engine.execute(plan, execution_id="e", emit=emit), 10)

    outcome = asyncio.run(go(None))
    for step_id in ("a", "b"):
        failed = outcome.steps[step_id]
        assert failed.status is StepStatus.FAILED and failed.error_type is ErrorType.TOOL_ERROR
        assert "CancelledError" in failed.error
    assert outcome.steps["c"].output == 1 and not outcome.success

    def sink(event: Event) -> None:
        if event.type is EventType.STEP_FINISHED:
            raise ConnectionResetError("the client went away")

    outcome = asyncio.run(go(sink))
    assert outcome.steps["c"].status is StepStatus.SUCCEEDED
    engine.close()


def test_a_sync_tool_that_timed_out_is_not_run_again_while_its_thread_runs():
    """Retried after its deadline, a sync tool ran three times at once (three charges)."""
    registry = ToolRegistry()
    charges: list[int] = []
    release = threading.Event()

    def charge(amount: int) -> str:
        release.wait(10)
        charges.append(amount)
        return "ok"

    registry.register_function(charge, timeout=0.05)
    engine = ExecutionEngine(registry, retry=NO_WAIT)
    outcome, _ = run(
        engine, Plan(goal="g", steps=[Step(id="pay", tool="charge", params={"amount": 1})])
    )
    pay = outcome.steps["pay"]
    assert [a.error_type for a in pay.attempts] == [ErrorType.TIMEOUT]
    assert "still running in its thread: not retried" in pay.error
    release.set()
    engine.close()
    time.sleep(0.2)
    assert charges == [1]


def test_a_sync_call_is_timed_from_when_a_thread_runs_it():
    """Queued behind slow calls for a free thread, a tool lost its own time to the queue;
    a call no thread takes within its timeout is withdrawn and never runs."""
    registry = ToolRegistry()
    ran: list[int] = []
    release = threading.Event()

    def slow(i: int) -> int:
        release.wait(10)
        return i

    def steady(i: int) -> int:
        time.sleep(1.2)  # within its 2 s, but not within 2 s of being queued
        ran.append(i)
        return i

    registry.register_function(slow)
    registry.register_function(steady, timeout=2.0)
    registry.register_function(lambda i: ran.append(i), name="quick", timeout=0.3)
    engine = ExecutionEngine(registry, max_parallel_steps=4, retry=RetryPolicy(max_attempts=1))

    def one(tool: str, i: int) -> Any:
        plan = Plan(goal=tool, steps=[Step(id="s", tool=tool, params={"i": i})])
        return asyncio.ensure_future(engine.execute(plan, execution_id=f"{tool}{i}"))

    async def go():
        blockers = [one("slow", i) for i in range(4)]
        await asyncio.sleep(0.05)  # every thread of the pool is taken
        late, never = one("steady", 7), one("quick", 8)
        await asyncio.sleep(1.0)
        release.set()
        await asyncio.gather(*blockers)
        return await late, await never

    late, never = asyncio.run(go())
    assert late.success and late.steps["s"].output == 7
    assert not never.success and "no free thread took the call within 0.3s" in never.error
    assert ran == [7]  # the withdrawn call never ran
    engine.close()


def test_for_each_items_share_the_runs_bound_and_stop_when_one_fails():
    registry = ToolRegistry()
    now = {"running": 0, "peak": 0}
    finished: list[int] = []

    async def work(i: int) -> int:
        now["running"] += 1
        now["peak"] = max(now["peak"], now["running"])
        try:
            if i == 0:
                raise RuntimeError("bad item")
            await asyncio.sleep(0.05 if i < 100 else 5)
            finished.append(i)
            return i
        finally:
            now["running"] -= 1

    registry.register_function(work)
    engine = ExecutionEngine(registry, max_parallel_steps=2, retry=RetryPolicy(max_attempts=1))
    two = Plan(
        goal="g",
        steps=[
            Step(id="a", tool="work", for_each="${context.a}", params={"i": "${item}"}),
            Step(id="b", tool="work", for_each="${context.b}", params={"i": "${item}"}),
        ],
    )
    outcome, _ = run(engine, two, context={"a": [1, 2, 3, 4], "b": [5, 6, 7, 8]})
    assert outcome.success and now["peak"] == 2  # was 4: a bound per step, not per run
    outcome, _ = run(engine, Plan(goal="g", steps=[two.steps[0]]), context={"a": [0, 100, 101]})
    each = outcome.steps["a"]
    assert each.status is StepStatus.FAILED and each.error.startswith("item 0:")
    # Item 1 was running beside item 0 and is cancelled; item 2 was never taken (it was
    # an attempt cancelled before: every item of a 100,000-item step was started at once).
    assert sorted((a.item, a.error_type) for a in each.attempts) == [
        (0, ErrorType.TOOL_ERROR),
        (1, ErrorType.CANCELLED),
    ]
    assert 100 not in finished and 101 not in finished
    engine.close()


def test_a_tools_own_errors_are_its_own():
    """sys.exit() in a tool ended the process; a TimeoutError it raised read as the
    engine's deadline; an async tool behind a plain decorator 'succeeded' with a coroutine."""
    import functools
    import sys

    registry = make_registry()

    def quits() -> int:
        sys.exit(2)

    def locked() -> int:
        raise TimeoutError("could not acquire the row lock")

    def logged(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            return func(*args, **kwargs)

        return wrapper

    @logged
    async def fetch(url: str) -> str:
        await asyncio.sleep(0)
        return f"page {url}"

    for tool in (quits, locked, fetch):
        registry.register_function(tool)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1), default_timeout=60)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="q", tool="quits"),
            Step(id="l", tool="locked"),
            Step(id="f", tool="fetch", params={"url": "x"}),
        ],
    )
    outcome, _ = run(engine, plan)
    assert (outcome.steps["q"].error_type, outcome.steps["q"].attempts[0].error) == (
        ErrorType.TOOL_ERROR,
        "SystemExit: 2",
    )
    assert outcome.steps["l"].attempts[0].error == "TimeoutError: could not acquire the row lock"
    assert outcome.steps["f"].output == "page x"
    engine.close()


FALL_BACK_AFTER_TWO = RetryPolicy(
    max_attempts=2, backoff=0.0, jitter=0.0, retry_on=(ErrorType.TOOL_ERROR,)
)


def tried(result: Any) -> list[tuple[str, ErrorType | None]]:
    return [(a.tool, a.error_type) for a in result.attempts]


def test_a_tools_generatorexit_fails_its_step_not_the_engine():
    """A sync tool's GeneratorExit, woken into the awaiting task, closed the engine's
    coroutines instead of reaching the attempt's ``except``: the run raised "the engine
    crashed". It is the tool's error now, retried and fallen back from like any other, as
    an async tool's already was."""
    registry = make_registry()
    calls: list[str] = []

    def hangs_up() -> int:
        calls.append("hangs_up")
        raise GeneratorExit("the consumer went away")

    async def hangs_up_later() -> int:
        await asyncio.sleep(0)
        raise GeneratorExit("the stream was closed")

    registry.register_function(hangs_up)
    registry.register_function(hangs_up_later)
    engine = ExecutionEngine(registry, retry=FALL_BACK_AFTER_TWO, default_timeout=30)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="s", tool="hangs_up", fallbacks=["echo"]),
            Step(id="a", tool="hangs_up_later", fallbacks=["echo"]),
            Step(id="alone", tool="hangs_up"),
            Step(id="next", tool="echo", params={"value": "${alone}"}),
        ],
    )

    async def go():  # a regression must fail, not hang the suite
        return await asyncio.wait_for(engine.execute(plan, execution_id="e"), 10)

    outcome = asyncio.run(go())
    for step_id, tool in (("s", "hangs_up"), ("a", "hangs_up_later")):
        result = outcome.steps[step_id]
        assert (result.status, result.fallback_used) == (StepStatus.SUCCEEDED, "echo")
        assert tried(result) == [(tool, ErrorType.TOOL_ERROR)] * 2 + [("echo", None)]
    assert outcome.steps["s"].attempts[0].error == "GeneratorExit: the consumer went away"
    alone = outcome.steps["alone"]
    assert (alone.status, alone.error_type) == (StepStatus.FAILED, ErrorType.TOOL_ERROR)
    assert alone.error.endswith("hangs_up: GeneratorExit: the consumer went away")
    assert outcome.steps["next"].status is StepStatus.SKIPPED
    assert calls == ["hangs_up"] * 4
    engine.close()


def test_a_tools_stopiteration_fails_its_step_at_once():
    """A sync tool's StopIteration (``next()`` on an exhausted iterator) never completed
    its call, since a future refuses one: the step waited out its whole timeout, then read
    as timed out and "still running in its thread"; with no timeout it waited for ever."""
    registry = make_registry()
    calls: list[str] = []

    def first_row() -> int:
        calls.append("first_row")
        return next(iter([]))

    async def first_row_later() -> int:
        await asyncio.sleep(0)
        raise StopIteration

    async def next_page() -> int:
        raise StopAsyncIteration("no more pages")

    for tool in (first_row, first_row_later, next_page):
        registry.register_function(tool)
    engine = ExecutionEngine(registry, retry=FALL_BACK_AFTER_TWO, default_timeout=None)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="s", tool="first_row", fallbacks=["echo"]),
            Step(id="a", tool="first_row_later", fallbacks=["echo"]),
            Step(id="p", tool="next_page", fallbacks=["echo"]),
            Step(id="alone", tool="first_row"),
        ],
    )

    async def go():  # without a timeout of the plan's own, the test's
        return await asyncio.wait_for(engine.execute(plan, execution_id="e"), 10)

    outcome = asyncio.run(go())
    for step_id, tool in (("s", "first_row"), ("a", "first_row_later"), ("p", "next_page")):
        result = outcome.steps[step_id]
        assert (result.status, result.fallback_used) == (StepStatus.SUCCEEDED, "echo")
        assert tried(result) == [(tool, ErrorType.TOOL_ERROR)] * 2 + [("echo", None)]
    assert outcome.steps["s"].attempts[0].error == "StopIteration"
    assert "StopIteration" in outcome.steps["a"].attempts[0].error
    assert outcome.steps["p"].attempts[0].error == "StopAsyncIteration: no more pages"
    alone = outcome.steps["alone"]
    assert (alone.status, alone.error_type) == (StepStatus.FAILED, ErrorType.TOOL_ERROR)
    assert alone.error.endswith("first_row: StopIteration")
    assert calls == ["first_row"] * 4
    engine.close()


def test_a_tool_returning_a_generator_fails_its_step():
    """A generator 'succeeded' as the step's output: the tool's body had not run (it runs
    when something iterates it, outside the attempt's deadline, and its errors counted
    against whichever step read it first), a second reader found it empty, and the store
    kept its repr. The step fails as the tool's error, and falls back."""
    registry = make_registry()
    ran: list[str] = []

    def rows(n: int) -> Any:
        ran.append("rows")
        yield from range(n)

    async def pages(n: int) -> Any:
        ran.append("pages")
        for i in range(n):
            yield i

    async def lazy(n: int) -> Any:
        return (i for i in range(n))

    def listed(n: int) -> list[int]:
        return list(range(n))

    for tool in (rows, pages, lazy, listed):
        registry.register_function(tool)
    engine = ExecutionEngine(registry, retry=RetryPolicy(backoff=0.0), default_timeout=30)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="r", tool="rows", params={"n": 3}, fallbacks=["listed"]),
            Step(id="p", tool="pages", params={"n": 3}),
            Step(id="l", tool="lazy", params={"n": 3}),
            Step(id="sum", tool="collect", params={"values": "${l}"}),
        ],
    )

    async def go():
        return await asyncio.wait_for(engine.execute(plan, execution_id="e"), 10)

    outcome = asyncio.run(go())
    r = outcome.steps["r"]
    assert (r.output, r.fallback_used) == ([0, 1, 2], "listed")
    assert r.attempts[0].error_type is ErrorType.TOOL_ERROR
    assert r.attempts[0].error.startswith("returned a generator, whose items")
    pages_ = outcome.steps["p"]
    assert (pages_.status, pages_.error_type) == (StepStatus.FAILED, ErrorType.TOOL_ERROR)
    assert "pages: returned an async generator" in pages_.error
    assert tried(outcome.steps["l"]) == [("lazy", ErrorType.TOOL_ERROR)]  # not retried
    assert outcome.steps["sum"].status is StepStatus.SKIPPED
    assert ran == []  # no body ran
    engine.close()


def test_an_awaitable_from_a_sync_tool_gets_what_is_left_of_the_attempts_time():
    """The awaitable a sync tool returned was given a whole new timeout once the thread
    returned, so an attempt could run for twice its timeout and succeed."""
    registry = ToolRegistry()

    def wrapped() -> Any:
        time.sleep(0.4)  # in its thread: part of the attempt's time
        return asyncio.sleep(0.4, result="done")  # within a whole timeout, not what is left

    registry.register_function(wrapped, timeout=0.6)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    outcome, _ = run(engine, Plan(goal="g", steps=[Step(id="w", tool="wrapped")]))
    (attempt,) = outcome.steps["w"].attempts
    assert (attempt.success, attempt.error) == (False, "timed out after 0.6s")
    engine.close()


def test_the_runs_output_fails_loudly_and_keeps_its_shape():
    registry = make_registry()
    engine = ExecutionEngine(registry)
    typo = Plan(
        goal="g",
        output="${s.hitz}",
        steps=[Step(id="s", tool="echo", params={"value": {"hits": [1, 2]}})],
    )
    outcome, _ = run(engine, typo)
    assert not outcome.success and outcome.output is None
    assert outcome.error.startswith("the plan's output ${s.hitz} cannot be read")
    sinks = [
        Step(id="s", tool="echo", params={"value": [1, 2]}),
        Step(id="n", tool="collect", params={"values": "${s}"}),
        Step(id="m", tool="collect", params={"values": "${s}"}, when="${context.flag}"),
    ]
    shapes = [
        run(engine, Plan(goal="g", steps=sinks), context={"flag": f})[0].output
        for f in (True, False)
    ]
    assert shapes == [{"n": [1, 2], "m": [1, 2]}, {"n": [1, 2], "m": None}]
    registry.register_function(lambda: 1 / 0, name="broken")
    soft = Plan(  # the output's step failed, allowed to: no output, and no error for it
        goal="g",
        output="${b.summary}",
        steps=[Step(id="b", tool="broken", continue_on_error=True)],
    )
    outcome, _ = run(ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1)), soft)
    assert (outcome.success, outcome.partial, outcome.output) == (True, True, None)
    engine.close()


def test_a_call_the_closed_engine_never_ran_is_cancelled_not_the_tools_failure():
    """A close racing a run left calls to a shut-down pool: they failed as the tool's own
    ``CancelledError`` (counted against it), where the tool never ran."""
    registry = ToolRegistry()

    def double(x: int) -> int:
        """Double."""
        return 2 * x

    registry.register_function(double)
    plan = Plan(goal="g", steps=[Step(id="a", tool="double", params={"x": 1})])
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=3, backoff=0))
    engine.close()
    outcome = asyncio.run(engine.execute(plan, execution_id=new_id()))
    (attempt,) = outcome.steps["a"].attempts  # not retried: nothing another try could mend
    assert attempt.error_type is ErrorType.CANCELLED and "engine was closed" in attempt.error


def test_a_for_each_of_many_items_does_not_hold_the_event_loop():
    """100,000 items were started as 100,000 tasks at once, resolving their arguments in
    one turn of the event loop: a server's other requests waited for seconds."""
    registry = ToolRegistry()

    async def double(n: int) -> int:
        return 2 * n

    registry.register_function(double)
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    plan = Plan(
        goal="g",
        steps=[Step(id="d", tool="double", for_each="${context.n}", params={"n": "${item}"})],
    )

    async def main() -> tuple[Any, int]:
        turns = 0

        async def ticker() -> None:
            nonlocal turns
            while True:
                await asyncio.sleep(0)
                turns += 1

        ticking = asyncio.ensure_future(ticker())
        try:
            outcome = await engine.execute(
                plan, execution_id="e1", context={"n": list(range(20_000))}
            )
        finally:
            ticking.cancel()
        return outcome, turns

    outcome, turns = asyncio.run(main())
    assert outcome.success and outcome.output[:3] == [0, 2, 4]
    assert turns > 1_000  # the loop turned while the items ran, not once after them all
    engine.close()
