"""Benchmark of the execution-history store (``dendrite.store``).

Why: the store is on the orchestrator's hot path (every tool call is recorded),
it must keep up with sustained ingest, and the learning loop and dashboards ask
it aggregate questions over millions of rows. This script measures the three
and prints one table per section, then a summary against the targets:

1. Hot path: the caller-side cost of one ``store_tool_execution`` call, timed
   call by call, beside an OpenTelemetry SDK span (BatchSpanProcessor with a
   no-op exporter) and a plain ``sqlite3`` INSERT + COMMIT per record, in the
   same run. Target: median <= 10 us and below the OTel span.
2. Sustained ingest through the store's public API, from first enqueue to
   ``flush()`` complete, of goals in the order they ran ("arrival", as a running
   orchestrator records them) and of goals spread over 30 days ("backfill").
   Targets: >= 50,000 rows/s SQLite, >= 20,000 PostgreSQL.
3. Analytics latency over ``--executions`` executions and ``--tool-executions``
   tool executions (default 1M / 5M), loaded in large transactions with
   ``dendrite.store.writer.write_batch`` (the writer's own code, so the rollups
   are maintained exactly as in production). Target: <= 50 ms per query.

Speed figures are only comparable within one run (same machine, same load);
the baselines are there so that ratios, not absolute numbers, carry the result.

Run from the repository root (needs the ``bench`` and ``postgres`` extras)::

    PYTHONPATH=src .venv/bin/python bench/store_bench.py --quick      # smoke run
    PYTHONPATH=src .venv/bin/python bench/store_bench.py              # 1M / 5M rows
    PYTHONPATH=src .venv/bin/python bench/store_bench.py --backends sqlite \\
        --executions 200000 --tool-executions 1000000

PostgreSQL: ``--pg-url`` names an existing database used only to create and
drop the benchmark's own databases (``dendrite_bench_<hex>``), which are
dropped at the end even on error. SQLite files live in a temporary directory
that is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
import pydantic
import sqlalchemy
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from psycopg import sql
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from dendrite._ids import new_id
from dendrite.store import ExecutionStore
from dendrite.store import schema as s
from dendrite.store.engine import WRITE
from dendrite.store.writer import write_batch
from dendrite.telemetry import ErrorType, ExecutionRecord, ExecutionStatus, ToolExecutionRecord

BACKENDS = ("sqlite", "postgresql")
WARMUP_CALLS = 5_000
MAX_RESULT_BYTES = 64 * 1024
CONSTRUCTION_SAMPLE = 5_000  # executions (with their tool executions) timed both ways

TARGET_HOT_MEDIAN_US = 10.0
TARGET_INGEST = {"sqlite": 50_000, "postgresql": 20_000}
TARGET_QUERY_MS = 50.0

TOOLS = (
    "web_search", "web_fetch", "read_file", "write_file", "list_dir", "grep", "glob",
    "run_shell", "run_python", "run_tests", "git_status", "git_diff", "git_commit",
    "git_log", "http_get", "http_post", "sql_query", "vector_search", "embed_text",
    "summarize", "translate", "extract_entities", "classify", "calculator",
    "unit_convert", "calendar_lookup", "send_email", "slack_post", "jira_create",
    "jira_search", "github_issue", "github_pr", "docker_build", "k8s_logs",
    "s3_upload", "s3_download", "image_caption", "ocr", "pdf_extract", "spreadsheet_read",
)  # fmt: skip
INTENTS = ("code_generation", "data_analysis", "research", "file_operations", "conversation")
TASK_TYPES = {
    "code_generation": ("implement_feature", "fix_bug"),
    "data_analysis": ("aggregate_report", "plot"),
    "research": ("literature_search", "fact_check"),
    "file_operations": ("refactor_tree", "bulk_rename"),
    "conversation": ("answer_question", "small_talk"),
}
TIERS = ("fast", "balanced", "powerful")
TIER_LATENCY_MS = {"fast": 400.0, "balanced": 1_500.0, "powerful": 4_000.0}
TIER_DOLLARS_PER_TOKEN = {"fast": 2e-7, "balanced": 3e-6, "powerful": 1.5e-5}
POOLS = ("local", "cloud", "gpu")
PROJECTS = ("dendrite", "billing-api", "docs-site", "ml-pipeline")
TOOL_ERRORS = (
    "timed out after 30s",
    "rate limit exceeded (429 Too Many Requests)",
    "connection refused by upstream",
    "invalid parameter 'path': must be absolute",
    "KeyError: 'items'",
)
HISTORY = timedelta(days=30)


# -- realistic synthetic history -----------------------------------------------------------


class Workload:
    """Deterministic, varied goals and tool calls spread over the last 30 days.

    Tool popularity is Zipf-like, each tool has its own median duration
    (durations are lognormal) and failure rate, failures carry error texts,
    and a goal fails mostly when one of its steps failed.
    """

    def __init__(self, seed: int, now: datetime) -> None:
        self.rng = random.Random(seed)
        self.now = now
        rng = random.Random(seed ^ 0x5EED)
        self.tool_median = {t: math.log(rng.lognormvariate(math.log(80.0), 1.0)) for t in TOOLS}
        self.tool_failure = {t: rng.uniform(0.01, 0.15) for t in TOOLS}
        self.tool_weights = [1.0 / (rank + 1) for rank in range(len(TOOLS))]
        self.intent_weights = (0.35, 0.2, 0.2, 0.15, 0.1)

    def tool_call(self, execution_id: str, started_at: datetime, step: int) -> dict[str, Any]:
        rng = self.rng
        tool = rng.choices(TOOLS, self.tool_weights)[0]
        ok = rng.random() >= self.tool_failure[tool]
        return {
            "execution_id": execution_id,
            "tool_name": tool,
            "parameters": {"target": f"item-{rng.randrange(100_000)}", "limit": 10 * (step + 1)},
            "result": {"items": rng.randrange(50), "bytes": rng.randrange(20_000)} if ok else None,
            "success": ok,
            "duration_ms": rng.lognormvariate(self.tool_median[tool], 0.9),
            "error": None if ok else rng.choice(TOOL_ERRORS),
            "step_id": f"step_{step + 1}",
            "attempt": 1 if ok or rng.random() < 0.7 else 2,
            "started_at": started_at,
        }

    def goal(
        self, n_tools: int, started_at: datetime | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One execution's ``store_execution`` arguments and its tool calls' arguments,
        started at ``started_at`` or, by default, anywhere in the last 30 days."""
        rng = self.rng
        execution_id = new_id()
        # Drawn either way, so that both ingest orders get the same goals from the seed.
        spread = self.now - HISTORY * rng.random()
        started_at = spread if started_at is None else started_at
        tools = []
        clock = started_at
        for step in range(n_tools):
            call = self.tool_call(execution_id, clock, step)
            clock += timedelta(milliseconds=call["duration_ms"])
            tools.append(call)
        failed = [call for call in tools if not call["success"]]
        ok = rng.random() >= (0.6 if failed else 0.03)
        intent = rng.choices(INTENTS, self.intent_weights)[0]
        tier = rng.choice(TIERS)
        thinking_ms = rng.lognormvariate(math.log(TIER_LATENCY_MS[tier]), 0.6)
        tokens = int(rng.lognormvariate(math.log(2_000), 0.8))
        cost = tokens * TIER_DOLLARS_PER_TOKEN[tier]
        error = None
        if not ok:
            error = f"{failed[0]['tool_name']} failed: {failed[0]['error']}" if failed else None
            error = error or "plan could not be completed"
        execution = {
            "id": execution_id,
            "goal_text": f"{intent.replace('_', ' ')} task #{rng.randrange(1_000_000)}",
            "intent": intent,
            "query_type": "multi_step" if n_tools > 3 else "single_step",
            "task_type": rng.choice(TASK_TYPES[intent]),
            "project": rng.choice(PROJECTS),
            "session_id": f"session-{rng.randrange(50_000)}",
            "success": ok,
            "error": error,
            "started_at": started_at,
            "duration_ms": (clock - started_at).total_seconds() * 1000 + thinking_ms,
            "model_tier": tier,
            "pool": rng.choice(POOLS),
            "routing_confidence": rng.uniform(0.4, 1.0),
            "confidence_score": rng.uniform(0.3, 1.0),
            "estimated_tokens": int(tokens * rng.uniform(0.7, 1.3)),
            "tokens_used": tokens,
            "cost_estimate": cost * rng.uniform(0.7, 1.3),
            "actual_cost": cost,
            "quality_score": rng.uniform(0.5, 1.0) if ok else rng.uniform(0.0, 0.4),
            "metadata": {"steps": n_tools, "source": "store_bench"},
        }
        return execution, tools

    def goals(
        self,
        start: int,
        count: int,
        executions: int,
        tool_executions: int,
        arrival_gap: timedelta | None = None,
    ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
        """Goals ``start`` .. ``start + count`` of a history of ``executions`` goals with
        ``tool_executions`` steps in all (the step counts add up exactly).

        With ``arrival_gap`` the goals start one after another, that far apart, ending
        about now (as a running orchestrator records them); without it, anywhere in the
        last 30 days (a history loaded after the fact)."""
        for i in range(start, start + count):
            n_tools = tool_executions * (i + 1) // executions - tool_executions * i // executions
            at = None if arrival_gap is None else self.now - arrival_gap * (start + count - i)
            yield self.goal(n_tools, at)


def construct_fields(execution: dict[str, Any], tools: list[dict[str, Any]]) -> None:
    """Fill in what the records' validators derive, so ``model_construct`` gives complete rows."""
    for kwargs in (execution, *tools):
        kwargs["finished_at"] = kwargs["started_at"] + timedelta(milliseconds=kwargs["duration_ms"])
        kwargs["error_type"] = None if kwargs["success"] else ErrorType.infer(kwargs["error"])
    execution["status"] = (
        ExecutionStatus.SUCCEEDED if execution["success"] else ExecutionStatus.FAILED
    )


# -- databases ---------------------------------------------------------------------------


class Databases:
    """Scratch databases: SQLite files in a temporary directory, PostgreSQL databases
    created beside ``admin_url``; all removed on exit, even on error."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = make_url(admin_url)
        self.tmp = Path(tempfile.mkdtemp(prefix="dendrite_bench_"))
        self.pg_names: list[str] = []

    def __enter__(self) -> Databases:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            while self.pg_names:
                self._drop(self.pg_names.pop())
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _admin(self) -> psycopg.Connection[Any]:
        dsn = self.admin_url.set(drivername="postgresql").render_as_string(hide_password=False)
        return psycopg.connect(dsn, autocommit=True)

    def new(self, backend: str, label: str) -> str:
        if backend == "sqlite":
            return f"sqlite:///{self.tmp / f'{label}.db'}"
        name = f"dendrite_bench_{uuid.uuid4().hex[:12]}"
        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.pg_names.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        """Drop a PostgreSQL database made by ``new`` (SQLite files go with the directory)."""
        name = make_url(url).database
        if name in self.pg_names:
            self.pg_names.remove(name)
            self._drop(name)

    def _drop(self, name: str) -> None:
        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def state_dir(self, label: str) -> Path:
        return self.tmp / f"state-{label}"

    def server_version(self) -> str:
        with self._admin() as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]) if row else "?"


@contextlib.contextmanager
def open_store(
    databases: Databases, backend: str, label: str, **options: Any
) -> Iterator[ExecutionStore]:
    """A store on a fresh database, dropped (PostgreSQL) once the store is closed."""
    url = databases.new(backend, label)
    try:
        with ExecutionStore(
            url,
            state_dir=databases.state_dir(label),
            max_result_bytes=MAX_RESULT_BYTES,
            **options,
        ) as store:
            yield store
    finally:
        databases.drop(url)


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- measurement helpers ---------------------------------------------------------------------


def nearest_rank(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))]


@contextlib.contextmanager
def workload_frozen() -> Iterator[None]:
    """The objects alive now (the workload, built before the clock starts) out of the
    garbage collector's reach while the measured code runs.

    The workload is hundreds of thousands of argument dictionaries, and every full
    collection that the measured code's allocations trigger would walk them all:
    the benchmark's own data, charged to whatever it measures (to the store's
    ingest, about 8 %). A caller that makes its records as it goes has no such heap.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def time_each(op: Callable[[dict[str, Any]], object], items: Sequence[dict[str, Any]]) -> list[int]:
    """Nanoseconds of each call of ``op`` after ``WARMUP_CALLS`` untimed calls."""
    for item in items[:WARMUP_CALLS]:
        op(item)
    clock = time.perf_counter_ns
    samples = []
    with workload_frozen():
        for item in items[WARMUP_CALLS:]:
            started = clock()
            op(item)
            samples.append(clock() - started)
    return samples


