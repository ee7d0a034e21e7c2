"""Round trips of every record type, and the treatment of bad input, on both backends."""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path

import pytest
from sqlalchemy import JSON, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from dendrite._ids import new_id
from dendrite.store import (
    ExecutionStore,
    InvalidRecordError,
    StoreUnavailableError,
    UnknownExecutionError,
    schema,
    serialize,
)
from dendrite.store.execution import checked_execution
from dendrite.store.store import _validated
from dendrite.store.toolcall import ToolCall, checked_call
from dendrite.store.writer import _encoders, _tool_row_encoder
from dendrite.telemetry import (
    ErrorType,
    ExecutionRecord,
    ExecutionStatus,
    FeedbackRecord,
    RoutingDecision,
    SolutionRecord,
    ToolCreationEvent,
    ToolExecutionRecord,
)
from tests.conftest import pg_admin, pg_database


def test_execution_round_trip_with_every_field(store: ExecutionStore):
    parent = store.store_execution(goal_text="outer", success=True, duration_ms=10)
    started = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    eid = store.store_execution(
        None,
        "compare the storage sections",
        "tool_use",
        False,
        2500.5,
        {"answer": None, "nested": {"k": [1, 2.5, "x"]}},
        query_type="comparison",
        task_type="analysis",
        project="docs",
        session_id="s-1",
        parent_id=parent,
        depth=1,
        error="upstream timed out",
        started_at=started,
        model_tier="large",
        pool="local-threads",
        routing_confidence=0.7,
        complexity_score=2.5,
        confidence_score=0.4,
        estimated_tokens=900,
        tokens_used=1100,
        estimated_duration_ms=2000,
        cost_estimate=0.01,
        actual_cost=0.0123,
        quality_score=0.3,
        peak_memory_mb=120.5,
        cpu_time_ms=80.25,
        solution_summary="search -> compare",
    )
    got = store.get_execution(eid)
    assert got is not None
    assert got.goal_id == "goal_2"
    assert got.goal_text == "compare the storage sections"
    assert got.intent == "tool_use" and got.success is False
    assert got.status is ExecutionStatus.FAILED and got.error_type is ErrorType.TIMEOUT
    assert got.started_at == started and got.duration_ms == 2500.5
    assert got.parent_id == parent and got.depth == 1
    assert got.metadata == {"answer": None, "nested": {"k": [1, 2.5, "x"]}}
    assert (got.model_tier, got.pool, got.tokens_used, got.actual_cost) == (
        "large",
        "pool" and "local-threads",
        1100,
        0.0123,
    )
    assert got.prediction_error().duration == pytest.approx(0.25025)
    assert store.get_execution(parent).goal_id == "goal_1"
    assert store.get_execution(new_id()) is None


def test_steps_feedback_and_routing_come_back_with_their_execution(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=30)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    first = store.store_tool_execution(
        eid,
        "search",
        {"q": "wal"},
        {"hits": 3},
        False,
        10,
        error="connection reset",
        step_id="s1",
        attempt=1,
        started_at=t0,
    )
    store.store_tool_execution(
        eid,
        "search",
        {"q": "wal"},
        {"hits": 3},
        True,
        12,
        step_id="s1",
        attempt=2,
        started_at=t0 + timedelta(milliseconds=10),
    )
    store.store_tool_execution(
        eid,
        "web_search",
        {"q": "wal"},
        ["a", "b"],
        True,
        8,
        step_id="s1",
        fallback_of="search",
        started_at=t0 + timedelta(milliseconds=22),
    )
    store.store_routing_decision(
        eid, "small", {"small": 0.9, "large": 0.7}, 0.9, "cheap enough", predicted_success=0.8
    )
    fid = store.store_feedback(eid, 4, "useful", accepted=True, source="llm")
    store.store_feedback(eid, accepted=False)
    got = store.get_execution(eid)
    assert [(s.tool_name, s.attempt, s.success) for s in got.steps] == [
        ("search", 1, False),
        ("search", 2, True),
        ("web_search", 1, True),
    ]
    assert got.steps[0].id == first and got.steps[0].error_type is ErrorType.CONNECTION
    assert got.steps[0].parameters == {"q": "wal"} and got.steps[0].result == {"hits": 3}
    assert got.steps[2].fallback_of == "search" and got.steps[2].result == ["a", "b"]
    assert got.feedback[0].id == fid
    assert got.feedback[0].source == "llm" and got.feedback[0].feedback_text == "useful"
    # The execution row carries the latest judgement: the rating stays, acceptance flips.
    assert got.user_rating == 4 and got.user_accepted is False
    (decision,) = got.routing
    assert decision.chosen == "small" and decision.reason == "cheap enough"
    assert {c.option: c.score for c in decision.candidates} == {"small": 0.9, "large": 0.7}
    (outcome,) = store.get_routing_outcomes()
    assert outcome.decision.id == decision.id and outcome.outcome.id == eid
    assert decision.prediction_error(outcome.outcome).success == pytest.approx(0.2)


