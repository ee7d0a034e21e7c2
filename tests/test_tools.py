"""The tool registry: introspection into JSON Schema, argument validation, states, versions."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
from fractions import Fraction
from typing import Annotated, Literal

import numpy as np
import pydantic
import pytest
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from dendrite._ids import new_id
from dendrite.execution import ExecutionEngine
from dendrite.planning import Plan, RetryPolicy, Step, validate
from dendrite.tools import (
    Reliability,
    ToolArgumentError,
    ToolContext,
    ToolRegistrationError,
    ToolRegistry,
    ToolStatus,
    ToolUnavailableError,
    UnknownToolError,
    tool,
)


class Unit(enum.Enum):
    CELSIUS = "celsius"
    KELVIN = "kelvin"


class Window(BaseModel):
    start: int
    end: int


@tool(reliability="high", tags=["weather"], timeout=5, alternatives=["forecast_backup"])
def forecast(
    city: str,
    days: int = 3,
    unit: Unit = Unit.CELSIUS,
    detail: Literal["brief", "full"] = "brief",
    window: Window | None = None,
    ctx: ToolContext | None = None,
) -> dict[str, float]:
    """Forecast the weather for a city.

    Longer explanation that is not part of the summary.

    Args:
        city: Name of the city,
            as people write it.
        days: How many days ahead.
    """
    return {"t": 1.0}


def test_schema_from_signature_hints_and_docstring():
    registry = ToolRegistry()
    registered = registry.register(forecast)
    schema = registered.parameters_schema
    assert registered.description == "Forecast the weather for a city."
    assert schema["required"] == ["city"]
    assert schema["additionalProperties"] is False
    props = schema["properties"]
    assert set(props) == {"city", "days", "unit", "detail", "window"}  # ctx is not a parameter
    assert props["city"] == {
        "type": "string",
        "description": "Name of the city, as people write it.",
    }
    assert props["days"]["default"] == 3 and props["days"]["type"] == "integer"
    assert props["detail"]["enum"] == ["brief", "full"]
    assert schema["$defs"]["Unit"]["enum"] == ["celsius", "kelvin"]
    assert {"type": "null"} in props["window"]["anyOf"]
    assert registered.returns_schema == {
        "type": "object",
        "additionalProperties": {"type": "number"},
    }
    assert registered.reliability is Reliability.HIGH
    assert registered.timeout == 5 and registered.tags == ("weather",)
    assert registered.signature.context_param == "ctx"
    described = registry.describe()[0]
    assert described["name"] == "forecast" and described["parameters"] == schema


def test_rest_style_docstrings_are_read_too():
    def area(width: float, height: float) -> float:
        """Area of a rectangle.

        :param width: the horizontal side
        :param height: the vertical side
        """
        return width * height

    registered = ToolRegistry().register_function(area)
    assert registered.parameters_schema["properties"]["width"]["description"] == (
        "the horizontal side"
    )


def test_arguments_are_coerced_and_defaults_filled():
    registered = ToolRegistry().register(forecast)
    args = registered.validate_arguments(
        {"city": "Oslo", "days": "5", "window": {"start": 1, "end": 2}}
    )
    assert args["days"] == 5 and args["unit"] is Unit.CELSIUS
    assert args["window"] == Window(start=1, end=2)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "tool 'forecast': missing required parameter 'city' (expected string)"),
        (
            {"city": "Oslo", "days": "many"},
            "tool 'forecast': parameter 'days': expected integer, got 'many' (str)",
        ),
        (
            {"city": "Oslo", "detail": "medium"},
            "tool 'forecast': parameter 'detail': expected one of 'brief', 'full', got 'medium'",
        ),
        (
            {"city": "Oslo", "unit": "fahrenheit"},
            "tool 'forecast': parameter 'unit': expected Unit, got 'fahrenheit' (str)",
        ),
        (
            {"city": "Oslo", "country": "NO"},
            "tool 'forecast': unexpected parameter 'country' (accepted: city, days, unit, "
            "detail, window)",
        ),
        (
            {"city": "Oslo", "window": {"start": 1}},
            "tool 'forecast': missing required parameter 'window.end'",
        ),
    ],
)
def test_bad_arguments_name_tool_parameter_expected_and_got(params, message):
    registered = ToolRegistry().register(forecast)
    with pytest.raises(ToolArgumentError) as caught:
        registered.validate_arguments(params)
    assert str(caught.value).startswith(message)
    assert caught.value.tool == "forecast"


def test_a_wrong_item_or_union_value_is_described_as_it_is():
    """An item was described by its list's type ("expected array, got 'abc'"), and a
    union parameter got a line per branch under made-up names ('x.int', 'x.str')."""

    def stats(values: list[float]) -> float:
        return 0.0

    def show(x: int | str) -> str:
        return str(x)

    registry = ToolRegistry()
    assert registry.register_function(stats).check_arguments({"values": [1, "abc"]}) == [
        "parameter 'values[1]': got 'abc' (str): Input should be a valid number, unable to "
        "parse string as a number"
    ]
    assert registry.register_function(show).check_arguments({"x": [1]}) == [
        "parameter 'x': expected integer or string, got [1] (list): as int: Input should be "
        "a valid integer; as str: Input should be a valid string"
    ]

    def page(limit: Annotated[int, Field(ge=1)] | None = None) -> int:
        return 0

    # x | None has no branches: the value's own reason stays (it was dropped for a while).
    assert registry.register_function(page).check_arguments({"limit": 0}) == [
        "parameter 'limit': expected integer or null, got 0 (int): Input should be greater "
        "than or equal to 1"
    ]


def test_a_union_inside_a_parameter_is_one_problem_at_its_own_path():
    """Only a union parameter's branches were merged: an item of list[int | str] got a
    problem per branch, at paths that do not exist ('xs[1].int', 'xs[1].str')."""

    def pick(xs: list[int | str], by_name: dict[str, Window | int]) -> None:
        return None

    registered = ToolRegistry().register_function(pick)
    assert registered.check_arguments({"xs": [1, [2]], "by_name": {"a": {"start": 1}}}) == [
        "parameter 'xs[1]': expected integer or string, got [2] (list): as int: Input should "
        "be a valid integer; as str: Input should be a valid string",
        "parameter 'by_name.a': expected Window or integer, got {'start': 1} (dict): as Window "
        "at 'end': Field required; as int: Input should be a valid integer",
    ]


def test_an_integer_too_long_to_write_is_reported_not_raised():
    """repr() of an integer over 4,300 digits raises ValueError: the report of a wrong
    argument became that crash (not a ToolArgumentError, and no problem list for a plan)."""

    def echo(s: str, many: list[str] | None = None) -> str:
        return s

    registered = ToolRegistry().register_function(echo)
    with pytest.raises(ToolArgumentError) as caught:
        registered.validate_arguments({"s": 10**5000})
    assert str(caught.value) == (
        "tool 'echo': parameter 's': expected string, got an integer of 5,001 digits (int): "
        "Input should be a valid string"
    )
    assert registered.check_arguments({"s": "x", "many": -(10**4999)}) == [
        "parameter 'many': expected array or null, got a negative integer of 5,000 digits "
        "(int): Input should be a valid list"
    ]
    assert registered.check_arguments({"s": [10**5000 - 1]}) == [
        "parameter 's': expected string, got [an integer of 5,000 digits] (list): Input "
        "should be a valid string"
    ]


def test_callable_objects_and_partials_are_described_by_what_they_call():
    """The hints were read from the object itself: a callable object's class attributes
    stood for its parameters (x became untyped), and one without class annotations, or any
    functools.partial, was refused ("type hints cannot be resolved")."""

    class Adder:
        """Add a configured offset."""

        offset: int = 0

        def __call__(self, x: int) -> int:
            """Add.

            Args:
                x: the number to add to
            """
            return x + self.offset

    class Plain:
        def __call__(self, x: int) -> int:
            """Return x."""
            return x

    def scale(x: float, factor: float) -> float:
        """Scale a number."""
        return x * factor

    registry = ToolRegistry()
    adder = registry.register_function(Adder(), name="adder")
    assert adder.description == "Add a configured offset."
    assert adder.parameters_schema["properties"] == {
        "x": {"type": "integer", "description": "the number to add to"}
    }
    assert adder.returns_schema == {"type": "integer"}
    with pytest.raises(ToolArgumentError, match="parameter 'x': expected integer, got 'not a"):
        adder.validate_arguments({"x": "not a number"})
    plain = registry.register_function(Plain(), name="plain")
    assert plain.description == "Return x."
    assert plain.validate_arguments({"x": "3"}) == {"x": 3}
    # A keyword the partial binds is its own, not the planner's.
    double = registry.register_function(functools.partial(scale, factor=2.0), name="double")
    assert double.description == "Scale a number."
    assert double.parameters_schema["properties"] == {"x": {"type": "number"}}
    assert double.func(**double.validate_arguments({"x": "1.5"})) == 3.0
    with pytest.raises(ToolArgumentError, match="unexpected parameter 'factor'"):
        double.validate_arguments({"x": 1.0, "factor": 3.0})
    with pytest.raises(ToolRegistrationError, match="cannot register a partial object without a"):
        registry.register_function(functools.partial(scale, factor=2.0))


def test_a_field_default_is_the_parameter_s_field():
    """A Field(...) default was wrapped in another Field: its constraint, default and
    description were lost, and a call without the parameter received the FieldInfo."""

    def top(
        n: int = Field(3, ge=1, description="how many"),
        m: int = Field(ge=2),
        k: int = Field(1),
    ) -> int:
        """Top items.

        Args:
            n: what the docstring says
            k: how many more
        """
        return n

    registered = ToolRegistry().register_function(top)
    props = registered.parameters_schema["properties"]
    assert props["n"] == {"type": "integer", "default": 3, "minimum": 1, "description": "how many"}
    assert props["k"] == {"type": "integer", "default": 1, "description": "how many more"}
    assert registered.parameters_schema["required"] == ["m"]
    assert registered.validate_arguments({"m": 2}) == {"n": 3, "m": 2, "k": 1}
    with pytest.raises(ToolArgumentError, match="parameter 'n': expected integer, got 0 "):
        registered.validate_arguments({"n": 0, "m": 2})


def test_an_annotated_description_is_kept():
    """Annotated[..., Field(description=...)] lost its description to the docstring's
    absent one (description=None was passed over it)."""

    def weather(
        city: Annotated[str, Field(description="City name", min_length=1)],
        days: Annotated[int, Field(description="Days ahead")] = 1,
    ) -> str:
        """Weather for a city.

        Args:
            days: what the docstring says
        """
        return city

    registered = ToolRegistry().register_function(weather)
    props = registered.parameters_schema["properties"]
    assert props["city"] == {"type": "string", "minLength": 1, "description": "City name"}
    assert props["days"]["description"] == "Days ahead"  # the field's own says more


def test_a_none_default_makes_the_parameter_nullable():
    """limit: int = None was published as {"type": "integer", "default": null} and then
    refused the null a planner following that schema sends."""

    def search(
        query: str,
        limit: int = None,  # type: ignore[assignment]  # noqa: RUF013 (what is tested)
        page: Annotated[int, Field(ge=1)] = None,  # type: ignore[assignment]  # noqa: RUF013
        top: int = Field(None),
    ) -> list[str]:
        return []

    registered = ToolRegistry().register_function(search)
    props = registered.parameters_schema["properties"]
    assert props["limit"] == {"anyOf": [{"type": "integer"}, {"type": "null"}], "default": None}
    assert props["page"]["anyOf"] == [{"type": "integer", "minimum": 1}, {"type": "null"}]
    assert props["top"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    params = {"query": "q", "limit": None, "page": None, "top": None}
    assert registered.validate_arguments(params) == params
    with pytest.raises(ToolArgumentError, match=r"parameter 'page': .*greater than or equal to 1"):
        registered.validate_arguments({"query": "q", "page": 0})


def test_an_annotated_context_is_the_context():
    """Annotated[ToolContext, ...] was taken for an argument, and pydantic, which cannot
    validate a context, failed the registration with a SchemaError."""

    def run(x: int, ctx: Annotated[ToolContext, "injected"]) -> int:
        return x

    def maybe(x: int, ctx: Annotated[ToolContext | None, "injected"] = None) -> int:
        return x

    registry = ToolRegistry()
    for func in (run, maybe):
        registered = registry.register_function(func)
        assert registered.signature.context_param == "ctx"
        assert list(registered.parameters_schema["properties"]) == ["x"]


def test_a_tool_without_parameters_refuses_any():
    def ping() -> str:
        return "pong"

    registered = ToolRegistry().register_function(ping)
    assert registered.validate_arguments({}) == {}
    with pytest.raises(ToolArgumentError, match="unexpected parameter 'x' \\(accepted: none\\)"):
        registered.validate_arguments({"x": 1})


def test_registration_refuses_what_cannot_be_called_by_name():
    registry = ToolRegistry()

    def star(*items: int) -> int:
        return 0

    def kw(**options: int) -> int:
        return 0

    def pos(a: int, /) -> int:
        return a

    for func, fragment in ((star, "*args"), (kw, "*args and **kwargs"), (pos, "positional-only")):
        with pytest.raises(ToolRegistrationError, match=fragment.replace("*", "\\*")):
            registry.register_function(func)
    with pytest.raises(ToolRegistrationError, match="must be an identifier"):
        registry.register_function(lambda: 1, name="not a name")
    # Longer than a tool execution's record keeps: every attempt would be refused.
    with pytest.raises(ToolRegistrationError, match="is 201 characters long; at most 200"):
        registry.register_function(lambda: 1, name="t" * 201)
    assert registry.register_function(lambda: 1, name="t" * 200).name == "t" * 200
    with pytest.raises(ToolRegistrationError, match="reliability 'great' is not one of"):
        registry.register_function(forecast, reliability="great")
    for good in (np.int64(5), Fraction(1, 2), 0.5):  # any real number of seconds
        assert registry.register_function(forecast, timeout=good, replace=True).timeout == good
    registry.unregister("forecast")
    for bad in (0, -1, float("nan"), float("inf"), "5", True, 10**400):
        # NaN passed "<= 0" and then failed every call with "timed out after nans".
        with pytest.raises(ToolRegistrationError, match="timeout must be a finite number"):
            registry.register_function(forecast, timeout=bad)  # type: ignore[arg-type]
    with pytest.raises(ToolRegistrationError, match="estimated_duration must be a finite"):
        registry.register_function(forecast, estimated_duration=float("inf"))
    # A lone string became its letters: tags ('m', 'a', 't', 'h').
    with pytest.raises(ToolRegistrationError, match="tags takes a list of names, got 'math'"):
        registry.register_function(forecast, tags="math")  # type: ignore[arg-type]
    with pytest.raises(ToolRegistrationError, match="alternatives takes a list of names"):
        registry.register_function(forecast, alternatives=[1])  # type: ignore[list-item]
    with pytest.raises(ToolRegistrationError, match="retry_on takes a list of exception"):
        registry.register_function(forecast, retry_on=ValueError)  # type: ignore[arg-type]
    assert registry.register_function(forecast, tags=("a", "b"), alternatives=iter(["x"])).tags == (
        "a",
        "b",
    )
    registry.unregister("forecast")
    with pytest.raises(ToolRegistrationError, match="retry_on takes exception classes"):
        registry.register_function(forecast, retry_on=["ValueError"])  # type: ignore[list-item]
    with pytest.raises(ToolRegistrationError, match="cannot be its own alternative"):
        registry.register_function(forecast, alternatives=["forecast"])
    with pytest.raises(ToolRegistrationError, match="not callable"):
        registry.register_function(42)  # type: ignore[arg-type]


def test_versions_need_replace_and_keep_state_and_history():
    registry = ToolRegistry()
    first = registry.register(forecast)
    registry.disable("forecast", "maintenance")
    with pytest.raises(ToolRegistrationError, match="already registered \\(version 1\\)"):
        registry.register(forecast)

    def forecast_v2(city: str) -> dict[str, float]:
        return {}

    second = registry.register_function(forecast_v2, name="forecast", replace=True)
    assert (first.version, second.version) == (1, 2)
    assert [t.version for t in registry.versions("forecast")] == [1, 2]
    assert registry.get("forecast") is second
    assert registry.state("forecast").status is ToolStatus.DISABLED
    registry.unregister("forecast")  # and back: a version of its own, not 1 again
    assert registry.register(forecast).version == 3
    assert [t.version for t in registry.versions("forecast")] == [1, 2, 3]


def test_states_enable_disable_quarantine():
    registry = ToolRegistry()
    registry.register(forecast)
    assert registry.require_available("forecast").available
    registry.quarantine("forecast", "7 failures in the last 10 calls")
    state = registry.state("forecast")
    assert state.status is ToolStatus.QUARANTINED and state.reason.startswith("7 failures")
    with pytest.raises(ToolUnavailableError, match="is quarantined: 7 failures"):
        registry.require_available("forecast")
    assert registry.describe() == []
    assert registry.describe(include_unavailable=True)[0]["status"] == "quarantined"
    with pytest.raises(ValueError, match="needs a reason"):
        registry.quarantine("forecast", "")
    registry.enable("forecast")
    assert registry.state("forecast").status is ToolStatus.ENABLED


def test_unknown_tools_get_a_suggestion():
    registry = ToolRegistry()
    registry.register(forecast)
    with pytest.raises(UnknownToolError, match="unknown tool 'forcast'; did you mean 'forecast'"):
        registry.get("forcast")
    assert "forecast" in registry and len(registry) == 1 and registry.names() == ["forecast"]
    registry.unregister("forecast")
    assert "forecast" not in registry


def test_decorator_on_the_registry_and_async_detection():
    registry = ToolRegistry()

    @registry.tool
    async def fetch(url: str) -> str:
        return url

    @registry.tool(name="sum_all", reliability=Reliability.LOW)
    def total(values: list[float]) -> float:
        return sum(values)

    assert registry.get("fetch").is_async
    assert not registry.get("sum_all").is_async
    assert registry.get("sum_all").reliability.prior == 0.7
    assert total([1.0, 2.0]) == 3.0  # the function stays a plain function


def test_plain_arguments_agree_with_pydantic_whenever_they_answer():
    """The fast path for plain-typed parameters must return what the pydantic model returns,
    and leave every value pydantic would coerce or refuse to pydantic."""
    import itertools

    from dendrite.tools.introspect import argument_problems, plain_arguments

    def plain(n: int, s: str, ratio: float = 0.5, flag: bool = False, label: str = "x") -> None:
        """All plain."""

    def mixed(n: int, tags: list[str] | None = None) -> None:
        """Not all plain."""

    registry = ToolRegistry()
    tool = registry.register_function(plain)
    assert registry.register_function(mixed).signature.plain is None
    values = [1, 0, True, 2.5, 3.0, "7", "text", None, [1]]
    names = ["n", "s", "ratio", "flag", "label", "extra"]
    answered = 0
    for size in range(4):
        for keys in itertools.combinations(names, size):
            for picked in itertools.product(values, repeat=size):
                params = dict(zip(keys, picked, strict=True))
                fast = plain_arguments(tool.signature, params)
                model = tool.signature.model
                try:
                    parsed = model.model_validate(params)
                    by_pydantic = {
                        name: getattr(parsed, attr) for attr, name in tool.signature.fields
                    }
                except Exception:
                    by_pydantic = None
                if fast is not None:
                    answered += 1
                    assert fast == by_pydantic and all(
                        type(fast[k]) is type(by_pydantic[k]) for k in fast
                    ), params
                    assert tool.validate_arguments(params) == by_pydantic
                    assert argument_problems(tool.signature, params) == []
                elif by_pydantic is None:
                    with pytest.raises(ToolArgumentError):
                        tool.validate_arguments(params)
    assert answered >= 20
    deferred = plain_arguments(tool.signature, {"s": "a"}, deferred={"n"})
    assert deferred == {"s": "a", "ratio": 0.5, "flag": False, "label": "x"}


def test_a_default_or_alias_given_in_annotated_keeps_the_parameter_optional_and_named():
    """A review of the Field handling found both lost: ``Annotated[int, Field(default=5)]``
    became required, and ``Field(alias="xx")`` renamed the parameter in the schema while
    calls still had to use ``x``."""
    registry = ToolRegistry()

    def limit(
        n: Annotated[int, Field(default=5, ge=1)], m: Annotated[int, Field(alias="mm")]
    ) -> int:
        """Limit."""
        return n + m

    tool = registry.register_function(limit)
    assert tool.parameter_names == ("n", "m")
    assert tool.parameters_schema["required"] == ["m"]
    assert tool.validate_arguments({"m": 1}) == {"n": 5, "m": 1}
    with pytest.raises(ToolArgumentError, match="parameter 'n'"):
        tool.validate_arguments({"n": 0, "m": 1})


class Greeting:
    """Build a greeting.

    Args:
        name: who to greet
    """

    text: str  # what __init__ makes: an attribute, not a parameter

    def __init__(self, name: str, times: int = 1) -> None:
        """Args:
        times: how often
        """
        self.text = ", ".join([f"hello {name}"] * times)


@dataclasses.dataclass
class Point:
    """A point, scaled as it is made."""

    x: int
    y: int = 0
    tags: list[str] = dataclasses.field(default_factory=list)
    scale: dataclasses.InitVar[int] = 1
    norm: int = dataclasses.field(init=False, default=0)

    def __post_init__(self, scale: int) -> None:
        self.x *= scale
        self.norm = abs(self.x) + abs(self.y)


class Order(BaseModel):
    """An order."""

    item: str = Field(description="what to buy")
    qty: int = Field(1, ge=1)
    customer_name: str = Field("anon", alias="customerName")


def test_a_class_is_described_by_its_constructor():
    """The hints were the class's own annotations (its attributes): ``Greeting``'s
    parameters came out untyped and ``times="2"`` reached ``__init__`` as a string, a
    ``__new__``'s parameter was untyped, and an attribute named like a parameter gave
    it the attribute's type."""

    class Celsius:
        """A temperature from a Fahrenheit reading."""

        def __new__(cls, fahrenheit: float) -> Celsius:
            made = super().__new__(cls)
            made.value = (fahrenheit - 32) * 5 / 9
            return made

    class Counter:
        count: str  # stored as text; the constructor takes a number

        def __init__(self, count: int) -> None:
            """Count from ``count``."""
            self.count = str(count)

    registry = ToolRegistry()
    greeting = registry.register(Greeting)
    assert greeting.description == "Build a greeting."
    assert greeting.parameters_schema["properties"] == {
        "name": {"type": "string", "description": "who to greet"},
        "times": {"type": "integer", "default": 1, "description": "how often"},
    }
    assert greeting.func(**greeting.validate_arguments({"name": "ann", "times": "2"})).text == (
        "hello ann, hello ann"
    )
    assert greeting.signature.return_type is Greeting and not greeting.is_async
    celsius = registry.register(Celsius)
    assert celsius.parameters_schema["properties"] == {"fahrenheit": {"type": "number"}}
    assert celsius.func(**celsius.validate_arguments({"fahrenheit": "212"})).value == 100.0
    counter = registry.register(Counter)
    assert counter.description == "Count from ``count``."
    assert counter.parameters_schema["properties"] == {"count": {"type": "integer"}}
    with pytest.raises(ToolArgumentError, match="parameter 'count': expected integer"):
        counter.validate_arguments({"count": "three"})
    twice = registry.register_function(functools.partial(Greeting, times=2), name="twice")
    assert twice.parameter_names == ("name",)
    assert twice.func(**twice.validate_arguments({"name": "bo"})).text == "hello bo, hello bo"


