"""The files and data pack: list and read files, query CSV and JSON, inside one folder only.

A :class:`FileSandbox` is bound to a root folder when the pack is registered. Every path a
tool receives is relative to that root; it is resolved (symbolic links followed, ``..``
folded) and refused unless the result is still inside the root. Absolute paths are refused
outright. Files are opened by their resolved path with ``O_NOFOLLOW`` where the platform
has it, so a link swapped in after the check is not followed either.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import fnmatch
import io
import json
import math
import os
import re
import stat
import urllib.parse
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO, Annotated, Any, Literal

from pydantic import Field
from typing_extensions import TypedDict

from dendrite.tools.builtin._text import BinaryContentError, decode_text, text_codec
from dendrite.tools.builtin.errors import BuiltinToolError, DataError, PathOutsideRootError
from dendrite.tools.registry import Reliability, Tool, ToolRegistry

__all__ = [
    "MAX_LIST_ENTRIES",
    "Aggregation",
    "CsvSelection",
    "FileContent",
    "FileEntry",
    "FileListing",
    "FileSandbox",
    "register_files",
]

MAX_LIST_ENTRIES = 1_000
"""Entries ``list_files`` returns at most (it says when it stopped early)."""

CellValue = str | int | float | bool | None
AggregateOp = Literal["sum", "mean", "min", "max", "count"]
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_BINARY = getattr(os, "O_BINARY", 0)
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
_HOME = re.compile(r"~(?:$|[^/\\]*[/\\])")  # "~", "~/notes", "~bob/x"; not "~notes.txt"
_ARRAY_INDEX = re.compile(r"0|[1-9][0-9]*")
_BAD_ESCAPE = re.compile(r"~(?![01])")
_TRUE = frozenset({"true", "yes", "y", "1", "t"})
_FALSE = frozenset({"false", "no", "n", "0", "f"})


class FileEntry(TypedDict):
    path: str
    type: Literal["file", "directory"]
    size: int | None


class FileListing(TypedDict):
    directory: str
    entries: list[FileEntry]
    truncated: bool


class FileContent(TypedDict):
    path: str
    size: int
    truncated: bool
    encoding: str
    content: str


class CsvSelection(TypedDict):
    columns: list[str]
    rows: list[dict[str, str]]
    matched: int
    truncated: bool


class Aggregation(TypedDict):
    group_by: str
    column: str
    op: str
    groups: dict[str, float | int | None]


def _number_text(cell: str) -> str:
    text = cell.strip()
    return text.replace(",", "") if _THOUSANDS.match(text) else text


def _number(cell: str) -> float | None:
    try:
        value = float(_number_text(cell))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _exact(value: str | int | float) -> Decimal | None:
    """A cell's or a filter's number, exactly: through ``float``, an ID past 2**53 matched
    its neighbours (12345678901234567890 and ...891). A float filter is taken as it reads
    (0.1 is the cell "0.1", not the float's binary value)."""
    if isinstance(value, int):
        return Decimal(value)
    text = repr(value) if isinstance(value, float) else _number_text(value)
    try:
        float(text)  # Python's number syntax: Decimal also takes "_1" and "1__0"
        number = Decimal(text)
    except (ValueError, InvalidOperation):
        return None
    return number if number.is_finite() else None


class _Wanted:
    """A ``where`` value, read once for every row: its number exactly, its text folded."""

    __slots__ = ("folded", "number", "value")

    def __init__(self, value: CellValue) -> None:
        self.value = value
        plain = value is None or isinstance(value, bool)
        self.number = None if plain else _exact(value)  # type: ignore[arg-type]
        self.folded = value.strip().casefold() if isinstance(value, str) else None

    def matches(self, cell: str | None) -> bool:
        text = (cell or "").strip()
        if self.value is None:
            return text == ""
        if isinstance(self.value, bool):
            return text.lower() in (_TRUE if self.value else _FALSE)
        if self.folded is not None and text.casefold() == self.folded:
            return True
        return self.number is not None and _exact(text) == self.number


def _json_type(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if value is None:
        return "null"
    return "a number"


class FileSandbox:
    """File and data tools confined to one folder.

    Args:
        root: the folder the tools may see; it must exist
        max_read_bytes: the largest ``max_bytes`` read_file accepts
        max_data_bytes: the largest JSON file json_select parses
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_read_bytes: int = 10_000_000,
        max_data_bytes: int = 50 * 1024 * 1024,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"files root {str(root)!r} is not a folder")
        self.max_read_bytes = max_read_bytes
        self.max_data_bytes = max_data_bytes

    # -- paths -----------------------------------------------------------------------------

    def resolve(self, path: str) -> Path:
        """The real location of ``path`` (relative to the root), refused if outside it.

        The name as given first (" report.txt" is a name of its own); when nothing has it,
        the name without the whitespace around it ("notes.txt\n", as a model writes it).
        """
        stripped = path.strip()
        exact = self._resolve(path if stripped else ".", path)
        if stripped and stripped != path and not exact.exists():
            return self._resolve(stripped, path)
        return exact

    def _resolve(self, raw: str, path: str) -> Path:
        if "\x00" in raw:
            raise PathOutsideRootError(f"{path!r}: a path cannot contain a NUL character")
        if (
            Path(raw).is_absolute()
            or PurePosixPath(raw).is_absolute()
            or PureWindowsPath(raw).anchor
            or _HOME.match(raw)
        ):
            raise PathOutsideRootError(
                f"{path!r} is an absolute path; paths are relative to the files root "
                "(e.g. 'data/sales.csv')"
            )
        try:
            resolved = (self.root / raw).resolve()
        except (OSError, RuntimeError):  # a symbolic link loop, for one
            raise PathOutsideRootError(
                f"{path!r} cannot be resolved (a loop of symbolic links?)"
            ) from None
        if not resolved.is_relative_to(self.root):
            lexical = os.path.normpath(raw)
            if lexical == ".." or lexical.startswith(".." + os.sep) or lexical.startswith("../"):
                why = "'..' leads out of the files root"
            else:
                why = "a symbolic link on the way points outside the files root"
            raise PathOutsideRootError(f"{path!r} is not allowed: {why}")
        return resolved

    def _inside(self, path: Path) -> bool:
        """Whether ``path`` exists and really lives under the root (links followed)."""
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            return False
        return real.is_relative_to(self.root) and real.exists()

    def _relative(self, resolved: Path) -> str:
        relative = resolved.relative_to(self.root).as_posix()
        return relative if relative != "." else "."

    def _missing(self, path: str, resolved: Path) -> FileNotFoundError:
        parent = resolved.parent
        hint = ""
        if parent.is_dir():
            try:
                siblings = [
                    p.name
                    for p in parent.iterdir()
                    if not p.name.startswith(".") and self._inside(p)
                ]
            except OSError:  # a folder that cannot be listed gives no hint, and no location
                siblings = []
            close = difflib.get_close_matches(resolved.name, siblings, n=3, cutoff=0.6)
            if close:
                hint = f"; did you mean {', '.join(repr(c) for c in close)}?"
        return FileNotFoundError(f"no such file under the files root: {path!r}{hint}")

    def _file(self, path: str) -> Path:
        resolved = self.resolve(path)
        try:
            found = resolved.stat()
        except FileNotFoundError:
            raise self._missing(path, resolved) from None
        except OSError as error:  # a name too long, for one: said without the root's location
            raise BuiltinToolError(f"cannot read {path!r}: {error.strerror or error}") from None
        if stat.S_ISDIR(found.st_mode):
            raise IsADirectoryError(f"{path!r} is a folder; use list_files to see inside it")
        if not stat.S_ISREG(found.st_mode):  # a named pipe would block the reader for ever
            raise BuiltinToolError(f"{path!r} is not a regular file (a pipe, socket or device)")
        return resolved

    def _open(self, resolved: Path) -> IO[bytes]:
        try:
            descriptor = os.open(resolved, os.O_RDONLY | _NOFOLLOW | _BINARY)
        except OSError as error:  # same error class, without the root's real location
            shown = self._relative(resolved)
            raise type(error)(f"cannot open {shown!r}: {error.strerror or error}") from None
        return os.fdopen(descriptor, "rb")

    # -- tools -----------------------------------------------------------------------------

    def list_files(
        self, path: str = ".", pattern: str = "*", recursive: bool = False
    ) -> FileListing:
        """List the files and folders in a folder under the files root.

        Args:
            path: the folder, relative to the files root ("." is the root itself)
            pattern: a shell-style pattern for names, e.g. "*.csv" (case-insensitive); names
                starting with "." are listed only when the pattern starts with "."
            recursive: also list everything in the sub-folders
        """
        base = self.resolve(path)
        if not base.exists():
            raise self._missing(path, base)
        if not base.is_dir():
            raise NotADirectoryError(f"{path!r} is a file, not a folder; use read_file")
        if "/" in pattern or "\\" in pattern:
            raise BuiltinToolError(
                f"pattern {pattern!r} matches names, not paths: give the folder as path= and "
                "set recursive=true for sub-folders"
            )
        wanted = pattern.lower() or "*"
        hidden = wanted.startswith(".")
        entries: list[FileEntry] = []
        truncated = False

        def walk() -> Iterator[Path]:
            if not recursive:
                try:
                    names = sorted(base.iterdir(), key=lambda p: p.name)
                except OSError as error:  # same error class, without the root's real location
                    raise type(error)(f"cannot list {path!r}: {error.strerror or error}") from None
                yield from names
                return
            for folder, subfolders, files in os.walk(base, followlinks=False):
                subfolders.sort()
                if not hidden:
                    subfolders[:] = [d for d in subfolders if not d.startswith(".")]
                for name in sorted(subfolders + files):
                    yield Path(folder, name)

        for entry in walk():
            if entry.name.startswith(".") and not hidden:
                continue
            if not fnmatch.fnmatchcase(entry.name.lower(), wanted):
                continue
            if not self._inside(entry):
                continue  # a link out of the root, or a dangling one: not shown
            if len(entries) >= MAX_LIST_ENTRIES:
                truncated = True
                break
            is_dir = entry.is_dir()
            entries.append(
                {
                    "path": entry.relative_to(self.root).as_posix(),
                    "type": "directory" if is_dir else "file",
                    "size": None if is_dir else entry.stat().st_size,
                }
            )
        return {"directory": self._relative(base), "entries": entries, "truncated": truncated}

    def read_file(
        self, path: str, max_bytes: Annotated[int, Field(ge=1, le=10_000_000)] = 100_000
    ) -> FileContent:
        """Read a text file under the files root.

        Returns its content (UTF-8, or Windows-1252 when it is not UTF-8), its size in bytes
        and whether the content was cut at max_bytes. Binary files are refused.

        Args:
            path: the file, relative to the files root, e.g. "notes/todo.txt"
            max_bytes: the most bytes to read, 1 to 10,000,000
        """
        if max_bytes > self.max_read_bytes:
            raise BuiltinToolError(f"max_bytes may be at most {self.max_read_bytes:,}")
        resolved = self._file(path)
        with self._open(resolved) as handle:
            size = os.fstat(handle.fileno()).st_size
            data = handle.read(max_bytes + 1)
        truncated = len(data) > max_bytes
        data = data[:max_bytes]
        try:
            content, encoding = decode_text(data, final=not truncated)
        except BinaryContentError:
            raise BuiltinToolError(
                f"{path!r} looks binary (it has NUL bytes); read_file reads text files"
            ) from None
        return {
            "path": self._relative(resolved),
            "size": size,
            "truncated": truncated,
            "encoding": encoding,
            "content": content,
        }

    @contextlib.contextmanager
    def _csv(self, path: str) -> Iterator[tuple[list[str], Iterator[tuple[int, dict[str, str]]]]]:
        resolved = self._file(path)
        with self._open(resolved) as raw:
            # The encoding read_file would use, judged from the start; bytes the rest has
            # that it cannot decode become U+FFFD, not an error.
            codec = text_codec(raw.read(65_536), final=False)
            raw.seek(0)
            text = io.TextIOWrapper(raw, encoding=codec, errors="replace", newline="")
            sample = text.read(16_384)
            text.seek(0)
            try:
                dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(
                    sample, delimiters=",;\t|"
                )
            except csv.Error:
                dialect = csv.excel
            reader = csv.reader(text, dialect)
            try:
                header = next(reader, None)
            except csv.Error as error:
                raise DataError(f"{path!r} is not valid CSV: {error}") from None
            if not header:
                raise DataError(f"{path!r} is empty: no header row")
            columns: list[str] = []
            for i, name in enumerate(header):
                name = name.strip() or f"column_{i + 1}"
                unique, n = name, 2
                while unique in columns:
                    unique, n = f"{name}_{n}", n + 1
                columns.append(unique)

            def rows() -> Iterator[tuple[int, dict[str, str]]]:
                try:
                    for row in reader:
                        if not any(cell.strip() for cell in row):
                            continue
                        padded = row + [""] * (len(columns) - len(row))
                        yield reader.line_num, dict(zip(columns, padded, strict=False))
                except csv.Error as error:
                    raise DataError(
                        f"{path!r}: malformed CSV at line {reader.line_num}: {error}"
                    ) from None

            yield columns, rows()

    @staticmethod
    def _column(path: str, columns: list[str], name: str) -> str:
        if name in columns:
            return name
        folded = [c for c in columns if c.casefold() == name.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        close = difflib.get_close_matches(name, columns, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataError(f"{path!r} has no column {name!r}{hint} Columns: {', '.join(columns)}")

    def csv_select(
        self,
        path: str,
        columns: list[str] | None = None,
        where: dict[str, CellValue] | None = None,
        limit: Annotated[int, Field(ge=1, le=10_000)] = 100,
    ) -> CsvSelection:
        """Select rows and columns of a CSV file (the first row names the columns).

        The delimiter (comma, semicolon, tab or |) is detected. Values are returned as
        text, exactly as in the file.

        Args:
            path: the CSV file, relative to the files root
            columns: the columns to return, in this order; default all
            where: equality filters, column -> value; a row is kept when every one matches.
                Text compares without regard to case, numbers numerically ("3" = "3.0"),
                true/false against true/yes/1 and false/no/0, null against empty cells.
            limit: the most rows to return, 1 to 10,000 (matched still counts all)
        """
        with self._csv(path) as (header, rows):
            chosen = [self._column(path, header, c) for c in columns] if columns else header
            filters = [
                (self._column(path, header, c), _Wanted(v)) for c, v in (where or {}).items()
            ]
            selected: list[dict[str, str]] = []
            matched = 0
            for _, row in rows:
                if all(wanted.matches(row.get(c)) for c, wanted in filters):
                    matched += 1
                    if len(selected) < limit:
                        selected.append({c: row.get(c, "") for c in chosen})
        return {
            "columns": chosen,
            "rows": selected,
            "matched": matched,
            "truncated": matched > len(selected),
        }

    def csv_aggregate(self, path: str, group_by: str, column: str, op: AggregateOp) -> Aggregation:
        """Aggregate a CSV column per group: sum, mean, min, max or count.

        Groups are the distinct values of group_by, in order of first appearance. Empty
        cells are skipped; count counts the non-empty cells. Numbers may use thousands
        separators ("1,250.50"). A non-numeric cell in a numeric aggregate is an error
        naming its line.

        Args:
            path: the CSV file, relative to the files root
            group_by: the column whose values form the groups, e.g. "region"
            column: the column to aggregate, e.g. "revenue"
            op: sum, mean, min, max or count
        """
        with self._csv(path) as (header, rows):
            key_column = self._column(path, header, group_by)
            value_column = self._column(path, header, column)
            values: dict[str, list[float]] = {}
            counts: dict[str, int] = {}
            for line, row in rows:
                key = (row.get(key_column) or "").strip()
                cell = (row.get(value_column) or "").strip()
                values.setdefault(key, [])
                counts.setdefault(key, 0)
                if not cell:
                    continue
                counts[key] += 1
                if op == "count":
                    continue
                number = _number(cell)
                if number is None:
                    raise DataError(
                        f"{path!r}: column {value_column!r} has a non-numeric value {cell!r} "
                        f"on line {line}; {op} needs numbers (count does not)"
                    )
                values[key].append(number)
        groups: dict[str, float | int | None] = {}
        for key, numbers in values.items():
            if op == "count":
                groups[key] = counts[key]
            elif op == "sum":
                try:
                    groups[key] = math.fsum(numbers)
                except OverflowError:
                    raise DataError(
                        f"{path!r}: the sum of column {value_column!r} for {key!r} is too "
                        "large for a float"
                    ) from None
            elif not numbers:
                groups[key] = None
            elif op == "mean":
                try:
                    groups[key] = math.fsum(numbers) / len(numbers)
                except OverflowError:  # the sum alone is past the float range (1e308 twice)
                    groups[key] = math.fsum(n / len(numbers) for n in numbers)
            else:
                groups[key] = min(numbers) if op == "min" else max(numbers)
        return {"group_by": key_column, "column": value_column, "op": op, "groups": groups}

    def json_select(self, path: str, pointer: str) -> Any:
        """Return the value a JSON Pointer (RFC 6901) selects in a JSON file.

        "" is the whole document; "/items/0/name" is the name of the first element of
        items; "~1" stands for "/" and "~0" for "~" inside a key. The URI fragment form
        ("#/items/0") is accepted too.

        Args:
            path: the JSON file, relative to the files root
            pointer: the JSON Pointer, e.g. "/config/servers/0/host"
        """
        resolved = self._file(path)
        size = resolved.stat().st_size
        if size > self.max_data_bytes:
            raise DataError(
                f"{path!r} has {size:,} bytes; json_select parses at most {self.max_data_bytes:,}"
            )
        with self._open(resolved) as handle:
            data = handle.read()
        try:
            # JSON is UTF-8, -16 or -32 (RFC 8259); json.loads tells which from the bytes.
            document = json.loads(data)
        except UnicodeDecodeError as error:
            raise DataError(f"{path!r} is not UTF-8 or UTF-16 text: {error}") from None
        except json.JSONDecodeError as error:
            raise DataError(
                f"{path!r} is not valid JSON: {error.msg} at line {error.lineno}, "
                f"column {error.colno}"
            ) from None
        except RecursionError:
            raise DataError(f"{path!r} is nested too deeply to parse") from None
        except ValueError as error:  # an integer of more digits than Python converts
            raise DataError(f"{path!r} cannot be parsed: {str(error).split(';')[0]}") from None
        return resolve_pointer(document, pointer)

    def __repr__(self) -> str:
        return f"FileSandbox({str(self.root)!r})"


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value ``pointer`` (RFC 6901) names in ``document``; :class:`DataError` otherwise."""
    original = pointer
    if pointer.startswith("#"):
        pointer = urllib.parse.unquote(pointer[1:])
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise DataError(
            f"invalid JSON pointer {original!r}: it must be empty or start with '/', "
            "e.g. '/items/0/name'"
        )
    tokens = pointer[1:].split("/")
    current = document
    for depth, raw in enumerate(tokens):
        at = "/" + "/".join(tokens[:depth]) if depth else "the root"
        if _BAD_ESCAPE.search(raw):
            raise DataError(
                f"invalid JSON pointer {original!r}: in {raw!r}, '~' must be followed by "
                "0 (for '~') or 1 (for '/')"
            )
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(current, dict):
            if token not in current:
                keys = ", ".join(repr(k) for k in list(current)[:20]) or "none"
                more = " …" if len(current) > 20 else ""
                raise DataError(
                    f"JSON pointer {original!r}: the object at {at} has no key {token!r} "
                    f"(keys: {keys}{more})"
                )
            current = current[token]
        elif isinstance(current, list):
            if token == "-":
                raise DataError(
                    f"JSON pointer {original!r}: '-' names the element after the last one of "
                    f"the array at {at}, which does not exist"
                )
            if not _ARRAY_INDEX.fullmatch(token):
                raise DataError(
                    f"JSON pointer {original!r}: the array at {at} needs an index (0, 1, …), "
                    f"got {token!r}"
                )
            index = int(token)
            if index >= len(current):
                raise DataError(
                    f"JSON pointer {original!r}: index {index} is out of range; the array at "
                    f"{at} has {len(current)} element(s)"
                )
            current = current[index]
        else:
            raise DataError(
                f"JSON pointer {original!r}: the value at {at} is {_json_type(current)}, "
                f"which has no member {token!r}"
            )
    return current


_TOOLS = ("list_files", "read_file", "csv_select", "csv_aggregate", "json_select")


def register_files(
    registry: ToolRegistry,
    root: FileSandbox | str | os.PathLike[str],
    *,
    replace: bool = False,
) -> list[Tool]:
    """Register the files and data pack, bound to a root folder.

    Tools: list_files, read_file, csv_select, csv_aggregate, json_select.
    """
    sandbox = root if isinstance(root, FileSandbox) else FileSandbox(root)
    tools: list[Tool] = []
    for name in _TOOLS:
        method: Any = getattr(sandbox, name)
        tools.append(
            registry.register_function(
                method,
                name=name,
                reliability=Reliability.HIGH,
                tags=("files", "data"),
                replace=replace,
            )
        )
    return tools
