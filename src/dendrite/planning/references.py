"""The one syntax for using an earlier step's output: ``${step}`` or ``${step.path}``.

- ``"${search}"`` — a parameter that is exactly one reference takes the value
  itself, with its type (a list stays a list).
- ``"${search.hits.0.title}"`` — a dotted path: mapping keys, attribute names
  and list indexes (negative ones too).
- ``"Found ${search.count} hits"`` — a reference inside longer text is
  interpolated as text.
- ``${item}`` / ``${item.path}`` — the current element inside a ``for_each``
  step; ``${context.key}`` — a value from the run's ``context``.
- ``${$}`` — a literal ``$``. Text that must not be read as references (the
  user's own words in a goal, copied into a parameter) writes each ``${`` as
  ``${$}{`` (:func:`literal`), so ``"${HOME}"`` stays ``${HOME}``. No
  reference can begin with ``$``, so plans that never meant ``${$}`` are
  unaffected.

References are found in strings at any depth of a step's ``params``, in
``when`` and in ``for_each``; each one makes the step depend on the step it
names.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dendrite.telemetry.errors import described

ITEM = "item"
CONTEXT = "context"
RESERVED = frozenset({ITEM, CONTEXT})

_SCALARS = frozenset({int, float, bool, type(None)})  # cannot hold a reference: no ABC checks
_REF = re.compile(r"\$\{\s*([A-Za-z_][\w-]*)((?:\.[^.\s}]+)*)\s*\}")
_DOLLAR = "${$}"
_TOKEN = re.compile(rf"{re.escape(_DOLLAR)}|{_REF.pattern}")  # one scan: "${$}{x}" is no ref


class UnresolvedReferenceError(LookupError):
    """A reference whose path does not exist in the value it points into."""


class _NoOutput:
    """What a step that failed with ``continue_on_error`` stands for in a scope: it, and
    every path into it, reads as None. Its dependants run knowing it has no output, so
    ``${bad.summary}`` is None, as the run's output reads it, not a failure of theirs
    (None itself has no ``summary``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_OUTPUT"


NO_OUTPUT: Final = _NoOutput()


@dataclass(frozen=True, slots=True)
class Reference:
    source: str
    path: tuple[str, ...]
    text: str

    def __str__(self) -> str:
        return self.text


def parse(text: str) -> list[Reference]:
    return [
        Reference(m.group(1), tuple(p for p in m.group(2).split(".") if p), m.group(0))
        for m in _REF.finditer(text)
    ]


def whole(text: str) -> Reference | None:
    """The reference if ``text`` is exactly one reference and nothing else."""
    m = _REF.fullmatch(text.strip())
    if not m:
        return None
    return Reference(m.group(1), tuple(p for p in m.group(2).split(".") if p), m.group(0))


def find(value: Any) -> Iterator[Reference]:
    """Every reference in a parameter value, at any depth."""
    if type(value) in _SCALARS:
        return
    if isinstance(value, str):
        if "${" in value:
            yield from parse(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from find(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from find(item)


def lookup(value: Any, path: tuple[str, ...], ref: str) -> Any:
    if value is NO_OUTPUT:
        return None
    for part in path:
        if part.startswith("_") and not isinstance(value, Mapping | list | tuple):
            # A field, never an attribute of Python's own: "${r.__init__.__globals__...}"
            # walked from a tool's output to the server's modules and environment.
            raise UnresolvedReferenceError(
                f"{ref}: {part!r} is not readable; a reference reads fields and items, and "
                "attributes whose names start with '_' are not fields"
            )
        try:
            if isinstance(value, Mapping):
                value = value[part]
            elif isinstance(value, list | tuple):
                value = value[int(part)]
            else:
                value = getattr(value, part)
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            raise UnresolvedReferenceError(
                f"{ref}: {type(value).__name__} value has no {part!r}"
            ) from None
        except Exception as error:  # a property or __getattr__ of the output's own that fails
            raise UnresolvedReferenceError(
                f"{ref}: reading {part!r} of the {type(value).__name__} value failed: "
                f"{described(error)}"
            ) from None
    return value


def resolve(value: Any, scope: Mapping[str, Any]) -> Any:
    """Replace every reference in ``value`` by what it points to in ``scope``."""
    if type(value) in _SCALARS:
        return value
    if isinstance(value, str):
        if "${" not in value:
            return value
        ref = whole(value)
        if ref is not None:
            return lookup(scope[ref.source], ref.path, ref.text)
        return _TOKEN.sub(lambda m: _text_of(m, scope), value)
    if isinstance(value, Mapping):
        return {k: resolve(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, scope) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve(v, scope) for v in value)
    return value


def _text_of(match: re.Match[str], scope: Mapping[str, Any]) -> str:
    """What one reference inside longer text reads as; ``${$}`` is a literal ``$``."""
    if match.group(0) == _DOLLAR:
        return "$"
    path = tuple(p for p in match.group(2).split(".") if p)
    return str(lookup(scope[match.group(1)], path, match.group(0)))


def has_references(value: Any) -> bool:
    return next(find(value), None) is not None


def substitute(text: str, name_for: Mapping[str, str]) -> str:
    """Replace each reference in ``text`` by a placeholder name (for expressions)."""
    return _TOKEN.sub(lambda m: "$" if m.group(0) == _DOLLAR else name_for[m.group(0)], text)


def literal(value: Any) -> Any:
    """``value`` (text, or a list of texts) written so that it resolves to itself: each
    ``${`` becomes ``${$}{``. For words taken from a goal, where ``${step1.output}`` or
    ``${HOME}`` is the user's text, never a reference to another step's output."""
    if isinstance(value, str):
        return value.replace("${", _DOLLAR + "{")
    if isinstance(value, list):
        return [literal(item) for item in value]
    return value
