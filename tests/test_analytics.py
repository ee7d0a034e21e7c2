"""Analytics numbers against values computed by hand, and rollups against a rebuild."""

from __future__ import annotations

import contextlib
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url

from dendrite._ids import new_id
from dendrite.store import ExecutionStore
from dendrite.store import schema as s
from dendrite.store.engine import WRITE
from dendrite.store.writer import write_batch
from dendrite.telemetry import ExecutionRecord, ToolExecutionRecord
from tests.conftest import PG_ADMIN, pg_admin

NOW = datetime.now(UTC).replace(microsecond=0)
TODAY = datetime.combine(NOW.date(), datetime.min.time(), UTC)


def _exec(store: ExecutionStore, **kw) -> str:
    kw.setdefault("goal_text", "g")
    kw.setdefault("duration_ms", 100.0)
    return store.store_execution(**kw)


def test_tool_statistics_and_top_tools(store: ExecutionStore):
    eid = _exec(store, success=True)
    durations = {"search": [10, 20, 30, 40], "calc": [1, 2], "flaky": [100, 200, 300]}
    outcomes = {
        "search": [True, True, True, False],
        "calc": [True, True],
        "flaky": [False, True, False],
    }
    t0 = TODAY - timedelta(days=2)
    for tool, values in durations.items():
        for i, (ms, ok) in enumerate(zip(values, outcomes[tool], strict=True)):
            store.store_tool_execution(
                eid, tool, {}, None, ok, ms, started_at=t0 + timedelta(minutes=i)
            )
    search = store.get_tool_statistics("search")
    assert search.total_executions == 4
    assert search.successful_executions == 3 and search.failed_executions == 1
    assert search.success_rate == 0.75
    assert search.avg_duration_ms == 25.0
    # p95 of [10, 20, 30, 40] is 40; the histogram reports its bucket's upper edge.
    assert 40 <= search.p95_duration_ms <= 40 * 2 ** (1 / 32)
    assert search.first_used == t0 and search.last_used == t0 + timedelta(minutes=3)
    assert store.get_tool_statistics("nope") is None

    assert [t.tool_name for t in store.get_top_tools()] == ["calc", "search", "flaky"]
    assert [t.tool_name for t in store.get_top_tools(limit=1)] == ["calc"]
    assert [t.tool_name for t in store.get_top_tools(min_executions=3)] == ["search", "flaky"]
    flaky = store.get_top_tools(min_executions=3)[1]
    assert flaky.success_rate == pytest.approx(1 / 3)
    assert flaky.avg_duration_ms == 200.0
    assert [t.tool_name for t in store.get_tool_performance()] == ["search", "flaky", "calc"]


def test_success_rate_by_intent_and_since_including_a_partial_day(store: ExecutionStore):
    plan = [
        # (days ago, hour, intent, success)
        (5, 10, "tool_use", True),
        (5, 11, "tool_use", False),
        (3, 1, "tool_use", True),
        (3, 20, "generative", False),
        (3, 22, "tool_use", False),
        (1, 9, "tool_use", True),
        (0, 0, "generative", True),
    ]
    for days, hour, intent, ok in plan:
        _exec(
            store, intent=intent, success=ok, started_at=TODAY - timedelta(days=days, hours=-hour)
        )
    rate = store.get_success_rate()
    assert (rate.total, rate.successful) == (7, 4) and rate.success_rate == pytest.approx(4 / 7)
    tool_use = store.get_success_rate("tool_use")
    assert (tool_use.total, tool_use.successful) == (5, 3)
    # since 3 days ago at 12:00 cuts into a day: 20:00 and 22:00 of it count, 01:00 does not.
    since = TODAY - timedelta(days=3) + timedelta(hours=12)
    assert store.get_success_rate(since=since).model_dump() == {
        "total": 4,
        "successful": 2,
        "success_rate": 0.5,
    }
    recent_tool_use = store.get_success_rate("tool_use", since)
    assert (recent_tool_use.total, recent_tool_use.successful) == (2, 1)
    assert store.get_success_rate("nothing").success_rate is None
    # Runs without an intent, given as "" or not at all, are one group, asked for with "".
    blank = _exec(store, intent="", success=True, started_at=since + timedelta(hours=1))
    _exec(store, success=False, started_at=since + timedelta(hours=2))
    _exec(store, intent="", success=True, started_at=TODAY - timedelta(days=5))
    assert store.get_execution(blank).intent is None
    assert store.get_success_rate("").model_dump() == {
        "total": 3,
        "successful": 2,
        "success_rate": pytest.approx(2 / 3),
    }
    assert (
        store.get_success_rate("", since).total,
        store.get_success_rate("", since).successful,
    ) == (2, 1)


