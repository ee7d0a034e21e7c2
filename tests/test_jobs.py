"""Learning jobs and A/B experiments, on a SQLite file and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from dendrite import Orchestrator
from dendrite import orchestrator as orchestrator_module
from dendrite.cli import app
from dendrite.learning import jobs as jobs_module
from dendrite.learning.experiments import (
    Experiment,
    _compare_success,
    clustered_t,
    fisher_exact,
    report,
    two_proportion_z,
    welch_t,
    wilson,
)
from dendrite.learning.jobs import (
    LIFECYCLE_KEY,
    LOW_PERFORMERS_KEY,
    JobContext,
    JobScheduler,
    JobSettings,
    UnknownJobError,
    run_job,
)
from dendrite.learning.policies import QualityPolicies, QualityPolicy
from dendrite.planning import SemanticPlanner, TemplatePlanner
from dendrite.planning.plan import Plan, Step
from dendrite.state import StateManager
from dendrite.store import ExecutionStore, InvalidRecordError
from dendrite.store.bookkeeping import ArmOutcomes
from dendrite.telemetry.records import FeedbackRecord
from dendrite.tools import Reliability, ToolRegistry, ToolStatus

from .conftest import wait_until_drained

runner = CliRunner()
LONG_AGO = datetime.now(UTC) - timedelta(days=60)


def attempts(store: ExecutionStore, tool: str, ok: int, failed: int, at: datetime | None = None):
    execution = store.store_execution(goal_text=f"use {tool}", success=True, duration_ms=1.0)
    for i in range(ok + failed):
        fields = {"started_at": at} if at else {}
        store.store_tool_execution(execution, tool, {}, None, i < ok, 2.0, **fields)


# -- statistics used by experiment reports --------------------------------------------------


def test_test_statistics_match_published_values():
    assert fisher_exact(1, 9, 11, 3) == pytest.approx(0.002759, abs=1e-6)
    assert fisher_exact(3, 1, 1, 3) == pytest.approx(0.485714, abs=1e-6)
    assert two_proportion_z(45, 100, 60, 100) == pytest.approx(0.03367, abs=1e-4)
    # t = 2.0 with equal variances and n = 6 each: df = 10, two-sided p = 0.07339
    assert welch_t(2.0, 3.0, 6, 0.0, 3.0, 6) == pytest.approx(0.07339, abs=1e-4)
    assert welch_t(5.0, 0.0, 4, 5.0, 0.0, 4) == 1.0
    low, high = wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-3) and high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0) is None


def test_assignment_is_deterministic_and_follows_the_weights():
    arms = {"semantic": SemanticPlanner(), "template": TemplatePlanner()}
    experiment = Experiment("planners", arms)
    again = Experiment("planners", arms)
    units = [f"session:{i}" for i in range(4000)]
    assigned = [experiment.assign(u) for u in units]
    assert assigned == [again.assign(u) for u in units]
    assert 0.46 < assigned.count("semantic") / len(units) < 0.54
    skewed = Experiment("planners", arms, weights={"semantic": 9, "template": 1})
    share = sum(skewed.assign(u) == "semantic" for u in units) / len(units)
    assert 0.87 < share < 0.93
    assert Experiment("other", arms).assign("session:1") in arms
    assert experiment.unit_of("Convert  5 KM", None, "e") == "goal:convert 5 km"
    assert experiment.unit_of("x", "s1", "e") == "session:s1"
    assert Experiment("p", arms, unit="execution").unit_of("x", "s1", "e9") == "e9"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "x", "arms": {"a": SemanticPlanner()}}, "at least two arms"),
        ({"name": "", "arms": {"a": SemanticPlanner(), "b": SemanticPlanner()}}, "1-128"),
        (
            {
                "name": "x",
                "arms": {"a": SemanticPlanner(), "b": SemanticPlanner()},
                "weights": {"c": 1},
            },
            "unknown arm",
        ),
        (
            {
                "name": "x",
                "arms": {"a": SemanticPlanner(), "b": SemanticPlanner()},
                "weights": {"a": 0, "b": 0},
            },
            "not all 0",
        ),
        (
            {"name": "x", "arms": {"a": SemanticPlanner(), "b": SemanticPlanner()}, "unit": "user"},
            "unit must be",
        ),
    ],
)
def test_bad_experiments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Experiment(**kwargs)


class _SyncPlanner:
    name = "sync"

    def plan(self, goal, registry, context):  # a plain function: the orchestrator awaits plans
        return None


@pytest.mark.parametrize(
    ("arms", "weights", "error", "message"),
    [
        (["dendrite", "semantic"], None, TypeError, "arms must map each arm's name"),
        ({"a": "dendrite", "b": 42}, None, TypeError, "arm 'b' must be a planner's name"),
        ({"a": "dendrite", "b": _SyncPlanner()}, None, TypeError, "async plan method"),
        ({"a": "dendrite", 7: "semantic"}, None, TypeError, "arm names must be strings"),
        (
            {"a": "dendrite", "b": "semantic"},
            {"a": 1},
            ValueError,
            r"no weight for arm\(s\) \['b'\]",
        ),
        ({"a": "dendrite", "b": "semantic"}, {"a": "1", "b": 1}, TypeError, "weight of arm 'a'"),
        ({"a": "dendrite", "b": "semantic"}, {"a": True, "b": 1}, TypeError, "weight of arm 'a'"),
        ({"a": "dendrite", "b": "semantic"}, {"a": float("nan"), "b": 1}, ValueError, "arm 'a'"),
        ({"a": "dendrite", "b": "semantic"}, {"a": -1, "b": 1}, ValueError, "arm 'a'"),
        ({"a": "dendrite", "b": "semantic"}, [("a", 1), ("b", 1)], TypeError, "weights must map"),
    ],
)
def test_malformed_experiment_specs_are_refused_naming_what_is_wrong(arms, weights, error, message):
    """A weight left out sent every unit to the other arm, an arm that was not a planner
    failed each run assigned to it, and a string weight or a list of arms gave a bare
    TypeError or AttributeError: each is now refused when the experiment is made."""
    with pytest.raises(error, match=message):
        Experiment("spec", arms, weights=weights)


def test_an_arm_given_no_traffic_is_said_with_a_zero_weight():
    arms = {"a": "dendrite", "b": SemanticPlanner()}
    experiment = Experiment("spec", arms, weights={"a": 0, "b": 2.5})
    assert {experiment.assign(f"session:{i}") for i in range(200)} == {"b"}


def test_experiment_report_from_the_store(store: ExecutionStore):
    for arm, successes, total, ms in (("a", 90, 100, 10.0), ("b", 60, 100, 30.0)):
        for i in range(total):
            execution = store.store_execution(
                goal_text=f"g{i}", success=i < successes, duration_ms=ms + i % 3
            )
            store.store_assignment("ab", execution, arm, f"session:{arm}{i}")
    for arm in "ab":  # a run stopped before its end (a closed stream) compares nothing
        stopped = store.store_execution(
            goal_text="s", success=False, status="cancelled", duration_ms=1.0
        )
        store.store_assignment("ab", stopped, arm, f"session:{arm}-stopped")
    few = store.store_execution(goal_text="x", success=True, duration_ms=1.0)
    store.store_assignment("small", few, "a", "u")
    store.store_assignment("small", few, "b", "u")  # a second assignment of a run is ignored
    wait_until_drained(store)
    (found,) = report(store, "ab")
    control, other = found.arms
    assert (control.arm, control.executions, control.successes) == ("a", 100, 90)
    assert (other.executions, other.successes) == (100, 60)
    assert other.success_rate == 0.6 and other.success_test == "z"
    assert other.p_success < 0.001 and other.p_duration < 0.001
    assert "b succeeds worse than a (60.0% vs 90.0%" in found.verdict
    (tiny,) = report(store, "small")
    assert [a.arm for a in tiny.arms] == ["a"] and "only arm" in tiny.verdict
    assert [r.experiment for r in report(store)] == ["ab", "small"]
    with pytest.raises(InvalidRecordError, match="execution id must be a UUID"):
        store.store_assignment("ab", "nope", "a", "u")
    with pytest.raises(InvalidRecordError, match="arm must be a non-empty string"):
        store.store_assignment("ab", few, "", "u")


def test_runs_of_one_session_are_tested_as_a_cluster(store: ExecutionStore):
    """Sessions are assigned whole, and a session's goals succeed or fail together more
    than strangers' do: the store sums per unit, and the report tests over units."""
    sessions = {
        "a": [(4, 4), (4, 2), (2, 0)],  # (runs, successes) of each session
        "b": [(3, 3), (3, 3), (4, 1)],
    }
    for arm, units in sessions.items():
        for number, (runs, successes) in enumerate(units):
            for i in range(runs):
                execution = store.store_execution(
                    goal_text=f"g{i}", success=i < successes, duration_ms=5.0
                )
                store.store_assignment("clustered", execution, arm, f"session:{arm}{number}")
    wait_until_drained(store)
    rows = {r.arm: r for r in store.get_arm_outcomes("clustered")}
    a = rows["a"]
    assert (a.executions, a.successes, a.units) == (10, 6, 3)
    assert (a.unit_success_sq, a.unit_cross, a.unit_runs_sq) == (20, 24, 36)
    (found,) = report(store, "clustered", control="a")
    other = found.arms[1]
    assert other.success_test == "cluster" and 0.05 < other.p_success < 1


