"""Persistent orchestrator state: the ``state_entries`` table and its checks.

Unlike history records, state is read back at once and acted upon, so it is
written synchronously (not through the background writer) and its values
must be exact JSON: a value the store could only approximate is refused
rather than silently changed. The checks live here, apart from the SQL, so
that ``dendrite.state`` can refuse a caller's mistake before it touches the
store, and count only genuine store failures as failures.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Connection, and_, delete, or_, select, text

from dendrite._text import clean_text
from dendrite.store import schema as s
from dendrite.store.engine import by_code_point, dialect_insert
from dendrite.store.errors import InvalidRecordError
from dendrite.store.serialize import exact_json
from dendrite.telemetry.records import named_utc

STATE_SCOPES = ("global", "session", "execution", "step")
MAX_KEY_CHARS = 255
"""The width of ``state_entries.key`` and ``scope_id``; PostgreSQL refuses longer."""


class StateEntry(BaseModel):
    scope: str
    scope_id: str
    key: str
    value: Any
    updated_at: datetime
    expires_at: datetime | None
    """``None``: kept until deleted."""


def check_scope(scope: Any) -> str:
    if not isinstance(scope, str) or scope not in STATE_SCOPES:
        raise InvalidRecordError(
            f"unknown state scope {scope!r}; expected one of {', '.join(STATE_SCOPES)}"
        )
    return str(scope)


def check_scope_id(scope: str, scope_id: Any) -> str:
    """Global state has one namespace; every other scope is per session, run or step."""
    if not isinstance(scope_id, str):
        raise InvalidRecordError(
            f"{scope} state scope id must be a string, got {type(scope_id).__name__}"
        )
    if scope == "global" and scope_id:
        raise InvalidRecordError(f"global state takes no scope id, got {scope_id!r}")
    if scope != "global" and not scope_id:
        raise InvalidRecordError(f"{scope} state needs a scope id (the {_ID_OF[scope]})")
    if len(scope_id) > MAX_KEY_CHARS:
        raise InvalidRecordError(
            f"{scope} state scope id is {len(scope_id)} characters, at most "
            f"{MAX_KEY_CHARS} allowed: {scope_id[:40]!r}..."
        )
    _check_storable(f"{scope} state scope id", scope_id)
    return scope_id


_ID_OF = {
    "session": "session id",
    "execution": "execution id",
    "step": "'<execution id>/<step id>'",
}


def check_key(key: Any) -> str:
    if not isinstance(key, str):
        raise InvalidRecordError(f"state key must be a string, got {type(key).__name__}")
    if not key:
        raise InvalidRecordError("state key must not be empty")
    if len(key) > MAX_KEY_CHARS:
        raise InvalidRecordError(
            f"state key is {len(key)} characters, at most {MAX_KEY_CHARS} allowed: {key[:40]!r}..."
        )
    _check_storable("state key", key)
    return key


def _check_storable(what: str, text: str) -> None:
    """A key is looked up as it is: one the database would store changed (PostgreSQL refuses
    NUL, UTF-8 has no lone surrogates) would be kept in memory only, and lost at the next
    start."""
    if clean_text(text) != text:
        raise InvalidRecordError(
            f"{what} {text[:40]!r} has NUL or a lone surrogate, which no database keeps as it is"
        )


def check_value(key: str, value: Any) -> Any:
    """The value as the database will hold it (tuples as lists, keys as strings)."""
    try:
        stored = exact_json(value)
    except TypeError as error:
        raise InvalidRecordError(
            f"state value for key {key!r} is not JSON-serialisable: {error}"
        ) from None
    if _changes_when_stored(stored):  # read back after a restart, it would differ
        raise InvalidRecordError(
            f"state value for key {key!r} has text with NUL or a lone surrogate, "
            "which no database keeps as it is"
        )
    return stored


def _changes_when_stored(value: Any) -> bool:
    if isinstance(value, str):
        return clean_text(value) != value
    if isinstance(value, dict):
        return any(_changes_when_stored(k) or _changes_when_stored(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_changes_when_stored(item) for item in value)
    return False


def check_expiry(expires_at: Any) -> datetime | None:
    if expires_at is None:
        return None
    if not isinstance(expires_at, datetime):
        raise InvalidRecordError(
            f"state expires_at must be a datetime or None, got {type(expires_at).__name__}"
        )
    return aware("state expires_at", expires_at)


def aware(name: str, moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken as UTC, as everywhere in the store), or an
    error naming ``name`` when no column can hold it (9999-12-31 23:00 at UTC-5)."""
    try:
        return named_utc(name, moment)
    except ValueError as error:
        raise InvalidRecordError(str(error)) from None


def put(
    conn: Connection, scope: str, scope_id: str, key: str, value: Any, expires_at: datetime | None
) -> None:
    table = s.state_entries
    stmt = dialect_insert(conn, table).values(
        scope=scope,
        scope_id=scope_id,
        key=key,
        value=value,
        updated_at=datetime.now(UTC),
        expires_at=expires_at,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[table.c.scope, table.c.scope_id, table.c.key],
            set_={
                "value": stmt.excluded.value,
                "updated_at": stmt.excluded.updated_at,
                "expires_at": stmt.excluded.expires_at,
            },
        )
    )


def locked_value(conn: Connection, scope: str, scope_id: str, key: str) -> Any:
    """The entry's live value (``None`` when there is none or it expired), held until the
    transaction ends: other writers of the entry wait (SQLite: ``BEGIN IMMEDIATE`` holds
    the whole file already; PostgreSQL: an advisory lock per entry, which also covers
    an entry that does not exist yet, where a row lock would have no row to hold)."""
    if conn.dialect.name == "postgresql":
        digest = hashlib.blake2b(f"{scope}\x00{scope_id}\x00{key}".encode(), digest_size=8)
        lock = int.from_bytes(digest.digest(), "big", signed=True)
        conn.execute(text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": lock})
    table = s.state_entries
    row = conn.execute(
        select(table.c.value, table.c.expires_at).where(
            table.c.scope == scope, table.c.scope_id == scope_id, table.c.key == key
        )
    ).first()
    if row is None or (row.expires_at is not None and row.expires_at <= datetime.now(UTC)):
        return None
    return row.value


def entries(
    conn: Connection,
    scope: str | None,
    scope_id: str | None,
    key: str | None,
    include_expired: bool,
) -> list[StateEntry]:
    table = s.state_entries
    query = select(table).order_by(
        *(by_code_point(conn, column) for column in (table.c.scope, table.c.scope_id, table.c.key))
    )
    if scope is not None:
        query = query.where(table.c.scope == scope)
    if scope_id is not None:
        query = query.where(table.c.scope_id == scope_id)
    if key is not None:
        query = query.where(table.c.key == key)
    if not include_expired:
        now = datetime.now(UTC)
        query = query.where(or_(table.c.expires_at.is_(None), table.c.expires_at > now))
    return [StateEntry.model_validate(row._mapping) for row in conn.execute(query)]


def remove(conn: Connection, scope: str, scope_id: str, key: str | None) -> int:
    table = s.state_entries
    where = and_(table.c.scope == scope, table.c.scope_id == scope_id)
    if key is not None:
        where = and_(where, table.c.key == key)
    return conn.execute(delete(table).where(where)).rowcount


def purge_expired(conn: Connection, now: datetime) -> int:
    table = s.state_entries
    return conn.execute(delete(table).where(table.c.expires_at <= now)).rowcount