def test_a_dataclass_or_pydantic_model_is_described_by_its_fields():
    """A dataclass with an ``InitVar`` was refused ("contains the 'dataclasses.InitVar'
    type qualifier"), a ``default_factory`` showed as ``<factory>``; a model lost its
    fields' constraints and descriptions, an aliased field its type, and one without a
    docstring was described by pydantic's manual for ``BaseModel``."""

    class Bare(BaseModel):
        n: int

    class Parsed(BaseModel):
        a: int

        def __init__(self, a: str, **data: object) -> None:
            super().__init__(a=int(a), **data)

    @pydantic.dataclasses.dataclass
    class Bounded:
        x: int
        ys: list[int] = Field(default_factory=list, max_length=2)

    registry = ToolRegistry()
    point = registry.register(Point)
    assert point.parameter_names == ("x", "y", "tags", "scale")
    assert point.parameters_schema["required"] == ["x"]
    assert "default" not in point.parameters_schema["properties"]["tags"]
    first, second = (point.validate_arguments({"x": "2", "scale": 3}) for _ in range(2))
    assert first == {"x": 2, "y": 0, "tags": [], "scale": 3} and first["tags"] is not second["tags"]
    assert point.func(**first) == Point(x=6, y=0, tags=[]) and point.func(**first).norm == 6
    assert point.returns_schema["properties"]["norm"]["type"] == "integer"  # ${p.norm} reads

    order = registry.register(Order)
    props = order.parameters_schema["properties"]
    assert order.parameter_names == ("item", "qty", "customerName")
    assert props["item"] == {"type": "string", "description": "what to buy"}
    assert props["qty"] == {"type": "integer", "default": 1, "minimum": 1}
    assert props["customerName"] == {"type": "string", "default": "anon"}
    with pytest.raises(ToolArgumentError, match="parameter 'qty'"):
        order.validate_arguments({"item": "tea", "qty": 0})
    made = order.func(**order.validate_arguments({"item": "tea", "customerName": "bo"}))
    assert made == Order(item="tea", qty=1, customerName="bo")

    assert registry.register(Bare).description == ""
    parsed = registry.register(Parsed)  # its own __init__ says what `a` is
    assert parsed.parameters_schema["properties"] == {"a": {"type": "string"}}
    assert parsed.func(**parsed.validate_arguments({"a": "5"})).a == 5
    bounded = registry.register(Bounded)
    assert bounded.parameters_schema["properties"]["ys"]["maxItems"] == 2
    with pytest.raises(ToolArgumentError, match="parameter 'ys'"):
        bounded.validate_arguments({"x": 1, "ys": [1, 2, 3]})
    assert bounded.func(**bounded.validate_arguments({"x": "1"})) == Bounded(x=1, ys=[])


