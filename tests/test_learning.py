"""The learning loop: health, ranking shifts, plan reuse, and end to end on both backends."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from dendrite import Orchestrator, OrchestratorConfig
from dendrite.learning import Router
from dendrite.learning.experiments import report
from dendrite.learning.health import HEALTH_LOG_KEY, Health, HealthMonitor, HealthPolicy
from dendrite.learning.loop import LearningLoop
from dendrite.learning.memory import PlanMemory
from dendrite.learning.policies import QualityPolicies
from dendrite.learning.ranker import Ranked, ToolRanker
from dendrite.planning import Plan, PlanningError, RetryPolicy, Step
from dendrite.planning.arguments import extract_arguments
from dendrite.planning.references import literal
from dendrite.store import ExecutionStore, InvalidRecordError
from dendrite.tools import ToolRegistry, ToolStatus
from dendrite.tools.errors import UnknownToolError

ONCE = RetryPolicy(max_attempts=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def registry_with(*names: str, alternatives: dict[str, list[str]] | None = None) -> ToolRegistry:
    registry = ToolRegistry()
    for name in names:
        registry.register_function(
            lambda query: query, name=name, alternatives=(alternatives or {}).get(name, ())
        )
    return registry


def test_quarantine_probe_restore_and_extend():
    registry = registry_with("primary", "backup", alternatives={"primary": ["backup"]})
    clock = Clock()
    policy = HealthPolicy(window=10, min_samples=4, failure_threshold=0.5, cooldown=30)
    monitor = HealthMonitor(registry, policy, clock=clock)
    for success in (True, False, False):
        assert monitor.observe("primary", success) is None
    moved = monitor.observe("primary", False)
    assert moved is not None and moved.after is Health.QUARANTINED
    assert moved.reason == "3 of the last 4 calls failed (75%)"
    assert registry.state("primary").status is ToolStatus.QUARANTINED
    clock.now += 29
    assert monitor.tick() == []
    clock.now += 1
    (probe,) = monitor.tick()
    assert probe.after is Health.PROBING and registry.state("primary").status is ToolStatus.ENABLED
    failed_probe = monitor.observe("primary", False)
    assert failed_probe.after is Health.QUARANTINED and "60s" in failed_probe.reason
    clock.now += 60
    monitor.tick()
    restored = monitor.observe("primary", True)
    assert restored.after is Health.HEALTHY and registry.get("primary").available
    assert [t.after for t in monitor.transitions] == [
        Health.QUARANTINED,
        Health.PROBING,
        Health.QUARANTINED,
        Health.PROBING,
        Health.HEALTHY,
    ]


def test_only_the_admitted_probe_ends_a_probe():
    """Outcomes arrive when their run ends: a call that started before the probe was let
    through (its run outlasted the cooldown) restored a tool that was still down."""
    registry = registry_with("primary", "backup", alternatives={"primary": ["backup"]})
    clock = Clock()
    monitor = HealthMonitor(registry, HealthPolicy(window=4, min_samples=4), clock=clock)
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    for _ in range(4):
        monitor.observe("primary", False)
    clock.now += 30
    monitor.tick()
    assert monitor.observe("primary", True, started_at=long_ago) is None  # no probe yet
    assert monitor.admit("primary") and not monitor.admit("primary")
    assert monitor.observe("primary", True, started_at=long_ago) is None  # not the probe
    assert monitor.health("primary") is Health.PROBING
    failed = monitor.observe("primary", False, started_at=datetime.now(UTC))
    assert failed is not None and failed.after is Health.QUARANTINED


def test_a_tool_without_a_stand_in_is_flagged_not_removed():
    registry = registry_with("only")
    monitor = HealthMonitor(registry, HealthPolicy(window=4, min_samples=4))
    for _ in range(3):
        monitor.observe("only", False)
    flagged = monitor.observe("only", False)
    assert flagged.after is Health.FLAGGED and flagged.reason.endswith("no alternative, kept")
    assert registry.get("only").available
    strict = HealthMonitor(
        registry, HealthPolicy(window=4, min_samples=4, quarantine_sole_tools=True)
    )
    for _ in range(4):
        strict.observe("only", False)
    assert registry.state("only").status is ToolStatus.QUARANTINED


@pytest.mark.parametrize("alternatives", [{"a": ["b"]}, {"b": ["a"]}])
def test_a_tool_on_probation_stands_in_for_nothing(alternatives: dict[str, list[str]]):
    """A flagged tool whose only alternative was probing got quarantined on its account:
    when the probe failed, both were out and the capability had no tool at all."""
    registry = registry_with("a", "b", alternatives=alternatives)
    clock = Clock()
    policy = HealthPolicy(window=4, min_samples=4, cooldown=30)
    monitor = HealthMonitor(registry, policy, clock=clock)
    for tool in ("a", "b"):
        for _ in range(4):
            monitor.observe(tool, False)
    assert (monitor.health("a"), monitor.health("b")) == (Health.QUARANTINED, Health.FLAGGED)
    clock.now += 30
    monitor.tick()
    assert monitor.health("a") is Health.PROBING and not monitor.has_stand_in("b")
    assert monitor.observe("b", False) is None
    assert monitor.admit("a")
    monitor.observe("a", False)
    assert [tool.name for tool in registry if tool.available] == ["b"]
    clock.now += 60
    monitor.tick()
    monitor.observe("a", True)  # restored: a stands in again, and b may go out
    moved = monitor.observe("b", False)
    assert moved is not None and moved.after is Health.QUARANTINED


def test_health_policy_refuses_nonsense():
    with pytest.raises(ValueError, match="failure_threshold must be in"):
        HealthPolicy(failure_threshold=0)
    with pytest.raises(ValueError, match="min_samples <= window"):
        HealthPolicy(window=3, min_samples=5)
    with pytest.raises(ValueError, match="cooldown"):
        HealthPolicy(cooldown=0)
    # A NaN cooldown never ended: the tool stayed quarantined for good. A window of 2.5
    # was taken and broke at the first outcome.
    with pytest.raises(ValueError, match="cooldown must be a finite number > 0, got nan"):
        HealthPolicy(cooldown=float("nan"))
    with pytest.raises(ValueError, match="max_cooldown must be a finite number > 0, got inf"):
        HealthPolicy(max_cooldown=float("inf"))
    with pytest.raises(TypeError, match=r"window must be a whole number, got 2\.5"):
        HealthPolicy(window=2.5, min_samples=1)


def test_learning_numbers_that_would_spread_nan_are_refused_where_they_come_in(
    store: ExecutionStore,
):
    """One NaN retrieval score or an infinite weight reached the shared weights and made
    every tool's score NaN; a negative step made quality policies move the wrong way; an
    unknown control arm was replaced by another without a word."""
    ranker = ToolRanker()
    for kwargs, message in (
        ({"retrieval": float("nan")}, "retrieval must be a finite number"),
        ({"weight": float("inf")}, "weight must be a finite number"),
        ({"weight": -1.0}, "weight must be a finite number >= 0"),
        ({"count": 0}, "count must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            ranker.observe("weather in Oslo", "weather_lookup", True, **kwargs)
    ranker.observe("weather in Oslo", "weather_lookup", True, retrieval=0.8)
    (scored,) = ranker.rerank("weather in Oslo", [("weather_lookup", 1.0)])
    assert math.isfinite(scored.score)
    with pytest.raises(ValueError, match="prior must be at most 1"):
        ToolRanker(prior=5)
    with pytest.raises(ValueError, match="feedback_weight must be a finite number"):
        LearningLoop(ToolRegistry(), feedback_weight=float("inf"))
    with pytest.raises(ValueError, match="step must be a finite number > 0"):
        QualityPolicies(step=-0.1)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        QualityPolicies(margin=float("nan"))
    with pytest.raises(ValueError, match="weight must be a finite number >= 0"):
        PlanMemory().judge("run", 1.0, weight=-5)
    router = Router(["small", "large"])
    router.choose("a task", "run-1")
    with pytest.raises(ValueError, match="cost must be at most"):
        router.learn("run-1", True, cost=1e308)
    with pytest.raises(ValueError, match="pending_ttl must be a positive timedelta, got 5"):
        Router(["small", "large"], pending_ttl=5)
    for arm in ("a", "b"):
        execution = store.store_execution(goal_text="g", success=True, duration_ms=5.0)
        store.store_assignment("ab", execution, arm, f"session:{arm}")
    store.flush()
    with pytest.raises(ValueError, match="has no arm 'nope' with recorded runs; its arms: a, b"):
        report(store, "ab", control="nope")


def test_ranking_shifts_after_outcomes_and_recalls_what_worked():
    ranker = ToolRanker()
    candidates = [("weather_lookup", 3.0), ("forecast_api", 2.0)]
    before = ranker.rerank("weather tomorrow in Oslo", candidates)
    assert [r.name for r in before] == ["weather_lookup", "forecast_api"]
    for city in ("Oslo", "Bergen", "Paris", "Rome"):
        ranker.observe(f"weather tomorrow in {city}", "weather_lookup", False)
        ranker.observe(f"weather tomorrow in {city}", "forecast_api", True)
    after = ranker.rerank("weather tomorrow in Oslo", candidates)
    assert [r.name for r in after] == ["forecast_api", "weather_lookup"]
    assert "on similar goals" in after[0].reason
    ranker.observe("convert currency from EUR to SEK", "fx_rates", True)
    recalled = ranker.rerank("convert currency from USD to SEK", [("calculator", 1.0)])
    assert "fx_rates" in [r.name for r in recalled]
    assert ranker.order(["weather_lookup", "forecast_api"]) == ["forecast_api", "weather_lookup"]
    with pytest.raises(ValueError, match="decay must be a finite number > 0"):
        ToolRanker(decay=0)


def test_ranker_learns_which_look_alike_answers_a_kind_of_goal():
    """Goals that share only their intent words teach it; other goals keep retrieval's order."""
    ranker = ToolRanker()
    candidates = [("weather_api", 3.0), ("Weather_1_GetWeather", 2.6), ("forecast_tool", 2.0)]
    cities = ("Oslo", "Bergen", "Paris", "Rome", "Lima", "Quito")
    for city in cities:
        goal = f"what will the weather be like in {city} next week"
        first = ranker.rerank(goal, candidates)[0].name
        ranker.observe(goal, first, first == "Weather_1_GetWeather")
        if first != "Weather_1_GetWeather":
            ranker.observe(goal, "Weather_1_GetWeather", True)
    after = ranker.rerank("what will the weather be like in Nairobi next week", candidates)
    assert after[0].name == "Weather_1_GetWeather"
    assert after[0].reason.startswith("expected success ")
    assert "learned from" in after[0].reason
    # A goal about something else is left to retrieval.
    other = ranker.rerank("summarise this report", [("summariser", 2.0), ("weather_api", 1.0)])
    assert other[0].name == "summariser"


