"""Telemetry: the records Dendrite keeps of every run, and how failures are classified."""

from dendrite.telemetry.errors import ErrorType
from dendrite.telemetry.records import (
    AnyRecord,
    ExecutionRecord,
    ExecutionStatus,
    FeedbackRecord,
    PredictionError,
    RoutingCandidate,
    RoutingDecision,
    SolutionRecord,
    ToolCreationEvent,
    ToolExecutionRecord,
)

__all__ = [
    "AnyRecord",
    "ErrorType",
    "ExecutionRecord",
    "ExecutionStatus",
    "FeedbackRecord",
    "PredictionError",
    "RoutingCandidate",
    "RoutingDecision",
    "SolutionRecord",
    "ToolCreationEvent",
    "ToolExecutionRecord",
]