def test_units_that_all_agree_are_not_taken_as_certainty():
    """Three sessions of 10 runs at 100% against three at 90%: the units' spread is zero,
    which called the difference certain (p 1e-28); the run-level test answers instead."""

    def arm(name: str, per_session: int) -> ArmOutcomes:
        return _arm(name, [(10, per_session)] * 3)

    p, test = _compare_success(arm("control", 10), arm("other", 9))
    assert test == "fisher" and p == pytest.approx(0.237, abs=1e-3)


def test_one_unit_per_arm_is_not_enough_to_test(tmp_path):
    """An A/A experiment by session with one user per arm: one user's goals all worked, the
    other's half did. Tested run by run, that was "B succeeds worse than A, p=0.0003",
    a difference between two users called one between the arms."""
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        for arm, successes in (("A", 20), ("B", 10)):
            for i in range(20):
                execution = store.store_execution(
                    goal_text=f"g{i}", success=i < successes, duration_ms=5.0
                )
                store.store_assignment("aa", execution, arm, f"session:{arm}")
        wait_until_drained(store)
        (found,) = report(store, "aa", control="A")
    other = found.arms[1]
    assert (other.arm, other.executions, other.success_rate) == ("B", 20, 0.5)
    assert other.p_success is None and other.success_test is None
    assert found.verdict == (
        "B vs A: not enough units to test (B has 1, A 1; a unit's runs are not "
        "independent, so each arm needs at least 2)"
    )