@dataclass
class Latency:
    name: str
    median_us: float
    p99_us: float

    @classmethod
    def of(cls, name: str, samples_ns: list[int]) -> Latency:
        ordered = sorted(samples_ns)
        return cls(name, statistics.median(ordered) / 1000, nearest_rank(ordered, 0.99) / 1000)


# -- 1. hot path --------------------------------------------------------------------------


class NullExporter(SpanExporter):
    """Drops spans: the cost measured is the SDK's, not an exporter's."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def otel_latency(calls: list[dict[str, Any]]) -> Latency:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=len(calls)))
    tracer = provider.get_tracer("store_bench")

    def span(kw: dict[str, Any]) -> None:
        current = tracer.start_span(kw["tool_name"])
        current.set_attribute("dendrite.execution_id", kw["execution_id"])
        current.set_attribute("dendrite.tool_name", kw["tool_name"])
        current.set_attribute("dendrite.success", kw["success"])
        current.set_attribute("dendrite.duration_ms", kw["duration_ms"])
        current.end()

    try:
        return Latency.of(
            "OpenTelemetry span (BatchSpanProcessor, no-op exporter)", time_each(span, calls)
        )
    finally:
        provider.shutdown()


SQLITE3_TABLE = """
CREATE TABLE tool_executions (
    id TEXT PRIMARY KEY, execution_id TEXT NOT NULL, step_id TEXT, tool_name TEXT NOT NULL,
    parameters TEXT NOT NULL, result TEXT, success INTEGER NOT NULL, error TEXT,
    attempt INTEGER NOT NULL, duration_ms REAL NOT NULL, started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL
);
CREATE INDEX ix_te_execution ON tool_executions (execution_id);
CREATE INDEX ix_te_tool ON tool_executions (tool_name, started_at);
CREATE INDEX ix_te_started ON tool_executions (started_at);
"""
SQLITE3_INSERT = "INSERT INTO tool_executions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"


def sqlite3_latency(calls: list[dict[str, Any]], path: Path) -> Latency:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SQLITE3_TABLE)

    def insert(kw: dict[str, Any]) -> None:
        started = kw["started_at"]
        conn.execute(
            SQLITE3_INSERT,
            (
                str(uuid.uuid4()),
                kw["execution_id"],
                kw["step_id"],
                kw["tool_name"],
                json.dumps(kw["parameters"]),
                json.dumps(kw["result"]),
                kw["success"],
                kw["error"],
                kw["attempt"],
                kw["duration_ms"],
                started.isoformat(),
                (started + timedelta(milliseconds=kw["duration_ms"])).isoformat(),
            ),
        )
        conn.commit()

    try:
        return Latency.of(
            "sqlite3 INSERT + COMMIT per record (WAL, synchronous=NORMAL)", time_each(insert, calls)
        )
    finally:
        conn.close()


def store_latency(databases: Databases, backend: str, calls: list[dict[str, Any]]) -> Latency:
    # The queue holds every call, so this times enqueueing; backpressure is section 2's subject.
    with open_store(
        databases, backend, f"hot-{backend}", max_queue=max(100_000, len(calls))
    ) as store:
        samples = time_each(lambda kw: store.store_tool_execution(**kw), calls)
        store.flush(timeout=None)
    return Latency.of(f"ExecutionStore.store_tool_execution ({backend})", samples)


def bench_hot_path(settings: Settings, databases: Databases, workload: Workload) -> list[Latency]:
    calls = []
    while len(calls) < settings.calls + WARMUP_CALLS:
        calls.extend(workload.goal(5)[1])
    calls = calls[: settings.calls + WARMUP_CALLS]
    results = [store_latency(databases, backend, calls) for backend in settings.backends]
    results.append(otel_latency(calls))
    results.append(sqlite3_latency(calls, databases.tmp / "sqlite3_baseline.db"))
    return results


# -- 2. sustained ingest -------------------------------------------------------------------


INGEST_ORDERS = {
    # goals started 12 ms apart: 83 goals, about 400 rows, a second of the workload's time
    "arrival": timedelta(milliseconds=12),
    "backfill": None,  # spread over the last 30 days
}


@dataclass
class Ingest:
    backend: str
    order: str
    executions: int
    tool_executions: int
    enqueue_s: float
    total_s: float
    cpu_s: float
    load: float
    written: int
    journaled: int
    rejected: int
    rows_in_db: int

    @property
    def rows(self) -> int:
        return self.executions + self.tool_executions

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.total_s


def bench_ingest(settings: Settings, databases: Databases) -> list[Ingest]:
    results = []
    for order in settings.orders:
        gap = INGEST_ORDERS[order]
        work: list[tuple[bool, dict[str, Any]]] = []  # (is an execution, its arguments)
        for execution, tools in Workload(settings.seed, datetime.now(UTC)).goals(
            0,
            settings.ingest_executions,
            settings.ingest_executions,
            settings.ingest_tool_executions,
            arrival_gap=gap,
        ):
            work.extend((False, kw) for kw in tools)
            work.append((True, execution))
        for backend in settings.backends:
            results.append(ingest_once(databases, backend, order, work, settings))
    return results


def ingest_once(
    databases: Databases,
    backend: str,
    order: str,
    work: list[tuple[bool, dict[str, Any]]],
    settings: Settings,
) -> Ingest:
    """One backend's ingest of ``work`` into a fresh database, timed to ``flush()`` complete."""
    with open_store(databases, backend, f"ingest-{backend}-{order}") as store:
        store_tool, store_exec = store.store_tool_execution, store.store_execution
        load = os.getloadavg()[0]
        with workload_frozen():
            started, cpu_started = time.perf_counter(), time.process_time()
            for is_execution, kwargs in work:
                if is_execution:
                    store_exec(**kwargs)
                else:
                    store_tool(**kwargs)
            enqueued = time.perf_counter()
            if not store.flush(timeout=None):
                raise RuntimeError(f"{backend}: flush did not complete")
            finished, cpu_finished = time.perf_counter(), time.process_time()
        status = store.status()
        with store.engine.connect() as conn:
            rows = sum(
                conn.scalar(select(func.count()).select_from(table)) or 0
                for table in (s.executions, s.tool_executions)
            )
    return Ingest(
        backend=backend,
        order=order,
        executions=settings.ingest_executions,
        tool_executions=settings.ingest_tool_executions,
        enqueue_s=enqueued - started,
        total_s=finished - started,
        cpu_s=cpu_finished - cpu_started,
        load=load,
        written=status.written_records,
        journaled=status.journal_records,
        rejected=status.rejected_records,
        rows_in_db=rows,
    )


