"""Orchestrator state in four scopes: global, session, execution and step.

Memory is authoritative for the process: a scope id is read from the store
once, on first use, and never again; a store that fails (down, locked,
refusing) costs persistence, never a run.
Session and global state are written through to the store so that the next
process, or the next run of the same session, finds them; execution and step
state end with the run, so they stay in memory and may hold any object.

Persisted scopes take exact JSON only (``InvalidRecordError`` otherwise), and
keep in memory the value as the store holds it, so that a value reads the
same before and after a restart.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from dendrite.store import ExecutionStore, InvalidRecordError
from dendrite.store import state_entries as checks

log = logging.getLogger("dendrite.state")

RELOAD_AFTER = 30.0
"""Seconds before a scope id whose load from the store failed is tried again."""


class StateScope(StrEnum):
    GLOBAL = "global"
    SESSION = "session"
    EXECUTION = "execution"
    STEP = "step"


PERSISTED_SCOPES = frozenset({StateScope.GLOBAL, StateScope.SESSION})
LOOKUP_ORDER = (StateScope.STEP, StateScope.EXECUTION, StateScope.SESSION, StateScope.GLOBAL)

_MISSING: Any = object()
_FAILED: Any = object()


def _now() -> datetime:
    """The clock for expiry; one function so that tests can move time instead of sleeping."""
    return datetime.now(UTC)


@dataclass(slots=True)
class _Entry:
    value: Any
    expires_at: datetime | None
    in_store: bool
    """Whether the store holds this value (its last write succeeded or it came from there)."""

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


_Pair = tuple[StateScope, str]
ENDED_RUNS_KEPT = 10_000
"""How many ended runs a manager remembers, to refuse their state to tools still running."""


class _CallerError(Exception):
    """An error raised by an ``update``'s change: the caller's, not the store's."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class StateManager:
    """All state of one orchestrator process, optionally backed by an ``ExecutionStore``.

    Thread-safe: tools run in worker threads. Reads take one short lock; store
    writes are serialised by a second lock, so memory and store see writes in
    the same order without making memory-only scopes wait on I/O.
    """

    def __init__(
        self, store: ExecutionStore | None = None, default_ttl: float | None = None
    ) -> None:
        if default_ttl is not None:
            _check_ttl(default_ttl, "default_ttl")
        self.store = store
        self.default_ttl = default_ttl
        self._lock = threading.Lock()
        self._store_lock = threading.RLock()
        self._entries: dict[_Pair, dict[str, _Entry]] = {}
        self._loaded: set[_Pair] = set()
        self._load_failed_at: dict[_Pair, float] = {}
        # Keys set or deleted here while a scope id could not be loaded: a
        # later load must not bring back the store's older value for them.
        self._touched: dict[_Pair, set[str]] = {}
        # Changes ``update`` made here while the store failed, made again on its value later.
        self._unsent: dict[tuple[_Pair, str], list[Callable[[Any], Any]]] = {}
        self._expired_removed = 0
        self._store_read_failures = 0
        self._store_write_failures = 0
        self._last_store_error: str | None = None
        self._store_failing = False
        # Runs whose state ``clear_execution`` removed: a tool still running after its run
        # ended (a sync one that ignored the cancel) must not leave state behind.
        self._ended: OrderedDict[str, None] = OrderedDict()

    # -- public API ------------------------------------------------------------

    def get(
        self, scope: StateScope | str, key: str, default: Any = None, *, scope_id: str = ""
    ) -> Any:
        """The live value, or ``default`` when there is none or it has expired."""
        value = self._lookup(_pair(scope, scope_id), checks.check_key(key))
        return default if value is _MISSING else value

    def set(
        self,
        scope: StateScope | str,
        key: str,
        value: Any,
        *,
        scope_id: str = "",
        ttl: float | None = None,
    ) -> None:
        """Keep ``value`` until deleted, or for ``ttl`` seconds (``default_ttl`` when None;
        never expiring with :data:`FOREVER`, whatever ``default_ttl`` says)."""
        pair = self._open(_pair(scope, scope_id))
        key = checks.check_key(key)
        expires_at = _expiry(self._ttl(ttl))
        if pair[0] in PERSISTED_SCOPES:
            # Checked with or without a store, so that a value that works in a
            # test without one does not fail in production with one.
            value = checks.check_value(key, value)
        entry = _Entry(value, expires_at, False)
        if not self._persists(pair[0]):
            with self._lock:
                self._entries.setdefault(pair, {})[key] = entry
            return
        with self._store_lock:
            self._ensure_loaded(pair)
            with self._lock:
                self._entries.setdefault(pair, {})[key] = entry
                self._touch(pair, key)
            assert self.store is not None
            stored = self._call_store("write", self.store.put_state, *pair, key, value, expires_at)
            if stored is not _FAILED:
                with self._lock:
                    entry.in_store = True

    def _ttl(self, ttl: float | None) -> float | None:
        if ttl is None:
            return self.default_ttl
        return None if ttl == FOREVER else _check_ttl(ttl, "ttl")

    def update(
        self,
        scope: StateScope | str,
        key: str,
        change: Callable[[Any], Any],
        *,
        scope_id: str = "",
        ttl: float | None = None,
    ) -> Any:
        """Set ``key`` to ``change(its value)`` (``None`` when there is none); returns it.

        With a store, the read and the write are one transaction there, against the
        store's value rather than this process's copy: processes adding to one value
        (the health log, the tools' states) would otherwise undo each other's changes.
        Should the store fail, this process's copy is changed instead, and the change
        is kept to be made again on the store's value by the next ``update`` that
        reaches it. An error of ``change`` itself, or a value that is not JSON, is
        the caller's and is raised.
        """
        pair = self._open(_pair(scope, scope_id))
        key = checks.check_key(key)
        expires_at = _expiry(self._ttl(ttl))
        with self._store_lock:
            stored: Any = _FAILED
            if self._persists(pair[0]):
                self._ensure_loaded(pair)
                assert self.store is not None
                changes = [*self._unsent.get((pair, key), ()), change]

                def changed(value: Any) -> Any:
                    try:
                        for each in changes:
                            value = each(value)
                    except Exception as error:
                        raise _CallerError(error) from error
                    return value

                update = self.store.update_state
                try:
                    stored = self._call_store(
                        "write",
                        lambda: (update(*pair, key, changed, expires_at),),
                        passthrough=(_CallerError, InvalidRecordError),
                    )
                except _CallerError as error:
                    raise error.error from None
            if stored is _FAILED:
                value = change(self.get(scope, key, scope_id=scope_id))
                if pair[0] in PERSISTED_SCOPES:
                    value = checks.check_value(key, value)
                if self._persists(pair[0]):
                    self._unsent.setdefault((pair, key), []).append(change)
            else:
                (value,) = stored
                self._unsent.pop((pair, key), None)
            with self._lock:
                self._entries.setdefault(pair, {})[key] = _Entry(
                    value, expires_at, stored is not _FAILED
                )
                if self._persists(pair[0]):
                    self._touch(pair, key)
            return value

    def reread(
        self, scope: StateScope | str, key: str, default: Any = None, *, scope_id: str = ""
    ) -> Any:
        """``get``, after taking the store's current value of ``key`` into this process.

        A scope is read from the store once per process; a value that other processes
        change (a project's policy pinned by hand) needs reading again. This process's
        copy stands while the store fails, or while it holds a change not yet sent.
        """
        pair = _pair(scope, scope_id)
        key = checks.check_key(key)
        if self._persists(pair[0]):
            assert self.store is not None
            with self._store_lock:
                self._ensure_loaded(pair)
                stored = (
                    _FAILED
                    if (pair, key) in self._unsent
                    else self._call_store(
                        "read",
                        self.store.get_state_entries,
                        *pair,
                        key=key,
                        include_expired=True,
                    )
                )
                if stored is not _FAILED:
                    row = stored[0] if stored else None
                    with self._lock:
                        entries = self._entries.setdefault(pair, {})
                        if row is not None:
                            entries[key] = _Entry(row.value, row.expires_at, True)
                        else:
                            entries.pop(key, None)
                        if not entries:
                            del self._entries[pair]
        return self.get(scope, key, default, scope_id=scope_id)

    def delete(self, scope: StateScope | str, key: str, *, scope_id: str = "") -> bool:
        """Remove one entry; True when a live value was there."""
        pair = _pair(scope, scope_id)
        key = checks.check_key(key)
        if not self._persists(pair[0]):
            with self._lock:
                return self._pop(pair, key)
        with self._store_lock:
            self._ensure_loaded(pair)
            with self._lock:
                found = self._pop(pair, key)
                self._touch(pair, key)
            assert self.store is not None
            self._call_store("write", self.store.delete_state, *pair, key)
            return found

    def items(self, scope: StateScope | str, scope_id: str = "") -> dict[str, Any]:
        """A copy of the live entries of one scope id."""
        pair = _pair(scope, scope_id)
        self._ensure_loaded(pair)
        now = _now()
        with self._lock:
            entries = self._entries.get(pair, {})
            return {k: e.value for k, e in entries.items() if not e.expired(now)}

    def clear(self, scope: StateScope | str, scope_id: str = "") -> int:
        """Remove every entry of one scope id; returns how many live ones there were.

        For a finished run prefer ``clear_execution``, which takes its steps' state along.
        """
        pair = _pair(scope, scope_id)
        if not self._persists(pair[0]):
            with self._lock:
                return _live_count(self._entries.pop(pair, {}), _now())
        with self._store_lock:
            self._ensure_loaded(pair)
            with self._lock:
                removed = _live_count(self._entries.pop(pair, {}), _now())
                # Nothing of this scope id may come back from an older load.
                self._loaded.add(pair)
                self._load_failed_at.pop(pair, None)
                self._touched.pop(pair, None)
            assert self.store is not None
            self._call_store("write", self.store.delete_state, *pair)
            return removed

    def clear_execution(self, execution_id: str) -> int:
        """Remove a finished run's execution state and the state of each of its steps.

        Step scope ids are ``<execution_id>/<step_id>``, one per step, so
        clearing the execution scope alone would leave them behind.
        """
        checks.check_scope_id(StateScope.EXECUTION.value, execution_id)
        prefix = f"{execution_id}/"
        now = _now()
        with self._lock:
            self._ended[execution_id] = None
            if len(self._ended) > ENDED_RUNS_KEPT:
                self._ended.popitem(last=False)
            pairs = [
                pair
                for pair in self._entries
                if pair == (StateScope.EXECUTION, execution_id)
                or (pair[0] is StateScope.STEP and pair[1].startswith(prefix))
            ]
            return sum(_live_count(self._entries.pop(pair), now) for pair in pairs)

    def _open(self, pair: _Pair) -> _Pair:
        """``pair``, unless it is the state of a run that has ended (or of one of its steps):
        ``ValueError`` then, in the tool that wrote it after its run was over."""
        scope, scope_id = pair
        if scope in (StateScope.EXECUTION, StateScope.STEP):
            run = scope_id.split("/", 1)[0]
            with self._lock:
                ended = run in self._ended
            if ended:
                raise ValueError(f"{scope.value} state of run {run}: the run has ended")
        return pair

    def cleanup_expired(self) -> int:
        """Remove expired entries from memory and the store; returns how many.

        The store's expired rows are purged whoever wrote them, so that other
        sessions' leftovers go too; a row that was also in memory counts once.
        """
        now = _now()
        with self._store_lock:
            with self._lock:
                removed = 0
                in_store = 0
                for pair in list(self._entries):
                    entries = self._entries[pair]
                    for key in [k for k, e in entries.items() if e.expired(now)]:
                        in_store += entries.pop(key).in_store
                        removed += 1
                    if not entries:
                        del self._entries[pair]
            if self.store is not None:
                purged = self._call_store("write", self.store.purge_expired_state, now)
                if purged is not _FAILED:
                    removed += max(0, purged - in_store)
        with self._lock:
            self._expired_removed += removed
        return removed

    def get_state_summary(self) -> dict[str, Any]:
        """Counts for inspection (``/system/status``, the CLI): never the values themselves."""
        now = _now()
        with self._lock:
            scopes: dict[str, dict[str, Any]] = {}
            for scope in StateScope:
                live = {
                    pair[1]: _live_count(entries, now)
                    for pair, entries in self._entries.items()
                    if pair[0] is scope
                }
                scopes[scope.value] = {
                    "entries": sum(live.values()),
                    "scope_ids": sum(1 for n in live.values() if n),
                    "persisted": self._persists(scope),
                }
            return {
                "scopes": scopes,
                "store": self.store is not None,
                "default_ttl": self.default_ttl,
                "expired_removed": self._expired_removed,
                "store_write_failures": self._store_write_failures,
                "store_read_failures": self._store_read_failures,
                "last_store_error": self._last_store_error,
            }

    # -- internals -------------------------------------------------------------

    def _persists(self, scope: StateScope) -> bool:
        return self.store is not None and scope in PERSISTED_SCOPES

    def _lookup(self, pair: _Pair, key: str) -> Any:
        self._ensure_loaded(pair)
        with self._lock:
            entry = self._entries.get(pair, {}).get(key)
            if entry is None or entry.expired(_now()):
                return _MISSING
            return entry.value

    def _pop(self, pair: _Pair, key: str) -> bool:
        """Under ``_lock``: remove one entry, True when it was live."""
        entries = self._entries.get(pair)
        if entries is None or key not in entries:
            return False
        entry = entries.pop(key)
        if not entries:
            del self._entries[pair]
        return not entry.expired(_now())

    def _touch(self, pair: _Pair, key: str) -> None:
        """Under ``_lock``."""
        if pair not in self._loaded:
            self._touched.setdefault(pair, set()).add(key)

    def _ensure_loaded(self, pair: _Pair) -> None:
        """Bring a persisted scope id's entries from the store, once per process."""
        if not self._persists(pair[0]) or pair in self._loaded:
            return
        failed_at = self._load_failed_at.get(pair)
        if failed_at is not None and time.monotonic() - failed_at < RELOAD_AFTER:
            return
        with self._store_lock:
            if pair in self._loaded:
                return
            assert self.store is not None
            stored = self._call_store(
                "read", self.store.get_state_entries, *pair, include_expired=True
            )
            with self._lock:
                if stored is _FAILED:
                    self._load_failed_at[pair] = time.monotonic()
                    return
                touched = self._touched.pop(pair, set())
                entries = self._entries.setdefault(pair, {})
                for row in stored:
                    if row.key not in touched and row.key not in entries:
                        entries[row.key] = _Entry(row.value, row.expires_at, True)
                if not entries:
                    del self._entries[pair]
                self._loaded.add(pair)
                self._load_failed_at.pop(pair, None)

    def _call_store(
        self,
        kind: str,
        method: Callable[..., Any],
        *args: Any,
        passthrough: tuple[type[BaseException], ...] = (),
        **kwargs: Any,
    ) -> Any:
        """Call the store; on any failure log, count, and return ``_FAILED`` instead of raising.

        Success returns what the store returned, or True where that is None. Errors of
        the ``passthrough`` types are the caller's, not the store's, and are raised.
        """
        try:
            result = method(*args, **kwargs)
        except passthrough:
            raise
        except Exception as error:
            text = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            with self._lock:
                if kind == "read":
                    self._store_read_failures += 1
                else:
                    self._store_write_failures += 1
                self._last_store_error = text
                first = not self._store_failing
                self._store_failing = True
            # One warning per outage, not one per call while it lasts.
            (log.warning if first else log.debug)(
                "state store %s failed (%s); keeping state in memory only", kind, text
            )
            return _FAILED
        if self._store_failing:
            with self._lock:
                self._store_failing = False
            log.info("state store answers again")
        return True if result is None else result