def test_single_run_units_are_still_tested_run_by_run():
    """Every unit ran once: the runs are independent, and one run per arm is enough for
    Fisher's exact test to answer (with no difference found)."""
    p, test = _compare_success(_arm("control", [(1, 1)]), _arm("other", [(1, 0)]))
    assert test == "fisher" and p == 1.0


def _arm(name: str, units: list[tuple[int, int]]) -> ArmOutcomes:
    """An arm's sums from its units' (runs, successes)."""
    return ArmOutcomes(
        experiment="x",
        arm=name,
        executions=sum(m for m, _ in units),
        successes=sum(y for _, y in units),
        duration_sum_ms=0.0,
        duration_sq_sum=0.0,
        rated=0,
        rating_sum=0,
        first_at=None,
        last_at=None,
        units=len(units),
        unit_success_sq=sum(y * y for _, y in units),
        unit_cross=sum(y * m for m, y in units),
        unit_runs_sq=sum(m * m for m, _ in units),
    )


def _clustered_arm(rng: random.Random, sessions: int, runs: int, shift: float) -> ArmOutcomes:
    units = []
    for _ in range(sessions):
        rate = min(1.0, rng.betavariate(0.5, 0.5) + shift)  # some sessions' goals are harder
        units.append((runs, sum(rng.random() < rate for _ in range(runs))))
    return _arm(f"shift {shift}", units)


def test_the_clustered_test_holds_its_false_positive_rate():
    """A/A experiments of 20 sessions of 10 runs: tested run by run, 41% were called
    significant at 0.05; over units, about the 5% a test at 0.05 should."""
    rng = random.Random(7)
    trials = 1000

    def called(shift: float) -> float:
        hits = 0
        for _ in range(trials):
            p = clustered_t(_clustered_arm(rng, 20, 10, 0.0), _clustered_arm(rng, 20, 10, shift))
            assert p is not None
            hits += p < 0.05
        return hits / trials

    assert 0.03 < called(0.0) < 0.07
    assert called(0.3) > 0.4  # and it still finds a difference that is there


def test_an_experiment_splits_goals_between_planners_end_to_end(store: ExecutionStore):
    registry = ToolRegistry()

    def convert_km_to_miles(value: float) -> float:
        """Convert a distance in km to miles."""
        return round(value * 0.621371, 3)

    registry.register_function(convert_km_to_miles)
    experiment = Experiment(
        "planners", {"semantic": SemanticPlanner(), "template": TemplatePlanner()}
    )
    with Orchestrator(registry, store=store, llm=None, experiment=experiment) as orch:
        results = [
            orch.process(f"convert {n} km to miles", session_id=f"user-{n}") for n in range(12)
        ]
        repeat = orch.process("convert 3 km to miles", session_id="user-3")
    assert {r.arm for r in results} == {"semantic", "template"}
    assert repeat.arm == results[3].arm
    wait_until_drained(store)
    (found,) = report(store, "planners")
    assert sum(a.executions for a in found.arms) == 13
    detail = store.get_execution(results[0].execution_id)
    assert detail.metadata["experiment"] == {"name": "planners", "arm": results[0].arm}
    assert "assigned by hashing the session" in detail.metadata["why"]["experiment"]
    result = runner.invoke(app, ["stats", "experiments", "--json", "--url", store.url])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["experiment"] == "planners"
    args = ["stats", "experiments", "--json", "--url", store.url, "--experiment", "planners"]
    for arm in ("semantic", "template"):
        chosen = runner.invoke(app, [*args, "--control", arm])
        assert chosen.exit_code == 0 and json.loads(chosen.output)[0]["control"] == arm
    unknown = runner.invoke(app, [*args, "--control", "llm"])
    assert unknown.exit_code == 2 and "no arm 'llm' with recorded runs" in unknown.output
    nope = runner.invoke(app, ["stats", "experiments", "--experiment", "nope", "--url", store.url])
    assert nope.exit_code == 2 and "no experiment 'nope' recorded" in nope.output