def test_solutions_and_tool_creations_round_trip(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    for quality in (0.8, 0.6):
        store.store_solution(
            "search -> summarize",
            "summaries",
            execution_id=eid,
            query_type="summary",
            plan={"steps": ["search", "summarize"]},
            quality_score=quality,
        )
    store.store_solution("calculator", query_type="calculation")
    patterns = store.get_solution_patterns()
    assert [(p.pattern, p.occurrences) for p in patterns] == [
        ("search -> summarize", 2),
        ("calculator", 1),
    ]
    assert patterns[0].avg_quality == pytest.approx(0.7)
    assert store.get_solutions("summary")[0].plan == {"steps": ["search", "summarize"]}
    store.store_tool_creation("parse_invoice", "def f(): ...", False, ["no return type"], "g")
    (event,) = store.get_tool_creations("parse_invoice")
    assert event.validation_passed is False and event.validation_errors == ["no return type"]


@pytest.mark.parametrize("rating", [0, 6, -1])
def test_rating_out_of_range_is_refused_naming_the_field(store: ExecutionStore, rating: int):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    with pytest.raises(
        InvalidRecordError, match=r"invalid feedback: rating: .* \(got " + str(rating)
    ):
        store.store_feedback(eid, rating)
    assert store.get_execution(eid).feedback == []


def test_feedback_for_unknown_execution_is_refused(store: ExecutionStore):
    missing = new_id()
    with pytest.raises(UnknownExecutionError, match=missing):
        store.store_feedback(missing, 5)


def test_bad_arguments_raise_before_anything_is_queued(store: ExecutionStore):
    with pytest.raises(InvalidRecordError, match="duration_ms"):
        store.store_tool_execution(new_id(), "t", {}, None, True, -5)
    with pytest.raises(InvalidRecordError, match="execution_id"):
        store.store_tool_execution("42", "t", {}, None, True, 5)
    with pytest.raises(InvalidRecordError, match="success"):
        store.store_execution(goal_text="g", success="maybe", duration_ms=1)
    with pytest.raises(InvalidRecordError, match="execution id must be a UUID"):
        store.get_execution("goal_1")
    assert store.status().pending_writes == 0


@dataclass
class Point:
    x: int
    y: int


class Opaque:
    def __repr__(self) -> str:
        return "<Opaque thing>"


def test_unserialisable_parameters_are_stored_by_the_documented_fallback(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    sid = store.store_tool_execution(
        eid,
        "t",
        {
            "when": datetime(2026, 1, 1, tzinfo=UTC),
            "path": Path("/tmp/x"),
            "amount": Decimal("1.5"),
            "point": Point(1, 2),
            "tags": {"b", "a"},
            "blob": b"\x00\x01",
            "nan": float("nan"),
            "obj": Opaque(),
        },
        Opaque(),
        True,
        3,
    )
    (step,) = store.get_execution(eid).steps
    assert step.id == sid
    assert step.parameters == {
        "when": "2026-01-01T00:00:00+00:00",
        "path": "/tmp/x",
        "amount": 1.5,
        "point": {"x": 1, "y": 2},
        "tags": ["a", "b"],
        "blob": {"$bytes": 2},
        "nan": "nan",
        "obj": {"$repr": "<Opaque thing>", "$type": f"{__name__}.Opaque"},
    }
    assert step.result == {"$repr": "<Opaque thing>", "$type": f"{__name__}.Opaque"}


def test_circular_and_too_deep_values_are_recorded_as_markers_without_losing_rows(
    store: ExecutionStore,
):
    circular: list = [float("nan")]
    circular.append(circular)
    deep: list = []
    inner = deep
    for _ in range(50_000):
        inner.append([])
        inner = inner[0]
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    store.store_tool_execution(eid, "loops", {"self": circular}, circular, True, 1)
    store.store_tool_execution(eid, "deep", {}, deep, True, 1)
    store.store_tool_execution(eid, "plain", {}, 7, True, 1)
    store.flush()
    steps = {s.tool_name: s for s in store.get_execution(eid).steps}
    assert set(steps) == {"loops", "deep", "plain"} and store.status().rejected_records == 0
    # What recurs is the marker; the rest is kept (the whole value was one marker).
    nan, marker = steps["loops"].result
    assert nan == "nan" and marker["$type"] == "builtins.list"
    assert marker["$error"] == "circular: it contains itself"
    assert marker["$repr"].startswith("[nan, [nan,")
    assert steps["loops"].parameters["self"] == [nan, marker]
    assert steps["deep"].result["$repr"].startswith("[[[[")
    assert steps["plain"].result == 7


def test_integers_too_long_for_text_and_values_whose_own_code_raises_are_recorded(
    store: ExecutionStore,
):
    """Python writes at most 4,300 digits, and a container's items() or an object's repr
    is its author's code: each raised out of the encoder and lost the row (and the run's)."""

    class NoItems(dict):
        def items(self):
            raise RuntimeError("no items")

        def __iter__(self):
            raise RuntimeError("no iteration")

    class NoRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    huge = 10**4400
    eid = store.store_execution(
        goal_text="g", success=True, duration_ms=1, metadata={"n": huge, "ok": 1}
    )
    store.store_tool_execution(eid, "bare", {}, -huge, True, 1)
    store.store_tool_execution(eid, "nested", {"n": huge}, {"n": huge, "m": 2}, True, 1)
    store.store_tool_execution(eid, "items", {}, NoItems(a=1), True, 1)
    store.store_tool_execution(eid, "repr", {}, [NoRepr(), float("nan")], True, 1)
    store.flush()
    detail = store.get_execution(eid)
    steps = {s.tool_name: s for s in detail.steps}
    assert set(steps) == {"bare", "nested", "items", "repr"}
    assert store.status().rejected_records == 0
    bits = {"$int_bits": huge.bit_length()}
    assert detail.metadata == {"n": bits, "ok": 1}
    assert steps["bare"].result == bits
    assert steps["nested"].parameters == {"n": bits}
    assert steps["nested"].result == {"n": bits, "m": 2}
    assert steps["items"].result["$error"] == "RuntimeError: no items"
    assert steps["items"].result["$type"].endswith("NoItems")
    assert steps["repr"].result[1] == "nan"
    assert steps["repr"].result[0]["$error"] == "RuntimeError: no repr"


def test_oversized_result_is_replaced_by_a_marker(store_url: str, tmp_path: Path):
    with ExecutionStore(store_url, state_dir=tmp_path / "s", max_result_bytes=1000) as store:
        eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
        store.store_tool_execution(eid, "big", {}, {"text": "x" * 5000}, True, 1)
        store.store_tool_execution(eid, "small", {}, {"text": "x" * 100}, True, 1)
        big, small = store.get_execution(eid).steps
    assert big.result["$truncated"] is True
    assert big.result["original_bytes"] == len(
        json.dumps({"text": "x" * 5000}, separators=(",", ":"))
    )
    assert big.result["preview"].startswith('{"text":"xxx')
    assert small.result == {"text": "x" * 100}


def test_a_refused_record_is_set_aside_and_the_rest_of_its_batch_is_written(
    store_url: str, tmp_path: Path
):
    with ExecutionStore(store_url, state_dir=tmp_path / "s", flush_interval=10) as store:
        ids = [
            store.store_execution(
                goal_id=f"g{i}", goal_text=f"goal {i}", success=True, duration_ms=1
            )
            for i in range(50)
        ]
        clash = store.store_execution(goal_id="g7", goal_text="clash", success=True, duration_ms=1)
        ids += [
            store.store_execution(goal_text=f"late {i}", success=True, duration_ms=1)
            for i in range(50)
        ]
        store.flush()
        assert all(store.get_execution(i) is not None for i in ids)
        assert store.get_execution(clash) is None
        status = store.status()
        assert status.rejected_records == 1 and status.journal_records == 0
        assert store.get_success_rate().total == 100
    (line,) = (tmp_path / "s" / "rejected.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["kind"] == "execution" and entry["record"]["id"] == clash
    assert "duplicate" in entry["reason"]


def test_replaying_the_same_id_twice_keeps_one_row(store: ExecutionStore):
    eid = new_id()
    sid = new_id()
    for _ in range(2):
        store.store_execution(goal_text="g", success=True, duration_ms=1, id=eid)
        store.store_tool_execution(eid, "t", {}, None, True, 5, id=sid)
        store.flush()
    assert store.get_success_rate().total == 1
    assert store.get_tool_statistics("t").total_executions == 1
    assert len(store.get_execution(eid).steps) == 1
    assert store.status().rejected_records == 0


def test_a_record_sent_twice_in_one_batch_is_counted_once(store_url: str, tmp_path: Path):
    """A client's retry can put the same record in one batch twice: one row, and rollups
    that ``update_statistics()`` agrees with (the rating was counted twice)."""
    with ExecutionStore(store_url, state_dir=tmp_path / "s", flush_interval=60) as store:
        eid = store.store_execution(goal_text="g", success=True, duration_ms=5, model_tier="small")
        store.flush()
        twice = FeedbackRecord(execution_id=eid, rating=1)
        step = ToolExecutionRecord(
            execution_id=eid, tool_name="t", parameters={}, success=True, duration_ms=4
        )
        store.record(twice)
        store.record(twice)
        store.store_feedback(eid, rating=5)
        store.record(step)
        store.record(step)
        detail = store.get_execution(eid)
        assert len(detail.feedback) == 2 and len(detail.steps) == 1
        assert store.get_tier_performance(1)[0].avg_rating == 3.0
        assert store.get_tool_statistics("t").total_executions == 1
        store.update_statistics()
        assert store.get_tier_performance(1)[0].avg_rating == 3.0
        assert store.get_tool_statistics("t").total_executions == 1
        assert store.status().rejected_records == 0


def test_a_tool_call_is_stored_as_it_was_when_recorded(store_url: str, tmp_path: Path):
    """Parameters and results are the caller's objects: one changed after the call (by the
    next step of a plan, say) was stored as changed if the writer had not got to it yet."""
    with ExecutionStore(store_url, state_dir=tmp_path / "s", flush_interval=60) as store:
        eid = store.store_execution(goal_text="g", success=True, duration_ms=5)
        calls = []
        for how in ("hot path", "pydantic", "record"):
            parameters, result = {"filters": {"lang": "en"}}, [1, 2, 3]
            if how == "hot path":
                store.store_tool_execution(eid, "t", parameters, result, True, 1.0, step_id=how)
            elif how == "pydantic":  # a float attempt: pydantic coerces it
                store.store_tool_execution(eid, "t", parameters, result, True, 1.0, attempt=1.0)
            else:
                store.record(
                    ToolExecutionRecord(
                        execution_id=eid,
                        tool_name="t",
                        parameters=parameters,
                        result=result,
                        success=True,
                        duration_ms=1.0,
                    )
                )
            parameters["filters"]["lang"] = "fr"
            result.append(999)
            calls.append(how)
        store.flush()
        steps = store.get_execution(eid).steps
    assert len(steps) == len(calls) == 3
    assert all(s.parameters == {"filters": {"lang": "en"}} for s in steps)
    assert all(s.result == [1, 2, 3] for s in steps)


# Floats of 1e16 and more: PostgreSQL's JSONB read "1e+16" back as an integer.
BARE_VALUES = [
    1.0,
    -0.0,
    2**63,
    12345678901234567890,
    0.1,
    3,
    "1.0",
    True,
    1e16,
    -2.5e20,
    1e308,
    None,
]


def test_a_bare_number_result_or_state_value_comes_back_as_it_was(store: ExecutionStore):
    """SQLite gave the JSON columns numeric affinity: a result 1.0 came back as 1, 2**63
    and longer integers as floats (a tool's or a calculator's answer, changed on disk)."""
    eid = store.store_execution(goal_text="g", success=True, duration_ms=5)
    for index, value in enumerate(BARE_VALUES):
        store.store_tool_execution(eid, "t", {}, value, True, 1.0, step_id=f"s{index}")
        store.put_state("global", "", f"k{index}", value if value is not None else [])
    store.flush()
    results = {s.step_id: s.result for s in store.get_execution(eid).steps}
    got = [results[f"s{index}"] for index in range(len(BARE_VALUES))]
    assert [(type(v), v) for v in got] == [(type(v), v) for v in BARE_VALUES]
    values = {e.key: e.value for e in store.get_state_entries()}
    stored = [values[f"k{index}"] for index in range(len(BARE_VALUES) - 1)]
    assert [(type(v), v) for v in stored] == [(type(v), v) for v in BARE_VALUES[:-1]]


def test_a_runs_metadata_a_plan_and_routing_features_are_stored_as_given(
    store_url: str, tmp_path: Path
):
    """Their dicts are the caller's, nested objects and all (a run's output): one changed
    before the writer got to it was stored as changed."""
    with ExecutionStore(store_url, state_dir=tmp_path / "s", flush_interval=60) as store:
        metadata, plan, features = {"output": {"rows": [1]}}, {"steps": [1]}, {"words": ["a"]}
        eid = store.store_execution(goal_text="g", success=True, duration_ms=5, metadata=metadata)
        built = ExecutionRecord(goal_text="h", success=True, duration_ms=5, metadata=metadata)
        store.record(built)
        store.store_solution("p", plan=plan)
        store.store_routing_decision(eid, "fast", features=features)
        metadata["output"]["rows"].append(2)
        plan["steps"].append(2)
        features["words"].append("b")
        store.flush()
        assert store.get_execution(eid).metadata == {"output": {"rows": [1]}}
        assert store.get_execution(built.id).metadata == {"output": {"rows": [1]}}
        assert built.metadata["output"]["rows"] == [1, 2]  # the caller's record is its own
        assert store.get_solutions()[0].plan == {"steps": [1]}
        assert store.get_execution(eid).routing[0].features == {"words": ["a"]}


def test_close_drains_pending_writes(store_url: str, tmp_path: Path):
    store = ExecutionStore(store_url, state_dir=tmp_path / "s", flush_interval=60, batch_size=10**6)
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    for i in range(500):
        store.store_tool_execution(eid, "t", {"i": i}, i, True, 1)
    store.close()
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as again:
        assert len(again.get_execution(eid).steps) == 500


LIMIT = r"limit must be a positive integer up to [\d,]+"


def test_reads_refuse_nonsense_limits(store: ExecutionStore):
    with pytest.raises(ValueError, match=rf"{LIMIT}, got 0"):
        store.get_recent_executions(0)
    with pytest.raises(ValueError, match=rf"{LIMIT}, got -3"):
        store.get_top_tools(-3)
    with pytest.raises(ValueError, match="days must be a positive integer"):
        store.get_tier_performance(0)
    with pytest.raises(ValueError, match=rf"{LIMIT}, got True"):
        store.get_recent_executions(True)
    with pytest.raises(ValueError, match=r"days must be at most [\d,]+ \(back to the year 1\)"):
        store.get_tier_performance(10**6)
    with pytest.raises(ValueError, match="older_than goes back before the year 1"):
        store.prune(timedelta(days=10**6))
    # Past a 64-bit column: the same answer as at its edge, not a driver's error.
    for least in (2**63, 2**70):
        assert store.get_top_tools(min_executions=least) == []


def test_times_no_column_can_hold_are_refused_by_name(store: ExecutionStore):
    """9999-12-31 23:00 at UTC-5 is the year 10000 in UTC: a driver's OverflowError came
    out of state and job calls, where a read names its argument."""
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(InvalidRecordError, match="state expires_at: 9999-12-31T23:00:00-05:00"):
        store.put_state("global", "", "k", 1, expires_at=late)
    with pytest.raises(InvalidRecordError, match="now: 9999-12-31"):
        store.purge_expired_state(now=late)
    with pytest.raises(InvalidRecordError, match="job started_at: 9999-12-31"):
        store.store_job_run(
            "statistics", started_at=late, finished_at=late, success=True, report={}
        )
    assert store.get_state_entries(include_expired=True) == []


def test_routing_outcomes_are_read_whatever_their_number(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    """All the decisions' runs were asked for in one IN (...): PostgreSQL refuses more than
    65,535 parameters, and said the database could not be reached."""
    from dendrite.store import engine

    monkeypatch.setattr(engine, "IDS_PER_QUERY", 2)  # five decisions, three statements
    ids = [
        store.store_execution(goal_text=f"g{i}", success=i % 2 == 0, duration_ms=1)
        for i in range(5)
    ]
    for eid in ids:
        store.store_routing_decision(eid, "fast", router="tier")
    store.flush()
    outcomes = store.get_routing_outcomes(router="tier")
    assert sorted(o.outcome.id for o in outcomes) == sorted(ids)


def test_reads_refuse_filters_of_the_wrong_type_instead_of_matching_nothing(
    store: ExecutionStore,
):
    store.store_execution(goal_text="g", success=True, duration_ms=1, intent="research")
    store.store_tool_execution(new_id(), "t", {}, None, True, 1)
    assert len(store.get_recent_executions(5, success=True, intent="research")) == 1
    with pytest.raises(TypeError, match="success must be True or False, got str 'no'"):
        store.get_recent_executions(5, success="no")
    with pytest.raises(TypeError, match="intent must be a string, got int 5"):
        store.get_recent_executions(5, intent=5)
    with pytest.raises(TypeError, match="intent must be a string, got int 5"):
        store.get_success_rate(intent=5)
    with pytest.raises(TypeError, match="unknown filter 'succes'; filters are before, depth"):
        store.get_recent_executions(5, succes=True)
    with pytest.raises(TypeError, match="min_executions must be an integer, got str '3'"):
        store.get_top_tools(5, min_executions="3")
    for read in (store.get_feedback, store.get_recent_tool_outcomes):
        with pytest.raises(TypeError, match="since must be a datetime, got str '2020-01-01'"):
            read(since="2020-01-01")
    assert store.get_recent_tool_outcomes(datetime.now(UTC) - timedelta(hours=1))[0].attempts == 1
    # Each read's filters, not only get_recent_executions': on PostgreSQL these were raw
    # database errors, on SQLite empty answers.
    for read, name in (
        (lambda v: store.get_tool_statistics(v), "tool_name"),
        (lambda v: store.get_job_runs(job=v), "job"),
        (lambda v: store.get_routing_outcomes(router=v), "router"),
        (lambda v: store.get_solution_patterns(query_type=v), "query_type"),
        (lambda v: store.get_solutions(query_type=v), "query_type"),
        (lambda v: store.get_tool_creations(tool_name=v), "tool_name"),
        (lambda v: store.get_arm_outcomes(experiment=v), "experiment"),
    ):
        with pytest.raises(TypeError, match=f"{name} must be a string, got int 5"):
            read(5)
    for read in (store.get_solutions, store.get_tool_creations):
        with pytest.raises(ValueError, match="limit must be a positive integer"):
            read(limit=-1)
    with pytest.raises(ValueError, match="limit must be a positive integer up to"):
        store.get_recent_executions(2**63)
    with pytest.raises(ValueError, match="depth must be from 0 to 2,147,483,647, got -1"):
        store.get_recent_executions(5, depth=-1)


def test_a_text_filter_finds_what_was_stored_with_the_same_text(store: ExecutionStore):
    """Text is stored with U+FFFD for NUL; a filter holding the NUL the caller wrote found
    nothing on SQLite and was refused by PostgreSQL."""
    store.store_execution(intent="a\x00b", project="p\x00", success=True, duration_ms=1)
    store.store_tool_execution(new_id(), "t\x00", {}, None, True, 1)
    assert store.get_success_rate(intent="a\x00b").total == 1
    assert len(store.get_recent_executions(5, intent="a\x00b", project="p\x00")) == 1
    assert store.get_tool_statistics("t\x00").total_executions == 1


def test_in_memory_sqlite_is_refused_with_a_reason():
    with pytest.raises(ValueError, match="in-memory SQLite"):
        ExecutionStore("sqlite://")


def test_the_bulk_encoder_stores_what_sqlalchemy_would():
    """tool_executions rows bypass SQLAlchemy's bind processing: the encodings must agree."""
    dialect = sqlite.pysqlite.dialect()
    encoder = _tool_row_encoder(dialect)
    by_sqlalchemy = schema.tool_executions.c.started_at.type.dialect_impl(dialect).bind_processor(
        dialect
    )
    rng = random.Random(7)
    anywhen = [
        datetime(1, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(3 * 10**17))
        for _ in range(20_000)
    ]
    for value in (
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        datetime(1999, 12, 31, 23, 0, 0, 1, tzinfo=timezone(timedelta(hours=-5))),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5),  # naive: UTC
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        *anywhen,
        *(v.replace(microsecond=rng.choice([0, 1, 499999, 500000, 999999])) for v in anywhen),
        *(v.astimezone(timezone(timedelta(hours=rng.randint(-12, 12)))) for v in anywhen[:999]),
    ):
        assert encoder.timestamp(value) == by_sqlalchemy(value), value


T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
EID = "0190a4b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize(
    ("args", "fields"),
    [
        ((EID, "search", {"q": "x"}, {"hits": 3}, True, 12.5, None), {"started_at": T0}),
        ((EID, "search", None, None, False, 7, "timed out"), {"finished_at": T0, "attempt": 2}),
        (
            (EID, "sök", None, None, False, 7, "fel\x00 \udcff ü"),
            {"step_id": "s\x00", "finished_at": T0},
        ),
        (
            (EID, "t" * 200, {}, [1], False, 0, None),
            {
                "id": new_id(),
                "step_id": "s1",
                "fallback_of": "web",
                "error_type": ErrorType.VALIDATION,
                "started_at": datetime(2026, 5, 1, 14, 0),  # naive: taken as UTC
                "finished_at": datetime(2026, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5))),
            },
        ),
    ],
)
def test_the_hot_path_check_builds_what_pydantic_builds(args: tuple, fields: dict):
    """``store_tool_execution`` skips pydantic for exact types: the values must be the same."""
    fast = checked_call(*args, fields)
    assert fast is not None
    names = ("execution_id", "tool_name", "parameters", "result", "success", "duration_ms", "error")
    kwargs = dict(zip(names, args, strict=True))
    kwargs["parameters"] = kwargs["parameters"] if kwargs["parameters"] is not None else {}
    slow = ToolCall.of(ToolExecutionRecord(**(kwargs | fields | {"id": fast.id})))
    assert fast == slow
    assert [type(v) for v in fast] == [type(v) for v in slow]


