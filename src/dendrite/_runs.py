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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class _Run:
    loop: asyncio.AbstractEventLoop
    task: asyncio.Task[Any] | None
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class RunsInFlight:
    """Runs (each with its event loop and task) and the engine tasks that execute them.

    Runs may be on several loops at once: ``process()`` runs each call on a loop of its own,
    in its caller's thread, and a sync tool may start a nested run on yet another.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._runs: dict[object, _Run] = {}
        self._engines: dict[asyncio.Task[Any], asyncio.AbstractEventLoop] = {}

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
    def engine(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """Around the engine's execution of a run's plan: what :meth:`cancel` cancels."""
        with self._changed:
            self._engines[task] = asyncio.get_running_loop()
        try:
            yield
        finally:
            with self._changed:
                self._engines.pop(task, None)

    def cancel(self) -> None:
        """Cancel every engine task, from any thread; each run then records itself cancelled."""
        with self._changed:
            engines = list(self._engines.items())
        for task, loop in engines:
            with contextlib.suppress(RuntimeError):  # its loop closed already: nothing runs
                loop.call_soon_threadsafe(task.cancel)

    def wait_elsewhere(self, timeout: float) -> bool:
        """Wait until no run is left on another thread's loop; False if some still were when
        ``timeout`` passed. Runs on the calling thread's own running loop cannot go on while
        it waits here, so they are not waited for (``aclose()`` awaits them)."""
        try:
            here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            here = None

        def settled() -> bool:
            return all(run.loop is here or run.loop.is_closed() for run in self._runs.values())

        with self._changed:
            return self._changed.wait_for(settled, timeout)

    async def wait_here(self, timeout: float) -> bool:
        """Await the runs on the running loop, but the calling task's own, until each is
        recorded (the task that awaited one may go on to other work); False if some were
        still running when ``timeout`` passed."""
        loop, me = asyncio.get_running_loop(), asyncio.current_task()
        with self._changed:
            ended = [
                run.ended.wait()
                for run in self._runs.values()
                if run.loop is loop and run.task is not me
            ]
        if not ended:
            return True
        try:
            await asyncio.wait_for(asyncio.gather(*ended), timeout)
        except TimeoutError:
            return False
        return True
