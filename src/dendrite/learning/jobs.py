"""Learning jobs: the slow half of the learning loop, on a schedule or on demand.

Runs teach the ranker, health monitor, router and plan memory at once. Some
lessons need the whole history instead, or must act on tools for every
process that shares the store: refreshing statistics, finding tools that
keep failing, retiring unused tools and promoting generated ones that keep
working, applying feedback recorded by another process, adapting quality
policies, and enforcing retention. Each job is a function of a
:class:`JobContext` that returns a JSON report; :func:`run_job` records every
run (success, error, report) in the store's ``job_runs`` table, and
:class:`JobScheduler` runs them periodically inside ``dendrite serve``.

Tool decisions (archive, deprecate, promote) are kept in the store's global
state beside the tool states set by hand, so every later orchestrator on the
store applies them at start; they are undone by ``dendrite tools enable``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dendrite.learning.policies import QualityPolicies
from dendrite.state import FOREVER, StateManager
from dendrite.store.errors import worth_a_traceback
from dendrite.tools import Reliability

if TYPE_CHECKING:
    from dendrite.orchestrator import Orchestrator
    from dendrite.store import ExecutionStore
    from dendrite.store.bookkeeping import JobRun

log = logging.getLogger("dendrite.jobs")

TOOL_STATES_KEY = "tool_states"
LIFECYCLE_KEY = "tool_lifecycle"
LOW_PERFORMERS_KEY = "low_performers"
REOPENED = "reopened"
"""The lifecycle stage of a tool enabled by hand after it was archived or deprecated."""
WAITING_SINCE_KEY = "jobs_waiting_since"
"""Global state: when a scheduler first waited for each job that had never run."""


@dataclass(slots=True)
class JobSettings:
    """Thresholds of the jobs; the defaults suit a service with steady traffic."""

    window: timedelta = timedelta(days=7)
    """How far back "lately" reaches for low performers and promotions."""
    min_attempts: int = 20
    low_success: float = 0.5
    """A tool below this success rate lately, with ``min_attempts``, is a low performer."""
    deprecate_success: float = 0.2
    """Below this, with ``2 * min_attempts``, it is deprecated (quarantined for good)."""
    promote_success: float = 0.95
    """A generated tool at or above this, with ``min_attempts``, is promoted."""
    unused_for: timedelta = timedelta(days=30)
    """A tool unused this long (and used before) is archived (disabled)."""
    retention: timedelta = timedelta(days=90)


@dataclass(slots=True)
class JobContext:
    store: ExecutionStore
    orchestrator: Orchestrator | None = None
    settings: JobSettings = field(default_factory=JobSettings)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    feedback_since: datetime | None = None
    """Where the ``feedback`` job resumes; the scheduler carries it between runs."""
    feedback_read: dict[str, datetime] = field(default_factory=dict)
    """The feedback ids the job read in the last ``FEEDBACK_OVERLAP``, with when each was
    written: it reads that stretch again, and must not learn them again."""

    _state: StateManager | None = field(default=None, init=False, repr=False)

    @property
    def state(self) -> StateManager:
        """The orchestrator's state manager, or one of this context's own (made once)."""
        if self.orchestrator is not None:
            return self.orchestrator.state
        if self._state is None:
            self._state = StateManager(self.store)
        return self._state


Job = Callable[[JobContext], dict[str, Any]]


def statistics(ctx: JobContext) -> dict[str, Any]:
    """Rebuild the tool statistics and rollups from the rows (repairs any drift)."""
    ctx.store.update_statistics()
    tools = ctx.store.get_tool_performance()
    return {"tools": len(tools), "attempts": sum(t.total_executions for t in tools)}


def low_performers(ctx: JobContext) -> dict[str, Any]:
    """Tools whose recent success rate is below ``low_success``; kept for dashboards."""
    settings = ctx.settings
    recent = ctx.store.get_recent_tool_outcomes(ctx.now - settings.window)
    found = [
        {
            "tool": r.tool_name,
            "attempts": r.attempts,
            "success_rate": round(r.success_rate, 4),
            "alternatives": _alternatives(ctx, r.tool_name),
        }
        for r in recent
        if r.attempts >= settings.min_attempts and r.success_rate < settings.low_success
    ]
    found.sort(key=lambda f: f["success_rate"])
    report = {"checked_at": ctx.now.isoformat(), "tools": found}
    ctx.state.set("global", LOW_PERFORMERS_KEY, report, ttl=FOREVER)
    return {"checked": len(recent), "low_performers": found}


def _alternatives(ctx: JobContext, name: str) -> list[str]:
    if ctx.orchestrator is None:
        return []
    tool = ctx.orchestrator.registry.find(name)
    return list(tool.alternatives) if tool is not None else []


def lifecycle(ctx: JobContext) -> dict[str, Any]:
    """Archive unused tools, deprecate failing ones, promote generated tools that work."""
    settings = ctx.settings
    state = ctx.state
    saved = dict(state.get("global", LIFECYCLE_KEY, {}) or {})
    # A tool enabled by hand after a decision is judged again, on its record since then.
    reopened = {
        name: datetime.fromisoformat(entry["reopened_at"])
        for name, entry in saved.items()
        if isinstance(entry, dict) and entry.get("reopened_at")
    }
    archived, deprecated, promoted = [], [], []
    for stats in ctx.store.get_tool_performance():
        name = stats.tool_name
        if saved.get(name, {}).get("stage") in ("archived", "deprecated"):
            continue
        last_used = max(filter(None, (stats.last_used, reopened.get(name))), default=None)
        if last_used is not None and ctx.now - last_used > settings.unused_for:
            reason = f"archived: unused since {last_used:%Y-%m-%d}"
            _set_status(ctx, name, "disabled", reason)
            saved[name] = _decided(saved.get(name), "archived", reason, ctx.now)
            archived.append(name)
    start = ctx.now - settings.window
    recent = {r.tool_name: r for r in ctx.store.get_recent_tool_outcomes(start)}
    for name, since in reopened.items():
        if since > start:
            lately = [r for r in ctx.store.get_recent_tool_outcomes(since) if r.tool_name == name]
            if lately:
                recent[name] = lately[0]
            else:
                recent.pop(name, None)
    for name, r in recent.items():
        if saved.get(name, {}).get("stage") == "deprecated":
            continue
        if r.attempts >= 2 * settings.min_attempts and r.success_rate < settings.deprecate_success:
            reason = (
                f"deprecated: {r.success_rate:.0%} success over {r.attempts} attempts "
                f"in the last {settings.window.days} days"
            )
            _set_status(ctx, name, "quarantined", reason)
            saved[name] = _decided(saved.get(name), "deprecated", reason, ctx.now)
            deprecated.append(name)
    generated = {
        e.tool_name for e in ctx.store.get_tool_creations(limit=1000) if e.validation_passed
    }
    for name in sorted(generated):
        r = recent.get(name)
        if saved.get(name, {}).get("stage") in ("promoted", "deprecated", "archived") or r is None:
            continue
        if r.attempts >= settings.min_attempts and r.success_rate >= settings.promote_success:
            reason = f"promoted: {r.success_rate:.0%} success over {r.attempts} attempts"
            saved[name] = _decided(saved.get(name), "promoted", reason, ctx.now)
            promoted.append(name)
            apply_promotion(ctx.orchestrator, name)
    changed = {name: saved[name] for name in (*archived, *deprecated, *promoted)}
    if changed:
        _merge(state, LIFECYCLE_KEY, changed)
    return {"archived": archived, "deprecated": deprecated, "promoted": promoted}


def _decided(entry: Any, stage: str, reason: str, now: datetime) -> dict[str, Any]:
    """A tool's new lifecycle entry; a hand's reopening stays on it, so later runs go on
    judging the tool on its record since (a promotion must not bring back older failures)."""
    decided = {"stage": stage, "reason": reason, "since": now.isoformat()}
    if isinstance(entry, dict) and entry.get("reopened_at"):
        decided["reopened_at"] = entry["reopened_at"]
    return decided


def reopen(state: StateManager, name: str, now: datetime) -> None:
    """Undo an archive or deprecation (the tool was enabled by hand): the lifecycle job
    judges the tool again, on what it does from ``now`` on."""

    def reopened(table: Any) -> dict[str, Any]:
        table = dict(table) if isinstance(table, dict) else {}
        entry = table.get(name)
        if isinstance(entry, dict) and entry.get("stage") in ("archived", "deprecated"):
            opened = _decided(None, REOPENED, "enabled by hand", now)
            table[name] = {**opened, "reopened_at": opened["since"]}
        return table

    state.update("global", LIFECYCLE_KEY, reopened, ttl=FOREVER)


def apply_promotion(orchestrator: Orchestrator | None, name: str) -> None:
    """A promoted tool is trusted like a hand-written one: high reliability."""
    if orchestrator is None:
        return
    tool = orchestrator.registry.find(name)
    if tool is not None:
        tool.reliability = Reliability.HIGH


def _set_status(ctx: JobContext, name: str, status: str, reason: str) -> None:
    """Through the orchestrator when its registry has the tool, else into the saved states."""
    orch = ctx.orchestrator
    if orch is not None and name in orch.registry:
        orch.set_tool_status(name, status, reason)
        return
    save_tool_state(ctx.state, name, status, reason, ctx.now)


def save_tool_state(
    state: StateManager, name: str, status: str, reason: str | None, since: datetime
) -> None:
    """Keep a tool's status in global state, where every later orchestrator reads it at start."""
    _merge(
        state,
        TOOL_STATES_KEY,
        {name: {"status": status, "reason": reason, "since": since.isoformat()}},
    )


