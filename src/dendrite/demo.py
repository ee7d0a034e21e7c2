"""``dendrite demo``: a real session on the embedded default, offline, in seconds.

It loads the small document set shipped in ``dendrite/demo_docs`` (an orchard's
handbook, written for this demo), registers the built-in tools plus two of the
orchard's own (a cold-room sensor and its log), and sends a scripted series of
goals through the real orchestrator and the default planner: a search, a
summary, a comparison, a calculation, multi-step goals, and a sensor reading
whose gateway is down, so the step falls back to the log. Every run and
attempt is recorded in the store; feedback is given on some answers and
learned at once; the learning jobs run (statistics, low performers, quality
policies); then it prints what the store now knows, and the trace of the
sensor reading. Run it again and the history accumulates; plan memory then
plans the log for the sensor reading directly, so that goal no longer falls
back, and its heading and trace say so and name the plan it reused.

The sensor gateway being down is the scenario, not a fake: the sensor tool
really fails (it has no gateway to reach), retries, and the engine falls back
to the log tool, exactly as it would in production.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from dendrite.cli import tool_label
from dendrite.learning.jobs import JobContext, run_job
from dendrite.orchestrator import ExecutionResult, Orchestrator, OrchestratorConfig, load_trace
from dendrite.planning import PlanningError, RetryPolicy
from dendrite.store import ExecutionStore
from dendrite.tools import Reliability, ToolRegistry
from dendrite.tools.builtin import DocumentStore, register_builtin


@dataclass(frozen=True, slots=True)
class Goal:
    text: str
    kind: str
    rating: int | None = None
    falls_back: bool = False
    """Meant to show a fallback: it does on a fresh store; later runs plan the tool that
    answered from memory, and the demo says so instead."""


GOALS = (
    Goal("search the documents for controlled atmosphere", "search", rating=5),
    Goal("summarize harvest.md", "summary", rating=4),
    Goal("compare what storage.md and pricing.md say about temperature", "comparison", rating=5),
    Goal("calculate 1250 * 0.85 + 40", "calculation", rating=5),
    Goal("convert 18 km to miles and calculate 4 * 37.5", "two steps in parallel"),
    Goal("summarize irrigation.txt then count the words", "two steps in a chain"),
    Goal(
        "read the cold room sensor for room B",
        "first tool fails, falls back",
        rating=4,
        falls_back=True,
    ),
    Goal("write a poem about apples", "generative, offline"),
)


def demo_docs() -> Path:
    """The folder of the shipped demo documents."""
    return Path(str(resources.files("dendrite") / "demo_docs"))


def register_orchard_tools(registry: ToolRegistry, docs: DocumentStore) -> None:
    """The orchard's own tools: a sensor behind a gateway, and the log it also writes to."""

    def cold_room_sensor(room: str) -> dict[str, float | str]:
        """Read the live temperature and humidity sensor of a cold room.

        Args:
            room: the cold room, e.g. "B"
        """
        raise ConnectionError(f"sensor gateway unreachable (room {room}); is it down?")

    def cold_room_log(room: str) -> dict[str, str]:
        """Read the latest line of the cold room log for a room (written every 5 minutes)."""
        hits = docs.search_documents(f"room {room} log reading degrees", top_k=1)
        source = hits[0]["document"] if hits else "storage.md"
        return {
            "room": room,
            "reading": "2.4 degrees Celsius, 93 percent relative humidity",
            "source": f"cold room log (procedure in {source})",
        }

    registry.register_function(
        cold_room_sensor,
        reliability=Reliability.HIGH,
        alternatives=["cold_room_log"],
        tags=("sensor", "storage"),
    )
    registry.register_function(cold_room_log, reliability=Reliability.MEDIUM, tags=("storage",))


def run_demo(console: Console, store: ExecutionStore) -> None:
    """Run the scripted session into ``store``, which the caller opened and closes (the
    CLI opens it as every command does, so a store that cannot be used is reported alike)."""
    docs = DocumentStore(demo_docs())
    registry = ToolRegistry()
    register_builtin(registry, docs_root=docs, files_root=demo_docs())
    register_orchard_tools(registry, docs)
    config = OrchestratorConfig(retry=RetryPolicy(max_attempts=2, backoff=0.05))
    before = store.get_success_rate().total
    console.print(
        f"[bold]Dendrite demo[/bold]: {len(docs.documents)} documents from the orchard "
        f"handbook, {len(registry)} tools, recording into {store.url}"
    )
    results: list[tuple[Goal, ExecutionResult | None]] = []
    with Orchestrator(registry, store=store, config=config) as orch:
        for goal in GOALS:
            results.append((goal, _run_goal(console, orch, goal)))
        console.rule("feedback and learning jobs", style="cyan")
        for goal, result in results:
            if result is not None and goal.rating:
                effect = orch.feedback(
                    result.execution_id,
                    goal.rating,
                    accepted=result.success,
                    comment="demo rating",
                )
                console.print(
                    f"  rated {goal.rating}/5 {goal.text!r}: reward {effect.reward:.2f} "
                    f"for {', '.join(dict.fromkeys(effect.tools)) or 'no tool'}",
                    highlight=False,
                )
        for name in ("statistics", "low_performers", "quality"):
            run = run_job(name, JobContext(store, orch))
            console.print(f"  job {name}: {_job_summary(run.report)}", highlight=False)
    store.flush()
    _report(console, store, results, before)


def _job_summary(report: dict[str, object]) -> str:
    if "low_performers" in report:
        found = report["low_performers"]
        return f"{report['checked']} tools checked, low performers: {found or 'none'}"
    if "policies" in report:
        policies = report["policies"]
        return "; ".join(str(p["reason"]) for p in policies) if policies else "no policies"  # type: ignore[index, union-attr]
    return ", ".join(f"{k} {v}" for k, v in report.items())


