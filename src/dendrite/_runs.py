"""The runs an orchestrator has in flight, kept so that closing it can stop them and wait
until each is recorded, before the store they record into closes.

Without the wait, a run cancelled by ``close()`` recorded itself after the orchestrator's
own store had closed: its records went to the journal and reached the database only at
the next start, so a caller reading the history right after ``close()`` did not find the
run it had just seen cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

RECHECK = 0.1
"""Seconds between looks at the runs' loops while waiting: a loop that stops (Ctrl-C in
``run_until_complete``) or closes says so to nobody, and its runs will not go on."""


@dataclass(frozen=True, slots=True)
class _Run:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[Any] | None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def can_go_on(self) -> bool:
        return self.loop.is_running() and not self.loop.is_closed()


class RunsInFlight:
    """Runs (each with its event loop and task) and the work of theirs that closing cancels.

    Runs may be on several loops at once: ``process()`` runs each call on a loop of its own,
    in its caller's thread, and a sync tool may start a nested run on yet another.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._runs: dict[object, _Run] = {}
        self._cancellable: set[asyncio.Task[Any]] = set()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        """Around a whole run, its recording included."""
        token, run = object(), _Run(asyncio.get_running_loop(), asyncio.current_task())
        with self._changed:
            self._runs[token] = run
        try:
            yield
        finally:
            run.ended.set()
            with self._changed:
                del self._runs[token]
                self._changed.notify_all()

    @contextlib.contextmanager
    def cancellable(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """Around a run's planning or the engine's execution of its plan: what :meth:`cancel`
        cancels. The caller's own task is not: it may have other work than the run."""
        with self._changed:
            self._cancellable.add(task)
        try:
            yield
        finally:
            with self._changed:
                self._cancellable.discard(task)

    def cancel(self) -> None:
        """Cancel the runs' planning and execution, from any thread; each run then records
        itself cancelled."""
        with self._changed:
            tasks = list(self._cancellable)
        for task in tasks:
            with contextlib.suppress(RuntimeError):  # its loop closed already: nothing runs
                task.get_loop().call_soon_threadsafe(task.cancel)

    def wait_elsewhere(self, deadline: float) -> bool:
        """Wait, until ``deadline`` (``time.monotonic()``), for the runs that can end without
        the caller: not those on the calling thread's own running loop, which cannot go on
        while it waits here (``aclose()`` awaits them), nor those on a loop that has stopped.
        False if some were still running at the deadline."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None

        def settled() -> bool:
            return not any(r.loop is not here and r.can_go_on() for r in self._runs.values())

        with self._changed:
            while not settled():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(min(left, RECHECK))
            return True

    async def wait_here(self, deadline: float) -> bool:
        """Await the runs on the running loop, but the calling task's own, until each is
        recorded (the task that awaited one may go on to other work), or until ``deadline``;
        False if some were still running then."""
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        with self._changed:
            ended = [r.ended for r in self._runs.values() if r.loop is loop and r.task is not me]
        waiters = [asyncio.ensure_future(event.wait()) for event in ended if not event.is_set()]
        if not waiters:
            return True
        try:
            _, pending = await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            for waiter in waiters:
                waiter.cancel()
        return not pending
