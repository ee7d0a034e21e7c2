"""What a running tool may know about the run it is part of.

A tool opts in by declaring a parameter annotated ``ToolContext``; the engine
fills it and keeps it out of the tool's schema, so planners never see it.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol


class StateAccess(Protocol):
    """The slice of the state manager a tool sees (``dendrite.state.StateView``)."""

    def get(self, key: str, default: Any = None, scope: str | None = None) -> Any: ...

    def set(
        self, key: str, value: Any, scope: str = "execution", ttl: float | None = None
    ) -> None: ...

    def delete(self, key: str, scope: str = "execution") -> bool: ...


class ToolCancelledError(Exception):
    """Raised by :meth:`ToolContext.raise_if_cancelled` once the run or the step is cancelled."""


@dataclass(slots=True)
class ToolContext:
    execution_id: str
    step_id: str
    tool_name: str
    attempt: int
    session_id: str | None
    state: StateAccess
    logger: logging.LoggerAdapter[logging.Logger]
    cancel_event: threading.Event = field(default_factory=threading.Event)

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled or this attempt timed out.

        A sync tool runs in a worker thread that Python cannot stop from the
        outside, so a long tool should check this between units of work.
        """
        return self.cancel_event.is_set()

    def raise_if_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise ToolCancelledError(f"step {self.step_id!r} ({self.tool_name}) was cancelled")
