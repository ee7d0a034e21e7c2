"""Schema migrations on both backends: creation, round trips, drift, old and unknown revisions."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text

from dendrite.store import ExecutionStore, SchemaError, migrate
from dendrite.store.engine import make_engine


def test_a_new_database_gets_the_current_schema_on_first_use(store: ExecutionStore):
    assert migrate.current_revision(store.engine) == migrate.head_revision()
    assert migrate.validate(store.engine) == []


def test_upgrade_downgrade_upgrade_round_trips(store_url: str):
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == "0007"
    migrate.downgrade(engine)
    assert migrate.current_revision(engine) == "0006"
    migrate.upgrade(engine)
    assert migrate.validate(engine) == []
    migrate.downgrade(engine, "0001")
    assert migrate.current_revision(engine) == "0001"
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    assert migrate.validate(engine) == []
    migrate.reset(engine)
    assert migrate.validate(engine) == []
    engine.dispose()


def test_validate_names_every_difference(store_url: str):
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_executions_model_tier_success_started_at"))
        conn.execute(text("ALTER TABLE executions ADD COLUMN surprise INTEGER"))
        conn.execute(text("DROP VIEW pool_performance"))
    problems = migrate.validate(engine)
    assert "missing index ix_executions_model_tier_success_started_at on executions" in problems
    assert "unexpected column executions.surprise" in problems
    assert "missing view pool_performance" in problems
    assert len(problems) == 3
    migrate.downgrade(engine, "0001")
    problems = migrate.validate(engine)
    assert problems[0] == "schema revision is 0001, the code expects 0007"
    assert "missing table tool_statistics" in problems
    engine.dispose()


def test_an_older_schema_is_upgraded_or_refused_by_backend(
    store_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    engine = make_engine(store_url)
    migrate.upgrade(engine, "0001")
    if engine.dialect.name == "sqlite":
        with (
            caplog.at_level(logging.WARNING, "dendrite.store.migrate"),
            ExecutionStore(store_url, state_dir=tmp_path / "s") as store,
        ):
            assert migrate.current_revision(store.engine) == "0007"
        # An upgrade can take a while on a large history: the slow open says why.
        (message,) = [r.getMessage() for r in caplog.records if r.name.endswith("migrate")]
        assert message.startswith("upgrading sqlite:///") and message.endswith("0001 to 0007")
    else:
        with pytest.raises(
            SchemaError, match=r"revision 0001.*needs 0007: run `dendrite db upgrade`"
        ):
            ExecutionStore(store_url, state_dir=tmp_path / "s")
        with ExecutionStore(store_url, state_dir=tmp_path / "s", auto_upgrade=True) as store:
            assert migrate.current_revision(store.engine) == "0007"
    engine.dispose()


def test_an_unknown_revision_or_unversioned_tables_are_refused(store_url: str, tmp_path: Path):
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("UPDATE dendrite_schema_version SET version_num = '9999'"))
    with pytest.raises(SchemaError, match="revision 9999, which this version of Dendrite does not"):
        ExecutionStore(store_url, state_dir=tmp_path / "s")
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE dendrite_schema_version"))
    with pytest.raises(SchemaError, match="Dendrite tables but no schema version"):
        ExecutionStore(store_url, state_dir=tmp_path / "s")
    # The way out the message names: upgrade cannot tell where to start, reset can.
    with pytest.raises(SchemaError, match=r"no schema version.*`dendrite db reset --yes` drops"):
        migrate.upgrade(engine)
    migrate.reset(engine)
    assert migrate.current_revision(engine) == "0007"
    assert migrate.validate(engine) == []
    engine.dispose()


def test_validate_leaves_an_applications_own_tables_alone(store_url: str):
    """The version table has a name of its own so that a database can be shared with an
    application (and its Alembic history): its tables are not differences."""
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE app_users (id INTEGER PRIMARY KEY, name TEXT)"))
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
    assert migrate.validate(engine) == []
    migrate.reset(engine)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM app_users")).scalar() == 0
    engine.dispose()


def test_statistics_are_rebuilt_when_an_upgrade_finds_history_without_them(
    store_url: str, tmp_path: Path
):
    """Below 0002 the rollups are gone while the raw history stays; the upgrade back made
    them again, empty, and every statistic read zero until `update_statistics()`."""
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        eid = store.store_execution(goal_text="g", success=True, duration_ms=5)
        store.store_tool_execution(eid, "lookup", {}, "ok", True, 2.0)
    engine = make_engine(store_url)
    migrate.downgrade(engine, "0001")
    migrate.upgrade(engine, "+6")  # the newest revision, named another way than "head"
    engine.dispose()
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        assert store.get_tool_statistics("lookup").total_executions == 1
        assert store.get_success_rate().total == 1
    engine = make_engine(store_url)
    migrate.downgrade(engine, "0001")
    engine.dispose()
    with ExecutionStore(store_url, state_dir=tmp_path / "s", auto_upgrade=True) as store:
        assert store.get_tool_statistics("lookup").total_executions == 1


def test_validate_names_constraints_types_and_changed_views(store_url: str):
    """Constraints were printed as Python reprs, JSONB as JSON, and a view replaced by
    another of the same name passed."""
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP VIEW pool_performance"))
        conn.execute(text("CREATE VIEW pool_performance AS SELECT 1 AS x"))
        if engine.dialect.name == "postgresql":
            conn.execute(text("ALTER TABLE executions DROP CONSTRAINT uq_executions_goal_id"))
            conn.execute(
                text(
                    "ALTER TABLE execution_feedback "
                    "DROP CONSTRAINT fk_execution_feedback_execution_id_executions"
                )
            )
            conn.execute(text("ALTER TABLE executions ALTER COLUMN metadata TYPE json"))
    problems = migrate.validate(engine)
    engine.dispose()
    expected = ["view pool_performance differs from the code's definition"]
    if store_url.startswith("postgresql"):
        expected += [
            "missing unique constraint uq_executions_goal_id on executions(goal_id)",
            "missing foreign key to executions fk_execution_feedback_execution_id_executions "
            "on execution_feedback(execution_id)",
            "column executions.metadata has type JSON, expected JSONB",
        ]
    assert sorted(problems) == sorted(expected)


def test_reset_repairs_a_schema_that_drifted(store_url: str, tmp_path: Path):
    """Reset went down the migrations, which expect each revision's exact schema: a
    dropped index stopped it half-way (on SQLite with the rollups already gone)."""
    engine = make_engine(store_url)
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_executions_started_at"))
        conn.execute(text("DROP VIEW tool_performance"))
    migrate.reset(engine)
    assert migrate.validate(engine) == []
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    with pytest.raises(SchemaError, match="no schema version: there is nothing to downgrade"):
        migrate.downgrade(engine)
    engine.dispose()


def test_the_sqlite_upgrade_to_text_columns_keeps_every_row_and_index(tmp_path: Path):
    """0005 rebuilds two SQLite tables whose JSON columns had numeric affinity: every row
    comes through, a number already rewritten reads as it did (floats to the last digit),
    and from then on a bare number is kept as written."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0004")
    with engine.begin() as conn:
        floats = ["0.30000000000000004", "-1.7976931348623157e308"]  # kept as REAL
        for index, result in enumerate(["1.0", '{"rows":[1,2]}', None, '"text"', *floats]):
            conn.execute(
                text(
                    "INSERT INTO tool_executions (id, execution_id, tool_name, parameters, result,"
                    " result_truncated, success, attempt, duration_ms, started_at, finished_at)"
                    " VALUES (:id, :eid, 't', '{}', :result, 0, 1, 1, 1.0, :at, :at)"
                ),
                {
                    "id": f"{index:032x}",  # how SQLite holds a UUID
                    "eid": f"{0xAA:032x}",
                    "result": result,
                    "at": f"2026-11-2{index} 10:00:00.000000",
                },
            )
        conn.execute(
            text(
                "INSERT INTO state_entries (scope, scope_id, key, value, updated_at)"
                " VALUES ('global', '', 'k', '2.0', '2026-11-24 10:00:00.000000')"
            )
        )
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT typeof(result) FROM tool_executions LIMIT 1")) == "integer"
    migrate.upgrade(engine)
    assert migrate.validate(engine) == []
    engine.dispose()
    with ExecutionStore(url, state_dir=tmp_path / "s") as store:
        old = "00000000-0000-0000-0000-0000000000aa"
        store.store_execution(id=old, goal_text="g", success=True, duration_ms=5)
        store.flush()
        steps = store.get_execution(old).steps
        # SQLite's CAST to text keeps 15 digits: 0.3 and -inf, had the copy been left to it
        assert [s.result for s in steps] == [
            1,
            {"rows": [1, 2]},
            None,
            "text",
            0.30000000000000004,
            -1.7976931348623157e308,
        ]
        assert [e.value for e in store.get_state_entries()] == [2]
        store.put_state("global", "", "k", 2.0)
        eid = store.store_execution(goal_text="g", success=True, duration_ms=5)
        store.store_tool_execution(eid, "t", {}, 1.0, True, 1.0)
        store.flush()
        assert store.get_execution(eid).steps[0].result == 1.0
        assert isinstance(store.get_execution(eid).steps[0].result, float)
        assert [repr(e.value) for e in store.get_state_entries()] == ["2.0"]


