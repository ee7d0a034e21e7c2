"""Nothing is lost: database outages, a full queue, replays, and several writer processes."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

from dendrite._ids import new_id
from dendrite.store import ExecutionStore
from dendrite.store import journal as journal_module
from dendrite.store import schema as s
from dendrite.store.journal import Journal
from dendrite.telemetry import ExecutionRecord, FeedbackRecord, ToolExecutionRecord
from tests.conftest import pg_admin, pg_database, wait_until_drained

TOTAL = 10_000


def _counts(url: str) -> dict[str, int]:
    with ExecutionStore(url) as store, store.engine.connect() as conn:
        te, ex = s.tool_executions, s.executions
        return {
            "tool_rows": conn.scalar(select(func.count()).select_from(te)),
            "tool_ids": conn.scalar(select(func.count(te.c.id.distinct()))),
            "exec_rows": conn.scalar(select(func.count()).select_from(ex)),
            "exec_ids": conn.scalar(select(func.count(ex.c.id.distinct()))),
            "goal_ids": conn.scalar(select(func.count(ex.c.goal_id.distinct()))),
            "tool_stat_total": conn.scalar(select(func.sum(s.tool_statistics.c.total_executions))),
            "rollup_total": conn.scalar(select(func.sum(s.execution_rollup.c.executions))),
        }


def _write(store: ExecutionStore, start: int, stop: int, eid: str) -> str:
    """Records start..stop-1: every 100th is an execution, the rest tool calls."""
    for i in range(start, stop):
        if i % 100 == 0:
            eid = store.store_execution(goal_text=f"goal {i}", success=True, duration_ms=i % 50)
        else:
            store.store_tool_execution(eid, f"tool_{i % 7}", {"i": i}, i, i % 9 != 0, i % 13)
    return eid


def _expect_exactly_total(counts: dict[str, int]) -> None:
    executions = TOTAL // 100
    assert counts == {
        "tool_rows": TOTAL - executions,
        "tool_ids": TOTAL - executions,
        "exec_rows": executions,
        "exec_ids": executions,
        "goal_ids": executions,
        "tool_stat_total": TOTAL - executions,
        "rollup_total": executions,
    }


def test_postgres_outage_mid_stream_loses_nothing_and_duplicates_nothing(tmp_path: Path):
    with pg_database() as url:
        name = make_url(url).database
        store = ExecutionStore(url, state_dir=tmp_path / "s", batch_size=250, flush_interval=0.01)
        eid = _write(store, 0, 3000, "")
        # The database disappears mid-stream: its connections are killed and new ones refused.
        pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        pg_admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        eid = _write(store, 3000, 7000, eid)
        store.flush()
        down = store.status()
        assert not down.reachable and down.journal_records > 0
        eid = _write(store, 7000, TOTAL, eid)
        pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        wait_until_drained(store)
        store.close()
        _expect_exactly_total(_counts(url))


def test_sqlite_locked_past_its_timeout_journals_and_replays(tmp_path: Path):
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}?timeout=0.2"
    store = ExecutionStore(url, state_dir=tmp_path / "s", batch_size=250, flush_interval=0.01)
    eid = _write(store, 0, 3000, "")
    store.flush()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    eid = _write(store, 3000, 7000, eid)
    store.flush()
    assert store.status().journal_records > 0
    eid = _write(store, 7000, TOTAL, eid)
    blocker.execute("COMMIT")
    blocker.close()
    wait_until_drained(store)
    store.close()
    _expect_exactly_total(_counts(url))


def test_a_close_that_gives_up_on_a_locked_database_journals_the_batch_being_written(
    tmp_path: Path,
):
    """The writer had taken the batch off the queue, so a close that stopped waiting for it
    (another process held the database past the wait) found nothing left to journal, and
    the process's exit lost a run it had reported done."""
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}?timeout=10"
    ExecutionStore(url, state_dir=tmp_path / "s").close()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
    eid = store.store_execution(goal_text="kept", success=True, duration_ms=1.0)
    deadline = time.monotonic() + 10
    while not store._writer._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    store._writer.close(timeout=0.2)  # gives up while the writer waits on the lock
    assert store.status().journal_records == 1
    blocker.execute("COMMIT")
    blocker.close()
    store.close()
    with ExecutionStore(url, state_dir=tmp_path / "s") as again:
        again.flush()
        assert again.get_execution(eid) is not None
        assert len(again.get_recent_executions(10)) == 1  # written once, replayed or not