def test_a_model_field_the_constructor_takes_only_by_alias_is_refused():
    """pydantic's signature shows such a field by its name, which its constructor ignores:
    the parameter was published and every value given for it silently dropped."""

    class Dashed(BaseModel):
        name: str = "anon"
        label: str = Field("x", alias="the-label")

    class Chosen(BaseModel):
        v: int = Field(0, validation_alias=AliasChoices("value", "v-1"))

    class ByName(BaseModel):
        model_config = ConfigDict(validate_by_name=True)
        label: str = Field("x", alias="the-label")

    registry = ToolRegistry()
    with pytest.raises(ToolRegistrationError, match=r"parameter 'label' of .*Dashed is a field"):
        registry.register(Dashed)
    with pytest.raises(ToolRegistrationError, match="only takes by its alias AliasChoices"):
        registry.register(Chosen)
    by_name = registry.register(ByName)
    assert by_name.func(**by_name.validate_arguments({"label": "y"})).label == "y"


def test_every_form_of_async_callable_is_async():
    """Only a plain ``async def`` function (bound, or in a partial) was seen as async: an
    object whose ``__call__`` is ``async def``, a partial of one, and a bare staticmethod
    were called in a thread only to make their coroutine."""

    class Adder:
        async def __call__(self, x: int) -> int:
            """Add ten."""
            return x + 10

    class Sync:
        def __call__(self, x: int) -> int:
            return x

    class Service:
        async def fetch(self, key: str) -> str:
            return key.upper()

        @staticmethod
        async def quiet(key: str) -> str:
            return key.lower()

        @classmethod
        async def twice(cls, key: str) -> str:
            return key * 2

    async def add(x: int, y: int) -> int:
        return x + y

    registry = ToolRegistry()
    forms = {
        "instance": Adder(),
        "partial_instance": functools.partial(Adder()),
        "bare_staticmethod": Service.__dict__["quiet"],
        "staticmethod": Service.quiet,
        "bound": Service().fetch,
        "classmethod": Service.twice,
        "partial": functools.partial(add, y=1),
    }
    for name, func in forms.items():
        assert registry.register_function(func, name=name).is_async, name
    assert not registry.register_function(Sync(), name="sync").is_async
    assert not registry.register(Adder).is_async  # calling the class makes an Adder
    with pytest.raises(ToolRegistrationError, match="classmethod object is only callable once"):
        registry.register_function(Service.__dict__["twice"], name="unbound")


