"""Planners on goals of one, two and parallel steps; the LLM planner over HTTP; replanning."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from dendrite import EventType, Orchestrator, OrchestratorConfig
from dendrite.learning.memory import PlanMemory
from dendrite.learning.policies import QualityPolicy
from dendrite.learning.ranker import ToolRanker
from dendrite.llm import ChatLLM, LLMConfig
from dendrite.orchestrator import load_trace
from dendrite.planning import (
    DendritePlanner,
    LLMPlanner,
    Plan,
    PlanningError,
    RetryPolicy,
    SemanticPlanner,
    Step,
    Strategy,
    TemplatePlanner,
)
from dendrite.planning.classify import act_named_by
from dendrite.planning.plan import validate
from dendrite.store import ExecutionStore
from dendrite.tools import ToolRegistry
from tests.openai_server import chat_server

NOTES = {
    "storage.md": "Dendrite keeps history in SQLite by default and PostgreSQL at scale.",
    "retries.md": "Retries back off exponentially with jitter. Fallbacks follow retries.",
}
NO_RETRY = OrchestratorConfig(retry=RetryPolicy(max_attempts=1))


def make_registry() -> ToolRegistry:
    registry = ToolRegistry()

    def search_notes(query: str, limit: int = 3) -> list[dict]:
        """Search the notes for a query and return the matching documents.

        Args:
            query: words to look for
            limit: most hits to return
        """
        words = set(query.lower().split())
        hits = [
            {"document": name, "snippet": text}
            for name, text in NOTES.items()
            if words & set(text.lower().replace(".", "").split())
        ]
        return hits[:limit]

    def summarize_note(name: str, max_sentences: int = 1) -> str:
        """Summarize a note document by name."""
        if name not in NOTES:
            raise KeyError(f"no note {name!r}")
        return " ".join(NOTES[name].split(". ")[:max_sentences])

    def compare_notes(first: str, second: str, topic: str | None = None) -> dict:
        """Compare two note documents, optionally about a topic."""
        return {"first": first, "second": second, "topic": topic}

    def calculate(expression: str) -> float:
        """Calculate the value of an arithmetic expression."""
        allowed = set("0123456789+-*/(). ")
        if not set(expression) <= allowed:
            raise ValueError(f"not arithmetic: {expression!r}")
        return float(eval(expression, {"__builtins__": {}}))

    def convert_units(value: float, from_unit: str, to_unit: str) -> float:
        """Convert a length between units such as km and miles."""
        factors = {("km", "miles"): 0.621371, ("miles", "km"): 1.609344}
        return round(value * factors[(from_unit, to_unit)], 3)

    def word_count(text: str) -> int:
        """Count the words in a text."""
        return len(text.split())

    for func in (search_notes, summarize_note, compare_notes, calculate, convert_units, word_count):
        registry.register_function(func)
    return registry


def plan_with(planner, goal: str, registry: ToolRegistry | None = None):
    return asyncio.run(planner.plan(goal, registry or make_registry(), {}))


def test_semantic_one_two_and_parallel_steps():
    planner = SemanticPlanner()
    one = plan_with(planner, "calculate (2 + 3) * 4")
    assert [(s.tool, s.params) for s in one.steps] == [("calculate", {"expression": "(2 + 3) * 4"})]
    parallel = plan_with(planner, "calculate 6 * 7 and convert 5 km to miles")
    assert [s.tool for s in parallel.steps] == ["calculate", "convert_units"]
    assert all(not s.dependencies() for s in parallel.steps)
    chained = plan_with(planner, "summarize storage.md then count the words")
    assert [s.tool for s in chained.steps] == ["summarize_note", "word_count"]
    assert chained.steps[1].params == {"text": "${step1}"}
    with Orchestrator(make_registry(), store=None, planner=planner, llm=None) as orch:
        assert orch.process(parallel).output == {"step1": 42.0, "step2": 3.107}
        assert orch.process(chained).output == 11


def test_semantic_planner_explains_what_it_could_not_do():
    with pytest.raises(PlanningError, match="no tool can do 'bake bread'"):
        plan_with(SemanticPlanner(), "bake bread")
    with pytest.raises(
        PlanningError, match="convert_units \\(missing value, from_unit, to_unit\\)"
    ):
        plan_with(SemanticPlanner(), "convert the units")


def test_comparison_template_runs_two_searches_in_parallel_then_compares():
    plan = plan_with(TemplatePlanner(), "compare what storage.md and retries.md say about jitter")
    steps = {s.id: s for s in plan.steps}
    assert steps["search_first"].tool == steps["search_second"].tool == "search_notes"
    assert not steps["search_first"].dependencies() and not steps["search_second"].dependencies()
    assert steps["compare"].tool == "compare_notes"
    assert steps["compare"].params == {
        "first": "storage.md",
        "second": "retries.md",
        "topic": "jitter",
    }
    assert set(steps["compare"].dependencies()) == {"search_first", "search_second"}
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        assert orch.process(plan).output["topic"] == "jitter"


def test_summary_template_names_the_document_or_searches_for_one():
    named = plan_with(TemplatePlanner(), "summarize storage.md")
    assert [(s.tool, s.params) for s in named.steps] == [("summarize_note", {"name": "storage.md"})]
    found = plan_with(TemplatePlanner(), "summarize what the notes say about jitter")
    assert [s.tool for s in found.steps] == ["search_notes", "summarize_note"]
    assert found.steps[1].params["name"] == "${search.0.document}"
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        assert orch.process(found).output.startswith("Retries back off")
        nothing = orch.process(plan_with(TemplatePlanner(), "summarize what notes say about cats"))
    # Nothing found: the summary step fails on its reference, and no search stands in for it.
    assert not nothing.success and nothing.error.startswith("step 'summarize' failed: ${search.0")


def test_strategies_choose_how_much_to_split():
    goal = "calculate 6 * 7 and convert 5 km to miles"
    simple = plan_with(DendritePlanner(strategy=Strategy.SIMPLE), goal)
    parallel = plan_with(DendritePlanner(strategy="parallel"), goal)
    assert len(simple.steps) == 1 and len(parallel.steps) == 2
    assert simple.metadata["strategy"] == "simple" and parallel.metadata["llm"] is None
    adaptive = plan_with(DendritePlanner(), "compare storage.md and retries.md about jitter")
    assert adaptive.planner == "template"
    assert adaptive.metadata["classification"]["query_type"] == "comparison"


def _valid_plan_json(tool: str = "calculate", expression: str = "6 * 7") -> str:
    return json.dumps(
        {
            "steps": [{"id": "calc", "tool": tool, "params": {"expression": expression}}],
            "output": "${calc}",
        }
    )


def test_llm_planner_sends_top_k_tools_and_repairs_an_invalid_plan():
    with chat_server() as server:
        server.say(_valid_plan_json(tool="calculator"), _valid_plan_json())
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub-model"))
        planner = LLMPlanner(llm, top_k=2)
        plan = plan_with(planner, "calculate 6 * 7")
        first, second = server.requests
    assert plan.planner == "llm" and plan.metadata == {"repairs": 1, "llm": "stub-model"}
    assert [s.tool for s in plan.steps] == ["calculate"]
    prompt = first["messages"][1]["content"]
    listed = json.loads(prompt.split("Tools:\n", 1)[1])
    assert len(listed) == 2 and listed[0]["name"] == "calculate"
    assert first["response_format"]["type"] == "json_schema"
    feedback = second["messages"][-1]["content"]
    assert "unknown tool 'calculator'; did you mean 'calculate'?" in feedback


def test_llm_planner_falls_back_to_json_object_and_gives_up_after_bounded_repairs():
    with chat_server() as server:
        server.reject_json_schema = True
        server.say("```json\n" + _valid_plan_json() + "\n```")
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub"))
        assert plan_with(LLMPlanner(llm), "calculate 6 * 7").steps[0].tool == "calculate"
        assert [r.get("response_format", {}).get("type") for r in server.requests] == [
            "json_schema",
            "json_object",
        ]
    with chat_server() as server:
        server.say("not json", _valid_plan_json(tool="nope"), _valid_plan_json(tool="nope"))
        planner = LLMPlanner(ChatLLM(LLMConfig(base_url=server.url, model="stub")), max_repairs=2)
        with pytest.raises(PlanningError, match="still had problems after 2 repair"):
            plan_with(planner, "calculate 6 * 7")
        assert "- the answer is not JSON" in server.requests[1]["messages"][-1]["content"]
        assert server.requests[1]["messages"][-2] == {"role": "assistant", "content": "not json"}


def test_a_models_plan_sets_no_field_its_schema_does_not_offer():
    """Its "metadata" was the run's (the intent recorded, a plan memory link, a "why" that
    crashed a repair), and a step's own "retry" sent 100 calls to a failing model."""
    answer = {
        "steps": [
            {
                "id": "calc",
                "tool": "calculate",
                "params": {"expression": "6 * 7"},
                "retry": {"max_attempts": 100},
                "timeout": 0.001,
            }
        ],
        "output": "${calc}",
        "metadata": {"classification": {"intent": "generative"}, "why": "forged"},
    }
    deep = "[" * 100_000 + "]" * 100_000
    with chat_server() as server:
        server.say(json.dumps(answer), deep, deep, deep)
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub"))
        plan = plan_with(LLMPlanner(llm), "calculate 6 * 7")
        assert plan.metadata == {"repairs": 0, "llm": "stub"}
        assert plan.steps[0].retry is None and plan.steps[0].timeout is None
        # Nested past Python's parser: the planner declines, as for any answer not JSON.
        with pytest.raises(PlanningError, match="nested too deeply"):
            plan_with(LLMPlanner(llm), "calculate 6 * 7")


