"""Plans: the reference syntax, safe conditions, and validation that reports every problem."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from dendrite.execution import ExecutionEngine
from dendrite.planning import (
    ConditionError,
    Plan,
    PlanningError,
    PlanValidationError,
    RetryPolicy,
    SingleToolPlanner,
    Step,
    compile_condition,
    parse_plan,
    references,
    validate,
)
from dendrite.tools import ToolRegistry


class Hits(BaseModel):
    count: int
    titles: list[str]


def search(query: str, limit: int = 5) -> Hits:
    """Search the index."""
    return Hits(count=1, titles=[query])


def count_words(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def summarize(texts: list[str], style: str = "short") -> str:
    return " ".join(texts)


@pytest.fixture
def registry() -> ToolRegistry:
    registry = ToolRegistry()
    for func in (search, count_words, summarize):
        registry.register_function(func)
    return registry


def test_references_resolve_whole_values_paths_and_text():
    scope = {"s": {"hits": [{"title": "A"}, {"title": "B"}], "n": 2}, "context": {"user": "ada"}}
    assert references.resolve("${s.hits}", scope) == [{"title": "A"}, {"title": "B"}]
    assert references.resolve("${s.hits.-1.title}", scope) == "B"
    assert references.resolve("${ s.n }", scope) == 2  # a whole reference keeps its type
    assert references.resolve("found ${s.n} for ${context.user}", scope) == "found 2 for ada"
    assert references.resolve({"a": ["${s.n}", 1]}, scope) == {"a": [2, 1]}
    assert references.resolve("costs $5 {not a ref}", scope) == "costs $5 {not a ref}"
    with pytest.raises(references.UnresolvedReferenceError, match=r"\$\{s.hits.9\}: list"):
        references.resolve("${s.hits.9}", scope)
    with pytest.raises(references.UnresolvedReferenceError, match="has no 'missing'"):
        references.resolve("${s.missing}", scope)


def test_references_are_dependencies():
    step = Step(
        id="b", tool="t", params={"x": "${a.y}", "z": ["${c}"]}, when="${d} > 1", depends_on=["e"]
    )
    assert step.dependencies() == ["e", "a", "c", "d"]
    assert Step(id="f", tool="t", params={"q": "${item}", "u": "${context.u}"}).dependencies() == []


@pytest.mark.parametrize(
    ("text", "scope", "expected"),
    [
        ("${s.n} > 1", {"s": {"n": 2}}, True),
        ("${s.n} > 1 and not ${s.flag}", {"s": {"n": 2, "flag": True}}, False),
        ("'x' in ${s.tags} or ${s.n} == -1", {"s": {"tags": ["x"], "n": 0}}, True),
        ("len(${s.tags}) >= 2", {"s": {"tags": ["x"]}}, False),
        ("${s.v} is None", {"s": {"v": None}}, True),
        ("1 < ${s.n} <= 3", {"s": {"n": 3}}, True),
        ("${s.kind} not in ['a', 'b']", {"s": {"kind": "c"}}, True),
    ],
)
def test_conditions_evaluate(text, scope, expected):
    assert compile_condition(text).evaluate(scope) is expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("__import__('os').system('true')", "the only call allowed is len"),
        ("${s.x}.__class__", "Attribute is not allowed"),
        ("${s.x}[0]", "Subscript is not allowed"),
        ("open", "unknown name 'open'"),
        ("[x for x in ${s.items}]", "ListComp is not allowed"),
        ("lambda: 1", "Lambda is not allowed"),
        ("${s.n} >", "not a valid expression"),
        ("${s.n} + 1", "BinOp is not allowed"),
    ],
)
def test_conditions_refuse_anything_outside_the_language(text, fragment):
    with pytest.raises(ConditionError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        compile_condition(text)


def test_a_failing_condition_says_which():
    with pytest.raises(ConditionError, match=r"condition '\$\{s.n\} > 1' failed"):
        compile_condition("${s.n} > 1").evaluate({"s": {"n": "two"}})


def test_a_valid_plan_has_no_problems(registry):
    plan = Plan(
        goal="count the words of the first title",
        steps=[
            Step(id="find", tool="search", params={"query": "dendrites"}),
            Step(
                id="words",
                tool="count_words",
                params={"text": "${find.titles.0}"},
                when="${find.count} > 0",
            ),
            Step(
                id="each", tool="count_words", params={"text": "${item}"}, for_each="${find.titles}"
            ),
            Step(
                id="sum",
                tool="summarize",
                params={"texts": "${find.titles}"},
                depends_on=["words", "each"],
            ),
        ],
        output="${sum}",
    )
    assert validate(plan, registry) == []
    assert plan.sinks() == ["sum"]


def test_every_problem_is_reported_at_once_with_its_step(registry):
    registry.register_function(lambda text: text, name="legacy")
    registry.disable("legacy", "replaced by summarize")
    plan = Plan(
        goal="g",
        steps=[
            Step(id="a", tool="serch", params={"query": "x"}),
            Step(id="b", tool="search", params={"limit": "many"}),
            Step(id="c", tool="count_words", params={"text": "${a.titles}"}, depends_on=["zzz"]),
            Step(id="d", tool="legacy", params={"text": "${item}"}),
            Step(
                id="e", tool="count_words", params={"text": "${b.nope}"}, fallbacks=["missing_tool"]
            ),
            Step(id="b", tool="count_words", params={"text": "${ghost.value}"}),
            Step(id="f", tool="count_words", params={"text": "x"}, when="import os"),
            Step(id="g", tool="count_words", params={"text": "x"}, for_each="not a reference"),
        ],
        output="${nowhere}",
    )
    messages = [str(p) for p in validate(plan, registry)]
    expected = [
        "step 'b': duplicate step id",
        "step 'a': tool: unknown tool 'serch'; did you mean 'search'?",
        "step 'b': tool 'search': missing required parameter 'query' (expected string)",
        "step 'b': tool 'search': parameter 'limit': expected integer, got 'many' (str)",
        "step 'c': depends on unknown step 'zzz'",
        "step 'd': tool 'legacy' is disabled (replaced by summarize)",
        "step 'd': ${item} is only defined in a for_each step",
        "step 'e': fallback: unknown tool 'missing_tool'",
        "step 'b': ${ghost.value} refers to unknown step 'ghost'",
        "step 'f': condition 'import os' is not a valid expression",
        "step 'g': for_each must be one reference like ${step.items}, got 'not a reference'",
        "output refers to unknown step 'nowhere'",
    ]
    for line in expected:
        assert any(m.startswith(line) for m in messages), (line, messages)
    # The field check needs the source's declared return type: 'search' returns Hits.
    plan2 = Plan(
        goal="g",
        steps=[
            Step(id="s", tool="search", params={"query": "x"}),
            Step(id="w", tool="count_words", params={"text": "${s.nope}"}),
            Step(id="n", tool="count_words", params={"text": "${w.field}"}),
        ],
    )
    assert [str(p) for p in validate(plan2, registry)] == [
        "step 'w': ${s.nope}: the output has no field 'nope' (fields: count, titles)",
        "step 'n': ${w.field}: the output is of type integer; it has no field 'field'",
    ]
    # Past the first part, and in the plan's output: they failed at run time only.
    plan3 = Plan(
        goal="g",
        steps=[
            Step(id="s", tool="search", params={"query": "x"}),
            Step(id="w", tool="count_words", params={"text": "${s.titles.first}"}),
            Step(id="n", tool="count_words", params={"text": "${s.titles.0.x}"}),
            Step(id="ok", tool="count_words", params={"text": "${s.titles.0}"}),
        ],
        output="${s.count.value}",
    )
    assert [str(p) for p in validate(plan3, registry)] == [
        "step 'w': ${s.titles.first}: the output's titles is a list; 'first' is not an index",
        "step 'n': ${s.titles.0.x}: the output's titles.0 is of type string; it has no field 'x'",
        "output ${s.count.value}: the output's count is of type integer; it has no field 'value'",
    ]


def test_cycles_are_printed(registry):
    plan = Plan(
        goal="g",
        steps=[
            Step(id="a", tool="count_words", params={"text": "${c}"}),
            Step(id="b", tool="count_words", params={"text": "${a}"}),
            Step(id="c", tool="count_words", params={"text": "${b}"}),
            Step(id="d", tool="count_words", params={"text": "x"}, depends_on=["d"]),
        ],
    )
    messages = [str(p) for p in validate(plan, registry)]
    assert "step 'd': depends on itself" in messages
    cycles = [m for m in messages if "dependency cycle" in m]
    assert len(cycles) == 1
    path = cycles[0].split(": ", 2)[-1].split(" -> ")
    assert path[0] == path[-1] and set(path) == {"a", "b", "c"}


def test_a_step_that_refers_to_its_own_output_is_refused_and_never_waits_for_ever(registry):
    """ "normalize 'Price: ${step1} EUR'" became a step waiting on itself: process() hung."""
    own = Step(id="e", tool="count_words", params={"text": "Price: ${e} EUR"})
    messages = [str(p) for p in validate(Plan(goal="g", steps=[own]), registry)]
    assert messages == ["step 'e': refers to its own output, which it never has"]
    engine = ExecutionEngine(registry)  # a caller that skips validation gets a failure
    outcome = asyncio.run(
        asyncio.wait_for(engine.execute(Plan(goal="g", steps=[own]), execution_id="x"), 5)
    )
    assert not outcome.success and "waits on its own output" in outcome.steps["e"].error
    beside = Plan(  # one step runs, the other waits on itself: the run ends all the same
        goal="g", steps=[Step(id="ok", tool="count_words", params={"text": "a b"}), own]
    )
    outcome = asyncio.run(asyncio.wait_for(engine.execute(beside, execution_id="y"), 5))
    assert outcome.steps["ok"].status.value == "succeeded"
    assert "waits on its own output" in outcome.steps["e"].error
    engine.close()


def test_parse_plan_turns_schema_errors_into_problems():
    with pytest.raises(PlanValidationError) as caught:
        parse_plan(
            {"goal": "g", "steps": [{"id": "ok", "tool": "t"}, {"id": "bad id!", "tool": ""}]}
        )
    text = str(caught.value)
    assert "step 'bad id!': id: String should match pattern" in text
    assert "step 'bad id!': tool: String should have at least 1 character" in text
    with pytest.raises(PlanValidationError, match="steps: List should have at least 1 item"):
        parse_plan('{"goal": "g", "steps": []}')
    with pytest.raises(PlanValidationError, match="reserved for references"):
        parse_plan({"steps": [{"id": "item", "tool": "t"}]})
    with pytest.raises(PlanValidationError, match="timeout: Input should be greater than 0"):
        parse_plan({"steps": [{"id": "a", "tool": "t", "timeout": -1}]})
    plan = parse_plan(
        '{"goal": "g", "steps": [{"id": "a", "tool": "t", "retry": {"max_attempts": 5}}]}'
    )
    assert plan.steps[0].retry == RetryPolicy(max_attempts=5)


def test_retry_delays_grow_exponentially_within_jitter_and_cap():
    policy = RetryPolicy(backoff=0.1, multiplier=2, max_backoff=0.5, jitter=0.2)
    assert [policy.delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    assert policy.delay(1, 0.0) == pytest.approx(0.08)
    assert policy.delay(1, 0.999999) == pytest.approx(0.12, abs=1e-6)


def test_single_tool_planner_picks_the_named_tool_and_binds_the_text(registry):
    planner = SingleToolPlanner()
    plan = asyncio.run(planner.plan("count words: the quick brown fox", registry, {}))
    assert [(s.tool, s.params) for s in plan.steps] == [
        ("count_words", {"text": "the quick brown fox"})
    ]
    plan = asyncio.run(planner.plan("search", registry, {"params": {"query": "q", "limit": 2}}))
    assert plan.steps[0].params == {"query": "q", "limit": 2} and plan.planner == "single_tool"
    with pytest.raises(PlanningError, match="no registered tool is named in the goal"):
        asyncio.run(planner.plan("make me a sandwich", registry, {}))
    with pytest.raises(PlanningError, match="the goal is empty"):
        asyncio.run(planner.plan("  ", registry, {}))