def _merge(state: StateManager, key: str, entries: dict[str, Any]) -> None:
    """Add ``entries`` by name to the table kept under ``key`` in global state, in the
    store's copy: what other processes added to it meanwhile stays."""
    state.update(
        "global",
        key,
        lambda now: {**(now if isinstance(now, dict) else {}), **entries},
        ttl=FOREVER,
    )


def retention(ctx: JobContext) -> dict[str, Any]:
    """Delete history older than ``retention`` (the rollups keep its numbers) and stale state."""
    report = ctx.store.prune(ctx.settings.retention)
    expired = ctx.store.purge_expired_state()
    return {**report.model_dump(mode="json"), "expired_state_entries": expired}


FEEDBACK_OVERLAP = timedelta(seconds=30)
"""How far before the last feedback read the ``feedback`` job reads again: longer than a
write transaction of the store takes between stamping its rows and committing them."""


def feedback(ctx: JobContext) -> dict[str, Any]:
    """Learn feedback recorded since the last run, by any process (the CLI, another server)."""
    orch = ctx.orchestrator
    if orch is None or orch.learning is None:
        return {"skipped": "no learning loop in this process", "learned": 0}
    # Read again from a little before the last row read: a transaction that stamped its
    # rows before that one's but committed after it would be passed over. What was learned
    # already is known by its feedback id and not learned twice.
    since = ctx.feedback_since and ctx.feedback_since - FEEDBACK_OVERLAP
    learned = seen = 0
    for record in ctx.store.iter_feedback(since):
        since = record.recorded_at
        if record.id in ctx.feedback_read:
            continue
        ctx.feedback_read[record.id] = record.recorded_at or ctx.now
        seen += 1
        effect = orch.learn_feedback(
            record.execution_id, record.rating, record.accepted, feedback_id=record.id
        )
        learned += effect.reward is not None
    if since is not None and (ctx.feedback_since is None or since > ctx.feedback_since):
        ctx.feedback_since = since
    until = ctx.feedback_since
    if until is not None:
        kept = until - FEEDBACK_OVERLAP
        ctx.feedback_read = {i: at for i, at in ctx.feedback_read.items() if at >= kept}
    return {"read": seen, "learned": learned, "until": until.isoformat() if until else None}


