"""Feedback as reward, the router in orchestrator runs, and quality policies: on both backends."""

from __future__ import annotations

import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from dendrite import Orchestrator
from dendrite.learning.loop import JudgedRun, LearningLoop, reward_of
from dendrite.learning.memory import PlanMemory
from dendrite.learning.policies import QualityPolicies, QualityPolicy
from dendrite.learning.router import Router
from dendrite.orchestrator import current_route
from dendrite.planning import Plan, Step
from dendrite.state import StateManager
from dendrite.store import ExecutionStore, UnknownExecutionError
from dendrite.tools import ToolRegistry
from tests.test_planners import SEARCH_NOTES, PlansAsGiven

from .conftest import wait_until_drained


def two_converters() -> ToolRegistry:
    """Two tools that both answer "convert N km to miles"; only a rating tells them apart."""
    registry = ToolRegistry()

    def convert_km_to_miles(value: float) -> float:
        """Convert a distance in km to miles."""
        return round(value * 0.62, 2)

    def km_to_miles_converter(value: float) -> float:
        """Converts km distances to miles."""
        return round(value * 0.621371, 3)

    registry.register_function(convert_km_to_miles)
    registry.register_function(km_to_miles_converter)
    return registry


def test_reward_of_judgements():
    assert reward_of(1, None) == 0.0 and reward_of(5, None) == 1.0 and reward_of(3, None) == 0.5
    assert reward_of(None, True) == 1.0 and reward_of(None, False) == 0.0
    assert reward_of(5, False) == 0.5 and reward_of(None, None) is None
    with pytest.raises(ValueError, match="rating must be an integer from 1 to 5, got 0"):
        reward_of(0, None)


def test_recency_weighs_old_runs_less():
    loop = LearningLoop(ToolRegistry(), feedback_half_life=timedelta(days=7))
    now = datetime(2026, 11, 23, tzinfo=UTC)
    assert loop.recency(now, now) == 1.0
    assert loop.recency(now - timedelta(days=7), now) == pytest.approx(0.5)
    assert loop.recency(now - timedelta(days=21), now) == pytest.approx(0.125)
    with pytest.raises(ValueError, match="feedback_half_life must be positive"):
        LearningLoop(ToolRegistry(), feedback_half_life=timedelta(0))


def test_feedback_moves_the_ranker_by_recency_and_is_learned_once():
    loop = LearningLoop(ToolRegistry())
    now = datetime.now(UTC)
    run = JudgedRun("e1", "convert 5 km to miles", now, (("convert 5 km", "a", None),))
    old = JudgedRun("e2", "convert 5 km to miles", now - timedelta(days=28), (("x", "b", None),))
    fresh = loop.feedback(run, rating=1, feedback_id="f1", now=now)
    stale = loop.feedback(old, rating=1, feedback_id="f2", now=now)
    assert fresh.reward == 0.0 and fresh.tools == ("a",) and fresh.weight == pytest.approx(1.0)
    assert stale.weight == pytest.approx(0.25)
    assert loop.ranker.posterior("a") < loop.ranker.posterior("b") < loop.ranker.prior
    again = loop.feedback(run, rating=1, feedback_id="f1", now=now)
    assert again.tools == () and again.reward is None  # the same feedback is not learned twice
    neutral = loop.feedback(run, rating=3, now=now)
    assert neutral.reward == 0.5 and neutral.tools == ()  # a middling rating teaches nothing


class SlowToCheck(OrderedDict):
    """A membership check that lets the other threads run before it answers."""

    def __contains__(self, key: object) -> bool:
        found = super().__contains__(key)
        time.sleep(0.01)
        return found