OLD_TIMES = [  # as SQLAlchemy wrote them to SQLite, and one without its microseconds
    "2026-11-25 10:00:00.123456",
    "1969-12-31 23:59:59.999999",
    "0001-01-01 00:00:00.000000",
    "9999-12-31 23:59:59.999999",
    "2026-11-25 10:00:01",
]


def test_the_sqlite_upgrade_to_integer_times_converts_every_value_both_ways(tmp_path: Path):
    """0007 rebuilds every SQLite table with a time column. The time is exact to the
    microsecond, before 1970 as after, and dropping ``executions`` for its rebuild, with
    foreign keys on, would have deleted its feedback by cascade."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    engine = make_engine(url)
    migrate.upgrade(engine, "0006")
    ids = [f"{i:032x}" for i in range(len(OLD_TIMES))]  # how SQLite holds a UUID
    with engine.begin() as conn:
        for i, (eid, at) in enumerate(zip(ids, OLD_TIMES, strict=True)):
            values = {"id": eid, "goal": f"goal_{i + 1}", "at": at}
            conn.execute(
                text(
                    "INSERT INTO executions (id, goal_id, goal_text, depth, success, status,"
                    " started_at, finished_at, duration_ms, metadata, recorded_at)"
                    " VALUES (:id, :goal, 'g', 0, 1, 'succeeded', :at, :at, 1.0, '{}', :at)"
                ),
                values,
            )
            conn.execute(
                text(
                    "INSERT INTO tool_executions (id, execution_id, tool_name, parameters,"
                    " result_truncated, success, attempt, duration_ms, started_at, finished_at)"
                    " VALUES (:id, :id, 't', '{}', 0, 1, 1, 1.0, :at, :at)"
                ),
                values,
            )
            conn.execute(
                text(
                    "INSERT INTO execution_feedback (id, execution_id, rating, source,"
                    " created_at, recorded_at) VALUES (:id, :id, 4, 'human', :at, :at)"
                ),
                values,
            )
        conn.execute(
            text(
                "INSERT INTO state_entries (scope, scope_id, key, value, updated_at, expires_at)"
                " VALUES ('global', '', 'k', '1', :at, NULL)"
            ),
            {"at": OLD_TIMES[0]},
        )
    migrate.upgrade(engine)
    assert migrate.validate(engine) == []
    with engine.connect() as conn:
        kinds = conn.execute(
            text("SELECT DISTINCT typeof(started_at), typeof(finished_at) FROM tool_executions")
        ).all()
        assert kinds == [("integer", "integer")]
        assert conn.scalar(text("SELECT count(*) FROM execution_feedback")) == len(ids)
    engine.dispose()

    def aware(at: str) -> datetime:
        return datetime.fromisoformat(at).replace(tzinfo=UTC)

    with ExecutionStore(url, state_dir=tmp_path / "s") as store:
        for eid, at in zip(ids, OLD_TIMES, strict=True):
            detail = store.get_execution(str(uuid.UUID(eid)))
            assert detail is not None
            assert detail.started_at == aware(at)
            assert [s.started_at for s in detail.steps] == [aware(at)]
            assert [f.created_at for f in detail.feedback] == [aware(at)]
        assert [e.updated_at for e in store.get_state_entries()] == [aware(OLD_TIMES[0])]
        assert [e.expires_at for e in store.get_state_entries()] == [None]
        first = store.get_tool_statistics("t")
        assert (first.first_used, first.last_used) == (aware(OLD_TIMES[2]), aware(OLD_TIMES[3]))

    engine = make_engine(url)
    migrate.downgrade(engine, "0006")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT started_at FROM tool_executions ORDER BY id")).scalars()
        assert list(back) == [*OLD_TIMES[:-1], "2026-11-25 10:00:01.000000"]
        assert conn.scalar(text("SELECT count(*) FROM execution_feedback")) == len(ids)
        assert conn.scalar(text("SELECT typeof(expires_at) FROM state_entries")) == "null"
    migrate.upgrade(engine)
    assert migrate.validate(engine) == []
    engine.dispose()
