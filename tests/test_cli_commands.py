"""The everyday commands: run, history, trace, stats, tools, feedback, export, serve."""

from __future__ import annotations

import csv
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dendrite.cli import app
from tests.test_cli import _cli

runner = CliRunner()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "home"
    monkeypatch.setenv("DENDRITE_HOME", str(folder))
    monkeypatch.setenv("COLUMNS", "200")
    return folder


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "storage.md").write_text(
        "# Storage\n\nHistory lives in SQLite by default and in PostgreSQL at scale. "
        "Writes never block: a background writer flushes batches.\n"
    )
    (folder / "design.md").write_text(
        "# Design\n\nThe store records every goal. Storage is pluggable; "
        "the journal keeps records while the database is down.\n"
    )
    return folder


def _json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_run_answers_from_documents_and_the_history_commands_see_it(home: Path, docs: Path):
    done = runner.invoke(
        app,
        [
            "run",
            "compare what storage.md and design.md say about storage",
            "--docs",
            str(docs),
            "--json",
        ],
    )
    result = _json(done)
    assert result["success"] and result["planner"] == "template"
    assert result["output"]["first"] == "storage.md"
    calc = _json(runner.invoke(app, ["run", "calculate (2 + 3) * 4", "--json"]))
    assert calc["output"] == 20.0
    history = _json(runner.invoke(app, ["history", "--json"]))
    assert [h["goal_text"] for h in history][:2] == [
        "calculate (2 + 3) * 4",
        "compare what storage.md and design.md say about storage",
    ]
    assert history[0]["query_type"] == "calculation"
    trace = _json(runner.invoke(app, ["trace", result["execution_id"], "--json"]))
    assert [s["step_id"] for s in trace["steps"]] == ["search_first", "search_second", "compare"]
    assert all(s["attempts"] for s in trace["steps"])
    text = runner.invoke(app, ["trace", result["execution_id"]])
    assert text.exit_code == 0 and "compare: compare_documents (succeeded)" in text.output
    # The goal id history shows names the execution as well as its UUID does.
    goal_id = history[1]["goal_id"]
    by_goal = _json(runner.invoke(app, ["trace", goal_id, "--json"]))
    assert by_goal["execution_id"] == result["execution_id"]
    rated = runner.invoke(app, ["feedback", goal_id, "--rating", "4"])
    assert rated.exit_code == 0 and result["execution_id"] in rated.output
    missing = runner.invoke(app, ["trace", "goal_999"])
    assert missing.exit_code == 1 and "no execution has goal id 'goal_999'" in missing.output
    tools = _json(runner.invoke(app, ["stats", "tools", "--json"]))
    assert {t["tool_name"] for t in tools} >= {"search_documents", "compare_documents", "calculate"}
    intents = _json(runner.invoke(app, ["stats", "intents", "--json"]))
    assert intents[-1] == {"intent": "all", "total": 2, "successful": 2, "success_rate": 1.0}
    assert runner.invoke(app, ["history", "--failed", "--since", "1h"]).exit_code == 0


def test_feedback_and_export(home: Path, tmp_path: Path):
    result = _json(runner.invoke(app, ["run", "calculate 6 * 7", "--json"]))
    ok = runner.invoke(app, ["feedback", result["execution_id"], "--rating", "5", "--accepted"])
    assert ok.exit_code == 0 and "feedback recorded" in ok.output
    # history and trace show it, not only export and the API
    assert "5/5, accepted" in runner.invoke(app, ["history"]).output
    traced = runner.invoke(app, ["trace", result["execution_id"]]).output
    assert "feedback (human): 5/5, accepted" in traced
    out = tmp_path / "out" / "history.jsonl"
    assert runner.invoke(app, ["export", "--out", str(out)]).exit_code == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["id"] == result["execution_id"] and row["user_rating"] == 5
    csv_out = tmp_path / "history.csv"
    assert runner.invoke(app, ["export", "--format", "csv", "--out", str(csv_out)]).exit_code == 0
    (record,) = list(csv.DictReader(csv_out.open()))
    assert record["goal_text"] == "calculate 6 * 7" and json.loads(record["metadata"])["plan"]