def test_one_judgement_handed_in_by_several_threads_at_once_is_learned_once():
    """The API's request threads and the feedback job checked "learned before?" and then
    marked it, unlocked: two of them could both find it new and teach the ranker twice."""
    loop = LearningLoop(ToolRegistry())
    loop._judged = SlowToCheck()
    run = JudgedRun("e1", "convert 5 km to miles", datetime.now(UTC), (("convert", "a", None),))
    with ThreadPoolExecutor(4) as pool:
        effects = list(pool.map(lambda _: loop.feedback(run, rating=5, feedback_id="f1"), range(4)))
    assert sorted(len(e.tools) for e in effects) == [0, 0, 0, 1]


def test_plan_memory_stops_reusing_a_plan_judged_bad():
    memory = PlanMemory()
    registry = two_converters()
    plan = Plan(
        goal="convert 5 km to miles",
        steps=[Step(id="c", tool="convert_km_to_miles", params={"value": 5})],
    )
    memory.remember("convert 5 km to miles", plan, "e1")
    assert memory.recall("convert 9 km to miles", registry) is not None
    assert memory.judge("e1", reward=0.0) is True
    assert memory.recall("convert 9 km to miles", registry) is None
    memory.judge("e1", reward=1.0, weight=2.0)  # later praise outweighs it
    assert memory.recall("convert 9 km to miles", registry) is not None
    assert memory.judge("unknown", reward=1.0) is False
    with pytest.raises(ValueError, match="reward must be in"):
        memory.judge("e1", reward=2.0)


def test_ratings_change_which_tool_the_orchestrator_picks(store: ExecutionStore):
    registry = two_converters()
    with Orchestrator(registry, store=store, llm=None) as orch:
        first = orch.process("convert 5 km to miles")
        disliked = first.steps[0].tool
        picked = [disliked]
        for n in range(6, 12):
            result = orch.process(f"convert {n} km to miles")
            picked.append(result.steps[0].tool)
            if result.steps[0].tool == disliked:
                effect = orch.feedback(result.execution_id, 1, comment="wrong factor")
                assert effect.reward == 0.0 and disliked in effect.tools
                assert effect.feedback_id is not None
        # Nothing to record: said in this method's words, not the record's feedback_text.
        with pytest.raises(ValueError, match="rating, accepted or comment"):
            orch.feedback(first.execution_id)
    other = ({"convert_km_to_miles", "km_to_miles_converter"} - {disliked}).pop()
    assert picked[0] == disliked and picked[-1] == other
    wait_until_drained(store)
    rated = store.get_recent_executions(20, success=True)
    assert any(r.user_rating == 1 for r in rated)
    # A fresh process learns the same from the store: ratings are part of the warm start.
    with Orchestrator(registry, store=store, llm=None) as fresh:
        assert fresh.process("convert 40 km to miles").steps[0].tool == other


def test_feedback_for_an_unknown_execution_is_refused(store: ExecutionStore):
    with Orchestrator(ToolRegistry(), store=store, llm=None) as orch:
        with pytest.raises(UnknownExecutionError):
            orch.feedback("00000000-0000-4000-8000-000000000000", 5)
        with pytest.raises(ValueError):
            orch.feedback("00000000-0000-4000-8000-000000000000", 9)


def test_a_judgement_of_the_wrong_type_is_refused_and_not_recorded(store: ExecutionStore):
    registry = two_converters()
    with Orchestrator(registry, store=store, llm=None) as orch:
        run = orch.process("convert 10 km to miles")
        for rating, accepted in (("5", None), (True, None), (4.0, None), (None, "yes")):
            with pytest.raises(ValueError, match=r"(rating|accepted) must be"):
                orch.feedback(run.execution_id, rating, accepted=accepted)
        with pytest.raises(ValueError, match="rating"):
            store.store_feedback(run.execution_id, True)  # not read as rating 1
    wait_until_drained(store)
    assert store.get_execution(run.execution_id).feedback == []


def test_without_a_store_feedback_for_no_known_run_is_refused():
    with Orchestrator(two_converters(), store=None, llm=None) as orch:
        with pytest.raises(UnknownExecutionError):
            orch.feedback("00000000-0000-4000-8000-000000000000", 5)
        with pytest.raises(ValueError, match="rating"):
            orch.feedback(orch.process("convert 3 km to miles").execution_id, "great")


