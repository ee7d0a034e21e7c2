"""The DAG engine: runs a validated plan as fast as its dependencies allow.

A step starts the moment its own dependencies are done (there is no
level-by-level barrier), up to ``max_parallel_steps`` at once. Async tools run
on the event loop; sync tools run in a thread pool so a blocking tool cannot
stall its siblings. Each attempt is reported to an :class:`AttemptRecorder`
(the orchestrator's store adapter) as it ends, so a run that dies half-way
still leaves its trace.

Failure handling, per step: retries with exponential back-off and jitter, for
retryable errors only (a wrong argument fails the same way every time); then
the step's own ``fallbacks``, then its tool's ``alternatives``, each with the
same retry policy. A step that still fails makes its dependents skip, unless
it is ``continue_on_error``, in which case they run and see ``None`` as its
output.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Set
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import CoroutineType
from typing import Any, Protocol

from dendrite.execution.confidence import (
    CONDITION_FALSE,
    run_confidence,
    step_confidence,
    tool_success,
)
from dendrite.execution.events import Attempt, Event, EventType, StepResult, StepStatus
from dendrite.planning import references
from dendrite.planning.conditions import ConditionError, compile_condition
from dendrite.planning.plan import Plan, RetryPolicy, Step
from dendrite.store.serialize import dumps
from dendrite.telemetry import ErrorType
from dendrite.telemetry.errors import described
from dendrite.tools import (
    StateAccess,
    Tool,
    ToolArgumentError,
    ToolContext,
    ToolError,
    ToolRegistry,
)

log = logging.getLogger("dendrite.execution")

YIELD_EVERY = 64
"""Steps a worker runs back to back before it lets the event loop run other tasks."""

Emit = Callable[[Event], None]


class AttemptRecorder(Protocol):
    """Where each attempt goes as soon as it ends (the store, in the orchestrator).

    ``params`` are the JSON text of the arguments as the tool got them: encoded
    before the call, since a tool may change the objects it was given.
    """

    def record_attempt(
        self,
        execution_id: str,
        step_id: str,
        attempt: Attempt,
        params: str,
        result: Any,
    ) -> None: ...


class _NoState:
    """State for tools run without a state manager: reads find nothing, writes are refused."""

    def get(self, key: str, default: Any = None, scope: str | None = None) -> Any:
        return default

    def set(self, key: str, value: Any, scope: str = "execution", ttl: float | None = None) -> None:
        raise RuntimeError("this run has no state manager")

    def delete(self, key: str, scope: str = "execution") -> bool:
        return False


@dataclass(slots=True)
class RunOutcome:
    steps: dict[str, StepResult]
    output: Any
    success: bool
    partial: bool
    confidence: float
    error: str | None
    error_type: ErrorType | None


@dataclass(slots=True)
class _Scope(Mapping[str, Any]):
    """What references resolve against: step outputs, the run's context, the current item.

    ``soft_failed``: the steps that failed with ``continue_on_error``; they read as
    :data:`references.NO_OUTPUT`, so a path into one is None, not a failure.
    """

    outputs: dict[str, Any]
    context: Mapping[str, Any]
    soft_failed: Set[str]
    item: Any = None
    has_item: bool = False

    def __getitem__(self, key: str) -> Any:
        if key == references.CONTEXT:
            return self.context
        if key == references.ITEM:
            if self.has_item:
                return self.item
            # Validation refuses it; a plan run unvalidated gets a step failure, not a crash.
            raise references.UnresolvedReferenceError(
                "${item} has no value here: it is the current element in a for_each step's "
                "params, not in its for_each or when"
            )
        if key in self.soft_failed:
            return references.NO_OUTPUT
        return self.outputs[key]

    def __iter__(self) -> Any:
        return iter(self.outputs)

    def __len__(self) -> int:
        return len(self.outputs)


class _DeadlinePassed(TimeoutError):
    """The engine's deadline for a call passed (not a ``TimeoutError`` the tool raised).

    ``thread``: for a sync tool, its call in the executor, which no deadline can stop (a
    tool that takes a ``ToolContext`` stops when told to).
    """

    def __init__(self, thread: asyncio.Future[Any] | None = None) -> None:
        super().__init__("the deadline passed")
        self.thread = thread


class _NoThread(TimeoutError):
    """No thread of the executor took a sync call within its timeout: it never ran."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"no free thread took the call within {timeout:g}s; it did not run")


