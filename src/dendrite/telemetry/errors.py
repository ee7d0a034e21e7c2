"""Classification of failures into a small, stable vocabulary.

Analytics and learning group failures by kind (a timeout calls for a longer
deadline or another tool, a validation error for a better plan, a rate limit
for back-off), so every recorded error carries an :class:`ErrorType` inferred
from the exception or, when only text survives, from the message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from enum import StrEnum


class ErrorType(StrEnum):
    TIMEOUT = "timeout"
    VALIDATION = "validation"
    RATE_LIMIT = "rate_limit"
    CONNECTION = "connection"
    TOOL_ERROR = "tool_error"
    CANCELLED = "cancelled"
    UNKNOWN = "unknown"

    @classmethod
    def infer(cls, error: BaseException | str | None) -> ErrorType:
        """Classify an exception (by type, then by message) or a bare message."""
        if error is None:
            return cls.UNKNOWN
        if isinstance(error, BaseException):
            by_type = _from_exception_type(error)
            if by_type is not None:
                return by_type
            message = f"{type(error).__name__}: {error}"
            return _from_message(message) or cls.TOOL_ERROR
        return _from_message(error) or (cls.TOOL_ERROR if error.strip() else cls.UNKNOWN)


_CONNECTION_TYPES = (ConnectionError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError)
_TIMEOUT_TYPES = (TimeoutError, asyncio.TimeoutError, concurrent.futures.TimeoutError)
_CANCELLED_TYPES = (asyncio.CancelledError, concurrent.futures.CancelledError, KeyboardInterrupt)

_NAME_HINTS: tuple[tuple[str, ErrorType], ...] = (
    ("ratelimit", ErrorType.RATE_LIMIT),
    ("toomanyrequests", ErrorType.RATE_LIMIT),
    ("timeout", ErrorType.TIMEOUT),
    ("cancel", ErrorType.CANCELLED),
    ("connect", ErrorType.CONNECTION),
    ("validation", ErrorType.VALIDATION),
)

_MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], ErrorType], ...] = (
    (
        re.compile(r"rate.?limit|too many requests|\b429\b|quota exceeded", re.I),
        ErrorType.RATE_LIMIT,
    ),
    (re.compile(r"timed? ?out|timeout|deadline exceeded", re.I), ErrorType.TIMEOUT),
    (re.compile(r"cancel+ed|cancellation", re.I), ErrorType.CANCELLED),
    (
        re.compile(
            r"connection (refused|reset|error|aborted|closed)|could not connect|"
            r"unreachable|name or service not known|broken pipe|\b50[234]\b",
            re.I,
        ),
        ErrorType.CONNECTION,
    ),
    (
        re.compile(
            r"validation|invalid|missing (required )?(argument|parameter|field)|"
            r"unexpected keyword|required positional|must be|expected .* got|\b422\b",
            re.I,
        ),
        ErrorType.VALIDATION,
    ),
)


def _from_exception_type(error: BaseException) -> ErrorType | None:
    if isinstance(error, _CANCELLED_TYPES):
        return ErrorType.CANCELLED
    if isinstance(error, _TIMEOUT_TYPES):
        return ErrorType.TIMEOUT
    if isinstance(error, _CONNECTION_TYPES):
        return ErrorType.CONNECTION
    for klass in type(error).__mro__:
        name = klass.__name__.lower()
        for hint, kind in _NAME_HINTS:
            if hint in name:
                return kind
    if isinstance(error, (ValueError, TypeError, KeyError)):
        return ErrorType.VALIDATION
    return None


def _from_message(message: str) -> ErrorType | None:
    for pattern, kind in _MESSAGE_PATTERNS:
        if pattern.search(message):
            return kind
    return None