def test_tool_states_persist_between_processes(home: Path):
    assert runner.invoke(app, ["tools", "disable", "calculate", "--reason", "audit"]).exit_code == 0
    listed = _json(runner.invoke(app, ["tools", "list", "--json"]))
    calculate = next(t for t in listed if t["name"] == "calculate")
    assert (calculate["status"], calculate["status_reason"]) == ("disabled", "audit")
    refused = runner.invoke(app, ["run", "calculate 1 + 1"])
    assert refused.exit_code == 1
    assert runner.invoke(app, ["tools", "enable", "calculate"]).exit_code == 0
    shown = _json(runner.invoke(app, ["tools", "show", "calculate"]))
    assert shown["status"] == "enabled" and shown["parameters"]["required"] == ["expression"]


def test_a_user_tool_the_lifecycle_archived_is_enabled_from_the_cli(home: Path):
    from datetime import UTC, datetime, timedelta

    from dendrite import Orchestrator
    from dendrite.store import ExecutionStore
    from dendrite.tools import ToolRegistry

    old = datetime.now(UTC) - timedelta(days=40)
    with ExecutionStore() as store:  # the application's process, which registers the tool
        run = store.store_execution(goal_text="look up the legacy record", started_at=old)
        store.store_tool_execution(run, "legacy_lookup", {}, "ok", True, 5.0, started_at=old)
    assert runner.invoke(app, ["jobs", "run", "lifecycle"]).exit_code == 0

    def legacy_lookup(key: str) -> str:
        """Look up a record in the legacy system."""
        return key

    def status() -> str:
        registry = ToolRegistry()
        registry.register_function(legacy_lookup)
        with Orchestrator(registry, llm=None) as orch:
            return orch.registry.state("legacy_lookup").status.value

    assert status() == "disabled"
    enabled = runner.invoke(app, ["tools", "enable", "legacy_lookup"])
    assert enabled.exit_code == 0, enabled.output
    assert "legacy_lookup: enabled" in enabled.output
    assert status() == "enabled"
    missing = runner.invoke(app, ["tools", "enable", "legacy_lookpu"])
    assert missing.exit_code != 0 and "did you mean 'legacy_lookup'" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["trace", "not-a-uuid"], "is not an execution id (a UUID) or a goal id (goal_N)"),
        (["feedback", "nope", "--rating", "3"], "is not an execution id (a UUID) or a goal id"),
        (["stats", "moods"], "unknown stats 'moods'"),
        (["tools", "show", "nope"], "unknown tool 'nope'"),
        (["feedback", "01a20a0a-f9f5-7000-bd29-f97ca0ef4df2"], "give at least one of"),
        (["feedback", "01a20a0a-f9f5-7000-bd29-f97ca0ef4df2", "--rating", "9"], "rating"),
        (["export", "--out", "x.bin", "--format", "xml"], "unknown format 'xml'"),
        (["history", "--since", "yesterday-ish"], "--since 'yesterday-ish'"),
        (["run", "calculate 1", "--planner", "magic"], "unknown planner 'magic'"),
        (["run", "calculate 1", "--strategy", "greedy"], "unknown strategy 'greedy'"),
        (["run", "calculate 1", "--planner", "llm"], "needs DENDRITE_LLM_BASE_URL"),
        (["serve", "--host", "0.0.0.0"], "refusing to serve on 0.0.0.0 without a token"),
        (["history", "--url", "notaurl"], "'notaurl' is not a database URL"),
        (["db", "current", "--url", "notaurl"], "'notaurl' is not a database URL"),
        (["history", "--since", "99999999d"], "--since '99999999d' reaches back before"),
        # Times UTC cannot hold, and a digit int() refuses: tracebacks before.
        (["history", "--since", "9999-12-31T23:59:59-05:00"], "outside the years 1 to 9999"),
        (["history", "--since", "0001-01-01T00:00:00+05:00"], "outside the years 1 to 9999"),
        (["history", "--since", "²d"], "--since '²d': give an ISO date/time or a span"),
        # The demo takes --url as every command does: a traceback before.
        (["demo", "--url", "bogus://x"], "unsupported database URL 'bogus://x'"),
        (["stats", "tiers", "--days", "999999"], "3650"),
        (["jobs", "history", "--limit", "99999999999999999999"], "2147483647"),
        # The user's text as given, not read as markup.
        (["jobs", "run", "[red]x[/red]y"], "unknown job '[red]x[/red]y'"),
        # A session the history cannot keep: a traceback before.
        (["run", "calculate 1", "--session", "s" * 200], "session_id is 200 characters long"),
    ],
)
def test_user_mistakes_exit_2_with_one_line(home: Path, args: list[str], message: str):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_a_database_that_cannot_be_used_is_one_line_in_every_command(home: Path, tmp_path: Path):
    """A file that is not a database, a server that is not there, a folder to export to:
    each was a Python traceback in any command but the db ones."""
    text = tmp_path / "notes.db"
    text.write_text("not a database")
    for args in (["history"], ["stats", "tools"], ["jobs", "history"], ["tools", "list"]):
        result = runner.invoke(app, [*args, "--url", f"sqlite:///{text}"])
        assert result.exit_code == 2, result.output
        assert "cannot be used: file is not a database" in result.output
    down = runner.invoke(app, ["history", "--url", "postgresql+psycopg://postgres@127.0.0.1:1/x"])
    assert down.exit_code == 1 and "cannot read from" in down.output
    demo_down = runner.invoke(app, ["demo", "--url", "postgresql+psycopg://postgres@127.0.0.1:1/x"])
    assert demo_down.exit_code == 1 and "cannot read from" in demo_down.output  # was 2
    assert runner.invoke(app, ["run", "calculate 2 + 2"]).exit_code == 0
    to_folder = runner.invoke(app, ["export", "--out", str(tmp_path)])
    assert to_folder.exit_code == 1 and f"cannot write {tmp_path}" in to_folder.output
    (tmp_path / "a-file").write_text("")
    under_a_file = runner.invoke(app, ["export", "--out", str(tmp_path / "a-file" / "x.jsonl")])
    assert under_a_file.exit_code == 1  # said "File exists"
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in under_a_file.output
    for result in (down, demo_down, to_folder, under_a_file):
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [["history"], ["run", "calculate 1 + 1"], ["stats"], ["db", "upgrade"], ["demo"]],
)
def test_a_data_folder_that_cannot_be_made_is_one_line_and_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
):
    """DENDRITE_HOME a file, or a SQLite URL under one: mkdir's FileExistsError was a
    traceback and exit 1 in every command."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    monkeypatch.setenv("DENDRITE_HOME", str(in_the_way))
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    said = result.output
    assert f"error: cannot use {in_the_way} for the database: File exists" in said
    monkeypatch.setenv("DENDRITE_HOME", str(tmp_path / "home"))
    under = runner.invoke(app, [*args, "--url", f"sqlite:///{in_the_way}/sub/x.db"])
    assert under.exit_code == 2, under.output
    said = under.output
    assert f"cannot use {in_the_way}/sub for the database: Not a directory" in said
    assert said.count("\n") == 1  # one line, however long: Rich broke it at a space
    assert isinstance(under.exception, SystemExit)  # no traceback


def test_the_document_tools_can_be_listed_shown_disabled_and_enabled(home: Path, docs: Path):
    """`run --docs` and `serve --docs` use them, yet `tools` could not see them: "unknown
    tool 'search_documents'"."""
    names = {t["name"] for t in _json(runner.invoke(app, ["tools", "list", "--json"]))}
    assert {"search_documents", "summarize_document", "compare_documents", "list_documents"} <= (
        names
    )
    off = runner.invoke(app, ["tools", "disable", "search_documents", "--reason", "audit"])
    assert off.exit_code == 0 and "search_documents: disabled" in off.output
    shown = _json(runner.invoke(app, ["tools", "show", "search_documents"]))
    assert (shown["status"], shown["status_reason"]) == ("disabled", "audit")
    found = runner.invoke(app, ["run", "search the documents for storage", "--docs", str(docs)])
    assert "search_documents" not in found.output  # the state reaches the runs that use it
    assert runner.invoke(app, ["tools", "enable", "search_documents"]).exit_code == 0
    assert _json(runner.invoke(app, ["tools", "show", "search_documents"]))["status"] == "enabled"


