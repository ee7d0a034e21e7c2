"""The hot path's form of a tool execution: a checked tuple instead of a pydantic model.

``store_tool_execution`` runs on every tool call the orchestrator makes.
Building a ``ToolExecutionRecord`` costs about as much as an OpenTelemetry
span, most of it pydantic's general machinery checking values that are
almost always already of the right type. :func:`checked_call` does the same
checks by hand for that common case (exact types, the same bounds, the same
derived fields) and returns ``None`` for anything else, so the caller falls
back to pydantic, which then coerces or raises exactly as before. Either way
the queue holds a :class:`ToolCall` whose values are those of the validated
record, field for field, except that the parameters and the result are held as
their JSON text. They are the caller's objects, and encoded only when the
writer got to them, a dict or list changed in between (by the next step of a
plan, say) was stored as changed, not as it was when the call was recorded.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from dendrite._ids import is_canonical_id, new_id
from dendrite._text import clean_text
from dendrite.store.serialize import dumps
from dendrite.telemetry.errors import ErrorType
from dendrite.telemetry.records import INT32, MAX_DURATION_MS, ToolExecutionRecord

_OPTIONAL = frozenset(
    {"id", "step_id", "error_type", "attempt", "fallback_of", "started_at", "finished_at"}
)


class ToolCall(NamedTuple):
    """A validated tool execution, with the fields of ``ToolExecutionRecord`` in its order."""

    id: str
    execution_id: str
    step_id: str | None
    tool_name: str
    parameters: str  # JSON text
    result: str  # JSON text
    success: bool
    error: str | None
    error_type: ErrorType | None
    attempt: int
    fallback_of: str | None
    duration_ms: float
    started_at: datetime
    finished_at: datetime

    @classmethod
    def of(cls, record: ToolExecutionRecord) -> ToolCall:
        d = record.__dict__ | {
            "parameters": dumps(record.parameters),
            "result": dumps(record.result),
        }
        return cls(*[d[name] for name in cls._fields])

    def fields(self) -> dict[str, Any]:
        """The record's fields, as ``ToolExecutionRecord`` validates them (for the journal)."""
        return self._asdict() | {
            "parameters": json.loads(self.parameters),
            "result": json.loads(self.result),
        }


if ToolCall._fields != tuple(ToolExecutionRecord.model_fields):
    raise RuntimeError("ToolCall is out of step with ToolExecutionRecord's fields")
_new = tuple.__new__


def _utc(value: datetime) -> datetime:
    tz = value.tzinfo
    if tz is UTC:
        return value
    return value.replace(tzinfo=UTC) if tz is None else value.astimezone(UTC)


def checked_call(
    execution_id: Any,
    tool_name: Any,
    parameters: Any,
    result: Any,
    success: Any,
    duration_ms: Any,
    error: Any,
    fields: dict[str, Any],
) -> ToolCall | None:
    """The call as a ``ToolCall`` when every value is already of its exact type and in
    bounds; ``None`` when pydantic must look at it (to coerce, or to name what is wrong)."""
    if fields:
        if not _OPTIONAL.issuperset(fields):
            return None
        get = fields.get
        record_id = get("id")
        step_id, error_type = get("step_id"), get("error_type")
        attempt, fallback_of = get("attempt", 1), get("fallback_of")
        started_at, finished_at = get("started_at"), get("finished_at")
        # Ids in another spelling than the canonical one go to pydantic, which makes them so.
        if not (
            (record_id is None or (type(record_id) is str and is_canonical_id(record_id)))
            and (step_id is None or (type(step_id) is str and len(step_id) <= 128))
            and (error_type is None or type(error_type) is ErrorType)
            and type(attempt) is int
            and 1 <= attempt <= INT32
            and (fallback_of is None or (type(fallback_of) is str and len(fallback_of) <= 200))
            and (started_at is None or type(started_at) is datetime)
            and (finished_at is None or type(finished_at) is datetime)
        ):
            return None
        if record_id is None:
            record_id = new_id()
    else:
        record_id, step_id, error_type, attempt, fallback_of = new_id(), None, None, 1, None
        started_at = finished_at = None
    kind = type(duration_ms)
    if parameters is None:
        parameters = "{}"
    elif type(parameters) is dict:
        for key in parameters:
            if type(key) is not str:
                return None
        parameters = dumps(parameters)
    else:
        return None
    if not (
        type(execution_id) is str
        and is_canonical_id(execution_id)
        and type(tool_name) is str
        and 0 < len(tool_name) <= 200
        and type(success) is bool
        and (kind is float or kind is int)
        and 0 <= duration_ms <= MAX_DURATION_MS
        and (error is None or type(error) is str)
    ):
        return None
    duration_ms = float(duration_ms)
    try:
        if finished_at is None:
            if started_at is None:
                finished_at = datetime.now(UTC)
            else:
                finished_at = started_at + timedelta(0, 0, 0, duration_ms)
        if started_at is None:
            started_at = finished_at - timedelta(0, 0, 0, duration_ms)
        started_at, finished_at = _utc(started_at), _utc(finished_at)
    except OverflowError:  # pydantic's path names the problem
        return None
    tool_name = clean_text(tool_name)
    if error is not None:
        error = clean_text(error)
    if step_id is not None:
        step_id = clean_text(step_id)
    if fallback_of is not None:
        fallback_of = clean_text(fallback_of)
    if error_type is None and not success:
        error_type = ErrorType.infer(error)
    return _new(  # ``tuple.__new__`` directly: ``ToolCall(...)`` runs a Python frame
        ToolCall,
        (
            record_id,
            execution_id,
            step_id,
            tool_name,
            parameters,
            dumps(result),
            success,
            error,
            error_type,
            attempt,
            fallback_of,
            duration_ms,
            started_at,
            finished_at,
        ),
    )
