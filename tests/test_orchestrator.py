"""The Orchestrator records every run and every attempt, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from dendrite import EventType, Orchestrator, OrchestratorConfig
from dendrite._ids import new_id
from dendrite.learning import Router
from dendrite.learning.router import HashedFeaturiser, TaskFeatures
from dendrite.orchestrator import OrchestratorClosedError, load_trace
from dendrite.planning import (
    Plan,
    PlanningError,
    PlanValidationError,
    RetryPolicy,
    SingleToolPlanner,
    Step,
)
from dendrite.store import ExecutionStore, StoreUnavailableError
from dendrite.telemetry import ErrorType, ExecutionStatus
from dendrite.telemetry.records import MAX_PROJECT
from dendrite.tools import ToolContext, ToolRegistry
from dendrite.tools.builtin import register_math
from tests.conftest import pg_admin, pg_database, wait_until_drained

FAST_RETRY = RetryPolicy(max_attempts=3, backoff=0.0, jitter=0.0)


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()
    calls = {"flaky": 0}

    def search(query: str) -> dict:
        """Search the notes."""
        return {"hits": [f"{query}-1", f"{query}-2"], "count": 2}

    def flaky(x: int) -> int:
        calls["flaky"] += 1
        if calls["flaky"] % 3:
            raise TimeoutError("upstream timed out")
        return x

    def broken(x: int) -> int:
        raise RuntimeError("broken tool")

    def backup(x: int) -> int:
        return -x

    async def remember(key: str, value: str, ctx: ToolContext) -> str:
        ctx.state.set(key, value, scope="session")
        return ctx.state.get(key)

    registry.register_function(search)
    registry.register_function(flaky)
    registry.register_function(broken, alternatives=["backup"])
    registry.register_function(backup)
    registry.register_function(remember)
    return registry


def demo_plan() -> Plan:
    return Plan(
        goal="look things up",
        steps=[
            Step(id="s", tool="search", params={"query": "dendrite"}),
            Step(id="f", tool="flaky", params={"x": "${s.count}"}),
            Step(id="b", tool="broken", params={"x": 1}),
            Step(id="never", tool="search", params={"query": "x"}, when="${f} > 100"),
        ],
        output="${s.hits}",
    )


@pytest.fixture
def orch(store: ExecutionStore):
    with Orchestrator(
        make_registry(), store=store, config=OrchestratorConfig(retry=FAST_RETRY)
    ) as orchestrator:
        yield orchestrator


def test_a_run_reads_saved_state_off_the_event_loop(
    orch: Orchestrator, store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    """The quality policies and the tools' saved states were read from the store on the
    event loop: a slow database stalled every request of the API server."""
    on_loop: list[bool] = []
    read = store.get_state_entries

    def recording(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return read(*args, **kwargs)

    monkeypatch.setattr(store, "get_state_entries", recording)
    orch._tool_states_read_at = float("-inf")  # their refresh is due
    orch.policies._cache = None  # never read yet
    asyncio.run(
        orch.run(Plan(goal="g", steps=[Step(id="s", tool="search", params={"query": "q"})]))
    )
    assert on_loop and not any(on_loop)


def test_a_run_in_flight_when_the_orchestrator_closes_is_recorded_cancelled(
    store: ExecutionStore,
):
    """Its steps not yet started failed on the stopped thread pool, as the tools' own
    errors ("cannot schedule new futures after shutdown"), and were counted against them."""
    registry = ToolRegistry()

    def slow(t: float = 0.3) -> str:
        """Take a while."""
        time.sleep(t)
        return "done"

    def echo(text: str) -> str:
        """Echo the text."""
        return text

    registry.register_function(slow)
    registry.register_function(echo)
    orch = Orchestrator(
        registry,
        store=store,
        config=OrchestratorConfig(learning=False, retry=FAST_RETRY, max_parallel_steps=4),
        llm=None,
    )
    plan = Plan(
        goal="g",
        steps=[
            *(Step(id=f"s{i}", tool="slow") for i in range(6)),
            Step(id="z", tool="echo", params={"text": "${s0}"}),
        ],
    )

    async def close_mid_run() -> str:
        running = asyncio.create_task(orch.run(plan))
        await asyncio.sleep(0.1)
        orch.close()
        with pytest.raises(OrchestratorClosedError, match="recorded as cancelled") as closed:
            await running
        return str(closed.value).split("run ", 1)[1].split(" ", 1)[0]

    execution_id = asyncio.run(close_mid_run())
    wait_until_drained(store)
    record = store.get_execution(execution_id)
    assert record is not None and record.status == ExecutionStatus.CANCELLED
    assert all(a.error_type in (None, "cancelled") for a in record.steps)
    assert store.get_tool_statistics("echo") is None  # no attempt of it was its own


class SlowToPlan:
    """Plans one step of ``echo``, after ``seconds``: a model taking its time to answer.
    A ``stubborn`` one, cancelled, still takes half a second to hand its plan back."""

    name = "slow_to_plan"

    def __init__(self, seconds: float, *, stubborn: bool = False) -> None:
        self.seconds = seconds
        self.stubborn = stubborn
        self.planning = threading.Event()
        self.cancelled = threading.Event()

    async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Plan:
        self.planning.set()
        try:
            await asyncio.sleep(self.seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            if not self.stubborn:
                raise
            await asyncio.sleep(0.5)
        return Plan(goal=goal, steps=[Step(id="s", tool="echo", params={"text": goal})])


def echo_registry() -> ToolRegistry:
    registry = ToolRegistry()

    def echo(text: str) -> str:
        """Echo the text."""
        return text

    registry.register_function(echo)
    return registry


def recorded_runs(store_url: str, state_dir: Path) -> list[tuple[str, ExecutionStatus]]:
    """What the database holds, read by a store of its own: its journal is elsewhere, so
    nothing the closed store left there is replayed into what it reads."""
    with ExecutionStore(store_url, state_dir=state_dir) as reader:
        return [(r.goal_text, r.status) for r in reader.get_recent_executions(10)]


def closing_done(timeout: float = 30) -> None:
    """Wait for the closing that ``aclose()`` handed to a thread. Polling the store until it
    says "closed" was not enough: it says so once it stops taking records, and then writes
    the last ones, which a reader opened at once did not find yet (two runs in about 40
    under load)."""
    for thread in threading.enumerate():
        if thread.name == "dendrite-close":
            thread.join(timeout)
            assert not thread.is_alive()


def close_while_planning(orch: Orchestrator, planner: SlowToPlan, goal: str) -> list[BaseException]:
    """Run ``goal`` in a thread, close the orchestrator once its planner (or its repair) is
    at work, and return what the run raised."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            orch.process(goal)
        except BaseException as error:
            raised.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    assert planner.planning.wait(10)
    orch.close(timeout=30)
    thread.join(10)
    return raised