def test_a_plan_with_a_number_json_has_not_goes_back_for_repair():
    """A small model repeating a digit wrote an integer past Python's 4,300 digits: its
    ValueError escaped the planner, and no offline planner was tried; NaN reached the
    tool's parameters."""
    runaway = json.dumps(
        {"steps": [{"id": "c", "tool": "convert_units", "params": {"value": 5}}]}
    ).replace("5", "5" + "0" * 5000)
    nan = '{"steps": [{"id": "c", "tool": "convert_units", "params": {"value": NaN, '
    nan += '"from_unit": "km", "to_unit": "miles"}}]}'
    fixed = {"value": 5, "from_unit": "km", "to_unit": "miles"}
    with chat_server() as server:
        server.say(
            runaway,
            nan,
            json.dumps({"steps": [{"id": "c", "tool": "convert_units", "params": fixed}]}),
        )
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub"))
        plan = plan_with(LLMPlanner(llm, max_repairs=2), "convert 5 km to miles")
        feedback = [r["messages"][-1]["content"] for r in server.requests[1:]]
    assert plan.steps[0].params == fixed and plan.metadata["repairs"] == 2
    assert all("- the answer is not JSON" in text for text in feedback)
    assert "NaN is not a JSON number" in feedback[1]


def test_a_base_url_that_is_no_http_url_is_refused_at_once():
    for url in ("127.0.0.1:11434/v1", "ftp://x/v1"):
        with pytest.raises(ValueError, match="must start with http:// or https://"):
            LLMConfig(base_url=url, model="m")