def test_a_journal_that_cannot_be_written_keeps_records_in_memory(tmp_path: Path):
    """The database locked and the journal's folder unusable (a file in its place, as a
    full disk or a read-only mount would be): the records wait in memory, the callers see
    nothing, ``status()`` names the journal, and all of them land once the database is back.
    (The writer used to drop the batch with a log line; a full queue raised into the caller.)"""
    db = tmp_path / "h.db"
    url = f"sqlite:///{db}?timeout=0.2"
    state = tmp_path / "s"
    store = ExecutionStore(
        url, state_dir=state, batch_size=250, flush_interval=0.01, max_queue=500, block_timeout=0
    )
    state.mkdir(exist_ok=True)
    (state / "journal").write_text("not a folder")
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    eid = _write(store, 0, 4000, "")  # past max_queue: the callers journal, and cannot
    assert not store.flush(timeout=1.0)
    status = store.status()
    assert status.last_error.startswith("journal: FileExistsError")
    assert (status.written_records, status.journal_records) == (0, 0)
    assert status.pending_writes >= 4000 - 250  # less a batch the writer may be trying
    blocker.execute("COMMIT")
    blocker.close()
    _write(store, 4000, TOTAL, eid)
    wait_until_drained(store)
    store.close()
    _expect_exactly_total(_counts(url))


def test_a_partly_written_journal_line_ends_its_segment(tmp_path: Path):
    journal = Journal(tmp_path / "journal")
    journal.append([("execution", {"id": "a"})])
    handle = journal._file
    assert handle is not None
    handle.close()  # the next write fails, as on a full disk
    with pytest.raises(ValueError):
        journal.append([("execution", {"id": "b"})])
    journal.append([("execution", {"id": "c"})])  # a new segment, not the broken one
    journal.seal()
    claimed = [[r["id"] for _, r in records] for _, records in journal.claim()]
    assert claimed == [["a"], ["c"]]


def test_a_full_queue_spills_to_the_journal_without_raising(store_url: str, tmp_path: Path):
    store = ExecutionStore(
        store_url, state_dir=tmp_path / "s", max_queue=50, block_timeout=0.0, flush_interval=5
    )
    _write(store, 0, TOTAL, "")
    assert store._writer.stats.journaled > 0  # the queue really overflowed
    wait_until_drained(store)
    store.close()
    _expect_exactly_total(_counts(store_url))


def test_records_spilled_to_the_journal_are_read_back_at_once(store_url: str, tmp_path: Path):
    """Overflowing a full queue must not break "a process reads its own writes": the flush
    that every read makes waits for the journaled records too."""
    journaled = 0
    for burst in range(5):
        with ExecutionStore(
            store_url, state_dir=tmp_path / f"s{burst}", max_queue=2, block_timeout=0.0
        ) as store:
            ids = [
                store.store_execution(goal_text=f"g{burst}.{n}", success=True, duration_ms=1.0)
                for n in range(30)
            ]
            for n, eid in reversed(list(enumerate(ids))):
                assert store.get_execution(eid) is not None, f"{burst}.{n} not read back"
            journaled += store._writer.stats.journaled
    assert journaled > 0  # the queue really overflowed


def test_journal_replay_is_idempotent(store_url: str, tmp_path: Path):
    state = tmp_path / "s"
    eid = new_id()
    records = [
        ToolExecutionRecord(execution_id=eid, tool_name="t", success=i % 2 == 0, duration_ms=i)
        for i in range(300)
    ]
    journal = Journal(state / "journal")
    journal.append([("tool_execution", r.model_dump()) for r in records])
    journal.seal()
    (segment,) = journal.segments()
    saved = tmp_path / "copy.jsonl"
    shutil.copy(segment, saved)
    with segment.open("a") as handle:
        handle.write('{"kind": "tool_execution", "rec')  # a write cut short by a crash
    for _ in range(2):  # the second replay simulates a crash before the segment was deleted
        with ExecutionStore(store_url, state_dir=state) as store:
            wait_until_drained(store)
            stats = store.get_tool_statistics("t")
            assert (stats.total_executions, stats.successful_executions) == (300, 150)
        shutil.copy(saved, segment)
    with ExecutionStore(store_url, state_dir=state) as store:
        wait_until_drained(store)
        assert store.get_execution(eid) is None  # steps recorded before their goal row
        with store.engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(s.tool_executions)) == 300


