"""Dendrite: an orchestrator for tools and agents that learns from its own execution history."""

from dendrite.execution import Event, EventType, StepResult, StepStatus
from dendrite.orchestrator import (
    ExecutionResult,
    ExecutionTrace,
    Orchestrator,
    OrchestratorClosedError,
    OrchestratorConfig,
)

__all__ = [
    "Event",
    "EventType",
    "ExecutionResult",
    "ExecutionTrace",
    "Orchestrator",
    "OrchestratorClosedError",
    "OrchestratorConfig",
    "StepResult",
    "StepStatus",
]