@pytest.mark.parametrize(
    ("args", "fields"),
    [
        ((EID, "t", {}, None, 1, 5, None), {}),  # success: an int, coerced by pydantic
        ((EID, "t", {}, None, True, "5", None), {}),  # duration: a string
        ((EID, "t", {1: "a"}, None, True, 5, None), {}),  # a key pydantic refuses
        ((EID + "\n", "t", {}, None, True, 5, None), {}),
        ((EID.upper(), "t", {}, None, True, 5, None), {}),  # pydantic makes it canonical
        ((EID.replace("-", ""), "t", {}, None, True, 5, None), {}),
        ((EID, "t", {}, None, True, 5, None), {"step_id": "s" * 129}),
        ((EID, "t", {}, None, True, 5, None), {"started_at": datetime.max.replace(tzinfo=UTC)}),
        ((EID, "", {}, None, True, 5, None), {}),
        ((EID, "t", {}, None, True, float("nan"), None), {}),
        ((EID, "t", {}, None, True, 5, None), {"attempt": True}),
        ((EID, "t", {}, None, True, 5, None), {"started_at": "2026-05-01T12:00:00Z"}),
        ((EID, "t", {}, None, True, 5, None), {"unknown": 1}),
    ],
)
def test_the_hot_path_check_leaves_anything_unusual_to_pydantic(args: tuple, fields: dict):
    assert checked_call(*args, fields) is None