def test_async_callable_tools_run_on_the_loop_through_the_engine():
    """The async forms fixed above, called by a plan on an engine whose thread pool is
    shut: an async tool needs no thread. Before, an async callable object (or a partial
    of one) and a bare staticmethod each failed with "the engine was closed"."""

    class Adder:
        async def __call__(self, x: int) -> int:
            await asyncio.sleep(0)
            return x + 10

    class Service:
        @staticmethod
        async def shout(text: str) -> str:
            await asyncio.sleep(0)
            return text.upper()

    registry = ToolRegistry()
    registry.register_function(Adder(), name="add_ten")
    registry.register_function(functools.partial(Adder()), name="add_ten_later")
    registry.register_function(Service.__dict__["shout"], name="shout")
    plan = Plan(
        goal="async",
        steps=[
            Step(id="a", tool="add_ten", params={"x": "1"}),
            Step(id="b", tool="add_ten_later", params={"x": "${a}"}),
            Step(id="c", tool="shout", params={"text": "b is ${b}"}),
        ],
        output="${c}",
    )
    assert validate(plan, registry) == []
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    engine.close()
    outcome = asyncio.run(engine.execute(plan, execution_id=new_id()))
    assert (outcome.success, outcome.output) == (True, "B IS 21"), outcome.error


