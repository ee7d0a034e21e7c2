"""Plans: the DAG of tool calls a goal becomes, and its validation before anything runs.

A plan is data (pydantic), so it can come from a template, from plan memory,
from an LLM's JSON or from a user, and be stored with the execution it
produced. :func:`validate` reports every problem at once, each tied to its
step, because a planner (or an LLM asked to repair its plan) fixes a list of
problems faster than one error at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dendrite.planning import references
from dendrite.planning.arguments import resolve_ref
from dendrite.planning.conditions import ConditionError, compile_condition
from dendrite.telemetry import ErrorType
from dendrite.tools import Tool, ToolRegistry, ToolStatus, UnknownToolError
from dendrite.tools.introspect import MAX_HOPS, declared_schema

STEP_ID_PATTERN = r"^[A-Za-z_][\w-]*$"

DEFAULT_RETRYABLE = (ErrorType.TIMEOUT, ErrorType.RATE_LIMIT, ErrorType.CONNECTION)


class RetryPolicy(BaseModel):
    """How often a step is tried again, and after how long.

    Only errors of the kinds in ``retry_on`` (and a tool's own ``retry_on``
    exception classes) are retried: a validation error will fail the same way
    every time, so retrying it only wastes the time budget.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(default=3, ge=1, le=100)
    backoff: float = Field(default=0.1, ge=0, description="seconds before the first retry")
    multiplier: float = Field(default=2.0, ge=1)
    max_backoff: float = Field(default=10.0, ge=0)
    jitter: float = Field(default=0.1, ge=0, le=1, description="± fraction of each delay")
    retry_on: tuple[ErrorType, ...] = DEFAULT_RETRYABLE

    def delay(self, retry: int, random_unit: float) -> float:
        """Seconds to wait before retry number ``retry`` (1-based); ``random_unit`` in [0, 1).

        The growth can pass what a float holds (``multiplier=1e10``, 40 retries) long
        after the cap applies: then it is infinite, and the cap is the delay.
        """
        try:
            growth = self.multiplier ** (retry - 1)
        except OverflowError:
            growth = math.inf
        grown = self.backoff * growth if self.backoff else 0.0  # 0 * inf would be nan
        base = min(grown, self.max_backoff)
        return max(0.0, base * (1 + self.jitter * (2 * random_unit - 1)))


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=STEP_ID_PATTERN, max_length=128)
    tool: str = Field(min_length=1)
    params: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[str] = Field(default_factory=list)
    when: str | None = None
    for_each: str | None = None
    retry: RetryPolicy | None = None
    timeout: float | None = Field(default=None, gt=0)
    fallbacks: list[str] = Field(default_factory=list)
    continue_on_error: bool = False
    description: str = ""

    @field_validator("id")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        if value in references.RESERVED:
            raise ValueError(f"{value!r} is reserved for references; choose another step id")
        return value

    def references(self) -> list[references.Reference]:
        found = list(references.find(self.params))
        for text in (self.when, self.for_each):
            if text:
                found.extend(references.parse(text))
        return found

    def dependencies(self, refs: list[references.Reference] | None = None) -> list[str]:
        """Explicit ``depends_on`` plus every step named by a reference, in first-seen order.

        ``refs``: this step's :meth:`references`, when the caller already has them.
        """
        seen = dict.fromkeys(self.depends_on)
        for ref in self.references() if refs is None else refs:
            if ref.source not in references.RESERVED:
                seen.setdefault(ref.source)
        return list(seen)


HAND_WRITTEN = "explicit"
"""The planner of a plan the caller wrote: its tools and arguments are the caller's."""


class Plan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    goal: str = ""
    steps: list[Step] = Field(min_length=1)
    output: str | None = Field(
        default=None,
        description="a reference to the run's answer; default: the output of the last step "
        "nothing depends on (or of each such step, by id, when there are several)",
    )
    planner: str = HAND_WRITTEN
    metadata: dict[str, Any] = Field(default_factory=dict)

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def sinks(self) -> list[str]:
        """Steps nothing else depends on: by default, where the answer comes from."""
        needed = {dep for step in self.steps for dep in step.dependencies()}
        return [step.id for step in self.steps if step.id not in needed]