def test_coerced_and_refused_tool_values_behave_as_before(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    params = {"q": "before"}
    store.store_tool_execution(eid, "t", params, None, 1, "5", started_at="2026-05-01T12:00:00Z")
    params["q"] = "after"  # the record is a snapshot of the call
    with pytest.raises(InvalidRecordError, match="parameters"):
        store.store_tool_execution(eid, "t", {1: "a"}, None, True, 5)
    with pytest.raises(InvalidRecordError, match="unknown"):
        store.store_tool_execution(eid, "t", {}, None, True, 5, unknown=1)
    (step,) = store.get_execution(eid).steps
    assert (step.success, step.duration_ms, step.parameters) == (True, 5.0, {"q": "before"})
    assert step.started_at == T0


class _Text(str):
    pass


class _Float(float):
    pass


class _Moment(datetime):
    pass


PARENT = "0190a4b2-7c3d-7e4f-8a9b-0c1d2e3f4a5c"
FULL_RUN = {
    "goal_id": None,
    "goal_text": "compare the storage sections",
    "intent": "research",
    "success": False,
    "duration_ms": 2500.5,
    "metadata": {"steps": 5, "nested": {"k": [1, 2.5, "x"]}, "at": T0, "tags": {"b"}},
    "query_type": "comparison",
    "task_type": "analysis",
    "project": "docs",
    "session_id": "s-1",
    "parent_id": PARENT,
    "depth": 1,
    "error": "web_search failed: timed out after 30s",
    "started_at": T0,
    "model_tier": "fast",
    "pool": "local",
    "routing_confidence": 0.7,
    "complexity_score": -2.5,
    "confidence_score": 0.4,
    "estimated_tokens": 900,
    "tokens_used": 1100,
    "estimated_duration_ms": 2000.0,
    "cost_estimate": 0.01,
    "actual_cost": 0.0123,
    "quality_score": 0.3,
    "user_accepted": False,
    "user_rating": 5,
    "peak_memory_mb": 120.5,
    "cpu_time_ms": 80.25,
    "solution_summary": "search -> compare",
}
BARE_RUN = {
    "goal_id": None,
    "goal_text": "",
    "intent": None,
    "success": True,
    "duration_ms": 0.0,
    "metadata": {},
}


@pytest.mark.parametrize(
    "values",
    [
        FULL_RUN,
        FULL_RUN | {"id": EID, "status": ExecutionStatus.PARTIAL, "error_type": ErrorType.UNKNOWN},
        BARE_RUN,
        BARE_RUN | {"started_at": datetime(2026, 5, 1, 14, 0), "duration_ms": 7},  # naive, int
        BARE_RUN
        | {"finished_at": datetime(2026, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))},
        BARE_RUN | {"started_at": T0, "finished_at": T0 + timedelta(hours=1)},
        BARE_RUN | {"goal_id": "", "intent": "", "project": "", "task_type": "", "pool": ""},
        BARE_RUN | {"model_tier": "", "query_type": "", "session_id": "", "goal_id": "goal_9"},
        BARE_RUN | {"success": False, "error": None},  # no error text: unknown
        BARE_RUN | {"success": False, "error": "KeyError: 'items'", "status": None},
        BARE_RUN | {"goal_text": "ok\udcff\x00", "error": "bad\x00", "goal_id": "g\x00"},
        BARE_RUN | {"intent": "i" * 64, "goal_id": "g" * 64, "project": "p" * 255},
        BARE_RUN | {"duration_ms": 1e12, "routing_confidence": 1, "quality_score": 0.0},
        BARE_RUN | {"duration_ms": -0.0, "confidence_score": 0, "cost_estimate": 1e6},
        BARE_RUN | {"complexity_score": 2**70, "cpu_time_ms": 0, "tokens_used": 10**12},
        BARE_RUN | {"metadata": {"nan": float("nan"), "big": 1e16, "k\x00": "v\udcff"}},
        BARE_RUN | {"metadata": {"": None}, "depth": 2**31 - 1, "user_rating": 1},
    ],
)
def test_the_execution_hot_path_builds_what_pydantic_builds(values: dict, monkeypatch):
    """``store_execution`` skips pydantic for exact types: the record must be the one that
    validating builds, value for value and type for type, ``model_fields_set`` included."""
    monkeypatch.setattr("dendrite.telemetry.records.utcnow", lambda: T0)  # for a missing end
    fast = checked_execution(dict(values))
    assert fast is not None
    slow = _validated("execution", ExecutionRecord, **values | {"id": fast.id})
    assert fast == slow
    assert list(fast.__dict__.items()) == list(slow.__dict__.items())
    assert [type(v) for v in fast.__dict__.values()] == [type(v) for v in slow.__dict__.values()]
    given_id = {"id"} & values.keys()  # the id given to ``slow`` only to compare them
    assert fast.model_fields_set == slow.model_fields_set - {"id"} | given_id
    assert fast.model_dump(mode="json") == slow.model_dump(mode="json")
    assert (fast.__pydantic_extra__, fast.__pydantic_private__) == (None, None)


