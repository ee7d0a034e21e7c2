"""State scopes: the store's ``state_entries`` API on both backends, the manager and the view.

Expiry is tested by moving ``dendrite.state._now`` or by passing explicit
times to the store, never by sleeping and timing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect

from dendrite import Orchestrator, OrchestratorConfig
from dendrite import state as state_module
from dendrite.state import FOREVER, StateManager, StateScope, StateView
from dendrite.store import (
    ExecutionStore,
    InvalidRecordError,
    StateEntry,
    StoreUnavailableError,
    migrate,
)
from dendrite.store.state_entries import STATE_SCOPES
from dendrite.tools import ToolRegistry

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(state_module, "_now", fake)
    return fake


@pytest.fixture
def dead_store(tmp_path: Path) -> Iterator[ExecutionStore]:
    """A store whose PostgreSQL server is not there: it starts anyway (and journals history)."""
    store = ExecutionStore(
        "postgresql+psycopg://postgres@127.0.0.1:1/none", state_dir=tmp_path / "d"
    )
    yield store
    store.close()


def _keys(entries: list[StateEntry]) -> list[tuple[str, str, str]]:
    return [(e.scope, e.scope_id, e.key) for e in entries]


# -- the store ----------------------------------------------------------------


def test_scopes_are_the_same_in_the_store_and_the_manager():
    assert tuple(StateScope) == STATE_SCOPES


def test_put_get_replace_and_delete_round_trip(store: ExecutionStore):
    value = {"nested": {"list": [1, 2.5, "três", None, True]}, "empty": {}, "pair": (1, 2)}
    store.put_state("global", "", "config", value)
    store.put_state("global", "", "nothing", None)
    store.put_state("session", "s1", "a", 1)
    store.put_state("session", "s1", "b", "two")
    store.put_state("session", "s2", "a", [3])
    store.put_state(StateScope.EXECUTION, "e1", "x", 0.1)

    assert inspect(store.engine).has_table("state_entries")
    everything = store.get_state_entries()
    assert _keys(everything) == [
        ("execution", "e1", "x"),
        ("global", "", "config"),
        ("global", "", "nothing"),
        ("session", "s1", "a"),
        ("session", "s1", "b"),
        ("session", "s2", "a"),
    ]
    by_key = {(e.scope, e.scope_id, e.key): e for e in everything}
    # Exactly what JSON holds: the tuple comes back as a list, None as None.
    assert by_key["global", "", "config"].value == {**value, "pair": [1, 2]}
    assert by_key["global", "", "nothing"].value is None
    assert by_key["execution", "e1", "x"].value == 0.1
    assert all(e.expires_at is None and e.updated_at.tzinfo is not None for e in everything)

    assert _keys(store.get_state_entries("session")) == [
        ("session", "s1", "a"),
        ("session", "s1", "b"),
        ("session", "s2", "a"),
    ]
    assert _keys(store.get_state_entries("session", "s1")) == [
        ("session", "s1", "a"),
        ("session", "s1", "b"),
    ]
    assert _keys(store.get_state_entries(scope_id="s2")) == [("session", "s2", "a")]
    assert _keys(store.get_state_entries("session", key="a")) == [
        ("session", "s1", "a"),
        ("session", "s2", "a"),
    ]
    assert store.get_state_entries("session", "s1", key="c") == []

    first = by_key["session", "s1", "a"]
    expiry = T0 + timedelta(days=1)
    store.put_state("session", "s1", "a", {"replaced": True}, expires_at=expiry)
    (again,) = [e for e in store.get_state_entries("session", "s1") if e.key == "a"]
    assert again.value == {"replaced": True}
    assert again.expires_at == expiry
    assert again.updated_at >= first.updated_at
    store.put_state("session", "s1", "a", "kept", expires_at=None)
    (again,) = [e for e in store.get_state_entries("session", "s1") if e.key == "a"]
    assert again.value == "kept" and again.expires_at is None

    assert store.delete_state("session", "s1", "a") == 1
    assert store.delete_state("session", "s1", "a") == 0
    assert store.delete_state("session", "s1") == 1
    assert store.delete_state("global", "") == 2
    assert _keys(store.get_state_entries()) == [("execution", "e1", "x"), ("session", "s2", "a")]


def test_state_outlives_the_store_object(store_url: str, tmp_path: Path):
    with ExecutionStore(store_url, state_dir=tmp_path / "a") as first:
        first.put_state("session", "s1", "k", {"v": 1})
    with ExecutionStore(store_url, state_dir=tmp_path / "a") as second:
        assert [e.value for e in second.get_state_entries("session", "s1")] == [{"v": 1}]


def test_expired_entries_are_hidden_and_purged(store: ExecutionStore):
    now = datetime.now(UTC)
    store.put_state("global", "", "forever", 1)
    store.put_state("global", "", "past", 2, expires_at=now - timedelta(hours=1))
    store.put_state("session", "s", "naive_past", 3, expires_at=datetime(2000, 1, 1))
    store.put_state("session", "s", "future", 4, expires_at=now + timedelta(days=1))
    store.put_state("session", "s", "far", 5, expires_at=now + timedelta(days=10))

    assert sorted(e.key for e in store.get_state_entries()) == ["far", "forever", "future"]
    every = store.get_state_entries(include_expired=True)
    assert len(every) == 5
    naive = next(e for e in every if e.key == "naive_past")
    assert naive.expires_at == datetime(2000, 1, 1, tzinfo=UTC)  # naive is taken as UTC

    assert store.purge_expired_state() == 2
    assert store.purge_expired_state() == 0
    # An explicit moment: the entry expiring exactly then goes too.
    assert store.purge_expired_state(now + timedelta(days=1)) == 1
    assert store.purge_expired_state(now + timedelta(days=100)) == 1
    assert [e.key for e in store.get_state_entries(include_expired=True)] == ["forever"]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda st: st.put_state("galactic", "", "k", 1), "unknown state scope 'galactic'"),
        (lambda st: st.put_state("global", "x", "k", 1), "global state takes no scope id"),
        (lambda st: st.put_state("session", "", "k", 1), "session state needs a scope id"),
        (lambda st: st.put_state("step", "", "k", 1), "step state needs a scope id"),
        (lambda st: st.put_state("session", "s", "", 1), "state key must not be empty"),
        (lambda st: st.put_state("session", "s", 7, 1), "state key must be a string, got int"),
        (lambda st: st.put_state("session", "s", "k" * 256, 1), "256 characters, at most 255"),
        (
            lambda st: st.put_state("session", "s", "when", {"at": datetime(2030, 1, 1)}),
            r"key 'when' is not JSON-serialisable: value\['at'\] has type datetime.datetime",
        ),
        (
            lambda st: st.put_state("session", "s", "obj", [object()]),
            r"key 'obj' is not JSON-serialisable: value\[0\] has type object",
        ),
        (
            lambda st: st.put_state("global", "", "n", float("nan")),
            "key 'n' is not JSON-serialisable: value is nan",
        ),
        (
            lambda st: st.put_state("global", "", "s", {1, 2}),
            "key 's' is not JSON-serialisable: value has type set",
        ),
        (
            lambda st: st.put_state("global", "", "k", 1, expires_at=3600),
            "expires_at must be a datetime or None, got int",
        ),
        # What the database would keep changed: read back after a restart, it would differ.
        (
            lambda st: st.put_state("global", "", "k", {"a": ["x\x00y"]}),
            "key 'k' has text with NUL or a lone surrogate",
        ),
        (
            lambda st: st.put_state("global", "", "k", {"\ud800": 1}),
            "key 'k' has text with NUL or a lone surrogate",
        ),
        (
            lambda st: st.put_state("global", "", "k", {1: "a", "1": "b"}),
            "key 'k' is not JSON-serialisable: value has two keys that are both '1' as text",
        ),
        (lambda st: st.put_state("global", "", "a\x00b", 1), "has NUL or a lone surrogate"),
        (
            lambda st: st.put_state("session", "s\udc00", "k", 1),
            "session state scope id '.*' has NUL or a lone surrogate",
        ),
        (lambda st: st.get_state_entries("nope"), "unknown state scope 'nope'"),
        (lambda st: st.get_state_entries("global", key=""), "state key must not be empty"),
        (lambda st: st.delete_state("session", "s", ""), "state key must not be empty"),
        (lambda st: st.delete_state("global", "g"), "global state takes no scope id"),
        (lambda st: st.purge_expired_state(now=0), "now must be a datetime"),
    ],
)
def test_bad_state_input_is_refused_by_name(store: ExecutionStore, call: Any, message: str):
    with pytest.raises(InvalidRecordError, match=message):
        call(store)
    assert store.get_state_entries(include_expired=True) == []


def test_state_table_comes_and_goes_with_its_migration(store: ExecutionStore):
    assert migrate.head_revision() == "0007"
    migrate.downgrade(store.engine, "0002")
    assert not inspect(store.engine).has_table("state_entries")
    problems = migrate.validate(store.engine)
    assert problems[0] == "schema revision is 0002, the code expects 0007"
    assert "missing table state_entries" in problems
    migrate.upgrade(store.engine)
    assert migrate.validate(store.engine) == []
    store.put_state("global", "", "k", "back")
    assert [e.value for e in store.get_state_entries()] == ["back"]


# -- the manager ---------------------------------------------------------------


def test_every_method_without_a_store():
    manager = StateManager()
    manager.set("global", "g", 1)
    manager.set(StateScope.SESSION, "s", {"a": 1}, scope_id="sess")
    manager.set("execution", "e", object, scope_id="run")  # memory only: any object
    manager.set("step", "p", [1], scope_id="run/step1")

    assert manager.get("global", "g") == 1
    assert manager.get("session", "s", scope_id="sess") == {"a": 1}
    assert manager.get("execution", "e", scope_id="run") is object
    assert manager.get("session", "s", "dflt", scope_id="other") == "dflt"
    assert manager.items("step", "run/step1") == {"p": [1]}
    assert manager.items("session", "nobody") == {}

    assert manager.delete("global", "g") is True
    assert manager.delete("global", "g") is False
    assert manager.get("global", "g", "gone") == "gone"
    manager.set("execution", "f", 2, scope_id="run")
    assert manager.clear("execution", "run") == 2
    assert manager.items("execution", "run") == {}

    summary = manager.get_state_summary()
    assert summary["store"] is False
    assert summary["scopes"]["session"] == {"entries": 1, "scope_ids": 1, "persisted": False}
    assert summary["scopes"]["step"] == {"entries": 1, "scope_ids": 1, "persisted": False}
    assert summary["scopes"]["execution"]["entries"] == 0
    assert summary["store_write_failures"] == summary["store_read_failures"] == 0


def test_clear_execution_takes_its_steps_along():
    manager = StateManager()
    manager.set("execution", "a", 1, scope_id="run")
    manager.set("step", "b", 2, scope_id="run/s1")
    manager.set("step", "c", 3, scope_id="run/s2")
    manager.set("step", "d", 4, scope_id="run2/s1")
    manager.set("execution", "e", 5, scope_id="run2")
    assert manager.clear_execution("run") == 3
    assert manager.items("step", "run/s1") == {} and manager.items("execution", "run") == {}
    assert manager.items("step", "run2/s1") == {"d": 4}
    assert manager.items("execution", "run2") == {"e": 5}
    with pytest.raises(ValueError, match="execution state needs a scope id"):
        manager.clear_execution("")


def test_a_run_that_has_ended_takes_no_more_state():
    """A sync tool that ignored its run's cancel and wrote execution or step state after
    the run ended left it behind for good: the run's clear had already happened."""
    manager = StateManager()
    manager.set("step", "b", 2, scope_id="run/s1")
    manager.clear_execution("run")
    for scope, scope_id in (("execution", "run"), ("step", "run/s1"), ("step", "run/s9")):
        with pytest.raises(ValueError, match="state of run run: the run has ended"):
            manager.set(scope, "late", 1, scope_id=scope_id)
        with pytest.raises(ValueError, match="the run has ended"):
            manager.update(scope, "late", lambda v: 1, scope_id=scope_id)
    manager.set("execution", "fine", 1, scope_id="running")  # other runs are not affected
    assert manager.get_state_summary()["scopes"]["step"]["entries"] == 0
    assert manager.items("execution", "running") == {"fine": 1}