@dataclass(frozen=True, slots=True)
class PlanProblem:
    step_id: str | None
    message: str

    def __str__(self) -> str:
        return f"step {self.step_id!r}: {self.message}" if self.step_id else self.message


class PlanValidationError(ValueError):
    """The plan cannot run; ``execution_id`` names the recorded attempt when the
    orchestrator ran it."""

    execution_id: str | None = None

    def __init__(self, problems: list[PlanProblem]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the plan has {len(problems)} problem(s):\n{lines}")


def parse_plan(data: Mapping[str, Any] | str) -> Plan:
    """A plan from a mapping or JSON text, with pydantic's errors turned into plan problems."""
    try:
        if isinstance(data, str):
            return Plan.model_validate_json(data)
        return Plan.model_validate(data)
    except ValidationError as error:
        raw = _raw(data)
        problems = []
        for item in error.errors(include_url=False):
            loc = item.get("loc", ())
            step_id = None
            if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int):
                step_id = _raw_step_id(raw, loc[1])
                loc = loc[2:]
            where = ".".join(str(p) for p in loc)
            message = str(item.get("msg"))
            problems.append(PlanProblem(step_id, f"{where}: {message}" if where else message))
        raise PlanValidationError(problems) from None


def _raw(data: Mapping[str, Any] | str) -> Any:
    """The plan as given, as Python data: JSON text is read again, so a bad step is named
    by its id in either form (None when the text is no JSON at all)."""
    if not isinstance(data, str):
        return data
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def _raw_step_id(raw: Any, index: int) -> str:
    """The id the step at ``index`` was given, or ``#index`` when it has none."""
    try:
        step_id = raw["steps"][index].get("id")
    except (KeyError, IndexError, TypeError, AttributeError):
        return f"#{index}"
    return f"#{index}" if step_id is None else str(step_id)


def validate(plan: Plan, registry: ToolRegistry) -> list[PlanProblem]:
    """Every problem that would stop ``plan`` from running, in step order; empty when none."""
    problems: list[PlanProblem] = []
    ids = [step.id for step in plan.steps]
    seen: set[str] = set()
    for step_id in ids:
        if step_id in seen:
            problems.append(PlanProblem(step_id, "duplicate step id"))
        seen.add(step_id)
    by_id = {step.id: step for step in plan.steps}
    tools: dict[str, Tool | None] = {}
    graph: dict[str, list[str]] = {}
    for step in plan.steps:
        before = len(problems)
        tools[step.id] = _check_tool(
            step.id, step.tool, registry, problems, "tool", stand_ins=step.fallbacks
        )
        # The engine skips a fallback that is off: it matters only when the step's own
        # tool cannot answer either (and then says why no fallback stood in).
        tool_refused = len(problems) > before
        for fallback in step.fallbacks:
            _check_tool(step.id, fallback, registry, problems, "fallback", status=tool_refused)
        for dep in step.depends_on:
            if dep not in by_id:
                problems.append(PlanProblem(step.id, f"depends on unknown step {dep!r}"))
            elif dep == step.id:
                problems.append(PlanProblem(step.id, "depends on itself"))
        if step.when is not None:  # "" is no condition the engine can decide
            try:
                condition = compile_condition(step.when)
            except ConditionError as error:
                problems.append(PlanProblem(step.id, str(error)))
            else:
                if any(ref.source == references.ITEM for ref in condition.refs.values()):
                    problems.append(
                        PlanProblem(
                            step.id,
                            f"when {step.when!r} is decided once for the whole step, before "
                            "its items: ${item} has no value there",
                        )
                    )
        if step.for_each is not None:
            items = references.whole(step.for_each)
            if items is None:
                problems.append(
                    PlanProblem(
                        step.id,
                        f"for_each must be one reference like ${{step.items}}, "
                        f"got {step.for_each!r}",
                    )
                )
            elif items.source == references.ITEM:
                problems.append(
                    PlanProblem(
                        step.id,
                        f"for_each {step.for_each!r} is read before the step has items: "
                        "${item} has no value there; iterate over a step's output "
                        "(${step.items})",
                    )
                )
            else:
                problems.extend(_check_items(step, items, by_id, tools))
        refs = step.references()
        graph[step.id] = step.dependencies(refs)
        if step.id in graph[step.id] and step.id not in step.depends_on:
            problems.append(PlanProblem(step.id, "refers to its own output, which it never has"))
        for ref in refs:
            problems.extend(_check_reference(step, ref, by_id, tools))
        found = tools[step.id]
        if found is not None:
            problems.extend(_check_literals(step, found))
            problems.extend(_check_reference_types(step, found, by_id, tools))
    if plan.output is not None:
        ref = references.whole(plan.output)
        if ref is None:
            problems.append(PlanProblem(None, f"output must be one reference, got {plan.output!r}"))
        elif ref.source not in by_id:
            problems.append(PlanProblem(None, f"output refers to unknown step {ref.source!r}"))
        elif ref.path:
            problem = _check_path(_returns(by_id[ref.source], tools), ref.path)
            if problem:
                problems.append(PlanProblem(None, f"output {ref}: {problem}"))
    cycle = find_cycle(plan, graph)
    if cycle:
        problems.append(PlanProblem(cycle[0], "dependency cycle: " + " -> ".join(cycle)))
    return problems