def test_a_run_started_inside_another_is_no_unit_of_the_experiment(store: ExecutionStore):
    """Each nested run got an arm of its own and was counted in the report."""
    registry = ToolRegistry()
    holder: dict[str, Orchestrator] = {}

    def convert_km_to_miles(value: float) -> float:
        """Convert a distance in km to miles."""
        return round(value * 0.621371, 3)

    def convert_twice(value: float) -> float:
        """Convert a distance twice over by asking for a conversion of it."""
        return holder["o"].process(f"convert {value} km to miles").output * 2

    registry.register_function(convert_km_to_miles)
    registry.register_function(convert_twice)
    experiment = Experiment(
        "planners", {"semantic": SemanticPlanner(), "template": TemplatePlanner()}
    )
    with Orchestrator(registry, store=store, llm=None, experiment=experiment) as orch:
        holder["o"] = orch
        outer = orch.process(
            Plan(goal="g", steps=[Step(id="t", tool="convert_twice", params={"value": 5})])
        )
        plain = orch.process("convert 5 km to miles")
    assert outer.success and outer.arm is None  # a plan given whole: no arm either
    wait_until_drained(store)
    (nested,) = store.get_recent_executions(10, depth=1)
    assert nested.metadata["experiment"] is None
    (found,) = report(store, "planners")
    assert sum(a.executions for a in found.arms) == 1 and plain.arm is not None


def test_arms_named_by_planner_learn_as_the_orchestrators_own_planner_does(
    store: ExecutionStore,
):
    """Planner objects given to arms are used as they are (a bare DendritePlanner has no
    ranker and no plan memory); arms given by name get the orchestrator's, so a broken
    first choice stops being tried under an experiment as it does without one."""
    registry = ToolRegistry()

    def weather_lookup(zip: int) -> str:
        """Get the weather forecast for a zip code."""
        return f"sunny at {zip}"

    def zip_weather(zip: int) -> str:
        """Weather forecast by postal zip code."""
        raise ValueError("broken")

    registry.register_function(weather_lookup)
    registry.register_function(zip_weather)
    arms = {"dendrite": "dendrite", "semantic": "semantic"}
    experiment = Experiment("named", arms, unit="execution")
    with Orchestrator(registry, store=store, llm=None, experiment=experiment) as orch:
        runs = [orch.process(f"weather forecast for zip {z}") for z in range(10001, 10021)]
    assert {r.arm for r in runs} == {"dendrite", "semantic"}
    assert all(r.output.startswith("sunny") for r in runs)
    assert [r.steps[0].attempts[0].tool for r in runs[-8:]] == ["weather_lookup"] * 8
    with pytest.raises(ValueError, match="arm 'b' names planner 'fancy'; planners are dendrite"):
        Experiment("bad", {"a": "dendrite", "b": "fancy"})


# -- jobs ---------------------------------------------------------------------------------


def test_statistics_and_low_performers(store: ExecutionStore):
    attempts(store, "good", 30, 0)
    attempts(store, "bad", 6, 24)
    attempts(store, "rare", 0, 3)
    wait_until_drained(store)
    ctx = JobContext(store)
    stats = run_job("statistics", ctx)
    assert stats.success and stats.report == {"tools": 3, "attempts": 63}
    low = run_job("low_performers", ctx)
    assert [f["tool"] for f in low.report["low_performers"]] == ["bad"]
    assert low.report["low_performers"][0]["success_rate"] == 0.2
    saved = StateManager(store).get("global", LOW_PERFORMERS_KEY)
    assert saved["tools"][0]["tool"] == "bad"
    runs = store.get_job_runs()
    assert [r.job for r in runs] == ["low_performers", "statistics"]
    assert all(r.trigger == "manual" and r.duration_ms >= 0 for r in runs)


def test_lifecycle_archives_deprecates_and_promotes(store: ExecutionStore):
    registry = ToolRegistry()
    for name in ("old_tool", "failing_tool", "made_tool", "steady_tool"):
        registry.register_function(lambda query: query, name=name, reliability="low")
    attempts(store, "old_tool", 5, 0, at=LONG_AGO)
    attempts(store, "failing_tool", 4, 40)
    attempts(store, "made_tool", 25, 0)
    attempts(store, "steady_tool", 25, 0)
    store.store_tool_creation("made_tool", "def made_tool(query): return query", True)
    wait_until_drained(store)
    with Orchestrator(registry, store=store, llm=None) as orch:
        run = run_job("lifecycle", JobContext(store, orch))
        assert run.report == {
            "archived": ["old_tool"],
            "deprecated": ["failing_tool"],
            "promoted": ["made_tool"],
        }
        assert registry.state("old_tool").status is ToolStatus.DISABLED
        assert registry.state("failing_tool").status is ToolStatus.QUARANTINED
        assert registry.get("made_tool").reliability is Reliability.HIGH
        assert registry.get("steady_tool").reliability is Reliability.LOW  # not generated
        assert run_job("lifecycle", JobContext(store, orch)).report == {
            "archived": [],
            "deprecated": [],
            "promoted": [],
        }
    fresh_registry = ToolRegistry()
    for name in ("old_tool", "failing_tool", "made_tool"):
        fresh_registry.register_function(lambda query: query, name=name, reliability="low")
    with Orchestrator(fresh_registry, store=store, llm=None) as fresh:
        assert fresh.registry.state("old_tool").reason.startswith("archived: unused since")
        assert fresh.registry.state("failing_tool").reason.startswith("deprecated: 9% success")
        assert fresh.registry.get("made_tool").reliability is Reliability.HIGH
        fresh.set_tool_status("old_tool", "enabled")  # undone by hand, as documented
    stages = StateManager(store).get("global", LIFECYCLE_KEY)
    assert stages["made_tool"]["stage"] == "promoted"


