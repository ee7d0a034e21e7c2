"""The tool registry: which functions a plan may call, how, and whether right now.

Registration turns a function into a :class:`Tool` once (signature, schema,
validator), so that each call only pays for validating its arguments.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import reprlib
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar, overload

from pydantic import ValidationError

from dendrite.telemetry.records import MAX_TOOL_NAME
from dendrite.tools.context import ToolContext
from dendrite.tools.errors import (
    ToolArgumentError,
    ToolRegistrationError,
    ToolUnavailableError,
    UnknownToolError,
)
from dendrite.tools.introspect import Signature, argument_problems, introspect, plain_arguments

F = TypeVar("F", bound=Callable[..., Any])

_TOOL_SPEC = "__dendrite_tool__"


class Reliability(StrEnum):
    """How far a tool can be trusted before its history says otherwise."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    EXPERIMENTAL = "experimental"

    @property
    def prior(self) -> float:
        """Success probability assumed for a tool with no history."""
        return _PRIORS[self]


_PRIORS = {
    Reliability.HIGH: 0.95,
    Reliability.MEDIUM: 0.85,
    Reliability.LOW: 0.7,
    Reliability.EXPERIMENTAL: 0.5,
}


class ToolStatus(StrEnum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class ToolState:
    status: ToolStatus = ToolStatus.ENABLED
    reason: str | None = None
    since: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class Tool:
    """A registered function with what the planner and the engine need to know about it."""

    name: str
    func: Callable[..., Any]
    description: str
    reliability: Reliability
    estimated_duration: float | None
    alternatives: tuple[str, ...]
    tags: tuple[str, ...]
    timeout: float | None
    retry_on: tuple[type[BaseException], ...]
    version: int
    signature: Signature
    is_async: bool
    state: ToolState = field(default_factory=ToolState)

    @property
    def parameters_schema(self) -> dict[str, Any]:
        return self.signature.parameters_schema

    @property
    def returns_schema(self) -> dict[str, Any] | None:
        return self.signature.returns_schema

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.signature.fields)

    @property
    def available(self) -> bool:
        return self.state.status is ToolStatus.ENABLED

    def validate_arguments(self, params: dict[str, Any]) -> dict[str, Any]:
        """Coerce ``params`` to the declared types; raise :class:`ToolArgumentError` otherwise."""
        model = self.signature.model
        if model is None and not params:
            return {}
        plain = plain_arguments(self.signature, params)
        if plain is not None:
            return plain
        try:
            parsed = model.model_validate(params) if model is not None else None
        except ValidationError:
            parsed = None
        if parsed is None:
            raise ToolArgumentError(self.name, argument_problems(self.signature, params))
        return {name: getattr(parsed, attr) for attr, name in self.signature.fields}

    def check_arguments(self, params: dict[str, Any], deferred: Collection[str] = ()) -> list[str]:
        """Problems with ``params`` without calling anything; ``deferred`` names are skipped."""
        return argument_problems(self.signature, params, deferred)

    def describe(self) -> dict[str, Any]:
        """The tool as planners, prompts and the API see it."""
        return {
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters_schema,
            "returns": self.returns_schema,
            "reliability": self.reliability.value,
            "estimated_duration": self.estimated_duration,
            "alternatives": list(self.alternatives),
            "tags": list(self.tags),
            "timeout": self.timeout,
            "version": self.version,
            "status": self.state.status.value,
            "status_reason": self.state.reason,
        }


@dataclass(frozen=True, slots=True)
class _Spec:
    name: str | None = None
    description: str | None = None
    reliability: Reliability | str = Reliability.MEDIUM
    estimated_duration: float | None = None
    alternatives: Sequence[str] = ()
    tags: Sequence[str] = ()
    timeout: float | None = None
    retry_on: Sequence[type[BaseException]] = ()


@overload
def tool(func: F, /) -> F: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    reliability: Reliability | str = Reliability.MEDIUM,
    estimated_duration: float | None = None,
    alternatives: Sequence[str] = (),
    tags: Sequence[str] = (),
    timeout: float | None = None,
    retry_on: Sequence[type[BaseException]] = (),
) -> Callable[[F], F]: ...