async def _until(awaitable: Awaitable[Any], deadline: float | None) -> Any:
    """``await awaitable``, timed out at ``deadline`` (loop time), if there is one."""
    if deadline is None:
        return await awaitable
    try:
        async with asyncio.timeout_at(deadline) as scope:
            return await awaitable
    except TimeoutError:
        if scope.expired():
            raise _DeadlinePassed() from None
        raise  # the tool's own


class _PoolClosed(Exception):
    """The engine was closed (its orchestrator too) before a sync tool's call could run."""

    def __str__(self) -> str:
        return "not run: the engine was closed (its orchestrator closed during the run)"


class _Carried(Exception):
    """A sync tool's ``StopIteration`` or ``GeneratorExit``, carried out of its thread.

    Neither can reach the event loop as itself: a future refuses a ``StopIteration`` (the
    call never completed, and its attempt waited out its whole timeout, or for ever), and
    a ``GeneratorExit`` woken into the awaiting task closes that task's coroutines, the
    engine's with them, instead of reaching the attempt's ``except`` (the run crashed).
    The attempt fails with ``error``, the tool's own, as for any other error it raises.
    """

    def __init__(self, error: StopIteration | GeneratorExit) -> None:
        super().__init__(described(error))
        self.error = error


class _Unrun(Exception):
    """A tool returned a generator: a value it has not computed yet.

    Its body runs only when something iterates it: outside the attempt (its deadline,
    its thread, its errors), in whichever step reads it first, which leaves nothing for
    the next one; and the store records it as a ``repr``. The step fails instead.
    """

    def __init__(self, value: Any) -> None:
        kind = "an async generator" if inspect.isasyncgen(value) else "a generator"
        super().__init__(
            f"returned {kind}, whose items are computed only when something iterates it, "
            "after the call: return them as a list"
        )