def test_session_and_global_persist_execution_and_step_do_not(store_url: str, tmp_path: Path):
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        first = StateManager(store)
        first.set("global", "model", "small")
        first.set("session", "user", {"name": "ada"}, scope_id="sess-1")
        first.set("session", "pair", (1, 2), scope_id="sess-1")
        first.set("execution", "tmp", 1, scope_id="run-1")
        first.set("step", "tmp", 2, scope_id="run-1/a")
        # Persisted scopes keep what the store keeps, so reads match across processes.
        assert first.get("session", "pair", scope_id="sess-1") == [1, 2]
        assert {e.scope for e in store.get_state_entries()} == {"global", "session"}
        summary = first.get_state_summary()
        assert summary["scopes"]["global"]["persisted"] is True
        assert summary["scopes"]["session"]["persisted"] is True
        assert summary["scopes"]["execution"]["persisted"] is False
        assert summary["store_write_failures"] == 0

    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        second = StateManager(store)
        assert second.get("global", "model") == "small"
        assert second.items("session", "sess-1") == {"user": {"name": "ada"}, "pair": [1, 2]}
        assert second.get("execution", "tmp", scope_id="run-1") is None
        assert second.get("step", "tmp", scope_id="run-1/a") is None

        assert second.delete("session", "user", scope_id="sess-1") is True
        second.set("global", "model", "large")
        assert second.clear("session", "sess-1") == 1
        third = StateManager(store)
        assert third.get("global", "model") == "large"
        assert third.items("session", "sess-1") == {}


