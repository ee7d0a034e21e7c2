"""The background writer: the only code that writes history rows.

Callers hand validated records to :meth:`BatchWriter.submit`, which appends
to an in-memory deque and returns (a few microseconds). One thread drains the
deque in batches, by size or by interval, and writes each batch in a single
transaction together with the rollups it changes.

What can go wrong, and what happens:

- The database is unreachable, locked past its busy timeout, or drops the
  connection: the batch is appended to the journal (fsync'd), the writer
  backs off and probes the database; once it answers, the journal is replayed
  (idempotently, by client id) before new batches.
- A batch is refused for its data (a feedback for an execution that does not
  exist, a duplicate id within the batch, a value the column refuses): the
  batch is bisected until the offending records are isolated; the others are
  written and each refused record goes to ``rejected.jsonl`` with the reason.
- The queue is full: the caller waits up to ``block_timeout`` for room, then
  the record goes to the journal. Nothing is dropped and nothing raises into
  the caller.
- The journal cannot be written either (a full disk, a folder that cannot be
  written): the records stay in memory, at the head of the queue (a full queue
  grows past ``max_queue``), and are tried again with back-off; ``status()``
  names the journal's error. Only a close that finds both the database and the
  journal unusable loses them, and it says how many.
"""

from __future__ import annotations

import logging
import operator
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    Engine,
    Float,
    Integer,
    Table,
    and_,
    bindparam,
    case,
    cast,
    select,
    text,
    update,
)
from sqlalchemy import exc as sa_exc

from dendrite.store import rollups, serialize
from dendrite.store import schema as s
from dendrite.store.engine import WRITE, built_once, dialect_insert, id_chunks, insert_rows
from dendrite.store.journal import Journal
from dendrite.store.toolcall import ToolCall
from dendrite.telemetry.records import (
    AnyRecord,
    ExecutionRecord,
    FeedbackRecord,
    RoutingDecision,
    SolutionRecord,
    ToolCreationEvent,
    ToolExecutionRecord,
)

log = logging.getLogger("dendrite.store.writer")

KINDS: dict[str, type[AnyRecord]] = {
    "execution": ExecutionRecord,
    "tool_execution": ToolExecutionRecord,
    "routing_decision": RoutingDecision,
    "feedback": FeedbackRecord,
    "solution": SolutionRecord,
    "tool_creation": ToolCreationEvent,
}
KIND_OF: dict[type, str] = {cls: kind for kind, cls in KINDS.items()} | {ToolCall: "tool_execution"}
Queued = AnyRecord | ToolCall
"""What the queue holds: records, and tool executions in their hot-path form."""


def dump(record: Queued) -> dict[str, Any]:
    """A queued record as the field dictionary the journal and ``rejected.jsonl`` keep."""
    return record.fields() if type(record) is ToolCall else record.model_dump()


MIN_BATCH = 200
FIRST_BATCH = 1000
# SQLite's page cache for the writer's connection (KiB): the indexes of a
# large history take random inserts, and with the default 2 MiB nearly each
# one re-reads its page from the operating system.
SQLITE_CACHE_KIB = 64 * 1024


YIELD_EVERY = 128
"""A caller that records without pause lets go of the GIL once every this many queued
records, while the writer is ``YIELD_BEHIND`` or more behind. The writer lets go of it
around every SQLite call, and a thread that wants it back waits for the switch interval
(5 ms) while another runs Python: a caller recording without pause held it nearly all
the time, the writer did a few hundred microseconds of database work per 5 ms, fell
behind and filled the queue. Letting go hands it to the writer at once when it waits: it
keeps up, and SQLite ingest in arrival order went from 42,400 to 52,400 rows/s (medians
of three; docs/store.md has the sweep)."""
YIELD_BEHIND = 2048
"""Below this many queued records the writer keeps up by itself, and a caller's run (a
plan of a thousand steps records a thousand rows) is not slowed by handing the GIL over;
ingest was the same with 0, 2,048 and 8,192."""


class _FlushMarker:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass
class WriterStats:
    written: int = 0
    journaled: int = 0
    replayed: int = 0
    rejected: int = 0
    batches: int = 0
    last_flush_at: datetime | None = None
    last_error: str | None = None


READ_ONLY = "25006"
"""PostgreSQL's read_only_sql_transaction: a standby after a failover, or writes frozen
(``default_transaction_read_only``). Nothing is wrong with the records: taken for bad
data, every one of them went to ``rejected.jsonl``, never to be written."""
INSUFFICIENT_PRIVILEGE = "42501"
"""PostgreSQL's insufficient_privilege: the store's role may not write a table for now (a
grant script being rerun, a migration by another role). Taken for bad data, every record
went to ``rejected.jsonl`` one failed transaction at a time, never to be written."""