def test_ranker_recalls_a_tool_by_learned_words_and_asks_for_depth():
    ranker = ToolRanker(recall_depth=7)
    assert ranker.recall_depth == 7
    for artist in ("Adele", "Queen", "Björk"):
        goal = f"play songs by {artist} on the speaker"
        assert "Music_3_PlayMedia" not in [r.name for r in ranker.rerank(goal, [], recall=False)]
        ranker.rerank(goal, [("play_sound_wave", 1.0)])  # what the planner asked
        ranker.observe(goal, "play_sound_wave", False)  # retrieval's pick, tried first
        ranker.observe(goal, "Music_3_PlayMedia", True)  # found by a fallback
    ranked = ranker.rerank("play songs by Prince on the speaker", [("play_sound_wave", 1.0)])
    assert ranked[0].name == "Music_3_PlayMedia"
    assert [r.name for r in ranker.rerank("play songs by Prince", [], recall=False)] == []
    with pytest.raises(ValueError, match="recall_depth"):
        ToolRanker(recall_depth=0)
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        ToolRanker(learning_rate=-1)


def test_a_recalled_tool_is_weighed_by_its_own_retrieval_score_when_given():
    """History lifts a tool from below the candidates; how far retrieval ranked it still counts."""

    def trained() -> ToolRanker:
        ranker = ToolRanker()
        for city in ("Oslo", "Rome", "Lima"):
            goal = f"weather forecast for {city} this weekend"
            ranker.rerank(goal, [("forecast_api", 1.0)])
            ranker.observe(goal, "forecast_api", False)
            ranker.observe(goal, "Weather_1_GetWeather", True)
        return ranker

    goal = "weather forecast for Kyiv this weekend"
    candidates = [("forecast_api", 2.0), ("climate_stats", 1.0)]
    blind = {r.name: r for r in trained().rerank(goal, candidates)}
    scored = {
        r.name: r for r in trained().rerank(goal, candidates, scores={"Weather_1_GetWeather": 1.6})
    }
    assert "retrieval 0.00" in blind["Weather_1_GetWeather"].reason
    assert "retrieval 0.80" in scored["Weather_1_GetWeather"].reason  # 1.6 of the best 2.0
    assert scored["Weather_1_GetWeather"].score > blind["Weather_1_GetWeather"].score
    # A score above the best candidate's (a tool that did not fit) counts as the best's.
    capped = trained().rerank(goal, candidates, scores={"Weather_1_GetWeather": 9.0})
    assert "retrieval 1.00" in {r.name: r for r in capped}["Weather_1_GetWeather"].reason
    # With no candidates at all, shares are taken against the best score given.
    alone = trained().rerank(goal, [], scores={"Weather_1_GetWeather": 3.0, "other": 6.0})
    assert "retrieval 0.50" in alone[0].reason and alone[0].name == "Weather_1_GetWeather"