def test_a_scope_id_is_loaded_once_and_local_writes_win(store: ExecutionStore):
    store.put_state("session", "s", "a", "stored a")
    store.put_state("session", "s", "b", "stored b")
    manager = StateManager(store)
    manager.set("session", "a", "local a", scope_id="s")
    assert manager.items("session", "s") == {"a": "local a", "b": "stored b"}
    # Later changes by someone else are not seen: memory is authoritative once loaded.
    store.put_state("session", "s", "c", "late")
    assert manager.get("session", "c", scope_id="s") is None


def test_reread_takes_another_process_s_change_of_one_key(store: ExecutionStore):
    manager = StateManager(store)
    manager.set("global", "policy", {"min": 0.5})
    manager.set("global", "other", 1)
    store.put_state("global", "", "policy", {"min": 0.9})  # another process's change
    store.put_state("global", "", "other", 2)
    assert manager.get("global", "policy") == {"min": 0.5}
    assert manager.reread("global", "policy") == {"min": 0.9}
    assert manager.get("global", "other") == 1  # only the key asked for is read again
    store.delete_state("global", "", "policy")
    assert manager.reread("global", "policy", "gone") == "gone"
    assert manager.reread("execution", "k", "none", scope_id="run-1") == "none"  # in memory


def test_ttl_hides_then_cleanup_removes_from_memory_and_store(store: ExecutionStore, clock: Clock):
    manager = StateManager(store)
    manager.set("session", "short", 1, scope_id="s", ttl=10)
    manager.set("session", "long", 2, scope_id="s", ttl=1000)
    manager.set("global", "forever", 3)
    manager.set("execution", "short", 4, scope_id="run", ttl=10)
    # Someone else's expired row, never loaded here: cleanup purges it too.
    store.put_state("session", "other", "old", 5, expires_at=T0 + timedelta(seconds=5))

    clock.advance(9)
    assert manager.get("session", "short", scope_id="s") == 1
    clock.advance(2)
    assert manager.get("session", "short", "expired", scope_id="s") == "expired"
    assert manager.get("execution", "short", scope_id="run") is None
    assert manager.items("session", "s") == {"long": 2}
    assert manager.delete("session", "short", scope_id="s") is False
    manager.set("session", "short", 1, scope_id="s", ttl=10)
    assert manager.get_state_summary()["scopes"]["session"]["entries"] == 2

    clock.advance(11)
    assert manager.cleanup_expired() == 3  # session short, execution short, the other's row
    assert manager.cleanup_expired() == 0
    keys = [(e.scope_id, e.key) for e in store.get_state_entries(include_expired=True)]
    assert sorted(keys) == [("", "forever"), ("s", "long")]
    summary = manager.get_state_summary()
    assert summary["expired_removed"] == 3
    assert summary["scopes"]["session"] == {"entries": 1, "scope_ids": 1, "persisted": True}
    assert summary["scopes"]["execution"]["entries"] == 0