def test_close_waits_until_a_run_on_another_thread_is_recorded_before_closing_its_store(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The run, still planning when close() was called, recorded itself after the store it
    owned had closed: into the journal, and into the database only at the next start. Its
    planning (a model that takes a minute) is cancelled, not waited for."""
    monkeypatch.setenv("DENDRITE_DATABASE_URL", store_url)
    planner = SlowToPlan(60)
    orch = Orchestrator(
        echo_registry(), planner=planner, config=OrchestratorConfig(learning=False), llm=None
    )
    raised = close_while_planning(orch, planner, "planned slowly")
    assert planner.cancelled.is_set()
    assert [type(e) for e in raised] == [OrchestratorClosedError]
    assert recorded_runs(store_url, tmp_path / "reader") == [
        ("planned slowly", ExecutionStatus.CANCELLED)
    ]


class SlowToRepair(SlowToPlan):
    """Plans a step that fails; its repair is a model taking a minute to answer."""

    name = "slow_to_repair"

    async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Plan:
        return Plan(goal=goal, steps=[Step(id="s", tool="fail")])

    async def replan(self, goal, plan, failed_step, error, registry, context) -> Plan:
        return await super().plan(goal, registry, context)


def test_close_cancels_a_runs_repair_rather_than_wait_for_it(tmp_path: Path):
    """A failed run's repair (a model's call) was not cancelled: close() waited for it."""
    registry = echo_registry()

    def fail() -> str:
        """Fail."""
        raise RuntimeError("broken")

    registry.register_function(fail)
    planner = SlowToRepair(60)
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}", state_dir=tmp_path / "s") as store:
        orch = Orchestrator(
            registry,
            store=store,
            planner=planner,
            config=OrchestratorConfig(learning=False, retry=FAST_RETRY),
            llm=None,
        )
        raised = close_while_planning(orch, planner, "fail, then be repaired")
        store.flush()
        (recorded,) = store.get_recent_executions(1)
    assert planner.cancelled.is_set()
    assert [type(e) for e in raised] == [OrchestratorClosedError]
    assert recorded.status == ExecutionStatus.CANCELLED


def test_close_does_not_wait_for_a_run_whose_loop_has_stopped(tmp_path: Path):
    """Ctrl-C in ``loop.run_until_complete(orch.run(...))``, then ``close()`` in a
    ``finally``: nothing runs that loop, so its run cannot end, and close() waited out its
    whole timeout for it."""
    planner = SlowToPlan(60)
    orch = Orchestrator(
        echo_registry(),
        store=ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}", state_dir=tmp_path / "s"),
        planner=planner,
        config=OrchestratorConfig(learning=False),
        llm=None,
    )
    loop = asyncio.new_event_loop()
    try:
        running = loop.create_task(orch.run("interrupted"))
        loop.run_until_complete(asyncio.to_thread(planner.planning.wait, 10))
        closed = threading.Thread(target=orch.close, kwargs={"timeout": 60})
        closed.start()
        closed.join(30)
        assert not closed.is_alive()
        with pytest.raises(OrchestratorClosedError):
            loop.run_until_complete(running)  # the loop runs again: the run ends, recorded
    finally:
        loop.close()
        assert orch.store is not None
        orch.store.close()


def test_a_cancelled_aclose_still_closes_the_store_once_the_runs_are_recorded(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """aclose() marked the orchestrator closed, then was cancelled while it awaited the
    runs: every later close() returned at once, and the store was never drained or
    closed."""
    monkeypatch.setenv("DENDRITE_DATABASE_URL", store_url)
    planner = SlowToPlan(60, stubborn=True)
    orch = Orchestrator(
        echo_registry(), planner=planner, config=OrchestratorConfig(learning=False), llm=None
    )

    async def cancel_the_closing() -> None:
        running = asyncio.create_task(orch.run("closed, then not"))
        while not planner.planning.is_set():
            await asyncio.sleep(0.01)
        closing = asyncio.create_task(orch.aclose())
        while not planner.cancelled.is_set():
            await asyncio.sleep(0.01)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        with pytest.raises(OrchestratorClosedError):
            await running

    asyncio.run(cancel_the_closing())
    closing_done()
    assert orch.store is not None
    with pytest.raises(StoreUnavailableError, match="closed"):
        orch.store.get_recent_executions(1)
    assert recorded_runs(store_url, tmp_path / "reader") == [
        ("closed, then not", ExecutionStatus.CANCELLED)
    ]


def test_leaving_async_with_inside_another_orchestrators_run_closes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A tool of one orchestrator's run that uses another with ``async with`` left the
    block with that one's store still open: aclose() took any run for its own and closed it
    later, from a thread."""
    monkeypatch.setenv("DENDRITE_DATABASE_URL", f"sqlite:///{tmp_path / 'inner.db'}")
    closed_on_leaving: list[bool] = []
    closed_by: list[str] = []

    async def consult() -> str:
        """Ask another orchestrator."""
        async with Orchestrator(
            echo_registry(), config=OrchestratorConfig(learning=False), llm=None
        ) as inner:
            assert inner.store is not None
            close_store = inner.store.close

            def close_and_say_who() -> None:
                closed_by.append(threading.current_thread().name)
                close_store()

            inner.store.close = close_and_say_who  # type: ignore[method-assign]
            answer = await inner.run(
                Plan(goal="g", steps=[Step(id="s", tool="echo", params={"text": "inner"})])
            )
        assert inner.store is not None
        try:
            inner.store.get_recent_executions(1)
        except StoreUnavailableError:
            closed_on_leaving.append(True)
        else:
            closed_on_leaving.append(False)
        return str(answer.output)

    registry = ToolRegistry()
    registry.register_function(consult)
    with (
        ExecutionStore(f"sqlite:///{tmp_path / 'outer.db'}", state_dir=tmp_path / "s") as kept,
        Orchestrator(registry, store=kept, config=OrchestratorConfig(learning=False)) as outer,
    ):
        result = outer.process(Plan(goal="g", steps=[Step(id="c", tool="consult")]))
    assert result.success and result.output == "inner"
    assert closed_on_leaving == [True]
    assert len(closed_by) == 1 and closed_by[0] != "dendrite-close"