def is_connection_error(error: BaseException) -> bool:
    """Errors that say "the database cannot be written right now" (it is not there, or it
    is read-only for now), as opposed to "bad data"."""
    if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
        return True
    if _sqlstate(error) in (READ_ONLY, INSUFFICIENT_PRIVILEGE):
        return True
    return isinstance(
        error,
        (
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
            sa_exc.DisconnectionError,
            sa_exc.TimeoutError,
            ConnectionError,
        ),
    )


class BatchWriter:
    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        rejected_path: Path,
        *,
        batch_size: int,
        flush_interval: float,
        max_queue: int,
        block_timeout: float,
        max_result_bytes: int,
        on_reconnect: Callable[[], None] | None = None,
        healthy: bool = True,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.rejected_path = rejected_path
        self.batch_size = batch_size
        # Under a backlog a caller waiting for room waits for the batch being
        # written: the batch limit halves when a full batch took over half of
        # ``block_timeout`` and doubles when it took under a quarter, within
        # [MIN_BATCH, batch_size], starting from FIRST_BATCH. A row costs less
        # in a larger batch (rollups and index pages are shared by more rows),
        # and under an eighth held SQLite's batches at 8,000 rows where 16,000
        # still took under a quarter. (Scaling by rows per second instead shrank
        # batches to their fixed costs under load.)
        self._batch_seconds = max(block_timeout / 2, 0.1)
        self._batch_limit = min(batch_size, FIRST_BATCH)
        # Half of the smallest batch PostgreSQL stopped for taking too long
        # (``statement_timeout``): no later batch is larger, for the store's life.
        self._ceiling = batch_size
        self.flush_interval = flush_interval
        self.max_queue = max_queue
        self.block_timeout = block_timeout
        self.max_result_bytes = max_result_bytes
        self.stats = WriterStats()
        self.healthy = healthy
        self._on_reconnect = on_reconnect
        self._queue: deque[Queued | _FlushMarker] = deque()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._waiting_for_room = 0
        self._stopping = False
        self._backoff = 0.25
        self._journal_backoff = 0.25
        self._journal_failing = False
        self._retry_at = 0.0
        self._next_replay = 0.0
        self._journal_pending = True  # segments left by an earlier run are replayed first
        self._unchecked = False  # batches written since the last idle checkpoint
        # The batch the writer has taken off the queue and not yet written or journaled:
        # a close that gives up waiting must journal it, or the process's exit loses it.
        self._in_flight: list[Queued] = []
        self._reject_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="dendrite-store-writer", daemon=True)
        self._thread.start()

    # -- the caller's side -------------------------------------------------

    def submit(self, record: Queued) -> None:
        queue = self._queue
        if len(queue) >= self.max_queue or self._stopping:
            self._overflow(record)
            return
        queue.append(record)
        queued = len(queue)
        if queued >= self.batch_size and not self._wake.is_set():
            self._wake.set()
        elif queued >= YIELD_BEHIND and not queued % YIELD_EVERY:
            time.sleep(0)  # lets go of the GIL: see YIELD_EVERY

    def _overflow(self, record: Queued) -> None:
        if not self._stopping and threading.current_thread() is not self._thread:
            deadline = time.monotonic() + self.block_timeout
            with self._room:
                self._waiting_for_room += 1
                try:
                    self._wake.set()
                    while len(self._queue) >= self.max_queue and not self._stopping:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        self._room.wait(remaining)
                finally:
                    self._waiting_for_room -= 1
            if len(self._queue) < self.max_queue and not self._stopping:
                self._queue.append(record)
                return
        if not self._to_journal([record]):
            self._queue.append(record)  # past max_queue: memory is the last place left
            return
        if self._stopping:  # no writer will seal it: release the segment for the next start
            self.journal.seal()
        log.warning("store queue full or closed: record journaled for later replay")

    def pending(self) -> int:
        return sum(1 for item in list(self._queue) if not isinstance(item, _FlushMarker))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything submitted before this call is written, journaled or rejected."""
        if not self._thread.is_alive():
            return not self._queue
        marker = _FlushMarker()
        self._queue.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        with self._room:
            self._room.notify_all()
        # The writer could not finish in time (a database locked past the wait): keep what
        # it holds and what is queued on disk, if the disk takes them. Should the writer
        # still write its batch after all, the replay finds those ids there and skips them.
        held = list(self._in_flight) if self._thread.is_alive() else []
        leftover = held + [item for item in self._queue if not isinstance(item, _FlushMarker)]
        if leftover and not self._to_journal(leftover):
            log.error(
                "store closed with %d records that neither the database nor the journal "
                "took: they are lost",
                len(leftover),
            )
        self.journal.seal()

    # -- the writer thread ---------------------------------------------------

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.flush_interval)
            self._wake.clear()
            stuck = False
            try:
                if not woken and not self._queue and self._unchecked:
                    self._checkpoint()
                stuck = not self._drain()
                if self.healthy:
                    self._maybe_replay()
                elif self._journal_pending:
                    self._recover()
            except Exception:  # the writer must survive anything
                log.exception("store writer: unexpected error")
            if self._stopping and (stuck or not self._queue):
                self._last_chance()
                return

    def _checkpoint(self) -> None:
        """Copy SQLite's WAL back into the database while nothing waits on the writer.

        Left to the commit that crosses the autocheckpoint threshold, the copy
        lands on a batch that a ``flush()`` may be waiting for. ``PASSIVE``
        neither waits for nor blocks readers; what it cannot copy now, a later
        one will.
        """
        self._unchecked = False
        if self.engine.dialect.name != "sqlite" or not self.healthy:
            return
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception as error:
            if not is_connection_error(error):
                raise
            log.warning("store writer: checkpoint failed, SQLite will do it later: %s", error)

    def _last_chance(self) -> None:
        """On close, one more try to empty the journal; what stays is replayed at the next start."""
        try:
            if self.healthy:
                self._maybe_replay(final=True)
            elif self._journal_pending:
                self._retry_at = 0.0
                self._recover()
        except Exception:
            log.exception("store writer: could not replay the journal on close")

    def _drain(self) -> bool:
        """Write what is queued; False when a batch found neither the database nor the
        journal usable and waits, back in the queue, for the next try."""
        queue = self._queue
        while queue:
            batch: list[Queued] = []
            markers: list[_FlushMarker] = []
            while queue and len(batch) < self._batch_limit:
                item = queue.popleft()
                if isinstance(item, _FlushMarker):
                    markers.append(item)
                    break
                batch.append(item)
            if self._waiting_for_room:  # the batch left the queue: there is room already
                with self._room:
                    self._room.notify_all()
            if batch:
                started = time.monotonic()
                self._in_flight = batch
                try:
                    processed = self._process(batch)
                finally:
                    self._in_flight = []
                if not processed:
                    queue.extendleft(reversed([*batch, *markers]))  # as they were queued
                    if not self._stopping:
                        time.sleep(self._journal_backoff)
                        self._journal_backoff = min(self._journal_backoff * 2, 5.0)
                    return False
                self._pace(len(batch), time.monotonic() - started)
            if markers and self.healthy and self._journal_pending:
                # Records that overflowed a full queue went to the journal
                # while the database was reachable: a flush must see them
                # written, or the caller would not read its own writes.
                self._maybe_replay()
            for marker in markers:
                marker.done.set()
        return True

    def _pace(self, rows: int, seconds: float) -> None:
        """Size the next batch from how long this one took (see ``__init__``), never above
        the size the server last stopped as too slow."""
        if seconds > self._batch_seconds:
            smallest = min(MIN_BATCH, self.batch_size, self._ceiling)
            self._batch_limit = max(smallest, self._batch_limit // 2)
        elif rows >= self._batch_limit and seconds < self._batch_seconds / 2:
            self._batch_limit = min(self.batch_size, self._ceiling, self._batch_limit * 2)

    def _process(self, batch: list[Queued]) -> bool:
        """Write the batch, or journal it; False when neither could be done."""
        if not self.healthy and not self._recover():
            return self._to_journal(batch)
        try:
            self._write_isolating(batch)
        except Exception as error:
            if not is_connection_error(error):
                raise
            self._mark_unhealthy(error)
            return self._to_journal(batch)
        return True

    def _mark_unhealthy(self, error: BaseException) -> None:
        if self.healthy:
            log.error("store unreachable, journaling records until it returns: %s", error)
        self.healthy = False
        self.stats.last_error = f"{type(error).__name__}: {error}".splitlines()[0]
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 5.0)

    def _recover(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            if self._on_reconnect is not None:
                self._on_reconnect()
        except Exception as error:
            if not is_connection_error(error):
                raise
            self._mark_unhealthy(error)
            return False
        log.warning("store reachable again: replaying the journal")
        self.healthy = True
        # The back-off starts over only once a batch is written (``_write_isolating``): a
        # database that answers but cannot take the records (read-only, a revoked grant)
        # was probed, marked reachable and found unwritable four times a second for good.
        self._maybe_replay(final=True)
        return self.healthy

    def _maybe_replay(self, final: bool = False) -> None:
        """Replay journal segments when there may be some (ours, or a dead process's)."""
        now = time.monotonic()
        if not self.healthy or not (self._journal_pending or final or now >= self._next_replay):
            return
        self._next_replay = now + 30.0
        # Cleared before sealing, not after replaying: a caller that journals a record
        # meanwhile (a full queue) sets it again, and the next flush replays that too.
        self._journal_pending = False
        self.journal.seal()
        try:
            for _path, entries in self.journal.claim():
                records = [r for r in (self._revive(kind, data) for kind, data in entries) if r]
                for start in range(0, len(records), self.batch_size):
                    self._write_isolating(records[start : start + self.batch_size])
                self.stats.replayed += len(records)
        except Exception as error:
            self._journal_pending = True
            if not is_connection_error(error):
                raise
            self._mark_unhealthy(error)

    def _revive(self, kind: str, data: dict[str, Any]) -> AnyRecord | None:
        try:
            return KINDS[kind].model_validate(data)
        except (KeyError, ValidationError) as error:
            self._reject(kind, data, f"unreadable journal entry: {error}")
            return None

    def _to_journal(self, records: Sequence[Queued], *, replay_soon: bool = True) -> bool:
        """Append records to the journal; False (logged, and named by ``status()``) when it
        cannot be written, so that the caller keeps them. Unless ``replay_soon``, they wait
        for the periodic replay (every 30 s) rather than the next batch."""
        try:
            self.journal.append([(KIND_OF[type(r)], dump(r)) for r in records])
        except Exception as error:  # a full disk, a folder that cannot be written
            text = f"{type(error).__name__}: {error}".splitlines()[0]
            self.stats.last_error = f"journal: {text}"
            # Once per failure, not once per record while it lasts.
            (log.debug if self._journal_failing else log.error)(
                "store journal cannot be written (%s): records kept in memory", text
            )
            self._journal_failing = True
            return False
        if self._journal_failing:
            log.info("store journal can be written again")
        self.stats.journaled += len(records)
        self._journal_pending = self._journal_pending or replay_soon
        self._journal_failing = False
        self._journal_backoff = 0.25
        return True

    def _write_isolating(self, batch: Sequence[Queued]) -> None:
        """Write a batch; if its data is refused, bisect to write all but the bad records.

        A batch the server stopped for taking too long is written in parts of half its size,
        each split again if it is stopped too, and no later batch is larger; a single record
        that still takes too long waits in the journal for the periodic replay (the server
        may only be busy), while the records around it are written.
        """
        try:
            self._write_retrying(batch)
        except Exception as error:
            if _sqlstate(error) in TOOK_TOO_LONG:
                if len(batch) > 1:
                    log.info("store writer: a batch of %d took too long: halves", len(batch))
                    self._ceiling = max(1, min(self._ceiling, len(batch) // 2))
                    self._batch_limit = min(self._batch_limit, self._ceiling)
                    start = 0
                    while start < len(batch):  # each part no larger than the latest ceiling
                        part = batch[start : start + self._ceiling]
                        self._write_isolating(part)
                        start += len(part)
                    return
                # Alone, it would fail the batch it came in, and the journal's every replay:
                # the records after it went to the journal behind it for good. It waits for
                # the periodic replay, and the others are written.
                log.warning("store writer: a record took too long on its own: %s", error)
                if self._to_journal(batch, replay_soon=False):
                    return
            if is_connection_error(error) and not _is_data_error(error):
                raise
            if len(batch) == 1:
                record = batch[0]
                self._reject(KIND_OF[type(record)], dump(record), _describe(error))
                return
            middle = len(batch) // 2
            self._write_isolating(batch[:middle])
            self._write_isolating(batch[middle:])
            return
        self.stats.written += len(batch)
        self.stats.batches += 1
        self._backoff = 0.25
        self._unchecked = True
        self.stats.last_flush_at = datetime.now(UTC)

    def _write_retrying(self, batch: Sequence[Queued]) -> None:
        """Write a batch in one transaction, again when PostgreSQL undid it to break a
        deadlock or a serialization failure.

        Such a batch lost a race with another writer of the same database (another
        process or store); nothing is wrong with it or with the server. Taken for an
        outage, it went to the journal, the store called itself unreachable, and a
        ``flush()`` returned before the records were written.
        """
        for attempt in range(1, RACE_RETRIES + 1):
            try:
                with self.engine.connect().execution_options(**WRITE) as conn, conn.begin():
                    if conn.dialect.name == "sqlite":
                        conn.exec_driver_sql(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
                    rollups.as_writer(conn)
                    write_batch(conn, batch, self.max_result_bytes)
                return
            except sa_exc.DBAPIError as error:
                if attempt == RACE_RETRIES or _sqlstate(error) not in LOST_RACE:
                    raise
                log.info("store writer: batch lost a race (%s), writing it again", _sqlstate(error))
                time.sleep(random.uniform(0, RACE_PAUSE * attempt))

    def _reject(self, kind: str, data: dict[str, Any], reason: str) -> None:
        log.error("store rejected a %s record (id %s): %s", kind, data.get("id"), reason)
        dumps = serialize.dumps
        line = (
            f'{{"kind":{dumps(kind)},"reason":{dumps(reason)},"at":{dumps(datetime.now(UTC))},'
            f'"record":{serialize.dumps_fields(data)}}}'
        )
        with self._reject_lock:
            self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
            with self.rejected_path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        self.stats.rejected += 1


LOST_RACE = frozenset({"40P01", "40001"})
"""PostgreSQL's deadlock_detected and serialization_failure: the transaction was undone
because of what another one did, and written again it goes through."""
TOOK_TOO_LONG = frozenset({"57014", "55P03"})
"""PostgreSQL's query_canceled (past ``statement_timeout``, or cancelled by an
administrator) and lock_not_available (past ``lock_timeout``): reported as an
OperationalError, as a lost connection is. Taken for an outage, the batch was journaled
and replayed just as large, cancelled again each time, and the store stayed
"unreachable" for good."""
RACE_RETRIES = 5
RACE_PAUSE = 0.05
"""Seconds; a retry waits a random time up to this times its number, so that the writers
that deadlocked do not meet again in step."""


def _sqlstate(error: BaseException) -> str:
    return getattr(getattr(error, "orig", None), "sqlstate", None) or ""


def _is_data_error(error: BaseException) -> bool:
    """Refusals of data that drivers report as OperationalError, and which writing again
    would only repeat: SQLite's "too big" and "datatype mismatch", and PostgreSQL's
    program limits (class 54: a string of over 256 MiB in JSONB, a value nested too
    deeply to parse). Taken for an outage, such a record went to the journal and came
    back at every replay, and every record after it was journaled behind it."""
    message = str(getattr(error, "orig", error)).lower()
    return (
        "too big" in message or "datatype mismatch" in message or _sqlstate(error).startswith("54")
    )


def _describe(error: BaseException) -> str:
    original = getattr(error, "orig", None) or error
    text_ = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    if "foreign key" in text_.lower():
        return f"refers to an execution that does not exist ({text_})"
    if "unique" in text_.lower() or "duplicate" in text_.lower():
        return f"duplicate record ({text_})"
    return f"{type(original).__name__}: {text_}"


# -- one batch, one transaction ----------------------------------------------


def write_batch(conn: Connection, batch: Iterable[Queued], max_result_bytes: int) -> None:
    """Insert a batch and update the rollups it changes, idempotently by record id."""
    groups: dict[type, dict[str, Any]] = {}
    for record in batch:
        kind = type(record)
        if kind is ToolExecutionRecord:  # from ``record()`` or a journal replay
            kind, record = ToolCall, ToolCall.of(record)
        # A record sent twice (a client's retry) is written once, as the database would
        # keep it: the first. Counted twice, the rollups would disagree with the rows.
        groups.setdefault(kind, {}).setdefault(record.id, record)
    now = datetime.now(UTC)

    def of(kind: type) -> list[Any]:
        return list(groups[kind].values()) if kind in groups else []

    new_execs = _insert_executions(conn, of(ExecutionRecord), now)
    new_tools = _insert_tool_executions(conn, of(ToolCall), max_result_bytes)
    _insert_plain(conn, s.routing_decisions, of(RoutingDecision))
    new_feedback = _insert_feedback(conn, of(FeedbackRecord), now)
    _insert_plain(conn, s.solutions, of(SolutionRecord))
    _insert_plain(conn, s.tool_creation_events, of(ToolCreationEvent))

    sums = rollups.aggregate_executions(new_execs)
    rollups.aggregate_feedback(new_feedback, into=sums)
    rollups.add_execution_rollup(conn, sums)
    tools = rollups.aggregate_tools(new_tools)
    rollups.add_tool_aggregates(conn, tools)
    if tools:
        rollups.refresh_tool_derived(conn, sorted(tools))


def _existing_ids(conn: Connection, table: Table, ids: list[str]) -> set[str]:
    query = built_once(
        ("existing", table.name),
        lambda: select(table.c.id).where(table.c.id.in_(bindparam("ids", expanding=True))),
    )
    found: set[str] = set()
    for chunk in id_chunks(ids):
        found.update(conn.scalars(query, {"ids": chunk}))
    return found


def _lock_goal_seq() -> Any:
    meta = s.store_meta
    return select(meta.c.int_value).where(meta.c.key == "goal_seq").with_for_update()


_NUMBERED_GOAL = re.compile(r"goal_([1-9][0-9]{0,17})").fullmatch


def _raise_goal_numbers() -> Any:
    meta = s.store_meta
    return (
        update(meta)
        .where(meta.c.key == "goal_seq", meta.c.int_value < bindparam("n"))
        .values(int_value=bindparam("n"))
    )


def _take_goal_numbers() -> Any:
    meta = s.store_meta
    return (
        update(meta)
        .where(meta.c.key == "goal_seq")
        .values(int_value=meta.c.int_value + bindparam("need"))
        .returning(meta.c.int_value)
    )


def _insert_executions(
    conn: Connection, records: list[ExecutionRecord], now: datetime
) -> list[ExecutionRecord]:
    if not records:
        return []
    # Taking the counter's row lock first serialises execution writers on
    # PostgreSQL, so the existence check below cannot race with a replay.
    conn.execute(built_once(("lock goal_seq",), _lock_goal_seq))
    existing = _existing_ids(conn, s.executions, [r.id for r in records])
    new = [r for r in records if r.id not in existing]
    given = [int(m[1]) for r in new if r.goal_id and (m := _NUMBERED_GOAL(r.goal_id))]
    if given:
        # A caller's own ``goal_N`` moves the counter past N, so that the
        # numbers handed out later never collide with it.
        conn.execute(built_once(("raise goal numbers",), _raise_goal_numbers), {"n": max(given)})
    need = sum(1 for r in new if r.goal_id is None)
    if need:
        last = conn.execute(
            built_once(("take goal numbers",), _take_goal_numbers), {"need": need}
        ).scalar_one()
        numbers = iter(range(last - need + 1, last + 1))
    encoder = _encoders(conn.dialect).executions
    rows = []
    for record in new:
        values = dict(record.__dict__, recorded_at=now)
        if values["goal_id"] is None:
            # Only the row gets the number: if this transaction rolls back, the
            # record must still ask for one when it is retried or replayed.
            values["goal_id"] = f"goal_{next(numbers)}"
        rows.append(encoder.encode(values))
    if rows:
        if conn.dialect.name == "postgresql":
            _copy_rows(conn, encoder.copy, rows)
        else:
            insert_rows(conn, encoder.insert, rows)
    return new


def _insert_tool_executions(
    conn: Connection, records: list[ToolCall], max_result_bytes: int
) -> list[ToolCall]:
    """The bulk of all writes: encoded straight to driver parameters, one JSON encoding each.

    The common case (no row stored before) is one bulk insert that fails on
    a conflict (PostgreSQL: ``COPY``, several times faster than an insert per
    row) or ignores it (SQLite, where inserts are cheap and the row count
    tells): if every row went in, we are done. Otherwise (a journal replay, a
    record resubmitted) it is undone and redone knowing which rows exist, so
    the rollups count each row once.
    """
    if not records:
        return []
    encoder = _encoders(conn.dialect).tools
    rows = [encoder.encode(r, max_result_bytes) for r in records]
    attempt = conn.begin_nested()
    if conn.dialect.name == "postgresql":
        try:
            _copy_rows(conn, encoder.copy, rows)
            inserted = True
        except sa_exc.IntegrityError:  # a taken id, most likely: the slow path will tell
            inserted = False
    else:
        inserted = insert_rows(conn, encoder.insert, rows, IGNORE_TAKEN_IDS) == len(rows)
    if inserted:
        attempt.commit()
        return records
    attempt.rollback()
    existing = _existing_ids(conn, s.tool_executions, [r.id for r in records])
    keep = [i for i, r in enumerate(records) if r.id not in existing]
    if keep:
        insert_rows(conn, encoder.insert, [rows[i] for i in keep])
    return [records[i] for i in keep]


IGNORE_TAKEN_IDS = " ON CONFLICT (id) DO NOTHING"


def _copy_rows(conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """PostgreSQL's ``COPY``: rows go in several times faster than by ``INSERT`` each.

    ``COPY`` goes around SQLAlchemy, so its errors are translated here into
    SQLAlchemy's, which the writer sorts into "unreachable" and "bad data".
    """
    import psycopg

    raw = conn.connection.dbapi_connection
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            write = copy.write_row
            for row in rows:
                write(row)
    except psycopg.Error as error:
        raise sa_exc.DBAPIError.instance(
            statement,
            None,
            error,
            psycopg.Error,
            connection_invalidated=raw.broken or raw.closed,
            dialect=conn.dialect,
        ) from error


@dataclass(frozen=True, slots=True)
class _ToolRowEncoder:
    insert: str
    copy: str
    uuid: Callable[[Any], Any]
    boolean: Callable[[Any], Any]
    timestamp: Callable[[Any], Any]

    def encode(self, r: ToolCall, max_result_bytes: int) -> tuple[Any, ...]:
        (
            id_,
            execution_id,
            step_id,
            tool_name,
            parameters,
            result,
            success,
            error,
            error_type,
            attempt,
            fallback_of,
            duration_ms,
            started_at,
            finished_at,
        ) = r
        result, truncated = serialize.capped_json(result, max_result_bytes)
        boolean, timestamp = self.boolean, self.timestamp
        return (
            self.uuid(id_),
            self.uuid(execution_id),
            step_id,
            tool_name,
            parameters,
            result,
            boolean(truncated),
            boolean(success),
            error,
            error_type.value if error_type is not None else None,
            attempt,
            fallback_of,
            float(duration_ms),
            timestamp(started_at),
            timestamp(finished_at),
        )


@dataclass(frozen=True, slots=True)
class _RowEncoder:
    """Any table's rows as driver parameters, through the processors SQLAlchemy would use.

    ``pick`` takes a row's values in column order at once (``operator.itemgetter``), and
    only the columns with a processor (``processed``: position and processor) are looked
    at one by one: an execution has 35 columns, and a Python step for each of them cost
    more than the processing.
    """

    insert: str
    copy: str
    pick: Callable[[dict[str, Any]], tuple[Any, ...]]
    processed: tuple[tuple[int, Callable[[Any], Any]], ...]

    def encode(self, values: dict[str, Any]) -> tuple[Any, ...]:
        row = list(self.pick(values))
        for i, process in self.processed:
            value = row[i]
            if value is not None:
                row[i] = process(value)
        return tuple(row)


@dataclass(frozen=True, slots=True)
class _Encoders:
    tools: _ToolRowEncoder
    executions: _RowEncoder


_ENCODERS: dict[str, _Encoders] = {}
_TOOL_COLUMNS = (
    "id",
    "execution_id",
    "step_id",
    "tool_name",
    "parameters",
    "result",
    "result_truncated",
    "success",
    "error",
    "error_type",
    "attempt",
    "fallback_of",
    "duration_ms",
    "started_at",
    "finished_at",
)


def _enum_value(value: Any) -> Any:
    return value.value


def _tool_row_encoder(dialect: Any) -> _ToolRowEncoder:
    return _encoders(dialect).tools


def _encoders(dialect: Any) -> _Encoders:
    """Encoders for the dialect, built once: SQLAlchemy's bind processors, resolved ahead."""
    encoders = _ENCODERS.get(dialect.name)
    if encoders is not None:
        return encoders
    mark = "?" if dialect.paramstyle == "qmark" else "%s"

    def insert(table: Table, columns: Sequence[str]) -> str:
        return (
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})"
        )

    def processor(table: Table, column: str) -> Callable[[Any], Any] | None:
        kind = table.c[column].type.dialect_impl(dialect)
        if isinstance(table.c[column].type, s.UTCDateTime) and dialect.name == "sqlite":
            return s.micros_since_epoch
        if isinstance(kind, JSON):
            return serialize.dumps  # what the engine's ``json_serializer`` does
        return kind.bind_processor(dialect)

    te = s.tool_executions
    if set(_TOOL_COLUMNS) != set(te.c.keys()):
        raise RuntimeError("the bulk encoder of tool_executions is out of step with its table")
    tools = _ToolRowEncoder(
        insert=insert(te, _TOOL_COLUMNS),
        copy=f"COPY {te.name} ({', '.join(_TOOL_COLUMNS)}) FROM STDIN",
        uuid=processor(te, "id") or _same,
        boolean=processor(te, "success") or _same,
        timestamp=processor(te, "started_at") or _same,
    )
    ex = s.executions
    fields = set(ExecutionRecord.model_fields) | {"recorded_at"}
    if fields != set(ex.c.keys()):
        raise RuntimeError("the bulk encoder of executions is out of step with its table")
    names = list(ex.c.keys())
    enums = {"status", "error_type"}
    processors = [_enum_value if name in enums else processor(ex, name) for name in names]
    executions = _RowEncoder(
        insert=insert(ex, names),
        copy=f"COPY {ex.name} ({', '.join(names)}) FROM STDIN",
        pick=operator.itemgetter(*names),
        processed=tuple(
            (i, process)
            for i, (name, process) in enumerate(zip(names, processors, strict=True))
            # SQLite's float processor is ``float()``, and a record's floats are floats
            # already (pydantic and ``checked_execution`` make them so).
            if process is not None and not isinstance(ex.c[name].type, Float)
        ),
    )
    encoders = _ENCODERS[dialect.name] = _Encoders(tools, executions)
    return encoders


def _same(value: Any) -> Any:
    return value


def _insert_plain(conn: Connection, table: Table, records: list[AnyRecord]) -> None:
    if records:
        stmt = dialect_insert(conn, table).on_conflict_do_nothing(index_elements=["id"])
        conn.execute(stmt, [r.model_dump() for r in records])


def _insert_feedback(
    conn: Connection, records: list[FeedbackRecord], now: datetime
) -> list[tuple[Any, Any]]:
    if not records:
        return []
    table = s.execution_feedback
    stmt = (
        dialect_insert(conn, table)
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(table.c.id)
    )
    # In one order for every writer, ids and executions alike: two writers of the same
    # database updating the same executions in different orders deadlocked.
    records = sorted(records, key=lambda r: r.id)
    if conn.dialect.name == "postgresql":
        now = conn.execute(built_once(("stamp feedback",), _stamp_feedback)).scalar_one()
    rows = [{**r.model_dump(), "recorded_at": now} for r in records]
    inserted = set(conn.scalars(stmt, rows))
    new = [r for r in records if r.id in inserted]
    if not new:
        return []
    ex = s.executions
    targets = {
        row.id: row
        for row in conn.execute(
            select(*rollups.EXEC_COLUMNS).where(ex.c.id.in_({r.execution_id for r in new}))
        )
    }
    conn.execute(
        built_once(("latest judgement",), _latest_judgement),
        [
            {"eid": r.execution_id, "rating": r.rating, "accepted": r.accepted, "at": r.created_at}
            for r in sorted(new, key=lambda r: r.execution_id)
        ],
    )
    return [(r, targets[r.execution_id]) for r in new]


FEEDBACK_LOCK = 0x646E647246656564
"""PostgreSQL advisory lock (any constant key) that feedback batches take in turn."""


def _stamp_feedback() -> Any:
    """The moment a batch's feedback is stamped with (``recorded_at``), taken once the
    batches before it that wrote feedback have committed, from the server's clock.

    Readers page through feedback by ``recorded_at``: a batch of one process stamped
    before another's but committed after it (a larger batch, a wait for a lock) showed
    its rows after the other's, and a reader already past that stamp never read them;
    so did the rows of a process whose host's clock ran behind. Feedback is rare, and
    holding the lock to the commit costs a batch the few statements after its feedback.
    """
    return text(f"SELECT clock_timestamp() FROM pg_advisory_xact_lock({FEEDBACK_LOCK})")


def _latest_judgement() -> Any:
    """The execution's rating and acceptance become the feedback's, unless a later feedback
    (by ``created_at``) already gave one: a journal replayed after newer feedback was
    written, or feedback sent from two processes, must not put the older judgement back."""
    ex, fb = s.executions, s.execution_feedback

    def judged(name: str, kind: Any) -> Any:
        given = cast(bindparam(name, type_=kind), kind)  # PostgreSQL must know its type
        later = (
            select(fb.c.id)
            .where(
                fb.c.execution_id == bindparam("eid"),
                fb.c[name].is_not(None),
                fb.c.created_at > bindparam("at", type_=fb.c.created_at.type),
            )
            .exists()
        )
        return case((and_(given.is_not(None), ~later), given), else_=ex.c[f"user_{name}"])

    return (
        update(ex)
        .where(ex.c.id == bindparam("eid"))
        .values(user_rating=judged("rating", Integer), user_accepted=judged("accepted", Boolean))
    )
