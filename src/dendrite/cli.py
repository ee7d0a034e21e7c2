"""The ``dendrite`` command line.

Exit codes: 0 success, 1 the operation found a problem (e.g. ``db validate``
found differences), 2 a usage or input error, reported in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from alembic.util import CommandError
from rich.console import Console
from sqlalchemy import Engine

from dendrite.config import database_url
from dendrite.store import StoreError, migrate
from dendrite.store.engine import make_engine
from dendrite.store.writer import is_connection_error

app = typer.Typer(
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


def _fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    return typer.Exit(code)


def _engine(url: str | None) -> Engine:
    try:
        return make_engine(database_url(url))
    except ValueError as error:
        raise _fail(str(error)) from None


def _run_db(action: Callable[..., Any], *args: Any) -> Any:
    """Run a schema action, turning the errors a user can cause into one-line messages."""
    try:
        return action(*args)
    except (StoreError, CommandError) as error:
        raise _fail(str(error)) from None
    except Exception as error:
        if is_connection_error(error):
            raise _fail(f"cannot reach the database: {str(error).splitlines()[0]}", 1) from None
        raise


@db_app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    url: UrlOption = None,
) -> None:
    """Upgrade the schema to REVISION (default: the newest)."""
    engine = _engine(url)
    _run_db(migrate.upgrade, engine, revision)
    console.print(f"schema at {migrate.current_revision(engine)}")


@db_app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision, or -1 for one step.")] = "-1",
    url: UrlOption = None,
) -> None:
    """Downgrade the schema to REVISION (default: one step back)."""
    engine = _engine(url)
    _run_db(migrate.downgrade, engine, revision)
    console.print(f"schema at {migrate.current_revision(engine) or 'base (empty)'}")


@db_app.command()
def current(url: UrlOption = None) -> None:
    """Print the schema revision of the database and the one this version needs."""
    revision = _run_db(migrate.current_revision, _engine(url))
    console.print(f"database: {revision or 'none'}  code: {migrate.head_revision()}")


@db_app.command()
def validate(url: UrlOption = None) -> None:
    """Compare the live schema with the code's; exit 1 naming each difference."""
    problems = _run_db(migrate.validate, _engine(url))
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
def demo(
    url: UrlOption = None,
    goals: Annotated[int, typer.Option(help="How many goals to simulate.", min=1)] = 2000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default: varies).")] = None,
) -> None:
    """Record a realistic simulated workload through the store and print its analytics."""
    from dendrite.demo import run_demo

    try:
        run_demo(console, database_url(url), goals=goals, seed=seed)
    except StoreError as error:
        raise _fail(str(error)) from None


PLANNERS = ("dendrite", "semantic", "template", "llm", "single")


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
    from dendrite.store import ExecutionStore
    from dendrite.tools import ToolRegistry
    from dendrite.tools.builtin import register_builtin

    registry = ToolRegistry()
    register_builtin(registry, docs_root=docs, files_root=docs or Path.cwd())
    try:
        chosen = _planner(planner, strategy)
        store = ExecutionStore(database_url(url))
    except (ValueError, StoreError) as error:
        raise _fail(str(error)) from None
    with store, Orchestrator(registry, store=store, planner=chosen) as orch:
        try:
            result = orch.process(goal, session_id=session)
        except (PlanningError, PlanValidationError) as error:
            raise _fail(str(error), 1) from None
    if as_json:
        console.print_json(json.dumps(result.to_dict(), default=str))
    else:
        _print_result(result)
    raise typer.Exit(0 if result.success else 1)


def _planner(name: str, strategy: str) -> Any:
    from dendrite.llm import ChatLLM
    from dendrite.planning import (
        DendritePlanner,
        LLMPlanner,
        SemanticPlanner,
        SingleToolPlanner,
        Strategy,
        TemplatePlanner,
    )

    if name not in PLANNERS:
        raise ValueError(f"unknown planner {name!r}; choose one of {', '.join(PLANNERS)}")
    try:
        chosen_strategy = Strategy(strategy)
    except ValueError:
        choices = ", ".join(s.value for s in Strategy)
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {choices}") from None
    llm = ChatLLM.from_env()
    if name == "llm":
        if llm is None:
            raise ValueError("--planner llm needs DENDRITE_LLM_BASE_URL and DENDRITE_LLM_MODEL")
        return LLMPlanner(llm)
    return {
        "dendrite": lambda: DendritePlanner(llm=llm, strategy=chosen_strategy),
        "semantic": SemanticPlanner,
        "template": TemplatePlanner,
        "single": SingleToolPlanner,
    }[name]()


def _print_result(result: Any) -> None:
    from rich.panel import Panel
    from rich.pretty import Pretty

    for step in result.steps:
        mark = {"succeeded": "[green]✓[/green]", "skipped": "[yellow]-[/yellow]"}.get(
            step.status.value, "[red]✗[/red]"
        )
        extra = f" (fallback {step.fallback_used})" if step.fallback_used else ""
        retries = (
            f", {step.retries} retr{'y' if step.retries == 1 else 'ies'}" if step.retries else ""
        )
        console.print(
            f"{mark} {step.step_id}: {step.tool}{extra} {step.duration_ms:.0f} ms{retries}",
            highlight=False,
        )
        if step.error:
            console.print(f"    {step.error}", style="red", highlight=False)
    body = result.output if isinstance(result.output, str) else Pretty(result.output)
    title = "answer" if result.success else "failed"
    console.print(Panel(body, title=title, expand=False))
    if result.error:
        console.print(f"[red]{result.error}[/red]", highlight=False)
    console.print(
        f"confidence {result.confidence:.2f} · planner {result.plan.planner} · "
        f"execution {result.execution_id}",
        highlight=False,
    )