def test_input_every_tool_refused_does_not_deprecate_a_tool(store: ExecutionStore):
    """Validation errors counted as the tool's failures: 45 bad inputs got a correct
    tool deprecated for good, though the health monitor (rightly) kept it."""
    execution = store.store_execution(goal_text="parse dates", success=False, duration_ms=1.0)
    for i in range(48):
        ok = i < 3
        store.store_tool_execution(
            execution,
            "parse_date",
            {},
            None,
            ok,
            2.0,
            step_id=f"s{i}",
            error=None if ok else "ValueError: not a date",
            error_type=None if ok else "validation",
        )
    # Refusals in steps that no attempt answered, or named no step: counted as before
    # only without a step (there is no telling who else was asked).
    store.store_tool_execution(
        execution,
        "parse_date",
        {},
        None,
        False,
        2.0,
        step_id="u",
        error="ValueError: not a date",
        error_type="validation",
    )
    store.store_tool_execution(
        execution,
        "other_parser",
        {},
        None,
        False,
        2.0,
        step_id="u",
        error="TimeoutError",
        error_type="timeout",
    )
    # A refusal where another tool of the step took the input is the tool's failure.
    for i in range(48):
        store.store_tool_execution(
            execution,
            "strict_parser",
            {},
            None,
            False,
            2.0,
            step_id=f"t{i}",
            error="ValueError: not a date",
            error_type="validation",
        )
        store.store_tool_execution(
            execution, "lenient_parser", {}, "2024-01-01", True, 2.0, step_id=f"t{i}"
        )
    wait_until_drained(store)
    registry = ToolRegistry()
    for name in ("parse_date", "strict_parser", "lenient_parser"):
        registry.register_function(lambda text: text, name=name)
    with Orchestrator(registry, store=store, llm=None) as orch:
        ctx = JobContext(store, orch)
        assert run_job("lifecycle", ctx).report["deprecated"] == ["strict_parser"]
        low = run_job("low_performers", ctx).report["low_performers"]
        assert [f["tool"] for f in low] == ["strict_parser"]
    assert registry.state("parse_date").status is ToolStatus.ENABLED
    recent = {r.tool_name: r for r in store.get_recent_tool_outcomes(LONG_AGO)}
    assert (recent["parse_date"].attempts, recent["strict_parser"].attempts) == (3, 48)