def test_tier_and_pool_performance_with_costs_quality_and_ratings(store: ExecutionStore):
    yesterday = TODAY - timedelta(days=1) + timedelta(hours=6)
    a = _exec(
        store,
        success=True,
        model_tier="small",
        pool="p1",
        duration_ms=100,
        actual_cost=0.001,
        quality_score=0.5,
        started_at=yesterday,
    )
    _exec(
        store,
        success=False,
        model_tier="small",
        pool="p1",
        duration_ms=300,
        actual_cost=0.003,
        tokens_used=1_200,
        started_at=yesterday,
    )
    b = _exec(
        store,
        success=True,
        model_tier="large",
        pool="p2",
        duration_ms=50,
        quality_score=0.9,
        started_at=yesterday,
    )
    _exec(store, success=True, model_tier="small", pool="p2", duration_ms=10, started_at=TODAY)
    _exec(store, success=True, duration_ms=10, started_at=TODAY - timedelta(days=30))
    _exec(store, success=True, model_tier="small", duration_ms=10, started_at=TODAY + timedelta(3))
    store.store_feedback(a, 5)
    store.store_feedback(a, 2)
    store.store_feedback(b, 4, accepted=True)

    rows = {(r.day, r.model_tier): r for r in store.get_tier_performance(days=7)}
    assert set(rows) == {
        (yesterday.date(), "small"),
        (yesterday.date(), "large"),
        (TODAY.date(), "small"),
    }
    small = rows[(yesterday.date(), "small")]
    assert (small.executions, small.successes, small.success_rate) == (2, 1, 0.5)
    assert small.avg_duration_ms == 200.0
    assert small.avg_cost == pytest.approx(0.002)
    assert small.avg_quality == pytest.approx(0.5)
    assert small.avg_rating == pytest.approx(3.5)
    assert small.tokens_used == 1_200  # one run reported none: it adds nothing
    large = rows[(yesterday.date(), "large")]
    assert large.avg_cost is None and large.avg_rating == 4.0 and large.tokens_used == 0
    assert len(store.get_tier_performance(days=1)) == 1

    pools = {p.pool: p for p in store.get_pool_performance()}
    assert set(pools) == {"p1", "p2"}
    assert (pools["p1"].executions, pools["p1"].success_rate) == (2, 0.5)
    assert pools["p2"].avg_duration_ms == 30.0 and pools["p2"].avg_quality == pytest.approx(0.9)


def test_recent_executions_filters_and_cursor(store: ExecutionStore):
    ids = [
        _exec(
            store,
            intent="tool_use" if i % 2 else "generative",
            success=i % 3 != 0,
            project="a" if i < 5 else "b",
            started_at=TODAY - timedelta(hours=i),
        )
        for i in range(10)
    ]
    recent = store.get_recent_executions(3)
    assert [r.id for r in recent] == ids[:3]
    page2 = store.get_recent_executions(3, before=recent[-1].started_at)
    assert [r.id for r in page2] == ids[3:6]
    assert [r.id for r in store.get_recent_executions(10, intent="tool_use")] == ids[1::2]
    failed = store.get_recent_executions(10, success=False)
    assert [r.id for r in failed] == [ids[0], ids[3], ids[6], ids[9]]
    assert len(store.get_recent_executions(10, project="b", since=TODAY - timedelta(hours=7))) == 3


