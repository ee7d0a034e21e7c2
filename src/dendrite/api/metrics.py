"""Prometheus metrics of one API app, in a registry of its own.

Counters cover the runs this app served (``POST /v1/goals`` and its stream);
gauges about the store and the tools are read when ``/metrics`` is scraped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from dendrite.store.store import StoreStatus
from dendrite.tools import ToolRegistry, ToolStatus

__all__ = ["CONTENT_TYPE_LATEST", "ApiMetrics"]

_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter(
            "dendrite_runs",
            "Runs served by the API, by final status (a goal that could not be planned is failed)",
            ["status"],
            registry=r,
        )
        self.planning_errors = Counter(
            "dendrite_planning_errors",
            "Goals refused before running: no plan, or a plan that does not validate",
            registry=r,
        )
        self.attempts = Counter(
            "dendrite_step_attempts",
            "Tool-call attempts (retries and fallbacks included) of the runs served",
            ["tool", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "dendrite_run_duration_seconds",
            "Wall time of the runs served, planning included",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.in_progress = Gauge(
            "dendrite_runs_in_progress", "Runs the API is serving right now", registry=r
        )
        self.store_reachable = Gauge(
            "dendrite_store_reachable", "1 when the execution store answers, else 0", registry=r
        )
        self.store_pending = Gauge(
            "dendrite_store_pending_writes",
            "Records queued for the store's writer and not yet written",
            registry=r,
        )
        self.store_journal = Gauge(
            "dendrite_store_journal_records",
            "Records waiting in the journal for the database to come back",
            registry=r,
        )
        self.store_rejected = Gauge(
            "dendrite_store_rejected_records",
            "Records the database refused (see rejected.jsonl)",
            registry=r,
        )
        self.tools = Gauge("dendrite_tools", "Registered tools by state", ["status"], registry=r)
        self.uptime = Gauge("dendrite_uptime_seconds", "Seconds since the app started", registry=r)
        self._running = 0
        for status in ("succeeded", "failed", "partial", "cancelled"):
            self.runs.labels(status)

    @property
    def running(self) -> int:
        return self._running

    def start(self) -> None:
        self._running += 1
        self.in_progress.inc()

    def stop(self) -> None:
        self._running -= 1
        self.in_progress.dec()

    def observe_run(
        self, status: str, duration_s: float, steps: Iterable[Mapping[str, Any]] = ()
    ) -> None:
        self.runs.labels(status).inc()
        self.duration.observe(max(duration_s, 0.0))
        for step in steps:
            for attempt in step.get("attempts") or ():
                outcome = "success" if attempt.get("success") else "failure"
                self.attempts.labels(str(attempt.get("tool")), outcome).inc()

    def render(self, store: StoreStatus | None, registry: ToolRegistry, uptime_s: float) -> bytes:
        if store is not None:
            self.store_reachable.set(1 if store.reachable else 0)
            self.store_pending.set(store.pending_writes)
            self.store_journal.set(store.journal_records)
            self.store_rejected.set(store.rejected_records)
        counts = dict.fromkeys(ToolStatus, 0)
        for tool in registry:
            counts[tool.state.status] += 1
        for status, count in counts.items():
            self.tools.labels(status.value).set(count)
        self.uptime.set(uptime_s)
        return generate_latest(self.registry)