def test_the_router_takes_a_judgement_as_the_loop_does_live_and_after_a_restart(
    store: ExecutionStore,
):
    registry = ToolRegistry()

    def answer(question: str) -> str:
        """Answer a question at the model tier the router chose."""
        return question

    registry.register_function(answer)

    def router() -> Router:
        return Router(["small", "large"], costs={"small": 1, "large": 10}, store=store)

    plan = Plan(goal="answer hi", steps=[Step(id="a", tool="answer", params={"question": "hi"})])
    live = router()
    with Orchestrator(registry, store=store, llm=None, router=live) as orch:
        rejected = [orch.process(plan).execution_id for _ in range(4)]
        for execution_id in rejected:
            assert orch.feedback(execution_id, accepted=False).router is True
        three_rejected = orch.process(plan).execution_id
        orch.feedback(three_rejected, 3, accepted=False)
    assert [live._learned[e].rating for e in rejected] == [1] * 4
    assert live._learned[three_rejected].rating == 2  # the mean of 3 and a rejection
    wait_until_drained(store)
    restarted = router()
    restarted.learn_from_store()
    for execution_id in [*rejected, three_rejected]:
        assert restarted._learned[execution_id].rating == live._learned[execution_id].rating
    assert restarted.predict("answer hi") == live.predict("answer hi")


def test_a_session_id_or_project_too_long_to_keep_is_refused_before_the_run(
    store: ExecutionStore,
):
    with Orchestrator(two_converters(), store=store, llm=None) as orch:
        with pytest.raises(ValueError, match="session_id is 129 characters long; at most 128"):
            orch.process("convert 1 km to miles", session_id="s" * 129)
        with pytest.raises(ValueError, match="project is 256 characters long; at most 255"):
            orch.process("convert 1 km to miles", context={"project": "p" * 256})
        with pytest.raises(TypeError, match="session_id must be a string"):
            orch.process("convert 1 km to miles", session_id=7)
        kept = orch.process("convert 1 km to miles", session_id="s" * 128)
    wait_until_drained(store)
    assert [r.id for r in store.get_recent_executions(10)] == [kept.execution_id]
    assert orch.get_execution_summary()["recording_failures"] == 0


def test_the_router_picks_a_tier_per_run_records_it_and_learns(store: ExecutionStore):
    registry = ToolRegistry()
    seen: list[str | None] = []

    def answer(question: str) -> str:
        """Answer a question at the model tier the router chose."""
        seen.append(current_route())
        return f"{current_route()}: {question}"

    registry.register_function(answer)
    router = Router(options=["small", "large"], costs={"small": 1, "large": 10}, store=store)
    plan = Plan(goal="answer hi", steps=[Step(id="a", tool="answer", params={"question": "hi"})])
    with Orchestrator(registry, store=store, llm=None, router=router) as orch:
        results = [orch.process(plan) for _ in range(5)]
        assert all(r.route in ("small", "large") for r in results)
        assert seen == [r.route for r in results] and current_route() is None
        assert router.pending == []  # every outcome learned
        effect = orch.feedback(results[0].execution_id, 2)
        assert effect.router is True
        trace = orch.get_execution_trace(results[0].execution_id)
        assert trace.why["route"].startswith(f"picked {results[0].route} because")
    wait_until_drained(store)
    detail = store.get_execution(results[0].execution_id)
    assert detail.model_tier == results[0].route and detail.routing_confidence is not None
    assert [d.chosen for d in detail.routing] == [results[0].route]
    assert detail.metadata["why"]["route"].startswith("picked")
    outcomes = store.get_routing_outcomes(router="model_tier")
    assert len(outcomes) == 5


