"""Classification of failures into a small, stable vocabulary.

Analytics and learning group failures by kind (a timeout calls for a longer
deadline or another tool, a validation error for a better plan, a rate limit
for back-off), so every recorded error carries an :class:`ErrorType` inferred
from the exception or, when only text survives, from the message.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import functools
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
        if isinstance(error, BaseExceptionGroup):  # what failed is inside: the first of it
            return cls.infer(error.exceptions[0])
        if isinstance(error, BaseException):
            by_type = _from_exception_type(type(error))
            if by_type is not None:
                return by_type
            # Its message first (a status code leads it: "429 Resource has been exhausted"),
            # then its type's name ("InvalidArgument").
            found = _from_message(message_of(error)) or _from_message(type(error).__name__)
            return found or cls.TOOL_ERROR
        return _remembered(error) if len(error) <= _REMEMBERED_LENGTH else _from_text(error)


def _from_text(error: str) -> ErrorType:
    """The class of an error known only by its text."""
    by_type = _from_type_name(error)
    if by_type is not None:
        return by_type
    # "ResourceExhausted: 429 …" → "429 …". Matched where the text starts: searched
    # anywhere, the pattern took minutes over a long hex dump in a posted record's error.
    prefix = _TYPE_PREFIX.match(error)
    message = error[prefix.end() :] if prefix else error
    found = _from_message(message) or (prefix is not None and _from_message(error))
    return found or (ErrorType.TOOL_ERROR if error.strip() else ErrorType.UNKNOWN)


_remembered = functools.lru_cache(maxsize=1024)(_from_text)
"""``_from_text``, remembering the last 1,024 messages: every failed tool call and run is
classified when it is recorded, the patterns take 2 to 12 µs a message, and a failing
tool or service keeps failing with the same few messages (a timeout, a rate limit)."""
_REMEMBERED_LENGTH = 500
"""Longer messages (a traceback, a page of output) are classified each time, not kept."""


def message_of(error: BaseException) -> str:
    """``str(error)``, or a note that it failed: an exception's ``__str__`` is its author's
    code, and one that raises must not break the bookkeeping of the failure it reports."""
    try:
        return str(error)
    except Exception as broken:
        return f"<str() raised {type(broken).__name__}>"


def described(error: BaseException) -> str:
    """The error as "ValueError: bad input", or its name alone when it has no message
    ("GeneratorExit", not "GeneratorExit: ")."""
    message = message_of(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


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


def _status(code: str) -> str:
    """A status code where it reads as one: leading the message ("429 Resource has been
    exhausted", "422, message=…"), after "HTTP", "status", "error code", "returned", …
    ("HTTP/1.1 503", "Error code: 429"), or before an HTTP reason ("503 Service
    Unavailable"); not in "processed 502 rows", a URL's ".../orders/429" or "exit code 502".
    """
    after = (
        r"\bhttp(?:/[\d.]+)?|\bstatus(?: code)?|\berror(?: code)?|\bresponse(?: code)?"
        r"|\breturned|\bgot"
    )
    reason = r"client error|server error|too many|unavailable|bad gateway|gateway|unprocessable"
    return rf"(?:^\W*|(?:{after})\W{{0,3}}){code}\b|\b{code}\W{{0,3}}(?:{reason})"


_MESSAGE_PATTERNS: tuple[tuple[re.Pattern[str], ErrorType], ...] = (
    (
        re.compile(rf"rate.?limit|too many requests|{_status('429')}|quota exceeded", re.I),
        ErrorType.RATE_LIMIT,
    ),
    # As words: "runtime output" holds "time out" too.
    (
        re.compile(r"\btimed?[ -]?out\b|etimedout|timeout|deadline exceeded", re.I),
        ErrorType.TIMEOUT,
    ),
    (re.compile(r"cancel+ed|cancellation", re.I), ErrorType.CANCELLED),
    (
        re.compile(
            r"connection (refused|reset|error|aborted|closed)|could not connect|"
            r"unreachable|no route to host|name or service not known|broken pipe|"
            r"server disconnected|peer closed connection|bad gateway|"
            rf"service unavailable|{_status('50[234]')}",
            re.I,
        ),
        ErrorType.CONNECTION,
    ),
    (
        re.compile(
            # "expected … got" within a line's length: unbounded, it was quadratic in a text
            # that says "expected" many times.
            r"validation|invalid|missing (required )?(argument|parameter|field)|"
            r"unexpected keyword|required positional|must be|expected .{0,200} got|"
            rf"{_status('422')}",
            re.I,
        ),
        ErrorType.VALIDATION,
    ),
)

# An exception's text as it is usually written down: "ValueError: bad", "httpx.ReadTimeout: …".
_TYPE_PREFIX = re.compile(r"\s*(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)\s*:")
# One without a message is its name alone, as ``described`` writes it ("KeyboardInterrupt").
_TYPE_ALONE = re.compile(r"\s*(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*)\s*")


def _from_exception_type(kind: type[BaseException]) -> ErrorType | None:
    if issubclass(kind, _CANCELLED_TYPES):
        return ErrorType.CANCELLED
    if issubclass(kind, _TIMEOUT_TYPES):
        return ErrorType.TIMEOUT
    if issubclass(kind, _CONNECTION_TYPES):
        return ErrorType.CONNECTION
    for klass in kind.__mro__:
        hinted = _from_name(klass.__name__)
        if hinted is not None:
            return hinted
    if issubclass(kind, (ValueError, TypeError, KeyError)):
        return ErrorType.VALIDATION
    return None


def _from_name(name: str) -> ErrorType | None:
    name = name.lower()
    for hint, kind in _NAME_HINTS:
        if hint in name:
            return kind
    return None


def _from_type_name(message: str) -> ErrorType | None:
    """An exception written down as text ("ValueError: bad"), classed as the exception
    would be: by its type when it is a built-in one, else by the hints in its name."""
    match = _TYPE_PREFIX.match(message) or _TYPE_ALONE.fullmatch(message)
    if match is None:
        return None
    name = match.group(1)
    builtin = getattr(builtins, name, None)
    if isinstance(builtin, type) and issubclass(builtin, BaseException):
        return _from_exception_type(builtin)
    if name.endswith(("Error", "Exception", "Timeout")):
        return _from_name(name)
    return None


def _from_message(message: str) -> ErrorType | None:
    for pattern, kind in _MESSAGE_PATTERNS:
        if pattern.search(message):
            return kind
    return None
