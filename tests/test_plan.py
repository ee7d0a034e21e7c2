"""Plans: the reference syntax, safe conditions, and validation that reports every problem."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, BeforeValidator

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
        ("${s.pair} == (1, 2)", {"s": {"pair": (1, 2)}}, True),  # a tuple stays a tuple
        ("${s.pair} == (1, 2)", {"s": {"pair": [1, 2]}}, False),  # as in Python
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
        ("len > 0 and len(${s.x}) > 0", "'len' is a function; call it as len"),
        ("len(len)", "'len' is a function"),
        ("", "is empty; write one"),
        ("  ", "is empty; write one"),
    ],
)
def test_conditions_refuse_anything_outside_the_language(text, fragment):
    with pytest.raises(ConditionError, match=fragment.replace("(", r"\(").replace("[", r"\[")):
        compile_condition(text)


def test_a_failing_condition_says_which():
    with pytest.raises(ConditionError, match=r"condition '\$\{s.n\} > 1' failed"):
        compile_condition("${s.n} > 1").evaluate({"s": {"n": "two"}})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Where Python decides None, as Python does.
        ("${s.n} == 0", False),
        ("${s.n} != 0", True),
        ("${s.n} is None", True),
        ("${s.n}", False),
        ("not ${s.n}", True),
        ("${s.n} in [0, None]", True),
        # Where Python raises, the comparison is false, as one with NaN is.
        ("${s.n} > 0", False),
        ("${s.n} < 3", False),
        ("${s.n} >= 0", False),
        ("0 <= ${s.n}", False),
        ("${s.n} <= ${s.n}", False),
        ("not ${s.n} > 0", True),
        ("1 < ${s.n} <= 3", False),
        ("'x' in ${s.n}", False),
        ("'x' not in ${s.n}", True),
        ("${s.n} in 'text'", False),
        ("${s.n} not in 'text'", True),
        ("len(${s.n}) > 0", False),
        ("len(${s.n}) is None", True),
        ("-${s.n} < 0", False),
        ("${s.n} > 0 or ${s.m} > 0", True),
    ],
)
def test_conditions_over_none_are_decided_not_failed(text, expected):
    """A step that failed with continue_on_error reads as None, and so does every path
    into it: "${bad.count} > 0" failed its dependant ("'>' not supported between
    instances of 'NoneType' and 'int'") instead of being decided."""
    for scope in ({"s": {"n": None, "m": 1}}, {"s": references.NO_OUTPUT}):
        if "${s.m}" in text and scope["s"] is references.NO_OUTPUT:
            continue  # ${s.m} is None there too
        assert compile_condition(text).evaluate(scope) is expected, scope


def test_none_decides_only_what_python_cannot():
    """What fails without None still fails, naming the condition."""
    for text, scope in [
        ("${s.n} > 1", {"s": {"n": "two"}}),
        ("len(${s.n}) > 1", {"s": {"n": 5}}),
        ("1 in ${s.n}", {"s": {"n": "text"}}),
        ("-${s.n} < 0", {"s": {"n": "x"}}),
    ]:
        with pytest.raises(ConditionError, match="failed"):
            compile_condition(text).evaluate(scope)


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


def test_a_fallback_that_is_off_is_no_problem_while_the_steps_own_tool_answers(registry):
    """Quarantine is automatic: a remembered plan whose fallback was quarantined was
    refused, though the engine only skips that fallback and the step's tool answers."""
    registry.register_function(lambda text: text, name="words_too")
    registry.register_function(lambda text: text, name="words_old")
    registry.quarantine("words_too", "failing lately")
    registry.disable("words_old", "retired")
    step = Step(
        id="w",
        tool="count_words",
        params={"text": "a b"},
        fallbacks=["words_too", "words_old"],
    )
    assert validate(Plan(goal="g", steps=[step]), registry) == []
    typo = step.model_copy(update={"fallbacks": ["words_too", "wrods"]})
    assert [str(p) for p in validate(Plan(goal="g", steps=[typo]), registry)] == [
        "step 'w': fallback: unknown tool 'wrods'"
    ]
    # When the step's own tool cannot answer, the fallbacks that are off say why none did.
    registry.quarantine("count_words", "failing")
    assert [str(p) for p in validate(Plan(goal="g", steps=[step]), registry)] == [
        "step 'w': tool 'count_words' is quarantined (failing)",
        "step 'w': fallback 'words_too' is quarantined (failing lately)",
        "step 'w': fallback 'words_old' is disabled (retired)",
    ]


def test_a_parameter_the_tool_does_not_take_is_refused_whatever_its_value(registry):
    """Only the value of a referenced argument waits for the run: "bb": "${n}" failed
    every run with "unexpected parameter", after the steps before it had run."""
    registry.register_function(lambda: 3, name="three")
    plan = Plan(
        goal="g",
        steps=[
            Step(id="n", tool="three"),
            Step(id="s", tool="search", params={"query": "${n}", "limitt": "${n}"}),
            Step(id="t", tool="three", params={"x": "${n}", "y": "n is ${n}"}),
        ],
    )
    assert [str(p) for p in validate(plan, registry)] == [
        "step 's': tool 'search': unexpected parameter 'limitt' (accepted: query, limit)",
        "step 't': tool 'three': unexpected parameter 'x' (accepted: none)",
        "step 't': tool 'three': unexpected parameter 'y' (accepted: none)",
    ]


class Hit(BaseModel):
    url: str
    rank: int


class Found(BaseModel):
    hits: list[Hit]
    best: Hit | None = None
    note: str | None = None


class Shape(BaseModel):
    rank: int


def find(query: str) -> Found:
    return Found(hits=[Hit(url=query, rank=1)])


def test_a_reference_a_parameter_can_never_take_is_refused_before_the_run(registry):
    """A list passed to an int parameter, or a model to a str one, passed validation and
    failed at run time, after every step before it had run."""

    def top(n: int) -> int:
        return n

    registry.register_function(find)
    registry.register_function(top)
    registry.register_function(lambda text: text, name="untyped")
    plan = Plan(
        goal="g",
        steps=[
            Step(id="f", tool="find", params={"query": "q"}),
            Step(id="a", tool="top", params={"n": "${f.hits}"}),
            Step(id="b", tool="count_words", params={"text": "${f.best}"}),
            Step(id="c", tool="count_words", params={"text": "${f.hits.0.rank}"}),
            Step(id="d", tool="top", params={"n": "${item}"}, for_each="${f.hits}"),
            Step(id="e", tool="count_words", params={"text": "${item}"}, for_each="${f.hits}"),
            Step(id="g", tool="top", params={"n": "${e}"}),
            Step(id="h", tool="untyped", params={"text": "${u}"}, for_each="${f.hits}"),
            Step(id="u", tool="untyped", params={"text": "x"}),
            Step(id="i", tool="top", params={"n": "${h}"}),
        ],
    )
    assert [str(p) for p in validate(plan, registry)] == [
        "step 'a': parameter 'n' of tool 'top' takes integer, but ${f.hits} is array of Hit "
        "(as tool 'find' declares it); the call would fail every run",
        "step 'b': parameter 'text' of tool 'count_words' takes string, but ${f.best} is Hit "
        "or null (as tool 'find' declares it); the call would fail every run",
        "step 'c': parameter 'text' of tool 'count_words' takes string, but ${f.hits.0.rank} "
        "is integer (as tool 'find' declares it); the call would fail every run",
        "step 'd': parameter 'n' of tool 'top' takes integer, but ${item} is Hit (an item of "
        "${f.hits}, as tool 'find' declares it); the call would fail every run",
        "step 'e': parameter 'text' of tool 'count_words' takes string, but ${item} is Hit "
        "(an item of ${f.hits}, as tool 'find' declares it); the call would fail every run",
        "step 'g': parameter 'n' of tool 'top' takes integer, but ${e} is array of integer "
        "(step 'e' runs for_each: a list of what tool 'count_words' returns); the call would "
        "fail every run",
        "step 'i': parameter 'n' of tool 'top' takes integer, but ${h} is array (step 'h' "
        "runs for_each, so its output is a list); the call would fail every run",
    ]


def test_a_path_is_checked_through_an_optional_field_and_a_for_each_steps_items(registry):
    """A for_each step's output was only "a list" and an ``X | None`` field "one of
    several types": a path past either was not checked, and failed every run."""

    registry.register_function(find)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="f", tool="find", params={"query": "q"}),
            Step(id="each", tool="find", params={"query": "${item.url}"}, for_each="${f.hits}"),
            Step(id="a", tool="count_words", params={"text": "${f.best.title}"}),
            Step(id="b", tool="count_words", params={"text": "${each.0.nope}"}),
            Step(id="c", tool="count_words", params={"text": "${each.0.hits.0.url}"}),
            Step(id="d", tool="count_words", params={"text": "${f.best.url}"}),
        ],
    )
    assert [str(p) for p in validate(plan, registry)] == [
        "step 'a': ${f.best.title}: the output's best has no field 'title' (fields: url, rank)",
        "step 'b': ${each.0.nope}: the output's 0 has no field 'nope' (fields: hits, best, note)",
    ]


