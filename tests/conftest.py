"""Fixtures: every store test runs on a real SQLite file and on the real PostgreSQL server.

PostgreSQL tests create a uniquely named database on the server given by
``DENDRITE_TEST_PG_ADMIN`` (default: the local server's ``test`` database)
and drop it afterwards.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from dendrite.store import ExecutionStore

PG_ADMIN = os.environ.get("DENDRITE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


@contextlib.contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"dendrite_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(PG_ADMIN).set(drivername="postgresql+psycopg", database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_admin(sql: str) -> None:
    """Run one statement on the admin connection (outages: refuse and kill connections)."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(sql)


def wait_until_drained(store: ExecutionStore, seconds: float = 60) -> None:
    """Block until the store is reachable with nothing queued or journaled."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        store.flush()
        status = store.status()
        if status.reachable and status.journal_records == 0 and status.pending_writes == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"store did not drain: {store.status()}")


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch the user's data directory or database, nor a model server set in the env."""
    monkeypatch.setenv("DENDRITE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DENDRITE_DATABASE_URL", raising=False)
    for name in (
        "DENDRITE_LLM_BASE_URL",
        "DENDRITE_LLM_MODEL",
        "DENDRITE_LLM_API_KEY",
        "DENDRITE_LLM_TIERS",
        "DENDRITE_LLM_TIER_COSTS",
        "DENDRITE_LLM_TIER_PRICES",
        "DENDRITE_LLM_COST_WEIGHT",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'history.db'}"
    else:
        with pg_database() as url:
            yield url


@pytest.fixture
def store(store_url: str, tmp_path: Path) -> Iterator[ExecutionStore]:
    with ExecutionStore(store_url, state_dir=tmp_path / "state") as st:
        yield st