def test_llm_server_down_is_a_planning_error_and_adaptive_falls_back_offline():
    llm = ChatLLM(LLMConfig(base_url="http://127.0.0.1:9/v1", model="m", timeout=2, max_retries=0))
    with pytest.raises(PlanningError, match="could not get a plan"):
        plan_with(LLMPlanner(llm), "calculate 6 * 7")
    plan = plan_with(DendritePlanner(llm=llm, strategy="comprehensive"), "calculate 6 * 7")
    assert plan.planner == "template"
    assert plan.metadata["declined"][0]["planner"] == "llm"


def broken_notes_registry() -> ToolRegistry:
    """The notes' search fails; an archive search can stand in for it."""
    registry = make_registry()

    def search_archive(query: str) -> list[dict]:
        """Search the archived notes for a query."""
        return [{"document": "archive.md", "snippet": query}]

    registry.register_function(search_archive)
    registry.register_function(
        lambda query: (_ for _ in ()).throw(RuntimeError("index corrupted")),
        name="search_notes",
        description="Search the notes for a query and return the matching documents.",
        replace=True,
    )
    return registry


class PlansAsGiven(DendritePlanner):
    """Plans every goal with one plan, and repairs as the default planner does."""

    def __init__(self, plan: Plan, **options: Any) -> None:
        super().__init__(**options)
        self.given = plan

    async def plan(self, goal, registry, context):
        return self.given.model_copy(deep=True)


