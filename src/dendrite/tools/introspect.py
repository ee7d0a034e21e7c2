"""From a Python function to a JSON Schema and an argument validator.

Tools are plain functions; their signature, type hints and docstring are the
single source of truth for what a planner may pass them. Pydantic does the
type work (Optional, Literal, Enum, models, defaults), so the schema a planner
or an LLM sees and the validation a call goes through cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import reprlib
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from dendrite.tools.errors import ToolRegistrationError

_ARG_HEADERS = {"args", "arguments", "parameters", "params"}
_SECTION_HEADERS = _ARG_HEADERS | {
    "returns",
    "return",
    "raises",
    "yields",
    "examples",
    "example",
    "notes",
    "note",
    "see also",
}
_GOOGLE_ARG = re.compile(r"^\s*(\*{0,2}\w+)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_REST_PARAM = re.compile(r"^\s*:param\s+(?:[\w\[\], |.]+\s+)?(\w+)\s*:\s*(.*)$")


@dataclass(frozen=True, slots=True)
class ParsedDocstring:
    summary: str
    params: dict[str, str]


def parse_docstring(doc: str | None) -> ParsedDocstring:
    """Split a Google- or reST-style docstring into its summary and per-parameter text."""
    if not doc:
        return ParsedDocstring("", {})
    lines = inspect.cleandoc(doc).splitlines()
    summary: list[str] = []
    params: dict[str, str] = {}
    section: str | None = None
    current: str | None = None
    for line in lines:
        stripped = line.strip()
        header = stripped.rstrip(":").lower()
        if stripped.endswith(":") and header in _SECTION_HEADERS:
            section, current = header, None
            continue
        rest = _REST_PARAM.match(line)
        if rest:
            current = rest.group(1)
            params[current] = rest.group(2).strip()
            section = "rest"
            continue
        if section in _ARG_HEADERS:
            google = _GOOGLE_ARG.match(line)
            indent = len(line) - len(line.lstrip())
            if google and indent <= 4:
                current = google.group(1).lstrip("*")
                params[current] = google.group(3).strip()
            elif current and stripped:
                params[current] = f"{params[current]} {stripped}".strip()
            continue
        if section == "rest" and current and stripped and not stripped.startswith(":"):
            params[current] = f"{params[current]} {stripped}".strip()
            continue
        if section is None:
            if not stripped and summary:
                section = "body"
            elif stripped:
                summary.append(stripped)
    return ParsedDocstring(" ".join(summary), params)


@dataclass(frozen=True, slots=True)
class Signature:
    """What the registry keeps of a function's signature."""

    model: type[BaseModel] | None
    fields: tuple[tuple[str, str], ...]  # (model field name, parameter name)
    parameters_schema: dict[str, Any]
    returns_schema: dict[str, Any] | None
    return_type: Any
    context_param: str | None
    summary: str
    plain: dict[str, tuple[type, Any]] | None = None
    """Per parameter (type, default or ``REQUIRED``) when every parameter is a bare ``int``,
    ``str``, ``float`` or ``bool`` with no default or one of its type: see :func:`plain_arguments`.
    """


REQUIRED: Any = object()
_PLAIN_TYPES = (int, str, float, bool)


def plain_arguments(
    signature: Signature, params: dict[str, Any], deferred: Collection[str] = ()
) -> dict[str, Any] | None:
    """The validated arguments, without pydantic, when it could only agree; else ``None``.

    That is when every parameter is of a plain type (``Signature.plain``), no
    parameter is unknown and every value is of exactly its parameter's type:
    pydantic would return each value as it is and fill in the defaults, which
    is what this does. Anything else (a value it would coerce or refuse) goes
    to pydantic. A name in ``deferred`` may be missing. Every tool call and
    every step of a plan's validation is checked, and this costs a third of
    building the model.
    """
    plain = signature.plain
    if plain is None:
        return None
    out: dict[str, Any] = {}
    given = 0
    for name, (kind, default) in plain.items():
        value = params.get(name, REQUIRED)
        if value is REQUIRED:
            if default is REQUIRED:
                if name in deferred:
                    continue
                return None
            out[name] = default
        elif type(value) is kind:
            out[name] = value
            given += 1
        else:
            return None
    return out if given == len(params) else None