def test_a_fallback_names_the_planned_tool_and_the_one_that_answered(
    home: Path, monkeypatch: pytest.MonkeyPatch
):
    """ "step1: cold_room_log, answered by fallback cold_room_log": the tool the plan
    named, the sensor that failed, was nowhere in the line."""
    from dendrite.demo import demo_docs, register_orchard_tools
    from dendrite.tools import Tool, ToolRegistry, builtin

    register_builtin = builtin.register_builtin

    def with_the_orchards_tools(registry: ToolRegistry, **roots: Any) -> list[Tool]:
        tools = register_builtin(registry, **roots)
        register_orchard_tools(registry, builtin.DocumentStore(demo_docs()))
        return tools

    monkeypatch.setattr(builtin, "register_builtin", with_the_orchards_tools)
    ran = runner.invoke(app, ["run", "read the cold room sensor for room B"], terminal_width=200)
    assert ran.exit_code == 0, ran.output
    assert "step1: cold_room_sensor → answered by fallback cold_room_log" in ran.output
    traced = runner.invoke(app, ["trace", "goal_1"], terminal_width=200)
    assert "step1: cold_room_sensor → answered by fallback cold_room_log (succeeded)" in (
        traced.output
    )


def test_serve_on_a_port_in_use_is_one_line_and_exit_1(home: Path):
    """uvicorn's log and its exit code 3, which the CLI does not document, were all."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "--port", str(port), "--no-jobs"])
    assert result.exit_code == 1, result.output
    assert f"error: the server could not start on 127.0.0.1:{port} (Address already in use)" in (
        result.output
    )


def test_an_execution_id_in_any_spelling_names_the_execution(home: Path):
    """A UUID in braces or upper case is the same id: feedback refused it quoting the
    store's pattern, and trace looked for it as given."""
    runner.invoke(app, ["run", "calculate 2 + 2"])
    (run,) = _json(runner.invoke(app, ["history", "--json"]))
    braced = "{" + run["id"].upper() + "}"
    rated = runner.invoke(app, ["feedback", braced, "--rating", "4"])
    assert rated.exit_code == 0 and f"feedback recorded for {run['id']}" in rated.output
    traced = runner.invoke(app, ["trace", braced, "--json"])
    assert _json(traced)["execution_id"] == run["id"]