def test_default_ttl_and_expired_rows_are_not_loaded_back(store: ExecutionStore, clock: Clock):
    manager = StateManager(store, default_ttl=60)
    manager.set("session", "k", "v", scope_id="s")
    manager.set("session", "pinned", "v", scope_id="s", ttl=3600)
    (row,) = [e for e in store.get_state_entries("session", "s") if e.key == "k"]
    assert row.expires_at == T0 + timedelta(seconds=60)
    clock.advance(61)
    fresh = StateManager(store)
    assert fresh.get("session", "k", scope_id="s") is None
    assert fresh.items("session", "s") == {"pinned": "v"}


def test_what_dendrite_keeps_for_ever_outlives_the_default_ttl(store: ExecutionStore, clock: Clock):
    """With ``state_ttl`` set, a tool disabled by hand (and the health log, the quality
    policies) expired with it, and the next process used the tool again."""
    manager = StateManager(store, default_ttl=60)
    manager.set("global", "kept", 1, ttl=FOREVER)
    manager.update("global", "log", lambda now: [*(now or []), "x"], ttl=FOREVER)
    manager.set("global", "lapses", 2)
    clock.advance(61)
    assert StateManager(store).items("global") == {"kept": 1, "log": ["x"]}

    def registry() -> ToolRegistry:
        tools = ToolRegistry()
        tools.register_function(lambda query: query, name="search_index")
        return tools

    config = OrchestratorConfig(state_ttl=60)
    with Orchestrator(registry(), store=store, config=config, llm=None) as orch:
        orch.set_tool_status("search_index", "disabled", "broken: do not use")
    store.flush()
    clock.advance(61)
    with Orchestrator(registry(), store=store, config=config, llm=None) as orch:
        assert orch.registry.state("search_index").status.value == "disabled"


