"""Errors the store raises to its callers, each naming what was wrong."""

from __future__ import annotations

from pydantic import ValidationError


class StoreError(Exception):
    """Base class of every error raised by ``dendrite.store``."""


class InvalidRecordError(StoreError, ValueError):
    """A record was refused before it was queued; nothing was written."""

    @classmethod
    def from_validation(cls, kind: str, error: ValidationError) -> InvalidRecordError:
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"]) or kind
            got = item.get("input")
            shown = repr(got) if len(repr(got)) <= 80 else repr(got)[:77] + "..."
            problems.append(f"{where}: {item['msg']} (got {shown})")
        return cls(f"invalid {kind}: " + "; ".join(problems))


class UnknownExecutionError(StoreError, LookupError):
    """A record refers to an execution the store has never seen."""

    def __init__(self, execution_id: str) -> None:
        super().__init__(f"no execution with id {execution_id!r} in this store")
        self.execution_id = execution_id


class StoreUnavailableError(StoreError):
    """The database cannot be reached for a read; writes keep going to the journal."""


class SchemaError(StoreError):
    """The database's schema is not one this version of Dendrite can use as it is."""


def driver_message(error: BaseException) -> str:
    """The first line of what the database driver said (SQLAlchemy keeps it as ``orig``):
    the rest is SQLAlchemy's statement and a link, noise in a one-line message."""
    return (str(getattr(error, "orig", None) or error).splitlines() or [""])[0]


def worth_a_traceback(error: BaseException) -> bool:
    """Whether a log line about ``error`` should carry its traceback: not for a database
    that is down, a state the store expects and names in its message (a server started
    while the database was down logged two dozen tracebacks in its first seconds)."""
    return not isinstance(error, StoreUnavailableError)