SEARCH_NOTES = Plan(
    goal="search the notes for jitter",
    steps=[Step(id="find", tool="search_notes", params={"query": "jitter"})],
    planner="semantic",
)


def test_replanning_after_an_injected_failure(tmp_path):
    registry = broken_notes_registry()
    planned = PlansAsGiven(SEARCH_NOTES, strategy="simple")
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        orch = Orchestrator(
            registry,
            store=store,
            config=NO_RETRY,
            llm=None,
            planner=DendritePlanner(strategy="simple"),
        )
        events = []

        async def collect():
            # Planned, not given: a plan the caller gives is not repaired (test below).
            async for event in orch.stream("search the notes for jitter", planner=planned):
                events.append(event)

        asyncio.run(collect())
        final = events[-1].data
        assert final["success"] and final["output"][0]["document"] == "archive.md"
        replanned = [e for e in events if e.type is EventType.REPLANNED]
        assert len(replanned) == 1 and replanned[0].data["failed_tool"] == "search_notes"
        assert replanned[0].data["new_tools"] == ["search_archive"]
        store.flush()
        (record,) = store.get_recent_executions(1)
        assert record.metadata["replans"][0]["error"].endswith("RuntimeError: index corrupted")
        attempts = sorted((a.tool_name, a.success) for a in store.get_execution(record.id).steps)
        assert attempts == [("search_archive", True), ("search_notes", False)]
        # The first round's failed attempt stays in the run (its trace, what learning sees).
        trace = orch.get_execution_trace(record.id)
        tried = [(a["tool"], a["success"]) for step in trace.steps for a in step["attempts"]]
        assert tried == [("search_notes", False), ("search_archive", True)]
        assert [s["tool"] for s in record.metadata["steps"]] == ["search_archive"]
        assert orch.learning.health.summary()["search_notes"]["recent"] == [False]
        # "picked" names the tool that answered, and why: not the one it replaced.
        assert trace.why["find"].startswith("search_archive: replaces search_notes, which failed")
        orch.close()


class RenamingPlanner(PlansAsGiven):
    """Repairs a plan as a model may: the failed step comes back under a new id."""

    async def replan(self, goal, plan, failed_step, error, registry, context):
        return Plan(
            goal=goal,
            steps=[Step(id="find_again", tool="search_archive", params={"query": "jitter"})],
            planner="llm",
        )


