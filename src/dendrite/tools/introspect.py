"""From a Python function to a JSON Schema and an argument validator.

Tools are plain functions; their signature, type hints and docstring are the
single source of truth for what a planner may pass them. Pydantic does the
type work (Optional, Literal, Enum, models, defaults), so the schema a planner
or an LLM sees and the validation a call goes through cannot drift apart.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model

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
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception as error:
        raise ToolRegistrationError(
            f"tool {tool_name!r}: type hints cannot be resolved ({error})"
        ) from error
    doc = parse_docstring(inspect.getdoc(func))
    definitions: dict[str, Any] = {}
    fields: list[tuple[str, str]] = []
    plain: dict[str, tuple[type, Any]] | None = {}
    context_param: str | None = None
    for index, (name, param) in enumerate(sig.parameters.items()):
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
        annotation = hints.get(name, Any)
        if _mentions(annotation, context_type):
            context_param = name
            continue
        default = ... if param.default is param.empty else param.default
        field_name = f"p{index}"
        definitions[field_name] = (
            annotation,
            Field(default, alias=name, description=doc.params.get(name) or None),
        )
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
    return_type = hints.get("return", Any)
    returns_schema: dict[str, Any] | None = None
    if return_type not in (Any, None, type(None)):
        try:
            returns_schema = TypeAdapter(return_type).json_schema()
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


def _mentions(annotation: Any, wanted: type) -> bool:
    """``annotation`` is ``wanted`` or an Optional/Union of it (``ctx: ToolContext | None``)."""
    if annotation is wanted:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return wanted in typing.get_args(annotation)
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
    path = str(loc[0]) if loc else "?"
    for part in loc[1:]:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _shown(value: Any) -> str:
    text = repr(value)
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
    accepted = ", ".join(name for _, name in signature.fields) or "none"
    problems: list[str] = []
    branches: dict[str, list[str]] = {}  # a union parameter: what each branch said
    for item in errors:
        loc = item.get("loc", ())
        param = str(loc[0]) if loc else "?"
        if param in deferred:
            continue
        path = _path(loc)
        kind = item.get("type", "")
        schema = props.get(param) or {}
        if _union_branch(schema, loc):
            # pydantic reports each branch of a union apart, under its name ('x.int',
            # 'x.str'): one line for the parameter says what each wanted.
            branches.setdefault(param, []).append(f"as {loc[1]}: {item.get('msg', '')}")
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
    for param, said in branches.items():
        problems.append(
            f"parameter {param!r}: expected {_type_name(props.get(param))}, "
            f"got {_shown(params.get(param))}: {'; '.join(said)}"
        )
    return problems


def _union_branch(schema: dict[str, Any], loc: Sequence[Any]) -> bool:
    """Whether pydantic put this error under a branch of a union parameter (``x | None``
    has no branches: its errors are the value's own)."""
    options = [s for s in schema.get("anyOf", ()) if s.get("type") != "null"]
    return len(options) > 1 and len(loc) > 1 and isinstance(loc[1], str)
