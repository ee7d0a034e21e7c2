"""Errors raised by the tool registry.

Each names the tool and, where there is one, the parameter, so that a user
reading a failed plan or run sees what to fix without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ToolError(Exception):
    """Base class of the registry's errors."""


class UnknownToolError(ToolError, LookupError):
    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        self.name = name
        # One name from several sources (registered, and saved by the store) is one name.
        close = difflib.get_close_matches(name, list(dict.fromkeys(known)), n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown tool {name!r}{hint}")


class ToolRegistrationError(ToolError, ValueError):
    """A function that cannot become a tool (bad name, duplicate, unsupported signature)."""


class ToolUnavailableError(ToolError):
    """The tool exists but is disabled or quarantined."""

    def __init__(self, name: str, status: str, reason: str | None) -> None:
        self.name = name
        self.status = status
        self.reason = reason
        because = f": {reason}" if reason else ""
        super().__init__(f"tool {name!r} is {status}{because}")


class ToolArgumentError(ToolError, ValueError):
    """Arguments that do not match the tool's signature; ``problems`` lists each one."""

    def __init__(self, tool: str, problems: list[str]) -> None:
        self.tool = tool
        self.problems = problems
        super().__init__(f"tool {tool!r}: " + "; ".join(problems))