@pytest.mark.parametrize("dialect", [sqlite.pysqlite.dialect(), postgresql.psycopg.dialect()])
def test_the_executions_encoder_binds_what_sqlalchemy_would(dialect):
    """executions rows bypass SQLAlchemy's bind processing too, and skip its float
    processor (``float()``, for values that are floats already): the values must agree."""
    encoder = _encoders(dialect).executions
    now = datetime(2026, 5, 2, tzinfo=UTC)
    for values in (FULL_RUN, BARE_RUN, BARE_RUN | {"parent_id": PARENT, "user_accepted": True}):
        record = _validated("execution", ExecutionRecord, **values)
        row = dict(record.__dict__, recorded_at=now, goal_id="goal_1")
        expected = []
        for column in schema.executions.c:
            value = row[column.name]
            if isinstance(value, Enum):
                value = value.value  # as text, where SQLAlchemy hands the driver the member
            elif value is not None and isinstance(column.type.dialect_impl(dialect), JSON):
                value = serialize.dumps(value)  # the engine's ``json_serializer``
            elif value is not None:
                process = column.type.dialect_impl(dialect).bind_processor(dialect)
                value = process(value) if process else value
            expected.append(value)
        encoded = encoder.encode(row)
        assert list(encoded) == expected
        assert [type(v) for v in encoded] == [type(v) for v in expected]


def test_a_flat_dict_is_copied_as_json_would_read_it_back():
    """``to_jsonable`` copies a flat dict of plain values instead of encoding and reading it
    back (a run's metadata): the copy must be what the round trip gives, value and type."""
    rng = random.Random(3)
    values = [None, True, 0, -7, 2**63, 10**4400, 1.5, -0.0, 1e16, 5e-324, 1.7976931348623157e308]
    values += [float("nan"), float("-inf"), "", 'a\nb\x01"\\', "x\x00", "é", "\udcff", [1], {}]
    keys = ["", "k", "a\nb", "k\x00", "é", 1, None, "\\"]
    for _ in range(20_000):
        value = {rng.choice(keys): rng.choice(values) for _ in range(rng.randrange(1, 4))}
        fast, slow = serialize.to_jsonable(value), json.loads(serialize.dumps(value))
        assert fast is not value
        assert list(fast) == list(slow)
        assert [(type(v), repr(v)) for v in fast.values()] == [
            (type(v), repr(v)) for v in slow.values()
        ]