def test_a_for_each_over_a_value_declared_never_a_list_is_refused(registry):
    """for_each="${f.best.rank}" passed validation and failed every run ("gave int, not a
    list"), after the steps before it had run."""

    registry.register_function(find)
    plan = Plan(
        goal="g",
        steps=[
            Step(id="f", tool="find", params={"query": "q"}),
            Step(id="a", tool="count_words", params={"text": "x"}, for_each="${f.best.rank}"),
            Step(id="b", tool="count_words", params={"text": "x"}, for_each="${f}"),
            Step(id="ok", tool="count_words", params={"text": "${item.url}"}, for_each="${f.hits}"),
            Step(id="ctx", tool="count_words", params={"text": "${item}"}, for_each="${context.x}"),
        ],
    )
    assert [str(p) for p in validate(plan, registry)] == [
        "step 'a': for_each ${f.best.rank} is integer (as tool 'find' declares it), never a "
        "list of items to run the step for",
        "step 'b': for_each ${f} is Found (as tool 'find' declares it), never a list of items "
        "to run the step for",
    ]


def test_a_reference_a_parameter_may_take_is_not_refused(registry):
    """Only a certain failure is refused: what the parameter takes for some value of the
    declared type is left to the check of the resolved value before the call."""

    def find(query: str) -> Found:
        return Found(hits=[Hit(url="3", rank=1)], best=Hit(url="4", rank=2), note="5")

    def flags() -> dict[str, bool]:
        return {"on": True}

    def row() -> dict[str, Any]:
        return {"rank": 1}

    def anything(value: Any = None) -> Any:
        return value

    def number(x: float, maybe: int | None = None, many: int | list[int] = 0) -> float:
        return x

    def shape(s: Shape, seq: Sequence[Any] = (), n: Annotated[int, BeforeValidator(len)] = 0):
        return s.rank

    for func in (find, flags, row, anything, number, shape):
        registry.register_function(func)
    registry.register_function(lambda value: value, name="untyped")
    plan = Plan(
        goal="g",
        steps=[
            Step(id="f", tool="find", params={"query": "q"}),
            Step(id="fl", tool="flags"),
            Step(id="r", tool="row"),
            Step(id="u", tool="untyped", params={"value": 2}),
            # Optional, unions, Any and untyped tools, on either side
            Step(id="a1", tool="number", params={"x": "${f.hits.0.rank}", "maybe": "${u}"}),
            Step(id="a2", tool="number", params={"x": 1, "many": "${f.hits.0.rank}"}),
            Step(id="a3", tool="anything", params={"value": "${f.hits}"}),
            Step(id="a4", tool="untyped", params={"value": "${f.hits}"}),
            Step(id="a5", tool="number", params={"x": "${u}"}),
            Step(id="a6", tool="count_words", params={"text": "${f.note}"}),  # str | None
            Step(id="a7", tool="search", params={"query": "q", "limit": "${f.best.rank}"}),
            # numbers: int for float, bool for int; text an int may be parsed from
            Step(id="b1", tool="number", params={"x": "${f.hits.0.rank}"}),
            Step(id="b2", tool="search", params={"query": "q", "limit": "${fl.on}"}),
            Step(id="b3", tool="search", params={"query": "q", "limit": "${f.hits.0.url}"}),
            # a mapping for a model, text for Sequence[Any], what a validator of its own takes
            Step(id="c1", tool="shape", params={"s": "${r}"}),
            Step(id="c2", tool="shape", params={"s": {"rank": 1}, "seq": "${f.note}"}),
            Step(id="c3", tool="shape", params={"s": {"rank": 1}, "n": "${f.hits}"}),
            Step(id="c4", tool="search", params={"query": "${context.q}"}),
            Step(id="c5", tool="number", params={"x": "${item.rank}"}, for_each="${f.hits}"),
        ],
    )
    assert validate(plan, registry) == []
    engine = ExecutionEngine(registry)
    outcome = asyncio.run(engine.execute(plan, execution_id="x", context={"q": "q"}))
    engine.close()
    failed = {s: r.error for s, r in outcome.steps.items() if r.status.value != "succeeded"}
    assert failed == {}


