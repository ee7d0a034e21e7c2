"""The local, append-only journal that keeps records while the database cannot.

When a batch cannot be written (database unreachable, locked past its busy
timeout) or the in-memory queue is full, the records are appended here as JSON
lines and fsync'd before the writer moves on. Each process appends to its own
segment file and holds an exclusive ``flock`` on it; a replayer takes the same
lock, so a segment is never replayed while it is still being written and never
by two processes at once. Replay is idempotent (records keep their client ids),
so a crash between "committed" and "segment deleted" costs nothing but time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from dendrite.store import serialize

log = logging.getLogger("dendrite.store.journal")

SUFFIX = ".jsonl"


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._file: IO[str] | None = None
        self._path: Path | None = None

    def append(self, entries: list[tuple[str, dict[str, Any]]]) -> None:
        """Durably append ``(kind, record)`` pairs; returns after fsync."""
        if not entries:
            return
        payload = "".join(
            f'{{"kind":{serialize.dumps(kind)},"record":{serialize.dumps_fields(record)}}}\n'
            for kind, record in entries
        )
        with self._lock:
            handle = self._open()
            try:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            except BaseException:
                # A partial line ends this segment (replay skips it); the next append
                # starts a new one instead of running its first record into the line.
                self._file = self._path = None
                with contextlib.suppress(OSError):
                    handle.close()
                raise

    def _open(self) -> IO[str]:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            name = f"{time.time_ns():020d}-{os.getpid()}-{threading.get_ident()}{SUFFIX}"
            path = self.directory / name
            # Locked before it gets a name that replay looks for: a replayer that found
            # it unlocked would take it for a finished segment, find it empty, and delete
            # it under the records about to be written to it.
            opening = path.with_name(f"{name}.opening")
            handle = opening.open("a", encoding="utf-8")
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            opening.rename(path)
            self._file, self._path = handle, path
        return self._file

    def seal(self) -> None:
        """Close the active segment so that it can be replayed."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = self._path = None

    def segments(self) -> list[Path]:
        if not self.directory.is_dir():
            return []
        return sorted(self.directory.glob(f"*{SUFFIX}"))

    def record_count(self) -> int:
        """Records waiting in all segments (sealed or active, of any process)."""
        total = 0
        for path in self.segments():
            try:
                with path.open("rb") as handle:
                    total += sum(1 for line in handle if line.strip())
            except FileNotFoundError:
                continue
        return total

    def claim(self) -> Iterator[tuple[Path, list[tuple[str, dict[str, Any]]]]]:
        """Yield each replayable segment with its records while holding its lock.

        The segment is deleted when the consumer asks for the next one (or
        finishes); if the consumer raises, the segment stays for a later replay.
        """
        for path in self.segments():
            if self._path is not None and path == self._path:
                continue
            try:
                handle = path.open("r", encoding="utf-8")
            except FileNotFoundError:
                continue
            with handle:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # still being written, or replayed by another process
                if not path.exists():
                    continue  # replayed and removed while we waited for the lock
                yield path, list(_parse(path, handle))
                path.unlink(missing_ok=True)


def _parse(path: Path, handle: IO[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            yield entry["kind"], entry["record"]
        except (ValueError, KeyError, TypeError):
            # Only a crash in the middle of a write leaves a partial line, and
            # the batch it belonged to was never reported as journaled.
            log.warning("skipping unreadable line %d of journal segment %s", number, path)
