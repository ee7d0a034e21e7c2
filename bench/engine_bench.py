"""Benchmark of the DAG engine (``Orchestrator.run``) against LangGraph and Dask.

Why: the engine's own overhead is paid on every step of every plan, and with
recording on each step also goes through the store. For the engine to stay
invisible beside real tools, a step's bookkeeping must cost little, recorded
or not, and it must not be slower than the frameworks people would use
instead. This script runs two shapes with each contender, side by side in one
process, and prints one table and a summary against the targets:

1. Fan-out: a root step, ``--steps`` independent steps that each depend on
   the root, and a join step that depends on all of them (steps + 2 in all).
2. Chain: ``--steps`` steps, each depending on the previous one.

Every step is the same trivial work: a function that returns its argument.
The definition of each graph (a ``Plan``, a compiled LangGraph, a Dask
``delayed`` graph) is built once, untimed; what is timed is one execution of
it, the way an application runs a prepared workflow.

Contenders:

- Dendrite, recording on: ``Orchestrator(registry, store=ExecutionStore(
  "sqlite:///<tmp>/bench.db"))`` with default settings except
  ``max_parallel_steps``, running ``async def noop(x: int = 0) -> int`` (on the
  event loop) and, as a separate row, the same function written sync (run in
  the engine's thread pool). Each run validates the plan, checks each step's
  arguments against the tool's signature, applies the default per-attempt
  timeout, computes confidences, and queues one ``tool_executions`` row per
  step plus one ``executions`` row (and, once per ``history_ttl`` = 30 s,
  reads the tools' statistics back, as in production). The timeout is
  enforced as for any async tool: ``noop`` finishes without ever waiting, and
  asyncio can only interrupt a coroutine where it waits, so the engine sets
  no timer for it (a tool that waits gets one; see docs/orchestrator.md).
  Steps run in worker tasks (a chain in one), as in production. "run" stops when
  ``run()`` returns; "total" also includes ``store.flush()``, i.e. until every
  row is committed to the SQLite file. After each run the benchmark reads the
  execution back and fails unless it holds exactly one row per step.
- Dendrite, recording off: ``store=None``, async tool; the difference to the
  first row is the cost of recording.
- LangGraph: ``StateGraph`` with the default in-memory setup (no
  checkpointer), run with ``ainvoke``. Fan-out: a root node whose conditional
  edge returns ``[Send("work", {"i": i}) ...]``, a ``work`` node that appends
  its item to a list channel (``operator.add``), and a join node that counts
  them; chain: ``--steps`` nodes linked by edges, each adding 1 to a counter
  channel (``recursion_limit`` raised to fit). It records nothing, validates
  no arguments and has no timeouts; the results are checked after each run.
- Dask: ``dask.delayed`` graphs of the same shapes (each step's function
  takes its dependencies as arguments, which is how Dask expresses them),
  computed with ``scheduler="threads"``, delayed-graph fusion off (the
  default), so every step stays a task. It records nothing.

Method: one warm-up run per contender and shape, then ``--repeats`` rounds in
which every contender and shape runs once (the order rotates each round, and
``gc.collect()`` runs before each timed run); the table shows medians.
Targets: Dendrite, recording on, async tool: <= 50 µs per step (total, i.e.
including the flush) on both shapes, and at least 5x faster than LangGraph on
both. Figures are only comparable within one run (same machine, same load).

Run from the repository root (needs the ``bench`` extra)::

    .venv/bin/python bench/engine_bench.py --quick       # smoke run: 200 steps, 2 repeats
    .venv/bin/python bench/engine_bench.py               # 1,000 steps, 5 repeats
    .venv/bin/python bench/engine_bench.py --profile     # + cProfile of one Dendrite fan-out
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import operator
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypedDict

from rich.console import Console
from rich.table import Table

from dendrite.execution.events import StepStatus
from dendrite.orchestrator import ExecutionResult, Orchestrator, OrchestratorConfig
from dendrite.planning.plan import Plan, Step
from dendrite.store import ExecutionStore
from dendrite.tools import ToolRegistry

try:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Send
except ImportError:  # reported as "not installed" in the table
    StateGraph = None  # type: ignore[assignment,misc]
try:
    import dask
except ImportError:
    dask = None  # type: ignore[assignment]

SHAPES = ("fan-out", "chain")
BASELINE = "Dendrite, recording on, async tool"
TARGET_US_PER_STEP = 50.0
TARGET_VS_LANGGRAPH = 5.0


class BenchmarkError(RuntimeError):
    """A contender produced a wrong result: the timings would mean nothing."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise BenchmarkError(message)


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- the trivial work -------------------------------------------------------------------------