def test_state_view_searches_step_execution_session_global(store: ExecutionStore):
    manager = StateManager(store)
    view = StateView(manager, session_id="sess", execution_id="run", step_id="s1")
    view.set("k", "global", scope="global")
    view.set("k", "session", scope=StateScope.SESSION)
    view.set("k", "execution")  # the default scope
    view.set("k", "step", scope="step")
    assert manager.get("step", "k", scope_id="run/s1") == "step"
    assert manager.get("execution", "k", scope_id="run") == "execution"

    assert view.get("k") == "step"
    assert view.get("k", scope="session") == "session"
    assert view.delete("k", scope="step") is True
    assert view.get("k") == "execution"
    assert view.delete("k") is True
    assert view.get("k") == "session"
    assert view.delete("k", scope="session") is True
    assert view.get("k") == "global"
    assert view.delete("k", scope="global") is True
    assert view.get("k", "none") == "none"

    # A falsy value is a hit, not a miss.
    view.set("zero", 0, scope="step")
    view.set("zero", 1, scope="global")
    assert view.get("zero") == 0

    sibling = StateView(manager, session_id="sess", execution_id="run", step_id="s2")
    assert sibling.get("zero") == 1  # another step's state is not visible


def test_state_view_without_a_session_or_a_step(store: ExecutionStore):
    manager = StateManager(store)
    manager.set("session", "k", "someone else's", scope_id="sess")
    manager.set("global", "k", "global")
    view = StateView(manager, session_id=None, execution_id="run", step_id=None)
    assert view.get("k") == "global"
    with pytest.raises(ValueError, match="session state needs a session id"):
        view.set("k", 1, scope="session")
    with pytest.raises(ValueError, match="session state needs a session id"):
        view.get("k", scope="session")
    with pytest.raises(ValueError, match="step state needs a step id"):
        view.set("k", 1, scope="step")
    with pytest.raises(ValueError, match="needs the execution id"):
        StateView(manager, session_id="sess", execution_id="", step_id=None)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.set("cosmic", "k", 1), "unknown state scope 'cosmic'"),
        (lambda m: m.get("cosmic", "k"), "unknown state scope 'cosmic'"),
        (lambda m: m.set("global", "k", 1, scope_id="x"), "global state takes no scope id"),
        (lambda m: m.get("session", "k"), "session state needs a scope id"),
        (lambda m: m.items("execution"), "execution state needs a scope id"),
        (lambda m: m.clear("step"), "step state needs a scope id"),
        (lambda m: m.set("global", "", 1), "state key must not be empty"),
        (lambda m: m.delete("global", ""), "state key must not be empty"),
        (
            lambda m: m.set("session", "obj", {"x": object()}, scope_id="s"),
            r"key 'obj' is not JSON-serialisable: value\['x'\] has type object",
        ),
        (lambda m: m.set("global", "k", 1, ttl=0), "ttl must be a positive number"),
        (lambda m: m.set("global", "k", 1, ttl=float("nan")), "ttl must be a positive number"),
        (lambda m: m.set("global", "k", 1, ttl=1e300), "past the year 9999"),
        (lambda m: StateManager(default_ttl=-1), "default_ttl must be a positive number"),
        (
            lambda m: StateView(m, session_id=None, execution_id="r", step_id=None).set(
                "k", {1, 2}, scope="global"
            ),
            "key 'k' is not JSON-serialisable: value has type set",
        ),
    ],
)
@pytest.mark.parametrize("with_store", [False, True])
def test_bad_manager_input_raises_by_name(
    tmp_path: Path, call: Any, message: str, with_store: bool
):
    store = ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") if with_store else None
    try:
        manager = StateManager(store)
        with pytest.raises(ValueError, match=message):
            call(manager)
        summary = manager.get_state_summary()
        # A caller's mistake is not a store failure, and nothing was kept.
        assert summary["store_write_failures"] == summary["store_read_failures"] == 0
        assert all(s["entries"] == 0 for s in summary["scopes"].values())
    finally:
        if store is not None:
            assert store.get_state_entries(include_expired=True) == []
            store.close()