def test_an_empty_label_asks_for_the_runs_without_one(store: ExecutionStore):
    """A record keeps "" as none, so ``intent=""`` matched no run at all."""
    bare = _exec(store, intent="", model_tier="", pool="", started_at=TODAY)
    _exec(store, intent="search", model_tier="m", pool="p", started_at=TODAY)
    for label in ("intent", "model_tier", "pool"):
        assert [r.id for r in store.get_recent_executions(10, **{label: ""})] == [bare], label
    assert len(store.get_recent_executions(10, project="", session_id="")) == 2  # none has one
    assert store.get_success_rate(intent="").total == 1


def test_views_agree_with_the_api(store: ExecutionStore):
    _exec(store, success=True, model_tier="m", pool="p", actual_cost=0.5, started_at=TODAY)
    _exec(store, success=False, model_tier="m", pool="p", started_at=TODAY)
    eid = _exec(store, success=True)
    store.store_tool_execution(eid, "t", {}, None, True, 8)
    store.store_solution("a -> b", query_type="q", quality_score=0.5)
    store.flush()
    with store.engine.connect() as conn:
        tier = conn.execute(text("SELECT * FROM tier_performance_daily")).mappings().one()
        pool = conn.execute(text("SELECT * FROM pool_performance")).mappings().one()
        tool = conn.execute(text("SELECT * FROM tool_performance")).mappings().one()
        pattern = conn.execute(text("SELECT * FROM solution_patterns")).mappings().one()
    api_tier = store.get_tier_performance(1)[0]
    assert (tier["model_tier"], tier["executions"], tier["success_rate"]) == ("m", 2, 0.5)
    assert tier["avg_cost"] == pytest.approx(api_tier.avg_cost)
    assert pool["avg_duration_ms"] == pytest.approx(store.get_pool_performance()[0].avg_duration_ms)
    assert tool["p95_duration_ms"] == pytest.approx(store.get_tool_statistics("t").p95_duration_ms)
    assert (pattern["pattern"], pattern["occurrences"]) == ("a -> b", 1)


def _snapshot(store: ExecutionStore) -> dict[str, list[tuple]]:
    with store.engine.connect() as conn:
        return {
            table.name: sorted(tuple(r) for r in conn.execute(select(table)))
            for table in (s.tool_statistics, s.tool_duration_histogram, s.execution_rollup)
        }


def _random_history(store: ExecutionStore, rng: random.Random, n: int) -> list[str]:
    ids = []
    for _ in range(n):
        at = NOW - timedelta(hours=rng.uniform(0, 24 * 20))
        eid = _exec(
            store,
            intent=rng.choice(["tool_use", "generative", None]),
            project=rng.choice(["a", "b", None]),
            task_type=rng.choice(["search", "summary"]),
            model_tier=rng.choice(["small", "large", None]),
            pool=rng.choice(["p1", "p2", None]),
            success=rng.random() < 0.8,
            duration_ms=rng.lognormvariate(4, 1),
            actual_cost=rng.choice([None, rng.random() / 100]),
            quality_score=rng.choice([None, rng.random()]),
            confidence_score=rng.random(),
            tokens_used=rng.randint(0, 5000),
            started_at=at,
        )
        ids.append(eid)
        for k in range(rng.randint(0, 4)):
            store.store_tool_execution(
                eid,
                rng.choice(["t1", "t2", "t3", "t4"]),
                {"k": k},
                k,
                rng.random() < 0.85,
                rng.lognormvariate(3, 1.5),
                started_at=at + timedelta(seconds=k),
            )
        if rng.random() < 0.3:
            store.store_feedback(eid, rng.randint(1, 5), accepted=rng.choice([True, False, None]))
    return ids


