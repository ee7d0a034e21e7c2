"""The ``dendrite`` command line: db commands and the demo, in process and as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text
from typer.testing import CliRunner

from dendrite.cli import app
from dendrite.store import ExecutionStore, migrate
from dendrite.store.engine import make_engine

runner = CliRunner()


def test_db_commands_round_trip(store_url: str):
    assert runner.invoke(app, ["db", "upgrade", "--url", store_url]).exit_code == 0
    result = runner.invoke(app, ["db", "current", "--url", store_url])
    assert result.exit_code == 0 and "database: 0007  code: 0007" in result.output
    result = runner.invoke(app, ["db", "validate", "--url", store_url])
    assert result.exit_code == 0 and "schema matches the code" in result.output
    result = runner.invoke(app, ["db", "downgrade", "--url", store_url])
    assert result.exit_code == 2 and "--yes to confirm" in result.output
    result = runner.invoke(app, ["db", "downgrade", "--yes", "--url", store_url])
    assert result.exit_code == 0 and "schema at 0006" in result.output
    result = runner.invoke(app, ["db", "validate", "--url", store_url])
    assert result.exit_code == 1
    assert "schema revision is 0006, the code expects 0007" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--url", store_url])
    result = runner.invoke(app, ["db", "downgrade", "-1", "--yes", "--url", store_url])
    assert result.exit_code == 0 and "schema at 0006" in result.output  # was "No such option"
    result = runner.invoke(app, ["db", "downgrade", "0001", "--yes", "--url", store_url])
    assert result.exit_code == 0 and "schema at 0001" in result.output
    result = runner.invoke(app, ["db", "validate", "--url", store_url])
    assert result.exit_code == 1
    assert "schema revision is 0001, the code expects 0007" in result.output
    assert "missing table execution_rollup" in result.output
    result = runner.invoke(app, ["db", "upgrade", "--url", store_url])
    assert result.exit_code == 0 and "schema at 0007" in result.output
    result = runner.invoke(app, ["db", "validate", "--url", store_url])
    assert result.exit_code == 0 and "schema matches the code" in result.output


def test_db_reset_needs_confirmation_and_then_empties_the_store(store_url: str, tmp_path: Path):
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        store.store_execution(goal_text="keep me", success=True, duration_ms=1)
    result = runner.invoke(app, ["db", "reset", "--url", store_url])
    assert result.exit_code == 2 and "--yes" in result.output
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        assert store.get_success_rate().total == 1
    result = runner.invoke(app, ["db", "reset", "--yes", "--url", store_url])
    assert result.exit_code == 0
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        assert store.get_success_rate().total == 0


def test_user_mistakes_get_one_line_and_exit_2(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'x.db'}"
    result = runner.invoke(app, ["db", "upgrade", "--url", "mysql://nobody@localhost/x"])
    assert result.exit_code == 2 and "unsupported database URL" in result.output
    result = runner.invoke(app, ["db", "upgrade", "nonsense", "--url", url])
    assert result.exit_code == 2 and "nonsense" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_database_in_a_state_no_migration_expects_gets_one_line(store_url: str):
    """Tables without a version, and a table dropped by hand: a message naming what to do,
    or what the database refused, not a traceback (nor "cannot reach the database")."""
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE job_runs"))
    result = runner.invoke(app, ["db", "downgrade", "0003", "--yes", "--url", store_url])
    # SQLite's first step down rebuilds job_runs; PostgreSQL's first to touch it drops it
    expected = "table job_runs is missing" if engine.dialect.name == "sqlite" else "refused it"
    assert result.exit_code == 1 and expected in result.output
    assert "job_runs" in result.output and len(result.output.strip().splitlines()) <= 3
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE dendrite_schema_version"))
    result = runner.invoke(app, ["db", "upgrade", "--url", store_url])
    assert result.exit_code == 2 and "no schema version" in result.output
    result = runner.invoke(app, ["db", "reset", "--yes", "--url", store_url])
    assert result.exit_code == 0 and "schema reset to 0007" in result.output
    engine.dispose()


def test_commands_that_only_read_do_not_create_a_sqlite_file(tmp_path: Path):
    missing = tmp_path / "typo" / "histroy.db"
    for command in ("current", "validate"):
        result = runner.invoke(app, ["db", command, "--url", f"sqlite:///{missing}"])
        assert result.exit_code == 2 and "no SQLite database at" in result.output
        assert str(missing) in result.output.replace("\n", "")  # Rich wraps long lines
    assert not (tmp_path / "typo").exists()


def test_an_unreachable_database_exits_1(tmp_path: Path):
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    result = runner.invoke(app, ["db", "current", "--url", url])
    assert result.exit_code == 1 and "cannot reach the database" in result.output


def _cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DENDRITE_HOME": str(home), "COLUMNS": "200"}
    env.pop("DENDRITE_DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "dendrite", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_validate_exit_code_as_a_subprocess(store_url: str, tmp_path: Path):
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    assert _cli("db", "validate", "--url", store_url, home=tmp_path).returncode == 0
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_tool_executions_tool_name_started_at"))
    engine.dispose()
    done = _cli("db", "validate", "--url", store_url, home=tmp_path)
    assert done.returncode == 1
    assert "missing index ix_tool_executions_tool_name_started_at" in done.stdout


def test_demo_runs_real_goals_and_accumulates_history(tmp_path: Path):
    first = _cli("demo", home=tmp_path)
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "the store now holds 8 executions" in out
    assert "answered by fallback cold_room_log" in out
    assert "Tool performance" in out and "Success rate by intent" in out
    assert "first tool fails, falls back: read the cold room sensor" in out
    assert "Trace of 'read the cold room sensor" in out
    assert "step1: cold_room_sensor → answered by fallback cold_room_log [succeeded]" in out
    assert "connection: ConnectionError: sensor gateway unreachable" in out
    assert "rated 4/5 'summarize harvest.md': reward 0.88 for summarize_document" in out
    assert "job statistics: tools 8, attempts 14" in out
    assert "job quality: 8 runs measured, 20 needed to adapt" in out
    assert (tmp_path / "dendrite.db").exists()
    second = _cli("demo", home=tmp_path)
    assert second.returncode == 0, second.stderr
    out = second.stdout
    assert "the store now holds 16 executions (8 from earlier runs)" in out
    # Plan memory now plans the log: the demo says so, and still shows a trace.
    assert "first tool fails" not in out
    assert "cold_room_log planned directly by the memory planner, no fallback" in out
    assert "Trace of 'read the cold room sensor" in out
    assert "picked cold_room_log: reused the plan of 'read the cold room sensor for room B'" in out
