"""``when`` conditions: a small, safe expression language over earlier outputs.

A condition is parsed once with Python's own parser and then evaluated by a
walker that knows only: ``and`` / ``or`` / ``not``; comparisons (``==``,
``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``, ``is``, ``is not``);
literals (numbers, strings, ``True``, ``False``, ``None``, lists, tuples);
unary minus; ``len(x)``; and ``${step.path}`` references. Nothing is ever
handed to ``eval``: attribute access, calls other than ``len``, subscripts,
lambdas and comprehensions are refused when the plan is validated.

Examples: ``${search.count} > 0``, ``"error" not in ${fetch.status}``,
``len(${search.hits}) >= 3 and not ${check.blocked}``.

``None`` is what a step that failed with ``continue_on_error`` reads as, and
every path into it (``${bad.count}``): its dependants run without its output,
so their conditions must still be decided, not fail. Where Python decides
``None`` (``==``, ``!=``, ``is``, truthiness, ``not``), it does here; where
Python would raise, the comparison is false, as one with NaN is: ``None < 1``,
``1 < None`` and ``None <= None`` are false, nothing is ``in`` ``None`` (so
``not in`` it is true), ``None`` is in no text, and ``len(None)`` and
``-None`` are ``None``. So ``${bad.count} > 0`` is false and the step is
skipped (a missing count is not known to be more than nothing), while
``not ${bad.count} > 0`` is true.
"""

from __future__ import annotations

import ast
import functools
import operator
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from typing import Any

from dendrite.planning import references


def _ordered(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    """``compare``, false where either side is None: a missing value is not known to be
    more or less than anything, and Python would raise."""

    def ordered(left: Any, right: Any) -> bool:
        return left is not None and right is not None and compare(left, right)

    return ordered


def _contains(item: Any, container: Any) -> bool:
    """``item in container``, false where Python would raise over None: nothing is in a
    missing value, and a missing value is in no text."""
    if container is None or (item is None and isinstance(container, str | bytes)):
        return False
    return item in container


_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: _ordered(operator.lt),
    ast.LtE: _ordered(operator.le),
    ast.Gt: _ordered(operator.gt),
    ast.GtE: _ordered(operator.ge),
    ast.In: _contains,
    ast.NotIn: lambda a, b: not _contains(a, b),
    ast.Is: operator.is_,
    ast.IsNot: operator.is_not,
}
_PLACEHOLDER = "__ref{}__"


class ConditionError(ValueError):
    """A condition that is not in the allowed language, or fails to evaluate."""


@dataclass(frozen=True, slots=True)
class Condition:
    text: str
    tree: ast.Expression
    refs: dict[str, references.Reference]  # placeholder name -> reference

    def evaluate(self, scope: Mapping[str, Any]) -> bool:
        values = {
            name: references.lookup(scope[ref.source], ref.path, ref.text)
            for name, ref in self.refs.items()
        }
        try:
            return bool(_eval(self.tree.body, values))
        except ConditionError:
            raise
        except Exception as error:
            raise ConditionError(f"condition {self.text!r} failed: {error}") from error


@functools.lru_cache(maxsize=1024)
def compile_condition(text: str) -> Condition:
    """Parse and check ``text``; raise :class:`ConditionError` naming what is not allowed."""
    if not text.strip():
        raise ConditionError(
            f"condition {text!r} is empty; write one (${{step.count}} > 0), or leave `when` "
            "out for a step that always runs"
        )
    refs = references.parse(text)
    names = {ref.text: _PLACEHOLDER.format(i) for i, ref in enumerate(refs)}
    source = references.substitute(text, names)
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as error:
        raise ConditionError(f"condition {text!r} is not a valid expression: {error.msg}") from None
    except (RecursionError, MemoryError):  # "not not not ..." 5,000 times: Python's parser gives up
        raise ConditionError(f"condition {text[:40]!r}... is nested too deeply to parse") from None
    by_name = {names[ref.text]: ref for ref in refs}
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        _check(node, by_name, called, text)
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            quoted = [ref.text for name, ref in by_name.items() if name in node.value]
            if quoted:  # compared as its own name: always false, the step always skipped
                raise ConditionError(
                    f"condition {text!r}: {quoted[0]} is inside quotes, which makes it text; "
                    f"write it bare to compare its value ({quoted[0]} == 'yes')"
                )
    return Condition(text, tree, by_name)


_ALLOWED = (
    ast.Expression,
    ast.BoolOp,
    ast.And,
    ast.Or,
    ast.UnaryOp,
    ast.Not,
    ast.USub,
    ast.Compare,
    ast.Constant,
    ast.List,
    ast.Tuple,
    ast.Name,
    ast.Load,
    ast.Call,
    *_COMPARE,
)


def _check(node: ast.AST, refs: Mapping[str, Any], called: Set[int], text: str) -> None:
    """Refuse ``node`` if it is outside the language. ``called``: the ids of the nodes
    that are called (``len`` is a name only there: a bare ``len`` has no value)."""
    if not isinstance(node, _ALLOWED):
        raise ConditionError(
            f"condition {text!r}: {type(node).__name__} is not allowed "
            "(only comparisons, and/or/not, literals, len() and ${...} references)"
        )
    if isinstance(node, ast.Name) and node.id == "len" and id(node) not in called:
        raise ConditionError(f"condition {text!r}: 'len' is a function; call it as len(x)")
    if isinstance(node, ast.Name) and node.id not in refs and node.id != "len":
        raise ConditionError(
            f"condition {text!r}: unknown name {node.id!r}; refer to outputs as ${{step.path}}"
        )
    if isinstance(node, ast.Call) and not (
        isinstance(node.func, ast.Name)
        and node.func.id == "len"
        and len(node.args) == 1
        and not node.keywords
    ):
        raise ConditionError(f"condition {text!r}: the only call allowed is len(x)")


def _eval(node: ast.AST, values: Mapping[str, Any]) -> Any:
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            return values[name]
        case ast.BoolOp(op=ast.And(), values=items):
            result: Any = True
            for item in items:
                result = _eval(item, values)
                if not result:
                    return result
            return result
        case ast.BoolOp(op=ast.Or(), values=items):
            result = False
            for item in items:
                result = _eval(item, values)
                if result:
                    return result
            return result
        case ast.UnaryOp(op=ast.Not(), operand=operand):
            return not _eval(operand, values)
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            value = _eval(operand, values)
            return None if value is None else -value
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            current = _eval(left, values)
            for op, right_node in zip(ops, comparators, strict=True):
                right = _eval(right_node, values)
                if not _COMPARE[type(op)](current, right):
                    return False
                current = right
            return True
        case ast.List(elts=elts):
            return [_eval(e, values) for e in elts]
        case ast.Tuple(elts=elts):  # (1, 2) == [1, 2] is False in Python, and here
            return tuple(_eval(e, values) for e in elts)
        case ast.Call(args=[arg]):
            value = _eval(arg, values)
            return None if value is None else len(value)
    raise ConditionError(f"cannot evaluate {ast.dump(node)}")
