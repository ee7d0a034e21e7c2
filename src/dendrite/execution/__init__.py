"""Execution: the DAG engine, its events and the trace it leaves."""

from dendrite.execution.engine import AttemptRecorder, ExecutionEngine, RunOutcome
from dendrite.execution.events import Attempt, Event, EventType, StepResult, StepStatus

__all__ = [
    "Attempt",
    "AttemptRecorder",
    "Event",
    "EventType",
    "ExecutionEngine",
    "RunOutcome",
    "StepResult",
    "StepStatus",
]