def test_a_hand_written_plan_is_run_as_written_not_repaired_with_a_look_alike():
    """A failed step of the caller's own plan was replaced by the tool most like it that
    takes its arguments, and the run reported success: "charge_card" failed and
    "refund_card" ran instead. The caller's fallbacks still apply."""
    registry = ToolRegistry()

    def charge_card(card: str, amount: float) -> dict:
        """Charge an amount to a card."""
        raise RuntimeError("payment gateway rejected the card")

    def refund_card(card: str, amount: float) -> dict:
        """Refund an amount to a card."""
        return {"refunded": amount, "card": card}

    def charge_card_backup(card: str, amount: float) -> dict:
        """Charge an amount to a card through the backup gateway."""
        return {"charged": amount, "card": card}

    for function in (charge_card, refund_card, charge_card_backup):
        registry.register_function(function)
    step = Step(id="charge", tool="charge_card", params={"card": "4242", "amount": 10.0})
    with Orchestrator(registry, store=None, config=NO_RETRY, llm=None) as orch:
        result = orch.process(Plan(goal="charge 10 to card 4242", steps=[step]))
        assert not result.success and [s.tool for s in result.steps] == ["charge_card"]
        assert "payment gateway rejected the card" in (result.error or "")
        backed = step.model_copy(update={"fallbacks": ["charge_card_backup"]})
        result = orch.process(Plan(goal="charge 10 to card 4242", steps=[backed]))
        assert result.success and result.output == {"charged": 10.0, "card": "4242"}


def test_a_repair_that_renames_the_failed_step_keeps_its_attempts(tmp_path):
    registry = broken_notes_registry()
    with (
        ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store,
        Orchestrator(
            registry,
            store=store,
            config=NO_RETRY,
            llm=None,
            planner=RenamingPlanner(SEARCH_NOTES),
        ) as orch,
    ):
        result = asyncio.run(orch.run("search the notes for jitter"))
        assert result.success and result.output[0]["document"] == "archive.md"
        assert [(s.step_id, s.status.value) for s in result.steps] == [
            ("find", "failed"),
            ("find_again", "succeeded"),
        ]
        store.flush()
        trace = orch.get_execution_trace(result.execution_id)
        tried = [
            (s["step_id"], a["tool"], a["success"]) for s in trace.steps for a in s["attempts"]
        ]
        assert tried == [("find", "search_notes", False), ("find_again", "search_archive", True)]
        assert orch.learning.health.summary()["search_notes"]["recent"] == [False]
        stored = load_trace(store, result.execution_id)  # as another process reads it
        assert [(s["step_id"], [a["tool"] for a in s["attempts"]]) for s in stored.steps] == [
            ("find", ["search_notes"]),
            ("find_again", ["search_archive"]),
        ]


class PlansOnly:
    """A planner with no ``replan``: a run it planned is not repaired."""

    async def plan(self, goal, registry, context):
        return SEARCH_NOTES.model_copy(deep=True)


def test_a_run_is_repaired_by_the_planner_that_planned_it():
    """The repair came from the orchestrator's own planner even when the caller (or an
    experiment arm) planned the run: here the orchestrator's cannot repair, and the run
    failed although the planner that made its plan could."""
    registry = broken_notes_registry()
    with Orchestrator(registry, store=None, config=NO_RETRY, llm=None, planner=PlansOnly()) as orch:
        assert not orch.process("search the notes for jitter").success
        result = orch.process("search the notes for jitter", planner=RenamingPlanner(SEARCH_NOTES))
        assert result.success and result.output[0]["document"] == "archive.md"
        assert [s.step_id for s in result.steps] == ["find", "find_again"]


def test_generative_goals_use_the_model_or_the_documents_or_say_no():
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        plan = asyncio.run(orch.planner.plan("write a poem about notes", orch.registry, {}))
        assert plan.planner == "documents" and plan.steps[0].tool == "search_notes"
    bare = ToolRegistry()
    bare.register_function(lambda expression: 0.0, name="calculate")
    refused = "needs a generative model and none is configured"
    with (
        Orchestrator(bare, store=None, llm=None) as orch,
        pytest.raises(PlanningError, match=refused),
    ):
        orch.process("write a poem about autumn")
    _written_by_a_model("write a poem about autumn", "Leaves fall, notes stay.")