async def noop(x: int = 0) -> int:
    """Return ``x``: the step itself costs nothing, so what is measured is the engine."""
    return x


def noop_sync(x: int = 0) -> int:
    """Return ``x``, synchronously (Dendrite runs it in its thread pool)."""
    return x


def steps_in(shape: str, n: int) -> int:
    return n + 2 if shape == "fan-out" else n


@dataclass(slots=True)
class Sample:
    run_s: float
    total_s: float
    verified: str


@dataclass
class Case:
    """One contender on one shape: ``once`` runs it a single time, timed and checked."""

    contender: str
    shape: str
    steps: int
    records: bool
    once: Callable[[], Awaitable[Sample]]
    samples: list[Sample] = field(default_factory=list)

    @property
    def run_ms(self) -> float:
        return statistics.median(s.run_s for s in self.samples) * 1000

    @property
    def total_ms(self) -> float:
        return statistics.median(s.total_s for s in self.samples) * 1000

    @property
    def us_per_step(self) -> float:
        return self.total_ms * 1000 / self.steps


# -- Dendrite ---------------------------------------------------------------------------------


def dendrite_plan(shape: str, n: int, tool: str) -> Plan:
    if shape == "fan-out":
        workers = [f"w{i}" for i in range(n)]
        steps = [Step(id="root", tool=tool, params={"x": 0})]
        steps += [
            Step(id=w, tool=tool, params={"x": i}, depends_on=["root"])
            for i, w in enumerate(workers)
        ]
        steps.append(Step(id="join", tool=tool, params={"x": n}, depends_on=workers))
    else:
        steps = [Step(id="s0", tool=tool, params={"x": 0})]
        steps += [
            Step(id=f"s{i}", tool=tool, params={"x": i}, depends_on=[f"s{i - 1}"])
            for i in range(1, n)
        ]
    return Plan(goal=f"engine_bench {shape} x{n} ({tool})", steps=steps)


def dendrite_registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register_function(noop, name="noop")
    registry.register_function(noop_sync, name="noop_sync")
    return registry


def dendrite_once(
    orchestrator: Orchestrator, store: ExecutionStore | None, plan: Plan
) -> Callable[[], Awaitable[Sample]]:
    expected = len(plan.steps)

    async def once() -> Sample:
        started = time.perf_counter()
        result = await orchestrator.run(plan)
        ran = time.perf_counter()
        if store is not None:
            flushed = store.flush()
            done = time.perf_counter()
            check(flushed, "store.flush() timed out")
        else:
            done = ran
        verify_dendrite(result, expected)
        if store is None:
            return Sample(ran - started, done - started, f"{expected:,} steps ok, not recorded")
        detail = store.get_execution(result.execution_id)
        rows = len(detail.steps) if detail is not None else 0
        check(rows == expected, f"{rows} tool_executions rows recorded, expected {expected}")
        return Sample(ran - started, done - started, f"{rows:,} rows in store")

    return once


def verify_dendrite(result: ExecutionResult, expected: int) -> None:
    check(result.success, f"Dendrite run failed: {result.error}")
    succeeded = sum(1 for s in result.steps if s.status is StepStatus.SUCCEEDED)
    check(succeeded == expected, f"{succeeded} of {expected} Dendrite steps succeeded")


# -- LangGraph --------------------------------------------------------------------------------


class FanState(TypedDict, total=False):
    results: Annotated[list[int], operator.add]
    total: int


class ChainState(TypedDict):
    count: Annotated[int, operator.add]


def langgraph_fan_out(n: int) -> Callable[[], Awaitable[Sample]]:
    async def root(state: FanState) -> dict[str, Any]:
        return {}

    def fan(state: FanState) -> list[Any]:
        return [Send("work", {"i": i}) for i in range(n)]

    async def work(state: dict[str, int]) -> dict[str, Any]:
        return {"results": [state["i"]]}

    async def join(state: FanState) -> dict[str, Any]:
        return {"total": len(state["results"])}

    graph = StateGraph(FanState)
    graph.add_node("root", root)
    graph.add_node("work", work)
    graph.add_node("join", join)
    graph.add_edge(START, "root")
    graph.add_conditional_edges("root", fan, ["work"])
    graph.add_edge("work", "join")
    graph.add_edge("join", END)
    app = graph.compile()

    async def once() -> Sample:
        started = time.perf_counter()
        out = await app.ainvoke({"results": []})
        done = time.perf_counter()
        check(out.get("total") == n, f"LangGraph join saw {out.get('total')} results, not {n}")
        check(sorted(out["results"]) == list(range(n)), "LangGraph fan-out lost or repeated items")
        return Sample(done - started, done - started, f"join saw {n:,} results")

    return once


