"""How much to trust a run's answer, from what happened and what usually happens.

A step's confidence starts from its tool's success probability: the
reliability level as a prior, updated by the tool's recorded history (a Beta
posterior, so ten runs move it less than a thousand). Retries and fallbacks
lower it, since a step that needed them is more likely to have been flaky on
this very input. The run's confidence is the geometric mean over the steps
that ran, times the share of the plan that produced an output.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from dendrite.execution.events import StepResult, StepStatus

PRIOR_WEIGHT = 10.0
RETRY_FACTOR = 0.95
FALLBACK_FACTOR = 0.85
CONDITION_FALSE = "condition false"


def tool_success(prior: float, history: tuple[int, int] | None) -> float:
    """Posterior mean success rate from a reliability prior and (total, successes)."""
    if not history or history[0] <= 0:
        return prior
    total, successes = history
    return (successes + PRIOR_WEIGHT * prior) / (total + PRIOR_WEIGHT)


def step_confidence(result: StepResult, base: float) -> float:
    if result.status is not StepStatus.SUCCEEDED:
        return 0.0
    value = base if len(result.attempts) == 1 else base * RETRY_FACTOR**result.retries
    if result.fallback_used:
        value *= FALLBACK_FACTOR
    return max(0.0, min(1.0, value))


def run_confidence(results: Iterable[StepResult]) -> float:
    """Geometric mean of the confidence of the steps that ran, times plan coverage.

    Steps skipped because their ``when`` condition was false are not part of
    the plan's coverage: not running them was the right outcome. A plan whose every
    step was so skipped left nothing undone, and is as sure as its conditions: 1.
    """
    ran: list[float] = []
    relevant = 0
    succeeded = 0
    for result in results:
        if result.status is StepStatus.SKIPPED and (result.skip_reason or "").startswith(
            CONDITION_FALSE
        ):
            continue
        relevant += 1
        if result.status is StepStatus.SUCCEEDED:
            succeeded += 1
            ran.append(result.confidence if result.confidence is not None else 0.0)
    if not relevant:
        return 1.0
    if not ran:
        return 0.0
    if min(ran) <= 0:
        return 0.0
    mean = math.exp(sum(math.log(c) for c in ran) / len(ran))
    return round(mean * succeeded / relevant, 4)