# -- 3. analytics over a large history ---------------------------------------------------------


@dataclass
class Construction:
    rows: int
    validated_us: float
    constructed_us: float


def measure_construction(workload: Workload) -> Construction:
    """Per-row cost of building records with validation vs ``model_construct``."""
    goals = list(
        workload.goals(0, CONSTRUCTION_SAMPLE, CONSTRUCTION_SAMPLE, CONSTRUCTION_SAMPLE * 5)
    )
    rows = sum(1 + len(tools) for _, tools in goals)
    started = time.perf_counter()
    for execution, tools in goals:
        ExecutionRecord(**execution)
        for kw in tools:
            ToolExecutionRecord(**kw)
    validated = time.perf_counter() - started
    for execution, tools in goals:
        construct_fields(execution, tools)
    started = time.perf_counter()
    for execution, tools in goals:
        ExecutionRecord.model_construct(**execution)
        for kw in tools:
            ToolExecutionRecord.model_construct(**kw)
    constructed = time.perf_counter() - started
    return Construction(rows, validated / rows * 1e6, constructed / rows * 1e6)


@dataclass
class Load:
    backend: str
    executions: int
    tool_executions: int
    generate_s: float = 0.0
    validate_s: float = 0.0
    write_s: float = 0.0

    @property
    def rows(self) -> int:
        return self.executions + self.tool_executions

    @property
    def total_s(self) -> float:
        return self.generate_s + self.validate_s + self.write_s