def test_the_execution_hot_path_keeps_metadata_as_it_was_when_recorded():
    metadata = {"plan": ["a"], "when": T0}
    fast = checked_execution(BARE_RUN | {"metadata": metadata})
    metadata["plan"].append("b")
    assert fast.metadata == {"plan": ["a"], "when": T0.isoformat()}
    assert checked_execution(BARE_RUN).metadata is not BARE_RUN["metadata"]


@pytest.mark.parametrize(
    "unusual",
    [
        {"success": 1},  # coerced by pydantic
        {"success": "true"},
        {"success": None},
        {"duration_ms": "5"},
        {"duration_ms": True},
        {"duration_ms": _Float(5.0)},
        {"duration_ms": float("nan")},
        {"duration_ms": float("inf")},
        {"duration_ms": -1.0},
        {"duration_ms": 1e12 + 1},
        {"duration_ms": None},
        {"complexity_score": float("inf")},
        {"complexity_score": float("-inf")},
        {"complexity_score": 10**400},
        {"peak_memory_mb": float("inf")},
        {"routing_confidence": 1.0000001},
        {"tokens_used": 5.0},
        {"tokens_used": True},
        {"tokens_used": -1},
        {"tokens_used": 10**12 + 1},
        {"depth": -1},
        {"depth": False},
        {"depth": None},
        {"user_rating": 6},
        {"user_accepted": 0},
        {"goal_id": "g" * 65},
        {"intent": "i" * 65},
        {"goal_text": None},
        {"goal_text": _Text("x")},
        {"intent": 5},
        {"id": EID.upper()},  # pydantic makes it canonical
        {"id": EID.replace("-", "")},
        {"id": EID + "\n"},
        {"id": None},
        {"parent_id": "not an id"},
        {"status": "succeeded"},
        {"error_type": "timeout"},
        {"started_at": "2026-05-01T12:00:00Z"},
        {"started_at": _Moment(2026, 5, 1)},
        {"started_at": datetime.max.replace(tzinfo=UTC), "duration_ms": 1.0},
        {"finished_at": datetime.min.replace(tzinfo=UTC), "duration_ms": 1.0},
        {"metadata": {1: "a"}},
        {"metadata": {_Text("k"): "a"}},
        {"metadata": dict},
        {"metadata": None},
        {"unknown": 1},
    ],
)
def test_the_execution_hot_path_leaves_anything_unusual_to_pydantic(unusual: dict):
    assert checked_execution(BARE_RUN | unusual) is None
    values = {k: v for k, v in BARE_RUN.items() if k != "success"}
    assert checked_execution(values) is None  # a required field missing


def test_coerced_and_refused_executions_behave_as_before(store: ExecutionStore):
    eid = store.store_execution(
        goal_text=_Text("g"), success=1, duration_ms="5", started_at="2026-05-01T12:00:00Z"
    )
    got = store.get_execution(eid)
    assert (got.goal_text, got.success, got.duration_ms, got.started_at) == ("g", True, 5.0, T0)
    for bad, field in (
        ({"duration_ms": float("nan")}, "duration_ms"),
        ({"complexity_score": float("inf")}, "complexity_score"),
        ({"goal_id": "g" * 65}, "goal_id"),
        ({"tokens_used": -1}, "tokens_used"),
        ({"started_at": datetime.max.replace(tzinfo=UTC)}, "duration_ms"),
        ({"metadata": {1: "a"}}, "metadata"),
        ({"unknown": 1}, "unknown"),
    ):
        with pytest.raises(InvalidRecordError, match=field):
            store.store_execution(**({"success": True, "duration_ms": 1.0} | bad))
    assert store.status().pending_writes == 0 and len(store.get_recent_executions(10)) == 1


def test_the_execution_hot_path_stores_the_row_validation_stores(store: ExecutionStore):
    """The same run recorded through ``store_execution`` (the hot path) and as a validated
    ``ExecutionRecord`` (``record()``) is stored as the same row, column for column."""
    assert checked_execution(dict(FULL_RUN)) is not None
    fast = store.store_execution(**FULL_RUN)
    slow = store.record(ExecutionRecord(**FULL_RUN | {"goal_id": "goal_2", "id": new_id()}))
    store.flush()
    ex = schema.executions
    with store.engine.connect() as conn:
        rows = {
            row.id: row._asdict()
            for row in conn.execute(select(ex).where(ex.c.id.in_([fast, slow])))
        }
    fast_row, slow_row = rows[fast], rows[slow]
    for row in (fast_row, slow_row):
        row.pop("id"), row.pop("goal_id"), row.pop("recorded_at")
    assert fast_row == slow_row
    assert [type(v) for v in fast_row.values()] == [type(v) for v in slow_row.values()]


def test_text_no_backend_stores_is_kept_with_replacement_characters(store: ExecutionStore):
    """NUL (PostgreSQL refuses it in text and jsonb) and lone surrogates (no UTF-8 encoder
    takes them; ``surrogateescape`` leaves them) become U+FFFD instead of losing the record
    in the background, in text columns and in JSON alike, on both backends."""
    binary = b"ok\xff\x00".decode("utf-8", "surrogateescape")  # 'ok\udcff\x00'
    eid = store.store_execution(
        goal_text=f"goal {binary}", success=False, duration_ms=1, error="bad\x00", metadata={}
    )
    for i in range(20):
        store.store_tool_execution(
            eid,
            "t",
            {"q": binary, "k\x00": 1},
            {"out": binary, "emoji": "\U0001f600", "text": "\\u0000 is how JSON writes NUL"},
            i != 7,
            1,
            error=binary if i == 7 else None,
        )
    store.store_feedback(eid, rating=2, feedback_text="see \x00")
    detail = store.get_execution(eid)
    assert store.status().rejected_records == 0 and len(detail.steps) == 20
    assert detail.goal_text == "goal ok\ufffd\ufffd" and detail.error == "bad\ufffd"
    step = detail.steps[7]
    assert step.error == "ok\ufffd\ufffd"
    assert step.parameters == {"q": "ok\ufffd\ufffd", "k\ufffd": 1}
    assert step.result == {
        "out": "ok\ufffd\ufffd",
        "emoji": "\U0001f600",
        "text": "\\u0000 is how JSON writes NUL",
    }
    assert detail.feedback[0].feedback_text == "see \ufffd"
    assert store.get_tool_statistics("t").total_executions == 20


