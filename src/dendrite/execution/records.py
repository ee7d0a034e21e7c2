"""Store records made from what the engine reports, on the hot path of every attempt.

Every attempt of every step becomes a ``tool_executions`` row, so building the
record is paid once per step. The engine made every field itself (ids,
times, types), so the record skips pydantic's validation, and even
``model_construct``'s per-field loop over aliases and defaults, which costs
several times more than the few attribute writes it comes down to when every
field is given. ``tests/test_engine.py`` checks that the result equals what
``model_construct`` and full validation build from the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from dendrite._ids import new_id
from dendrite.execution.events import Attempt
from dendrite.telemetry import ToolExecutionRecord

_FIELDS = frozenset(ToolExecutionRecord.model_fields)
_new = object.__new__
_set = object.__setattr__


def attempt_record(
    execution_id: str,
    step_id: str,
    attempt: Attempt,
    params: Mapping[str, Any],
    result: Any,
) -> ToolExecutionRecord:
    """The ``tool_executions`` record of one attempt, with a new id."""
    values = {
        "id": new_id(),
        "execution_id": execution_id,
        "step_id": step_id,
        "tool_name": attempt.tool,
        "parameters": dict(params),
        "result": result,
        "success": attempt.success,
        "error": attempt.error,
        "error_type": attempt.error_type,
        "attempt": attempt.number,
        "fallback_of": attempt.fallback_of,
        "duration_ms": attempt.duration_ms,
        "started_at": attempt.started_at,
        "finished_at": attempt.started_at + timedelta(milliseconds=attempt.duration_ms),
    }
    # What model_construct does for a model without aliases, extras or private
    # attributes, when every field is given.
    record = _new(ToolExecutionRecord)
    _set(record, "__dict__", values)
    _set(record, "__pydantic_fields_set__", set(_FIELDS))
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record
