"""The demonstration behind ``make demo``: a realistic workload through the real store.

Until the orchestrator exists, the demo simulates what it will record: goals
of several query types planned as tool calls over a catalogue of tools with
their own reliability and latency, retries on transient errors, a fallback
when a flaky tool gives up, model tiers with their costs and qualities, worker
pools, routing decisions, user feedback, extracted solutions and a few
generated tools. Everything goes through ``ExecutionStore``'s public API into
the configured database (the embedded SQLite file by default), and the
analytics printed at the end are read back from it. History accumulates
across runs.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table

from dendrite._ids import new_id
from dendrite.store import ExecutionDetail, ExecutionStore


@dataclass(frozen=True)
class SimTool:
    name: str
    reliability: float
    median_ms: float
    failure: str
    fallback: str | None = None


TOOLS = {
    t.name: t
    for t in (
        SimTool("doc_search", 0.97, 35, "index not loaded"),
        SimTool("web_search", 0.93, 420, "connection reset by peer"),
        SimTool("legacy_search", 0.62, 1400, "upstream timed out after 10s", "web_search"),
        SimTool("summarize", 0.95, 780, "rate limit exceeded (429)"),
        SimTool("compare_documents", 0.91, 640, "invalid document handle"),
        SimTool("calculator", 0.995, 2, "invalid expression"),
        SimTool("unit_convert", 0.99, 1, "unknown unit"),
        SimTool("read_file", 0.985, 5, "path outside the allowed root"),
        SimTool("csv_aggregate", 0.96, 60, "column not found"),
        SimTool("extract_keywords", 0.98, 20, "empty text"),
        SimTool("http_fetch", 0.84, 900, "connection refused", "web_search"),
    )
}

# query type -> (intent, goal templates, plan as stages of parallel tool calls)
WORKLOAD: dict[str, tuple[str, list[str], list[list[str]]]] = {
    "search": (
        "tool_use",
        ["find recent papers on {t}", "search the docs for {t}", "what do we know about {t}"],
        [["legacy_search"]],
    ),
    "summary": (
        "tool_use",
        ["summarise the notes on {t}", "give me a short summary of {t}"],
        [["doc_search"], ["summarize"]],
    ),
    "comparison": (
        "tool_use",
        ["compare {t} and {u}", "how does {t} differ from {u}"],
        [["doc_search", "doc_search"], ["compare_documents"]],
    ),
    "calculation": (
        "tool_use",
        ["what is 17% of 2,340", "convert 12 miles to km", "compound 1000 at 4% for 7 years"],
        [["calculator"], ["unit_convert"]],
    ),
    "analysis": (
        "tool_use",
        ["analyse sales.csv by region", "which month had the most signups in users.csv"],
        [["read_file"], ["csv_aggregate"], ["summarize"]],
    ),
    "lookup": (
        "tool_use",
        ["fetch the status page of {t}", "look up the changelog of {t}"],
        [["http_fetch"], ["extract_keywords"]],
    ),
    "generative": (
        "generative",
        ["write a haiku about {t}", "draft an email announcing {t}"],
        [],
    ),
}
MIX = {
    "search": 0.22,
    "summary": 0.18,
    "comparison": 0.12,
    "calculation": 0.15,
    "analysis": 0.1,
    "lookup": 0.13,
    "generative": 0.1,
}
TOPICS = [
    "vector databases",
    "WAL mode",
    "PostgreSQL",
    "asyncio",
    "BM25",
    "retry budgets",
    "bandits",
    "OpenTelemetry",
    "Ray",
    "rate limiting",
    "SQLite",
    "quarantine policies",
]
TIERS = {  # tier -> (price per 1k tokens, quality mean, success bonus)
    "small": (0.0004, 0.70, -0.04),
    "medium": (0.003, 0.81, 0.0),
    "large": (0.015, 0.90, 0.03),
}
POOLS = ("local-threads", "local-processes", "gpu-batch")
PROJECTS = ("support-bot", "research-assistant", "data-pipeline")


def _latency(rng: random.Random, median_ms: float) -> float:
    return median_ms * math.exp(rng.gauss(0, 0.45))


class _Simulator:
    def __init__(self, store: ExecutionStore, rng: random.Random) -> None:
        self.store = store
        self.rng = rng

    def call(self, execution_id: str, step: str, tool: SimTool, at: datetime) -> tuple[bool, float]:
        """One step: retries on transient failures, then the tool's fallback."""
        elapsed = 0.0
        current, fallback_of = tool, None
        for _ in range(2):
            for attempt in range(1, 4):
                ms = _latency(self.rng, current.median_ms)
                ok = self.rng.random() < current.reliability
                self.store.store_tool_execution(
                    execution_id,
                    current.name,
                    {"query": step, "top_k": 5} if "search" in current.name else {"input": step},
                    {"items": self.rng.randint(1, 9)} if ok else None,
                    ok,
                    ms,
                    error=None if ok else current.failure,
                    step_id=step,
                    attempt=attempt,
                    fallback_of=fallback_of,
                    started_at=at + timedelta(milliseconds=elapsed),
                )
                elapsed += ms
                if ok:
                    return True, elapsed
                if not any(k in current.failure for k in ("timed out", "connection", "429")):
                    break
            if current.fallback is None:
                return False, elapsed
            current, fallback_of = TOOLS[current.fallback], current.name
        return False, elapsed

    def goal(self, at: datetime) -> None:
        rng = self.rng
        query_type = rng.choices(list(MIX), weights=list(MIX.values()))[0]
        intent, templates, stages = WORKLOAD[query_type]
        topic, other = rng.sample(TOPICS, 2)
        text = rng.choice(templates).format(t=topic, u=other)
        tier = rng.choices(list(TIERS), weights=[0.5, 0.35, 0.15])[0]
        price, quality_mean, bonus = TIERS[tier]
        execution_id = new_id()
        self.store.store_routing_decision(
            execution_id,
            tier,
            {t: round(TIERS[t][1] - 8 * TIERS[t][0], 3) for t in TIERS},
            confidence=round(rng.uniform(0.55, 0.95), 2),
            reason=f"{query_type} goal, complexity {len(stages)}",
            predicted_success=0.9,
            predicted_cost=price * 1.2,
        )
        success, total_ms, steps_run = True, 0.0, 0
        for stage_no, stage in enumerate(stages):
            stage_ms = 0.0
            for i, name in enumerate(stage):
                ok, ms = self.call(
                    execution_id,
                    f"s{stage_no + 1}{'abc'[i]}",
                    TOOLS[name],
                    at + timedelta(milliseconds=total_ms),
                )
                steps_run += 1
                stage_ms = max(stage_ms, ms)
                success = success and ok
            total_ms += stage_ms
            if not success:
                break
        tokens = rng.randint(300, 4000)
        total_ms += tokens * (0.05 if tier == "small" else 0.12 if tier == "medium" else 0.3)
        success = success and rng.random() < 0.97 + bonus
        quality = min(1.0, max(0.0, rng.gauss(quality_mean, 0.08))) if success else None
        self.store.store_execution(
            goal_text=text,
            intent=intent,
            success=success,
            duration_ms=total_ms,
            metadata={"answer": f"({query_type} answer)" if success else None, "steps": steps_run},
            id=execution_id,
            query_type=query_type,
            task_type=query_type,
            project=rng.choice(PROJECTS),
            session_id=f"session-{rng.randint(1, 60)}",
            error=None if success else "a step failed after retries and fallbacks",
            started_at=at,
            model_tier=tier,
            pool=rng.choice(POOLS),
            routing_confidence=0.9,
            complexity_score=round(len(stages) / 3, 2),
            confidence_score=round(quality * 0.95, 3) if quality else 0.1,
            estimated_tokens=int(tokens * rng.uniform(0.8, 1.2)),
            tokens_used=tokens,
            cost_estimate=price * 1.2,
            actual_cost=round(tokens / 1000 * price, 6),
            quality_score=quality,
            peak_memory_mb=round(rng.uniform(40, 400), 1),
            cpu_time_ms=round(total_ms * rng.uniform(0.05, 0.3), 2),
            solution_summary=" -> ".join(t for s in stages for t in s) if success else None,
        )
        if success and rng.random() < 0.1:
            self.store.store_solution(
                " -> ".join(t for s in stages for t in s) or "llm",
                f"{query_type} goals answered by this plan",
                execution_id=execution_id,
                query_type=query_type,
                plan={"stages": stages},
                quality_score=quality,
            )
        if rng.random() < 0.15:
            rating = (4 if success else 2) + rng.choice((-1, 0, 0, 1))
            self.store.store_feedback(
                execution_id,
                max(1, min(5, rating)),
                "useful" if rating >= 4 else "not what I asked",
                accepted=rating >= 3,
            )


