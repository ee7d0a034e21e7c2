"""JSON encoding that never fails on a caller's values.

Tool parameters and results are whatever Python objects a tool took and
returned. Recording them must not fail the run, so values JSON cannot hold
are encoded by a documented fallback instead of raising:

- datetimes, dates and times as ISO 8601 strings; UUIDs, paths and Decimals as strings;
- enums by their value; sets and tuples as lists; bytes as ``{"$bytes": n}``;
- pydantic models and dataclasses as their field dictionaries;
- anything else as ``{"$repr": repr(value), "$type": "module.Class"}``.

Results larger than the store's ``max_result_bytes`` are replaced by
``{"$truncated": true, "original_bytes": n, "preview": "..."}``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import Any
from uuid import UUID

REPR_LIMIT = 1000
PREVIEW_CHARS = 2000


def _fallback(value: Any) -> Any:
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


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON (PostgreSQL's JSONB refuses them): store them as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """Encode any value as strict JSON text, using the fallbacks of this module."""
    try:
        return json.dumps(value, default=_fallback, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(value), default=_fallback, allow_nan=False, separators=(",", ":"))
    except TypeError:
        # Non-string dict keys that json cannot coerce (e.g. tuples).
        return json.dumps(
            _finite(_stringify_keys(value)),
            default=_fallback,
            allow_nan=False,
            separators=(",", ":"),
        )


def _stringify_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            (k if isinstance(k, (str, int, float, bool)) or k is None else repr(k)): (
                _stringify_keys(v)
            )
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [_stringify_keys(v) for v in value]
    return value


def to_jsonable(value: Any) -> Any:
    """The JSON-safe equivalent of ``value`` (what the database will hold)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    return json.loads(dumps(value))


def capped(value: Any, max_bytes: int) -> tuple[Any, bool]:
    """``value`` made JSON-safe, or a truncation marker when its encoding exceeds ``max_bytes``."""
    if value is None or isinstance(value, (bool, int)):
        return value, False
    text = dumps(value)
    size = len(text.encode())
    if size <= max_bytes:
        return json.loads(text), False
    return {"$truncated": True, "original_bytes": size, "preview": text[:PREVIEW_CHARS]}, True