def test_a_cancelled_attempt_is_neither_a_success_nor_a_failure_of_its_tool(
    store: ExecutionStore,
):
    """Clients closing a stream mid-run left attempts recorded as failures: forty of them
    and the lifecycle job deprecated a tool that worked every time it was let finish."""
    eid = _exec(store, success=False, status="cancelled")
    store.store_tool_execution(eid, "regex", {}, "ok", True, 5.0)
    for _ in range(3):
        store.store_tool_execution(eid, "regex", {}, None, False, 1.0, error_type="cancelled")
    stats = store.get_tool_statistics("regex")
    assert (stats.total_executions, stats.failed_executions, stats.success_rate) == (1, 0, 1.0)
    store.update_statistics()
    assert store.get_tool_statistics("regex") == stats
    (recent,) = store.get_recent_tool_outcomes(NOW - timedelta(hours=1))
    assert (recent.attempts, recent.successes) == (1, 1)
    assert len(store.get_execution(eid).steps) == 4  # the rows themselves are all kept


def test_incremental_rollups_equal_a_rebuild_from_scratch(store_url: str, tmp_path):
    rng = random.Random(7)
    with ExecutionStore(store_url, state_dir=tmp_path / "s", batch_size=37) as store:
        _random_history(store, rng, 300)
        store.flush()
        incremental = _snapshot(store)
        tools_before = store.get_tool_performance()
        store.update_statistics()
        assert _snapshot(store) == incremental
        assert store.get_tool_performance() == tools_before
        assert sum(r.total_executions for r in tools_before) > 300


def test_rollups_of_a_batch_larger_than_one_statement_equal_a_rebuild(store_url: str, tmp_path):
    """SQLite takes a batch's rollups many rows to a statement (at most 1,024): a batch
    with thousands of distinct keys goes in several statements, new keys and keys that
    exist alike, and must count every row once."""
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        for _ in range(2):  # the second batch updates every key the first inserted
            batch: list[ExecutionRecord | ToolExecutionRecord] = []
            for i in range(1_500):
                run = ExecutionRecord(
                    goal_text="g",
                    project=f"p{i}",
                    success=i % 3 > 0,
                    duration_ms=10.0,
                    started_at=NOW,
                )
                batch.append(run)
                batch.extend(
                    ToolExecutionRecord(
                        execution_id=run.id,
                        tool_name=f"tool{i}",
                        success=k == 0,
                        duration_ms=2.0**k,
                        started_at=NOW,
                    )
                    for k in range(3)
                )
            with store.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                write_batch(conn, batch, 1_000)
        incremental = _snapshot(store)
        assert {row[2] for row in incremental["tool_duration_histogram"]} == {2}
        assert len(incremental["tool_duration_histogram"]) == 1_500 * 3
        assert len(incremental["execution_rollup"]) == 1_500
        store.update_statistics()
        assert _snapshot(store) == incremental
        stats = store.get_tool_statistics("tool7")
        assert (stats.total_executions, stats.successful_executions) == (6, 2)


def test_prune_deletes_raw_rows_and_keeps_the_aggregates(store_url: str, tmp_path):
    rng = random.Random(11)
    with ExecutionStore(store_url, state_dir=tmp_path / "s", batch_size=50) as store:
        _random_history(store, rng, 200)
        store.flush()
        before = _snapshot(store)
        rate_before = store.get_success_rate()
        tiers_before = store.get_tier_performance(30)
        with store.engine.connect() as conn:
            old = conn.scalar(
                select(func.count()).where(s.executions.c.started_at < NOW - timedelta(days=10))
            )
        report = store.prune(timedelta(days=10))
        assert report.executions == old > 0
        assert report.tool_executions > 0
        assert len(store.get_recent_executions(1000)) == 200 - old
        assert _snapshot(store) == before
        assert store.get_success_rate() == rate_before
        assert store.get_tier_performance(30) == tiers_before
        # A rebuild after pruning (archive + live rows) still agrees exactly.
        store.update_statistics()
        assert _snapshot(store) == before
        # New history keeps adding on top of the pruned past.
        _random_history(store, rng, 20)
        store.flush()
        grown = _snapshot(store)
        store.update_statistics()
        assert _snapshot(store) == grown