def test_a_running_orchestrator_takes_up_a_promotion_made_elsewhere(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    """Promotions were applied only at start: a lifecycle job run from the command line
    reached a running server's tool states within 30 s, but never its promotions."""
    registry = ToolRegistry()
    registry.register_function(lambda query: query, name="made_tool", reliability="low")
    attempts(store, "made_tool", 25, 0)
    store.store_tool_creation("made_tool", "def made_tool(query): return query", True)
    wait_until_drained(store)
    with Orchestrator(registry, store=store, llm=None) as running:
        assert run_job("lifecycle", JobContext(store)).report["promoted"] == ["made_tool"]
        monkeypatch.setattr(orchestrator_module, "TOOL_STATES_REFRESH", 0.0)  # not 30 s
        step = Step(id="s", tool="made_tool", params={"query": "q"})
        assert running.process(Plan(goal="use it", steps=[step])).success
        assert registry.get("made_tool").reliability is Reliability.HIGH


def test_a_tool_enabled_by_hand_is_judged_again_on_its_record_since(store: ExecutionStore):
    """Enabling kept the archived stage, so the job skipped the tool for good: never
    promoted after 25 successes, never archived or deprecated again either."""
    registry = ToolRegistry()
    for name in ("made_tool", "broken_tool"):
        registry.register_function(lambda query: query, name=name, reliability="low")
    store.store_tool_creation("made_tool", "def made_tool(query): return query", True)
    attempts(store, "made_tool", 1, 0, at=LONG_AGO)
    attempts(store, "broken_tool", 4, 40)
    wait_until_drained(store)
    with Orchestrator(registry, store=store, llm=None) as orch:
        assert run_job("lifecycle", JobContext(store, orch)).report == {
            "archived": ["made_tool"],
            "deprecated": ["broken_tool"],
            "promoted": [],
        }
        orch.set_tool_status("made_tool", "enabled")
        orch.set_tool_status("broken_tool", "enabled")
        # Judged on what they do from now on: the old failures and the old last use
        # count no more, and the next run of the job leaves both alone.
        assert run_job("lifecycle", JobContext(store, orch)).report == {
            "archived": [],
            "deprecated": [],
            "promoted": [],
        }
        attempts(store, "made_tool", 25, 0)
        attempts(store, "broken_tool", 0, 40)
        wait_until_drained(store)
        assert run_job("lifecycle", JobContext(store, orch)).report == {
            "archived": [],
            "deprecated": ["broken_tool"],
            "promoted": ["made_tool"],
        }
        assert registry.get("made_tool").reliability is Reliability.HIGH
        later = JobContext(store, orch, now=datetime.now(UTC) + timedelta(days=31))
        assert jobs_module.lifecycle(later)["archived"] == ["made_tool"]  # judged again


def test_a_promotion_after_a_reopening_keeps_judging_the_record_since(store: ExecutionStore):
    """Promoting a reopened tool dropped the reopening: the next run judged it on the whole
    window again and deprecated it for the failures from before the hand enabled it."""
    registry = ToolRegistry()
    registry.register_function(lambda query: query, name="made_tool", reliability="low")
    store.store_tool_creation("made_tool", "def made_tool(query): return query", True)
    attempts(store, "made_tool", 0, 200)
    wait_until_drained(store)
    with Orchestrator(registry, store=store, llm=None) as orch:
        assert run_job("lifecycle", JobContext(store, orch)).report["deprecated"] == ["made_tool"]
        orch.set_tool_status("made_tool", "enabled")
        time.sleep(0.01)  # the new calls start after the reopening
        attempts(store, "made_tool", 25, 0)
        wait_until_drained(store)
        assert run_job("lifecycle", JobContext(store, orch)).report["promoted"] == ["made_tool"]
        assert run_job("lifecycle", JobContext(store, orch)).report["deprecated"] == []
        assert registry.state("made_tool").status is ToolStatus.ENABLED


def test_retention_prunes_history_and_keeps_the_rollups(store: ExecutionStore):
    old = store.store_execution(goal_text="old", success=True, duration_ms=1.0, started_at=LONG_AGO)
    store.store_tool_execution(old, "t", {}, None, True, 1.0, started_at=LONG_AGO)
    store.store_execution(goal_text="new", success=True, duration_ms=1.0)
    wait_until_drained(store)
    run = run_job(
        "retention", JobContext(store, settings=JobSettings(retention=timedelta(days=30)))
    )
    assert run.report["executions"] == 1 and run.report["tool_executions"] == 1
    assert [r.goal_text for r in store.get_recent_executions(10)] == ["new"]
    assert store.get_tool_statistics("t").total_executions == 1


def one_converter() -> ToolRegistry:
    registry = ToolRegistry()

    def convert_km_to_miles(value: float) -> float:
        """Convert a distance in km to miles."""
        return round(value * 0.621371, 3)

    registry.register_function(convert_km_to_miles)
    return registry


def test_feedback_job_learns_what_another_process_recorded(store: ExecutionStore):
    registry = one_converter()
    with Orchestrator(registry, store=store, llm=None) as orch:
        result = orch.process("convert 5 km to miles")
        ctx = JobContext(store, orch, feedback_since=datetime.now(UTC) - timedelta(minutes=1))
        store.flush()
        cli = runner.invoke(
            app, ["feedback", result.execution_id, "--rating", "1", "--url", store.url]
        )
        assert cli.exit_code == 0, cli.output
        before = orch.learning.ranker.posterior("convert_km_to_miles")
        first = run_job("feedback", ctx)
        assert first.report["read"] == 1 and first.report["learned"] == 1
        assert orch.learning.ranker.posterior("convert_km_to_miles") < before
        assert run_job("feedback", ctx).report["read"] == 0  # resumes where it stopped
    alone = run_job("feedback", JobContext(store))
    assert alone.report == {"skipped": "no learning loop in this process", "learned": 0}


def test_feedback_is_read_in_the_order_the_store_wrote_it_and_none_is_passed_over(
    store: ExecutionStore,
):
    """Paged by the judgement's own time, three judgements of one moment across a page of
    two lost the third, and one written after the reader had passed its moment (replayed
    from the journal after an outage) was never read, so never learned."""
    execution = store.store_execution(goal_text="g", success=True, duration_ms=1.0)
    store.flush()
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for rating in (1, 2, 3):
        store.record(FeedbackRecord(execution_id=execution, rating=rating, created_at=moment))
    store.flush()

    def read(since: datetime | None, after_id: str | None) -> tuple[list[int], Any, Any]:
        ratings = []
        while True:
            batch = store.get_feedback(since=since, limit=2, after_id=after_id)
            ratings += [r.rating for r in batch]
            if batch:
                since, after_id = batch[-1].recorded_at, batch[-1].id
            if len(batch) < 2:
                return ratings, since, after_id

    first, since, after_id = read(None, None)
    assert sorted(first) == [1, 2, 3]
    late = FeedbackRecord(execution_id=execution, rating=5, created_at=moment - timedelta(1))
    store.record(late)
    store.flush()
    second, since, after_id = read(since, after_id)
    assert second == [5]
    assert store.get_feedback(since=since, after_id=after_id) == []
    with pytest.raises(ValueError, match="after_id pages from a since"):
        store.get_feedback(after_id=late.id)


def test_quality_job_adapts_every_project(store: ExecutionStore):
    for i in range(25):
        store.store_execution(goal_text=f"g{i}", success=False, duration_ms=1.0, project="ops")
    wait_until_drained(store)
    run = run_job("quality", JobContext(store))
    by_project = {p["project"]: p for p in run.report["policies"]}
    assert by_project["ops"]["min_confidence"] == 0.6 and by_project["ops"]["samples"] == 25
    assert QualityPolicies(StateManager(store)).get("ops").min_confidence == 0.6


def test_the_default_policy_is_measured_over_the_same_runs_by_every_path(store: ExecutionStore):
    """It is the policy of runs without a project and of a project named "default": the
    orchestrator measured only the latter, the quality job only the former, and each moved
    it by its own history."""
    for i in range(12):
        store.store_execution(goal_text=f"g{i}", success=False, duration_ms=1.0, project="default")
        store.store_execution(goal_text=f"h{i}", success=True, duration_ms=1.0)
    wait_until_drained(store)
    asked = QualityPolicies(None).adapt(store, "default")
    (job,) = [p for p in QualityPolicies(None).adapt_all(store) if p.project == "default"]
    assert asked.measured_success == job.measured_success == 0.5
    assert asked.samples == job.samples == 24


def test_a_failing_job_is_recorded_as_failed(store: ExecutionStore, monkeypatch):
    def broken(ctx: JobContext) -> dict:
        raise RuntimeError("disk full")

    monkeypatch.setitem(jobs_module.JOBS, "statistics", (broken, timedelta(hours=1)))
    run = run_job("statistics", JobContext(store))
    assert not run.success and run.error == "RuntimeError: disk full" and run.report == {}
    assert store.get_job_runs("statistics")[0].error == "RuntimeError: disk full"
    with pytest.raises(UnknownJobError, match="unknown job 'nope'; jobs are statistics"):
        run_job("nope", JobContext(store))
    with pytest.raises(InvalidRecordError, match="job report of 'x'"):
        store.store_job_run(
            "x", started_at=LONG_AGO, finished_at=LONG_AGO, success=True, report={"a": object()}
        )


def test_the_scheduler_runs_jobs_on_their_intervals(store: ExecutionStore):
    registry = ToolRegistry()
    with Orchestrator(registry, store=store, llm=None) as orch:
        scheduler = JobScheduler(
            orch,
            intervals={"statistics": timedelta(seconds=0.05), "feedback": timedelta(seconds=0.05)},
        )

        async def serve_a_while() -> None:
            scheduler.start()
            for _ in range(200):
                await asyncio.sleep(0.05)
                if len(scheduler.runs) >= 4:
                    break
            await scheduler.stop()

        asyncio.run(serve_a_while())
    jobs = {r.job for r in scheduler.runs}
    assert jobs == {"statistics", "feedback"}
    assert all(r.trigger == "schedule" and r.success for r in scheduler.runs)
    assert len(store.get_job_runs()) == len(scheduler.runs)
    with pytest.raises(ValueError, match="unknown job"):
        JobScheduler(orch, intervals={"nightly": timedelta(hours=1)})


def test_a_restarted_scheduler_runs_what_its_last_runs_say_is_due(tmp_path):
    """Due times counted from the start alone meant a daily job never ran in a server
    restarted every few hours; they now follow each job's last recorded run."""
    now = datetime.now(UTC)
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        for job, ago in (("retention", timedelta(days=3)), ("lifecycle", timedelta(hours=1))):
            store.store_job_run(
                job, started_at=now - ago, finished_at=now - ago, success=True, report={}
            )
        with Orchestrator(ToolRegistry(), store=store, llm=None) as orch:
            scheduler = JobScheduler(orch)  # daily and hourly jobs: only retention is due

            async def serve_a_while() -> None:
                scheduler.start()
                for _ in range(100):
                    await asyncio.sleep(0.05)
                    if scheduler.runs:
                        break
                await asyncio.sleep(0.2)  # time for anything else that (wrongly) ran
                await scheduler.stop()

            asyncio.run(serve_a_while())
    assert [(r.job, r.trigger) for r in scheduler.runs] == [("retention", "schedule")]


@pytest.mark.parametrize("every", [timedelta(0), timedelta(seconds=-5)])
def test_intervals_that_are_not_positive_are_refused(tmp_path, every):
    """A zero interval ran the job back to back (hundreds of job_runs rows a second)."""
    store = ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}")
    with store, Orchestrator(ToolRegistry(), store=store, llm=None) as orch:
        with pytest.raises(ValueError, match="interval of job 'statistics' must be positive"):
            JobScheduler(orch, intervals={"statistics": every})
        with pytest.raises(TypeError, match="interval of job 'quality' must be a timedelta"):
            JobScheduler(orch, intervals={"quality": 60})