def check(plan: Plan, registry: ToolRegistry) -> Plan:
    """``plan`` itself, or :class:`PlanValidationError` with every problem."""
    problems = validate(plan, registry)
    if problems:
        raise PlanValidationError(problems)
    return plan


def find_cycle(plan: Plan, graph: Mapping[str, list[str]] | None = None) -> list[str] | None:
    """One dependency cycle as ``[a, b, ..., a]``, or None (self-loops are reported apart).

    ``graph`` maps each step to its dependencies when the caller has them.
    Iterative, so a chain of any length fits in Python's stack.
    """
    if graph is None:
        graph = {step.id: step.dependencies() for step in plan.steps}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in graph:
        if root in state:
            continue
        path: list[str] = [root]
        pending = [iter(graph[root])]
        state[root] = 1
        while pending:
            dep = next(pending[-1], None)
            if dep is None:
                state[path.pop()] = 2
                pending.pop()
                continue
            if dep not in graph or dep == path[-1]:
                continue
            if state.get(dep) == 1:
                cycle = [*path[path.index(dep) :], dep]
                cycle.reverse()
                return cycle
            if dep not in state:
                state[dep] = 1
                path.append(dep)
                pending.append(iter(graph[dep]))
    return None


def _check_tool(
    step_id: str,
    name: str,
    registry: ToolRegistry,
    problems: list[PlanProblem],
    role: str,
    stand_ins: Sequence[str] = (),
    status: bool = True,
) -> Tool | None:
    """The tool, or None with the problem noted.

    A quarantined tool is no problem when a fallback or alternative can stand
    in: the engine skips it and the stand-in answers, which is what quarantine
    is for. A disabled tool is a problem where it must answer: a person turned
    it off. ``status=False``: only whether the tool exists matters (a fallback
    the engine skips when it is off).
    """
    try:
        found = registry.get(name)
    except UnknownToolError as error:
        problems.append(PlanProblem(step_id, f"{role}: {error}"))
        return None
    if not status:
        return found
    if found.state.status is ToolStatus.QUARANTINED and any(
        (other := registry.find(n)) is not None and other.available
        for n in (*stand_ins, *found.alternatives)
    ):
        return found
    if found.state.status is not ToolStatus.ENABLED:
        because = f" ({found.state.reason})" if found.state.reason else ""
        problems.append(
            PlanProblem(step_id, f"{role} {name!r} is {found.state.status.value}{because}")
        )
    return found


