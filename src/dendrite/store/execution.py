"""The hot path's check of an execution: ``ExecutionRecord`` built without pydantic.

Every goal a running orchestrator finishes is recorded by ``store_execution``,
with twenty-odd fields. Validating them through pydantic made it cost about 14 µs
(bench/store_bench.py's runs), as much as recording three tool calls, most of it
checking values that are already of the right type; this path takes half that.
:func:`checked_execution` makes the model's checks by hand for that common case
(every value of its field's exact type: ``str``, ``float`` or ``int``, ``bool``,
the enums, ``datetime``, a ``dict`` with ``str`` keys; within the field's bounds;
ids in canonical spelling) and returns ``None`` for anything else, so that the
caller falls back to pydantic, which then coerces or raises exactly as before.

The record it builds is the one pydantic builds, field for field and type for
type, ``model_fields_set`` included: text cleaned as ``_storable_text`` cleans
it, and what ``_complete`` derives taken from the same function
(``execution_derived``). The checks are read from the model's own field
declarations, so a bound changed there is checked here too; a field whose
declaration has anything this module does not know is left to pydantic.
"""

from __future__ import annotations

import sys
from datetime import datetime
from enum import Enum
from types import NoneType, UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from annotated_types import Ge, Le, MaxLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from dendrite._ids import is_canonical_id
from dendrite._text import clean_text
from dendrite.store.serialize import to_jsonable
from dendrite.telemetry.records import ExecutionRecord, RecordId, execution_derived

_ID = "id"
"""The kind of a ``RecordId`` field: canonical text only (pydantic rewrites other spellings)."""
_BIG = sys.float_info.max
"""Bounds of a float without any: an infinity is out of them, and NaN out of every bound."""

Rule = tuple[Any, bool, Any, Any]
"""A field's check: its kind, whether it takes ``None``, its lower and upper bound (a
length for text)."""


def _rule(info: FieldInfo) -> Rule | None:
    """How to check the field by hand; ``None`` when its declaration is not one we know."""
    kind, nullable, constraints = info.annotation, False, list(info.metadata)
    if get_origin(kind) in (Union, UnionType):
        rest = [arg for arg in get_args(kind) if arg is not NoneType]
        if len(rest) != 1:
            return None
        kind, nullable = rest[0], True
    if get_origin(kind) is Annotated:
        kind, *more = get_args(kind)
        constraints += more
    if kind is str and constraints == list(get_args(RecordId)[1:]):
        return (_ID, nullable, None, None)
    low, high = (-_BIG, _BIG) if kind is float else (-float("inf"), float("inf"))
    for constraint in constraints:
        if type(constraint) is Ge:
            low = constraint.ge
        elif type(constraint) is Le:
            high = constraint.le
        elif type(constraint) is MaxLen and kind is str:
            high = constraint.max_length
        else:  # strict, a pattern, a minimum length, a validator: pydantic's to check
            return None
    if kind == dict[str, Any]:
        kind = dict
    elif kind not in (str, float, int, bool, datetime) and not (
        isinstance(kind, type) and issubclass(kind, Enum)
    ):
        return None
    return (kind, nullable, low, high)


_FIELDS = ExecutionRecord.model_fields
_RULES = {name: rule for name, info in _FIELDS.items() if (rule := _rule(info)) is not None}
_DEFAULTS = {name: info.default for name, info in _FIELDS.items()}
"""Every field, in the model's order, with its default (a placeholder where it has none)."""
_FACTORIES = {name: info.default_factory for name, info in _FIELDS.items() if info.default_factory}
_REQUIRED = frozenset(name for name, info in _FIELDS.items() if info.is_required())

# How ``BaseModel.model_construct`` makes an instance without validating, less its
# per-field work (which cost more than validating): the checks below did that. A pydantic
# whose models hold other attributes gets every record validated, slower but right.
_KNOWN_LAYOUT = BaseModel.__slots__ == (
    "__dict__",
    "__pydantic_fields_set__",
    "__pydantic_extra__",
    "__pydantic_private__",
)
_new = object.__new__
_set = object.__setattr__


def checked_execution(values: dict[str, Any]) -> ExecutionRecord | None:
    """``ExecutionRecord(**values)`` when every value is already of its exact type and in
    bounds; ``None`` when pydantic must look at it (to coerce, or to name what is wrong)."""
    if not _KNOWN_LAYOUT or not _REQUIRED.issubset(values):
        return None
    record = _DEFAULTS.copy()
    for name, value in values.items():
        rule = _RULES.get(name)
        if rule is None:  # not a field, or one only pydantic checks
            return None
        kind, nullable, low, high = rule
        if value is None:
            if not nullable:
                return None
        elif kind is str:
            if type(value) is not str or len(value) > high:
                return None
            if "\x00" in value or not value.isascii():  # ``clean_text``'s own test, inlined
                value = clean_text(value)  # as ``_storable_text`` does, after the length check
        elif kind is float:
            if type(value) is float:
                if not low <= value <= high:
                    return None
            elif type(value) is int and low <= value <= high:
                value = float(value)
            else:
                return None
        elif kind is int:
            if type(value) is not int or not low <= value <= high:
                return None
        elif kind is _ID:
            if type(value) is not str or not is_canonical_id(value):
                return None
        elif kind is dict:
            if type(value) is not dict:
                return None
            for key in value:
                if type(key) is not str:
                    return None
            # As ``_validated`` keeps it: JSON as it is now (pydantic's copy when empty).
            value = to_jsonable(value) if value else {}
        elif type(value) is not kind:  # bool, datetime, the enums
            return None
        record[name] = value
    for name, factory in _FACTORIES.items():
        if name not in values:
            record[name] = factory()
    try:
        derived = execution_derived(record)
    except ValueError:  # a time outside the calendar: pydantic's error names it
        return None
    record.update(derived)
    execution = _new(ExecutionRecord)
    _set(execution, "__dict__", record)
    _set(execution, "__pydantic_fields_set__", values.keys() | derived.keys())
    _set(execution, "__pydantic_extra__", None)
    _set(execution, "__pydantic_private__", None)
    return execution