def introspect(
    func: Callable[..., Any], tool_name: str, context_type: type, description: str | None
) -> Signature:
    """Build the argument model and schemas of ``func``; refuse what cannot be called by name."""
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError) as error:
        raise ToolRegistrationError(
            f"tool {tool_name!r}: no inspectable signature ({error})"
        ) from None
    callee = _callee(func, tool_name)
    doc = callee.doc
    definitions: dict[str, Any] = {}
    fields: list[tuple[str, str]] = []
    plain: dict[str, tuple[type, Any]] | None = {}
    context_param: str | None = None
    parameters = [p for p in sig.parameters.values() if p.name not in callee.bound]
    for index, param in enumerate(parameters):
        name = param.name
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolRegistrationError(
                f"tool {tool_name!r}: parameter {param}: *args and **kwargs cannot be described "
                "by a schema; declare each parameter"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolRegistrationError(
                f"tool {tool_name!r}: parameter {name!r} is positional-only; tools are called "
                "by keyword"
            )
        annotation, default = callee.fields.get(name) or (
            callee.hints.get(name, Any),
            ... if param.default is param.empty else param.default,
        )
        if _mentions(annotation, context_type):
            context_param = name
            continue
        field_name = f"p{index}"
        definitions[field_name] = _field(annotation, default, name, doc.params.get(name))
        fields.append((field_name, name))
        if (
            plain is not None
            and annotation in _PLAIN_TYPES
            and (default is ... or type(default) is annotation)
        ):
            plain[name] = (annotation, REQUIRED if default is ... else default)
        else:
            plain = None
    model: type[BaseModel] | None = None
    schema: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
    if definitions:
        try:
            model = create_model(
                f"{tool_name}_arguments",
                __config__=ConfigDict(
                    extra="forbid", arbitrary_types_allowed=True, populate_by_name=False
                ),
                **definitions,
            )
            schema = model.model_json_schema(by_alias=True)
        except Exception as error:
            raise ToolRegistrationError(
                f"tool {tool_name!r}: its parameter types cannot be described ({error})"
            ) from error
        schema.pop("title", None)
        schema["additionalProperties"] = False
        for prop in schema.get("properties", {}).values():
            prop.pop("title", None)
    return_type = callee.return_type
    returns_schema: dict[str, Any] | None = None
    if return_type not in (Any, None, type(None)):
        try:
            # By field name: a reference reads an output's attributes, and a stored
            # output is dumped by name; an alias names neither.
            returns_schema = TypeAdapter(return_type).json_schema(by_alias=False)
        except Exception:
            returns_schema = None
    return Signature(
        model=model,
        fields=tuple(fields),
        parameters_schema=schema,
        returns_schema=returns_schema,
        return_type=return_type,
        context_param=context_param,
        summary=description if description is not None else doc.summary,
        plain=plain,
    )


@dataclass(frozen=True, slots=True)
class _Callee:
    """What describes a call's parameters, taken from what the call runs."""

    hints: dict[str, Any]
    doc: ParsedDocstring
    bound: frozenset[str]
    """Names a ``functools.partial`` binds by keyword: ``inspect.signature`` keeps them
    (keywords with that default), but the values are the partial's to give."""
    fields: dict[str, tuple[Any, Any]]
    """Per parameter that is a field of a dataclass or pydantic model: its type and its
    default as the field declares them, which the constructor's signature does not keep."""
    return_type: Any


def _callee(func: Callable[..., Any], tool_name: str) -> _Callee:
    """The hints, docstring and bound names of what calling ``func`` runs.

    ``typing.get_type_hints`` reads the annotations of the object it is given: of a
    class, or of a callable object (through its class), those are attributes, not
    parameters, and a ``functools.partial`` has none. The hints of a call are those of
    the partial's function, of ``__call__``, or of the constructor a class call runs.
    """
    bound: set[str] = set()
    while isinstance(func, functools.partial):
        bound.update(func.keywords)
        func = func.func
    if isinstance(func, type):
        return _constructed(func, tool_name, frozenset(bound))
    if inspect.isroutine(func):
        hints = _hints(func, tool_name)
        doc = parse_docstring(inspect.getdoc(func))
        return _Callee(hints, doc, frozenset(bound), {}, hints.get("return", Any))
    call = func.__call__
    hints = _hints(call, tool_name)
    # The class says what the object is (its Args are its constructor's); __call__
    # documents the parameters.
    called = parse_docstring(inspect.getdoc(call))
    summary = parse_docstring(inspect.getdoc(func)).summary or called.summary
    doc = ParsedDocstring(summary, called.params)
    return _Callee(hints, doc, frozenset(bound), {}, hints.get("return", Any))


def _constructed(cls: type, tool_name: str, bound: frozenset[str]) -> _Callee:
    """A class as a tool: a call constructs an instance, so its parameters are its
    constructor's and it returns the instance.

    A dataclass's or pydantic model's constructor takes its fields; the signature
    keeps neither a ``default_factory`` nor pydantic's constraints and descriptions,
    so those come from the fields. The description is the class's own docstring (one
    inherited from ``BaseModel`` is pydantic's manual), else its constructor's own
    when written with it; Args may be in either.
    """
    shown = inspect.signature(cls).parameters
    own = parse_docstring(cls.__dict__.get("__doc__"))
    found = _constructor(cls)
    if found is None:  # object's constructor: no parameters
        return _Callee({}, own, bound, {}, cls)
    constructor, owner = found
    named = {
        p.name
        for p in inspect.signature(constructor).parameters.values()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name in shown
    }
    # Only what the constructor names needs its hints: pydantic's own constructors
    # (fields passed as **data) annotate with names only a type checker imports.
    hints = _constructor_hints(constructor, owner, tool_name) if named else {}
    written = parse_docstring(
        constructor.__doc__ if constructor.__module__ == cls.__module__ else None
    )
    doc = ParsedDocstring(own.summary or written.summary, {**written.params, **own.params})
    fields = {
        **_dataclass_fields(cls, shown, hints),
        **_model_fields(cls, [name for name in shown if name not in named], tool_name),
    }
    return _Callee(hints, doc, bound, fields, cls)


def _constructor(cls: type) -> tuple[Callable[..., Any], type] | None:
    """The Python function a call of ``cls`` passes its arguments to, and the class that
    defines it: where ``inspect.signature`` takes a class's parameters from (a
    metaclass's ``__call__``, else the first ``__new__`` or ``__init__`` along the MRO)."""
    for meta in type(cls).__mro__:
        if "__call__" in meta.__dict__:
            call = meta.__dict__["__call__"]
            if inspect.isfunction(call):
                return call, meta
            break
    for owner in cls.__mro__:
        for name in ("__new__", "__init__"):
            method = owner.__dict__.get(name)
            if isinstance(method, staticmethod):
                method = method.__func__
            if inspect.isfunction(method):
                return method, owner
    return None


def _constructor_hints(
    constructor: Callable[..., Any], owner: type, tool_name: str
) -> dict[str, Any]:
    """The constructor's parameter hints, resolved where its class was written.

    A method's annotations are evaluated in its class's module and body; a generated
    constructor (a ``NamedTuple``'s ``__new__``) has globals of its own, without even
    the builtins its string annotations name. An ``InitVar`` is the type it declares.
    """
    module = sys.modules.get(owner.__module__)
    hints = _hints(
        constructor,
        tool_name,
        globalns=vars(module) if module is not None else None,
        localns={**vars(owner), owner.__name__: owner},
    )
    hints.pop("return", None)
    return {
        name: hint.type if isinstance(hint, dataclasses.InitVar) else hint
        for name, hint in hints.items()
    }


def _dataclass_fields(
    cls: type, shown: Mapping[str, inspect.Parameter], hints: dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """The fields with a ``default_factory`` of a dataclass whose ``__init__`` the
    ``dataclasses`` module wrote: that ``__init__`` shows a marker (``<factory>``) as their
    default, which would be published as the default and passed on in place of a value."""
    if not dataclasses.is_dataclass(cls):
        return {}
    return {
        field.name: (hints.get(field.name, Any), Field(default_factory=field.default_factory))
        for field in dataclasses.fields(cls)
        if field.name in shown and field.default_factory is not dataclasses.MISSING
    }


def _model_fields(cls: type, keywords: Sequence[str], tool_name: str) -> dict[str, tuple[Any, Any]]:
    """Per keyword of a pydantic model's or dataclass's signature, the field it sets.

    pydantic's signature shows a field by its alias where that is a Python name, else
    by its own name, which the constructor ignores or refuses when the field has an
    alias and the model does not validate by name: such a parameter could never be
    given, so it is refused here.
    """
    declared = getattr(cls, "__pydantic_fields__", None)
    if not isinstance(declared, dict):
        return {}
    config = getattr(cls, "model_config", None) or getattr(cls, "__pydantic_config__", None) or {}
    by_name = bool(config.get("validate_by_name") or config.get("populate_by_name"))
    accepted: dict[str, Any] = {}
    for name, info in declared.items():
        for alias in _alias_names(info.validation_alias):
            accepted.setdefault(alias, info)
        if by_name or info.validation_alias is None:
            accepted.setdefault(name, info)
    fields: dict[str, tuple[Any, Any]] = {}
    for keyword in keywords:
        info = accepted.get(keyword)
        if info is not None:
            fields[keyword] = (info.annotation, info)
        elif keyword in declared:
            raise ToolRegistrationError(
                f"tool {tool_name!r}: parameter {keyword!r} of {cls.__qualname__} is a field "
                f"its constructor only takes by its alias "
                f"{declared[keyword].validation_alias!r}, not by name; give the field an "
                "alias= that is a Python name, or set validate_by_name=True"
            )
    return fields


def _alias_names(alias: Any) -> list[str]:
    """The keywords a ``validation_alias`` accepts (an ``AliasPath`` is none)."""
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [choice for choice in alias.choices if isinstance(choice, str)]
    return []


def _hints(
    target: Callable[..., Any],
    tool_name: str,
    globalns: dict[str, Any] | None = None,
    localns: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``target``'s resolved hints; one that cannot be resolved could not be validated,
    so the tool is refused, by name."""
    try:
        return typing.get_type_hints(
            target, globalns=globalns, localns=localns, include_extras=True
        )
    except Exception as error:
        raise ToolRegistrationError(
            f"tool {tool_name!r}: type hints cannot be resolved ({error})"
        ) from error


def _field(annotation: Any, default: Any, name: str, described: str | None) -> tuple[Any, Any]:
    """The pydantic field of parameter ``name``: its type with the field settings
    attached, and its default (``PydanticUndefined`` where ``Annotated`` may give one).

    The docstring's description goes first among the ``Annotated`` metadata, so that
    the parameter's own ``Field(...)`` (in ``Annotated``, or as its default, which
    joins them) wins where it says something too; the alias goes last, so that the
    parameter keeps its own name whatever alias a ``Field`` gives (callers and plans
    use the name). A ``None`` default makes the type Optional, as the schema's
    ``"default": null`` tells a planner it may send ``null``.
    """
    base, *metadata = (
        typing.get_args(annotation) if typing.get_origin(annotation) is Annotated else (annotation,)
    )
    if isinstance(default, FieldInfo):
        metadata, default = [*metadata, default], PydanticUndefined
    elif default is ...:
        default = PydanticUndefined  # required, unless a Field in Annotated has a default
    given = [m.default for m in metadata if isinstance(m, FieldInfo)]
    if None in (default, *given) and not _admits_none(base):
        base = base | None
    described_first = [] if described is None else [Field(description=described)]
    return Annotated[(base, *described_first, *metadata, Field(alias=name))], default


def _admits_none(annotation: Any) -> bool:
    """Whether ``annotation`` takes ``None`` as it is: ``Any``, ``X | None``, ``Literal[None]``."""
    if annotation in (Any, object, None, type(None)):
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _admits_none(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_none(arg) for arg in typing.get_args(annotation))
    return origin is Literal and None in typing.get_args(annotation)


def _mentions(annotation: Any, wanted: type) -> bool:
    """``annotation`` is ``wanted``, an Optional/Union of it (``ctx: ToolContext | None``) or
    either in ``Annotated`` (``Annotated[ToolContext, ...]``): pydantic cannot build a
    validator for a context, so a missed one fails registration."""
    if annotation is wanted:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _mentions(typing.get_args(annotation)[0], wanted)
    if origin in (typing.Union, types.UnionType):
        return any(_mentions(arg, wanted) for arg in typing.get_args(annotation))
    return False


def _type_name(schema: dict[str, Any] | None) -> str:
    if not schema:
        return "a value"
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type")
    return str(kind) if kind else "a value"


def _path(loc: Sequence[Any]) -> str:
    """pydantic's location as Python writes it: ``values[1]``, ``window.start``."""
    return (str(loc[0]) if loc else "?") + _steps(loc[1:])


def _steps(parts: Sequence[Any]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


class _Brief(reprlib.Repr):
    """``repr`` that shortens an integer longer than Python will write as text
    (``sys.get_int_max_str_digits()``): its ``repr`` raises ``ValueError``, which
    would turn a report of a wrong argument into a crash."""

    def repr_int(self, x: int, level: int) -> str:
        try:
            return repr(x)
        except ValueError:
            digits = int(math.log10(abs(x))) + 1  # the float may be one off at a power of 10
            if abs(x) >= 10**digits:
                digits += 1
            elif abs(x) < 10 ** (digits - 1):
                digits -= 1
            return f"{'a negative' if x < 0 else 'an'} integer of {digits:,} digits"


_BRIEF = _Brief()


def _shown(value: Any) -> str:
    try:
        text = repr(value)
    except ValueError:  # a huge integer, maybe inside a container
        text = _BRIEF.repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def argument_problems(
    signature: Signature, params: dict[str, Any], deferred: Collection[str] = ()
) -> list[str]:
    """One line per wrong parameter (what was expected, what came); [] when all is well.

    Parameters named in ``deferred`` are not judged, missing or not: their
    values are references that only exist once earlier steps have run.
    """
    if signature.model is None:
        return [f"unexpected parameter {k!r} (accepted: none)" for k in params]
    if plain_arguments(signature, params, deferred) is not None:
        return []
    try:
        signature.model.model_validate(params)
    except ValidationError as error:
        errors = error.errors(include_url=False)
    else:
        return []
    props = signature.parameters_schema.get("properties", {})
    defs = signature.parameters_schema.get("$defs", {})
    accepted = ", ".join(name for _, name in signature.fields) or "none"
    problems: list[str] = []
    # A union, wherever it is (x, xs[1]): its schema, its value, what each branch said.
    unions: dict[str, tuple[dict[str, Any], Any, list[str]]] = {}
    for item in errors:
        loc = item.get("loc", ())
        param = str(loc[0]) if loc else "?"
        if param in deferred:
            continue
        path = _path(loc)
        kind = item.get("type", "")
        union = _union_at(props.get(param), loc, defs)
        if union is not None:
            # pydantic reports each branch of a union apart, under its name as if it were a
            # field ('x.int', 'xs[1].str'): one line for the union says what each wanted.
            depth, schema = union
            within = _steps(loc[depth + 1 :]).lstrip(".")
            said = f"as {loc[depth]}" + (f" at {within!r}" if within else "")
            value = _value_at(params, loc[:depth], item.get("input"))
            unions.setdefault(_path(loc[:depth]), (schema, value, []))[2].append(
                f"{said}: {item.get('msg', '')}"
            )
            continue
        if kind == "missing":
            expected = "" if len(loc) > 1 else f" (expected {_type_name(props.get(param))})"
            problems.append(f"missing required parameter {path!r}{expected}")
        elif len(loc) > 1:  # inside the parameter: what is wrong there, not the whole's type
            problems.append(
                f"parameter {path!r}: got {_shown(item.get('input'))}: {item.get('msg', '')}"
            )
        elif kind == "extra_forbidden" and len(loc) == 1:
            problems.append(f"unexpected parameter {param!r} (accepted: {accepted})")
        else:
            problems.append(
                f"parameter {path!r}: expected {_type_name(props.get(param))}, "
                f"got {_shown(item.get('input'))}: {item.get('msg', '')}"
            )
    for path, (schema, value, said) in unions.items():
        problems.append(
            f"parameter {path!r}: expected {_type_name(schema)}, "
            f"got {_shown(value)}: {'; '.join(said)}"
        )
    return problems


def _union_at(
    schema: dict[str, Any] | None, loc: Sequence[Any], defs: dict[str, Any]
) -> tuple[int, dict[str, Any]] | None:
    """Where in ``loc`` pydantic named a branch of a union, and that union's schema.

    The parameter's JSON schema is followed along ``loc``: a name met where the
    schema is a union of two or more types (``x | None`` is one) is a branch's.
    """
    for depth in range(1, len(loc)):
        schema = declared_schema(schema, defs)
        part = loc[depth]
        if schema is None or part == "[key]":  # a dict's key: its own type, not the value's
            return None
        if isinstance(part, str) and len(_options(schema)) > 1:
            return depth, schema
        if isinstance(part, int) and ("items" in schema or "prefixItems" in schema):
            prefix = schema.get("prefixItems", ())
            schema = prefix[part] if part < len(prefix) else schema.get("items")
        else:  # a field, else a dict's value
            schema = schema.get("properties", {}).get(str(part), schema.get("additionalProperties"))
        if not isinstance(schema, dict):  # absent, or true/false ("anything", "nothing")
            return None
    return None


def _options(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The types of a union schema other than null."""
    return [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]


def declared_schema(schema: Any, defs: Mapping[str, Any]) -> Any:
    """``schema`` with references followed and ``X | None`` taken as ``X``: what its
    value's items or fields are described by; None where a reference names no definition.

    Argument problems and plan validation both walk a declared type by it. At most
    ``MAX_HOPS`` references are followed: a definition that refers to itself is taken as
    it is, not followed for ever."""
    for _ in range(MAX_HOPS):
        if schema is None:
            break
        if "$ref" in schema:
            schema = defs.get(schema["$ref"].rsplit("/", 1)[-1])
        elif len(options := _options(schema)) == 1:
            schema = options[0]
        elif len(schema.get("allOf", ())) == 1:
            schema = schema["allOf"][0]
        else:
            break
    return schema


MAX_HOPS = 32
"""References followed through a schema before it is taken as it is (a loop of $refs)."""


def _value_at(params: dict[str, Any], loc: Sequence[Any], otherwise: Any) -> Any:
    """The argument at ``loc`` (``xs[1]`` of ``{"xs": [1, [2]]}``), or ``otherwise`` where it
    cannot be followed (a set, an object)."""
    value: Any = params
    for part in loc:
        try:
            value = value[part]
        except (LookupError, TypeError):
            return otherwise
    return value