def test_prune_takes_a_run_whole_and_leaves_a_kept_runs_rows(store: ExecutionStore):
    """Steps and routing go with their run, by when the run started: a pruned run's late
    step stayed without it, and a kept run lost a decision made just before the cutoff."""
    cutoff = NOW - timedelta(days=10)
    spans = store.store_execution(
        goal_text="spans the cutoff", success=True, duration_ms=600_000,
        started_at=cutoff - timedelta(minutes=5),
    )  # fmt: skip
    for name, after in (("early", 1), ("late", 480)):
        store.store_tool_execution(
            spans, name, {}, None, True, 1.0, started_at=cutoff + timedelta(seconds=after - 300)
        )
    kept = store.store_execution(
        goal_text="after", success=True, duration_ms=10, started_at=cutoff + timedelta(seconds=1)
    )
    store.store_routing_decision(kept, "fast", created_at=cutoff - timedelta(milliseconds=5))
    store.store_tool_execution(kept, "kept", {}, None, True, 1.0)
    runless = new_id()  # a step whose run was never recorded goes by its own time
    store.store_tool_execution(
        runless, "old", {}, None, True, 1.0, started_at=cutoff - timedelta(days=1)
    )
    store.flush()
    before = _snapshot(store)
    report = store.prune(cutoff)
    assert (report.executions, report.tool_executions, report.routing_decisions) == (1, 3, 0)
    assert store.get_execution(spans) is None
    detail = store.get_execution(kept)
    assert [d.chosen for d in detail.routing] == ["fast"]
    assert [t.tool_name for t in detail.steps] == ["kept"]
    with store.engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(s.tool_executions)) == 1
    assert _snapshot(store) == before
    store.update_statistics()
    assert _snapshot(store) == before


def test_sqlites_p95_from_the_top_finds_the_window_querys_bucket(tmp_path):
    """The writer's SQLite shortcut for p95 against the window query that rebuilds use."""
    from dendrite.store import rollups

    rng = random.Random(3)
    durations = {
        "exactly_95": [10.0] * 19 + [1000.0],  # the 95 % mark falls exactly on a bucket
        "just_over": [10.0] * 18 + [1000.0] * 2,
        "one_call": [5.0],
        "zero_and_tiny": [0.0, 0.0, 1e-9, 3.0],
        "ties_at_top": [50.0] * 40,
    } | {
        f"random_{i}": [rng.lognormvariate(3, 1.5) for _ in range(rng.randint(1, 400))]
        for i in range(12)
    }
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}", state_dir=tmp_path / "s") as store:
        eid = _exec(store)
        for tool, values in durations.items():
            for ms in values:
                store.store_tool_execution(eid, tool, {}, None, True, ms)
        store.flush()
        names = [*sorted(durations), "never_called"]
        with store.engine.connect() as conn:
            window = sorted(
                conn.execute(rollups._p95_query(every_tool=False), {"names": names}).all()
            )
            from_the_top = sorted(rollups._p95_from_the_top(conn, names))
    assert from_the_top == [tuple(r) for r in window]
    assert len(from_the_top) == len(durations)
    buckets = dict(from_the_top)
    assert buckets["exactly_95"] == rollups.duration_bucket(10.0)
    assert buckets["just_over"] == rollups.duration_bucket(1000.0)


def test_sqlites_p95_from_the_top_raises_sqlalchemys_errors(tmp_path):
    """The writer sorts errors by SQLAlchemy's classes ("unreachable" vs "bad data"), so the
    shortcut's raw driver errors must arrive as those, not as bare sqlite3 errors."""
    from sqlalchemy.exc import OperationalError

    from dendrite.store import rollups

    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}", state_dir=tmp_path / "s") as store:
        store.store_tool_execution(_exec(store), "t", {}, None, True, 5.0)
        store.flush()
        with store.engine.connect() as conn:
            conn.execute(text("DROP TABLE tool_duration_histogram"))
            with pytest.raises(OperationalError, match="no such table"):
                rollups._p95_from_the_top(conn, ["t"])