def _written_by_a_model(goal: str, answer: str) -> None:
    """The goal, sent to a model as typed, and its answer as the run's output."""
    with chat_server() as server:
        server.say(answer)
        llm = ChatLLM(LLMConfig(base_url=server.url, model="poet"))
        with Orchestrator(make_registry(), store=None, llm=llm) as orch:
            result = orch.process(goal)
        assert result.success and result.output == answer
        assert server.requests[0]["messages"][-1]["content"] == goal


def test_a_generative_goal_is_the_users_text_never_a_reference():
    """ "write a poem about ${cost}" was refused: ${cost} "refers to unknown step 'cost'"."""
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        plan = asyncio.run(orch.planner.plan("write a poem about ${notes}", orch.registry, {}))
        assert plan.planner == "documents" and validate(plan, orch.registry) == []
        assert orch.process(plan).success
    _written_by_a_model("write a poem about ${cost}", "Costs rise, verses stay.")


def test_a_generative_goal_is_the_call_of_a_tool_made_for_its_act():
    registry = make_registry()

    def generate_melody(key: str = "C", bars: int = 4) -> dict:
        """Generate a melody in a key, as notes."""
        return {"key": key, "notes": ["C4", "E4", "G4"] * bars}

    registry.register_function(generate_melody)
    with Orchestrator(registry, store=None, llm=None) as orch:
        result = orch.process("generate a melody in C major")
        assert result.success and result.plan.planner == "semantic"
        assert result.steps[0].tool == "generate_melody"
        assert "made for the goal's act ('generate')" in result.why["step1"]
        # A tool that merely shares a word is not made for the act: the documents answer.
        plan = asyncio.run(orch.planner.plan("write a poem about notes", orch.registry, {}))
        assert plan.planner == "documents" and plan.steps[0].tool == "search_notes"
    # Verbs in any form count; tools named for storing or making records, and nouns, do not.
    assert act_named_by("draft an email to Andy", "email_drafter: drafts emails") == "draft"
    assert act_named_by("create a story for the user", "create_user: Create a user") is None
    assert act_named_by("write a story about the sprint", "story_points: count points") is None
    with chat_server() as server:  # with a model too: the tool does it, not free text
        llm = ChatLLM(LLMConfig(base_url=server.url, model="poet"))
        with Orchestrator(registry, store=None, llm=llm) as orch:
            result = orch.process("generate a melody in C major")
        assert result.steps[0].tool == "generate_melody" and server.requests == []


def test_arithmetic_with_no_word_a_tool_shares_goes_to_the_calculator():
    """ "what is 2+2" was refused: retrieval leaves numbers out and "what is" asks nothing."""
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        for goal, value in (
            ("what is 2+2", 4.0),
            ("what is 7 * 6", 42.0),
            ("compute (2+3)*4", 20.0),
            ("multiply 7 by 6", 42.0),
            ("subtract 3 from 10", 7.0),
        ):
            result = orch.process(goal)
            assert (result.steps[0].tool, result.output) == ("calculate", value), goal


def test_a_goal_without_words_is_a_planning_error():
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        for goal in ("...", "?!", " , "):
            with pytest.raises(PlanningError, match="has no words to plan from"):
                asyncio.run(orch.planner.plan(goal, orch.registry, {}))