@dataclass
class QueryTiming:
    name: str
    backend: str
    median_ms: float
    max_ms: float
    result: str


@dataclass
class Analytics:
    load: Load
    queries: list[QueryTiming]
    rollup_rows: int


def load_history(
    store: ExecutionStore, settings: Settings, workload: Workload, console: Console
) -> Load:
    """Write the history in transactions of ``--load-chunk`` goals with the writer's
    ``write_batch``, so the rollups are maintained exactly as in production."""
    load = Load(store.backend, settings.executions, settings.tool_executions)
    chunks = range(0, settings.executions, settings.load_chunk)
    report_every = max(1, len(chunks) // 10)
    for number, start in enumerate(chunks, 1):
        t0 = time.perf_counter()
        size = min(settings.load_chunk, settings.executions - start)
        goals = list(workload.goals(start, size, settings.executions, settings.tool_executions))
        t1 = time.perf_counter()
        records: list[ExecutionRecord | ToolExecutionRecord] = []
        for execution, tools in goals:
            records.append(ExecutionRecord(**execution))
            records.extend(ToolExecutionRecord(**kw) for kw in tools)
        t2 = time.perf_counter()
        with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
            write_batch(conn, records, MAX_RESULT_BYTES)
        t3 = time.perf_counter()
        load.generate_s += t1 - t0
        load.validate_s += t2 - t1
        load.write_s += t3 - t2
        if number % report_every == 0 or number == len(chunks):
            done = settings.tool_executions * (start + size) // settings.executions + start + size
            note(
                console,
                f"  [{store.backend}] loaded {done:,} rows in {load.total_s:,.0f} s "
                f"(write {done / load.write_s:,.0f} rows/s)",
            )
    return load


def analytics_queries(
    intent: str, since: datetime
) -> list[tuple[str, Callable[[ExecutionStore], str]]]:
    """(label, run the query and describe its result) for every measured question."""

    def top_tools(store: ExecutionStore) -> str:
        return f"{len(store.get_top_tools(10, 1))} tools"

    def success_rate(store: ExecutionStore) -> str:
        return f"{store.get_success_rate().total:,} executions"

    def success_rate_recent(store: ExecutionStore) -> str:
        return f"{store.get_success_rate(intent, since).total:,} executions"

    def tiers(store: ExecutionStore) -> str:
        return f"{len(store.get_tier_performance(30))} tier-days"

    def recent(store: ExecutionStore) -> str:
        return f"{len(store.get_recent_executions(50))} rows"

    def recent_intent(store: ExecutionStore) -> str:
        return f"{len(store.get_recent_executions(50, intent=intent))} rows"

    return [
        ("get_top_tools(10)", top_tools),
        ("get_success_rate()", success_rate),
        (f"get_success_rate({intent!r}, since=7 days ago)", success_rate_recent),
        ("get_tier_performance(days=30)", tiers),
        ("get_recent_executions(50)", recent),
        (f"get_recent_executions(50, intent={intent!r})", recent_intent),
    ]


def bench_analytics(settings: Settings, databases: Databases, console: Console) -> list[Analytics]:
    results = []
    for backend in settings.backends:
        note(console, f"  [{backend}] loading the history …")
        with open_store(databases, backend, f"analytics-{backend}") as store:
            workload = Workload(settings.seed, datetime.now(UTC))
            load = load_history(store, settings, workload, console)
            with store.engine.connect() as conn:
                rollup_rows = conn.scalar(select(func.count()).select_from(s.execution_rollup))
            since = datetime.now(UTC) - timedelta(days=7)
            timings = []
            for name, query in analytics_queries(INTENTS[0], since):
                query(store)  # warm-up
                samples = []
                for _ in range(settings.runs):
                    started = time.perf_counter()
                    result = query(store)
                    samples.append((time.perf_counter() - started) * 1000)
                timings.append(
                    QueryTiming(name, backend, statistics.median(samples), max(samples), result)
                )
        results.append(Analytics(load, timings, rollup_rows or 0))
    return results


# -- settings and output ---------------------------------------------------------------------


@dataclass
class Settings:
    backends: list[str]
    calls: int
    ingest_executions: int
    ingest_tool_executions: int
    executions: int
    tool_executions: int
    load_chunk: int
    runs: int
    seed: int
    pg_url: str
    sections: list[str]
    orders: list[str]


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--backends", default="sqlite,postgresql", help="comma-separated")
    parser.add_argument("--sections", default="hot,ingest,analytics", help="comma-separated")
    parser.add_argument(
        "--orders", default=",".join(INGEST_ORDERS), help="ingest orders, comma-separated"
    )
    parser.add_argument("--calls", type=int, default=50_000, help="timed hot-path calls")
    parser.add_argument("--ingest-executions", type=int, default=50_000)
    parser.add_argument("--ingest-tool-executions", type=int, default=250_000)
    parser.add_argument("--executions", type=int, default=1_000_000, help="analytics history")
    parser.add_argument("--tool-executions", type=int, default=5_000_000, help="analytics history")
    parser.add_argument("--load-chunk", type=int, default=10_000, help="goals per transaction")
    parser.add_argument("--runs", type=int, default=20, help="timed runs of each query")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--pg-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="existing database to connect to when creating and dropping the scratch ones",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 10k calls, 20k-row ingest, 20k executions / 100k tool executions",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.ingest_executions, args.ingest_tool_executions = 10_000, 4_000, 20_000
        args.executions, args.tool_executions, args.load_chunk = 20_000, 100_000, 5_000
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    sections = [x.strip() for x in args.sections.split(",") if x.strip()]
    if not backends or any(b not in BACKENDS for b in backends):
        parser.error(f"--backends must be a subset of {','.join(BACKENDS)}")
    if not sections or any(x not in ("hot", "ingest", "analytics") for x in sections):
        parser.error("--sections must be a subset of hot,ingest,analytics")
    orders = [x.strip() for x in args.orders.split(",") if x.strip()]
    if not orders or any(x not in INGEST_ORDERS for x in orders):
        parser.error(f"--orders must be a subset of {','.join(INGEST_ORDERS)}")
    if min(args.calls, args.ingest_executions, args.executions, args.load_chunk, args.runs) < 1:
        parser.error("sizes must be positive")
    return Settings(
        backends=backends,
        calls=args.calls,
        ingest_executions=args.ingest_executions,
        ingest_tool_executions=args.ingest_tool_executions,
        executions=args.executions,
        tool_executions=args.tool_executions,
        load_chunk=args.load_chunk,
        runs=args.runs,
        seed=args.seed,
        pg_url=args.pg_url,
        sections=sections,
        orders=orders,
    )


def print_environment(console: Console, settings: Settings, databases: Databases) -> None:
    table = Table(title="Environment and sizes", show_header=False)
    pg = databases.server_version() if "postgresql" in settings.backends else "not used"
    for key, value in (
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()}, {platform.system()}, {_cpus()} CPUs, "
         f"load average {os.getloadavg()[0]:.1f} at start"),
        ("sqlalchemy / pydantic / psycopg", f"{sqlalchemy.__version__} / {pydantic.VERSION} / "
         f"{psycopg.__version__} ({psycopg.pq.__impl__})"),
        ("sqlite library", sqlite3.sqlite_version),
        ("postgresql server", pg),
        ("backends / sections", f"{','.join(settings.backends)} / {','.join(settings.sections)}"),
        ("hot-path calls", f"{settings.calls:,} timed after {WARMUP_CALLS:,} warm-up"),
        ("ingest", f"{settings.ingest_executions:,} executions + "
         f"{settings.ingest_tool_executions:,} tool executions"),
        ("analytics history", f"{settings.executions:,} executions + "
         f"{settings.tool_executions:,} tool executions, {settings.load_chunk:,} goals per "
         f"transaction; {settings.runs} timed runs per query"),
    ):  # fmt: skip
        table.add_row(key, value)
    console.print(table)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def print_hot_path(console: Console, results: list[Latency]) -> None:
    otel = next(r for r in results if r.name.startswith("OpenTelemetry"))
    lite = next(r for r in results if r.name.startswith("sqlite3"))
    table = Table(title="1. Hot path: one call, timed individually (µs)")
    for column in ("variant", "median", "p99", "median ÷ OTel", "median ÷ sqlite3"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    table.add_column("p99 ÷ OTel", justify="right")
    table.add_column("p99 ÷ sqlite3", justify="right")
    for r in results:
        table.add_row(
            r.name,
            f"{r.median_us:.2f}",
            f"{r.p99_us:.2f}",
            f"{r.median_us / otel.median_us:.2f}",
            f"{r.median_us / lite.median_us:.2f}",
            f"{r.p99_us / otel.p99_us:.2f}",
            f"{r.p99_us / lite.p99_us:.2f}",
        )
    console.print(table)
    note(
        console,
        "  store: default settings except max_queue (holds every call, so this is the enqueue "
        "cost; the writer thread runs concurrently, as in production)",
    )


def print_ingest(console: Console, results: list[Ingest]) -> None:
    table = Table(title="2. Sustained ingest through the store (default batch_size/max_queue)")
    for column in (
        "backend", "order", "rows", "enqueue s", "enqueue µs/row", "to flush done s", "rows/s",
        "CPU µs/row", "load", "written", "journaled", "rejected", "rows in db",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "order") else "right")
    for r in results:
        table.add_row(
            r.backend,
            r.order,
            f"{r.rows:,}",
            f"{r.enqueue_s:.2f}",
            f"{r.enqueue_s / r.rows * 1e6:.1f}",
            f"{r.total_s:.2f}",
            f"{r.rows_per_s:,.0f}",
            f"{r.cpu_s / r.rows * 1e6:.1f}",
            f"{r.load:.1f}",
            f"{r.written:,}",
            f"{r.journaled:,}",
            f"{r.rejected:,}",
            f"{r.rows_in_db:,}",
        )
    console.print(table)
    note(
        console,
        "  CPU µs/row: this process's CPU time (caller and writer thread) per row, which other "
        "load on the machine inflates far less than wall time; PostgreSQL's server is not "
        "counted. load: the 1-minute load average when the run started. order: arrival = "
        "goals recorded in the order they ran, 12 ms apart (a running orchestrator); "
        "backfill = goals spread over 30 days (a history imported after the fact), whose "
        "time-ordered indexes and per-day rollups take writes all over",
    )