def test_an_unreachable_store_keeps_state_in_memory(
    dead_store: ExecutionStore, caplog: pytest.LogCaptureFixture, clock: Clock
):
    manager = StateManager(dead_store)
    with caplog.at_level(logging.WARNING, logger="dendrite.state"):
        manager.set("session", "k", {"v": 1}, scope_id="s", ttl=5)
        manager.set("global", "g", 2)
    assert manager.get("session", "k", scope_id="s") == {"v": 1}
    assert manager.items("global") == {"g": 2}
    assert manager.delete("global", "g") is True
    assert "state store read failed" in caplog.text

    summary = manager.get_state_summary()
    assert summary["store"] is True
    assert summary["store_write_failures"] == 3  # two sets and the delete
    assert summary["store_read_failures"] == 2  # one load per scope id, not per call
    assert "cannot reach" in summary["last_store_error"]
    assert summary["scopes"]["session"] == {"entries": 1, "scope_ids": 1, "persisted": True}

    clock.advance(6)
    assert manager.cleanup_expired() == 1  # from memory; the purge failed and is counted
    assert manager.get_state_summary()["store_write_failures"] == 4


def test_a_closed_store_is_a_failure_not_an_error(tmp_path: Path):
    store = ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}")
    manager = StateManager(store)
    manager.set("global", "before", 1)
    store.close()
    manager.set("global", "after", 2)
    manager.set("session", "k", 3, scope_id="s")
    assert manager.items("global") == {"before": 1, "after": 2}
    assert manager.get("session", "k", scope_id="s") == 3
    summary = manager.get_state_summary()
    assert summary["store_write_failures"] == 2 and summary["store_read_failures"] == 1
    assert "closed" in summary["last_store_error"]
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}") as reopened:
        assert [(e.key, e.value) for e in reopened.get_state_entries()] == [("before", 1)]