def test_a_goal_that_only_hints_at_writing_is_planned_with_a_tool_that_fits():
    registry = make_registry()

    def buy_movie_tickets(title: str, quantity: int = 1, city: str = "") -> dict:
        """Buy tickets for a movie showing in a city."""
        return {"title": title, "quantity": quantity, "city": city}

    registry.register_function(buy_movie_tickets)
    with Orchestrator(registry, store=None, llm=None) as orch:
        # "story" is one soft cue of writing; the ticket tool fits the goal.
        result = orch.process("buy 4 tickets for 'Toy Story 4' in Los Angeles")
        assert result.success and result.plan.planner == "semantic"
        assert result.steps[0].tool == "buy_movie_tickets"
        assert result.plan.metadata["classification"]["intent"] == "generative"
        # Certain writing ("write a poem") still goes to the documents, not to a tool.
        plan = asyncio.run(orch.planner.plan("write a poem about movie tickets", registry, {}))
        assert plan.planner == "documents"
    bare = ToolRegistry()
    bare.register_function(lambda expression: 0.0, name="calculate")
    with (
        Orchestrator(bare, store=None, llm=None) as orch,
        pytest.raises(PlanningError, match="needs a generative model"),
    ):
        orch.process("tell me a joke")  # one soft cue, and no tool fits: still a refusal
    with chat_server() as server:  # with a model, the model writes, as for any such goal
        server.say("Two tickets walk into a cinema.")
        llm = ChatLLM(LLMConfig(base_url=server.url, model="poet"))
        with Orchestrator(registry, store=None, llm=llm) as orch:
            result = orch.process("tell me a joke about movie tickets")
        assert result.output == "Two tickets walk into a cinema." and len(server.requests) == 1


def test_the_execution_record_shows_labels_planner_and_model(tmp_path):
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        with Orchestrator(make_registry(), store=store, llm=None) as orch:
            result = orch.process("compare storage.md and retries.md about jitter")
        store.flush()
        record = store.get_execution(result.execution_id)
    assert (record.intent, record.query_type) == ("tool_use", "comparison")
    assert record.metadata["planner"] == "template" and record.metadata["llm"] is None
    assert record.metadata["strategy"] == "adaptive"


def test_the_llm_picks_among_candidates_ranked_by_history_and_sees_their_record():
    registry = ToolRegistry()

    def weather_now(city: str) -> str:
        """Get the current weather for a city."""
        raise ConnectionError("the old weather service is gone")

    def weather_report(city: str) -> str:
        """Get the weather report for a city."""
        return f"sunny in {city}"

    registry.register_function(weather_now)
    registry.register_function(weather_report)
    fallback = Plan(
        goal="get the current weather for Paris",
        steps=[Step(id="w", tool="weather_now", params={"city": "Paris"},
                    fallbacks=["weather_report"])],
    )  # fmt: skip
    with chat_server() as server:
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub"))
        with Orchestrator(registry, store=None, llm=llm, config=NO_RETRY) as orch:
            for city in ("Paris", "Oslo", "Lima", "Rome"):
                step = fallback.steps[0].model_copy(update={"params": {"city": city}})
                goal = f"get the current weather for {city}"
                result = orch.process(fallback.model_copy(update={"goal": goal, "steps": [step]}))
                assert result.success and result.steps[0].fallback_used == "weather_report"
            server.say(json.dumps({"steps": [{"id": "w", "tool": "weather_report",
                                              "params": {"city": "Kyiv"}}]}))  # fmt: skip
            orch.planner = orch.make_planner("llm")
            result = orch.process("get the current weather for Kyiv")
        assert result.success and result.output == "sunny in Kyiv"
        listed = json.loads(server.requests[0]["messages"][1]["content"].split("Tools:\n", 1)[1])
    assert [t["name"] for t in listed] == ["weather_report", "weather_now", "generate_text"]
    worked, failed = listed[0]["track_record"], listed[1]["track_record"]
    assert "learned from 4 outcomes +" in worked and "success overall 0.90" in worked
    assert "learned from 4 outcomes -" in failed and "success overall 0.40" in failed
    assert "track_record" not in listed[2]  # filled in past retrieval's picks: no record
    assert "track_record" in server.requests[0]["messages"][0]["content"]