def _check_reference(
    step: Step,
    ref: references.Reference,
    by_id: Mapping[str, Step],
    tools: Mapping[str, Tool | None],
) -> Iterable[PlanProblem]:
    if ref.source == references.ITEM:
        if step.for_each is None:
            yield PlanProblem(step.id, f"{ref} is only defined in a for_each step")
        return
    if ref.source == references.CONTEXT:
        return
    if ref.source not in by_id:
        yield PlanProblem(step.id, f"{ref} refers to unknown step {ref.source!r}")
        return
    if not ref.path:
        return
    private = [part for part in ref.path if part.startswith("__")]
    if private:  # no output's field: Python's own attributes (the way to its globals)
        yield PlanProblem(step.id, f"{ref}: {private[0]!r} is not a field an output can have")
        return
    problem = _check_path(_returns(by_id[ref.source], tools), ref.path)
    if problem:
        yield PlanProblem(step.id, f"{ref}: {problem}")


def _returns(source: Step, tools: Mapping[str, Tool | None]) -> dict[str, Any] | None:
    """What ``source`` returns, as far as is declared: a for_each step, a list of what its
    tool returns."""
    found = tools.get(source.id)
    returns = found.returns_schema if found else None
    if source.for_each is None:
        return returns
    if not returns:
        return {"type": "array"}
    items = {key: value for key, value in returns.items() if key != "$defs"}
    return {"type": "array", "items": items, "$defs": returns.get("$defs", {})}


def _check_path(schema: dict[str, Any] | None, path: tuple[str, ...]) -> str | None:
    """Check a path against a declared return type, part by part, as far as the type
    tells (``${s.0.nope}`` as much as ``${s.nope}``)."""
    if not schema:
        return None
    return _schema_at(schema, path, schema.get("$defs", {}))[1]


def _schema_at(
    schema: Mapping[str, Any], path: tuple[str, ...], defs: Mapping[str, Any]
) -> tuple[Mapping[str, Any] | None, str | None]:
    """What a declared type says is at ``path``: its schema (None where the type does not
    tell), or why nothing can be there.

    ``X | None`` is followed as ``X``: a path into None fails as one into an ``X`` without
    the field does.
    """
    current = schema
    for depth, part in enumerate(path):
        current = declared_schema(current, defs) or {}  # a $ref to nothing: untyped
        kind = current.get("type")
        where = "the output" if depth == 0 else f"the output's {'.'.join(path[:depth])}"
        if kind == "array":
            try:
                index = int(part)
            except ValueError:
                return None, f"{where} is a list; {part!r} is not an index"
            prefix = current.get("prefixItems") or ()
            if -len(prefix) <= index < len(prefix):
                current = prefix[index]
            else:
                current = current.get("items") or {}
        elif kind == "object" and "properties" in current:
            properties = current["properties"]
            if part in properties:
                current = properties[part]
                continue
            extra = current.get("additionalProperties")
            if not extra:
                fields = ", ".join(properties) or "none"
                return None, f"{where} has no field {part!r} (fields: {fields})"
            if not isinstance(extra, Mapping):
                return None, None
            current = extra
        elif kind == "object" and isinstance(current.get("additionalProperties"), Mapping):
            current = current["additionalProperties"]  # a dict's values
        elif kind in ("string", "integer", "number", "boolean", "null"):
            return None, f"{where} is of type {kind}; it has no field {part!r}"
        else:  # untyped, or one of several types: nothing more to tell
            return None, None
    return current, None


# The kinds of JSON value a schema can describe, and for a parameter of each kind, the
# kinds of value whose Python values pydantic (lax) takes for some value: numbers and
# booleans are converted into one another and parsed from text; text is only text;
# ``Sequence[str]`` takes a string and ``Iterable`` a mapping, and both say "array".
_KINDS = frozenset({"null", "boolean", "integer", "number", "string", "array", "object"})
_SCALAR = frozenset({"boolean", "integer", "number", "string"})
_TAKES: Mapping[str, frozenset[str]] = {
    "null": frozenset({"null"}),
    "boolean": _SCALAR,
    "integer": _SCALAR,
    "number": _SCALAR,
    "string": frozenset({"string"}),
    "array": frozenset({"array", "string", "object"}),
    "object": frozenset({"object"}),
}
_KIND_OF = {type(None): "null", bool: "boolean", int: "integer", float: "number", str: "string"}
# Values of each kind tried on a parameter before a reference is refused: a validator of
# the parameter's own (``BeforeValidator(len)`` on an ``int``) may take what its type
# alone says it cannot, and a schema cannot tell.
_SAMPLES: Mapping[str, tuple[Any, ...]] = {
    "null": (None,),
    "boolean": (False, True),
    "integer": (0, 1),
    "number": (0.0, 0.5),
    "string": ("", "0", "a"),
    "array": ([], [0], ["a"]),
    "object": ({},),
}