def run_demo(console: Console, url: str, goals: int = 2000, seed: int | None = None) -> None:
    rng = random.Random(seed)
    started = time.perf_counter()
    with ExecutionStore(url) as store:
        before = store.get_success_rate().total
        simulator = _Simulator(store, rng)
        now = datetime.now(UTC)
        moments = sorted(now - timedelta(seconds=rng.uniform(0, 14 * 86400)) for _ in range(goals))
        for at in moments:
            simulator.goal(at)
        for i in range(3):
            store.store_tool_creation(
                f"parse_invoice_v{i + 1}",
                "def parse_invoice(text: str) -> dict: ...",
                validation_passed=i == 2,
                validation_errors=[] if i == 2 else ["missing return type for 'total'"],
                goal_text="extract totals from invoices",
            )
        store.flush()
        elapsed = time.perf_counter() - started
        _report(console, store, url, before, goals, elapsed)


def _report(
    console: Console, store: ExecutionStore, url: str, before: int, goals: int, elapsed: float
) -> None:
    overall = store.get_success_rate()
    status = store.status()
    console.rule("[bold]Dendrite demo: execution history")
    console.print(f"store: {status.url} (schema {status.schema_revision})")
    console.print(
        f"recorded {goals} goals and {status.written_records} rows in {elapsed:.1f}s; "
        f"the store now holds {overall.total} executions"
        + (f" ({before} from earlier runs)" if before else "")
    )

    recent = Table(title="Recent executions")
    for col in ("goal", "when (UTC)", "type", "tier", "ok", "ms", "cost $"):
        recent.add_column(col)
    for ex in store.get_recent_executions(8):
        recent.add_row(
            ex.goal_id,
            f"{ex.started_at:%m-%d %H:%M}",
            ex.query_type,
            ex.model_tier,
            "✓" if ex.success else "✗",
            f"{ex.duration_ms:,.0f}",
            f"{ex.actual_cost or 0:.5f}",
        )
    console.print(recent)

    tools = Table(title="Tool performance (all history)")
    for col in ("tool", "calls", "success", "avg ms", "p95 ms"):
        tools.add_column(col, justify="right" if col != "tool" else "left")
    for t in store.get_tool_performance():
        tools.add_row(
            t.tool_name,
            f"{t.total_executions:,}",
            f"{t.success_rate:.1%}",
            f"{t.avg_duration_ms:,.1f}",
            f"{t.p95_duration_ms:,.1f}",
        )
    console.print(tools)

    rates = Table(title="Success rate by intent")
    for col in ("intent", "executions", "success", "last 24h"):
        rates.add_column(col)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    for intent in ("tool_use", "generative"):
        r, recent_r = store.get_success_rate(intent), store.get_success_rate(intent, day_ago)
        rates.add_row(intent, f"{r.total:,}", _pct(r.success_rate), _pct(recent_r.success_rate))
    rates.add_row("all", f"{overall.total:,}", _pct(overall.success_rate), "")
    console.print(rates)

    tiers: dict[str, list[float]] = {}
    for row in store.get_tier_performance(days=15):
        acc = tiers.setdefault(row.model_tier, [0, 0, 0.0, 0.0, 0])
        acc[0] += row.executions
        acc[1] += row.successes
        acc[2] += row.avg_duration_ms * row.executions
        acc[3] += (row.avg_cost or 0) * row.executions
    tier_table = Table(title="Model tiers, last 14 days")
    for col in ("tier", "executions", "success", "avg ms", "avg cost $"):
        tier_table.add_column(col)
    for tier, (n, ok, ms, cost, _) in sorted(tiers.items()):
        tier_table.add_row(tier, f"{n:,}", f"{ok / n:.1%}", f"{ms / n:,.0f}", f"{cost / n:.5f}")
    console.print(tier_table)

    pools = Table(title="Worker pools")
    for col in ("pool", "executions", "success", "avg ms"):
        pools.add_column(col)
    for p in store.get_pool_performance():
        pools.add_row(
            p.pool, f"{p.executions:,}", f"{p.success_rate:.1%}", f"{p.avg_duration_ms:,.0f}"
        )
    console.print(pools)

    weak = [
        t for t in store.get_tool_performance() if t.total_executions >= 30 and t.success_rate < 0.8
    ]
    for t in weak:
        console.print(
            f"[yellow]![/yellow] {t.tool_name} succeeds {t.success_rate:.0%} of "
            f"{t.total_executions:,} calls: a quarantine candidate for the learning loop"
        )
    _print_trace(console, store)


def _print_trace(console: Console, store: ExecutionStore) -> None:
    """Show the most telling recent run: a fallback beats a retry beats a long plan."""

    def interest(detail: ExecutionDetail) -> tuple[bool, bool, int]:
        return (
            any(step.fallback_of for step in detail.steps),
            any(step.attempt > 1 for step in detail.steps),
            len(detail.steps),
        )

    details = [store.get_execution(ex.id) for ex in store.get_recent_executions(100)]
    detail = max((d for d in details if d is not None), key=interest, default=None)
    if detail is None:
        return
    console.rule(f"[bold]Trace of {detail.goal_id}: {detail.goal_text!r}")
    for step in detail.steps:
        via = f" (fallback for {step.fallback_of})" if step.fallback_of else ""
        mark = "[green]✓[/green]" if step.success else f"[red]✗ {step.error_type}[/red]"
        console.print(
            f"  {step.step_id} {step.tool_name}{via} attempt {step.attempt}: "
            f"{step.duration_ms:,.0f} ms {mark}" + (f" {step.error}" if step.error else "")
        )
    outcome = "succeeded" if detail.success else f"failed ({detail.error})"
    console.print(f"  → {outcome} in {detail.duration_ms:,.0f} ms on {detail.model_tier}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