def test_quality_policy_adapts_to_measured_success_and_persists(store: ExecutionStore):
    state = StateManager(store)
    policies = QualityPolicies(state, min_samples=10, window=50)
    for i in range(30):
        store.store_execution(
            goal_text=f"goal {i}", success=i % 2 == 0, duration_ms=5.0, project="ops"
        )
        store.store_execution(goal_text=f"goal {i}", success=True, duration_ms=5.0, project="web")
        # A run its client stopped says nothing of the project's success.
        store.store_execution(
            goal_text="left", success=False, status="cancelled", duration_ms=5.0, project="web"
        )
    wait_until_drained(store)
    ops = policies.adapt(store, "ops")
    assert ops.min_confidence == 0.6 and ops.use_llm and ops.replan
    assert ops.measured_success == 0.5 and "below the target 90%: stricter" in ops.reason
    web = policies.adapt(store, "web")
    assert web.min_confidence == 0.4 and not web.use_llm and "cheaper" in web.reason
    again = QualityPolicies(StateManager(store)).get("ops")
    assert again.min_confidence == 0.6 and again.samples == 30
    pinned = QualityPolicy(project="ops", min_confidence=0.3, adaptive=False)
    policies.set(pinned)
    assert policies.adapt(store, "ops").min_confidence == 0.3
    few = QualityPolicies(state, min_samples=100).adapt(store, "web")
    assert "30 runs measured, 100 needed" in few.reason
    unassigned = policies.adapt(store, None)  # runs without a project: none here
    assert unassigned.project == "default" and unassigned.samples == 0


def test_the_default_projects_policy_is_measured_on_its_own_runs(store: ExecutionStore):
    """Runs without a project, and only goals (depth 0): another project's later runs and
    nested runs used to fill the window before the filter, leaving the default unmeasured."""
    earlier = datetime.now(UTC) - timedelta(hours=2)
    for i in range(20):
        store.store_execution(
            goal_text=f"g{i}",
            success=i % 2 == 0,
            started_at=earlier + timedelta(seconds=i),
        )
    for i in range(60):
        later = earlier + timedelta(minutes=10, seconds=i)
        store.store_execution(goal_text=f"p{i}", success=True, project="p", started_at=later)
        store.store_execution(goal_text=f"n{i}", success=True, depth=1, started_at=later)
    wait_until_drained(store)
    default = QualityPolicies(StateManager(store), min_samples=10, window=20).adapt(store, None)
    assert default.samples == 20 and default.measured_success == 0.5


def test_two_processes_keep_each_others_project_policies(store: ExecutionStore):
    first, second = QualityPolicies(StateManager(store)), QualityPolicies(StateManager(store))
    first.all(), second.all()  # both have read the saved policies
    first.set(QualityPolicy(project="ops", min_confidence=0.7, adaptive=False))
    second.set(QualityPolicy(project="web", min_confidence=0.3, adaptive=False))
    later = QualityPolicies(StateManager(store))
    assert (later.get("ops").min_confidence, later.get("web").min_confidence) == (0.7, 0.3)
    # A pin set by hand in another process is not undone by this one's adapting.
    third = QualityPolicies(StateManager(store))
    third.all()
    later.set(QualityPolicy(project="default", min_confidence=0.9, adaptive=False))
    kept = third.adapt(store, None)
    assert kept.min_confidence == 0.9 and not kept.adaptive
    assert QualityPolicies(StateManager(store)).get(None).min_confidence == 0.9


def test_a_running_orchestrator_takes_a_pin_made_by_another_process(store: ExecutionStore):
    registry = two_converters()
    with Orchestrator(registry, store=store, llm=None) as orch:
        before = orch.process("convert 2 km to miles", context={"project": "p"})
        assert not before.needs_review and "min confidence 0.5" in before.why["policy"]
        other = QualityPolicies(StateManager(store))  # another process: its own state copy
        other.set(QualityPolicy(project="p", min_confidence=0.99, adaptive=False))
        cached = orch.process("convert 3 km to miles", context={"project": "p"})
        assert "min confidence 0.5" in cached.why["policy"]  # read again every 30 s
        orch.policies.refresh_seconds = 0
        after = orch.process("convert 4 km to miles", context={"project": "p"})
        assert after.needs_review and "min confidence 0.99" in after.why["policy"]
    with pytest.raises(ValueError, match="refresh_seconds"):
        QualityPolicies(StateManager(store), refresh_seconds=-1)