class ConceptEmbedder:
    """A stand-in for a sentence embedder: one axis per concept, whatever words name it."""

    name = "concepts"
    concepts = (("song", "tune", "music", "track"), ("weather", "rain", "forecast"))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [
            [float(any(w in text.lower() for w in words)) for words in self.concepts] + [0.1]
            for text in texts
        ]
        vectors = np.asarray(rows, dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_ranker_with_an_embedder_finds_past_goals_that_share_no_word() -> None:
    embedder = ConceptEmbedder()
    ranker = ToolRanker(embedder=embedder)
    words = ToolRanker()
    assert ranker.min_similarity == 0.6 and words.min_similarity == 0.5
    for r in (ranker, words):
        r.observe("put on a tune", "Music_3_PlayMedia", True)
        r.observe("put on a tune", "play_sound_wave", False)
    goal = "I want to hear some music"  # no word in common with "put on a tune"
    assert words.similar_evidence(goal) == {}
    evidence = ranker.similar_evidence(goal)
    assert evidence["Music_3_PlayMedia"][0] > 0.9 and evidence["play_sound_wave"][1] > 0.9
    ranked = {r.name: r for r in ranker.rerank(goal, [("play_sound_wave", 1.0)])}
    assert "on similar goals 1.0 worked" in ranked["Music_3_PlayMedia"].reason  # recalled
    assert [r.name for r in words.rerank(goal, [("play_sound_wave", 1.0)])] == ["play_sound_wave"]
    assert ranker.similar_evidence("will it rain tomorrow") == {}


def test_similar_vectors_keeps_the_newest_entries_and_ranks_by_cosine() -> None:
    from dendrite.learning.similar import SimilarVectors

    index: SimilarVectors[str] = SimilarVectors(ConceptEmbedder(), capacity=2)
    index.add("play a song", "first")
    index.add("rain tomorrow?", "second")
    index.add("music please", "third")  # over capacity: the oldest entry goes
    assert len(index) == 2
    matches = index.search("some tune", k=5)
    assert [m.item for m in matches] == ["third", "second"]
    assert matches[0].similarity == pytest.approx(1.0, abs=1e-6)
    assert index.search("some tune", k=5, min_similarity=0.5)[0].text == "music please"
    assert [m.item for m in index.search("some tune", k=5, min_similarity=0.5)] == ["third"]
    with pytest.raises(ValueError, match="capacity"):
        SimilarVectors(ConceptEmbedder(), capacity=0)


def test_retriever_cache_gives_the_ranker_its_recall_depth():
    """A tool retrieval ranks below the planner's k can still lead once history says so."""
    from dendrite.planning.semantic import RetrieverCache

    registry = ToolRegistry()
    for index in range(8):
        registry.register_function(
            lambda query: query,
            name=f"lookup_{index}",
            description="look up a record " + "record " * (8 - index),
        )
    ranker = ToolRanker(recall_depth=8)
    cache = RetrieverCache(ranker=ranker)
    assert "lookup_7" not in [n for n, _, _ in cache.ranked("look up a record", registry, 3)]
    for name in ("Ann", "Bo", "Cy", "Di"):
        ranker.observe(f"look up a record for {name}", "lookup_7", True)
        for index in range(3):
            ranker.observe(f"look up a record for {name}", f"lookup_{index}", False)
    ranked = cache.ranked("look up a record for Ed", registry, 3)
    assert ranked[0][0] == "lookup_7"
    assert len(ranked) == 3


def test_retriever_cache_keeps_a_reranker_that_takes_no_scores_working():
    from dendrite.planning.semantic import RetrieverCache

    class OldReranker:
        """Written before ``scores`` existed: reverses retrieval's order."""

        def rerank(self, goal: str, candidates):
            return [Ranked(name, score, "old") for name, score in reversed(candidates)]

        def order(self, names):
            return list(names)

    registry = ToolRegistry()
    for index in range(3):
        registry.register_function(
            lambda query: query, name=f"lookup_{index}", description="look up " * (3 - index)
        )
    ranked = RetrieverCache(ranker=OldReranker()).ranked("look up", registry, 3)
    assert [name for name, _, _ in ranked] == ["lookup_2", "lookup_1", "lookup_0"]


def test_plan_memory_reuses_and_rebinds_or_declines():
    registry = ToolRegistry()

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a value between units."""
        return value

    registry.register_function(convert_units)
    memory = PlanMemory(threshold=0.5)
    plan = Plan(
        goal="convert 5 km to miles",
        steps=[
            Step(
                id="c",
                tool="convert_units",
                params={"value": 5, "from_unit": "km", "to_unit": "miles"},
            )
        ],
        planner="semantic",
    )
    memory.remember("convert 5 km to miles", plan, None)
    recalled = memory.recall("convert 12 km to miles", registry)
    assert recalled is not None and recalled.plan.planner == "memory"
    assert recalled.plan.steps[0].params == {"value": 12.0, "from_unit": "km", "to_unit": "miles"}
    assert recalled.plan.metadata["remembered_goal"] == "convert 5 km to miles"
    assert memory.recall("convert km to miles please", registry) is None  # no value to re-bind
    assert memory.recall("summarize the weekly report", registry) is None
    with pytest.raises(ValueError, match="threshold must be in"):
        PlanMemory(threshold=0)


def test_plan_memory_declines_a_goal_that_gives_an_argument_the_plan_would_drop():
    """ "the weather for city Tokyo" reused the plan of "the weather for city" (no
    argument) and answered with the tool's default city."""
    registry = ToolRegistry()

    def get_weather(city: str = "London") -> str:
        """Get the current weather forecast for a city."""
        return city

    registry.register_function(get_weather)
    memory = PlanMemory(threshold=0.5)
    old = "get the current weather forecast for city"
    step = Step(id="w", tool="get_weather", params={}, description=old)
    memory.remember(old, Plan(goal=old, steps=[step], planner="semantic"), None)
    assert memory.recall("get the current weather forecast for city Tokyo", registry) is None
    again = memory.recall("get the current weather forecast for the city", registry)
    assert again is not None and again.plan.steps[0].params == {}


def test_plan_memory_reads_a_spoken_expression_again():
    """ "what is 9 times 8" reused "7 * 6" from "what is 7 times 6" and answered 42: the
    expression was written from the old goal's words, which never say "7 * 6"."""
    registry = ToolRegistry()

    def calculate(expression: str) -> float:
        """Calculate an arithmetic expression."""
        return 0.0

    registry.register_function(calculate)
    memory = PlanMemory(threshold=0.5)
    step = Step(id="c", tool="calculate", params={"expression": "7 * 6"})
    memory.remember("what is 7 times 6", Plan(goal="g", steps=[step], planner="template"), None)
    recalled = memory.recall("what is 9 times 8", registry)
    assert recalled is not None and recalled.plan.steps[0].params == {"expression": "9 * 8"}


def test_plan_memory_gives_each_listed_file_its_place_and_keeps_the_goals_own_text():
    """ "summarize b.md and a.md", after a plan that summarised each of "a.md and b.md",
    summarised b.md twice: every step read the first file of the new goal. A value the
    argument reader wrote literally (the goal's own "${...}") was not seen as the goal's
    and was reused as it was."""
    registry = ToolRegistry()

    def summarize_document(name: str) -> str:
        """Summarize a document."""
        return name

    def echo(text: str) -> str:
        """Echo the text back."""
        return text

    registry.register_function(summarize_document)
    registry.register_function(echo)
    memory = PlanMemory(threshold=0.5)
    old = "summarize a.md and b.md"
    steps = [
        Step(id=f"s{i}", tool="summarize_document", params={"name": name})
        for i, name in enumerate(["a.md", "b.md"], start=1)
    ]
    memory.remember(old, Plan(goal=old, steps=steps, planner="template"), None)
    recalled = memory.recall("summarize b.md and a.md", registry)
    assert recalled is not None
    assert [s.params["name"] for s in recalled.plan.steps] == ["b.md", "a.md"]

    old = "echo back the words ${HOME} to me"
    said = Step(id="e", tool="echo", params={"text": literal(old)})
    memory.remember(old, Plan(goal=old, steps=[said], planner="template"), None)
    new = "echo back the words ${USER} to me"
    recalled = memory.recall(new, registry)
    assert recalled is not None and recalled.plan.steps[0].params == {"text": literal(new)}


def _fallback_registry(calls: list[str]) -> ToolRegistry:
    registry = ToolRegistry()

    def search_index(query: str) -> str:
        """Search the index for a query."""
        calls.append("search_index")
        raise ConnectionError("index node down")

    def search_replica(query: str) -> str:
        """Search the replica index for a query."""
        calls.append("search_replica")
        return f"replica: {query}"

    registry.register_function(search_index, alternatives=["search_replica"])
    registry.register_function(search_replica)
    return registry


def _fallback_orchestrator(
    store: ExecutionStore, calls: list[str], policy: HealthPolicy
) -> Orchestrator:
    """The fallback catalogue run once per call, learning with ``policy`` for its health."""
    registry = _fallback_registry(calls)
    return Orchestrator(
        registry,
        store=store,
        config=OrchestratorConfig(retry=ONCE),
        llm=None,
        learning=LearningLoop(registry, health_policy=policy),
    )


def test_end_to_end_a_failing_tool_is_quarantined_and_stops_wasting_calls(store: ExecutionStore):
    calls: list[str] = []
    registry = _fallback_registry(calls)
    config = OrchestratorConfig(retry=ONCE)
    with Orchestrator(registry, store=store, config=config, llm=None) as orch:
        plan = Plan(
            goal="search the index for x",
            steps=[Step(id="s", tool="search_index", params={"query": "x"})],
        )
        for _ in range(12):
            assert orch.process(plan).success
        wasted_before = calls.count("search_index")
        calls.clear()
        for _ in range(10):
            assert orch.process(plan).output == "replica: x"
        assert calls.count("search_index") == 0 and wasted_before == 8
        assert registry.state("search_index").status is ToolStatus.QUARANTINED
        log = orch.state.get("global", HEALTH_LOG_KEY)
        assert log[-1]["tool"] == "search_index" and log[-1]["after"] == "quarantined"
        # The trace says why the planned tool did not answer, live and from the store.
        skipped = orch.process(plan)
        (why,) = skipped.steps[0].not_tried
        assert why.startswith("tool 'search_index' is quarantined") and "failed" in why
        store.flush()
        orch._traces.clear()
        assert orch.get_execution_trace(skipped.execution_id).steps[0]["not_tried"] == [why]


def test_end_to_end_plan_memory_and_warm_start_from_the_store(store: ExecutionStore):
    registry = ToolRegistry()

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a length between units such as km and miles."""
        return round(value * 0.621371, 3)

    registry.register_function(convert_units)
    with Orchestrator(registry, store=store, llm=None) as orch:
        first = orch.process("convert 5 km to miles")
        second = orch.process("convert 12 km to miles")
    assert first.plan.planner != "memory" and second.plan.planner == "memory"
    assert second.output == 7.456
    store.flush()
    with Orchestrator(registry, store=store, llm=None) as fresh:
        third = fresh.process("convert 30 km to miles")
    assert third.plan.planner == "memory" and third.output == 18.641
    store.flush()
    record = store.get_execution(third.execution_id)
    assert record.metadata["planner"] == "memory"
    assert record.metadata["remembered_goal"] in ("convert 5 km to miles", "convert 12 km to miles")


def test_a_restart_learns_the_failures_that_a_fallback_rescued(store: ExecutionStore):
    """A step's summary names only the tool that answered: warm start replays every
    attempt, as the live loop learned them, or a restart trusts the broken first choice."""
    calls: list[str] = []
    plan = Plan(
        goal="search the index for x",
        steps=[Step(id="s", tool="search_index", params={"query": "x"})],
    )
    policy = HealthPolicy(min_samples=50, window=50)  # no quarantine: fallbacks answer
    with _fallback_orchestrator(store, calls, policy) as live:
        for _ in range(6):
            assert live.process(plan).output == "replica: x"
        learned = live.learning.ranker.posterior("search_index")
    assert calls.count("search_index") == 6
    store.flush()
    config = OrchestratorConfig(retry=ONCE)
    with Orchestrator(_fallback_registry(calls), store=store, config=config, llm=None) as fresh:
        restarted = fresh.learning.ranker.posterior("search_index")
        replica = fresh.learning.ranker.posterior("search_replica")
    assert restarted == pytest.approx(learned) and restarted < 0.5 < replica
    execution_ids = [r.id for r in store.get_recent_executions(6)]
    outcomes = store.get_attempt_outcomes(execution_ids)
    assert [(o.tool_name, o.success) for o in outcomes] == [
        ("search_index", False),
        ("search_replica", True),
    ] * 6
    with pytest.raises(InvalidRecordError, match="execution id must be a UUID, got 'goal_1'"):
        store.get_attempt_outcomes(["goal_1"])


def test_a_cancelled_reuse_of_a_remembered_plan_does_not_veto_it_after_a_restart(
    store: ExecutionStore,
):
    """The live loop learns nothing from a cancelled run; warm start judged its reuse of a
    remembered plan a failure, so after a restart that plan was never reused again."""
    release, called = threading.Event(), threading.Event()
    registry = ToolRegistry()

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a length between units such as km and miles."""
        if value == 7:
            called.set()
            release.wait(5)
        return round(value * 0.621371, 3)

    registry.register_function(convert_units)

    async def cancel_a_reuse(orch: Orchestrator) -> None:
        running = asyncio.create_task(orch.run("convert 7 km to miles"))
        while not called.is_set():
            await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    with Orchestrator(registry, store=store, llm=None) as live:
        assert live.process("convert 5 km to miles").success
        asyncio.run(cancel_a_reuse(live))
        release.set()
        assert live.learning.memory.recall("convert 9 km to miles", registry) is not None
    store.flush()
    (cancelled,) = store.get_recent_executions(1)
    assert cancelled.status == "cancelled" and cancelled.metadata["planner"] == "memory"
    with Orchestrator(registry, store=store, llm=None) as restarted:
        assert restarted.learning.memory.recall("convert 9 km to miles", registry) is not None


def test_a_restart_counts_a_for_each_steps_items_as_the_live_loop_did(store: ExecutionStore):
    registry = ToolRegistry()

    def echo(x: int) -> int:
        """Echo a number."""
        return x

    registry.register_function(echo)
    plan = Plan(
        goal="echo every number",
        steps=[Step(id="s", tool="echo", for_each="${context.items}", params={"x": "${item}"})],
    )
    with Orchestrator(registry, store=store, llm=None) as live:
        assert live.process(plan, context={"items": list(range(200))}).success
        learned = live.learning.ranker.posterior("echo")
    store.flush()
    warm = LearningLoop(registry)
    warm.warm_start(store)
    assert warm.ranker.posterior("echo") == pytest.approx(learned)


def test_a_remembered_plan_that_fails_on_reuse_gives_way_to_its_repair(store: ExecutionStore):
    """Reuse is judged by the first round: a plan whose tool broke was replayed (and
    repaired) on every later goal, and the repaired plan, planned by "memory", was never
    remembered. Now the broken plan is set aside and the repair is what memory reuses."""
    broken = {"on": False, "calls": 0}
    registry = ToolRegistry()

    def weather_lookup(zip: int) -> str:
        """Get the weather forecast for a zip code."""
        if broken["on"]:
            broken["calls"] += 1
            raise ValueError("this tool no longer answers zip codes")
        return f"sunny at {zip}"

    def zip_weather(zip: int) -> str:
        """Weather forecast by postal zip code."""
        return f"cloudy at {zip}"

    registry.register_function(weather_lookup)
    with Orchestrator(registry, store=store, llm=None) as orch:
        assert orch.process("weather forecast for zip 10001").output == "sunny at 10001"
        broken["on"] = True
        registry.register_function(zip_weather)
        runs = [orch.process(f"weather forecast for zip {z}") for z in (94105, 60601, 73301)]
    assert [r.output for r in runs] == ["cloudy at 94105", "cloudy at 60601", "cloudy at 73301"]
    assert [r.plan.planner for r in runs] == ["memory"] * 3
    assert [len(r.plan.metadata.get("replans", [])) for r in runs] == [1, 0, 0]
    assert broken["calls"] == 1  # only the first reuse tried the broken plan
    assert runs[1].plan.metadata["remembered_from"] == runs[0].execution_id
    store.flush()
    with Orchestrator(registry, store=store, llm=None) as restarted:  # learns it all again
        again = restarted.process("weather forecast for zip 2108")
    assert again.output == "cloudy at 2108" and again.plan.planner == "memory"
    assert broken["calls"] == 1


def test_a_plan_with_the_callers_arguments_is_never_reused_for_another_goal(
    store: ExecutionStore,
):
    """The single-tool planner's arguments come from ``context["params"]``, a hand-written
    plan's from its caller: remembered, they answered other sessions' goals that never said
    them (Alice's account looked up for Bob), and a restart learned them again."""
    registry = ToolRegistry()

    def get_account(account_id: int) -> str:
        """Get the account details of an account by its id."""
        return f"account {account_id}"

    def get_customer(customer_id: int) -> str:
        """Get a customer record by id (the old service)."""
        raise ValueError("this service is gone")

    def fetch_customer(customer_id: int) -> str:
        """Fetch a customer record by id."""
        return f"customer {customer_id}"

    for tool in (get_account, get_customer, fetch_customer):
        registry.register_function(tool)
    hand_written = Plan(  # answered by its own fallback: a hand-written plan is not repaired
        goal="show the customer record",
        steps=[
            Step(
                id="s",
                tool="get_customer",
                params={"customer_id": 99},
                fallbacks=["fetch_customer"],
            )
        ],
    )

    def others_goals(orch: Orchestrator) -> None:
        for goal in ("get account details", "show the customer record"):
            with pytest.raises(PlanningError):
                orch.process(goal, session_id="bob")

    with Orchestrator(registry, store=store, llm=None) as live:
        alice = live.process(
            "get account details",
            session_id="alice",
            context={"params": {"account_id": 4711}},
            planner=live.make_planner("single"),
        )
        carol = live.process(hand_written, session_id="carol")
        assert alice.output == "account 4711" and carol.output == "customer 99"
        others_goals(live)
    store.flush()
    with Orchestrator(registry, store=store, llm=None) as restarted:
        others_goals(restarted)


def test_a_planner_or_strategy_asked_for_keeps_the_ranker_and_plan_memory(store: ExecutionStore):
    """``--planner``/``--strategy`` (CLI) and ``planner``/``strategy`` (API) go through
    ``make_planner``: the planner asked for still ranks by history and reuses past plans."""
    registry = ToolRegistry()

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a length between units such as km and miles."""
        return round(value * 0.621371, 3)

    registry.register_function(convert_units)
    with Orchestrator(registry, store=store, llm=None) as orch:
        assert orch.process("convert 5 km to miles").success
        orch.planner = orch.make_planner("dendrite", "simple")
        again = orch.process("convert 12 km to miles")
        assert again.plan.planner == "memory" and again.output == 7.456
        orch.planner = orch.make_planner("semantic")
        ranked = orch.process("convert 3 km to miles")
        assert ranked.success and ranked.plan.planner == "semantic"
        why = store.get_execution(ranked.execution_id).metadata["why"]
        assert "convert_units: expected success" in why["step1"]
    with pytest.raises(ValueError, match="unknown planner 'nope'"):
        orch.make_planner("nope")
    with pytest.raises(ValueError, match="the llm planner needs a model"):
        orch.make_planner("llm")


def test_a_quarantine_outlives_the_process_and_is_probed_after_its_cooldown(
    store: ExecutionStore,
):
    """Each ``dendrite run`` is a process of its own: a tool quarantined by one must stay out
    in the next, for what is left of its cooldown, and then get its probe."""
    import time

    calls: list[str] = []
    plan = Plan(
        goal="search the index for x",
        steps=[Step(id="s", tool="search_index", params={"query": "x"})],
    )
    policy = HealthPolicy(min_samples=4, window=8, cooldown=1.5)
    with _fallback_orchestrator(store, calls, policy) as first:
        for _ in range(4):
            first.process(plan)
        assert first.registry.state("search_index").status is ToolStatus.QUARANTINED
    calls.clear()
    with _fallback_orchestrator(store, calls, policy) as second:
        assert second.learning.health.health("search_index") is Health.QUARANTINED
        assert second.process(plan).output == "replica: x"
        assert calls == ["search_replica"]  # the quarantined tool was not called
        time.sleep(1.6)
        calls.clear()
        second.process(plan)
        assert calls[0] == "search_index"  # cooldown over: one probe
        assert second.learning.health.health("search_index") is Health.QUARANTINED
    log = second.state.get("global", HEALTH_LOG_KEY)
    assert [e["after"] for e in log][-2:] == ["probing", "quarantined"]
    assert log[-1]["cooldown"] == 3.0  # doubled after the failed probe


def test_half_open_lets_one_probe_through_while_runs_overlap():
    """After the cooldown one call probes the tool; runs that overlap it fall back instead
    of sending the whole burst to a tool that may still be broken."""
    import asyncio

    from dendrite.learning.loop import LearningLoop

    calls: list[str] = []
    registry = ToolRegistry()

    async def fetch_primary(query: str) -> str:
        """Fetch a record by query from the primary service."""
        calls.append("primary")
        await asyncio.sleep(0.05)
        raise RuntimeError("primary down")

    def fetch_backup(query: str) -> str:
        """Fetch a record by query from the backup service."""
        calls.append("backup")
        return "backup:" + query

    registry.register_function(fetch_primary, alternatives=["fetch_backup"])
    registry.register_function(fetch_backup)
    now = [0.0]
    loop = LearningLoop(
        registry,
        health_policy=HealthPolicy(min_samples=4, window=8, cooldown=10),
        clock=lambda: now[0],
    )

    def plan() -> Plan:
        step = Step(id="s", tool="fetch_primary", params={"query": "x"}, fallbacks=["fetch_backup"])
        return Plan(goal="fetch x", steps=[step])

    async def main() -> list[bool]:
        async with Orchestrator(registry, store=None, llm=None, learning=loop) as orch:
            for _ in range(4):
                await orch.run(plan())
            assert loop.health.health("fetch_primary") is Health.QUARANTINED
            now[0] = 11
            calls.clear()
            results = await asyncio.gather(*(orch.run(plan()) for _ in range(6)))
            return [r.success for r in results]

    assert asyncio.run(main()) == [True] * 6
    assert calls.count("primary") == 1 and calls.count("backup") == 6
    assert loop.health.health("fetch_primary") is Health.QUARANTINED  # the probe failed


def test_a_slow_health_log_write_stalls_neither_the_event_loop_nor_other_runs_calls(
    store_url: str, tmp_path: Path
):
    """A transition was written to the store's health log on the event loop, under the
    monitor's lock: while another process held the log (or the database was slow), the loop
    stood still and every run's next tool call (``admit``) waited for the write."""
    registry = ToolRegistry()

    async def fetch_primary(query: str) -> str:
        """Fetch a record by query from the primary service."""
        raise RuntimeError("primary down")

    async def fetch_backup(query: str) -> str:
        """Fetch a record by query from the backup service."""
        return "backup:" + query

    registry.register_function(fetch_primary, alternatives=["fetch_backup"])
    registry.register_function(fetch_backup)
    loop = LearningLoop(registry, health_policy=HealthPolicy(min_samples=2, window=2))
    plan = Plan(goal="fetch x", steps=[Step(id="s", tool="fetch_primary", params={"query": "x"})])
    holding = threading.Event()

    def held_by_another_process(previous: object) -> object:
        holding.set()
        time.sleep(1.0)
        return previous or []

    def admit_once_quarantined() -> float:
        while loop.health.health("fetch_primary") is not Health.QUARANTINED:
            time.sleep(0.001)
        started = time.perf_counter()
        loop.health.admit("fetch_backup")  # a call of another run, on another thread
        return time.perf_counter() - started

    async def main(orch: Orchestrator, other: ExecutionStore) -> tuple[float, float]:
        await orch.run(plan)
        writer = threading.Thread(
            target=other.update_state, args=("global", "", HEALTH_LOG_KEY, held_by_another_process)
        )
        writer.start()
        await asyncio.to_thread(holding.wait, 5)
        gaps: list[float] = []

        async def heartbeat() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        beating = asyncio.create_task(heartbeat())
        admitting = asyncio.create_task(asyncio.to_thread(admit_once_quarantined))
        await orch.run(plan)  # the second failure in a row: quarantined
        await asyncio.sleep(0.05)
        beating.cancel()
        await asyncio.to_thread(writer.join)
        return max(gaps), await admitting

    config = OrchestratorConfig(retry=ONCE, max_replans=0)
    with (
        ExecutionStore(store_url, state_dir=tmp_path / "a") as store,
        ExecutionStore(store_url, state_dir=tmp_path / "b") as other,
        Orchestrator(registry, store=store, config=config, llm=None, learning=loop) as orch,
    ):
        stall, admit_wait = asyncio.run(main(orch, other))
        log = orch.state.reread("global", HEALTH_LOG_KEY)
    assert stall < 0.5 and admit_wait < 0.5
    assert log[-1]["tool"] == "fetch_primary" and log[-1]["after"] == "quarantined"


def test_of_tools_equally_likely_to_answer_the_quicker_ranks_first():
    ranker = ToolRanker()
    for n in range(6):
        for tool in ("slow_convert", "fast_convert"):
            ranker.observe(f"convert {n} km to miles", tool, True)
        ranker.observe_latency("slow_convert", 300.0)
        ranker.observe_latency("fast_convert", 1.0)  # counts as the 10 ms floor
    ranked = ranker.rerank("convert 9 km to miles", [("slow_convert", 1.0), ("fast_convert", 1.0)])
    assert [r.name for r in ranked] == ["fast_convert", "slow_convert"]
    assert "typically 300 ms (-0.7)" in ranked[1].reason
    # The same record expects the same success; slowness is taken off the score once (the
    # trace showed it taken off the expected success too, then again).
    twins = ToolRanker()
    for _ in range(5):
        for tool, ms in (("fast", 10.0), ("slow", 10_000.0)):
            twins.observe("fetch the report", tool, True, retrieval=1.0)
            twins.observe_latency(tool, ms)
    fast, slow = twins.rerank("fetch the report", [("fast", 1.0), ("slow", 1.0)])
    assert fast.reason.split(":")[0] == slow.reason.split(":")[0] == "expected success 0.97"
    assert slow.reason.endswith("typically 10000 ms (-1.5)")
    assert fast.score - slow.score == pytest.approx(1.5, abs=0.01)
    assert ranker.order(["slow_convert", "fast_convert"]) == ["fast_convert", "slow_convert"]
    assert ranker.typical_ms("fast_convert") == pytest.approx(10.0)
    # Instant tools differ by noise only: the floor makes them equal.
    ranker.observe_latency("instant_a", 0.01)
    ranker.observe_latency("instant_b", 0.5)
    assert ranker.typical_ms("instant_a") == ranker.typical_ms("instant_b")
    with pytest.raises(ValueError, match="latency_weight"):
        ToolRanker(latency_weight=-1)


def test_negative_retrieval_scores_keep_their_order_and_settings_are_checked():
    """Shares of the best score were divided by a negative best, which reversed the
    order; NaN for min_similarity silently dropped the similar-goal evidence."""
    ranked = ToolRanker().rerank("some goal", [("a", -0.1), ("b", -0.9)])
    assert [r.name for r in ranked] == ["a", "b"]
    for kwargs, name in (
        ({"min_similarity": math.nan}, "min_similarity"),
        ({"min_similarity": 5.0}, "min_similarity"),
        ({"recall_min": math.nan}, "recall_min"),
        ({"context_size": -1}, "context_size"),
    ):
        with pytest.raises(ValueError, match=name):
            ToolRanker(**kwargs)


def test_a_tool_only_the_health_log_knows_is_enabled_by_another_process(store: ExecutionStore):
    """``dendrite tools enable`` registers only the built-in tools: an application's tool
    that the health monitor quarantined was an "unknown tool" to it (suggested twice over,
    once as registered and once as saved), and stayed quarantined."""
    calls: list[str] = []
    policy = HealthPolicy(min_samples=4, window=4, cooldown=3600, max_cooldown=7200)
    with _fallback_orchestrator(store, calls, policy) as application:
        for _ in range(4):
            application.learning.health.observe("search_index", False)
        assert application.registry.state("search_index").status is ToolStatus.QUARANTINED
    with Orchestrator(ToolRegistry(), store=store, llm=None) as command_line:
        command_line.set_tool_status("search_index", "enabled")
        with pytest.raises(UnknownToolError) as unknown:
            command_line.set_tool_status("search_indx", "enabled")
    assert str(unknown.value).count("'search_index'") == 1
    # registered here and saved by the store: one name, suggested once
    assert str(UnknownToolError("calclate", ["calculate", "calculate"])).count("calculate'") == 1
    with _fallback_orchestrator(store, calls, policy) as next_run:
        assert next_run.registry.state("search_index").status is ToolStatus.ENABLED


def test_enabling_a_quarantined_tool_by_hand_ends_its_health_quarantine_for_good(
    store: ExecutionStore,
):
    """``dendrite tools enable`` / ``POST /v1/tools/X/enable``: the monitor went on ignoring
    the tool's outcomes, and the next process restored the quarantine from the health log."""
    calls: list[str] = []
    policy = HealthPolicy(min_samples=4, window=4, cooldown=3600, max_cooldown=7200)

    def orchestrator() -> Orchestrator:
        return _fallback_orchestrator(store, calls, policy)

    with orchestrator() as first:
        for _ in range(4):
            first.learning.health.observe("search_index", False)
        assert first.registry.state("search_index").status is ToolStatus.QUARANTINED
        first.set_tool_status("search_index", "enabled")
        assert first.learning.health.health("search_index") is Health.HEALTHY
        assert first.learning.health.summary()["search_index"]["recent"] == []
        last = first.learning.health.transitions[-1]
        assert (last.before, last.after, last.reason) == (
            Health.QUARANTINED,
            Health.HEALTHY,
            "enabled by hand",
        )
    with orchestrator() as second:
        assert second.registry.state("search_index").status is ToolStatus.ENABLED
        assert second.learning.health.health("search_index") is Health.HEALTHY
    # Quarantined by a process started after this one read the log: enabling it here
    # still ends the quarantine for the processes that come next.
    with orchestrator() as earlier, orchestrator() as later:
        for _ in range(4):
            later.learning.health.observe("search_index", False)
        earlier.set_tool_status("search_index", "enabled")
    with orchestrator() as third:
        assert third.registry.state("search_index").status is ToolStatus.ENABLED


def test_a_tool_disabled_or_deprecated_after_its_health_quarantine_stays_out(
    store: ExecutionStore,
):
    """The next process restored the health log's quarantine over the saved state, as
    the monitor's own: after one cooldown its probe put a tool disabled by hand (or
    deprecated by the lifecycle job) back in service."""
    calls: list[str] = []
    policy = HealthPolicy(min_samples=4, window=4, cooldown=0.01, max_cooldown=0.02)

    def orchestrator() -> Orchestrator:
        return _fallback_orchestrator(store, calls, policy)

    with orchestrator() as first:
        for _ in range(4):
            first.learning.health.observe("search_index", False)
        first.set_tool_status("search_index", "disabled", "retired by ops")
    with orchestrator() as second:
        state = second.registry.state("search_index")
        assert (state.status, state.reason) == (ToolStatus.DISABLED, "retired by ops")
        time.sleep(0.05)  # the cooldown is over: a probe of its own would lift it
        second.learning.health.observe("search_index", True)
        assert second.registry.state("search_index").status is ToolStatus.DISABLED
    with orchestrator() as third:  # quarantined by health, then by hand for another reason
        third.set_tool_status("search_index", "enabled")
        for _ in range(4):
            third.learning.health.observe("search_index", False)
        third.set_tool_status("search_index", "quarantined", "deprecated: 0% success")
    with orchestrator() as fourth:
        time.sleep(0.05)
        fourth.learning.health.observe("search_index", True)
        state = fourth.registry.state("search_index")
        assert (state.status, state.reason) == (ToolStatus.QUARANTINED, "deprecated: 0% success")


def test_a_remembered_plan_with_text_built_from_the_goal_is_rebound_or_declined():
    """A value the argument reader or a template put together from the goal's words (the
    text around a consumed date, "storage.md temperature ...") is no substring of it: it
    was kept as a constant, and the new goal ran with the old goal's words."""
    registry = ToolRegistry()

    def search_hotels(query: str, checkin_date: str) -> dict:
        """Search hotels: find hotels for a query and a check-in date."""
        return {}

    def search_documents(query: str) -> list:
        """Search the documents."""
        return []

    registry.register_function(search_hotels)
    registry.register_function(search_documents)
    memory = PlanMemory(threshold=0.5)
    old = "find hotels with a pool near the beach on 2024-05-01 in Rome"
    query = extract_arguments(old, registry.get("search_hotels").parameters_schema).params
    assert "Rome" in query["query"] and query["query"] not in old  # around the date
    memory.remember(
        old,
        Plan(goal=old, steps=[Step(id="s", tool="search_hotels", params=query)]),
        None,
    )
    recalled = memory.recall(old.replace("Rome", "Nice"), registry)
    assert recalled is not None and "Nice" in recalled.plan.steps[0].params["query"]
    compared = "compare what a.md and b.md say about temperature"
    built = Step(id="s", tool="search_documents", params={"query": "a.md temperature"})
    memory.remember(compared, Plan(goal=compared, steps=[built]), None)
    assert memory.recall(compared.replace("temperature", "humidity"), registry) is None


def test_a_remembered_negative_written_in_words_is_rebound_from_the_new_goal():
    """The reader reads "minus 5" as -5, which the old goal's words do not say: memory kept
    -5 as a constant, and "... to 20 degrees" ran with -5."""
    registry = ToolRegistry()

    def set_thermostat(room: str, temperature: float) -> str:
        """Set the thermostat of a room to a temperature."""
        return room

    registry.register_function(set_thermostat)
    memory = PlanMemory(threshold=0.5)
    old = "set the thermostat to minus 5 degrees in room garage"
    params = extract_arguments(old, registry.get("set_thermostat").parameters_schema).params
    assert params["temperature"] == -5
    memory.remember(
        old, Plan(goal=old, steps=[Step(id="s", tool="set_thermostat", params=params)]), None
    )
    recalled = memory.recall(old.replace("minus 5", "20"), registry)
    assert recalled is not None and recalled.plan.steps[0].params["temperature"] == 20


def test_a_remembered_flag_is_read_again_from_the_new_goal():
    """A flag the old goal named ("strip punctuation") was a constant of the plan: reused
    for a goal that does not name it, it stripped all the same."""
    registry = ToolRegistry()

    def normalize_text(text: str, strip_punctuation: bool = False) -> str:
        """Normalize text."""
        return text

    registry.register_function(normalize_text)
    memory = PlanMemory(threshold=0.3)
    old = 'normalize "Hello, World!" and strip punctuation'
    params = extract_arguments(old, registry.get("normalize_text").parameters_schema).params
    assert params["strip_punctuation"] is True
    memory.remember(
        old, Plan(goal=old, steps=[Step(id="s", tool="normalize_text", params=params)]), None
    )
    again = memory.recall('normalize "Good, Day!" and strip punctuation', registry)
    assert again is not None and again.plan.steps[0].params["strip_punctuation"] is True
    unnamed = 'normalize "Hello, World!" in lower case'  # as close, the flag not named
    assert memory.recall(unnamed, registry) is None


def test_two_processes_on_one_store_keep_each_others_quarantines_and_tool_states(
    store_url: str, tmp_path: Path
):
    """A ``dendrite serve`` beside a ``dendrite run``: each wrote back the health log and
    the tools' states as it had read them, and the last one erased the other's."""

    def registry() -> ToolRegistry:
        tools = ToolRegistry()
        for name, alternative in (("x", "x2"), ("x2", None), ("y", "y2"), ("y2", None)):
            tools.register_function(
                lambda query: query, name=name, alternatives=[alternative] if alternative else []
            )
        return tools

    def process(folder: str) -> Orchestrator:
        tools = registry()
        loop = LearningLoop(tools, health_policy=HealthPolicy(window=4, min_samples=4))
        store = ExecutionStore(store_url, state_dir=tmp_path / folder)
        return Orchestrator(tools, store=store, llm=None, learning=loop)

    a, b = process("a"), process("b")
    for _ in range(4):
        a.learning.health.observe("x", False)
        b.learning.health.observe("y", False)
    a.set_tool_status("x2", "disabled", "maintenance")
    b.set_tool_status("y2", "disabled", "maintenance")
    for orchestrator in (a, b):
        orchestrator.close()
        orchestrator.store.close()
    with process("c") as restarted:
        states = {n: restarted.registry.state(n).status for n in ("x", "x2", "y", "y2")}
        restarted.store.close()
    assert states == {
        "x": ToolStatus.QUARANTINED,
        "x2": ToolStatus.DISABLED,
        "y": ToolStatus.QUARANTINED,
        "y2": ToolStatus.DISABLED,
    }


def test_a_probe_does_not_lift_a_quarantine_set_since_by_hand_or_by_the_lifecycle_job():
    registry = _fallback_registry([])
    now = [0.0]
    monitor = HealthMonitor(
        registry, HealthPolicy(min_samples=4, window=8, cooldown=10), clock=lambda: now[0]
    )
    for _ in range(4):
        monitor.observe("search_index", False)
    assert registry.state("search_index").status is ToolStatus.QUARANTINED
    registry.quarantine("search_index", "deprecated: 5% success over 40 attempts")
    now[0] = 11
    monitor.tick()
    monitor.observe("search_index", True)  # a probe outcome (or a call already under way)
    assert monitor.health("search_index") is Health.HEALTHY
    state = registry.state("search_index")
    assert state.status is ToolStatus.QUARANTINED and state.reason.startswith("deprecated")


def test_an_escalated_cooldown_outlives_a_process_that_ends_while_probing(tmp_path: Path):
    """Three failed probes took the cooldown from 30 s to 240 s; the process then ended with
    the tool probing (every run ticks, even one that never calls it). The probing entry of
    the log said cooldown 0, so the next process fell back to 30 s and its failed probe
    quarantined the tool for 60 s instead of going on to 480 s."""
    from dendrite.state import StateManager

    clock = Clock()
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:

        def process() -> LearningLoop:
            registry = _fallback_registry([])
            return LearningLoop(registry, state=StateManager(store), clock=clock)

        def fail_a_probe(loop: LearningLoop) -> str:
            loop.before_run()  # cooldown over: probing
            assert loop.health.admit("search_index")
            moved = loop.health.observe("search_index", False, datetime.now(UTC))
            return moved.reason

        first = process()
        for _ in range(8):
            first.health.observe("search_index", False)
        reasons = []
        for _ in range(3):
            clock.now += 10_000
            reasons.append(fail_a_probe(first))
        assert [r.rsplit(" ", 1)[1] for r in reasons] == ["60s", "120s", "240s"]
        clock.now += 10_000
        first.before_run()  # the process ends here, with the tool probing
        second = process()
        assert second.health.health("search_index") is Health.QUARANTINED
        assert fail_a_probe(second) == "probe call failed; quarantined again for 480s"


def test_plan_memory_rebinds_each_step_from_its_own_part_of_the_goal():
    """Every step's arguments were read from the whole new goal, so the second part got the
    first part's expression: "4 + 5 and also 7 * 8" answered 9 and 9."""
    registry = ToolRegistry()

    def calculate(expression: str) -> float:
        """Evaluate an arithmetic expression."""
        return 0.0

    registry.register_function(calculate)
    old = "calculate 2 + 3 and also calculate 10 * 4"
    steps = [
        Step(
            id="s1", tool="calculate", params={"expression": "2 + 3"}, description="calculate 2 + 3"
        ),
        Step(
            id="s2",
            tool="calculate",
            params={"expression": "10 * 4"},
            description="calculate 10 * 4",
        ),
    ]
    memory = PlanMemory(threshold=0.5)
    memory.remember(old, Plan(goal=old, steps=steps, planner="semantic"), None)
    recalled = memory.recall("calculate 4 + 5 and also calculate 7 * 8", registry)
    assert recalled is not None
    assert [s.params["expression"] for s in recalled.plan.steps] == ["4 + 5", "7 * 8"]
    assert [s.description for s in recalled.plan.steps] == ["calculate 4 + 5", "calculate 7 * 8"]
    # A goal in another number of parts: no telling which part answers to which step.
    assert (
        memory.recall("calculate 4 + 5 and also calculate 7 * 8 and also calculate 1 + 1", registry)
        is None
    )


def test_plan_memory_drops_fallbacks_gone_since_and_finds_a_good_plan_after_vetoed_ones():
    registry = ToolRegistry()
    for name in ("lookup", "lookup_backup"):
        registry.register_function(lambda query: query, name=name)
    plan = Plan(
        goal="look up the weather in Oslo",
        steps=[
            Step(id="s", tool="lookup", params={"query": "forecast"}, fallbacks=["lookup_backup"])
        ],
        planner="semantic",
    )
    memory = PlanMemory(threshold=0.5)
    for execution in ("e0", "e1", "e2", "e3"):
        memory.remember("look up the weather in Oslo", plan, execution)
    for execution in ("e0", "e1", "e2"):
        memory.judge(execution, 0.0)
    registry.set_state("lookup_backup", ToolStatus.DISABLED, "retired")
    recalled = memory.recall("look up the weather in Oslo", registry)
    assert recalled is not None and recalled.source.execution_id == "e3"
    assert recalled.plan.steps[0].fallbacks == []  # the plan validates without it


def test_similar_goals_weigh_the_newest_outcomes_among_equals():
    """Stable sorting kept the oldest of equally similar entries: 20 successes then 30
    failures of one goal read as "12 worked / 0 failed"."""
    ranker = ToolRanker()
    goal = "get the weather forecast"
    for success in [True] * 20 + [False] * 30:
        ranker.observe(goal, "weather_a", success, retrieval=1.0)
    good, bad = ranker.similar_evidence(goal)["weather_a"]
    assert bad > 0 and good == 0


def test_a_probe_that_answers_after_a_retry_restores_the_tool():
    """Each attempt was judged: the probe's first, failed attempt re-quarantined the tool
    with its cooldown doubled although the call answered on its retry."""
    registry = registry_with("primary", "backup", alternatives={"primary": ["backup"]})
    clock = Clock()
    monitor = HealthMonitor(
        registry, HealthPolicy(window=4, min_samples=2, cooldown=10), clock=clock
    )
    monitor.observe_call("primary", [(False, None)])
    monitor.observe_call("primary", [(False, None)])
    assert registry.state("primary").status is ToolStatus.QUARANTINED
    clock.now += 11
    monitor.tick()
    (moved,) = monitor.observe_call("primary", [(False, None), (True, None)])
    assert moved.after is Health.HEALTHY and moved.reason == "probe call succeeded"


def test_input_every_tool_refuses_does_not_quarantine_them(store: ExecutionStore):
    """Validation errors are the caller's when no tool took the input: eight goals with a
    unit nobody knows quarantined a correct tool and flagged its backup."""
    registry = ToolRegistry()

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a value between length units."""
        if from_unit not in ("km", "miles"):
            raise ValueError(f"unknown unit {from_unit!r}")
        return value * 0.621

    def convert_backup(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a value between length units, another way."""
        return convert_units(value, from_unit, to_unit)

    registry.register_function(convert_units, alternatives=["convert_backup"])
    registry.register_function(convert_backup)
    policy = HealthPolicy(window=4, min_samples=2, cooldown=60)
    learning = LearningLoop(registry, health_policy=policy)
    with Orchestrator(
        registry, store=store, config=OrchestratorConfig(retry=ONCE), llm=None, learning=learning
    ) as orch:
        for i in range(8):
            assert not orch.process(f"convert {i} parsecs to miles").success
        assert registry.get("convert_units").available and registry.get("convert_backup").available
        assert learning.health.transitions == []


def test_the_trace_names_a_stand_in_left_out_as_quarantined(store: ExecutionStore):
    calls: list[str] = []
    registry = _fallback_registry(calls)
    registry.set_state("search_index", ToolStatus.QUARANTINED, "index node down")
    # A declared alternative nobody registered is not "left out": it is not there at all.
    registry.get("search_replica").alternatives = ("search_index", "search_nowhere")
    with Orchestrator(
        registry, store=store, config=OrchestratorConfig(retry=ONCE), llm=None
    ) as orch:
        result = orch.process("search the replica index for dendrite")
    assert result.plan.steps[0].tool == "search_replica"
    why = result.why[result.plan.steps[0].id]
    assert "left out: tool 'search_index' is quarantined" in why and "nowhere" not in why


def test_the_trace_names_what_was_left_out_when_the_plan_was_made(store: ExecutionStore):
    """Read when the run ended, a stand-in quarantined mid-run was named as left out of
    the step it had just answered, and one restored mid-run was not named at all."""
    registry = ToolRegistry()

    def fetch_primary(query: str) -> str:
        """Fetch a record from the primary."""
        raise RuntimeError("primary down")

    def fetch_replica(query: str) -> str:
        """Fetch a record from the replica."""
        return "replica:" + query

    def fetch_cache(query: str) -> str:
        """Fetch a record from the cache."""
        return "cache:" + query

    def operator(name: str, status: str) -> str:
        """Change a tool's state while the run goes on, as a person or a run beside it may."""
        orch.set_tool_status(name, status, "taken out" if status != "enabled" else None)
        return status

    registry.register_function(fetch_primary, alternatives=["fetch_replica"])
    registry.register_function(fetch_replica)
    registry.register_function(fetch_cache, alternatives=["fetch_primary"])
    registry.register_function(operator)

    def plan(tool: str, name: str, status: str) -> Plan:
        steps = [
            Step(id="a", tool=tool, params={"query": "x"}),
            Step(
                id="b", tool="operator", params={"name": name, "status": status}, depends_on=["a"]
            ),
        ]
        return Plan(goal="fetch x", steps=steps, metadata={"why": {"a": f"{tool}: picked"}})

    config = OrchestratorConfig(retry=ONCE, learning=False, max_replans=0)
    with Orchestrator(registry, store=store, config=config, llm=None) as orch:
        answered = orch.process(plan("fetch_primary", "fetch_replica", "quarantined"))
        assert answered.step("a").tool == "fetch_replica"
        assert answered.why["a"] == "fetch_primary: picked"
        orch.set_tool_status("fetch_replica", "enabled")
        orch.set_tool_status("fetch_primary", "quarantined", "under maintenance")
        restored = orch.process(plan("fetch_cache", "fetch_primary", "enabled"))
        assert registry.state("fetch_primary").status is ToolStatus.ENABLED
    assert restored.why["a"] == (
        "fetch_cache: picked; left out: tool 'fetch_primary' is quarantined: under maintenance"
    )
    store.flush()
    assert store.get_execution(answered.execution_id).metadata["why"]["a"] == answered.why["a"]


def test_plan_memory_keeps_a_quoted_value_whole_and_finds_a_steps_part_by_its_text():
    registry = ToolRegistry()

    def search(query: str) -> str:
        """Search for a query."""
        return query

    def get_date() -> str:
        """Today's date."""
        return "2026-11-24"

    registry.register_function(search)
    registry.register_function(get_date)
    quoted = 'search for "first come then served"'
    memory = PlanMemory(threshold=0.3)
    step = Step(id="s1", tool="search", params={"query": "first come then served"})
    memory.remember(quoted, Plan(goal=quoted, steps=[step], planner="llm"), None)
    recalled = memory.recall(quoted, registry)  # "then" inside quotes splits nothing
    assert recalled is not None and recalled.plan.steps[0].params == step.params

    old = "get the date and also search for date"
    steps = [
        Step(id="s1", tool="get_date", description="get the date"),
        Step(id="s2", tool="search", params={"query": "date"}, description="search for date"),
    ]
    memory = PlanMemory(threshold=0.3)
    memory.remember(old, Plan(goal=old, steps=steps, planner="semantic"), None)
    recalled = memory.recall("get the date and also search for holidays", registry)
    assert recalled is not None
    assert recalled.plan.steps[1].params == {"query": "holidays"}


def test_similar_vectors_put_the_newest_first_among_identical_goals():
    """Identical rows' float32 products differ in their last bits: the two newest of 30
    identical goals were left out of the 12 best."""
    vector = np.random.default_rng(0).normal(size=384).astype(np.float32)
    vector /= np.linalg.norm(vector)

    class Same:
        name = "same"

        def embed(self, texts: Sequence[str]) -> np.ndarray:
            return np.tile(vector, (len(texts), 1))

    from dendrite.learning.similar import SimilarVectors

    index: SimilarVectors[int] = SimilarVectors(Same(), capacity=1000)
    for i in range(30):
        index.add("get the weather forecast", i)
    assert [m.item for m in index.search("get the weather forecast", k=12)] == list(
        range(29, 17, -1)
    )


def test_a_running_orchestrator_takes_up_tool_states_another_process_saved(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    """`dendrite tools disable` beside a running server changed nothing until it restarted:
    saved states were read at start only."""
    import dendrite.orchestrator as orchestrator_module

    monkeypatch.setattr(orchestrator_module, "TOOL_STATES_REFRESH", 0.0)
    calls: list[str] = []
    server = Orchestrator(_fallback_registry(calls), store=store, llm=None)
    command_line = Orchestrator(_fallback_registry([]), store=store, llm=None)
    with server, command_line:
        command_line.set_tool_status("search_replica", "disabled", "retired")
        result = server.process("search the index for q")
        assert not result.success
        assert not server.registry.get("search_replica").available
        assert "search_replica" not in calls  # the disabled fallback was not called
        command_line.set_tool_status("search_replica", "enabled")
        assert server.process("search the index for q").success  # the fallback answers again
        assert server.registry.get("search_replica").available