def test_runs_at_the_largest_cost_sum_in_the_rollups(store: ExecutionStore):
    """At the old limit of 10⁹ per run, ten runs of one day and key overflowed the 64-bit
    sum: PostgreSQL refused the later rows, SQLite's rebuild raised."""
    for _ in range(12):
        _exec(store, success=True, model_tier="big", actual_cost=1e6, started_at=TODAY)
    (row,) = store.get_tier_performance(days=1)
    assert row.executions == 12 and row.avg_cost == pytest.approx(1e6)
    store.update_statistics()
    assert store.get_tier_performance(days=1) == [row]
    assert store.status().rejected_records == 0


def test_means_read_from_the_rollups_are_the_views_on_both_backends(store: ExecutionStore):
    """PostgreSQL's ``SUM`` of a ``BIGINT`` is a ``Decimal``: divided as one, the mean
    duration per tier and per pool differed from SQLite's, and from the views' on the
    same server, in the last digit (555596.7075555555 against ...556)."""
    for duration in [555_596.0] * 8 + [555_602.368]:
        _exec(store, success=True, model_tier="m", pool="p", duration_ms=duration, started_at=NOW)
    (tier,) = store.get_tier_performance(days=1)
    (pool,) = store.get_pool_performance()
    with store.engine.connect() as conn:
        in_views = [
            conn.scalar(text(f"SELECT avg_duration_ms FROM {view}"))
            for view in ("tier_performance_daily", "pool_performance")
        ]
    assert [tier.avg_duration_ms, pool.avg_duration_ms] == in_views == [555596.7075555556] * 2


def _icu_database() -> Iterator[str]:
    """A PostgreSQL database ordering text as a language does (ICU ``en-US``), as servers
    created with ``en_US.UTF-8`` do; skipped where the server has no ICU."""
    name = f"dendrite_test_{uuid.uuid4().hex[:12]}"
    try:
        pg_admin(
            f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
            "ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    except psycopg.Error as error:
        pytest.skip(f"no ICU collation on this server: {error}")
    try:
        yield (
            make_url(PG_ADMIN)
            .set(drivername="postgresql+psycopg", database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_names_are_ordered_alike_whatever_the_databases_collation(backend: str, tmp_path):
    """PostgreSQL orders text by the database's collation, SQLite by code point: on a
    server created for a language, tools, pools, tiers, arms and state keys came in
    another order (``_z, a, A, Ä, …`` for ``A, B, _z, a, …``), and ``get_top_tools``
    with a limit answered with other tools among those tied."""
    names = ["b", "B", "a", "A", "_z", "a_b", "ab", "Ä", "z"]
    in_order = sorted(names)
    databases = (
        contextlib.nullcontext(f"sqlite:///{tmp_path / 'h.db'}")
        if backend == "sqlite"
        else contextlib.contextmanager(_icu_database)()
    )
    with databases as url, ExecutionStore(url, state_dir=tmp_path / "s") as store:
        for name in names:
            eid = _exec(store, success=True, model_tier=name, pool=name, started_at=NOW)
            store.store_tool_execution(eid, name, {}, None, True, 1.0)
            store.store_assignment("exp", eid, name, name)
            store.put_state("session", name, name, 1)
        store.flush()
        assert [t.tool_name for t in store.get_top_tools(limit=4)] == in_order[:4]
        assert [t.tool_name for t in store.get_tool_performance()] == in_order
        assert [p.pool for p in store.get_pool_performance()] == in_order
        assert [t.model_tier for t in store.get_tier_performance(days=1)] == in_order
        assert [a.arm for a in store.get_arm_outcomes("exp")] == in_order
        assert [e.scope_id for e in store.get_state_entries("session")] == in_order
        recent = store.get_recent_tool_outcomes(NOW - timedelta(hours=1))
        assert [r.tool_name for r in recent] == in_order