def test_the_writer_checkpoints_sqlites_wal_when_idle(tmp_path: Path):
    """Commits leave pages in the WAL (autocheckpoint is at ~40 MB); an idle writer copies
    them into the database file, which is where the file's growth shows."""
    db = tmp_path / "history.db"
    with ExecutionStore(f"sqlite:///{db}", state_dir=tmp_path / "s", flush_interval=1.0) as st:
        eid = st.store_execution(goal_text="g")
        for i in range(3000):
            st.store_tool_execution(eid, f"tool_{i % 7}", {"i": i}, "x" * 200, True, 1.0)
        st.flush()
        before = db.stat().st_size
        assert Path(f"{db}-wal").stat().st_size > 600_000  # the rows are in the WAL
        deadline = time.monotonic() + 10
        while db.stat().st_size < before + 600_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert db.stat().st_size > before + 600_000
        assert len(st.get_execution(eid).steps) == 3000


def test_postgresql_statements_are_planned_for_the_history_as_it_is_now(tmp_path: Path):
    """No server-side prepared statements: a plan cached while the history was small (the
    writer's ``id IN (...)`` existence check as a full scan) must not outlive it."""
    with (
        pg_database() as url,
        ExecutionStore(url, state_dir=tmp_path / "s") as st,
        st.engine.connect() as conn,
    ):
        for _ in range(10):  # psycopg would prepare a statement on its fifth run
            conn.execute(
                select(schema.executions.c.id).where(schema.executions.c.id.in_([new_id()]))
            )
        assert conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar() == 0


def test_every_spelling_of_an_id_names_the_same_rows(store: ExecutionStore):
    """Upper case and hyphen-less ids are stored canonically, so a run's rows join on both
    backends and feedback given with any spelling reaches its execution."""
    eid = store.store_execution(
        id=EID.upper(), goal_text="g", success=True, duration_ms=1, parent_id=EID.replace("-", "")
    )
    assert eid == EID
    store.store_tool_execution(EID.upper(), "t", {}, None, True, 1)
    store.store_tool_execution(EID.replace("-", ""), "t", {}, None, True, 1)
    store.store_feedback(EID.upper(), rating=5)
    detail = store.get_execution(EID.upper())
    assert detail is not None and detail.id == EID and detail.parent_id == EID
    assert len(detail.steps) == 2 and [f.rating for f in detail.feedback] == [5]
    assert store.get_execution(EID).user_rating == 5
    assert store.status().rejected_records == 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("duration_ms", float("inf"), "finite number"),
        ("duration_ms", 1e17, "less than or equal to 1000000000000"),
        ("actual_cost", float("inf"), "finite number"),
        ("actual_cost", 1e7, "less than or equal to 1000000"),
        ("tokens_used", 2**70, "less than or equal to 1000000000000"),
        ("intent", "i" * 65, "at most 64 characters"),
        ("model_tier", "m" * 65, "at most 64 characters"),
        ("session_id", "s" * 129, "at most 128 characters"),
    ],
)
def test_values_no_column_can_hold_are_refused_at_the_call(
    store: ExecutionStore, field: str, value, message: str
):
    kwargs = {"goal_text": "g", "success": True, "duration_ms": 1.0, field: value}
    with pytest.raises(InvalidRecordError, match=message):
        store.store_execution(**kwargs)
    assert store.get_recent_executions(10) == []


@pytest.mark.parametrize("attempt", [2**31, 2**70])
def test_an_attempt_no_column_can_hold_is_refused_at_the_call(store: ExecutionStore, attempt):
    """The hand-checked path let 2**31 through: stored on SQLite, refused in the
    background by PostgreSQL's integer column."""
    with pytest.raises(InvalidRecordError, match="less than or equal to 2147483647"):
        store.store_tool_execution(EID, "t", {}, None, True, 1.0, attempt=attempt)
    store.store_execution(id=EID, goal_id="", success=True, duration_ms=1.0)
    store.store_execution(goal_id="", success=True, duration_ms=1.0)
    assert sorted(e.goal_id for e in store.get_recent_executions(10)) == ["goal_1", "goal_2"]
    assert store.get_execution(EID).steps == []
    assert store.status().rejected_records == 0


def test_a_duration_that_leaves_the_calendar_is_refused_at_the_call(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    late = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    with pytest.raises(InvalidRecordError, match="outside the years 1 to 9999"):
        store.store_tool_execution(eid, "t", {}, None, True, 1e10, started_at=late)
    with pytest.raises(InvalidRecordError, match="finite number"):
        store.store_tool_execution(eid, "t", {}, None, True, float("inf"))
    with pytest.raises(InvalidRecordError, match="at most 128 characters"):
        store.store_tool_execution(eid, "t", {}, None, True, 1, step_id="s" * 129)
    assert store.get_execution(eid).steps == []


def test_a_moment_outside_the_utc_calendar_is_refused_by_name(store: ExecutionStore):
    """9999-12-31 23:00 at UTC-5 is the year 10000 in UTC: refused where it is given, naming
    it, not an OverflowError at the call nor a record refused in the background."""
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    early = datetime(1, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=5)))
    outside = "outside the years 1 to 9999 in UTC"
    with pytest.raises(InvalidRecordError, match=f"started_at: .*{outside}"):
        store.store_execution(goal_text="x", success=True, duration_ms=1, started_at=late)
    with pytest.raises(InvalidRecordError, match=f"started_at: .*{outside}"):
        store.store_tool_execution(eid, "t", {}, None, True, 1.0, started_at=late)
    with pytest.raises(InvalidRecordError, match=outside):
        store.store_routing_decision(eid, "fast", created_at=late)
    with pytest.raises(ValueError, match=f"since: .*{outside}"):
        store.get_recent_executions(since=early)
    with pytest.raises(ValueError, match=f"since: .*{outside}"):
        store.get_success_rate(since=late)
    store.flush()
    assert store.status().rejected_records == 0
    assert [r.id for r in store.get_recent_executions(10)] == [eid]


def test_readable_goal_ids_never_collide_with_ones_given_by_the_caller(store: ExecutionStore):
    store.store_execution(goal_id="goal_2", goal_text="imported", success=True, duration_ms=1)
    store.store_execution(goal_id="goal_x", goal_text="named", success=True, duration_ms=1)
    auto = [
        store.store_execution(goal_text=f"new {n}", success=True, duration_ms=1) for n in (1, 2)
    ]
    store.flush()
    assert [store.get_execution(eid).goal_id for eid in auto] == ["goal_3", "goal_4"]
    store.store_execution(goal_id="goal_10", goal_text="imported", success=True, duration_ms=1)
    later = store.store_execution(goal_text="new 3", success=True, duration_ms=1)
    assert store.get_execution(later).goal_id == "goal_11"
    assert store.status().rejected_records == 0


def test_times_given_to_reads_and_prune_are_checked(store: ExecutionStore):
    eid = store.store_execution(goal_text="g", success=True, duration_ms=1)
    with pytest.raises(TypeError, match="since must be a datetime, got str '2024-01-01'"):
        store.get_recent_executions(since="2024-01-01")
    with pytest.raises(TypeError, match="since must be a datetime, got date"):
        store.get_success_rate(since=T0.date())
    with pytest.raises(TypeError, match=r"older_than must be a timedelta \(an age\) or a datetime"):
        store.prune(30)
    with pytest.raises(ValueError, match="older_than must not be negative"):
        store.prune(timedelta(days=-1))
    naive_past = datetime(2000, 1, 1)  # naive: taken as UTC
    assert [r.id for r in store.get_recent_executions(since=naive_past)] == [eid]
    assert store.get_success_rate(since=naive_past).total == 1
    assert store.prune(naive_past).executions == 0
    assert store.get_execution(eid) is not None


