"""Tools: plain Python functions that plans call, described by their own signatures."""

from dendrite.tools.context import StateAccess, ToolCancelledError, ToolContext
from dendrite.tools.errors import (
    ToolArgumentError,
    ToolError,
    ToolRegistrationError,
    ToolUnavailableError,
    UnknownToolError,
)
from dendrite.tools.registry import (
    Reliability,
    Tool,
    ToolRegistry,
    ToolState,
    ToolStatus,
    tool,
)

__all__ = [
    "Reliability",
    "StateAccess",
    "Tool",
    "ToolArgumentError",
    "ToolCancelledError",
    "ToolContext",
    "ToolError",
    "ToolRegistrationError",
    "ToolRegistry",
    "ToolState",
    "ToolStatus",
    "ToolUnavailableError",
    "UnknownToolError",
    "tool",
]