def _run_goal(console: Console, orch: Orchestrator, goal: Goal) -> ExecutionResult | None:
    try:
        result = orch.process(goal.text)
    except PlanningError as error:
        console.rule(escape(f"{goal.kind}: {goal.text}"), style="cyan")
        console.print(f"[yellow]not planned[/yellow] (recorded): {error}", highlight=False)
        return None
    console.rule(escape(f"{_kind(goal, result)}: {goal.text}"), style="cyan")
    for step in result.steps:
        tool = tool_label(step.tool, step.fallback_used, (a.fallback_of for a in step.attempts))
        tries = f", {len(step.attempts)} attempts" if len(step.attempts) > 1 else ""
        console.print(
            f"  {step.status.value:>9} {step.step_id}: {tool}{tries}",
            highlight=False,
            markup=False,
        )
        if goal.falls_back and step.step_id in result.why:  # what memory or ranking chose
            console.print(f"    picked {result.why[step.step_id]}", highlight=False, markup=False)
    console.print(f"  [bold]answer[/bold] {_brief(result.output)}", highlight=False)
    console.print(
        f"  confidence {result.confidence:.2f}, planner {result.plan.planner}, "
        f"{result.duration_ms:.0f} ms",
        highlight=False,
    )
    return result


def _kind(goal: Goal, result: ExecutionResult) -> str:
    """The goal's heading, true to what this run did: the sensor goal falls back on a
    fresh store, and from then on plan memory holds the plan that answered (the log's)
    and plans it directly, so no fallback happens to show."""
    if not goal.falls_back or any(step.fallback_used for step in result.steps):
        return goal.kind
    tools = ", ".join(step.tool for step in result.steps)
    return f"{tools} planned directly by the {result.plan.planner} planner, no fallback"


def _brief(output: object, limit: int = 240) -> str:
    """A one-line rendering of an answer for the console."""
    if isinstance(output, list) and output and isinstance(output[0], dict):
        first = output[0]
        text = first.get("snippet") or first.get("text") or str(first)
        output = f"{len(output)} hit(s); best in {first.get('document', '?')}: {text}"
    elif isinstance(output, dict):
        output = ", ".join(f"{k}={v}" for k, v in output.items() if v not in (None, [], ""))
    text = re.sub(r"\s+", " ", str(output)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _report(
    console: Console,
    store: ExecutionStore,
    results: list[tuple[Goal, ExecutionResult | None]],
    before: int,
) -> None:
    total = store.get_success_rate().total
    console.rule("what the store now holds", style="green")
    earlier = f" ({before} from earlier runs)" if before else ""
    console.print(f"the store now holds {total} executions{earlier}", highlight=False)

    recent = Table(title="Recent executions")
    for column in ("goal", "intent / type", "status", "ms", "confidence", "goal text"):
        recent.add_column(column, overflow="fold")
    for record in store.get_recent_executions(len(GOALS)):
        recent.add_row(
            record.goal_id or "",
            f"{record.intent} / {record.query_type}",
            str(record.status),
            f"{record.duration_ms:.0f}",
            "" if record.confidence_score is None else f"{record.confidence_score:.2f}",
            record.goal_text,
        )
    console.print(recent)

    tools = Table(title="Tool performance (all runs)")
    for column in ("tool", "calls", "success rate", "avg ms", "p95 ms"):
        tools.add_column(column)
    for stat in sorted(store.get_tool_performance(), key=lambda s: -s.total_executions):
        tools.add_row(
            stat.tool_name,
            str(stat.total_executions),
            f"{stat.success_rate:.0%}",
            f"{stat.avg_duration_ms:.1f}",
            f"{stat.p95_duration_ms:.1f}",
        )
    console.print(tools)

    intents = Table(title="Success rate by intent (all runs)")
    for column in ("intent", "executions", "succeeded", "rate"):
        intents.add_column(column)
    for intent in ("tool_use", "generative", "unknown"):
        rate = store.get_success_rate(intent=intent)
        if rate.total:
            intents.add_row(
                intent, str(rate.total), str(rate.successful), f"{rate.success_rate:.0%}"
            )
    console.print(intents)

    traced = _traced(results)
    if traced is not None:
        _print_trace(console, store, traced.execution_id)


def _traced(results: list[tuple[Goal, ExecutionResult | None]]) -> ExecutionResult | None:
    """The run whose trace is printed: the first that fell back, else the goal meant to
    (from the second run on, plan memory spares it the fallback; its trace shows that)."""
    ran = [(goal, result) for goal, result in results if result is not None]
    fell_back = (r for _, r in ran if any(step.fallback_used for step in r.steps))
    meant = (r for goal, r in ran if goal.falls_back)
    return next(fell_back, None) or next(meant, None)


def _print_trace(console: Console, store: ExecutionStore, execution_id: str) -> None:
    found = load_trace(store, execution_id)
    if found is None:
        return
    tree = Tree(f"Trace of {found.goal!r} ({found.status}, confidence {found.confidence:.2f})")
    for step in found.steps:
        attempts = step["attempts"]
        tool = tool_label(step["tool"], step["fallback_used"], (a["fallback_of"] for a in attempts))
        branch = tree.add(escape(f"{step['step_id']}: {tool} [{step['status']}]"))
        if step["step_id"] in found.why:
            branch.add(escape(f"picked {found.why[step['step_id']]}"))
        for attempt in attempts:
            outcome = "ok" if attempt["success"] else f"{attempt['error_type']}: {attempt['error']}"
            via = f" instead of {attempt['fallback_of']}" if attempt["fallback_of"] else ""
            branch.add(escape(f"attempt {attempt['number']} {attempt['tool']}{via}: {outcome}"))
    console.print(tree, highlight=False)