def test_leaving_async_with_waits_for_the_runs_on_its_own_loop_to_be_recorded(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """``async with`` closed the orchestrator without letting the loop run: its runs could
    record themselves only after their store had closed."""
    monkeypatch.setenv("DENDRITE_DATABASE_URL", store_url)
    planner = SlowToPlan(0.3)

    async def leave_mid_run() -> BaseException | None:
        async with Orchestrator(
            echo_registry(), planner=planner, config=OrchestratorConfig(learning=False), llm=None
        ) as orch:
            running = asyncio.create_task(orch.run("left behind"))
            while not planner.planning.is_set():
                await asyncio.sleep(0.01)
        assert running.done()
        return running.exception()

    assert isinstance(asyncio.run(leave_mid_run()), OrchestratorClosedError)
    assert recorded_runs(store_url, tmp_path / "reader") == [
        ("left behind", ExecutionStatus.CANCELLED)
    ]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_tool_that_closes_its_own_orchestrator_ends_its_run_and_closes_the_store(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Its own run ends (cancelled) without waiting for the tool, so close() can wait for it;
    awaited inside the run, ``aclose()`` was cancelled with it and left the store open."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    monkeypatch.setenv("DENDRITE_DATABASE_URL", url)
    registry = ToolRegistry()
    closed = threading.Event()

    def shut_down() -> str:
        """Close the orchestrator."""
        orch.close()
        closed.set()
        return "closed"

    async def shut_down_async() -> str:
        """Close the orchestrator."""
        await orch.aclose()
        closed.set()
        return "closed"

    registry.register_function(shut_down if kind == "sync" else shut_down_async)
    orch = Orchestrator(registry, config=OrchestratorConfig(learning=False), llm=None)
    tool = registry.names()[0]
    with pytest.raises(OrchestratorClosedError):
        orch.process(Plan(goal="closes itself", steps=[Step(id="s", tool=tool)]))
    assert closed.wait(30)
    closing_done()  # aclose() inside a run closes the store from a thread
    assert orch.store is not None
    with pytest.raises(StoreUnavailableError, match="closed"):
        orch.store.get_recent_executions(1)
    assert recorded_runs(url, tmp_path / "reader") == [("closes itself", ExecutionStatus.CANCELLED)]


def test_every_run_and_attempt_lands_in_the_store(orch: Orchestrator, store: ExecutionStore):
    result = orch.process(demo_plan(), session_id="sess-1")
    assert result.success and result.status is ExecutionStatus.SUCCEEDED
    assert result.output == ["dendrite-1", "dendrite-2"]
    assert 0 < result.confidence < 1
    store.flush()
    detail = store.get_execution(result.execution_id)
    assert detail is not None and detail.goal_id == "goal_1"
    assert detail.session_id == "sess-1" and detail.success
    assert detail.confidence_score == pytest.approx(result.confidence)
    attempts = sorted((a.step_id, a.tool_name, a.attempt, a.success) for a in detail.steps)
    assert attempts == [
        ("b", "backup", 1, True),
        ("b", "broken", 1, False),
        ("f", "flaky", 1, False),
        ("f", "flaky", 2, False),
        ("f", "flaky", 3, True),
        ("s", "search", 1, True),
    ]
    fallback = next(a for a in detail.steps if a.tool_name == "backup")
    assert fallback.fallback_of == "broken"
    timeouts = [a for a in detail.steps if a.tool_name == "flaky" and not a.success]
    assert {a.error_type for a in timeouts} == {ErrorType.TIMEOUT}
    steps = {s["step_id"]: s for s in detail.metadata["steps"]}
    assert steps["never"]["status"] == "skipped"
    assert detail.metadata["planner"] == "explicit"
    assert detail.metadata["output"] == ["dendrite-1", "dendrite-2"]
    stats = store.get_tool_statistics("flaky")
    assert (stats.total_executions, stats.successful_executions) == (3, 1)


@pytest.mark.parametrize(
    "classification",
    [5, "search", {"intent": 7}, {"intent": "x" * 65, "query_type": None}, {}],
    ids=["a number", "a string", "a number as intent", "an intent too long", "empty"],
)
def test_a_plan_with_odd_classification_metadata_is_still_recorded(
    orch: Orchestrator, store: ExecutionStore, classification: Any
):
    """A hand-written plan's metadata is the caller's: the run is recorded with the
    goal's own labels where the plan's cannot be kept (it was lost, a TypeError logged)."""
    plan = Plan(
        goal="search the notes for dendrite",
        steps=[Step(id="s", tool="search", params={"query": "dendrite"})],
        metadata={"classification": classification},
    )
    result = orch.process(plan)
    assert result.success
    store.flush()
    detail = store.get_execution(result.execution_id)
    assert detail is not None and detail.success
    assert (detail.intent, detail.query_type) == ("tool_use", "search")


def test_a_plans_own_labels_are_recorded_where_they_can_be_kept(
    orch: Orchestrator, store: ExecutionStore
):
    plan = Plan(
        goal="search the notes for dendrite",
        steps=[Step(id="s", tool="search", params={"query": "dendrite"})],
        metadata={"classification": {"intent": "lookup", "query_type": 3}},
    )
    result = orch.process(plan)
    store.flush()
    detail = store.get_execution(result.execution_id)
    assert detail is not None
    assert (detail.intent, detail.query_type) == ("lookup", "search")


@pytest.mark.parametrize(
    "metadata",
    [{"why": 5}, {"why": "xy"}, {"replans": 5}, {"strategy": object()}, {"raw": b"\xff"}],
    ids=["why a number", "why a string", "replans a number", "an object", "bytes"],
)
def test_a_plan_with_odd_metadata_or_params_is_recorded_and_traced(
    store: ExecutionStore, metadata: dict[str, Any]
):
    """The metadata and params of a hand-written plan are the caller's: the run was lost
    (a TypeError or a serialization error after its tools had run) and its trace failed."""

    def echo(value: Any = None) -> str:
        return "ok"

    registry = ToolRegistry()
    registry.register_function(echo)
    plan = Plan(
        goal="echo a value",
        steps=[Step(id="s", tool="echo", params={"value": object()})],
        metadata=metadata,
    )
    with Orchestrator(registry, store=store, learning=None) as orchestrator:
        result = orchestrator.process(plan)
    assert result.success
    store.flush()
    detail = store.get_execution(result.execution_id)
    assert detail is not None and [a.tool_name for a in detail.steps] == ["echo"]
    (value,) = detail.metadata["plan"]["steps"][0]["params"].values()
    assert value["$type"] == "builtins.object"
    assert detail.metadata["replans"] == [] and isinstance(detail.metadata["why"], dict)
    trace = load_trace(store, result.execution_id)
    assert trace is not None and trace.replans == []


def test_an_exception_whose_message_cannot_be_read_still_fails_over_to_the_fallback(
    store: ExecutionStore,
):
    """A tool's exception whose __str__ raises broke the engine's bookkeeping of the
    attempt: the fallback was never tried and the run's error named the wrong failure."""

    class Unreadable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("str exploded")

    def primary() -> int:
        raise Unreadable()

    def spare() -> int:
        return 7

    def dirty() -> int:
        raise ValueError("bad\x00byte \udcff")

    registry = ToolRegistry()
    registry.register_function(primary, alternatives=["spare"])
    registry.register_function(spare)
    registry.register_function(dirty)
    with Orchestrator(registry, store=store, learning=None) as orchestrator:
        result = orchestrator.process(Plan(goal="g", steps=[Step(id="a", tool="primary")]))
        failed = orchestrator.process(Plan(goal="g", steps=[Step(id="d", tool="dirty")]))
    assert result.success and result.output == 7
    assert not failed.success
    store.flush()
    attempts = {a.tool_name: a for a in store.get_execution(result.execution_id).steps}
    assert attempts["primary"].error == "Unreadable: <str() raised RuntimeError>"
    assert attempts["primary"].error_type is ErrorType.TOOL_ERROR
    assert attempts["spare"].success and attempts["spare"].fallback_of == "primary"
    (dirty,) = store.get_execution(failed.execution_id).steps
    assert dirty.error == "ValueError: bad\ufffdbyte \ufffd"
    assert store.status().rejected_records == 0


class Abort(BaseException):
    """Not an Exception: a tool's own control-flow signal, or a library's."""


def test_a_tool_raising_any_base_exception_fails_its_step_and_the_run_is_recorded(
    store: ExecutionStore,
):
    """KeyboardInterrupt, GeneratorExit or a BaseException of a tool's own went past the
    engine: the run raised "the engine crashed" and was never recorded, and inside a
    for_each step the event loop re-raised it and stopped an API server."""

    def interrupts(x: int = 0) -> int:
        raise KeyboardInterrupt("tool interrupted")

    async def aborts(x: int = 0) -> int:
        raise Abort("stop")

    async def exits(x: int = 0) -> int:
        raise GeneratorExit()

    def numbers() -> list[int]:
        return [1, 2, 3]

    registry = ToolRegistry()
    for func in (interrupts, aborts, exits, numbers):
        registry.register_function(func)
    plans = [
        Plan(goal="g", steps=[Step(id="s", tool=name)])
        for name in ("interrupts", "aborts", "exits")
    ]
    items = Step(id="n", tool="numbers")
    each = Step(id="s", tool="aborts", for_each="${n}", params={"x": "${item}"})
    plans.append(Plan(goal="g", steps=[items, each]))
    with Orchestrator(
        registry, store=store, learning=None, config=OrchestratorConfig(retry=FAST_RETRY)
    ) as orchestrator:
        results = [orchestrator.process(plan) for plan in plans]
    store.flush()
    for result, error in zip(
        results,
        ["KeyboardInterrupt: tool interrupted", "Abort: stop", "GeneratorExit", "Abort: stop"],
        strict=True,
    ):
        assert result.status is ExecutionStatus.FAILED
        assert result.steps[-1].error_type is ErrorType.TOOL_ERROR
        recorded = store.get_execution(result.execution_id)
        assert recorded.status is ExecutionStatus.FAILED
        assert error in [step.error for step in recorded.steps]


def test_a_run_the_engine_crashes_on_is_recorded_as_failed_and_raised(
    orch: Orchestrator, store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    """The run's own bookkeeping handled only cancellation: any other exception from the
    engine (a bug) left attempts in the store without their execution."""

    async def crashes(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the engine crashed running step 's'")

    monkeypatch.setattr(orch.engine, "execute", crashes)
    with pytest.raises(RuntimeError, match="the engine crashed"):
        orch.process(Plan(goal="crash", steps=[Step(id="s", tool="search", params={"query": "q"})]))
    store.flush()
    (recorded,) = [e for e in store.get_recent_executions(10) if e.goal_text == "crash"]
    assert recorded.status is ExecutionStatus.FAILED and recorded.error_type is ErrorType.UNKNOWN
    assert recorded.error == "the run crashed: RuntimeError: the engine crashed running step 's'"


def test_a_step_that_changes_its_input_in_place_leaves_the_recorded_result_alone(
    store: ExecutionStore,
):
    """The next step gets the very list the first returned: its history must not change."""
    registry = ToolRegistry()

    def numbers() -> list[int]:
        return [3, 1, 2]

    def sort_in_place(values: Any) -> int:  # ``Any``: validation passes the very object on
        values.sort()
        values.append(99)
        return len(values)

    registry.register_function(numbers)
    registry.register_function(sort_in_place)
    plan = Plan(
        goal="sort",
        steps=[
            Step(id="n", tool="numbers", params={}),
            Step(id="s", tool="sort_in_place", params={"values": "${n}"}),
        ],
        output="${s}",
    )
    with Orchestrator(registry, store=store) as orchestrator:
        result = orchestrator.process(plan)
    assert result.output == 4
    store.flush()
    steps = {a.step_id: a for a in store.get_execution(result.execution_id).steps}
    assert steps["n"].result == [3, 1, 2]
    assert steps["s"].parameters == {"values": [3, 1, 2]}


def test_a_value_whose_repr_raises_is_recorded_and_does_not_fail_the_step(
    store: ExecutionStore,
):
    """Arguments are encoded before the call: an object that cannot even be named (its
    ``repr`` raises, a closed handle say) is stored as its type and address instead."""

    class Handle:
        def __repr__(self) -> str:
            raise RuntimeError("repr of a closed handle")

    registry = ToolRegistry()

    def make() -> Any:
        return Handle()

    def use(handle: Any) -> str:
        return "used"

    registry.register_function(make)
    registry.register_function(use)
    plan = Plan(
        goal="use a handle",
        steps=[Step(id="a", tool="make"), Step(id="b", tool="use", params={"handle": "${a}"})],
        output="${b}",
    )
    with Orchestrator(registry, store=store, learning=None) as orchestrator:
        result = orchestrator.process(plan)
    assert result.success and result.output == "used"
    store.flush()
    steps = {a.step_id: a for a in store.get_execution(result.execution_id).steps}
    handle = steps["b"].parameters["handle"]
    assert handle["$type"].endswith("Handle") and handle["$error"].startswith("RuntimeError")
    assert steps["a"].result["$repr"].startswith("<") and store.status().rejected_records == 0


def test_failed_and_partial_runs_are_recorded_with_their_status(
    orch: Orchestrator, store: ExecutionStore
):
    orch.registry.disable("backup")
    failed = orch.process(Plan(goal="fail", steps=[Step(id="b", tool="broken", params={"x": 1})]))
    assert not failed.success and failed.status is ExecutionStatus.FAILED
    assert failed.error_type is ErrorType.TOOL_ERROR and "broken tool" in failed.error
    partial = orch.process(
        Plan(
            goal="partial",
            steps=[
                Step(id="b", tool="broken", params={"x": 1}, continue_on_error=True),
                Step(id="s", tool="search", params={"query": "q"}),
            ],
        )
    )
    assert partial.success and partial.status is ExecutionStatus.PARTIAL
    store.flush()
    assert store.get_execution(failed.execution_id).status == ExecutionStatus.FAILED
    assert store.get_execution(partial.execution_id).status == ExecutionStatus.PARTIAL
    assert store.get_success_rate().total == 2


def test_planning_and_validation_failures_raise_and_are_recorded(
    orch: Orchestrator, store: ExecutionStore
):
    with pytest.raises(PlanningError, match="no planner could plan 'bake a cake'"):
        orch.process("bake a cake")
    with pytest.raises(PlanValidationError, match="unknown tool 'serch'"):
        orch.process(Plan(goal="typo", steps=[Step(id="a", tool="serch")]))
    store.flush()
    recorded = store.get_recent_executions(10)
    assert {r.goal_text for r in recorded} == {"bake a cake", "typo"}
    assert all(not r.success and r.error_type is ErrorType.VALIDATION for r in recorded)
    typo = next(r for r in recorded if r.goal_text == "typo")
    assert typo.metadata["problems"][0].startswith("step 'a': tool: unknown tool 'serch'")


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this message cannot be read")


def test_a_planner_error_whose_message_cannot_be_read_is_recorded_and_raised(
    store: ExecutionStore,
):
    """Formatting the planner's error raised from its ``__str__``: the caller got that
    RuntimeError instead of the planner's own error, and the run was never recorded."""

    class BrokenPlanner:
        name = "broken"

        async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Plan:
            raise Unprintable()

    orch = Orchestrator(make_registry(), store=store, planner=BrokenPlanner(), llm=None)
    with pytest.raises(Unprintable):
        orch.process("search for dendrites")
    orch.close()
    store.flush()
    (record,) = store.get_recent_executions(5)
    assert record.error == "the planner failed: Unprintable: <str() raised RuntimeError>"
    assert record.metadata["planner"] == "broken" and not record.success


def test_process_does_not_chain_a_runs_errors_to_the_missing_event_loop(orch: Orchestrator):
    """The run started inside the handler of "no running event loop", so every error of
    it came with that RuntimeError as its context, first in the caller's traceback."""
    with pytest.raises(PlanValidationError) as raised:
        orch.process(Plan(goal="typo", steps=[Step(id="a", tool="serch")]))
    assert raised.value.__context__ is None


def test_a_configured_project_too_long_to_record_is_refused_up_front(store: ExecutionStore):
    """A context's project is refused before the run; the configuration's was taken, and
    then the store refused the record of every run, which went unrecorded."""
    with pytest.raises(ValidationError, match="project"):
        OrchestratorConfig(project="p" * (MAX_PROJECT + 1))
    config = OrchestratorConfig(project="p" * MAX_PROJECT)
    with Orchestrator(make_registry(), store=store, config=config, llm=None) as orch:
        result = orch.process(
            Plan(goal="g", steps=[Step(id="s", tool="search", params={"query": "q"})])
        )
    store.flush()
    assert store.get_execution(result.execution_id).project == "p" * MAX_PROJECT


def test_the_single_tool_planner_runs_a_named_tool(store: ExecutionStore):
    orch = Orchestrator(make_registry(), store=store, planner=SingleToolPlanner(), llm=None)
    result = orch.process("search notes about dendrites")
    assert result.output["hits"] == ["notes about dendrites-1", "notes about dendrites-2"]
    store.flush()
    assert store.get_execution(result.execution_id).metadata["planner"] == "single_tool"


def test_nested_runs_are_recorded_with_parent_and_depth(store: ExecutionStore):
    registry = make_registry()
    holder: dict[str, Orchestrator] = {}

    async def outer(query: str) -> list:
        inner = await holder["o"].run(
            Plan(
                goal=f"inner {query}", steps=[Step(id="s", tool="search", params={"query": query})]
            )
        )
        return inner.output["hits"]

    def outer_sync(query: str) -> str:
        nested = holder["o"].process(
            Plan(
                goal=f"sync inner {query}",
                steps=[Step(id="o", tool="outer", params={"query": query})],
            )
        )
        return nested.execution_id

    registry.register_function(outer)
    registry.register_function(outer_sync)
    with Orchestrator(registry, store=store) as orchestrator:
        holder["o"] = orchestrator
        top = orchestrator.process(
            Plan(goal="top", steps=[Step(id="t", tool="outer_sync", params={"query": "q"})])
        )
    assert top.success and top.depth == 0
    store.flush()
    middle = store.get_execution(top.output)
    assert (middle.parent_id, middle.depth) == (top.execution_id, 1)
    inner = [r for r in store.get_recent_executions(10) if r.goal_text == "inner q"]
    assert len(inner) == 1 and (inner[0].parent_id, inner[0].depth) == (middle.id, 2)


def test_nesting_deeper_than_max_depth_is_refused(store: ExecutionStore):
    registry = ToolRegistry()
    holder: dict[str, Orchestrator] = {}

    async def recurse(n: int) -> int:
        result = await holder["o"].run(
            Plan(goal="r", steps=[Step(id="r", tool="recurse", params={"n": n + 1})])
        )
        if not result.success:
            raise RuntimeError(result.error)
        return result.output

    registry.register_function(recurse)
    with Orchestrator(registry, store=store, config=OrchestratorConfig(max_depth=2)) as o:
        holder["o"] = o
        result = o.process(Plan(goal="r", steps=[Step(id="r", tool="recurse", params={"n": 0})]))
    assert not result.success
    assert "run nesting is 3 deep, more than max_depth=2" in result.error


def test_stream_yields_events_in_order_ending_with_the_answer(orch: Orchestrator):
    async def collect():
        return [event async for event in orch.stream(demo_plan())]

    events = asyncio.run(collect())
    kinds = [e.type for e in events]
    assert kinds[0] is EventType.PLAN_CREATED and kinds[-1] is EventType.FINAL_ANSWER
    assert EventType.STEP_RETRY in kinds and EventType.FALLBACK_USED in kinds
    assert EventType.STEP_SKIPPED in kinds
    for step_id in ("s", "f", "b"):
        own = [e.type for e in events if e.step_id == step_id]
        assert own[0] is EventType.STEP_STARTED and own[-1] is EventType.STEP_FINISHED
    final = events[-1].data
    assert final["success"] and final["output"] == ["dendrite-1", "dendrite-2"]
    assert {e.execution_id for e in events} == {events[0].execution_id}


def test_stream_surfaces_a_planning_error(orch: Orchestrator):
    async def collect():
        return [event async for event in orch.stream("bake a cake")]

    with pytest.raises(PlanningError):
        asyncio.run(collect())


def test_cancelled_runs_are_recorded_as_cancelled(store: ExecutionStore):
    registry = ToolRegistry()
    entered = asyncio.Event()

    async def wait_forever() -> None:
        entered.set()
        await asyncio.sleep(60)

    registry.register_function(wait_forever)
    orchestrator = Orchestrator(registry, store=store)
    plan = Plan(goal="cancel me", steps=[Step(id="w", tool="wait_forever")])

    async def go():
        task = asyncio.create_task(orchestrator.run(plan))
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    orchestrator.close()
    store.flush()
    (record,) = store.get_recent_executions(5)
    assert record.status == ExecutionStatus.CANCELLED and record.error_type is ErrorType.CANCELLED
    detail = store.get_execution(record.id)
    assert [(a.tool_name, a.error_type) for a in detail.steps] == [
        ("wait_forever", ErrorType.CANCELLED)
    ]


class SlowFeaturiser:
    """The router's own featuriser behind a slow embedding service."""

    def __init__(self) -> None:
        self.inner = HashedFeaturiser()
        self.started = threading.Event()

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def dim(self) -> int:
        return self.inner.dim

    def vectorise(self, features: TaskFeatures, *, grow: bool = True) -> Any:
        self.started.set()
        time.sleep(0.3)
        return self.inner.vectorise(features, grow=grow)

    def vectorise_many(self, items: Any, *, grow: bool = True) -> Any:
        return self.inner.vectorise_many(items, grow=grow)


def test_a_run_cancelled_while_the_router_decides_is_recorded_and_its_decision_withdrawn(
    store: ExecutionStore,
):
    """Cancelled before it planned (a client gone at once), a run left no execution, and
    its routing decision, made in its thread all the same, waited for an outcome for good."""
    featuriser = SlowFeaturiser()
    router = Router(["small", "large"], store=store, router_name="pool", featuriser=featuriser)
    orch = Orchestrator(make_registry(), store=store, llm=None, router=router)
    plan = Plan(goal="look it up", steps=[Step(id="s", tool="search", params={"query": "x"})])

    async def cancel_while_deciding() -> None:
        running = asyncio.create_task(orch.run(plan))
        await asyncio.to_thread(featuriser.started.wait, 5)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(cancel_while_deciding())
    assert router.pending == []
    orch.close()
    store.flush()
    (record,) = store.get_recent_executions(5)
    assert record.status == ExecutionStatus.CANCELLED and record.error_type is ErrorType.CANCELLED
    (routed,) = store.get_routing_outcomes(router="pool")
    assert routed.decision.execution_id == record.id and routed.outcome is not None


def test_traces_from_memory_and_from_the_store(orch: Orchestrator, store: ExecutionStore):
    result = orch.process(demo_plan())
    trace = orch.get_execution_trace(result.execution_id)
    assert trace.fallbacks == ["b"] and trace.planner == "explicit"
    steps = {s["step_id"]: s for s in trace.steps}
    assert len(steps["f"]["attempts"]) == 3 and steps["f"]["confidence"] > 0
    store.flush()
    with Orchestrator(make_registry(), store=store) as fresh:
        from_store = fresh.get_execution_trace(result.execution_id)
        assert from_store is not None
        assert from_store.to_dict()["steps"] == trace.to_dict()["steps"]
        assert from_store.confidence == pytest.approx(trace.confidence)
        assert fresh.get_execution_trace("00000000-0000-7000-8000-000000000000") is None


def test_traces_of_runs_recorded_with_full_step_dictionaries_still_load(
    orch: Orchestrator, store: ExecutionStore
):
    """Earlier versions recorded every field of each step, timestamps as ISO strings."""
    result = orch.process(demo_plan())
    store.flush()
    full = [s.to_dict(include_output=False, include_attempts=False) for s in result.steps]
    store.store_execution(
        id=new_id(),
        goal_text="recorded the old way",
        started_at=result.started_at,
        duration_ms=result.duration_ms,
        metadata={"planner": "explicit", "steps": full},
    )
    old_id = store.get_recent_executions(1)[0].id
    store.store_tool_execution(
        execution_id=old_id, tool_name="search", parameters={}, result=1, success=True,
        duration_ms=1.0, step_id="s", started_at=result.started_at,
    )  # fmt: skip
    store.flush()
    trace = load_trace(store, old_id)
    assert trace is not None
    by_id = {s["step_id"]: s for s in trace.steps}
    assert [s["step_id"] for s in trace.steps] == [s.step_id for s in result.steps]
    assert by_id["s"]["started_at"] == result.steps[0].started_at.isoformat()
    assert by_id["s"]["finished_at"] == result.steps[0].finished_at.isoformat()
    assert [a["tool"] for a in by_id["s"]["attempts"]] == ["search"]
    assert by_id["b"]["error"] == next(s.error for s in result.steps if s.step_id == "b")


def test_summary_counts_success_timing_confidence_and_errors(
    orch: Orchestrator, store: ExecutionStore
):
    orch.registry.disable("backup")
    orch.process(demo_plan())
    orch.process(Plan(goal="f", steps=[Step(id="b", tool="broken", params={"x": 1})]))
    store.flush()
    summary = orch.get_execution_summary()
    assert summary["executions"] == 2 and summary["successful"] == 0
    assert summary["error_types"] == {"tool_error": 2}
    assert summary["source"] == "store" and summary["recording_failures"] == 0


def test_a_run_whose_every_step_a_false_condition_skipped_is_sure_of_it():
    """It read confidence 0 and was flagged for review, as a failed run is."""
    registry = ToolRegistry()
    registry.register_function(lambda text: text, name="echo")
    plan = Plan(goal="g", steps=[Step(id="e", tool="echo", params={"text": "x"}, when="1 > 2")])
    with Orchestrator(registry, store=None, llm=None) as orch:
        result = orch.process(plan)
    assert result.success and result.steps[0].status.value == "skipped"
    assert result.confidence == 1.0 and not result.needs_review


def test_history_lowers_confidence_of_a_tool_that_often_failed(store: ExecutionStore):
    plan = Plan(goal="s", steps=[Step(id="s", tool="search", params={"query": "q"})])
    with Orchestrator(make_registry(), store=store, config=OrchestratorConfig(history_ttl=0)) as o:
        fresh = o.process(plan).confidence
        for _ in range(20):
            store.store_tool_execution(o.process(plan).execution_id, "search", {}, None, False, 1.0)
        store.flush()
        worse = o.process(plan).confidence
    assert fresh == pytest.approx(0.85) and worse < fresh


def test_session_state_persists_across_runs_and_orchestrators(store: ExecutionStore):
    plan = Plan(goal="r", steps=[Step(id="r", tool="remember", params={"key": "k", "value": "v"})])
    with Orchestrator(make_registry(), store=store) as o:
        assert o.process(plan, session_id="s1").output == "v"
        assert o.state.get("session", "k", scope_id="s1") == "v"
    with Orchestrator(make_registry(), store=store) as o:
        assert o.state.get("session", "k", scope_id="s1") == "v"
        assert o.get_state_summary()


def test_recording_can_be_off_and_the_default_store_is_the_configured_one(tmp_path: Path):
    with Orchestrator(make_registry(), store=None) as o:
        assert o.process(demo_plan()).success
        assert o.get_execution_summary()["source"] == "memory"
    with Orchestrator(make_registry()) as o:
        assert o.store is not None and str(tmp_path / "home") in o.store.url
        result = o.process(demo_plan())
    with ExecutionStore() as store:
        assert store.get_execution(result.execution_id) is not None


def test_a_closed_store_never_fails_a_run_and_its_records_land_at_the_next_start(
    store_url: str, tmp_path: Path
):
    state = tmp_path / "state"
    store = ExecutionStore(store_url, state_dir=state)
    with Orchestrator(
        make_registry(), store=store, config=OrchestratorConfig(retry=FAST_RETRY)
    ) as o:
        store.close()
        result = o.process(demo_plan())
        assert result.success and result.output == ["dendrite-1", "dendrite-2"]
    with ExecutionStore(store_url, state_dir=state) as reopened:
        wait_until_drained(reopened)
        detail = reopened.get_execution(result.execution_id)
        assert detail is not None and len(detail.steps) == 6


def test_postgres_down_during_a_run_then_everything_lands(tmp_path: Path):
    registry = make_registry()
    gate = asyncio.Event()

    async def wait_for_gate() -> str:
        await gate.wait()
        return "through"

    registry.register_function(wait_for_gate)
    with pg_database() as url:
        name = make_url(url).database
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        orchestrator = Orchestrator(
            registry, store=store, config=OrchestratorConfig(retry=FAST_RETRY, history_ttl=3600)
        )
        plan = Plan(
            goal="survive an outage",
            steps=[
                Step(id="s", tool="search", params={"query": "a"}),
                Step(id="g", tool="wait_for_gate", depends_on=["s"]),
                *[Step(id=f"w{i}", tool="search", params={"query": "${g}"}) for i in range(20)],
            ],
        )

        async def go():
            task = asyncio.create_task(orchestrator.run(plan))
            await asyncio.sleep(0.2)  # 's' ran and its attempt was written
            pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            pg_admin(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            )
            gate.set()
            return await task

        result = asyncio.run(go())
        assert result.success
        store.flush()
        assert not store.status().reachable
        pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        wait_until_drained(store)
        detail = store.get_execution(result.execution_id)
        orchestrator.close()
        store.close()
    assert detail is not None and detail.success
    assert len(detail.steps) == 22


def test_a_database_down_is_logged_in_lines_not_tracebacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A store that cannot be reached is a state Dendrite expects (it journals): each read
    that found it down logged a traceback, two dozen in a server's first seconds."""
    monkeypatch.setenv("DENDRITE_HOME", str(tmp_path))
    registry = ToolRegistry()
    register_math(registry)
    caplog.set_level(logging.INFO, logger="dendrite")
    with (
        ExecutionStore("postgresql+psycopg://postgres@127.0.0.1:1/down") as store,
        Orchestrator(registry, store=store, llm=None) as orch,
    ):
        assert orch.process("calculate 1 + 1").output == 2
    said = [r for r in caplog.records if r.name.startswith("dendrite")]
    assert any("could not read the history" in r.getMessage() for r in said)
    assert not [r.getMessage() for r in said if r.exc_info]