def _kinds(
    schema: Mapping[str, Any], defs: Mapping[str, Any], *, parameter: bool, hops: int = 0
) -> frozenset[str] | None:
    """The kinds of value ``schema`` describes, or None where it does not tell (untyped,
    or, for a ``parameter``, text of a format: a date takes a number, an IP address an
    integer, a colour a tuple)."""
    if hops > MAX_HOPS:
        return None
    schema = resolve_ref(schema, defs)
    options = [*schema.get("anyOf", ()), *schema.get("oneOf", ())]
    if len(schema.get("allOf", ())) == 1:
        options.append(schema["allOf"][0])
    if options:
        found: set[str] = set()
        for option in options:
            kinds = _kinds(option, defs, parameter=parameter, hops=hops + 1)
            if kinds is None:
                return None
            found |= kinds
        return frozenset(found)
    kind = schema.get("type")
    if parameter and kind == "string" and "format" in schema:
        return None
    if isinstance(kind, str):
        kinds = {kind}
    elif isinstance(kind, list):
        kinds = set(kind)
    elif "enum" in schema or "const" in schema:
        values = schema["enum"] if "enum" in schema else [schema["const"]]
        kinds = {_KIND_OF.get(type(value), "") for value in values}
    else:
        return None
    if not parameter and "enum" in schema:
        kinds.add("string")  # an Enum's member, which pydantic takes as text (IntEnum.ONE: "1")
    return frozenset(kinds) if kinds <= _KINDS else None


def _type_name(schema: Mapping[str, Any], depth: int = 0) -> str:
    """A declared type as a person reads it: ``integer``, ``array of string``, ``Hits``."""
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return ref.rsplit("/", 1)[-1]
    options = [*schema.get("anyOf", ()), *schema.get("oneOf", ())]
    if options and depth < MAX_HOPS:
        return " or ".join(_type_name(option, depth + 1) for option in options)
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(value) for value in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        items = schema.get("items")
        if items and depth < MAX_HOPS:
            return f"array of {_type_name(items, depth + 1)}"
        return "array"
    if kind == "object" and "title" in schema:
        return str(schema["title"])
    if isinstance(kind, list):
        return " or ".join(str(k) for k in kind)
    return str(kind) if kind else "any value"


def _check_reference_types(
    step: Step,
    found: Tool,
    by_id: Mapping[str, Step],
    tools: Mapping[str, Tool | None],
) -> list[PlanProblem]:
    """Each parameter whose whole value is a reference to a value of a declared type that
    the parameter can never take.

    Only a certain failure is refused: the resolved value is validated (and converted,
    as pydantic does) before every call, so a type that some of its values pass (text
    for an ``int``, ``X | None`` for an ``X``) is left to that check, which names the
    reference when it fails.
    """
    properties = found.parameters_schema.get("properties", {})
    parameter_defs = found.parameters_schema.get("$defs", {})
    problems: list[PlanProblem] = []
    for name, value in step.params.items():
        ref = references.whole(value) if isinstance(value, str) else None
        if ref is None or name not in properties:
            continue
        source = _source_type(step, ref, by_id, tools)
        if source is None:
            continue
        schema, defs, origin = source
        given = _kinds(schema, defs, parameter=False)
        taken = _kinds(properties[name], parameter_defs, parameter=True)
        if given is None or taken is None:
            continue
        if any(given & _TAKES[kind] for kind in taken):
            continue
        if _takes_a_sample(found, name, given):
            continue
        problems.append(
            PlanProblem(
                step.id,
                f"parameter {name!r} of tool {found.name!r} takes "
                f"{_type_name(properties[name])}, but {ref} is "
                f"{_type_name(schema)} ({origin}); the call would fail every run",
            )
        )
    return problems


