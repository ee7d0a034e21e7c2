"""What a run reports while it happens, and what it leaves behind.

Events go to whoever streams the run (CLI, SSE); :class:`StepResult` and its
:class:`Attempt` list are the trace that is returned and stored.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from dendrite.telemetry import ErrorType

_MILLISECOND = timedelta(milliseconds=1)


class EventType(StrEnum):
    PLAN_CREATED = "plan_created"
    STEP_STARTED = "step_started"
    STEP_RETRY = "step_retry"
    STEP_FINISHED = "step_finished"
    STEP_FAILED = "step_failed"
    STEP_SKIPPED = "step_skipped"
    FALLBACK_USED = "fallback_used"
    REPLANNED = "replanned"
    FINAL_ANSWER = "final_answer"


@dataclass(frozen=True, slots=True)
class Event:
    type: EventType
    execution_id: str
    step_id: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    at: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "execution_id": self.execution_id,
            "step_id": self.step_id,
            "data": self.data,
            "at": self.at,
        }


class StepStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class Attempt:
    """One call of one tool for one step: retries and fallbacks each add one."""

    tool: str
    number: int
    started_at: datetime
    duration_ms: float
    success: bool
    error: str | None = None
    error_type: ErrorType | None = None
    fallback_of: str | None = None
    item: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tool": self.tool,
            "number": self.number,
            "started_at": self.started_at.isoformat(),
            "duration_ms": self.duration_ms,
            "success": self.success,
            "error": self.error,
            "error_type": self.error_type.value if self.error_type else None,
            "fallback_of": self.fallback_of,
            "item": self.item,
        }


@dataclass(slots=True)
class StepResult:
    step_id: str
    tool: str
    status: StepStatus = StepStatus.PENDING
    output: Any = None
    error: str | None = None
    error_type: ErrorType | None = None
    attempts: list[Attempt] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float = 0.0
    fallback_used: str | None = None
    skip_reason: str | None = None
    confidence: float | None = None
    not_tried: list[str] = field(default_factory=list)
    """Candidates passed over without a call, each with why (quarantined, disabled, another
    run probing it): a trace must say why the first choice did not answer."""

    @property
    def retries(self) -> int:
        """Attempts beyond the first of each tool tried."""
        return sum(1 for a in self.attempts if a.number > 1)

    @property
    def ok(self) -> bool:
        return self.status is StepStatus.SUCCEEDED

    def to_dict(
        self, *, include_output: bool = True, include_attempts: bool = True
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step_id": self.step_id,
            "tool": self.tool,
            "status": self.status.value,
            "error": self.error,
            "error_type": self.error_type.value if self.error_type else None,
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "duration_ms": self.duration_ms,
            "fallback_used": self.fallback_used,
            "skip_reason": self.skip_reason,
            "confidence": self.confidence,
            "not_tried": list(self.not_tried),
        }
        if include_attempts:
            data["attempts"] = [a.to_dict() for a in self.attempts]
        if include_output:
            data["output"] = self.output
        return data

    def summary(self, origin: datetime) -> dict[str, Any]:
        """What the execution's record keeps of the step: fields that are set, compactly.

        A 1,000-step run records this for every step, on the run's own time:
        the step's timestamps go as milliseconds after ``origin`` (the run's
        start), exact to the microsecond, because formatting two ISO strings
        per step cost more than everything else in the summary together.
        """
        data: dict[str, Any] = {
            "step_id": self.step_id,
            "tool": self.tool,
            "status": self.status.value,
            "duration_ms": self.duration_ms,
        }
        if self.started_at is not None:
            data["started_ms"] = (self.started_at - origin) / _MILLISECOND
        if self.finished_at is not None:
            data["finished_ms"] = (self.finished_at - origin) / _MILLISECOND
        if self.error is not None:
            data["error"] = self.error
            data["error_type"] = self.error_type.value if self.error_type else None
        if self.fallback_used is not None:
            data["fallback_used"] = self.fallback_used
        if self.skip_reason is not None:
            data["skip_reason"] = self.skip_reason
        if self.confidence is not None:
            data["confidence"] = self.confidence
        if self.not_tried:
            data["not_tried"] = list(self.not_tried)
        return data
