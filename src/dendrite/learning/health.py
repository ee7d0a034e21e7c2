"""Tool health: quarantine a tool that keeps failing, probe it later, restore or extend.

A circuit breaker per tool, driven by recorded outcomes. Closed (enabled):
every outcome goes into a sliding window; once the window holds at least
``min_samples`` outcomes and the failure share reaches ``failure_threshold``,
the tool is quarantined, with the numbers as its reason. Open (quarantined):
after ``cooldown`` seconds one probe call is let through (half-open). A
successful probe restores the tool; a failed one quarantines it again with the
cooldown doubled (up to ``max_cooldown``). A tool that no other tool can stand
in for is flagged rather than removed, unless ``quarantine_sole_tools`` says
otherwise: taking away the only way to do something is worse than a flaky one.

Every transition is kept (``transitions``) and, with a store, persisted in its
global state, so ``dendrite trace`` and the API can say why a tool is out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from dendrite.learning._checks import check_count, check_number
from dendrite.tools import ToolRegistry, ToolStatus

log = logging.getLogger("dendrite.learning.health")

HEALTH_LOG_KEY = "health_log"
HEALTH_LOG_LIMIT = 500


class Health(StrEnum):
    HEALTHY = "healthy"
    QUARANTINED = "quarantined"
    PROBING = "probing"
    FLAGGED = "flagged"  # failing, but the only tool for its capability: kept enabled


@dataclass(frozen=True, slots=True)
class Transition:
    tool: str
    before: Health
    after: Health
    reason: str
    at: datetime
    cooldown: float = 0.0
    """Seconds until the probe, for a move to quarantined; for a move to probing, the
    cooldown the probe ends, so a process that ends mid-probe leaves the next one the
    escalation to continue (0 otherwise)."""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["before"], data["after"], data["at"] = (
            self.before.value,
            self.after.value,
            self.at.isoformat(),
        )
        return data


@dataclass(slots=True)
class _ToolHealth:
    window: deque[bool]
    health: Health = Health.HEALTHY
    cooldown: float = 0.0
    reopen_at: float = 0.0
    probe_started: float | None = None
    probe_admitted_at: datetime | None = None  # wall time, to compare with attempts' starts
    quarantined_as: str | None = None  # the reason this monitor put on the registry


@dataclass
class HealthPolicy:
    window: int = 20
    min_samples: int = 8
    failure_threshold: float = 0.5
    cooldown: float = 30.0
    max_cooldown: float = 600.0
    quarantine_sole_tools: bool = False

    def __post_init__(self) -> None:
        if not 0 < self.failure_threshold <= 1:  # NaN too
            raise ValueError(f"failure_threshold must be in (0, 1], got {self.failure_threshold}")
        check_count("min_samples", self.min_samples)
        check_count("window", self.window)
        if self.window < self.min_samples:
            raise ValueError(
                f"need 1 <= min_samples <= window, got {self.min_samples} and {self.window}"
            )
        # A NaN cooldown would never end: the tool would stay quarantined for good.
        check_number("cooldown", self.cooldown, strict=True)
        check_number("max_cooldown", self.max_cooldown, strict=True)
        if self.max_cooldown < self.cooldown:
            raise ValueError(f"need 0 < cooldown <= max_cooldown, got {self.cooldown}")


class HealthMonitor:
    """Watches outcomes per tool and changes the registry's states accordingly.

    ``on_transition`` receives each :class:`Transition` (the orchestrator
    persists them); ``clock`` is injectable so tests move time instead of waiting.
    """

    def __init__(
        self,
        registry: ToolRegistry,
        policy: HealthPolicy | None = None,
        *,
        on_transition: Callable[[Transition], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.policy = policy or HealthPolicy()
        self.on_transition = on_transition
        self.clock = clock
        self.transitions: list[Transition] = []
        self._tools: dict[str, _ToolHealth] = {}
        self._lock = threading.Lock()

    def _entry(self, tool: str) -> _ToolHealth:
        entry = self._tools.get(tool)
        if entry is None:
            entry = self._tools[tool] = _ToolHealth(deque(maxlen=self.policy.window))
        return entry

    def health(self, tool: str) -> Health:
        with self._lock:
            return self._entry(tool).health

    def has_stand_in(self, tool: str) -> bool:
        """Whether another tool can do this one's job (declared alternatives, either way).

        A tool on probation is enabled for its one probe call but stands in for nothing:
        quarantining this tool on its account would leave the capability with no tool
        at all as soon as that probe failed.
        """
        found = self.registry.find(tool)
        if found is not None and any(self._can_stand_in(a) for a in found.alternatives):
            return True
        return any(
            tool in other.alternatives and self._can_stand_in(other.name) for other in self.registry
        )

    def _can_stand_in(self, name: str) -> bool:
        found = self.registry.find(name)
        entry = self._tools.get(name)
        out = entry is not None and entry.health in (Health.PROBING, Health.QUARANTINED)
        return found is not None and found.available and not out

    def observe_call(
        self, tool: str, tries: Sequence[tuple[bool, datetime | None]]
    ) -> list[Transition]:
        """Take one call of ``tool``: its attempts (the first and its retries) as (success,
        started at). Each attempt is an outcome, except while the tool is probing: the call
        is then the probe, judged by its last attempt (a retry that answered is an answer).
        """
        if not tries:
            return []
        with self._lock:
            probing = tool in self.registry and self._entry(tool).health is Health.PROBING
        if probing:
            tries = [(tries[-1][0], tries[0][1])]
        return [t for success, at in tries if (t := self.observe(tool, success, at)) is not None]

    def observe(
        self, tool: str, success: bool, started_at: datetime | None = None
    ) -> Transition | None:
        """Take one outcome of ``tool``; returns the transition it caused, if any.

        Outcomes arrive when their run ends, so one of a call that started before
        the probe was let through (in a run that outlasted the cooldown) is not
        the probe's: given its ``started_at``, it is ignored while probing.
        """
        if tool not in self.registry:
            return None
        with self._lock:
            entry = self._entry(tool)
            if entry.health is Health.PROBING:
                admitted = entry.probe_admitted_at
                if started_at is not None and (admitted is None or started_at < admitted):
                    return None
                if success:
                    entry.window.clear()
                    entry.cooldown = 0.0
                    return self._move(tool, entry, Health.HEALTHY, "probe call succeeded")
                entry.cooldown = min(entry.cooldown * 2, self.policy.max_cooldown)
                entry.reopen_at = self.clock() + entry.cooldown
                return self._move(
                    tool,
                    entry,
                    Health.QUARANTINED,
                    f"probe call failed; quarantined again for {entry.cooldown:g}s",
                )
            if entry.health is Health.QUARANTINED:
                return None  # a call already under way when it was quarantined
            entry.window.append(success)
            samples = len(entry.window)
            failures = samples - sum(entry.window)
            if samples < self.policy.min_samples:
                return None
            share = failures / samples
            if share < self.policy.failure_threshold:
                if entry.health is Health.FLAGGED:
                    return self._move(tool, entry, Health.HEALTHY, f"failures down to {share:.0%}")
                return None
            reason = f"{failures} of the last {samples} calls failed ({share:.0%})"
            if not self.policy.quarantine_sole_tools and not self.has_stand_in(tool):
                if entry.health is Health.FLAGGED:
                    return None
                return self._move(tool, entry, Health.FLAGGED, f"{reason}; no alternative, kept")
            entry.cooldown = self.policy.cooldown
            entry.reopen_at = self.clock() + entry.cooldown
            return self._move(tool, entry, Health.QUARANTINED, reason)

    def admit(self, tool: str) -> bool:
        """Whether a call of ``tool`` may start now (the engine asks before each call).

        Half-open means one probe: while a tool is probing, the first call is let
        through and every other waits for its outcome by falling back. A probe
        that never reports (its run was cancelled) is given up after a cooldown.
        """
        with self._lock:
            entry = self._tools.get(tool)
            if entry is None or entry.health is not Health.PROBING:
                return True
            now = self.clock()
            patience = max(entry.cooldown, self.policy.cooldown)
            if entry.probe_started is not None and now < entry.probe_started + patience:
                return False
            entry.probe_started = now
            entry.probe_admitted_at = datetime.now(UTC)
            return True

    def reset(self, tool: str, reason: str) -> Transition:
        """Start ``tool`` afresh: healthy, its recent outcomes forgotten (a person enabled it).

        Left as they were, the monitor would go on ignoring a quarantined tool's
        outcomes, and the next process would restore the quarantine from the log.
        The move is logged even when this monitor saw no quarantine: another process
        may have logged one since this one read the log.
        """
        with self._lock:
            entry = self._entry(tool)
            entry.window.clear()
            entry.cooldown = 0.0
            return self._move(tool, entry, Health.HEALTHY, reason)

    def tick(self) -> list[Transition]:
        """Let a probe through for every tool whose cooldown is over (call before planning)."""
        now = self.clock()
        moved = []
        with self._lock:
            for tool, entry in self._tools.items():
                if entry.health is Health.QUARANTINED and now >= entry.reopen_at:
                    moved.append(self._move(tool, entry, Health.PROBING, "cooldown over: probing"))
        return moved

    def restore(self, log_entries: Any) -> list[str]:
        """Take up the states a persisted transition log ends in; returns the tools changed.

        Health is per process, but the log is in the store: without this a tool
        quarantined by one run would be called again by the next process (every
        ``dendrite run``), and could never stay out. A quarantine keeps what is
        left of its cooldown (``Transition.cooldown``; the policy's for older
        logs); one whose cooldown ran out, or a probe that a process ended
        during, is probed on the next run, and a failed probe goes on doubling the
        cooldown it had. Nothing is logged again.
        """
        last: dict[str, dict[str, Any]] = {}
        for item in log_entries if isinstance(log_entries, list) else []:
            if isinstance(item, dict) and isinstance(item.get("tool"), str):
                last[item["tool"]] = item
        now_wall, now = datetime.now(UTC), self.clock()
        changed = []
        with self._lock:
            for tool, item in last.items():
                try:
                    after = Health(item.get("after"))
                    at = datetime.fromisoformat(item["at"])
                except (ValueError, KeyError, TypeError):
                    continue
                if tool not in self.registry or after is Health.HEALTHY:
                    continue
                entry = self._entry(tool)
                if after is Health.FLAGGED:
                    entry.health = Health.FLAGGED
                else:  # quarantined, or a probe that did not report
                    cooldown = item.get("cooldown") or self.policy.cooldown
                    left = cooldown - (now_wall - at).total_seconds()
                    entry.health, entry.cooldown = Health.QUARANTINED, float(cooldown)
                    entry.reopen_at = now + max(0.0, left) if after is Health.QUARANTINED else now
                    reason = str(item.get("reason") or "quarantined by health")
                    state = self.registry.state(tool)
                    if state.status is ToolStatus.ENABLED:
                        self.registry.quarantine(tool, reason)
                        entry.quarantined_as = reason
                    elif state.status is ToolStatus.QUARANTINED and state.reason == reason:
                        entry.quarantined_as = reason  # its own, saved with the tool's state
                    # else disabled by hand or deprecated since: not this monitor's to lift
                changed.append(tool)
        return changed

    def _move(self, tool: str, entry: _ToolHealth, after: Health, reason: str) -> Transition:
        cooldown = entry.cooldown if after in (Health.QUARANTINED, Health.PROBING) else 0.0
        transition = Transition(tool, entry.health, after, reason, datetime.now(UTC), cooldown)
        entry.health = after
        entry.probe_started = entry.probe_admitted_at = None
        if after is Health.QUARANTINED:
            self.registry.quarantine(tool, reason)
            entry.quarantined_as = reason
        elif after in (Health.HEALTHY, Health.PROBING, Health.FLAGGED):
            # Only this monitor's own quarantine is lifted: one set by hand or by the
            # lifecycle job (a deprecation) since stays. A tool this process did not
            # register (enabled by name from the CLI) has only its logged health to reset.
            found = self.registry.find(tool)
            state = found.state if found is not None else None
            if (
                state is not None
                and state.status is ToolStatus.QUARANTINED
                and state.reason == entry.quarantined_as
            ):
                self.registry.enable(tool)
            entry.quarantined_as = None
        self.transitions.append(transition)
        log.warning("tool %s: %s -> %s (%s)", tool, transition.before, after, reason)
        if self.on_transition is not None:
            try:
                self.on_transition(transition)
            except Exception:
                log.warning("could not record a health transition", exc_info=True)
        return transition

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return {
                tool: {"health": e.health.value, "recent": list(e.window), "cooldown": e.cooldown}
                for tool, e in self._tools.items()
            }


def transition_log(previous: Any, transition: Transition) -> list[dict[str, Any]]:
    """The persisted health log with ``transition`` appended, capped to the newest entries."""
    entries = list(previous) if isinstance(previous, list) else []
    entries.append(transition.to_dict())
    return entries[-HEALTH_LOG_LIMIT:]