def test_item_is_refused_in_a_steps_own_for_each(registry):
    """for_each="${item}" passed validation, then crashed the engine with KeyError."""
    step = Step(id="e", tool="count_words", params={"text": "${item}"}, for_each="${item}")
    assert [str(p) for p in validate(Plan(goal="g", steps=[step]), registry)] == [
        "step 'e': for_each '${item}' is read before the step has items: ${item} has no "
        "value there; iterate over a step's output (${step.items})"
    ]
    engine = ExecutionEngine(registry)  # a caller that skips validation gets a failure
    outcome = asyncio.run(engine.execute(Plan(goal="g", steps=[step]), execution_id="x"))
    assert outcome.steps["e"].error_type.value == "validation"
    assert outcome.steps["e"].error.startswith("${item} has no value here")
    engine.close()


def test_an_empty_condition_is_refused_before_the_run(registry):
    """when="" passed validation (read as no condition) and failed the step at run time."""
    step = Step(id="w", tool="count_words", params={"text": "a"}, when="")
    assert [str(p) for p in validate(Plan(goal="g", steps=[step]), registry)] == [
        "step 'w': condition '' is empty; write one (${step.count} > 0), or leave `when` "
        "out for a step that always runs"
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
    # A bad step is named by its id in JSON text as in a mapping, by its place without one.
    bad = {"steps": [{"id": "fetch", "tool": "t", "retries": 3}, {"tool": "t"}, "x"]}
    for given in (bad, json.dumps(bad)):
        with pytest.raises(PlanValidationError) as caught:
            parse_plan(given)
        fetch, unnamed, not_a_step = [str(p) for p in caught.value.problems]
        assert fetch == "step 'fetch': retries: Extra inputs are not permitted"
        assert unnamed == "step '#1': id: Field required"
        assert not_a_step.startswith("step '#2': Input should be a")  # no stray ": "
    with pytest.raises(PlanValidationError) as caught:
        parse_plan("[]")
    assert [str(p) for p in caught.value.problems] == ["Input should be an object"]
    plan = parse_plan(
        '{"goal": "g", "steps": [{"id": "a", "tool": "t", "retry": {"max_attempts": 5}}]}'
    )
    assert plan.steps[0].retry == RetryPolicy(max_attempts=5)


def test_retry_delays_grow_exponentially_within_jitter_and_cap():
    policy = RetryPolicy(backoff=0.1, multiplier=2, max_backoff=0.5, jitter=0.2)
    assert [policy.delay(n, 0.5) for n in (1, 2, 3, 4)] == [0.1, 0.2, 0.4, 0.5]
    assert policy.delay(1, 0.0) == pytest.approx(0.08)
    assert policy.delay(1, 0.999999) == pytest.approx(0.12, abs=1e-6)
    # Growth past what a float holds is past the cap: the cap, not an OverflowError.
    huge = RetryPolicy(max_attempts=100, backoff=0, multiplier=1e10, max_backoff=0)
    assert huge.delay(40, 0.5) == 0.0
    capped = RetryPolicy(backoff=1, multiplier=1e10, max_backoff=5, jitter=0)
    assert [capped.delay(n, 0.5) for n in (1, 2, 40, 100)] == [1.0, 5.0, 5.0, 5.0]


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


def test_single_tool_planner_keeps_the_users_text_and_any_tools_name(registry):
    """ "count_words the price is ${PRICE}" was refused (unknown step 'PRICE'), and a tool
    named 'item' or with a long name got a raw pydantic error instead of a plan."""
    planner = SingleToolPlanner()
    engine = ExecutionEngine(registry)
    plan = asyncio.run(planner.plan("count_words the price is ${PRICE}", registry, {}))
    assert validate(plan, registry) == []
    outcome = asyncio.run(engine.execute(plan, execution_id="x"))
    assert outcome.output == 4  # "the price is ${PRICE}", as typed
    for name in ("item", "context", "t" * 150):
        registry.register_function(lambda text: text.upper(), name=name, description="shout")
        plan = asyncio.run(planner.plan(f"{name} hello", registry, {"params": {"text": "hi"}}))
        assert [(s.id, s.tool) for s in plan.steps] == [("step1", name)]
        assert validate(plan, registry) == []
        assert asyncio.run(engine.execute(plan, execution_id="y")).output == "HI"
    engine.close()
