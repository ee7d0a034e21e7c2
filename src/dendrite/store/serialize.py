"""JSON encoding that never fails on a caller's values.

Tool parameters and results are whatever Python objects a tool took and
returned. Recording them must not fail the run, so values JSON cannot hold
are encoded by a documented fallback instead of raising:

- datetimes, dates and times as ISO 8601 strings; UUIDs, paths and Decimals as strings;
- enums by their value; sets and tuples as lists; bytes as ``{"$bytes": n}``;
- an integer too long for text (Python writes at most 4,300 digits) as ``{"$int_bits": n}``;
- pydantic models and dataclasses as their field dictionaries;
- anything else as ``{"$repr": repr(value), "$type": "module.Class"}``;
- a value that contains itself or is nested too deeply for JSON, whole, as
  ``{"$repr": ..., "$type": ..., "$error": "circular or too deeply nested"}``.

Results larger than the store's ``max_result_bytes`` are replaced by
``{"$truncated": true, "original_bytes": n, "preview": "..."}``.

State values are the exception: a caller reads them back and acts on them,
so an approximation (a ``$repr`` where an object was) would be a silent
change of meaning. ``exact_json`` refuses what JSON cannot hold instead.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import re
import reprlib
from collections.abc import Mapping
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

from dendrite._text import clean_text

REPR_LIMIT = 1000
PREVIEW_CHARS = 2000


def _fallback(value: Any) -> Any:
    """What JSON holds of ``value``; never raises, since recording must not fail a run (a
    value whose ``repr`` or ``model_dump`` raises is named by type and address)."""
    try:
        return _converted(value)
    except Exception as error:
        kind = type(value)
        return {
            "$repr": object.__repr__(value),
            "$type": f"{kind.__module__}.{kind.__qualname__}",
            "$error": f"{type(error).__name__}: {error}"[:REPR_LIMIT],
        }


def _converted(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (UUID, PurePath)):
        return str(value)
    if isinstance(value, Decimal):
        return str(value) if not value.is_finite() else float(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bytes": len(bytes(value))}
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump):
        return model_dump(mode="json")
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    text = repr(value)
    if len(text) > REPR_LIMIT:
        text = text[:REPR_LIMIT] + "..."
    kind = type(value)
    return {"$repr": text, "$type": f"{kind.__module__}.{kind.__qualname__}"}


def _plain(value: Any, path: set[int]) -> Any:
    """What the slow path encodes: keys as strings (``repr`` of those JSON has no form
    for), NaN and infinities as strings (PostgreSQL's JSONB refuses them), integers too
    long for text by their size, and a list or dict that contains itself replaced, where
    it recurs, by a marker: the rest of the value is kept (``path``: the containers
    being walked)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if type(value) is int and value.bit_length() > _SAFE_INT_BITS:
        return _long_int(value)
    if not isinstance(value, (dict, list, tuple)):
        return value
    if id(value) in path:
        return _unencodable(value, "circular: it contains itself")
    path.add(id(value))
    try:
        if isinstance(value, dict):
            return {
                (str(k) if isinstance(k, (str, int, float, bool)) or k is None else repr(k)): (
                    _plain(v, path)
                )
                for k, v in value.items()
            }
        return [_plain(v, path) for v in value]
    finally:
        path.discard(id(value))


_encode_str = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_encode = json.JSONEncoder(default=_fallback, allow_nan=False, separators=(",", ":")).encode


def _c_encoder() -> Any:
    """The stdlib's C encoder, built once with ``_encode``'s settings.

    ``JSONEncoder.encode`` builds a new one on every call, which costs more
    than encoding a typical tool's parameters. Built without a markers dict
    (one shared dict would be unsafe across threads, and an error midway
    would leave it dirty), a circular value ends in ``RecursionError``.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator (e.g. PyPy)
        return None
    encode = make(None, _fallback, _encode_str, None, ":", ",", False, False, False)
    return lambda value: "".join(encode(value, 0))


_fast_encode = _c_encoder() or _encode


# A ``\uXXXX`` escape of a surrogate that is not half of a pair, in encoder output.
_LONE_SURROGATE = re.compile(
    r"\\ud[89ab][0-9a-f]{2}(?!\\ud[c-f][0-9a-f]{2})|(?<!\\ud[89ab][0-9a-f]{2})\\ud[c-f][0-9a-f]{2}"
)


def _storable(text: str) -> str:
    """JSON text every backend keeps as it reads: ``clean_text`` applied to every string
    in it, and a float of 1e16 or more written out in full, with ".0" (PostgreSQL's JSONB
    takes "1e+16" for the integer 10000000000000000 and gives it back as one). Both are
    rarely needed: checked on the text first."""
    if "\\u0000" in text or ("\\ud" in text and _LONE_SURROGATE.search(text)):
        text = _encode(_cleaned(json.loads(text)))
    if "e+" in text:
        text = _LARGE_FLOAT.sub(_in_full, text)
    return text


# A JSON string (skipped whole), or a number with a positive exponent, as repr writes one.
_LARGE_FLOAT = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![\w.])-?\d+(?:\.\d+)?e\+\d+')


def _in_full(match: re.Match[str]) -> str:
    written = match.group(0)
    return written if written.startswith('"') else f"{Decimal(written):f}.0"


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Encode any value as strict JSON text, using the fallbacks of this module."""
    kind = type(value)
    if kind is int:  # the commonest results, without the encoder's set-up
        return str(value) if value.bit_length() <= _SAFE_INT_BITS else _encode(_long_int(value))
    if kind is str:
        return _storable(_encode_str(value))
    if value is None:
        return "null"
    try:
        return _storable(_fast_encode(value))
    except Exception:  # whatever the value's own code raised, the slow path tells
        pass
    try:
        return _storable(_encode(_plain(value, set())))
    except RecursionError:  # nested too deep for JSON, or a cycle through a fallback's value
        return _encode(_unencodable(value, "circular or too deeply nested"))
    except Exception as error:  # a NaN inside what a fallback returned, an items() that raises
        return _encode(_unencodable(value, f"{type(error).__name__}: {error}"[:REPR_LIMIT]))


_SAFE_INT_BITS = 14_000
"""Integers up to this many bits are under 4,300 decimal digits, the most Python turns into
text by default; longer ones are checked one by one (the limit can be changed)."""


def _long_int(value: int) -> Any:
    try:
        str(value)
    except ValueError:
        return {"$int_bits": value.bit_length()}
    return value


def _unencodable(value: Any, why: str) -> dict[str, str]:
    kind = type(value)
    try:
        text = reprlib.repr(value)  # depth-limited, unlike repr()
    except Exception:  # a repr that raises, an integer too long for text
        text = object.__repr__(value)
    return {"$repr": text, "$type": f"{kind.__module__}.{kind.__qualname__}", "$error": why}


def to_jsonable(value: Any) -> Any:
    """The JSON-safe equivalent of ``value`` (what the database will hold)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if type(value) is dict and _flat_json(value):
        return dict(value)  # what encoding and reading it back gives, at a tenth of the cost
    return json.loads(dumps(value))


def _flat_json(value: dict[Any, Any]) -> bool:
    """Whether JSON keeps ``value`` as it is: a dict (a run's metadata, typically) of text
    keys to ``None``, booleans, text, integers and finite floats, its text ASCII without
    NUL (which ``dumps`` would replace), its integers short enough to be written out.
    Floats come back equal, ``-0.0`` and those written in full by ``_storable`` alike."""
    for key, item in value.items():
        if type(key) is not str or not key.isascii() or "\x00" in key:
            return False
        kind = type(item)
        if kind is str:
            if not item.isascii() or "\x00" in item:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is int:
            if item.bit_length() > _SAFE_INT_BITS:
                return False
        elif item is not None and kind is not bool:
            return False
    return True


def dumps_fields(fields: Mapping[str, Any]) -> str:
    """A JSON object whose values are encoded one by one.

    A value JSON cannot hold whole (one that contains itself) becomes its own
    marker, as in the record's column, instead of turning the whole object
    into one: the journal and ``rejected.jsonl`` keep records this way, and a
    record reduced to a marker could not be read back.
    """
    return "{" + ",".join(f"{_encode_str(str(k))}:{dumps(v)}" for k, v in fields.items()) + "}"


def capped(value: Any, max_bytes: int) -> tuple[Any, bool]:
    """``value`` made JSON-safe, or a truncation marker when its encoding exceeds ``max_bytes``."""
    if value is None or isinstance(value, bool):
        return value, False
    if isinstance(value, int) and value.bit_length() <= _SAFE_INT_BITS:
        return value, False
    text, truncated = capped_json(dumps(value), max_bytes)
    return json.loads(text), truncated


def capped_json(text: str, max_bytes: int) -> tuple[str, bool]:
    """JSON text as it is, or the truncation marker when it is over ``max_bytes``."""
    if len(text) * 4 <= max_bytes:  # no UTF-8 character takes more than four bytes
        return text, False
    size = len(text.encode())
    if size <= max_bytes:
        return text, False
    marker = {"$truncated": True, "original_bytes": size, "preview": text[:PREVIEW_CHARS]}
    return dumps(marker), True


def exact_json(value: Any) -> Any:
    """``value`` as JSON holds it, or ``TypeError`` naming the first part JSON cannot hold.

    Only the standard library's own conversions apply (tuples become lists,
    non-string keys strings); none of the fallbacks above, and no NaN or
    infinities, which PostgreSQL's JSONB refuses. Nor two keys that are one as
    text (``1`` and ``"1"``): one of them would be lost.
    """
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        try:
            where, what = _first_non_json(value, "value", set())
        except RecursionError:
            where, what = "value", "is nested too deeply"
        if not where:
            where, what = "value", "cannot be encoded"
        raise TypeError(f"{where} {what}, which JSON cannot hold") from None
    return json.loads(text, object_pairs_hook=_distinct_keys)


def _distinct_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) < len(keys):
        repeated = next(key for key in keys if keys.count(key) > 1)
        raise TypeError(f"value has two keys that are both {repeated!r} as text")
    return dict(pairs)


def _type_name(kind: type) -> str:
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def _first_non_json(value: Any, where: str, seen: set[int]) -> tuple[str, str]:
    """Where in ``value`` JSON fails, and why; ``("", "")`` when nothing there does."""
    if value is None or isinstance(value, (str, bool, int)):
        return "", ""
    if isinstance(value, float):
        return ("", "") if math.isfinite(value) else (where, f"is {value!r}")
    if not isinstance(value, (list, tuple, dict)):
        return where, f"has type {_type_name(type(value))}"
    if id(value) in seen:
        return where, "refers back to itself"
    seen.add(id(value))
    if isinstance(value, dict):
        for key, item in value.items():
            if key is not None and not isinstance(key, (str, int, float, bool)):
                return where, f"has a key of type {_type_name(type(key))}"
            found = _first_non_json(item, f"{where}[{key!r}]", seen)
            if found[0]:
                return found
    else:
        for index, item in enumerate(value):
            found = _first_non_json(item, f"{where}[{index}]", seen)
            if found[0]:
                return found
    seen.discard(id(value))
    return "", ""
