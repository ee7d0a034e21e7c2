"""The ``dendrite`` command line.

Exit codes: 0 success, 1 the operation found a problem (e.g. ``db validate``
found differences) or could not be done (a database that cannot be reached, a
server that cannot start), 2 a usage or input error, reported in one line.
"""

from __future__ import annotations

import asyncio
import json
import re
import tempfile
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
from alembic.util import CommandError
from rich.console import Console
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, NoSuchTableError
from typer.core import TyperGroup

from dendrite._ids import canonical_id
from dendrite.config import MAX_REPORT_DAYS, database_url
from dendrite.planning import PLANNERS
from dendrite.store import StoreError, StoreUnavailableError, migrate
from dendrite.store.engine import make_engine, parse_url
from dendrite.store.errors import driver_message
from dendrite.store.writer import is_connection_error
from dendrite.telemetry.records import INT32, as_utc


class _Commands(TyperGroup):
    """Every command under one boundary: a database that cannot be used (not a database,
    unreachable, refusing a read) is one line and an exit code, not a traceback, in
    whichever command met it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StoreUnavailableError as error:
            raise _fail(str(error), 1) from None
        except StoreError as error:
            raise _fail(str(error)) from None
        except DBAPIError as error:
            raise _fail(f"the database refused it: {driver_message(error)}", 1) from None


app = typer.Typer(
    cls=_Commands,
    help="Dendrite: an orchestrator for tools and agents that learns from its execution history.",
    no_args_is_help=True,
    add_completion=False,
)
db_app = typer.Typer(help="Manage the execution-history database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

console = Console()
err = Console(stderr=True)

UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        help="Database URL (default: $DENDRITE_DATABASE_URL, else the SQLite file in the data "
        "directory).",
    ),
]


T = TypeVar("T")


def _fail(message: str, code: int = 2) -> typer.Exit:
    # "[x]" is the user's; one line, as long as it is: a path Rich broke at a space could
    # not be copied back whole.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _opened(open_: Callable[[str], T], url: str | None) -> T:
    """``open_`` called with the database URL (``url``, else the default): the one place
    every command opens its database, so that a URL it cannot use, or a data directory
    or SQLite folder that cannot be made (a file in the way, no permission), is one line
    and exit 2 in each of them, not a traceback."""
    try:
        return open_(database_url(url))
    except (ValueError, StoreError) as error:
        raise _fail(str(error)) from None
    except OSError as error:  # config.data_dir() and the store make their folders
        where = f" {error.filename}" if error.filename else ""
        reason = error.strerror or str(error)
        if isinstance(error, FileExistsError):  # mkdir's word for "a file is in the way"
            reason += ", and is not a folder"
        raise _fail(f"cannot use{where} for the database: {reason}") from None


def tool_label(tool: str, fallback_used: str | None, fallback_of: Iterable[str | None]) -> str:
    """A step's tool as ``run``, ``trace`` and the demo print it. Once a fallback answered,
    the step's ``tool`` is the fallback's, which alone reads as if it had been planned:
    then the planned tool (what the fallback's attempts stood in for) and the answering
    one. ``fallback_of`` is each attempt's; records older than that field fall back to
    ``tool``."""
    if not fallback_used:
        return tool
    planned = next((name for name in fallback_of if name), tool)
    return f"{planned} → answered by fallback {fallback_used}"


def _engine(url: str | None, *, existing: bool = False) -> Engine:
    """The database's engine; with ``existing``, a SQLite file that is not there is an
    error (a command that only reads would otherwise create it, and its folders)."""

    def open_(url: str) -> Engine:
        parsed = parse_url(url)
        if existing and parsed.get_backend_name() == "sqlite" and parsed.database:
            path = Path(parsed.database).expanduser()
            if not path.exists():
                raise _fail(f"no SQLite database at {path}")
        return make_engine(url)

    return _opened(open_, url)


def _run_db(action: Callable[..., Any], engine: Engine, *args: Any) -> Any:
    """Run a schema action, turning the errors a user can cause into one-line messages."""
    try:
        return action(engine, *args)
    except (StoreError, CommandError) as error:
        raise _fail(str(error)) from None
    except NoSuchTableError as error:  # a migration that rebuilds a table reads it first
        raise _fail(
            f"table {error} is missing, which the schema's revision has: "
            "`dendrite db validate` names every difference",
            1,
        ) from None
    except DBAPIError as error:
        message = driver_message(error)
        if is_connection_error(error) and not _answers(engine):
            raise _fail(f"cannot reach the database: {message}", 1) from None
        # SQLite reports a missing table as an OperationalError too: only a database
        # that does not answer is unreachable.
        raise _fail(f"the database refused it: {message}", 1) from None


def _answers(engine: Engine) -> bool:
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except DBAPIError:
        return False
    return True


@db_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
) -> None:
    """Upgrade the schema to REVISION (default: the newest)."""
    engine = _engine(url)
    _run_db(migrate.upgrade, engine, revision)
    console.print(f"schema at {migrate.current_revision(engine) or 'base (empty)'}")


# "-1" is a revision, not an option: Click would refuse it as "No such option: -1".
@db_app.command(context_settings={"ignore_unknown_options": True})
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, or -1 for one step.")] = "-1",
    url: UrlOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm that what later revisions keep is deleted.")
    ] = False,
) -> None:
    """Downgrade the schema to REVISION (default: one step back). Deletes the tables and
    columns the later revisions added, with what they hold."""
    if not yes:
        raise _fail(
            "downgrade deletes the tables and columns later revisions added, with what they "
            "hold (below 0002: the statistics of pruned history, for good); run again with "
            "--yes to confirm"
        )
    engine = _engine(url)
    _run_db(migrate.downgrade, engine, revision)
    console.print(f"schema at {migrate.current_revision(engine) or 'base (empty)'}")


@db_app.command()
def current(url: UrlOption = None) -> None:
    """Print the schema revision of the database and the one this version needs."""
    revision = _run_db(migrate.current_revision, _engine(url, existing=True))
    console.print(f"database: {revision or 'none'}  code: {migrate.head_revision()}")


@db_app.command()
def validate(url: UrlOption = None) -> None:
    """Compare the live schema with the code's; exit 1 naming each difference."""
    problems = _run_db(migrate.validate, _engine(url, existing=True))
    if problems:
        for problem in problems:
            console.print(f"[red]✗[/red] {problem}", highlight=False)
        raise typer.Exit(1)
    console.print("[green]✓[/green] schema matches the code", highlight=False)


@db_app.command()
def reset(
    url: UrlOption = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm that all history is deleted.")
    ] = False,
) -> None:
    """Drop every Dendrite table and recreate the schema. Deletes all history."""
    if not yes:
        raise _fail("reset deletes all recorded history; run again with --yes to confirm")
    engine = _engine(url)
    _run_db(migrate.reset, engine)
    console.print(f"schema reset to {migrate.current_revision(engine)}")


