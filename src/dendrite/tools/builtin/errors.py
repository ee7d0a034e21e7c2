"""Errors raised by the built-in tools.

They subclass :class:`ValueError`: a refused input fails the same way on every
attempt, so the engine records it as a validation error and does not retry it.
Every message names what was wrong and, where it helps, what would be accepted.
"""

from __future__ import annotations


class BuiltinToolError(ValueError):
    """A built-in tool refused its input; the message says why."""


class CalculationError(BuiltinToolError):
    """An expression ``calculate`` cannot or will not evaluate."""


class UnitError(BuiltinToolError):
    """An unknown, ambiguous or incompatible unit in ``convert_units``."""


class PatternError(BuiltinToolError):
    """A regular expression that does not compile, or an unknown group."""


class PatternTooSlowError(BuiltinToolError):
    """A regular expression that ran past its time bound (catastrophic backtracking)."""


class UnknownDocumentError(BuiltinToolError):
    """A document name that is not loaded (the message lists the loaded ones)."""


class PathOutsideRootError(BuiltinToolError):
    """A path that leaves the files root (``..``, an absolute path, a symlink pointing out)."""


class DataError(BuiltinToolError):
    """A CSV or JSON file, column or pointer the data tools cannot use."""