def quality(ctx: JobContext) -> dict[str, Any]:
    """Move each project's quality policy toward its measured success."""
    policies = ctx.orchestrator.policies if ctx.orchestrator is not None else None
    policies = policies or QualityPolicies(ctx.state)
    adapted = policies.adapt_all(ctx.store)
    return {"policies": [p.model_dump(mode="json") for p in adapted]}


JOBS: dict[str, tuple[Job, timedelta]] = {
    "statistics": (statistics, timedelta(hours=1)),
    "low_performers": (low_performers, timedelta(hours=1)),
    "lifecycle": (lifecycle, timedelta(days=1)),
    "retention": (retention, timedelta(days=1)),
    "feedback": (feedback, timedelta(minutes=1)),
    "quality": (quality, timedelta(minutes=15)),
}
"""Every job by name, with how often the scheduler runs it."""


def describe(name: str) -> str:
    """The job's summary as ``dendrite jobs list`` and the API show it: the docstring's first
    line, its setting names as plain text rather than reStructuredText's ````low_success````."""
    job = JOBS[name][0]
    return (job.__doc__ or "").strip().splitlines()[0].replace("``", "")


class UnknownJobError(KeyError):
    def __str__(self) -> str:
        return f"unknown job {self.args[0]!r}; jobs are {', '.join(JOBS)}"


def run_job(name: str, ctx: JobContext, *, trigger: str = "manual") -> JobRun:
    """Run one job and record the run, failed or not; a failure is in the record, not raised."""
    if name not in JOBS:
        raise UnknownJobError(name)
    job = JOBS[name][0]
    started_at = datetime.now(UTC)
    ctx.now = started_at
    error, report = None, {}
    try:
        report = job(ctx)
    except Exception as failure:
        log.warning("job %s failed: %s", name, failure, exc_info=worth_a_traceback(failure))
        error = f"{type(failure).__name__}: {failure}"
    finished_at = datetime.now(UTC)
    return ctx.store.store_job_run(
        name,
        started_at=started_at,
        finished_at=finished_at,
        success=error is None,
        report=report,
        error=error,
        trigger=trigger,  # type: ignore[arg-type]
    )