def test_a_project_whose_policy_turns_the_model_off_is_repaired_offline(tmp_path):
    registry = ToolRegistry()

    def convert_currency(amount: float) -> float:
        """Convert an amount of money from euros to dollars."""
        raise RuntimeError("rates service down")

    def spare(amount: float) -> float:
        """Spare routine."""
        return amount * 1.1

    registry.register_function(convert_currency)
    registry.register_function(spare)
    with chat_server() as server, ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as store:
        server.say(json.dumps({"steps": [{"id": "s", "tool": "spare", "params": {"amount": 5}}]}))
        llm = ChatLLM(LLMConfig(base_url=server.url, model="stub"))
        with Orchestrator(registry, store=store, llm=llm, config=NO_RETRY) as orch:
            orch.policies.set(QualityPolicy(project="p", use_llm=False, adaptive=False))
            result = orch.process("convert 5 euros to dollars", context={"project": "p"})
        assert "LLM off" in result.why["policy"]
        assert [r["planner"] for r in result.plan.metadata["replans"]] != ["llm"]
        assert server.requests == [] and result.llm_usage is None


def test_a_recalled_plan_is_led_only_by_a_tool_that_takes_its_arguments():
    """The ranker put a fallback first, with the old lead's arguments: "unexpected parameter
    'limit'" failed the plan's validation, for every later goal of its kind."""
    registry = ToolRegistry()

    def primes(limit: int) -> list[int]:
        """List the prime numbers below a limit."""
        return [n for n in range(2, limit) if all(n % d for d in range(2, n))]

    def list_files(path: str = ".") -> list[str]:
        """List the files in a folder."""
        return []

    registry.register_function(primes)
    registry.register_function(list_files)
    ranker, memory = ToolRanker(), PlanMemory()
    for _ in range(10):  # primes judged bad lately, list_files good
        ranker.observe("list the primes below 30", "primes", False, retrieval=1.0)
        ranker.observe("list the primes below 30", "list_files", True, retrieval=1.0)
    step = Step(id="step1", tool="primes", params={"limit": 30}, fallbacks=["list_files"])
    memory.remember("list the primes below 30", Plan(goal="list the primes below 30", steps=[step]))
    planner = DendritePlanner(ranker=ranker, memory=memory)
    plan = asyncio.run(planner.plan("list the primes below 60", registry, {}))
    assert plan.planner == "memory"
    assert (plan.steps[0].tool, plan.steps[0].fallbacks) == ("primes", ["list_files"])
    assert validate(plan, registry) == []


def test_an_offline_repair_takes_only_a_tool_that_takes_every_argument_of_the_step(tmp_path):
    """A regex extraction that failed was answered by a word counter, which shares only
    ``text``: a word count, reported as success, for a question about matches."""
    registry = ToolRegistry()

    def regex_extract(text: str, pattern: str) -> list[str]:
        """Extract the matches of a regular expression from a text."""
        raise RuntimeError("pattern too slow")

    def word_count(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    registry.register_function(regex_extract)
    registry.register_function(word_count)
    plan = Plan(
        goal="slow regex",
        steps=[Step(id="r", tool="regex_extract", params={"text": "aaab", "pattern": "(a+)+$"})],
    )
    store = ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}")
    with store, Orchestrator(registry, store=store, config=NO_RETRY, llm=None) as orch:
        result = orch.process(plan)
    assert not result.success and result.output is None
    assert [a.tool for s in result.steps for a in s.attempts] == ["regex_extract"]


def test_a_custom_planners_plan_is_repaired_whatever_its_planner_field_says():
    """Told apart by the plan's planner field, a custom planner's plans (which keep the
    default, "explicit") were taken for the caller's own and never repaired."""
    unnamed = Plan(
        goal="search the notes for jitter",
        steps=[Step(id="find", tool="search_notes", params={"query": "jitter"})],
    )
    with Orchestrator(broken_notes_registry(), store=None, config=NO_RETRY, llm=None) as orch:
        result = orch.process(unnamed.goal, planner=PlansAsGiven(unnamed))
        assert result.success and result.output[0]["document"] == "archive.md"
        given = orch.process(SEARCH_NOTES)  # the caller's, whatever planner it names
        assert not given.success and "replans" not in given.plan.metadata