def test_postgres_down_at_start_journals_then_creates_schema_and_replays(tmp_path: Path):
    with pg_database() as url:
        name = make_url(url).database
        pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        assert not store.status().reachable
        eid = _write(store, 0, 500, "")
        store.flush()
        assert store.status().journal_records == 500
        pg_admin(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        wait_until_drained(store)
        assert store.get_success_rate().total == 5
        assert len(store.get_execution(eid).steps) == 99
        store.close()


def _writer_process(url: str, state: str, worker: int, goals: int, out: multiprocessing.Queue):
    with ExecutionStore(url, state_dir=f"{state}-{worker}", batch_size=200) as store:
        for g in range(goals):
            eid = store.store_execution(
                goal_text=f"w{worker} g{g}", success=g % 4 != 0, duration_ms=g
            )
            for k in range(3):
                store.store_tool_execution(eid, f"t{k}", {"g": g}, g, True, k + 1)
        store.flush()
        stats = store._writer.stats
        out.put((worker, stats.written, stats.journaled, stats.rejected, stats.last_error))


def test_four_processes_write_one_sqlite_file_at_once(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # new file: all four also race to create it
    goals = 1500
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_writer_process, args=(url, str(tmp_path / "st"), w, goals, out))
        for w in range(4)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for _worker, written, journaled, rejected, last_error in results:
        assert (written, journaled, rejected, last_error) == (goals * 4, 0, 0, None)
    with ExecutionStore(url) as store:
        assert store.get_success_rate().model_dump() == {
            "total": 4 * goals,
            "successful": 4 * goals * 3 // 4,
            "success_rate": 0.75,
        }
        assert [t.total_executions for t in store.get_tool_performance()] == [4 * goals] * 3
        with store.engine.connect() as conn:
            goal_ids = conn.scalars(select(s.executions.c.goal_id)).all()
    assert sorted(goal_ids) == sorted(f"goal_{i}" for i in range(1, 4 * goals + 1))


def test_batches_shrink_when_writing_is_slow_so_a_waiting_caller_is_not_left_past_its_timeout(
    tmp_path: Path,
):
    """A caller waiting for room waits for the batch being written: a batch that took over
    half of ``block_timeout`` halves the next (to 200 at least); a full one that took under
    a quarter doubles it (to ``batch_size`` at most)."""
    url = f"sqlite:///{tmp_path / 'h.db'}"
    with ExecutionStore(url, state_dir=tmp_path / "s", batch_size=5000, block_timeout=1.0) as st:
        writer = st._writer
        assert writer._batch_limit == 1000  # until the pace is known
        writer._pace(1000, 0.6)
        assert writer._batch_limit == 500
        for _ in range(5):
            writer._pace(writer._batch_limit, 2.0)
        assert writer._batch_limit == 200
        writer._pace(150, 0.01)  # not a full batch: says nothing of a bigger one
        assert writer._batch_limit == 200
        writer._pace(writer._batch_limit, 0.3)  # over a quarter: stays
        assert writer._batch_limit == 200
        for _ in range(6):
            writer._pace(writer._batch_limit, 0.2)
        assert writer._batch_limit == 5000


UNREACHABLE_URL = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"  # nothing listens there


def test_a_value_that_refers_back_to_itself_survives_the_journal_and_the_rejected_file(
    store_url: str, tmp_path: Path
):
    """Journaled and rejected records are encoded field by field: a value that contains
    itself becomes that field's marker, as in its column, and the rest of the record is
    kept. (Encoded whole, the record became one marker that replay could not read: lost.)"""
    loop: dict[str, object] = {"a": 1}
    loop["self"] = loop
    state = tmp_path / "s"
    down = ExecutionStore(UNREACHABLE_URL, state_dir=state)
    eid = down.store_execution(goal_id="goal_1", goal_text="g", success=True, duration_ms=1)
    down.store_tool_execution(eid, "circular", loop, loop, True, 2.0)
    clash = down.store_execution(goal_id="goal_1", goal_text="c", success=True, duration_ms=1)
    down.store_execution(goal_text="m", success=False, duration_ms=3, metadata=loop)
    down.close()
    assert len(Journal(state / "journal").segments()) == 1
    with ExecutionStore(store_url, state_dir=state) as up:
        up.flush()
        status = up.status()
        assert (status.journal_records, status.rejected_records) == (0, 1)
        (step,) = up.get_execution(eid).steps
        marker = {"$error": "circular: it contains itself", "$type": "builtins.dict"}
        assert step.tool_name == "circular" and step.duration_ms == 2.0
        for kept in (step.parameters, step.result):  # the part that recurs is the marker
            assert kept["a"] == 1 and kept["self"].items() >= marker.items()
        (failed,) = up.get_recent_executions(success=False)
        assert failed.goal_text == "m" and failed.metadata["a"] == 1
        assert "circular: it contains itself" in json.dumps(failed.metadata)
    (line,) = (state / "rejected.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["kind"] == "execution" and entry["record"]["id"] == clash
    assert entry["record"]["goal_text"] == "c" and "duplicate" in entry["reason"]


@pytest.mark.parametrize("work", ["rebuild", "prune"])
def test_a_batch_committed_in_the_middle_of_whole_history_work_is_counted_once(
    work: str, tmp_path: Path
):
    """PostgreSQL, read committed: a batch committed between a rebuild's deletes and its
    scan of the raw rows was counted twice (by its own upsert, then by the scan); one
    committed between a prune's archiving and its deletes was deleted unarchived, and the
    next rebuild lost it. The scheduled jobs do both while the orchestrator records, so a
    batch now waits for them. It is sent from inside the work, at the statement between."""
    now = datetime.now(UTC)
    started = now - timedelta(days=60) if work == "prune" else now
    between = "SELECT" if work == "rebuild" else "DELETE FROM tool_executions"
    with pg_database() as url:
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        eid = new_id()
        store.store_tool_execution(eid, "before", {}, None, True, 1.0)
        store.flush()
        flushed_during_work: list[bool] = []

        @event.listens_for(store.engine, "before_cursor_execute")
        def record_in_between(_conn, _cursor, statement: str, *_args) -> None:
            working = threading.current_thread() is threading.main_thread()
            there = statement.lstrip().startswith(between) and "tool_executions" in statement
            if working and there and not flushed_during_work:
                store.store_tool_execution(
                    eid, "during", {}, None, True, 1.0, started_at=started, finished_at=started
                )
                flushed_during_work.append(store.flush(timeout=1.0))

        if work == "rebuild":
            store.update_statistics()
        else:
            store.prune(timedelta(days=30))
        event.remove(store.engine, "before_cursor_execute", record_in_between)
        store.flush()
        incremental = {t.tool_name: t.total_executions for t in store.get_tool_performance()}
        store.update_statistics()
        rebuilt = {t.tool_name: t.total_executions for t in store.get_tool_performance()}
        store.close()
    assert incremental == rebuilt == {"before": 1, "during": 1}
    assert flushed_during_work == [False]  # the batch waited for the work to commit


def test_a_segment_being_opened_is_not_replayed_from_under_its_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A replayer (another process) that found a new segment before its writer locked it
    took it for a finished one: empty, so it replayed nothing and deleted it, and the
    writer's records, fsync'd into the deleted file, were gone. The window is widened
    here by slowing the writer's ``flock``."""
    flock = journal_module.fcntl.flock
    writer_thread: list[threading.Thread] = []

    def slow_flock(fd: int, operation: int) -> None:
        if threading.current_thread() in writer_thread:
            time.sleep(0.3)
        flock(fd, operation)

    monkeypatch.setattr(journal_module.fcntl, "flock", slow_flock)
    owner, replayer = Journal(tmp_path / "j"), Journal(tmp_path / "j")

    def append() -> None:
        writer_thread.append(threading.current_thread())
        owner.append([("tool_execution", {"id": str(i)}) for i in range(3)])

    appending = threading.Thread(target=append)
    appending.start()
    time.sleep(0.1)
    assert [entries for _path, entries in replayer.claim()] == []
    appending.join()
    owner.seal()
    assert [len(entries) for _path, entries in replayer.claim()] == [3]


def test_a_database_keeps_its_journal_however_its_url_is_spelled():
    """The journal of a PostgreSQL store lives in a folder named after its database: records
    journaled under ``postgresql://`` were not replayed by ``postgresql+psycopg://``."""
    down = ExecutionStore("postgresql://postgres@LocalHost:1/nothing")
    down.store_execution(goal_text="g", success=True, duration_ms=1)
    down.close()
    for url, journaled in (
        ("postgresql+psycopg://postgres@localhost:1/nothing", 1),
        ("postgresql://postgres@localhost:1/other", 0),
    ):
        with ExecutionStore(url) as again:
            assert again.status().journal_records == journaled


def test_a_journal_kept_under_the_urls_spelling_by_an_earlier_version_is_taken_over(
    tmp_path: Path,
):
    """Earlier versions named the folder after the URL as spelled: segments left there
    (the database was down when that version stopped) move to the database's folder."""
    url = "postgresql://postgres@LocalHost:1/nothing"
    spelled = hashlib.sha256(url.encode()).hexdigest()[:16]
    earlier = Journal(tmp_path / "home" / "stores" / spelled / "journal")
    record = ExecutionRecord(goal_text="kept", success=True, duration_ms=1)
    earlier.append([("execution", record.model_dump())])
    earlier.seal()
    with ExecutionStore(url) as store:
        assert store.status().journal_records == 1
        assert not list((tmp_path / "home" / "stores" / spelled / "journal").iterdir())


def test_a_replayed_older_judgement_does_not_replace_a_newer_one(store_url: str, tmp_path: Path):
    """Feedback journaled by one process while the database was away, replayed after newer
    feedback was written by another: the run keeps the newer rating and acceptance."""
    with ExecutionStore(store_url, state_dir=tmp_path / "main") as main:
        eid = main.store_execution(goal_text="g", success=True, duration_ms=1)
        main.flush()
        with ExecutionStore(UNREACHABLE_URL, state_dir=tmp_path / "away") as away:
            away.store_feedback(eid, 1, "first: bad", accepted=False)  # journaled
        time.sleep(0.01)
        main.store_feedback(eid, 5, "later: great")
        main.flush()
        with ExecutionStore(store_url, state_dir=tmp_path / "away") as back:
            back.flush()  # the older judgement is replayed now
        detail = main.get_execution(eid)
        assert sorted(f.rating for f in detail.feedback) == [1, 5]
        # The rating is the newer one's; the acceptance, given only by the older, stays.
        assert (detail.user_rating, detail.user_accepted) == (5, False)


def _at_once(*actions: Callable[[], object]) -> None:
    """Run the actions in threads released together, so that their writes overlap."""
    start = threading.Barrier(len(actions))

    def run(action: Callable[[], object]) -> None:
        start.wait()
        action()

    threads = [threading.Thread(target=run, args=(action,)) for action in actions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _two_writers(url: str, tmp_path: Path) -> tuple[ExecutionStore, ExecutionStore]:
    """Two stores on one database, as two processes would be, each writing when flushed."""
    return (
        ExecutionStore(url, state_dir=tmp_path / "one", flush_interval=10),
        ExecutionStore(url, state_dir=tmp_path / "two", flush_interval=10),
    )


def _closed_having_written_all(*stores: ExecutionStore) -> None:
    """Close the stores, each of which journaled nothing and stayed reachable."""
    statuses = [store.status() for store in stores]
    for store in stores:
        store.close()
    assert [(st.journal_records, st.last_error, st.reachable) for st in statuses] == [
        (0, None, True)
    ] * len(stores)


def test_two_processes_judging_the_same_runs_in_opposite_orders_write_at_once(tmp_path: Path):
    """PostgreSQL: each feedback batch updates the rating of the runs it judges, and two
    writers (two processes, or two stores) that took the same runs in opposite orders
    deadlocked. The batch PostgreSQL undid went to the journal as if the server were
    down: the store said it was unreachable, and a ``flush()`` returned with the
    judgements unwritten (1,200 of 3,000 rows readable here)."""
    with pg_database() as url:
        one, two = _two_writers(url, tmp_path)
        runs = [one.store_execution(goal_text=f"g{i}", success=True) for i in range(300)]
        one.flush()
        for _ in range(5):
            for store, order in ((one, runs), (two, runs[::-1])):
                for eid in order:
                    store.record(FeedbackRecord(execution_id=eid, rating=3, accepted=True))
            _at_once(one.flush, two.flush)
        with one.engine.connect() as conn:
            written = conn.scalar(select(func.count()).select_from(s.execution_feedback))
            rated = conn.scalar(select(func.sum(s.execution_rollup.c.rating_n)))
        _closed_having_written_all(one, two)
    assert written == rated == 2 * 5 * 300


def test_a_batch_undone_to_break_a_deadlock_is_written_again(tmp_path: Path):
    """PostgreSQL: the same records written by two stores at once (a replay of one
    process's journal racing its own late write of them) in opposite orders: each waits
    on an id the other inserted, and PostgreSQL undoes one of them. That one is written
    again, finds the rows there and counts them once, instead of being journaled as if
    the server were down."""
    with pg_database() as url:
        one, two = _two_writers(url, tmp_path)
        total = 0
        for round_ in range(4):
            eid = new_id()
            records = [
                ToolExecutionRecord(
                    execution_id=eid,
                    tool_name=f"t{i % 3}",
                    parameters={"i": i},
                    result=round_,
                    success=True,
                    duration_ms=1.0,
                )
                for i in range(1000)
            ]
            total += len(records)
            for record in records:
                one.record(record)
            for record in reversed(records):
                two.record(record)
            _at_once(one.flush, two.flush)
        with one.engine.connect() as conn:
            rows = conn.scalar(select(func.count()).select_from(s.tool_executions))
            counted = conn.scalar(select(func.sum(s.tool_statistics.c.total_executions)))
        _closed_having_written_all(one, two)
    assert rows == counted == total


def test_a_record_past_a_postgresql_limit_is_set_aside_not_taken_for_an_outage(
    tmp_path: Path,
):
    """PostgreSQL reports a value past one of its limits (a string of over 256 MiB in a
    JSONB column: a tool given a large file's text) as an OperationalError, as it does a
    lost connection. Taken for an outage, the record went to the journal and failed again
    at every replay, and every record after it was journaled behind it: the store stayed
    "unreachable" for good. The limit is raised here by a trigger with the same error
    code (program_limit_exceeded) rather than by a 270 MB string; the script in the
    audit notes used the string, with the same result."""
    with pg_database() as url:
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        with store.engine.begin() as conn:
            conn.exec_driver_sql(
                "CREATE FUNCTION past_limit() RETURNS trigger AS $$ BEGIN "
                "IF NEW.tool_name = 'huge' THEN RAISE EXCEPTION 'string too long to represent "
                "as jsonb string' USING ERRCODE = 'program_limit_exceeded'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER past_limit BEFORE INSERT ON tool_executions "
                "FOR EACH ROW EXECUTE FUNCTION past_limit()"
            )
        eid = store.store_execution(goal_text="g", success=True)
        huge = store.store_tool_execution(eid, "huge", {"blob": "x"}, None, True, 1.0)
        kept = store.store_tool_execution(eid, "small", {}, None, True, 1.0)
        store.flush()
        later = store.store_execution(goal_text="later", success=True)
        store.flush()
        status = store.status()
        detail = store.get_execution(eid)
        assert store.get_execution(later) is not None
        store.close()
    assert [step.id for step in detail.steps] == [kept]
    (line,) = (tmp_path / "s" / "rejected.jsonl").read_text().splitlines()
    rejected = json.loads(line)
    assert rejected["record"]["id"] == huge and "ProgramLimitExceeded" in rejected["reason"]
    assert (status.reachable, status.journal_records, status.rejected_records) == (True, 0, 1)


def test_a_database_that_turns_read_only_keeps_the_records_for_later(tmp_path: Path):
    """PostgreSQL refuses writes with read_only_sql_transaction on a standby (a failover
    left the store connected to one) or while writes are frozen. Taken for bad data, each
    record was bisected out to ``rejected.jsonl`` and never written; they are journaled
    now, as in an outage, and written once the database takes writes again."""
    with pg_database() as url:
        database = make_url(url).database
        kill = (
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        pg_admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only TO on')
        pg_admin(kill)
        ids = [store.store_execution(goal_text=f"g{i}", success=True) for i in range(5)]
        store.flush()
        frozen = store.status()
        pg_admin(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        pg_admin(kill)
        wait_until_drained(store)
        found = [store.get_execution(eid) is not None for eid in ids]
        rejected = store.status().rejected_records
        store.close()
    assert (frozen.rejected_records, frozen.journal_records) == (0, 5)
    assert found == [True] * 5 and rejected == 0


def _slow_rows(url: str, tmp_path: Path, sleep: str, timeout_ms: int) -> None:
    """A trigger that makes inserting a tool call sleep ``sleep`` (an SQL expression of
    ``NEW``), and a ``statement_timeout`` on the database for the sessions opened after."""
    with ExecutionStore(url, state_dir=tmp_path / "setup") as setup, setup.engine.begin() as c:
        c.exec_driver_sql(
            "CREATE FUNCTION slow_row() RETURNS trigger AS $$ BEGIN "
            f"PERFORM pg_sleep({sleep}); RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        c.exec_driver_sql(
            "CREATE TRIGGER slow_row BEFORE INSERT ON tool_executions "
            "FOR EACH ROW EXECUTE FUNCTION slow_row()"
        )
    pg_admin(f'ALTER DATABASE "{make_url(url).database}" SET statement_timeout TO {timeout_ms}')


def _tool_rows(store: ExecutionStore) -> tuple[int, int]:
    """Tool calls stored, and as the statistics count them."""
    with store.engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(s.tool_executions))
        counted = conn.scalar(select(func.sum(s.tool_statistics.c.total_executions)))
    return rows or 0, counted or 0


def test_a_batch_slower_than_the_servers_statement_timeout_is_written_in_smaller_ones(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """PostgreSQL cancels a statement that runs past ``statement_timeout`` (set on the
    database or the role by its administrator) with query_canceled, an OperationalError
    as a lost connection is. Taken for an outage, the batch went to the journal and its
    replay, as large again, was cancelled again: the store called itself unreachable for
    good and journaled everything after it. A row trigger that sleeps a millisecond makes
    a statement of a thousand rows take a second, against a timeout of 0.3 s. The batches
    after stay small enough: the pacing grew them back, and each was cancelled again."""
    caplog.set_level(logging.INFO, logger="dendrite.store")
    with pg_database() as url:
        _slow_rows(url, tmp_path, "0.001", 300)
        store = ExecutionStore(url, state_dir=tmp_path / "s", flush_interval=0.01)
        eid = store.store_execution(goal_text="g", success=True)
        for i in range(2000):
            store.store_tool_execution(eid, f"t{i % 5}", {"i": i}, i, True, 1.0)
        wait_until_drained(store, seconds=30)
        status = store.status()
        rows = _tool_rows(store)
        store.close()
    assert rows == (2000, 2000)
    assert (status.reachable, status.journal_records, status.rejected_records) == (True, 0, 0)
    assert 0 < sum("took too long" in r.getMessage() for r in caplog.records) <= 8


def test_a_record_too_slow_on_its_own_waits_in_the_journal_and_holds_up_no_other(
    tmp_path: Path,
):
    """One record that runs past ``statement_timeout`` by itself (here a trigger sleeps a
    second for it alone) failed its batch and then every replay of the journal: the store
    called itself unreachable and journaled every record after it, for good."""
    with pg_database() as url:
        _slow_rows(url, tmp_path, "CASE WHEN NEW.tool_name = 'slow' THEN 1 ELSE 0 END", 300)
        state = tmp_path / "s"
        store = ExecutionStore(url, state_dir=state, flush_interval=0.01)
        eid = store.store_execution(goal_text="g", success=True)
        for i in range(100):
            store.store_tool_execution(eid, "slow" if i == 50 else "t", {"i": i}, i, True, 1.0)
        store.flush()
        later = [store.store_tool_execution(eid, "t", {}, i, True, 1.0) for i in range(10)]
        store.flush()
        status, rows = store.status(), _tool_rows(store)
        store.close()
        with ExecutionStore(url, state_dir=tmp_path / "setup") as owner, owner.engine.begin() as c:
            c.exec_driver_sql("DROP TRIGGER slow_row ON tool_executions")
        with ExecutionStore(url, state_dir=state) as reopened:  # replays the journal
            wait_until_drained(reopened)
            after = _tool_rows(reopened)
            steps = {step.id for step in reopened.get_execution(eid).steps}
    assert rows == (109, 109)
    assert (status.reachable, status.journal_records, status.rejected_records) == (True, 1, 0)
    assert after == (110, 110) and set(later) <= steps


def test_records_the_role_may_not_write_for_now_are_kept_for_later_not_rejected(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    """PostgreSQL: a role whose INSERT privilege is revoked (a grant script being rerun, a
    migration by another role) gets insufficient_privilege, which is no outage to
    SQLAlchemy. Taken for bad data, every record was bisected out to ``rejected.jsonl``,
    one failed transaction each, and never written; they are journaled now and written
    once the privilege is back. Meanwhile the writer backs off: the database answers its
    probe, and it was found reachable, and unwritable, four times a second."""
    caplog.set_level(logging.WARNING, logger="dendrite.store")
    role = f"dendrite_writer_{new_id()[-12:]}"
    pg_admin(f"CREATE ROLE {role} LOGIN")
    try:
        with pg_database() as url:
            ExecutionStore(url, state_dir=tmp_path / "setup").close()  # the schema, as owner
            plain = make_url(url).set(drivername="postgresql")
            as_role = make_url(url).set(username=role).render_as_string(hide_password=False)
            with psycopg.connect(plain.render_as_string(hide_password=False)) as owner:
                owner.autocommit = True
                grant = f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {role}"
                owner.execute(grant)
                store = ExecutionStore(as_role, state_dir=tmp_path / "s", flush_interval=0.01)
                owner.execute(f"REVOKE INSERT ON tool_executions FROM {role}")
                eid = store.store_execution(goal_text="g", success=True)
                ids = [store.store_tool_execution(eid, "t", {}, i, True, 1.0) for i in range(5)]
                store.flush()
                refused = store.status()
                time.sleep(3)
                probes = sum("reachable again" in r.getMessage() for r in caplog.records)
                owner.execute(grant)
            wait_until_drained(store)
            detail = store.get_execution(eid)
            status = store.status()
            store.close()
    finally:
        pg_admin(f"DROP ROLE IF EXISTS {role}")  # its grants went with the database
    assert (refused.reachable, refused.rejected_records) == (False, 0)
    assert refused.journal_records > 0
    assert 1 <= probes <= 5  # 0.25 s, doubling: not a dozen
    assert detail is not None and sorted(step.id for step in detail.steps) == sorted(ids)
    assert (status.journal_records, status.rejected_records) == (0, 0)


def test_feedback_committed_late_by_another_process_is_not_passed_over(tmp_path: Path):
    """PostgreSQL: feedback was stamped (``recorded_at``) when its batch began and became
    visible when the batch committed. One process's batch stamped first and committed
    last showed its row after another's stamped later, so a reader that had paged past
    the later one (``get_feedback(since, after_id=…)``) never read it. Here the first
    batch is held open between its stamp and its commit while the second is written."""
    with pg_database() as url:
        one = ExecutionStore(url, state_dir=tmp_path / "one", flush_interval=0.01)
        two = ExecutionStore(url, state_dir=tmp_path / "two", flush_interval=0.01)
        eid = one.store_execution(goal_text="g", success=True)
        one.flush()
        seen: list[FeedbackRecord] = []

        def judge_meanwhile() -> None:
            two.record(FeedbackRecord(execution_id=eid, rating=5))
            two.flush()
            seen.extend(two.get_feedback())

        meanwhile = threading.Thread(target=judge_meanwhile)

        @event.listens_for(one.engine, "before_cursor_execute")
        def hold_open(_conn, _cursor, statement: str, *_args) -> None:
            if statement.startswith("UPDATE executions") and not meanwhile.is_alive():
                meanwhile.start()
                time.sleep(1.0)  # the first batch, stamped, is not committed yet

        first = one.record(FeedbackRecord(execution_id=eid, rating=1))
        one.flush()
        meanwhile.join()
        last = seen[-1]
        next_page = two.get_feedback(last.recorded_at, after_id=last.id)
        one.close()
        two.close()
    assert first in [f.id for f in seen + next_page]