class JobScheduler:
    """Runs every job at its interval in a worker thread, beside a serving event loop.

    Each job is first due one interval after its last recorded run (by any process, on
    demand or on schedule), at once if that has passed. A job that never ran is due one
    interval after the first start of any scheduler on the store found it waiting (kept
    in the store's global state), not after this start: counted from each start, a
    server restarted more often than a job's interval would never run it. A new store
    does not run every job at once: with no history, ``lifecycle`` and ``low_performers``
    would judge nothing. ``feedback`` learns from the moment the server started (earlier
    feedback was learned by the warm start).
    """

    def __init__(
        self,
        orchestrator: Orchestrator,
        *,
        intervals: dict[str, timedelta] | None = None,
        settings: JobSettings | None = None,
    ) -> None:
        if orchestrator.store is None:
            raise ValueError("jobs need a store: this orchestrator records nothing")
        unknown = sorted(set(intervals or {}) - set(JOBS))
        if unknown:
            raise ValueError(f"intervals name unknown job(s) {unknown}; jobs are {list(JOBS)}")
        for name, every in (intervals or {}).items():
            if not isinstance(every, timedelta):
                raise TypeError(f"interval of job {name!r} must be a timedelta, got {every!r}")
            if every <= timedelta(0):  # the job would run back to back, a row each time
                raise ValueError(f"interval of job {name!r} must be positive, got {every}")
        self.intervals = {name: every for name, (_, every) in JOBS.items()} | (intervals or {})
        self.context = JobContext(
            orchestrator.store, orchestrator, settings or JobSettings(), feedback_since=None
        )
        self.context.feedback_since = datetime.now(UTC)
        self.runs: list[JobRun] = []
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop after the job that is running, if any, has finished and been recorded.

        Cancelling mid-job would only abandon its thread: the job would go on
        and record itself after the server said it had stopped.
        """
        if self._task is not None:
            self._stopping.set()
            await self._task
            self._task = None

    def _first_due(self, start: float) -> dict[str, float]:
        """When each job is first due, on the monotonic clock, from its recorded runs.

        A recorded time in the future (another machine's clock) waits no more than
        one interval; a store that cannot be read leaves every job one interval away.
        """
        now = datetime.now(UTC)
        due = {}
        for name, every in self.intervals.items():
            try:
                since = self._since(name, now)
            except Exception as error:
                log.warning(
                    "could not read the last run of job %s: %s",
                    name,
                    error,
                    exc_info=worth_a_traceback(error),
                )
                since = now
            wait = min(every, max(timedelta(0), since + every - now))
            due[name] = start + wait.total_seconds()
        return due

    def _since(self, name: str, now: datetime) -> datetime:
        """When the job last ran, or else when a scheduler first waited for it."""
        last = self.context.store.get_job_runs(name, limit=1)
        if last:
            return last[0].started_at
        waiting = self.context.store.update_state(
            "global", "", WAITING_SINCE_KEY, lambda table: _first_wait(table, name, now)
        )
        return datetime.fromisoformat(waiting[name])

    async def _loop(self) -> None:
        due = await asyncio.to_thread(self._first_due, time.monotonic())
        while not self._stopping.is_set():
            name = min(due, key=due.__getitem__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), max(0.0, due[name] - time.monotonic())
                )
            if self._stopping.is_set():
                return
            try:
                run = await asyncio.to_thread(run_job, name, self.context, trigger="schedule")
                self.runs = [*self.runs[-99:], run]
            except Exception as error:
                log.warning(
                    "could not run or record job %s: %s",
                    name,
                    error,
                    exc_info=worth_a_traceback(error),
                )
            due[name] = time.monotonic() + self.intervals[name].total_seconds()


def _first_wait(table: Any, name: str, now: datetime) -> dict[str, str]:
    """The waiting-since table with ``name`` in it: its first recorded time is kept."""
    table = dict(table) if isinstance(table, dict) else {}
    try:
        kept = datetime.fromisoformat(table[name]).tzinfo is not None
    except (KeyError, TypeError, ValueError):
        kept = False
    if not kept:  # absent, or not a time with its zone (edited by hand): start waiting now
        table[name] = now.isoformat()
    return table
