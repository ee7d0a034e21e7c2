"""The execution-history store: every goal and tool call, and the analytics over them."""

from dendrite.store.analytics import (
    ExecutionDetail,
    PoolPerformance,
    RoutingOutcome,
    SolutionPattern,
    SuccessRate,
    TierPerformance,
    ToolStatistics,
)
from dendrite.store.errors import (
    InvalidRecordError,
    SchemaError,
    StoreError,
    StoreUnavailableError,
    UnknownExecutionError,
)
from dendrite.store.state_entries import StateEntry
from dendrite.store.store import ExecutionStore, PruneReport, StoreStatus

__all__ = [
    "ExecutionDetail",
    "ExecutionStore",
    "InvalidRecordError",
    "PoolPerformance",
    "PruneReport",
    "RoutingOutcome",
    "SchemaError",
    "SolutionPattern",
    "StateEntry",
    "StoreError",
    "StoreStatus",
    "StoreUnavailableError",
    "SuccessRate",
    "TierPerformance",
    "ToolStatistics",
    "UnknownExecutionError",
]