def langgraph_chain(n: int) -> Callable[[], Awaitable[Sample]]:
    async def step(state: ChainState) -> dict[str, Any]:
        return {"count": 1}

    graph = StateGraph(ChainState)
    for i in range(n):
        graph.add_node(f"s{i}", step)
        graph.add_edge(f"s{i - 1}" if i else START, f"s{i}")
    graph.add_edge(f"s{n - 1}", END)
    app = graph.compile()
    config = {"recursion_limit": n + 10}

    async def once() -> Sample:
        started = time.perf_counter()
        out = await app.ainvoke({"count": 0}, config=config)
        done = time.perf_counter()
        check(out["count"] == n, f"LangGraph chain ran {out['count']} of {n} nodes")
        return Sample(done - started, done - started, f"{n:,} nodes ran")

    return once


# -- Dask -------------------------------------------------------------------------------------


def dask_noop(x: int = 0, *after: int) -> int:
    """``noop``, taking its dependencies' outputs as Dask passes them."""
    return x


def dask_join(x: int, results: list[int]) -> int:
    return len(results)


def dask_case(shape: str, n: int) -> Callable[[], Awaitable[Sample]]:
    delayed = dask.delayed
    if shape == "fan-out":
        root = delayed(dask_noop)(0)
        target = delayed(dask_join)(n, [delayed(dask_noop)(i, root) for i in range(n)])
        expected = n
    else:
        target = delayed(dask_noop)(0)
        for i in range(1, n):
            target = delayed(dask_noop)(i, target)
        expected = n - 1
    tasks = len(dict(target.__dask_graph__()))
    check(tasks == steps_in(shape, n), f"Dask graph has {tasks} tasks, not {steps_in(shape, n)}")

    async def once() -> Sample:
        with dask.config.set({"optimization.fuse.delayed": False}):
            started = time.perf_counter()
            (out,) = dask.compute(target, scheduler="threads")
            done = time.perf_counter()
        check(out == expected, f"Dask {shape} returned {out}, expected {expected}")
        what = f"join saw {n:,} results" if shape == "fan-out" else f"{tasks:,} tasks ran"
        return Sample(done - started, done - started, what)

    return once


# -- running ----------------------------------------------------------------------------------


@dataclass
class Settings:
    steps: int
    repeats: int
    max_parallel: int
    profile: bool
    profile_lines: int