def test_jobs_on_the_command_line(store: ExecutionStore):
    attempts(store, "t", 3, 0)
    wait_until_drained(store)
    result = runner.invoke(app, ["jobs", "run", "statistics", "--url", store.url])
    assert result.exit_code == 0, result.output
    assert "statistics: ok" in result.output and '"attempts": 3' in result.output
    result = runner.invoke(app, ["jobs", "history", "--json", "--url", store.url])
    assert json.loads(result.output)[0]["job"] == "statistics"
    result = runner.invoke(app, ["jobs", "list", "--url", store.url])
    assert result.exit_code == 0 and "lifecycle" in result.output and "never" in result.output
    assert "``" not in result.output  # was "below ``low_success``": the docstring's markup
    result = runner.invoke(app, ["jobs", "run", "nightly", "--url", store.url])
    assert result.exit_code == 2 and "unknown job 'nightly'" in result.output
    result = runner.invoke(app, ["jobs", "history", "nightly", "--url", store.url])
    assert result.exit_code == 2 and "unknown job 'nightly'" in result.output
    result = runner.invoke(app, ["jobs", "run", "all", "--json", "--url", store.url])
    assert result.exit_code == 0, result.output
    assert [r["job"] for r in json.loads(result.output)] == list(jobs_module.JOBS)