def _cancelled_from_outside() -> bool:
    """Whether the running task is being cancelled (the run was stopped), as opposed to a
    tool raising ``CancelledError`` itself (a cancelled future it waited on)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def _safe(emit: Emit | None) -> Emit | None:
    """The event sink, made unable to stop a run: an error in it is logged, once."""
    if emit is None:
        return None
    failed = False

    def sink(event: Event) -> None:
        nonlocal failed
        try:
            emit(event)
        except Exception:
            if not failed:
                failed = True
                log.exception("the event sink raised; the run goes on without it")

    return sink


async def _stopped(timed_out: _DeadlinePassed, told: bool, grace: float | None) -> bool:
    """Whether a timed-out call has ended: a sync tool that takes a ``ToolContext`` was told
    to stop and is given up to ``grace`` seconds; any other has its one chance now.

    A sync tool's thread goes on after its deadline; retried meanwhile, the tool would run
    twice at once (two charges, two writes), and waiting for a tool that does not know it
    should stop would let it finish only to run it again.
    """
    thread = timed_out.thread
    if thread is None or thread.done():
        return True
    if told:
        await asyncio.wait((thread,), timeout=grace)
    return thread.done()


class _Resumed:
    """The rest of a coroutine already run up to its first wait, as an awaitable.

    What it was waiting on is handed to the awaiting task; once that task
    resumes it, ``yield from`` takes over, so later waits, cancellation and
    closing pass straight through.
    """

    __slots__ = ("coro", "waiting_on")

    def __init__(self, coro: Coroutine[Any, Any, Any], waiting_on: Any) -> None:
        self.coro = coro
        self.waiting_on = waiting_on

    def __await__(self) -> Generator[Any, None, Any]:
        coro = self.coro
        waiting_on = self.waiting_on
        while True:
            try:
                yield waiting_on
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as error:  # a cancellation: the tool sees it where it waits
                try:
                    waiting_on = coro.throw(error)
                except StopIteration as stop:
                    return stop.value
                continue
            return (yield from coro.__await__())


def _naming_references(
    error: ToolArgumentError,
    tool: Tool,
    step: Step,
    params: Mapping[str, Any],
    soft_failed: Set[str],
) -> ToolArgumentError:
    """``error``, with each wrong argument that is the value of a reference saying which
    (and, for a step that failed with ``continue_on_error``, that it has no output): the
    value was an earlier step's, so what to fix is the plan, not a literal in it.

    Only a parameter whose whole value is one reference is named: interpolated into
    text, a reference is text whatever its type. The same error comes back where a
    reference names nothing wrong, or where telling which fails (a validator of the
    tool's own that raises on part of the arguments).
    """
    refs: dict[str, references.Reference] = {}
    for name, raw in step.params.items():
        ref = references.whole(raw) if isinstance(raw, str) and name in params else None
        if ref is not None:
            refs[name] = ref
    if not refs:
        return error
    names = set(tool.parameter_names)
    try:
        problems = tool.check_arguments(
            {name: value for name, value in params.items() if name not in refs}, refs.keys()
        )
        for name, ref in refs.items():
            note = f"the value of {ref}"
            if ref.source in soft_failed:
                note += f", None: step {ref.source!r} failed and has no output"
            problems += [
                f"{problem} ({note})"
                for problem in tool.check_arguments({name: params[name]}, names - {name})
            ]
    except Exception:
        return error
    return ToolArgumentError(tool.name, problems) if problems else error


class _Failure(Exception):
    """A step that could not produce an output after every retry and fallback."""

    def __init__(self, message: str, error_type: ErrorType) -> None:
        super().__init__(message)
        self.error_type = error_type


_UNLIMITED = contextlib.nullcontext()


@dataclass(slots=True)
class _Run:
    plan: Plan
    execution_id: str
    session_id: str | None
    context: Mapping[str, Any]
    emit: Emit | None
    state_for: Callable[[str], StateAccess] | None
    history: Mapping[str, tuple[int, int]]
    steps: dict[str, Step] = field(default_factory=dict)
    deps: dict[str, list[str]] = field(default_factory=dict)
    results: dict[str, StepResult] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    soft_failed: set[str] = field(default_factory=set)  # failed with continue_on_error
    cancel_events: set[Any] = field(default_factory=set)
    calls: asyncio.Semaphore | None = None  # tool calls at once, for_each items included
    scope: _Scope = field(init=False)

    def __post_init__(self) -> None:
        # reads the outputs as they come
        self.scope = _Scope(self.outputs, self.context, self.soft_failed)


class ExecutionEngine:
    """Runs plans against a registry. One engine serves any number of concurrent runs."""

    def __init__(
        self,
        registry: ToolRegistry,
        *,
        max_parallel_steps: int = 16,
        default_timeout: float | None = None,
        retry: RetryPolicy | None = None,
        executor: Executor | None = None,
        recorder: AttemptRecorder | None = None,
        random_unit: Callable[[], float] = random.random,
        order_fallbacks: Callable[[list[str]], list[str]] | None = None,
        admit: Callable[[str], bool] | None = None,
    ) -> None:
        """``order_fallbacks`` reorders a step's fallbacks (best first), e.g. by history;
        ``admit`` may refuse an enabled tool for one call (a tool on probation lets one
        probe call through at a time), and the step falls back as if it were unavailable."""
        if max_parallel_steps < 1:
            raise ValueError(f"max_parallel_steps must be >= 1, got {max_parallel_steps}")
        if default_timeout is not None and default_timeout <= 0:
            raise ValueError(f"default_timeout must be > 0, got {default_timeout}")
        self.registry = registry
        self._closed = False
        self.max_parallel_steps = max_parallel_steps
        self.default_timeout = default_timeout
        self.retry = retry or RetryPolicy()
        self._own_executor = executor is None
        self.executor = executor or ThreadPoolExecutor(
            max_workers=max(4, max_parallel_steps), thread_name_prefix="dendrite-tool"
        )
        self.recorder = recorder
        self._random = random_unit
        self.order_fallbacks = order_fallbacks
        self.admit = admit

    def close(self) -> None:
        self._closed = True
        if self._own_executor:
            self.executor.shutdown(wait=False, cancel_futures=True)

    async def execute(
        self,
        plan: Plan,
        *,
        execution_id: str,
        session_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        emit: Emit | None = None,
        state_for: Callable[[str], StateAccess] | None = None,
        history: Mapping[str, tuple[int, int]] | None = None,
        results: dict[str, StepResult] | None = None,
        completed: Mapping[str, StepResult] | None = None,
    ) -> RunOutcome:
        """Run ``plan`` (validated beforehand) and return every step's result.

        Cancelling the task that awaits this cancels every running step, marks
        the unfinished ones cancelled, and re-raises ``CancelledError``; pass
        ``results`` (a dict this fills as the run goes) to keep the trace then.
        ``completed`` holds steps that already succeeded (a repaired plan after
        replanning): they are not run again and their outputs are available.
        """
        run = _Run(
            plan=plan,
            execution_id=execution_id,
            session_id=session_id,
            context=context or {},
            emit=_safe(emit),
            state_for=state_for,
            history=history or {},
            results=results if results is not None else {},
        )
        if any(step.for_each is not None for step in plan.steps):
            run.calls = asyncio.Semaphore(self.max_parallel_steps)
        steps = run.steps = {step.id: step for step in plan.steps}
        waiting: dict[str, int] = {}
        dependents: dict[str, list[str]] = {step_id: [] for step_id in steps}
        done_before = {
            step_id: result
            for step_id, result in (completed or {}).items()
            if step_id in steps and result.status is StepStatus.SUCCEEDED
        }
        for step in plan.steps:
            deps = run.deps[step.id] = [d for d in step.dependencies() if d in steps]
            if step.id in done_before:
                run.results[step.id] = done_before[step.id]
                run.outputs[step.id] = done_before[step.id].output
                continue
            run.results[step.id] = StepResult(step.id, step.tool)
            if done_before:
                deps = [d for d in deps if d not in done_before]
            waiting[step.id] = len(deps)
            for dep in deps:
                dependents[dep].append(step.id)
        ready = deque(step_id for step_id, count in waiting.items() if count == 0)
        running: set[asyncio.Task[None]] = set()
        crashed: list[BaseException] = []
        active = 0  # workers that have not returned yet (a task leaves `running` a bit later)
        finished = asyncio.Event()
        remaining = len(waiting)
        if remaining == 0:
            return self._outcome(run)
        loop = asyncio.get_running_loop()

        async def worker(step_id: str) -> None:
            # A worker runs one step, then takes the next ready one itself: a
            # chain continues in the same task instead of paying for a new task
            # and a loop iteration per step. Other ready steps get workers of
            # their own, up to max_parallel_steps.
            nonlocal remaining, active
            try:
                inline = 0
                while True:
                    await self._step(run, steps[step_id])
                    for dependent in dependents[step_id]:
                        waiting[dependent] -= 1
                        if waiting[dependent] == 0:
                            ready.append(dependent)
                    remaining -= 1
                    if remaining == 0:
                        finished.set()
                    if not ready:
                        return
                    step_id = ready.popleft()
                    launch()
                    inline += 1
                    if inline % YIELD_EVERY == 0:
                        await asyncio.sleep(0)  # steps that never wait must not starve the loop
            except asyncio.CancelledError:
                raise
            except BaseException as error:  # a bug in the engine: end the run, never hang it
                crashed.append(error)
                finished.set()
            finally:
                active -= 1
                if not active and remaining and not ready and not finished.is_set():
                    stuck()
                    finished.set()

        def stuck() -> None:
            """Steps left waiting with nothing running: each waits on itself through a
            cycle (a plan that skipped validation). They fail instead of waiting for ever."""
            for step_id, count in waiting.items():
                result = run.results[step_id]
                if count and result.status is StepStatus.PENDING:
                    result.status, result.error_type = StepStatus.FAILED, ErrorType.VALIDATION
                    result.error = "waits on its own output, through a dependency cycle or itself"

        def launch() -> None:
            nonlocal active
            while ready and active < self.max_parallel_steps:
                active += 1
                task = loop.create_task(worker(ready.popleft()))
                running.add(task)
                task.add_done_callback(running.discard)

        async def stop() -> None:
            finished.set()  # the workers' last one must not take the cancelled for stuck
            for event in run.cancel_events:
                event.set()
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)
            for result in run.results.values():
                if result.status is StepStatus.PENDING:
                    result.status = StepStatus.CANCELLED
                    result.error = result.error or "the run was cancelled"
                    result.error_type = ErrorType.CANCELLED

        launch()
        if not active:
            stuck()
            return self._outcome(run)
        try:
            await finished.wait()
        except asyncio.CancelledError:
            await stop()
            raise
        if crashed:
            await stop()
            raise RuntimeError(f"the engine crashed running {execution_id}") from crashed[0]
        return self._outcome(run)

    # -- one step ------------------------------------------------------------

    async def _step(self, run: _Run, step: Step) -> None:
        result = run.results[step.id]
        blocked = self._blocked_by(run, step)
        if blocked is not None:
            self._skip(run, result, blocked)
            return
        scope = run.scope
        if step.when is not None:
            try:
                wanted = compile_condition(step.when).evaluate(scope)
            except (ConditionError, LookupError) as error:
                self._fail(run, step, result, str(error), ErrorType.VALIDATION, started=None)
                return
            if not wanted:
                self._skip(run, result, f"{CONDITION_FALSE}: {step.when}")
                return
        started = time.perf_counter()
        result.started_at = datetime.now(UTC)
        if run.emit:
            run.emit(Event(EventType.STEP_STARTED, run.execution_id, step.id, {"tool": step.tool}))
        try:
            if step.for_each is not None:
                output, answered_by = await self._for_each(run, step, result, scope)
            else:
                params = references.resolve(step.params, scope)
                output, answered_by = await self._call(run, step, result, params, None)
        except _Failure as failure:
            self._fail(run, step, result, str(failure), failure.error_type, started)
            return
        except references.UnresolvedReferenceError as error:
            self._fail(run, step, result, str(error), ErrorType.VALIDATION, started)
            return
        except asyncio.CancelledError:
            self._finish(result, started, StepStatus.CANCELLED)
            result.error, result.error_type = "the run was cancelled", ErrorType.CANCELLED
            raise
        except Exception as error:  # a bug in the engine must not hang the run
            log.exception("step %s of %s crashed the engine", step.id, run.execution_id)
            message = described(error)
            self._fail(run, step, result, message, ErrorType.UNKNOWN, started)
            return
        self._finish(result, started, StepStatus.SUCCEEDED)
        result.output = output
        if answered_by != step.tool:
            result.tool = result.fallback_used = answered_by
        run.outputs[step.id] = output
        tool = self.registry.find(result.tool)
        prior = tool.reliability.prior if tool else 0.5
        result.confidence = step_confidence(
            result, tool_success(prior, run.history.get(result.tool))
        )
        if run.emit:
            run.emit(
                Event(
                    EventType.STEP_FINISHED,
                    run.execution_id,
                    step.id,
                    {
                        "tool": result.tool,
                        "duration_ms": result.duration_ms,
                        "attempts": len(result.attempts),
                        "confidence": result.confidence,
                    },
                )
            )

    def _blocked_by(self, run: _Run, step: Step) -> str | None:
        for dep in run.deps[step.id]:
            found = run.results.get(dep)
            if found is None or found.status is StepStatus.SUCCEEDED:
                continue
            if found.status is StepStatus.FAILED:
                if run.steps[dep].continue_on_error:
                    continue
                return f"dependency {dep!r} failed"
            if found.status is StepStatus.SKIPPED and (found.skip_reason or "").startswith(
                CONDITION_FALSE
            ):
                return f"{CONDITION_FALSE} upstream: dependency {dep!r} was skipped"
            return f"dependency {dep!r} was {found.status.value}"
        return None

    @staticmethod
    def _finish(result: StepResult, started: float | None, status: StepStatus) -> None:
        result.status = status
        result.finished_at = datetime.now(UTC)
        if started is not None:
            result.duration_ms = (time.perf_counter() - started) * 1000

    def _skip(self, run: _Run, result: StepResult, reason: str) -> None:
        result.status = StepStatus.SKIPPED
        result.skip_reason = reason
        if run.emit:
            run.emit(
                Event(EventType.STEP_SKIPPED, run.execution_id, result.step_id, {"reason": reason})
            )

    def _fail(
        self,
        run: _Run,
        step: Step,
        result: StepResult,
        message: str,
        error_type: ErrorType,
        started: float | None,
    ) -> None:
        self._finish(result, started, StepStatus.FAILED)
        result.error, result.error_type = message, error_type
        result.confidence = 0.0
        if step.continue_on_error:
            run.soft_failed.add(step.id)
        if run.emit:
            run.emit(
                Event(
                    EventType.STEP_FAILED,
                    run.execution_id,
                    step.id,
                    {
                        "error": message,
                        "error_type": error_type.value,
                        "continue_on_error": step.continue_on_error,
                    },
                )
            )

    async def _for_each(
        self, run: _Run, step: Step, result: StepResult, scope: _Scope
    ) -> tuple[list[Any], str]:
        """Every item's output, in order, and the tool that answered for the step: the
        fallback that answered the first item (in item order) that needed one, else the
        step's tool.

        Items finish in any order: named by whichever item finished last, the step's tool
        changed from run to run, and could contradict its ``fallback_used``.
        """
        assert step.for_each is not None
        items = references.resolve(step.for_each, scope)
        if not isinstance(items, list | tuple):
            raise _Failure(
                f"for_each {step.for_each} gave {type(items).__name__}, not a list",
                ErrorType.VALIDATION,
            )

        async def one(index: int, item: Any) -> tuple[Any, str]:
            item_scope = _Scope(run.outputs, run.context, run.soft_failed, item, True)
            params = references.resolve(step.params, item_scope)
            try:
                return await self._call(run, step, result, params, index)
            except _Failure as failure:
                raise _Failure(f"item {index}: {failure}", failure.error_type) from None

        if not items:
            return [], step.tool
        # Items are taken by as many workers as calls may run at once, not started all at
        # once: 100,000 tasks resolving their arguments in one turn of the event loop held
        # it (and every other request of a server) for seconds. The first item that fails
        # fails the step: the workers stop taking items then, and the ones in flight are
        # cancelled, not left calling tools for a step (and a run) already reported.
        answers: list[tuple[Any, str]] = [(None, step.tool)] * len(items)
        failures: dict[int, _Failure] = {}
        queue = iter(enumerate(items))  # shared: each item is taken by one worker

        async def worker() -> None:
            for index, item in queue:
                await asyncio.sleep(0)  # an item that never waits still lets the loop run
                try:
                    answers[index] = await one(index, item)
                except _Failure as failure:
                    failures[index] = failure
                    raise

        workers = [
            asyncio.ensure_future(worker()) for _ in range(min(len(items), self.max_parallel_steps))
        ]
        try:
            await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            pending = [task for task in workers if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Every error is read (asyncio logs "exception was never retrieved" otherwise); the
        # first failed item in order is the step's.
        errors = [t.exception() for t in workers if not t.cancelled() and t.exception()]
        if failures:
            raise failures[min(failures)]
        if errors:
            raise errors[0]  # type: ignore[misc]
        answered_by = next((name for _, name in answers if name != step.tool), step.tool)
        return [output for output, _ in answers], answered_by

    # -- retries and fallbacks -----------------------------------------------

    def _candidates(self, step: Step) -> list[str]:
        """The step's tool, then its own fallbacks and its tool's alternatives, deduplicated."""
        primary = self.registry.find(step.tool)
        alternatives = primary.alternatives if primary is not None else ()
        if not step.fallbacks and not alternatives:
            return [step.tool]
        fallbacks = [*step.fallbacks, *alternatives]
        fallbacks = [n for n in dict.fromkeys(fallbacks) if n != step.tool]
        if self.order_fallbacks is not None and len(fallbacks) > 1:
            fallbacks = self.order_fallbacks(fallbacks)
        return [step.tool, *fallbacks]

    async def _call(
        self,
        run: _Run,
        step: Step,
        result: StepResult,
        params: dict[str, Any],
        item: int | None,
    ) -> tuple[Any, str]:
        """The call's output and the tool that gave it, after retries and fallbacks.

        The step's ``tool`` and ``fallback_used`` are the caller's to set: the items of a
        ``for_each`` step each call this, and the step names one tool for all of them.
        """
        policy = step.retry or self.retry
        errors: list[str] = []
        tried: list[str] = []
        unavailable: list[str] = []
        last_type = ErrorType.UNKNOWN
        for position, name in enumerate(self._candidates(step)):
            fallback_of = step.tool if position else None
            try:
                tool = self.registry.require_available(name)
            except ToolError as error:
                why = str(error)
            else:
                why = None
                if self.admit is not None and not self.admit(name):
                    why = f"tool {name!r} is on probation and another run is probing it"
            if why is not None:
                unavailable.append(why)
                if why not in result.not_tried:  # a for_each step comes here once per item
                    result.not_tried.append(why)
                continue
            tried.append(name)
            args = (
                params
                if not position
                else {k: v for k, v in params.items() if k in tool.parameter_names}
            )
            if position and run.emit:
                run.emit(
                    Event(
                        EventType.FALLBACK_USED,
                        run.execution_id,
                        step.id,
                        {
                            "tool": name,
                            "instead_of": step.tool,
                            "after": errors[-1] if errors else None,
                        },
                    )
                )
            timeout = step.timeout or tool.timeout or self.default_timeout
            for number in range(1, policy.max_attempts + 1):
                ok, value, attempt = await self._attempt(
                    run, step, result, tool, args, number, fallback_of, item, timeout
                )
                if ok:
                    return value, name
                last_type = attempt.error_type or ErrorType.UNKNOWN
                errors.append(f"{name}: {attempt.error}")
                retryable = last_type in policy.retry_on or bool(
                    tool.retry_on and isinstance(value, tool.retry_on)
                )
                if not retryable or number == policy.max_attempts:
                    break
                told = tool.signature.context_param is not None  # it stops when told to
                if isinstance(value, _DeadlinePassed) and not await _stopped(value, told, timeout):
                    errors[-1] += " (still running in its thread: not retried)"
                    break
                delay = policy.delay(number, self._random())
                if run.emit:
                    run.emit(
                        Event(
                            EventType.STEP_RETRY,
                            run.execution_id,
                            step.id,
                            {
                                "tool": name,
                                "attempt": number + 1,
                                "delay_s": delay,
                                "error": attempt.error,
                            },
                        )
                    )
                await asyncio.sleep(delay)
        skipped = f" (not tried: {'; '.join(unavailable)})" if unavailable else ""
        if not tried:
            raise _Failure(f"no tool available{skipped}", ErrorType.VALIDATION)
        raise _Failure(f"failed after trying {', '.join(tried)}: {errors[-1]}{skipped}", last_type)

    async def _attempt(
        self,
        run: _Run,
        step: Step,
        result: StepResult,
        tool: Tool,
        params: dict[str, Any],
        number: int,
        fallback_of: str | None,
        item: int | None,
        timeout: float | None,
    ) -> tuple[bool, Any, Attempt]:
        """One call, added to the step's attempts and recorded.

        Returns (ok, output or exception, attempt); raises only on cancellation.
        """
        async with run.calls or _UNLIMITED:  # a run with for_each steps bounds its calls
            given = dumps(params) if self.recorder is not None else None
            started_at = datetime.now(UTC)
            started = time.perf_counter()
            ctx: ToolContext | None = None
            ok, value, error, error_type = False, None, None, None
            try:
                kwargs = tool.validate_arguments(params)
                if tool.signature.context_param is not None:
                    ctx = ToolContext(
                        execution_id=run.execution_id,
                        step_id=step.id,
                        tool_name=tool.name,
                        attempt=number,
                        session_id=run.session_id,
                        state=run.state_for(step.id) if run.state_for else _NoState(),
                        logger=logging.LoggerAdapter(
                            log, {"execution_id": run.execution_id, "step_id": step.id}
                        ),
                    )
                    run.cancel_events.add(ctx.cancel_event)
                    kwargs[tool.signature.context_param] = ctx
                loop = asyncio.get_running_loop()
                deadline = None if timeout is None else loop.time() + timeout
                if not tool.is_async:
                    value, began = await self._in_thread(loop, tool, kwargs, timeout)
                    if inspect.isawaitable(value):  # an async tool behind a plain decorator
                        # The same deadline as the thread's: the attempt's time began when
                        # a thread started the call, not when the thread handed this back.
                        value = await _until(value, None if timeout is None else began + timeout)
                elif type(coro := tool.func(**kwargs)) is CoroutineType:
                    # A timeout can only interrupt a coroutine where it waits, so it is
                    # run up to its first wait first: one that finishes without waiting
                    # (a cheap tool) needs no timer. The rest runs under the deadline,
                    # which counts from the start of the attempt.
                    try:
                        waiting_on = coro.send(None)
                    except StopIteration as stop:
                        value = stop.value
                    else:
                        value = await _until(_Resumed(coro, waiting_on), deadline)
                else:
                    value = await _until(coro, deadline)
                if inspect.isgenerator(value) or inspect.isasyncgen(value):
                    raise _Unrun(value)
                ok = True
            except asyncio.CancelledError as caught:
                if _cancelled_from_outside():
                    error, error_type = "cancelled", ErrorType.CANCELLED
                    raise
                # The tool's own (a future it waited on was cancelled): its failure, not the run's.
                value, error = caught, described(caught)
                error_type = ErrorType.TOOL_ERROR
            except _DeadlinePassed as caught:
                value, error = caught, f"timed out after {timeout:g}s"
                error_type = ErrorType.TIMEOUT
            except _NoThread as caught:
                value, error, error_type = caught, str(caught), ErrorType.TIMEOUT
            except _PoolClosed as caught:  # not the tool's failure: it never ran
                value, error, error_type = caught, str(caught), ErrorType.CANCELLED
            except ToolArgumentError as caught:
                value = _naming_references(caught, tool, step, params, run.soft_failed)
                error, error_type = str(value), ErrorType.VALIDATION
            except _Unrun as caught:
                value, error, error_type = caught, str(caught), ErrorType.TOOL_ERROR
            except BaseException as caught:  # sys.exit(), KeyboardInterrupt: the tool fails
                if isinstance(caught, _Carried):
                    caught = caught.error  # judged (retried, inferred) as the tool raised it
                value, error = caught, described(caught)
                error_type = ErrorType.infer(caught) if isinstance(caught, Exception) else None
                error_type = error_type or ErrorType.TOOL_ERROR
            finally:
                if ctx is not None:
                    if not ok:
                        ctx.cancel_event.set()
                    run.cancel_events.discard(ctx.cancel_event)
                attempt = Attempt(
                    tool.name,
                    number,
                    started_at,
                    (time.perf_counter() - started) * 1000,
                    ok,
                    error,
                    error_type,
                    fallback_of,
                    item,
                )
                result.attempts.append(attempt)
                if given is not None:
                    self.recorder.record_attempt(
                        run.execution_id, step.id, attempt, given, value if ok else None
                    )
            return ok, value, attempt

    async def _in_thread(
        self,
        loop: asyncio.AbstractEventLoop,
        tool: Tool,
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> tuple[Any, float]:
        """A sync tool's call in the executor, timed from when a thread starts it: its value
        and that start (loop time), from which the attempt's deadline counts.

        Time spent waiting for a free thread (others busy, some still running calls that
        timed out) is not the tool's: counted against its deadline, a quick tool queued
        behind slow ones timed out without having run. The wait is bounded by one timeout
        too: a call no thread took by then is withdrawn (:class:`_NoThread`).
        """
        context = contextvars.copy_context()  # the caller's (the run's), not the thread's
        begun: list[float] = []

        def call() -> Any:
            begun.append(loop.time())  # monotonic, safe from any thread; wakes nothing
            try:
                return context.run(tool.func, **kwargs)
            except (StopIteration, GeneratorExit) as error:
                raise _Carried(error) from error

        try:
            future = loop.run_in_executor(self.executor, call)
        except RuntimeError:  # its pool was shut down: the orchestrator closed under the run
            raise _PoolClosed from None
        try:
            if timeout is None:
                return await future, begun[0]
            deadline = loop.time() + timeout
            while True:
                try:
                    return await _until(asyncio.shield(future), deadline), begun[0]
                except _DeadlinePassed:
                    if not begun and future.cancel():  # never started: it never will now
                        raise _NoThread(timeout) from None
                    if begun and begun[0] + timeout > loop.time():
                        deadline = begun[0] + timeout  # it began late: its own full time
                        continue
                    raise _DeadlinePassed(future) from None
        except asyncio.CancelledError:
            future.cancel()  # a call still queued never starts; a running one cannot stop
            if self._closed and not begun and not _cancelled_from_outside():
                raise _PoolClosed from None  # the shut-down pool dropped it, unstarted
            raise

    # -- the end -------------------------------------------------------------

    def _outcome(self, run: _Run) -> RunOutcome:
        results = run.results
        hard = [
            r
            for r in results.values()
            if r.status is StepStatus.FAILED and not run.steps[r.step_id].continue_on_error
        ]
        soft = [r for r in results.values() if r.status is StepStatus.FAILED and r not in hard]
        error = error_type = None
        try:
            output = self._output(run)
        except LookupError as unreadable:  # a typo in plan.output: no answer, not None
            output = None
            error = f"the plan's output {run.plan.output} cannot be read: {unreadable}"
            error_type = ErrorType.VALIDATION
        success = not hard and error is None
        if hard:
            first = hard[0]
            error = f"step {first.step_id!r} failed: {first.error}"
            error_type = first.error_type
        return RunOutcome(
            steps=results,
            output=output,
            success=success,
            partial=success and bool(soft),
            confidence=run_confidence(results.values()) if success else 0.0,
            error=error,
            error_type=error_type,
        )

    @staticmethod
    def _output(run: _Run) -> Any:
        """``plan.output``'s value (a ``LookupError`` when a step's output lacks its path),
        else the one sink step's output, else every sink's by step id: the same shape on
        every run of a plan, a sink that was skipped or failed being ``None``."""
        if run.plan.output is not None:
            ref = references.whole(run.plan.output)
            if ref is None or run.results[ref.source].status is not StepStatus.SUCCEEDED:
                return None  # a step that failed (allowed to) or was skipped has no output
            return references.lookup(run.outputs[ref.source], ref.path, ref.text)
        needed = {dep for deps in run.deps.values() for dep in deps}
        sinks = [s for s in run.steps if s not in needed]
        if len(sinks) == 1:
            return run.outputs.get(sinks[0])
        return {s: run.outputs.get(s) for s in sinks}