class Bench:
    """Every case, with the stores and orchestrators they share; closes them all at the end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tmp = Path(tempfile.mkdtemp(prefix="dendrite_engine_bench_"))
        self.store = ExecutionStore(f"sqlite:///{self.tmp}/bench.db")
        self.registry = dendrite_registry()
        config = OrchestratorConfig(max_parallel_steps=settings.max_parallel)
        self.recording = Orchestrator(self.registry, store=self.store, config=config)
        self.unrecorded = Orchestrator(self.registry, store=None, config=config)
        self.plan_build_us: dict[str, float] = {}
        self.plans: dict[str, Plan] = {}
        self.cases: list[Case] = []
        self.missing: list[str] = []
        n = settings.steps
        for shape in SHAPES:
            count = steps_in(shape, n)
            plans = {tool: self._plan(shape, tool) for tool in ("noop", "noop_sync")}
            self.plans[shape] = plans["noop"]
            self.cases += [
                Case(BASELINE, shape, count, True,
                     dendrite_once(self.recording, self.store, plans["noop"])),
                Case("Dendrite, recording on, sync tool (threads)", shape, count, True,
                     dendrite_once(self.recording, self.store, plans["noop_sync"])),
                Case("Dendrite, recording off, async tool", shape, count, False,
                     dendrite_once(self.unrecorded, None, plans["noop"])),
            ]  # fmt: skip
            if StateGraph is not None:
                build = langgraph_fan_out if shape == "fan-out" else langgraph_chain
                self.cases.append(Case("LangGraph (Send / edges, ainvoke)", shape, count, False,
                                       build(n)))  # fmt: skip
            if dask is not None:
                self.cases.append(Case('Dask delayed, scheduler="threads"', shape, count, False,
                                       dask_case(shape, n)))  # fmt: skip
        if StateGraph is None:
            self.missing.append("langgraph")
        if dask is None:
            self.missing.append("dask")

    def _plan(self, shape: str, tool: str) -> Plan:
        started = time.perf_counter()
        plan = dendrite_plan(shape, self.settings.steps, tool)
        elapsed = time.perf_counter() - started
        self.plan_build_us[shape] = elapsed * 1e6 / len(plan.steps)
        return plan

    def close(self) -> None:
        try:
            self.recording.close()
            self.unrecorded.close()
            self.store.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def measure(self, console: Console) -> None:
        note(console, "warm-up: one run of each contender and shape …")
        for case in self.cases:
            await self._sample(case)
            case.samples.clear()
        for round_ in range(self.settings.repeats):
            note(console, f"round {round_ + 1} of {self.settings.repeats} …")
            start = round_ % len(self.cases)
            for case in self.cases[start:] + self.cases[:start]:
                case.samples.append(await self._sample(case))

    @staticmethod
    async def _sample(case: Case) -> Sample:
        gc.collect()
        return await case.once()

    async def profile(self, console: Console) -> None:
        """cProfile of one Dendrite fan-out run with recording on (run + flush, nothing else)."""
        plan = self.plans["fan-out"]
        gc.collect()
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        result = await self.recording.run(plan)
        self.store.flush()
        profiler.disable()
        elapsed_ms = (time.perf_counter() - started) * 1000
        verify_dendrite(result, len(plan.steps))
        print_profile(console, pstats.Stats(profiler), len(plan.steps), elapsed_ms, self.settings)


def _short(path: str) -> str:
    """A profiled file relative to its package root, so that rows stay readable."""
    for marker in ("site-packages/", "/src/", "/lib/python"):
        if marker in path:
            path = path.split(marker, 1)[1]
            return path.split("/", 1)[1] if marker == "/lib/python" else path
    return path


def print_profile(
    console: Console, stats: pstats.Stats, steps: int, elapsed_ms: float, settings: Settings
) -> None:
    entries = [
        (_short(file), line, func, calls, own, cum)
        for (file, line, func), (_, calls, own, cum, _) in stats.stats.items()  # type: ignore[attr-defined]
    ]
    ours = [e for e in entries if e[0].startswith("dendrite/")]
    for title, rows, key in (
        ("Dendrite's code by cumulative time", ours, 5),
        ("any code by own time", entries, 4),
    ):
        table = Table(
            title=f"cProfile of one {steps:,}-step fan-out, recording on, async tool "
            f"(run + flush, {elapsed_ms:,.0f} ms under the profiler): {title}"
        )
        for column in ("function", "calls", "own ms", "cumulative ms", "cum µs / step"):
            table.add_column(column, justify="left" if column == "function" else "right")
        for file, line, func, calls, own, cum in sorted(rows, key=lambda e: -e[key])[
            : settings.profile_lines
        ]:
            table.add_row(
                f"{file}:{line} {func}",
                f"{calls:,}",
                f"{own * 1000:,.1f}",
                f"{cum * 1000:,.1f}",
                f"{cum * 1e6 / steps:,.1f}",
            )
        console.print(table)
    note(
        console,
        "  cProfile sees the event-loop thread only: the store's writer thread (which does the "
        "INSERTs) shows up as the time flush() waits on a lock, and as GIL contention.",
    )


# -- settings and output ----------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--steps", type=int, default=1_000, help="width of the fan-out and length of the chain"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each case (median)")
    parser.add_argument(
        "--max-parallel",
        type=int,
        default=OrchestratorConfig().max_parallel_steps,
        help="Dendrite's max_parallel_steps (the default is OrchestratorConfig's)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 200 steps, 2 repeats")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the table, cProfile one Dendrite fan-out run (recording on, async tool)",
    )
    parser.add_argument("--profile-lines", type=int, default=30, help="rows per profile listing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = 200, 2
    if min(args.steps, args.repeats, args.max_parallel, args.profile_lines) < 1:
        parser.error("sizes must be positive")
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    return Settings(args.steps, args.repeats, args.max_parallel, args.profile, args.profile_lines)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def print_environment(console: Console, settings: Settings, bench: Bench) -> None:
    table = Table(title="Environment and sizes", show_header=False)
    versions = " / ".join(
        _version(d) for d in ("dendrite", "langgraph", "dask", "pydantic", "sqlalchemy")
    )
    plan_us = ", ".join(f"{shape} {us:.1f}" for shape, us in bench.plan_build_us.items())
    for key, value in (
        ("python", f"{platform.python_version()} ({platform.python_implementation()})"),
        ("machine", f"{platform.machine()}, {platform.system()}, {_cpus()} CPUs, "
         f"load average {_load()} at start"),
        ("dendrite / langgraph / dask / pydantic / sqlalchemy", versions),
        ("sqlite library", sqlite3.sqlite_version),
        ("store", "ExecutionStore('sqlite:///<tmp>/bench.db'), default batch_size / "
         "flush_interval; one file for every recorded run"),
        ("Dendrite config", f"max_parallel_steps={settings.max_parallel}, other "
         "OrchestratorConfig defaults (60 s per-attempt timeout, retry policy)"),
        ("shapes", f"fan-out: 1 + {settings.steps:,} + 1 steps; chain: {settings.steps:,} steps"),
        ("method", f"1 warm-up, then {settings.repeats} rounds, order rotated each round; "
         "median shown"),
        ("Plan construction (untimed)", f"{plan_us} µs per step (pydantic Step/Plan models)"),
    ):  # fmt: skip
        table.add_row(key, value)
    console.print(table)


def print_results(console: Console, bench: Bench) -> None:
    table = Table(title=f"DAG engine: {bench.settings.steps:,}-wide fan-out and chain (medians)")
    for column in (
        "contender", "shape", "steps", "run ms", "total ms", "µs / step", "÷ Dendrite",
        "min-max total ms", "verified (last run)",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("contender", "shape") else "right")
    for shape in SHAPES:
        cases = [c for c in bench.cases if c.shape == shape]
        base = next(c for c in cases if c.contender == BASELINE)
        for case in cases:
            totals = [s.total_s * 1000 for s in case.samples]
            table.add_row(
                case.contender,
                shape,
                f"{case.steps:,}",
                f"{case.run_ms:,.1f}",
                f"{case.total_ms:,.1f}",
                f"{case.us_per_step:,.1f}",
                f"{case.total_ms / base.total_ms:.2f}",
                f"{min(totals):,.1f}-{max(totals):,.1f}",
                case.samples[-1].verified,
            )
        if shape != SHAPES[-1]:
            table.add_section()
    console.print(table)
    note(
        console,
        "  run: until the framework returns; total: for recording rows, run + store.flush() "
        "(every row committed), else the same as run. µs / step and ÷ Dendrite use total; "
        f"÷ Dendrite is against '{BASELINE}' on the same shape (> 1: slower than Dendrite).",
    )
    for name in bench.missing:
        note(console, f"  {name}: not installed (pip install -e '.[bench]'), so not measured")


def print_summary(console: Console, bench: Bench) -> bool:
    table = Table(title="Summary against targets")
    for column in ("check", "measured", "target", "pass"):
        table.add_column(column)

    def verdict(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    passed = True
    for shape in SHAPES:
        base = next(c for c in bench.cases if c.shape == shape and c.contender == BASELINE)
        ok = base.us_per_step <= TARGET_US_PER_STEP
        passed &= ok
        table.add_row(
            f"Dendrite per step, recording on, {shape}",
            f"{base.us_per_step:,.1f} µs (run alone {base.run_ms * 1000 / base.steps:,.1f} µs)",
            f"<= {TARGET_US_PER_STEP:g} µs",
            verdict(ok),
        )
    for shape in SHAPES:
        base = next(c for c in bench.cases if c.shape == shape and c.contender == BASELINE)
        peers = (c for c in bench.cases if c.shape == shape and "LangGraph" in c.contender)
        peer = next(peers, None)
        if peer is None:
            table.add_row(f"vs LangGraph, {shape}", "langgraph not installed", "", verdict(False))
            passed = False
            continue
        ratio = peer.total_ms / base.total_ms
        ok = ratio >= TARGET_VS_LANGGRAPH
        passed &= ok
        table.add_row(
            f"vs LangGraph, {shape}",
            f"{ratio:.2f}x ({peer.total_ms:,.1f} ms vs {base.total_ms:,.1f} ms)",
            f">= {TARGET_VS_LANGGRAPH:g}x faster",
            verdict(ok),
        )
    console.print(table)
    fan = next(c for c in bench.cases if c.shape == "fan-out" and c.contender == BASELINE)
    chain = next(c for c in bench.cases if c.shape == "chain" and c.contender == BASELINE)
    console.print(
        f"Summary: Dendrite (recording on, async) {fan.us_per_step:,.1f} µs/step fan-out, "
        f"{chain.us_per_step:,.1f} µs/step chain (target <= {TARGET_US_PER_STEP:g}); "
        + ("all targets met." if passed else "[red]targets NOT met[/red]."),
        highlight=False,
    )
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    started = time.perf_counter()
    bench = Bench(settings)
    try:
        print_environment(console, settings, bench)
        with asyncio.Runner() as runner:
            runner.run(bench.measure(console))
            print_results(console, bench)
            print_summary(console, bench)
            if settings.profile:
                runner.run(bench.profile(console))
    finally:
        bench.close()
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