@app.command()
def demo(url: UrlOption = None) -> None:
    """Run a scripted session of real goals on the shipped documents and show what was recorded."""
    from dendrite.demo import run_demo
    from dendrite.llm import LLMConfig

    try:
        LLMConfig.from_env()  # a bad model setting is named before anything is opened
    except ValueError as error:
        raise _fail(str(error)) from None
    with _store(url) as store:  # as every command opens it: the same lines, the same exit codes
        run_demo(console, store)


@app.command()
def run(
    goal: Annotated[str, typer.Argument(help="What you want done, in plain words.")],
    docs: Annotated[
        Path | None,
        typer.Option(
            "--docs",
            help="A folder of .txt/.md/.html/.pdf files to search, summarise and compare; "
            "file tools may read inside it.",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Session id.")] = None,
    planner: Annotated[
        str, typer.Option("--planner", help=f"One of: {', '.join(PLANNERS)}.")
    ] = "dendrite",
    strategy: Annotated[
        str, typer.Option("--strategy", help="simple, parallel, adaptive or comprehensive.")
    ] = "adaptive",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Plan GOAL, run it with the built-in tools, record it, and print the answer."""
    from dendrite.orchestrator import Orchestrator
    from dendrite.planning import PlanningError, PlanValidationError
    from dendrite.tools import ToolRegistry
    from dendrite.tools.builtin import register_builtin

    registry = ToolRegistry()
    register_builtin(registry, docs_root=docs, files_root=docs or Path.cwd())
    try:
        _check_planner(planner, strategy)
    except ValueError as error:
        raise _fail(str(error)) from None
    with _store(url) as store, Orchestrator(registry, store=store) as orch:
        # Any planner asked for is wired to the learning loop, as the default one is.
        orch.planner = orch.make_planner(planner, strategy if planner == "dendrite" else None)
        try:
            if as_json:
                result = orch.process(goal, session_id=session)
            else:
                result = asyncio.run(_run_live(orch, goal, session))
        except (PlanningError, PlanValidationError) as error:
            if as_json:  # stdout stays JSON
                console.print_json(
                    json.dumps({"error": str(error), "execution_id": error.execution_id})
                )
                raise typer.Exit(1) from None
            if error.execution_id is not None:  # recorded: say where, for trace and feedback
                console.print(f"recorded as execution {error.execution_id}", highlight=False)
            raise _fail(str(error), 1) from None
        except (ValueError, TypeError) as error:  # an input the run refuses: a session too long
            raise _fail(str(error)) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
    else:
        _print_result(result)
    raise typer.Exit(0 if result.success else 1)


async def _run_live(orch: Any, goal: str, session: str | None) -> Any:
    """Run through the event stream, printing each step as it starts, retries, falls back, ends."""
    from dendrite.execution import EventType

    execution_id = None
    async for event in orch.stream(goal, session_id=session):
        execution_id = event.execution_id
        data = event.data
        match event.type:
            case EventType.PLAN_CREATED:
                steps = data["plan"]["steps"]
                console.print(
                    f"plan ({data['plan']['planner']}): "
                    + ", ".join(f"{s['id']}→{s['tool']}" for s in steps),
                    highlight=False,
                    markup=False,
                )
            case EventType.STEP_STARTED:
                console.print(f"  … {event.step_id}: {data['tool']}", highlight=False, markup=False)
            case EventType.STEP_RETRY:
                console.print(
                    f"  ↻ {event.step_id}: retry {data['attempt']} in {data['delay_s']:.2f}s "
                    f"({data['error']})",
                    style="yellow",
                    highlight=False,
                    markup=False,
                )
            case EventType.FALLBACK_USED:
                console.print(
                    f"  ⇢ {event.step_id}: falling back to {data['tool']}",
                    style="yellow",
                    highlight=False,
                    markup=False,
                )
            case EventType.REPLANNED:
                console.print(
                    f"  ⟲ replanned after {event.step_id} failed", style="yellow", markup=False
                )
    result = orch.get_result(execution_id) if execution_id else None
    if result is None:
        raise RuntimeError("the run ended without a result")
    return result


def _check_planner(name: str, strategy: str) -> None:
    """Refuse an unknown planner or strategy, or a bad model setting, before anything is opened."""
    from dendrite.llm import LLMConfig
    from dendrite.planning import Strategy

    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")
    try:
        Strategy(strategy)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {choices}") from None
    if LLMConfig.from_env() is None and name == "llm":
        raise ValueError("--planner llm needs DENDRITE_LLM_BASE_URL and DENDRITE_LLM_MODEL")


def _print_result(result: Any) -> None:
    from rich.panel import Panel
    from rich.pretty import Pretty
    from rich.text import Text

    for step in result.steps:
        mark = {"succeeded": "[green]✓[/green]", "skipped": "[yellow]-[/yellow]"}.get(
            step.status.value, "[red]✗[/red]"
        )
        tool = tool_label(step.tool, step.fallback_used, (a.fallback_of for a in step.attempts))
        retries = (
            f", {step.retries} retr{'y' if step.retries == 1 else 'ies'}" if step.retries else ""
        )
        console.print(
            f"{mark} {escape(f'{step.step_id}: {tool}')} {step.duration_ms:.0f} ms{retries}",
            highlight=False,
        )
        if step.error:  # the tool's words, "[x]" and all: never markup
            console.print(f"    {step.error}", style="red", highlight=False, markup=False)
    body = Text(result.output) if isinstance(result.output, str) else Pretty(result.output)
    title = "answer" if result.success else "failed"
    if result.output is not None or result.success:
        console.print(Panel(body, title=title, expand=False))
    if result.error:
        console.print(result.error, style="red", highlight=False, markup=False)
    routed = f"routed to {result.route} · " if result.route else ""
    console.print(
        f"confidence {result.confidence:.2f} · planner {result.plan.planner} · {routed}"
        f"execution {result.execution_id}",
        highlight=False,
        markup=False,
    )


def _store(url: str | None) -> Any:
    from dendrite.store import ExecutionStore

    return _opened(ExecutionStore, url)


def _since(value: str | None) -> Any:
    """An ISO date/time, or a span back from now: 30m, 12h, 7d."""
    if value is None:
        return None
    spans = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if re.fullmatch(r"[0-9]+[mhdw]", value):
        try:
            return datetime.now(UTC) - timedelta(**{spans[value[-1]]: int(value[:-1])})
        except OverflowError:
            raise _fail(f"--since {value!r} reaches back before the year 1") from None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _fail(
            f"--since {value!r}: give an ISO date/time or a span like 30m, 12h, 7d"
        ) from None
    try:  # here, not in the store's query: 9999-12-31T23:00-05:00 is the year 10000 in UTC
        return as_utc(parsed)
    except ValueError as error:
        raise _fail(f"--since {value!r}: {error}") from None


def _dump(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


@app.command()
def history(
    limit: Annotated[int, typer.Option(help="How many executions.", min=1, max=10_000)] = 20,
    intent: Annotated[str | None, typer.Option(help="Only this intent.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Only failed executions.")] = False,
    since: Annotated[str | None, typer.Option(help="ISO time or span (30m, 12h, 7d).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """The most recent executions, newest first."""
    from rich.table import Table
    from rich.text import Text

    with _store(url) as store:
        records = store.get_recent_executions(
            limit, intent=intent, success=False if failed else None, since=_since(since)
        )
    if as_json:
        _dump([r.model_dump(mode="json", exclude={"metadata"}) for r in records])
        return
    table = Table(title=f"{len(records)} execution(s)")
    # Tier, tokens and cost only when some run has them: most stores never route a run.
    routed = any(r.model_tier for r in records)
    spent = any(r.tokens_used is not None or r.actual_cost is not None for r in records)
    judged = any(r.user_rating is not None or r.user_accepted is not None for r in records)
    columns = ["goal", "started (UTC)", "intent / type", "status", "ms", "conf."]
    columns += ["tier"] * routed + ["tokens", "cost"] * spent + ["rating"] * judged
    columns += ["goal text"]
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in records:
        row = [
            r.goal_id or "",
            r.started_at.strftime("%Y-%m-%d %H:%M:%S") if r.started_at else "",
            f"{r.intent or '-'} / {r.query_type or '-'}",
            str(r.status),
            f"{r.duration_ms:.0f}",
            "" if r.confidence_score is None else f"{r.confidence_score:.2f}",
        ]
        if routed:
            row.append(r.model_tier or "")
        if spent:
            row.append("" if r.tokens_used is None else f"{r.tokens_used:,}")
            row.append("" if r.actual_cost is None else f"{r.actual_cost:g}")
        if judged:  # what `dendrite feedback` recorded: history is where one looks for it
            row.append(_judgement(r.user_rating, r.user_accepted))
        table.add_row(*(Text(cell) for cell in [*row, r.goal_text[:80]]))  # text, not markup
    console.print(table)


def _judgement(rating: int | None, accepted: bool | None) -> str:
    """A rating and an acceptance as one cell or line: "4/5, accepted"."""
    parts = [] if rating is None else [f"{rating}/5"]
    if accepted is not None:
        parts.append("accepted" if accepted else "rejected")
    return ", ".join(parts)


def _usage_line(usage: dict[str, Any]) -> str:
    calls = usage.get("calls", 0)
    line = f"model: {calls} call{'s' if calls != 1 else ''}"
    prompt, completion = usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)
    if prompt or completion:
        line += f", {prompt + completion:,} tokens ({prompt:,} prompt, {completion:,} completion)"
    if usage.get("unreported"):
        line += f", {usage['unreported']} without reported usage"
    if usage.get("cost") is not None:
        line += f", cost {usage['cost']:g}"
    return line


@app.command()
def trace(
    execution_id: Annotated[
        str, typer.Argument(help="The execution's id, or its goal id (goal_N, as history shows).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Every step of one execution: attempts, errors, fallbacks, timing and confidence."""
    from rich.text import Text
    from rich.tree import Tree

    from dendrite.orchestrator import load_trace

    execution_id = _check_execution_ref(execution_id)
    with _store(url) as store:
        execution_id = _execution_id(store, execution_id)
        found = load_trace(store, execution_id)
        detail = store.get_execution(execution_id) if found is not None else None
    if found is None:
        raise _fail(f"no execution {execution_id}", 1)
    if as_json:
        _dump(found.to_dict())
        return
    status = "[green]succeeded[/green]" if found.success else f"[red]{found.status}[/red]"
    confidence = "" if found.confidence is None else f", confidence {found.confidence:.2f}"
    root = Tree(
        f"{escape(repr(found.goal))}: {status} in {found.duration_ms:.0f} ms{confidence}, "
        f"planner {escape(str(found.planner))}"
    )
    # Below the root, every line is the record's text (goals, errors, conditions): never markup.
    if found.error:
        root.add(Text(f"error: {found.error}", style="red"))
    if found.llm_usage:
        root.add(Text(_usage_line(found.llm_usage)))
    for judged in detail.feedback if detail is not None else ():  # `dendrite feedback`'s
        line = _judgement(judged.rating, judged.accepted)
        if judged.feedback_text:
            line += f"{', ' if line else ''}{judged.feedback_text!r}"
        root.add(Text(f"feedback ({judged.source}): {line}"))
    step_ids = {step["step_id"] for step in found.steps}
    for component, reason in found.why.items():
        if component not in step_ids:  # run-level choices: route, experiment arm, policy
            root.add(Text(f"{component}: {reason}"))
    for step in found.steps:
        mark = {"succeeded": "✓", "skipped": "-", "cancelled": "⊘"}.get(step.get("status", ""), "✗")
        tool = tool_label(
            str(step.get("tool")),
            step.get("fallback_used"),
            (attempt.get("fallback_of") for attempt in step.get("attempts", [])),
        )
        label = f"{mark} {step['step_id']}: {tool} ({step.get('status')})"
        if step.get("duration_ms"):
            label += f" {step['duration_ms']:.1f} ms"
        if step.get("skip_reason"):
            label += f" ({step['skip_reason']})"
        branch = root.add(Text(label))
        if step["step_id"] in found.why:
            branch.add(Text(f"picked {found.why[step['step_id']]}"))
        for why in step.get("not_tried") or []:
            branch.add(Text(f"not tried: {why}"))
        for attempt in step.get("attempts", []):
            outcome = "ok" if attempt["success"] else f"{attempt['error_type']}: {attempt['error']}"
            via = f" instead of {attempt['fallback_of']}" if attempt.get("fallback_of") else ""
            branch.add(
                Text(
                    f"attempt {attempt['number']} {attempt['tool']}{via}: {outcome} "
                    f"({attempt['duration_ms']:.1f} ms)"
                )
            )
    for note in found.replans:
        root.add(Text(f"replanned after {note['step']} failed: new tools {note.get('new_tools')}"))
    console.print(root, highlight=False)


@app.command()
def stats(
    kind: Annotated[
        str, typer.Argument(help="tools, tiers, pools, intents, routing or experiments.")
    ] = "tools",
    days: Annotated[
        int, typer.Option(help="Days of tier or routing history.", min=1, max=MAX_REPORT_DAYS)
    ] = 7,
    experiment: Annotated[
        str | None, typer.Option(help="Only this experiment (with 'experiments').")
    ] = None,
    alpha: Annotated[
        float, typer.Option(help="Significance level (with 'experiments').", min=0.0, max=1.0)
    ] = 0.05,
    control: Annotated[
        str | None,
        typer.Option(help="The arm the others are compared with (default: the most runs)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Performance from the recorded history, how well the routers predicted, and A/B reports."""
    from rich.table import Table

    from dendrite.learning import routing_accuracy

    kinds = ("tools", "tiers", "pools", "intents", "routing", "experiments")
    if kind not in kinds:
        raise _fail(f"unknown stats {kind!r}; choose one of {', '.join(kinds)}")
    if kind == "experiments":
        _experiments(experiment, alpha, control, as_json, url)
        return
    with _store(url) as store:
        if kind == "tools":
            rows = [r.model_dump(mode="json") for r in store.get_tool_performance()]
        elif kind == "tiers":
            rows = [r.model_dump(mode="json") for r in store.get_tier_performance(days)]
        elif kind == "pools":
            rows = [r.model_dump(mode="json") for r in store.get_pool_performance()]
        elif kind == "routing":
            since = datetime.now(UTC) - timedelta(days=days)
            rows = [r.model_dump(mode="json") for r in routing_accuracy(store, since=since)]
        else:
            rows = [
                {"intent": intent, **store.get_success_rate(intent=intent).model_dump()}
                for intent in ("tool_use", "generative", "unknown")
            ]
            rows.append({"intent": "all", **store.get_success_rate().model_dump()})
    if as_json:
        _dump(rows)
        return
    if not rows:
        console.print(f"no {kind} recorded yet")
        return
    table = Table(title=f"{kind}")
    for column in rows[0]:
        table.add_column(column, overflow="fold")  # wrapped, not cut, on a narrow terminal
    for row in rows:
        table.add_row(*(_cell(v) for v in row.values()))
    console.print(table)


def _experiments(
    name: str | None, alpha: float, control: str | None, as_json: bool, url: str | None
) -> None:
    from rich.table import Table

    from dendrite.learning.experiments import report

    if not 0 < alpha < 1:
        raise _fail(f"--alpha must be between 0 and 1, got {alpha}")
    with _store(url) as store:
        try:
            reports = report(store, name, alpha=alpha, control=control)
        except ValueError as error:  # a control arm the experiment does not have
            raise _fail(str(error)) from None
    if name is not None and not reports:
        raise _fail(f"no experiment {name!r} recorded")
    if as_json:
        _dump([r.to_dict() for r in reports])
        return
    if not reports:
        console.print(f"no experiment {name!r} recorded" if name else "no experiments recorded")
        return
    for found in reports:
        table = Table(title=f"experiment {found.experiment} (control: {found.control})")
        for column in (
            "arm",
            "runs",
            "success",
            "95% interval",
            "p (success)",
            "test",
            "mean ms",
            "p (duration)",
            "rating",
        ):
            table.add_column(column, overflow="fold")  # wrapped, not cut, on a narrow terminal
        for arm in found.arms:
            low_high = arm.success_interval
            table.add_row(
                arm.arm,
                str(arm.executions),
                f"{arm.success_rate:.1%}" if arm.success_rate is not None else "",
                f"{low_high[0]:.1%}-{low_high[1]:.1%}" if low_high else "",
                f"{arm.p_success:.3g}" if arm.p_success is not None else "",
                arm.success_test or "",
                _cell(arm.mean_duration_ms),
                f"{arm.p_duration:.3g}" if arm.p_duration is not None else "",
                f"{arm.mean_rating:.2f} ({arm.rated})" if arm.mean_rating is not None else "",
            )
        console.print(table)
        console.print(found.verdict, highlight=False)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    return "" if value is None else str(value)


tools_app = typer.Typer(
    help="The built-in tools and their states; enable and disable also take any tool whose "
    "state the store keeps (an application's tool the lifecycle job archived).",
    no_args_is_help=True,
)
app.add_typer(tools_app, name="tools")


def _tools_orchestrator(url: str | None) -> Any:
    from dendrite.orchestrator import Orchestrator
    from dendrite.tools import ToolRegistry
    from dendrite.tools.builtin import register_builtin

    registry = ToolRegistry()
    # The document tools as well, over no documents (loaded here, so the folder can go):
    # `run --docs` and `serve --docs` use them, so their states are these commands' too.
    with tempfile.TemporaryDirectory() as no_documents:
        register_builtin(registry, docs_root=no_documents, files_root=Path.cwd())
    return Orchestrator(registry, store=_store(url), llm=None)


@tools_app.command("list")
def tools_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Every tool with its state."""
    from rich.table import Table

    with _tools_orchestrator(url) as orch:
        described = orch.registry.describe(include_unavailable=True)
        orch.store.close()
    if as_json:
        _dump(described)
        return
    table = Table(title=f"{len(described)} tools")
    for column in ("name", "status", "reliability", "description"):
        table.add_column(column, overflow="fold")
    for tool in described:
        table.add_row(tool["name"], tool["status"], tool["reliability"], tool["description"])
    console.print(table)


@tools_app.command("show")
def tools_show(name: str, url: UrlOption = None) -> None:
    """One tool's schema and state, as JSON."""
    from dendrite.tools import UnknownToolError

    with _tools_orchestrator(url) as orch:
        try:
            described = orch.registry.get(name).describe()
        except UnknownToolError as error:
            raise _fail(str(error)) from None
        finally:
            orch.store.close()
    _dump(described)


def _set_tool(name: str, status: str, reason: str | None, url: str | None) -> None:
    from dendrite.tools import UnknownToolError

    with _tools_orchestrator(url) as orch:
        try:
            state = orch.set_tool_status(name, status, reason)
        except UnknownToolError as error:
            raise _fail(str(error)) from None
        finally:
            orch.store.close()
    console.print(f"{name}: {state.status.value}", highlight=False)


@tools_app.command("enable")
def tools_enable(name: str, url: UrlOption = None) -> None:
    """Enable a tool (for every later run on this store)."""
    _set_tool(name, "enabled", None, url)


@tools_app.command("disable")
def tools_disable(
    name: str,
    reason: Annotated[str | None, typer.Option(help="Why, for whoever looks later.")] = None,
    url: UrlOption = None,
) -> None:
    """Disable a tool (for every later run on this store)."""
    _set_tool(name, "disabled", reason, url)


jobs_app = typer.Typer(help="The learning jobs: list, run, history.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@jobs_app.command("list")
def jobs_list(url: UrlOption = None) -> None:
    """Every job, its schedule inside `dendrite serve`, and its last run."""
    from rich.table import Table

    from dendrite.learning.jobs import JOBS, describe

    with _store(url) as store:
        last = {name: store.get_job_runs(name, limit=1) for name in JOBS}
    table = Table(title="learning jobs")
    for column in ("job", "every", "last run", "result", "what it does"):
        table.add_column(column, overflow="fold")
    for name, (_, every) in JOBS.items():
        run = last[name][0] if last[name] else None
        table.add_row(
            name,
            str(every),
            f"{run.started_at:%Y-%m-%d %H:%M:%S}" if run else "never",
            ("ok" if run.success else f"failed: {run.error}") if run else "",
            describe(name),
        )
    console.print(table)


@jobs_app.command("run")
def jobs_run(
    name: Annotated[str, typer.Argument(help="A job's name, or 'all'.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Run a job now (recorded like a scheduled run); exits 1 if it failed."""
    from dendrite.learning.jobs import JOBS, JobContext, run_job

    names = list(JOBS) if name == "all" else [name]
    unknown = [n for n in names if n not in JOBS]
    if unknown:
        raise _fail(f"unknown job {unknown[0]!r}; jobs are {', '.join(JOBS)} (or 'all')")
    with _tools_orchestrator(url) as orch:
        try:
            runs = [run_job(n, JobContext(orch.store, orch)) for n in names]
        finally:
            orch.store.close()
    if as_json:
        _dump([r.model_dump(mode="json") for r in runs])
    else:
        for run in runs:
            outcome = "ok" if run.success else f"failed: {run.error}"
            console.print(f"{run.job}: {outcome} in {run.duration_ms:.0f} ms", highlight=False)
            console.print_json(data=run.report)
    if not all(r.success for r in runs):
        raise typer.Exit(1)


@jobs_app.command("history")
def jobs_history(
    name: Annotated[str | None, typer.Argument(help="Only this job.")] = None,
    limit: Annotated[int, typer.Option(help="Most recent runs to show.", min=1, max=INT32)] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    url: UrlOption = None,
) -> None:
    """Recorded runs of the jobs, newest first."""
    from rich.table import Table

    from dendrite.learning.jobs import JOBS

    if name is not None and name not in JOBS:
        raise _fail(f"unknown job {name!r}; jobs are {', '.join(JOBS)}")
    with _store(url) as store:
        runs = store.get_job_runs(name, limit=limit)
    if as_json:
        _dump([r.model_dump(mode="json") for r in runs])
        return
    table = Table(title="job runs")
    for column in ("started", "job", "trigger", "ms", "result"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(
            f"{run.started_at:%Y-%m-%d %H:%M:%S}",
            run.job,
            run.trigger,
            f"{run.duration_ms:.0f}",
            "ok" if run.success else f"failed: {run.error}",
        )
    console.print(table)


@app.command()
def feedback(
    execution_id: Annotated[
        str, typer.Argument(help="The execution's id, or its goal id (goal_N, as history shows).")
    ],
    rating: Annotated[int | None, typer.Option(help="1 (bad) to 5 (excellent).")] = None,
    accepted: Annotated[
        bool | None, typer.Option("--accepted/--rejected", help="Was the answer used?")
    ] = None,
    comment: Annotated[str | None, typer.Option(help="Free text.")] = None,
    url: UrlOption = None,
) -> None:
    """Rate an execution; learning uses it."""
    from dendrite.store import InvalidRecordError, UnknownExecutionError

    if rating is None and accepted is None and not (comment or "").strip():
        raise _fail("give at least one of --rating, --accepted/--rejected or --comment")
    execution_id = _check_execution_ref(execution_id)
    with _store(url) as store:
        execution_id = _execution_id(store, execution_id)
        try:
            store.store_feedback(execution_id, rating, comment, accepted=accepted)
        except UnknownExecutionError as error:  # as trace says it: exit 1, not a usage error
            raise _fail(str(error), 1) from None
        except InvalidRecordError as error:
            raise _fail(str(error)) from None
    console.print(f"feedback recorded for {execution_id}", highlight=False)


def _check_execution_ref(given: str) -> str:
    """The execution id or goal id ``given`` names, in its canonical spelling (a UUID in
    braces or upper case is the same id); refused, before a store is opened, when it is
    neither."""
    if given.startswith("goal_"):
        return given
    try:
        return canonical_id(given)
    except ValueError:
        raise _fail(f"{given!r} is not an execution id (a UUID) or a goal id (goal_N)") from None


def _execution_id(store: Any, given: str) -> str:
    """The execution id ``given`` names: itself, or that of the goal id (``goal_N``)."""
    if not given.startswith("goal_"):
        return given
    found = store.get_recent_executions(1, goal_id=given)
    if not found:
        raise _fail(f"no execution has goal id {given!r}", 1)
    return str(found[0].id)


@app.command()
def export(
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl, csv or parquet.")] = "jsonl",
    limit: Annotated[
        int, typer.Option(help="Most recent executions to export.", min=1, max=INT32)
    ] = 100_000,
    url: UrlOption = None,
) -> None:
    """Export executions (one row each, metadata as JSON text) for analysis elsewhere."""
    if fmt not in ("jsonl", "csv", "parquet"):
        raise _fail(f"unknown format {fmt!r}; choose jsonl, csv or parquet")
    with _store(url) as store:
        rows = [r.model_dump(mode="json") for r in store.get_recent_executions(limit)]
    try:
        _write_export(out, fmt, rows)
    except FileExistsError as error:  # mkdir's word for a file where a folder must be
        raise _fail(f"cannot write {out}: {error.filename} is a file, not a folder", 1) from None
    except OSError as error:  # a folder, a read-only or full disk
        raise _fail(f"cannot write {out}: {error.strerror or error}", 1) from None
    console.print(f"{len(rows)} execution(s) written to {out}", highlight=False)


def _write_export(out: Path, fmt: str, rows: list[dict[str, Any]]) -> None:
    import csv

    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with out.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    else:
        flat = [
            {k: json.dumps(v) if isinstance(v, dict | list) else v for k, v in r.items()}
            for r in rows
        ]
        if fmt == "csv":
            with out.open("w", encoding="utf-8", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=list(flat[0]) if flat else ["id"])
                writer.writeheader()
                writer.writerows(flat)
        else:
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise _fail("parquet export needs pyarrow: pip install pyarrow") from None
            pq.write_table(pa.Table.from_pylist(flat), out)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.", min=1, max=65535)] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            help="Bearer token clients must send (needed off loopback).",
            envvar="DENDRITE_API_TOKEN",
        ),
    ] = None,
    docs: Annotated[
        Path | None,
        typer.Option(
            "--docs",
            help="Documents folder for the document tools.",
            exists=True,
            file_okay=False,
            resolve_path=True,
        ),
    ] = None,
    jobs: Annotated[
        bool, typer.Option("--jobs/--no-jobs", help="Run the learning jobs on their schedule.")
    ] = True,
    url: UrlOption = None,
) -> None:
    """Serve the HTTP API (see docs/api.md) with the built-in tools."""
    from dendrite.api.server import ServerStartError, check_bind
    from dendrite.api.server import serve as serve_api
    from dendrite.llm import LLMConfig
    from dendrite.orchestrator import Orchestrator
    from dendrite.tools import ToolRegistry
    from dendrite.tools.builtin import register_builtin

    try:
        check_bind(host, token)
        LLMConfig.from_env()  # a bad model setting is named before the server starts
    except ValueError as error:
        raise _fail(str(error)) from None
    registry = ToolRegistry()
    register_builtin(registry, docs_root=docs, files_root=docs or Path.cwd())
    with _store(url) as store, Orchestrator(registry, store=store) as orch:
        try:
            serve_api(orch, host=host, port=port, token=token, jobs=jobs)
        except ServerStartError as error:  # the machine refused, as an unreachable database
            raise _fail(str(error), 1) from None
