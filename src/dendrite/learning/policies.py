"""Quality policies: per-project thresholds that follow the project's measured success.

A project whose goals keep failing should spend more to get them right: repair
failed plans, let the LLM plan when one is configured, and flag more results
for review. A project that succeeds almost always should spend less. Each
policy starts from the defaults, is re-measured over the project's recent
top-level runs (by the ``quality`` job, and by the orchestrator every
``adapt_every`` runs of a project), and is kept in the store's global state so
every process and every restart uses the same thresholds: each process reads
them again every ``refresh_seconds``, so a policy pinned in another process (the
CLI, the API) applies without a restart. Each change keeps its reason.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from dendrite.learning._checks import check_count, check_number
from dendrite.state import FOREVER
from dendrite.telemetry import ExecutionStatus

if TYPE_CHECKING:
    from dendrite.state import StateManager
    from dendrite.store import ExecutionStore

POLICIES_KEY = "quality_policies"
DEFAULT_PROJECT = "default"


class QualityPolicy(BaseModel):
    project: str
    min_confidence: float = Field(default=0.5, ge=0, le=1)
    """Results below it are flagged ``needs_review``."""
    replan: bool = True
    """Ask the planner for a repair when a step fails for good."""
    use_llm: bool = True
    """Let the configured LLM plan (no effect without one)."""
    adaptive: bool = True
    """False pins the policy: the jobs leave it as set."""
    measured_success: float | None = None
    samples: int = 0
    measured_through: datetime | None = None
    """Start of the newest run the last measurement judged: a policy moves again only
    on runs made after it, never twice on the same evidence."""
    reason: str = "defaults"
    updated_at: datetime | None = None


class QualityPolicies:
    """The policies of every project, adapted toward ``target_success``."""

    def __init__(
        self,
        state: StateManager | None = None,
        *,
        target_success: float = 0.9,
        margin: float = 0.05,
        window: int = 200,
        min_samples: int = 20,
        step: float = 0.1,
        confidence_bounds: tuple[float, float] = (0.2, 0.9),
        adapt_every: int = 50,
        refresh_seconds: float = 30.0,
    ) -> None:
        if not 0 < target_success <= 1:
            raise ValueError(f"target_success must be in (0, 1], got {target_success}")
        low, high = confidence_bounds
        if not 0 <= low <= high <= 1:
            raise ValueError(f"confidence_bounds must be 0 <= low <= high <= 1, got {low, high}")
        check_count("window", window)
        check_count("min_samples", min_samples)
        check_count("adapt_every", adapt_every, minimum=0)
        # A negative step moves the wrong way; NaN, nowhere.
        check_number("step", step, maximum=1.0, strict=True)
        check_number("margin", margin, maximum=1.0)
        if not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds must be >= 0, got {refresh_seconds}")
        self.state = state
        self.target_success = target_success
        self.margin = margin
        self.window = window
        self.min_samples = min_samples
        self.step = step
        self.confidence_bounds = confidence_bounds
        self.adapt_every = adapt_every
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._cache: dict[str, QualityPolicy] | None = None
        self._read_at = 0.0
        self._runs: dict[str, int] = {}

    @property
    def fresh(self) -> bool:
        """Whether :meth:`get` answers from memory: otherwise it reads the store, which an
        event loop must not wait on."""
        stale = self.state is not None and time.monotonic() - self._read_at >= self.refresh_seconds
        return self._cache is not None and not stale

    def _all(self) -> dict[str, QualityPolicy]:
        if not self.fresh:
            now = time.monotonic()  # the read's start: a slow read does not delay the next
            saved = self.state.reread("global", POLICIES_KEY, {}) if self.state else {}
            self._read_at = now
            self._cache = {
                name: QualityPolicy.model_validate(data)
                for name, data in (saved or {}).items()
                if isinstance(data, dict)
            }
        return self._cache

    def get(self, project: str | None) -> QualityPolicy:
        name = project or DEFAULT_PROJECT
        with self._lock:
            policies = self._all()
            if name not in policies:
                policies[name] = QualityPolicy(project=name)
            return policies[name]

    def all(self) -> list[QualityPolicy]:
        with self._lock:
            return sorted(self._all().values(), key=lambda p: p.project)

    def set(self, policy: QualityPolicy) -> None:
        """Set a project's policy by hand (``adaptive=False`` keeps the jobs off it).

        Without a reason of its own it says so: the default, "defaults", read as the
        policy nobody set in ``dendrite trace`` and every run's reasons."""
        if "reason" not in policy.model_fields_set:
            pinned = "" if policy.adaptive else ", pinned"
            policy = policy.model_copy(update={"reason": f"set by hand{pinned}"})
        with self._lock:
            self._all()[policy.project] = policy
            self._save(policy)

    def _save(self, policy: QualityPolicy, *, over_a_pin: bool = True) -> QualityPolicy:
        """Keep one project's policy; other processes' policies of other projects stay.

        An adapted policy (``over_a_pin=False``) does not replace one that another
        process pinned by hand since this one read it; the pin is returned instead.
        """
        if self.state is None:
            return policy
        data = policy.model_dump(mode="json")

        def merged(saved: Any) -> dict[str, Any]:
            saved = saved if isinstance(saved, dict) else {}
            stored = saved.get(policy.project)
            if not over_a_pin and isinstance(stored, dict) and stored.get("adaptive") is False:
                return saved
            return {**saved, policy.project: data}

        now = self.state.update("global", POLICIES_KEY, merged, ttl=FOREVER)
        return QualityPolicy.model_validate(now[policy.project])

    def ran(self, project: str | None) -> bool:
        """Count a finished run; True when the project is due to be re-measured."""
        if not self.adapt_every:
            return False
        name = project or DEFAULT_PROJECT
        with self._lock:
            self._runs[name] = self._runs.get(name, 0) + 1
            return self._runs[name] % self.adapt_every == 0

    def adapt(self, store: ExecutionStore, project: str | None) -> QualityPolicy:
        """Re-measure a project's success over its last ``window`` runs and move its policy."""
        name = project or DEFAULT_PROJECT
        # Filtered by the store, not after its limit: other projects' runs and nested runs
        # would otherwise take the window's places. The policy named "default" is that of
        # runs without a project and of a project named so: measured over both, or the
        # orchestrator and the quality job would each move it by another history.
        asks: list[dict[str, Any]] = [{"project": name}]
        if name == DEFAULT_PROJECT:
            asks.append({"no_project": True})
        runs = [r for ask in asks for r in store.get_recent_executions(self.window, depth=0, **ask)]
        runs.sort(key=lambda r: (r.started_at, r.id), reverse=True)
        top = [  # a run stopped by its client says nothing of how well the project does
            r for r in runs[: self.window] if r.status is not ExecutionStatus.CANCELLED
        ]
        with self._lock:
            policies = self._all()
            current = policies.get(name) or QualityPolicy(project=name)
            if not current.adaptive:
                return current
            updated = self._save(self._moved(current, top), over_a_pin=False)
            policies[name] = updated
            return updated

    def adapt_all(self, store: ExecutionStore) -> list[QualityPolicy]:
        """Adapt every project seen in the recent history, and every project with a policy."""
        seen = {r.project for r in store.get_recent_executions(5_000)}
        known = {p.project for p in self.all()}
        names = sorted({n or DEFAULT_PROJECT for n in seen} | known)
        return [self.adapt(store, None if n == DEFAULT_PROJECT else n) for n in names]

    def _moved(self, current: QualityPolicy, runs: list[Any]) -> QualityPolicy:
        now = datetime.now(UTC)
        samples = len(runs)
        if samples < self.min_samples:
            return current.model_copy(
                update={
                    "samples": samples,
                    "reason": f"{samples} runs measured, {self.min_samples} needed to adapt",
                    "updated_at": now,
                }
            )
        newest = max(r.started_at for r in runs)
        if current.measured_through is not None:
            fresh = sum(1 for r in runs if r.started_at > current.measured_through)
            if fresh < self.min_samples:
                return current.model_copy(
                    update={
                        "reason": f"{fresh} runs since the last measurement, "
                        f"{self.min_samples} needed to adapt again: unchanged",
                        "updated_at": now,
                    }
                )
        success = sum(1 for r in runs if r.success) / samples
        low, high = self.confidence_bounds
        measured = f"success {success:.0%} over the last {samples} runs"
        update: dict[str, Any] = {
            "measured_success": success,
            "samples": samples,
            "measured_through": newest,
        }
        if success < self.target_success - self.margin:
            update.update(
                min_confidence=min(high, current.min_confidence + self.step),
                replan=True,
                use_llm=True,
                reason=f"{measured}, below the target {self.target_success:.0%}: stricter",
            )
        elif success > min(1.0, self.target_success + self.margin) or success == 1.0:
            update.update(
                min_confidence=max(low, current.min_confidence - self.step),
                use_llm=False,
                reason=f"{measured}, above the target {self.target_success:.0%}: cheaper",
            )
        else:
            update["reason"] = f"{measured}, on target {self.target_success:.0%}: unchanged"
        update["min_confidence"] = round(update.get("min_confidence", current.min_confidence), 4)
        update["updated_at"] = now
        return current.model_copy(update=update)
