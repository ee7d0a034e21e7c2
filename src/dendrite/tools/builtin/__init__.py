"""Built-in tool packs: math, text, documents, and files and data.

Each pack is a module of typed, documented functions (or methods bound to a store or a
root folder) and a ``register_<pack>(registry)`` function; :func:`register_builtin`
registers them all::

    from dendrite.tools import ToolRegistry
    from dendrite.tools.builtin import register_builtin

    registry = ToolRegistry()
    register_builtin(registry, docs_root="knowledge/", files_root="data/")

The reference is docs/builtin-tools.md.
"""

from __future__ import annotations

import os

from dendrite.tools.builtin.documents import DocumentStore, register_documents
from dendrite.tools.builtin.errors import (
    BuiltinToolError,
    CalculationError,
    DataError,
    PathOutsideRootError,
    PatternError,
    PatternTooSlowError,
    UnitError,
    UnknownDocumentError,
)
from dendrite.tools.builtin.files import FileSandbox, register_files
from dendrite.tools.builtin.math_tools import register_math
from dendrite.tools.builtin.text_tools import register_text
from dendrite.tools.registry import Tool, ToolRegistry

__all__ = [
    "BuiltinToolError",
    "CalculationError",
    "DataError",
    "DocumentStore",
    "FileSandbox",
    "PathOutsideRootError",
    "PatternError",
    "PatternTooSlowError",
    "UnitError",
    "UnknownDocumentError",
    "register_builtin",
    "register_documents",
    "register_files",
    "register_math",
    "register_text",
]

PathLike = str | os.PathLike[str]


def register_builtin(
    registry: ToolRegistry,
    *,
    docs_root: PathLike | DocumentStore | None = None,
    files_root: PathLike | FileSandbox | None = None,
    replace: bool = False,
) -> list[Tool]:
    """Register every built-in pack; returns the tools registered.

    The math and text packs are always registered. The documents pack needs ``docs_root``
    (a folder to load, or a :class:`DocumentStore`), the files and data pack ``files_root``
    (the only folder its tools may see, or a :class:`FileSandbox`); each is skipped when its
    root is not given.
    """
    tools = register_math(registry, replace=replace) + register_text(registry, replace=replace)
    if docs_root is not None:
        tools += register_documents(registry, docs_root, replace=replace)
    if files_root is not None:
        tools += register_files(registry, files_root, replace=replace)
    return tools