def test_quality_policy_flags_low_confidence_and_controls_replanning(store: ExecutionStore):
    registry = ToolRegistry()

    def search_archive(query: str) -> str:
        """Search the archived notes for a query."""
        return f"archive: {query}"

    def search_notes(query: str) -> str:
        """Search the notes for a query and return the matching documents."""
        raise RuntimeError("index corrupted")

    registry.register_function(search_archive)
    registry.register_function(search_notes)
    policies = QualityPolicies(StateManager(store))
    policies.set(QualityPolicy(project="strict", min_confidence=0.99, replan=False))
    planned = PlansAsGiven(SEARCH_NOTES)  # planned: a plan the caller gives is not repaired
    with Orchestrator(registry, store=store, llm=None, policies=policies) as orch:
        goal = SEARCH_NOTES.goal
        kept = orch.process(goal, context={"project": "strict"}, planner=planned)
        assert not kept.success and "replans" not in kept.plan.metadata
        assert "replan off" in kept.why["policy"]
        repaired = orch.process(goal, context={"project": "lenient"}, planner=planned)
        assert repaired.success and repaired.output == "archive: jitter"
        assert repaired.plan.metadata["replans"][0]["new_tools"] == ["search_archive"]
        assert not repaired.needs_review
        flagged = orch.process(
            Plan(
                goal="archive", steps=[Step(id="a", tool="search_archive", params={"query": "x"})]
            ),
            context={"project": "strict"},
        )
        assert flagged.success and flagged.needs_review
        assert "min confidence 0.99" in flagged.why["policy"]
    wait_until_drained(store)
    record = store.get_execution(flagged.execution_id)
    assert record.project == "strict" and record.metadata["needs_review"] is True


def test_quality_policy_moves_only_on_runs_it_has_not_judged(store: ExecutionStore):
    """Re-measuring the same history (the ``quality`` job every 15 minutes on a quiet
    project) must not tighten the policy again and again."""
    policies = QualityPolicies(StateManager(store), min_samples=10, window=50)

    def runs(count: int, start: int) -> None:
        for i in range(start, start + count):
            store.store_execution(
                goal_text=f"goal {i}", success=i % 2 == 0, duration_ms=5.0, project="ops"
            )
        wait_until_drained(store)

    runs(30, 0)
    assert policies.adapt(store, "ops").min_confidence == 0.6
    for _ in range(3):
        same = policies.adapt(store, "ops")
        assert same.min_confidence == 0.6
        assert "0 runs since the last measurement, 10 needed" in same.reason
    runs(5, 30)
    assert policies.adapt(store, "ops").min_confidence == 0.6
    runs(5, 35)
    moved = policies.adapt(store, "ops")
    assert moved.min_confidence == 0.7 and "stricter" in moved.reason
    restarted = QualityPolicies(StateManager(store), min_samples=10, window=50)
    assert restarted.adapt(store, "ops").min_confidence == 0.7


def test_ratings_given_from_another_process_move_the_next_pick(store: ExecutionStore):
    """As with the CLI: every run and every rating in a process of its own. The store keeps
    each tool's retrieval share, so what a later process learns from the record (warm start
    and feedback) is what the process that ran it learned."""

    def process(goal: str) -> tuple[str, str]:
        with Orchestrator(two_converters(), store=store, llm=None) as orch:
            result = orch.process(goal)
        store.flush()
        return result.execution_id, result.steps[0].tool

    first_id, first_tool = process("convert 5 km to miles")
    assert "retrieval" in store.get_execution(first_id).metadata
    with Orchestrator(two_converters(), store=store, llm=None) as judge:
        judge.feedback(first_id, 1)
    store.flush()
    _, second_tool = process("convert 6 km to miles")
    assert second_tool != first_tool
