"""Store records made from what the engine reports, on the hot path of every attempt.

Every attempt of every step becomes a ``tool_executions`` row, so building
the record is paid once per step. The engine made every value itself, of
the exact types the record holds (a new UUID, UTC times, an ``ErrorType``),
so the record is built as the store's own hot-path form, a
:class:`~dendrite.store.toolcall.ToolCall`, without checking them again.
``tests/test_engine.py`` checks that it equals the validated record.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from dendrite._ids import new_id
from dendrite._text import clean_text
from dendrite.execution.events import Attempt
from dendrite.store.serialize import dumps
from dendrite.store.toolcall import ToolCall

_new = tuple.__new__  # ``ToolCall(...)`` would run a Python frame for the same tuple

ITEM_KEY = "$item"
"""The parameter that carries a ``for_each`` attempt's item index in its record.

``tool_executions`` has no column for it, and without it a trace read back from the
store could not say which item an attempt was for. No tool's own parameter has this
name (it is not a Python identifier), and ``$`` keys are the store's own markers.
"""


def attempt_record(
    execution_id: str,
    step_id: str,
    attempt: Attempt,
    params: str,
    result: Any,
) -> ToolCall:
    """The ``tool_executions`` record of one attempt, with a new id.

    ``params`` is the JSON text of the arguments, encoded before the call; the result
    is encoded now, before a later step can change it. A ``for_each`` attempt's item
    index goes in as one more parameter, :data:`ITEM_KEY`.
    """
    if attempt.item is not None:  # spliced in: ``params`` is always a JSON object's text
        rest = "}" if params == "{}" else "," + params[1:]
        params = f'{{"{ITEM_KEY}":{attempt.item:d}{rest}'
    return _new(
        ToolCall,
        (
            new_id(),
            execution_id,
            step_id,
            attempt.tool,
            params,
            dumps(result),
            attempt.success,
            # The error is a tool's own text: stray NUL or lone surrogates, as any record's.
            None if attempt.error is None else clean_text(attempt.error),
            attempt.error_type,
            attempt.number,
            attempt.fallback_of,
            attempt.duration_ms,
            attempt.started_at,
            attempt.started_at + timedelta(milliseconds=attempt.duration_ms),
        ),
    )