class StateView:
    """What a tool sees as ``ctx.state``: its run's scopes, addressed by name only.

    Reads without a scope search the narrowest scope first (step, execution,
    session, global), so a step can shadow a wider default without changing it.
    """

    def __init__(
        self,
        manager: StateManager,
        *,
        session_id: str | None,
        execution_id: str,
        step_id: str | None,
    ) -> None:
        if not isinstance(execution_id, str) or not execution_id:
            raise ValueError("a state view needs the execution id of its run")
        self.manager = manager
        self.session_id = session_id or None
        self.execution_id = execution_id
        self.step_id = step_id or None

    def get(self, key: str, default: Any = None, scope: StateScope | str | None = None) -> Any:
        if scope is not None:
            return self.manager.get(scope, key, default, scope_id=self._scope_id(scope))
        key = checks.check_key(key)
        for each in LOOKUP_ORDER:
            scope_id = self._scope_id_or_none(each)
            if scope_id is None:
                continue
            value = self.manager._lookup((each, scope_id), key)
            if value is not _MISSING:
                return value
        return default

    def set(
        self,
        key: str,
        value: Any,
        scope: StateScope | str = "execution",
        ttl: float | None = None,
    ) -> None:
        self.manager.set(scope, key, value, scope_id=self._scope_id(scope), ttl=ttl)

    def delete(self, key: str, scope: StateScope | str = "execution") -> bool:
        return self.manager.delete(scope, key, scope_id=self._scope_id(scope))

    def _scope_id(self, scope: StateScope | str) -> str:
        found = self._scope_id_or_none(_scope(scope))
        if found is None:
            if _scope(scope) is StateScope.SESSION:
                raise ValueError("session state needs a session id, and this run has none")
            raise ValueError("step state needs a step id, and this view belongs to no step")
        return found

    def _scope_id_or_none(self, scope: StateScope) -> str | None:
        if scope is StateScope.GLOBAL:
            return ""
        if scope is StateScope.SESSION:
            return self.session_id
        if scope is StateScope.EXECUTION:
            return self.execution_id
        return f"{self.execution_id}/{self.step_id}" if self.step_id else None


def _scope(scope: StateScope | str) -> StateScope:
    return StateScope(checks.check_scope(scope))


def _pair(scope: StateScope | str, scope_id: str) -> _Pair:
    resolved = _scope(scope)
    return resolved, checks.check_scope_id(resolved.value, scope_id)


FOREVER = math.inf
"""``ttl=FOREVER``: the value never expires, whatever the manager's ``default_ttl``. What
Dendrite itself keeps (the tools' saved states, the health log, quality policies) must not
lapse with a TTL meant for the state that tools and sessions keep."""


def _check_ttl(ttl: Any, name: str) -> float:
    if (
        isinstance(ttl, bool)
        or not isinstance(ttl, (int, float))
        or not math.isfinite(ttl)
        or ttl <= 0
    ):
        raise ValueError(f"{name} must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


def _expiry(ttl: float | None) -> datetime | None:
    if ttl is None:
        return None
    try:
        return _now() + timedelta(seconds=ttl)
    except OverflowError:
        raise ValueError(f"ttl of {ttl} seconds reaches past the year 9999") from None


def _live_count(entries: dict[str, _Entry], now: datetime) -> int:
    return sum(1 for e in entries.values() if not e.expired(now))