def test_a_closed_store_refuses_reads_and_keeps_late_writes(store_url: str, tmp_path: Path):
    """Reads after close() answered from a pool opened again on the disposed engine, and
    missed what had been recorded since; late writes wait in the journal."""
    store = ExecutionStore(store_url, state_dir=tmp_path / "s")
    store.store_execution(goal_text="g", success=True, duration_ms=1)
    store.close()
    store.store_execution(goal_text="late", success=True, duration_ms=1)
    for call in (
        store.get_success_rate,
        store.update_statistics,
        lambda: store.get_recent_executions(5),
        lambda: store.store_feedback(EID, rating=5),
    ):
        with pytest.raises(StoreUnavailableError, match="is closed"):
            call()
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as again:
        assert again.get_success_rate().total == 2


def test_bookkeeping_arguments_are_checked_by_name(store: ExecutionStore):
    """A string of validation errors was stored letter by letter, success="no" as True,
    and None for a list, a unit or a time was a bare TypeError."""
    store.store_tool_creation("t", "def t(): ...", False, validation_errors="syntax error")
    store.store_tool_creation("u", "def u(): ...", True, validation_errors=None)
    store.store_routing_decision(EID, "small", candidates=None)
    assert [c.validation_errors for c in store.get_tool_creations()] == [[], ["syntax error"]]
    with pytest.raises(InvalidRecordError, match="validation_errors must be a list, got int 3"):
        store.store_tool_creation("t", "code", False, validation_errors=3)
    now = datetime.now(UTC)
    run = {"started_at": now, "finished_at": now, "success": True, "report": {}}
    for change, message in (
        ({"success": "no"}, "job success must be True or False, got 'no'"),
        ({"started_at": None}, "job started_at must be a datetime, got None"),
        ({"finished_at": now - timedelta(hours=1)}, "job finished_at .* is before its started_at"),
        ({"error": 5}, "job error must be a string or None, got 5"),
    ):
        with pytest.raises(InvalidRecordError, match=message):
            store.store_job_run("statistics", **(run | change))
    with pytest.raises(InvalidRecordError, match="unit must be a non-empty string, got None"):
        store.store_assignment("exp", EID, "a", None)
    stored = store.store_job_run("job\x00", **(run | {"error": "bad\x00"}))
    assert (stored.job, stored.error) == ("job\ufffd", "bad\ufffd")
    store.store_execution(id=EID, success=True, duration_ms=1)
    store.store_assignment("exp\x00", EID, "arm\x00", "u\x00" * 200)
    (outcome,) = store.get_arm_outcomes("exp\x00")
    assert (outcome.experiment, outcome.arm) == ("exp\ufffd", "arm\ufffd")


def test_reads_cut_by_a_limit_among_records_of_one_moment_answer_alike(store: ExecutionStore):
    """Decisions, solutions, tool creations and job runs were ordered by their time alone:
    among records of the same moment (a batch imported, a clock's coarse tick) a limit
    kept whichever the database's sort left first, which differed between the backends
    and from one query plan to the next. Ties go by id now, newest (largest) first, and
    patterns tied in count by their query type."""
    moment = datetime(2026, 11, 20, 12, tzinfo=UTC)
    ids = [str(uuid.UUID(int=i)) for i in range(1, 9)]
    eid = store.store_execution(goal_text="g", success=True)
    for id_ in ids:
        store.record(RoutingDecision(id=id_, execution_id=eid, chosen="c", created_at=moment))
        store.record(
            SolutionRecord(
                id=id_, pattern="p", query_type=None if id_ < ids[4] else "q", created_at=moment
            )
        )
        store.record(
            ToolCreationEvent(
                id=id_, tool_name="t", generated_code="", validation_passed=True, created_at=moment
            )
        )
        store.store_job_run("j", started_at=moment, finished_at=moment, success=True, report={})
    newest = ids[::-1][:3]
    assert [o.decision.id for o in store.get_routing_outcomes(limit=3)] == newest
    assert [s.id for s in store.get_solutions(limit=3)] == newest
    assert [c.id for c in store.get_tool_creations(limit=3)] == newest
    runs = store.get_job_runs(limit=8)
    assert [r.id for r in store.get_job_runs(limit=3)] == sorted(
        (r.id for r in runs), reverse=True
    )[:3]
    assert [(p.pattern, p.query_type) for p in store.get_solution_patterns()] == [
        ("p", None),
        ("p", "q"),
    ]


def test_feedback_pages_on_from_an_id_in_any_spelling(store: ExecutionStore):
    """``after_id`` went to SQL as given: SQLite keeps ids as lower-case text, so one in
    upper case came before every row of its moment and the next page began again with the
    row it was meant to follow; one that is no UUID answered a page there and a raw
    database error on PostgreSQL. Ids are accepted in any spelling, as everywhere else."""
    eid = store.store_execution(goal_text="g", success=True)
    for rating in (1, 2, 3):
        store.record(FeedbackRecord(execution_id=eid, rating=rating))
    store.flush()
    first = store.get_feedback(limit=1)[0]
    expected = [f.id for f in store.get_feedback(first.recorded_at, after_id=first.id)]
    assert len(expected) == 2
    for spelled in (first.id.upper(), first.id.replace("-", "")):
        assert [f.id for f in store.get_feedback(first.recorded_at, after_id=spelled)] == expected
    for wrong in ("nope", 5):
        with pytest.raises(ValueError, match="after_id must be a feedback id"):
            store.get_feedback(first.recorded_at, after_id=wrong)


def test_a_postgresql_database_set_to_other_output_formats_reads_what_was_written(tmp_path: Path):
    """psycopg reads timestamps only in the ISO DateStyle, and floats as PostgreSQL writes
    them out: on a database set to ``DateStyle = 'SQL, DMY'`` every read of a time raised
    NotImplementedError, and with ``extra_float_digits = 0`` floats came back rounded to
    15 digits, so a run's duration and cost read other than written and a rebuild of the
    statistics disagreed with the rollups. The store sets both for its own sessions."""
    with pg_database() as url:
        database = make_url(url).database
        pg_admin(f"ALTER DATABASE \"{database}\" SET DateStyle TO 'SQL, DMY'")
        pg_admin(f'ALTER DATABASE "{database}" SET extra_float_digits TO 0')
        with ExecutionStore(url, state_dir=tmp_path / "s") as store:
            started = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=UTC)
            duration, cost = 5.000000000000001e-4, 0.30000000000000004  # 0.5 µs and a bit
            eid = store.store_execution(
                goal_text="g",
                success=True,
                duration_ms=duration,
                actual_cost=cost,
                started_at=started,
                model_tier="m",
            )
            store.store_tool_execution(eid, "t", {}, None, True, duration, started_at=started)
            run = store.get_execution(eid)
            assert (run.started_at, run.duration_ms, run.actual_cost) == (started, duration, cost)
            assert run.steps[0].duration_ms == duration
            before = store.get_tool_statistics("t"), store.get_tier_performance(days=3650)
            store.update_statistics()
            assert (store.get_tool_statistics("t"), store.get_tier_performance(days=3650)) == before