def _check_items(
    step: Step,
    items: references.Reference,
    by_id: Mapping[str, Step],
    tools: Mapping[str, Tool | None],
) -> list[PlanProblem]:
    """A for_each over a value its declared type says is never a list: it fails every run
    ("gave int, not a list"), after the steps before it have run."""
    source = _source_type(step, items, by_id, tools)
    if source is None:
        return []
    schema, defs, origin = source
    kinds = _kinds(schema, defs, parameter=False)
    if kinds is None or "array" in kinds:
        return []
    return [
        PlanProblem(
            step.id,
            f"for_each {items} is {_type_name(schema)} ({origin}), never a list of "
            "items to run the step for",
        )
    ]


def _source_type(
    step: Step,
    ref: references.Reference,
    by_id: Mapping[str, Step],
    tools: Mapping[str, Tool | None],
) -> tuple[Mapping[str, Any], Mapping[str, Any], str] | None:
    """The declared type of what ``ref`` reads (schema, its definitions, where the type is
    declared), or None where nothing declares it."""
    path = ref.path
    if ref.source == references.ITEM:
        items = references.whole(step.for_each) if step.for_each is not None else None
        if items is None or items.source not in by_id:
            return None
        source = by_id[items.source]
        root = _returns(source, tools)
        if not root:
            return None
        defs = root.get("$defs", {})
        listed, _ = _schema_at(root, items.path, defs)
        if listed is None:
            return None
        listed = declared_schema(listed, defs) or {}
        if listed.get("type") != "array" or not listed.get("items"):
            return None
        schema, _ = _schema_at(listed["items"], path, defs)
        origin = f"an item of {items}"
    elif ref.source in by_id:
        source = by_id[ref.source]
        root = _returns(source, tools)
        if not root:
            return None
        defs = root.get("$defs", {})
        schema, _ = _schema_at(root, path, defs)
        origin = ""
    else:  # the run's context: known only when the run starts
        return None
    if schema is None:
        return None
    found = tools.get(source.id)
    tool = repr(found.name) if found is not None and found.returns_schema else None
    if source.for_each is None:
        declared = f"as tool {tool} declares it"
    elif tool is None:
        declared = f"step {source.id!r} runs for_each, so its output is a list"
    else:
        declared = f"step {source.id!r} runs for_each: a list of what tool {tool} returns"
    return schema, defs, f"{origin}, {declared}" if origin else declared


def _takes_a_sample(found: Tool, name: str, kinds: frozenset[str]) -> bool:
    """Whether parameter ``name`` of ``found`` takes any sample value of these kinds, or
    cannot tell (its own validator raised)."""
    others = set(found.parameter_names) - {name}
    for kind in kinds:
        for sample in _SAMPLES[kind]:
            try:
                if not found.check_arguments({name: sample}, others):
                    return True
            except Exception:  # a validator of the tool's own that raises on a sample
                return True
    return False


def _check_literals(step: Step, found: Tool) -> list[PlanProblem]:
    return [
        PlanProblem(step.id, f"tool {found.name!r}: {problem}")
        for problem in literal_problems(found, step.params)
    ]


def literal_problems(tool: Tool, params: Mapping[str, Any]) -> list[str]:
    """What ``tool`` finds wrong with the arguments known now.

    The value of an argument that holds references is checked when they resolve, but
    its name is known now: a parameter the tool does not take fails every run, whatever
    value ``${n}`` turns out to have.
    """
    deferred = {k for k, v in params.items() if references.has_references(v)}
    literal = {k: v for k, v in params.items() if k not in deferred}
    accepted = tool.parameter_names
    unexpected = [
        f"unexpected parameter {name!r} (accepted: {', '.join(accepted) or 'none'})"
        for name in params
        if name in deferred and name not in accepted
    ]
    return tool.check_arguments(literal, deferred) + unexpected