def print_analytics(console: Console, construction: Construction, results: list[Analytics]) -> None:
    build = Table(title="3a. Building records for the bulk load (µs per row)")
    for column in ("sample rows", "validated (constructor)", "model_construct", "used for load"):
        build.add_column(column, justify="right")
    faster = construction.constructed_us < construction.validated_us
    build.add_row(
        f"{construction.rows:,}",
        f"{construction.validated_us:.1f}",
        f"{construction.constructed_us:.1f}",
        "validated" + ("" if not faster else " (model_construct would be faster)"),
    )
    console.print(build)

    load = Table(title="3b. Bulk load with write_batch, one transaction per chunk")
    for column in (
        "backend", "rows", "generate s", "validate s", "write s", "write rows/s", "total s",
        "rows/s overall", "rollup rows",
    ):  # fmt: skip
        load.add_column(column, justify="left" if column == "backend" else "right")
    for a in results:
        r = a.load
        load.add_row(
            r.backend,
            f"{r.rows:,}",
            f"{r.generate_s:.1f}",
            f"{r.validate_s:.1f}",
            f"{r.write_s:.1f}",
            f"{r.rows / r.write_s:,.0f}",
            f"{r.total_s:.1f}",
            f"{r.rows / r.total_s:,.0f}",
            f"{a.rollup_rows:,}",
        )
    console.print(load)

    queries = Table(title="3c. Analytics latency through ExecutionStore (ms)")
    queries.add_column("query")
    for a in results:
        queries.add_column(f"{a.load.backend} median", justify="right")
        queries.add_column(f"{a.load.backend} max", justify="right")
    queries.add_column("result")
    for i, first in enumerate(results[0].queries):
        cells = []
        for a in results:
            cells += [f"{a.queries[i].median_ms:.2f}", f"{a.queries[i].max_ms:.2f}"]
        queries.add_row(first.name, *cells, " / ".join(a.queries[i].result for a in results))
    console.print(queries)