def test_feedback_a_warm_start_learned_is_not_learned_again_by_the_job(store: ExecutionStore):
    registry = one_converter()
    with Orchestrator(registry, store=store, llm=None) as orch:
        result = orch.process("convert 5 km to miles")
    store.flush()
    store.store_feedback(result.execution_id, rating=1)
    store.store_feedback(result.execution_id, rating=2)
    with Orchestrator(registry, store=store, llm=None) as fresh:  # learns both in its warm start
        after_warm_start = fresh.learning.ranker.posterior("convert_km_to_miles")
        run = run_job("feedback", JobContext(store, fresh))  # reads every feedback row
        assert run.report["read"] == 2 and run.report["learned"] == 0
        assert fresh.learning.ranker.posterior("convert_km_to_miles") == after_warm_start


def test_a_job_that_never_ran_is_due_an_interval_after_it_was_first_awaited(tmp_path):
    """Counted from each start, a job that had never run waited a whole interval after
    every restart, so a daily job never ran in a server restarted every few hours."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    daily = {name: timedelta(days=1) for name in jobs_module.JOBS}
    with ExecutionStore(url) as store, Orchestrator(ToolRegistry(), store=store, llm=None) as orch:
        start = time.monotonic()
        first = JobScheduler(orch, intervals=daily)._first_due(start)
        assert all(due == pytest.approx(start + 86_400, abs=5) for due in first.values())
        (waiting,) = [
            e for e in store.get_state_entries("global") if e.key == jobs_module.WAITING_SINCE_KEY
        ]
        assert sorted(waiting.value) == sorted(jobs_module.JOBS)
        # Twenty hours later the server restarts: the wait goes on where it was.
        earlier = (datetime.now(UTC) - timedelta(hours=20)).isoformat()
        store.put_state(
            "global",
            "",
            jobs_module.WAITING_SINCE_KEY,
            {**waiting.value, "retention": earlier, "quality": "not a time"},
        )
        store.store_job_run(
            "lifecycle",
            started_at=datetime.now(UTC) - timedelta(days=2),
            finished_at=datetime.now(UTC) - timedelta(days=2),
            success=True,
            report={},
        )
        start = time.monotonic()
        again = JobScheduler(orch, intervals=daily)._first_due(start)
    assert again["retention"] == pytest.approx(start + 4 * 3600, abs=5)
    assert again["lifecycle"] == pytest.approx(start, abs=5)  # its last run says: due
    assert again["quality"] == pytest.approx(start + 86_400, abs=5)  # unreadable: from now
    assert again["statistics"] == pytest.approx(first["statistics"], abs=5)


def test_a_policy_set_by_hand_says_so(store: ExecutionStore):
    """A pinned policy read "(defaults)" in a run's reasons and in ``dendrite trace``."""
    policies = QualityPolicies(StateManager(store))
    policies.set(QualityPolicy(project="ops", min_confidence=0.99, adaptive=False))
    policies.set(QualityPolicy(project="web", min_confidence=0.7))
    policies.set(QualityPolicy(project="api", reason="audit of 2026-11"))
    assert policies.get("ops").reason == "set by hand, pinned"
    assert policies.get("web").reason == "set by hand"
    assert policies.get("api").reason == "audit of 2026-11"
    assert QualityPolicies(StateManager(store)).get("ops").reason == "set by hand, pinned"
    assert policies.get("other").reason == "defaults"