def test_class_tools_run_through_the_engine():
    """Classes registered as tools, called by a plan: the arguments are coerced to the
    constructor's types, outputs are the instances and references read their fields."""

    def echo(value: object) -> object:
        return value

    registry = ToolRegistry()
    for cls in (Greeting, Point, Order):
        registry.register(cls)
    registry.register(echo)
    plan = Plan(
        goal="classes",
        steps=[
            Step(id="g", tool="Greeting", params={"name": "ann", "times": "2"}),
            Step(id="p", tool="Point", params={"x": "2", "y": 1, "scale": 3}),
            Step(id="o", tool="Order", params={"item": "${g.text}", "qty": "${p.norm}"}),
            Step(id="e", tool="echo", params={"value": ["${o.customer_name}", "${o.qty}"]}),
        ],
        output="${e}",
    )
    assert validate(plan, registry) == []
    bad = Plan(goal="bad", steps=[Step(id="o", tool="Order", params={"item": "x", "qty": 0})])
    engine = ExecutionEngine(registry, retry=RetryPolicy(max_attempts=1))
    try:
        outcome = asyncio.run(engine.execute(plan, execution_id=new_id()))
        refused = asyncio.run(engine.execute(bad, execution_id=new_id()))
    finally:
        engine.close()
    assert (outcome.success, outcome.output) == (True, ["anon", 7]), outcome.error
    assert outcome.steps["o"].output == Order(item="hello ann, hello ann", qty=7)
    assert not refused.success and "parameter 'qty'" in refused.steps["o"].error


def test_a_returned_model_is_described_by_its_field_names():
    """The returns schema named an aliased field by its alias, which no reference can read
    (a reference reads attributes, a stored output is dumped by name): plan validation
    refused ``${o.customer_name}``, which works, and let ``${o.customerName}`` through."""

    def take_order() -> Order:
        return Order(item="tea", customerName="bo")

    def echo(value: str) -> str:
        return value

    registry = ToolRegistry()
    assert list(registry.register(take_order).returns_schema["properties"]) == [
        "item",
        "qty",
        "customer_name",
    ]
    registry.register(echo)

    def plan(path: str) -> Plan:
        reference = f"${{o.{path}}}"
        steps = [
            Step(id="o", tool="take_order"),
            Step(id="e", tool="echo", params={"value": reference}),
        ]
        return Plan(goal="g", steps=steps, output="${e}")

    assert validate(plan("customer_name"), registry) == []
    (problem,) = validate(plan("customerName"), registry)
    assert "no field 'customerName'" in str(problem)
    engine = ExecutionEngine(registry)
    try:
        outcome = asyncio.run(engine.execute(plan("customer_name"), execution_id=new_id()))
    finally:
        engine.close()
    assert (outcome.success, outcome.output) == (True, "bo")