def test_upgrading_to_an_older_revision_says_to_downgrade(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert runner.invoke(app, ["db", "upgrade", "--url", url]).exit_code == 0
    older = runner.invoke(app, ["db", "upgrade", "0002", "--url", url])
    assert older.exit_code == 2, older.output
    assert "past 0002: `dendrite db downgrade 0002` goes back" in older.output
    current = runner.invoke(app, ["db", "current", "--url", url])
    assert "0002" not in current.output


def test_exit_codes_as_a_subprocess(tmp_path: Path):
    assert _cli("run", "calculate 2 + 2", home=tmp_path).returncode == 0
    unplannable = _cli("run", "bake a sourdough loaf", home=tmp_path)
    assert unplannable.returncode == 1 and "no planner could plan" in unplannable.stderr
    unknown = _cli("trace", "01a20a0a-f9f5-7000-bd29-f97ca0ef4df2", home=tmp_path)
    assert unknown.returncode == 1 and "no execution" in unknown.stderr
    assert _cli("history", "--limit", "0", home=tmp_path).returncode == 2


def test_a_planner_asked_for_on_the_command_line_ranks_by_history(home: Path):
    first = _json(runner.invoke(app, ["run", "calculate 6 * 7", "--json"]))
    assert first["success"]
    again = _json(runner.invoke(app, ["run", "calculate 2 * 3", "--planner", "semantic", "--json"]))
    assert again["planner"] == "semantic" and again["output"] == 6
    trace = runner.invoke(app, ["trace", again["execution_id"]], terminal_width=200)
    assert "picked calculate: expected success" in trace.output  # the ranker's reason


def test_text_with_markup_is_printed_as_stored_by_run_history_and_trace(home: Path):
    """A goal, an answer or an error holding "[/bold]" made Rich raise after the run was
    recorded (exit 1 and a traceback); "[bold]now[/bold]" lost its brackets."""
    goal = "normalize the text 'Hello [/bold] World [bold]now[/bold]'"
    ran = runner.invoke(app, ["run", goal])
    assert ran.exit_code == 0, ran.output
    assert "[/bold] world [bold]now[/bold]" in ran.output.lower()
    history = runner.invoke(app, ["history"])
    assert history.exit_code == 0 and "[/bold]" in history.output
    traced = runner.invoke(app, ["trace", "goal_1"])
    assert traced.exit_code == 0 and "[/bold]" in traced.output


def test_run_json_stays_json_when_planning_fails_and_unknown_runs_exit_1(home: Path):
    failed = runner.invoke(app, ["run", "hello there", "--json"])
    assert failed.exit_code == 1
    body = json.loads(failed.stdout)
    assert body["execution_id"] and body["error"].startswith("no planner could plan")
    unknown = runner.invoke(
        app, ["feedback", "01a20a0a-f9f5-7000-bd29-f97ca0ef4df2", "--rating", "3"]
    )
    assert unknown.exit_code == 1, unknown.output  # as trace: no such run is no usage error