def test_cleanup_counts_an_entry_whose_write_failed_once(
    store: ExecutionStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    manager = StateManager(store)
    manager.get("session", "warm-up", scope_id="s")  # loads the scope id while the store works

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("refused")

    monkeypatch.setattr(store, "put_state", refuse)
    manager.set("session", "memory-only", 1, scope_id="s", ttl=10)
    monkeypatch.delattr(store, "put_state")  # the class's method again
    store.put_state("session", "other", "row", 2, expires_at=T0 + timedelta(seconds=10))
    clock.advance(10)
    # One from memory (never reached the store), one from the store (never in memory).
    assert manager.cleanup_expired() == 2
    assert manager.get_state_summary()["store_write_failures"] == 1


def test_a_scope_id_that_failed_to_load_is_loaded_later_without_undoing_local_writes(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    store.put_state("session", "s", "kept", "from store")
    store.put_state("session", "s", "overwritten", "from store")
    store.put_state("session", "s", "deleted", "from store")
    manager = StateManager(store)
    real = store.get_state_entries

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("down for a moment")

    monkeypatch.setattr(store, "get_state_entries", broken)
    monkeypatch.setattr(state_module, "RELOAD_AFTER", 0.0)
    manager.set("session", "overwritten", "local", scope_id="s")
    manager.delete("session", "deleted", scope_id="s")
    assert manager.get("session", "kept", scope_id="s") is None
    monkeypatch.setattr(store, "get_state_entries", real)
    assert manager.items("session", "s") == {"kept": "from store", "overwritten": "local"}
    assert manager.get_state_summary()["store_read_failures"] >= 2


def test_threads_share_one_manager(store: ExecutionStore):
    manager = StateManager(store)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            view = StateView(manager, session_id="sess", execution_id="run", step_id=f"s{n}")
            for i in range(25):
                view.set(f"k{n}-{i}", i)
                view.set(f"k{n}-{i}", i, scope="session")
                assert view.get(f"k{n}-{i}", scope="step") is None
                assert view.get(f"k{n}-{i}") == i
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(manager.items("execution", "run")) == 200
    assert len(manager.items("session", "sess")) == 200
    assert len(store.get_state_entries("session", "sess")) == 200
    assert manager.get_state_summary()["store_write_failures"] == 0


def _append_from_a_process(url: str, state_dir: str, worker: int, count: int) -> None:
    with ExecutionStore(url, state_dir=state_dir) as store:
        manager = StateManager(store)
        manager.get("global", "log")  # every process has read the value before it adds
        for i in range(count):
            manager.update("global", "log", lambda log, i=i: [*(log or []), f"{worker}-{i}"])


def test_updates_from_several_processes_all_land(store_url: str, tmp_path: Path):
    """Read, change, write back by each process, the last writer undid the others'
    changes (the health log, the tools' states): ``update`` does all three in the store."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_append_from_a_process, args=(store_url, str(tmp_path / f"s{n}"), n, 10)
        )
        for n in range(3)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
        assert worker.exitcode == 0
    with ExecutionStore(store_url, state_dir=tmp_path / "s") as store:
        (entry,) = store.get_state_entries("global")
        assert sorted(entry.value) == sorted(f"{w}-{i}" for w in range(3) for i in range(10))
        assert store.update_state("global", "", "log", len) == 30
        with pytest.raises(InvalidRecordError, match="JSON"):
            store.update_state("global", "", "log", lambda _: {1, 2})
        assert store.get_state_entries("global")[0].value == 30  # a refused change changes nothing


def test_an_update_without_a_store_or_with_one_down_changes_the_local_value(tmp_path: Path):
    local = StateManager()
    assert local.update("session", "n", lambda n: (n or 0) + 1, scope_id="s") == 1
    assert local.update("session", "n", lambda n: (n or 0) + 1, scope_id="s") == 2
    down = ExecutionStore("postgresql+psycopg://postgres@127.0.0.1:1/nothing", state_dir=tmp_path)
    manager = StateManager(down)
    assert manager.update("global", "n", lambda n: (n or 0) + 5) == 5
    assert manager.get("global", "n") == 5
    down.close()


def test_an_update_made_while_the_store_failed_reaches_it_with_the_next(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
):
    manager = StateManager(store)
    add = [lambda tools, n=n: {**(tools or {}), n: "disabled"} for n in ("a", "b", "c")]
    manager.update("global", "tools", add[0])
    real = store.update_state

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("the database went away")

    monkeypatch.setattr(store, "update_state", down)
    assert manager.update("global", "tools", add[1]) == {"a": "disabled", "b": "disabled"}
    monkeypatch.setattr(store, "update_state", real)
    manager.update("global", "tools", add[2])
    (entry,) = store.get_state_entries("global")
    assert entry.value == {"a": "disabled", "b": "disabled", "c": "disabled"}


def test_an_updates_own_error_is_raised_not_taken_for_a_store_failure(store: ExecutionStore):
    manager = StateManager(store)
    calls: list[int] = []

    def not_json(value: Any) -> Any:
        calls.append(1)
        return {"when": object()}

    def broken(value: Any) -> Any:
        raise KeyError("missing")

    with pytest.raises(InvalidRecordError, match="not JSON"):
        manager.update("global", "k", not_json)
    with pytest.raises(KeyError, match="missing"):
        manager.update("global", "k", broken)
    assert calls == [1] and manager.get_state_summary()["store_write_failures"] == 0
    assert store.get_state_entries("global") == []