def tool(func: F | None = None, /, **options: Any) -> F | Callable[[F], F]:
    """Mark a function as a tool; ``ToolRegistry.register`` picks the options up.

    The function itself is returned unchanged, so it stays callable and testable
    as plain Python.
    """

    def mark(f: F) -> F:
        setattr(f, _TOOL_SPEC, _Spec(**options))
        return f

    return mark(func) if func is not None else mark


class ToolRegistry:
    """The tools a plan may use. Thread-safe: the API and the learning loop change states."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._history: dict[str, list[Tool]] = {}
        self._lock = threading.RLock()

    def register(self, func: Callable[..., Any], *, replace: bool = False) -> Tool:
        """Register a function, with the options given to ``@tool`` if it was decorated."""
        spec: _Spec = getattr(func, _TOOL_SPEC, None) or _Spec()
        return self.register_function(
            func,
            name=spec.name,
            description=spec.description,
            reliability=spec.reliability,
            estimated_duration=spec.estimated_duration,
            alternatives=spec.alternatives,
            tags=spec.tags,
            timeout=spec.timeout,
            retry_on=spec.retry_on,
            replace=replace,
        )

    def register_function(
        self,
        func: Callable[..., Any],
        name: str | None = None,
        description: str | None = None,
        reliability: Reliability | str = Reliability.MEDIUM,
        estimated_duration: float | None = None,
        alternatives: Sequence[str] = (),
        tags: Sequence[str] = (),
        timeout: float | None = None,
        retry_on: Sequence[type[BaseException]] = (),
        *,
        replace: bool = False,
    ) -> Tool:
        """Make ``func`` callable by plans under ``name`` (default: the function's name).

        Registering a name again needs ``replace=True`` and bumps its version;
        earlier versions stay listed in :meth:`versions`.
        """
        if isinstance(func, classmethod):
            raise ToolRegistrationError(
                f"cannot register {func!r}: a classmethod object is only callable once bound; "
                "register it as Class.method"
            )
        if not callable(func):
            raise ToolRegistrationError(f"cannot register {func!r}: not callable")
        tool_name = name or getattr(func, "__name__", "")
        if not tool_name:  # a callable object or a functools.partial
            raise ToolRegistrationError(
                f"cannot register a {type(func).__qualname__} object without a name: it has "
                "no __name__; pass name="
            )
        if not tool_name.isidentifier():
            raise ToolRegistrationError(
                f"tool name {tool_name!r} must be an identifier (letters, digits, underscores)"
            )
        if len(tool_name) > MAX_TOOL_NAME:  # every attempt's record would be refused
            raise ToolRegistrationError(
                f"tool name {tool_name[:40]!r}... is {len(tool_name)} characters long; "
                f"at most {MAX_TOOL_NAME}"
            )
        try:
            level = Reliability(reliability)
        except ValueError:
            choices = ", ".join(r.value for r in Reliability)
            raise ToolRegistrationError(
                f"tool {tool_name!r}: reliability {reliability!r} is not one of {choices}"
            ) from None
        for label, value in (("timeout", timeout), ("estimated_duration", estimated_duration)):
            if value is not None and not _positive_seconds(value):
                raise ToolRegistrationError(
                    f"tool {tool_name!r}: {label} must be a finite number of seconds > 0, "
                    f"got {reprlib.repr(value)}"
                )
        tags = _names(tool_name, "tags", tags)
        alternatives = _names(tool_name, "alternatives", alternatives)
        if isinstance(retry_on, type):
            raise ToolRegistrationError(
                f"tool {tool_name!r}: retry_on takes a list of exception classes, got {retry_on!r}"
            )
        for klass in retry_on:
            if not (isinstance(klass, type) and issubclass(klass, BaseException)):
                raise ToolRegistrationError(
                    f"tool {tool_name!r}: retry_on takes exception classes, got {klass!r}"
                )
        if tool_name in alternatives:
            raise ToolRegistrationError(f"tool {tool_name!r} cannot be its own alternative")
        signature = introspect(func, tool_name, ToolContext, description)
        with self._lock:
            previous = self._tools.get(tool_name)
            if previous is not None and not replace:
                raise ToolRegistrationError(
                    f"tool {tool_name!r} is already registered (version {previous.version}); "
                    "pass replace=True to register a new version"
                )
            registered = Tool(
                name=tool_name,
                func=func,
                description=signature.summary,
                reliability=level,
                estimated_duration=estimated_duration,
                alternatives=alternatives,
                tags=tags,
                timeout=timeout,
                retry_on=tuple(retry_on),
                # Counted over every registration: one after unregister() is a new version.
                version=len(self._history.get(tool_name, ())) + 1,
                signature=signature,
                is_async=_is_async(func),
                state=previous.state if previous else ToolState(),
            )
            self._tools[tool_name] = registered
            self._history.setdefault(tool_name, []).append(registered)
        return registered

    def tool(self, func: F | None = None, /, **options: Any) -> Any:
        """Decorator form of :meth:`register`: ``@registry.tool`` or ``@registry.tool(...)``."""

        def mark(f: F) -> F:
            self.register(tool(**options)(f) if options else f)
            return f

        return mark(func) if func is not None else mark

    def unregister(self, name: str) -> None:
        with self._lock:
            self.get(name)
            del self._tools[name]

    # -- lookup --------------------------------------------------------------

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise UnknownToolError(name, self._tools) from None

    def find(self, name: str) -> Tool | None:
        """The tool, or None: for callers that handle absence themselves."""
        return self._tools.get(name)

    def require_available(self, name: str) -> Tool:
        """The tool, or :class:`ToolUnavailableError` if it is disabled or quarantined."""
        found = self.get(name)
        if found.state.status is not ToolStatus.ENABLED:
            raise ToolUnavailableError(name, found.state.status.value, found.state.reason)
        return found

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def names(self) -> list[str]:
        return sorted(self._tools)

    def versions(self, name: str) -> list[Tool]:
        self.get(name)
        return list(self._history[name])

    def describe(self, *, include_unavailable: bool = False) -> list[dict[str, Any]]:
        """Every tool's description and schema, for prompts and the API."""
        return [
            t.describe()
            for t in sorted(self._tools.values(), key=lambda t: t.name)
            if include_unavailable or t.available
        ]

    # -- state ---------------------------------------------------------------

    def set_state(self, name: str, status: ToolStatus, reason: str | None = None) -> ToolState:
        """Set a tool's state as recorded elsewhere (a store restoring what a user chose)."""
        with self._lock:
            found = self.get(name)
            found.state = ToolState(status, reason)
            return found.state

    def enable(self, name: str) -> ToolState:
        return self.set_state(name, ToolStatus.ENABLED, None)

    def disable(self, name: str, reason: str | None = None) -> ToolState:
        return self.set_state(name, ToolStatus.DISABLED, reason)

    def quarantine(self, name: str, reason: str) -> ToolState:
        if not reason:
            raise ValueError(f"quarantining {name!r} needs a reason")
        return self.set_state(name, ToolStatus.QUARANTINED, reason)

    def state(self, name: str) -> ToolState:
        return self.get(name).state


def _is_async(func: Callable[..., Any]) -> bool:
    """Whether a call of ``func`` returns a coroutine, for the engine to await on its loop
    rather than to call in a thread.

    ``inspect.iscoroutinefunction`` sees through bound methods and partials of functions,
    but not through an object whose ``__call__`` is ``async def`` (a partial of one
    included) nor a bare ``staticmethod``: such a tool took a thread from the pool only
    to make its coroutine. A class's call constructs an instance, whatever its
    instances' ``__call__`` is.
    """
    while isinstance(func, functools.partial | staticmethod):
        func = func.func if isinstance(func, functools.partial) else func.__func__
    if inspect.iscoroutinefunction(func):
        return True
    if isinstance(func, type) or inspect.isroutine(func):
        return False
    return inspect.iscoroutinefunction(type(func).__call__)


def _positive_seconds(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    try:
        return math.isfinite(value) and value > 0
    except OverflowError:  # an integer past the float range
        return False


def _names(tool_name: str, label: str, names: Any) -> tuple[str, ...]:
    """``names`` as a tuple; a lone string would otherwise become its letters."""
    if not isinstance(names, str):
        try:
            found = tuple(names)
        except TypeError:
            found = None
        if found is not None and all(isinstance(n, str) for n in found):
            return found
    raise ToolRegistrationError(f"tool {tool_name!r}: {label} takes a list of names, got {names!r}")