def print_summary(
    console: Console,
    hot: list[Latency],
    ingest: list[Ingest],
    analytics: list[Analytics],
) -> None:
    table = Table(title="Summary against targets")
    for column in ("check", "measured", "target", "pass"):
        table.add_column(column)

    def verdict(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    otel = next((r for r in hot if r.name.startswith("OpenTelemetry")), None)
    for r in hot:
        if otel is not None and r.name.startswith("ExecutionStore"):
            ok = r.median_us <= TARGET_HOT_MEDIAN_US and r.median_us < otel.median_us
            table.add_row(
                f"hot path median, {r.name.removeprefix('ExecutionStore.')}",
                f"{r.median_us:.2f} µs (OTel {otel.median_us:.2f} µs)",
                f"<= {TARGET_HOT_MEDIAN_US:g} µs and < OTel",
                verdict(ok),
            )
    for r in ingest:
        target = TARGET_INGEST[r.backend]
        ok = r.rows_per_s >= target and r.rows_in_db == r.rows and not r.journaled
        table.add_row(
            f"ingest, {r.backend}, {r.order}",
            f"{r.rows_per_s:,.0f} rows/s ({r.rows_in_db:,}/{r.rows:,} rows in db)",
            f">= {target:,} rows/s",
            verdict(ok),
        )
    for a in analytics:
        for q in a.queries:
            table.add_row(
                f"{q.name}, {q.backend} ({a.load.executions:,} / {a.load.tool_executions:,})",
                f"median {q.median_ms:.2f} ms, max {q.max_ms:.2f} ms",
                f"median <= {TARGET_QUERY_MS:g} ms",
                verdict(q.median_ms <= TARGET_QUERY_MS)
                + ("" if q.max_ms <= TARGET_QUERY_MS else " (max over)"),
            )
    console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.perf_counter()
    hot: list[Latency] = []
    ingest: list[Ingest] = []
    analytics: list[Analytics] = []
    with Databases(settings.pg_url) as databases:
        print_environment(console, settings, databases)
        if "hot" in settings.sections:
            note(console, "1. hot path …")
            hot = bench_hot_path(settings, databases, Workload(settings.seed, datetime.now(UTC)))
            print_hot_path(console, hot)
        if "ingest" in settings.sections:
            note(console, "2. sustained ingest …")
            ingest = bench_ingest(settings, databases)
            print_ingest(console, ingest)
        if "analytics" in settings.sections:
            note(console, "3. analytics …")
            construction = measure_construction(Workload(settings.seed, datetime.now(UTC)))
            analytics = bench_analytics(settings, databases, console)
            print_analytics(console, construction, analytics)
    print_summary(console, hot, ingest, analytics)
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
