"""How well a router predicted: its stored decisions scored against the runs they routed.

A router that picks well but predicts badly cannot be trusted to trade quality
against cost, since the trade is made on its predictions. Each stored decision
carries the success probability and cost it predicted
(:class:`~dendrite.telemetry.RoutingDecision`); the execution it routed says
what happened, and :meth:`RoutingDecision.prediction_error` is the difference.
This module sums those differences per router and option:

- ``bias``: mean of outcome minus prediction. Positive means the router expected
  too little of the option, so it will have sent too few tasks there.
- ``brier``: mean squared error of the success probability (0 is perfect; always
  predicting 0.5 scores 0.25). It mixes calibration with sharpness, so compare it
  with ``base_brier``, the score of always predicting the option's own success
  rate, which knows nothing about the tasks: a router whose features help scores
  below it. A router's overall row compares with each option predicted at its own
  rate, so an overall score below it means the features help, not only the options.
- ``cost_error``: the median absolute relative error of the predicted cost, where
  the run reported an actual cost.

Runs that say nothing about their option are left out of the judging (see
``judges_route``): cancelled ones, and those that never used the option. A run
is judged as the router learns it (``routed_success``): one whose tier's model
was down failed the option, whatever the offline planners then made of it, so
the accuracy reported is that of the predictions the router acts on.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel

from dendrite.learning.router import judges_route, routed_success
from dendrite.store import ExecutionStore
from dendrite.store.analytics import RoutingOutcome

ALL_OPTIONS = "*"


class RouteAccuracy(BaseModel):
    """One option of one router (``option == "*"``: all its decisions together)."""

    router: str
    option: str
    decisions: int
    share: float
    """Of the router's decisions in the window, the part that chose this option."""
    judged: int
    """Decisions with a success prediction whose run has been recorded."""
    predicted_success: float | None
    success_rate: float | None
    bias: float | None
    brier: float | None
    base_brier: float | None
    cost_error: float | None


def accuracy_of(outcomes: Iterable[RoutingOutcome]) -> list[RouteAccuracy]:
    """Per router, each option's accuracy and then the router's overall row."""
    by_router: dict[str, dict[str, list[RoutingOutcome]]] = {}
    for item in outcomes:
        options = by_router.setdefault(item.decision.router, {})
        options.setdefault(item.decision.chosen, []).append(item)
    rows = []
    for router in sorted(by_router):
        options = by_router[router]
        total = sum(len(items) for items in options.values())
        per_option = [_accuracy(router, option, options[option], total) for option in options]
        rows.extend(sorted(per_option, key=lambda row: row.option))
        every = [item for items in options.values() for item in items]
        overall = _accuracy(router, ALL_OPTIONS, every, total)
        if overall.judged:
            base = sum(row.base_brier * row.judged for row in per_option if row.judged)
            overall.base_brier = base / overall.judged
        rows.append(overall)
    return rows


def routing_accuracy(
    store: ExecutionStore,
    router: str | None = None,
    *,
    since: datetime | None = None,
    limit: int = 10_000,
) -> list[RouteAccuracy]:
    """:func:`accuracy_of` the ``limit`` newest decisions in the store (since ``since``)."""
    return accuracy_of(store.get_routing_outcomes(router, limit=limit, since=since))


def _accuracy(router: str, option: str, items: list[RoutingOutcome], total: int) -> RouteAccuracy:
    predicted, actual, costs = [], [], []
    for item in items:
        if item.outcome is None or not judges_route(item.outcome):
            continue
        success = routed_success(item.outcome)
        error = item.decision.prediction_error(item.outcome, success=success)
        if error.success is not None:
            actual.append(float(success))
            predicted.append(actual[-1] - error.success)
        if error.cost is not None:
            costs.append(abs(error.cost))
    judged = len(actual)
    rate = sum(actual) / judged if judged else None
    return RouteAccuracy(
        router=router,
        option=option,
        decisions=len(items),
        share=len(items) / total,
        judged=judged,
        predicted_success=sum(predicted) / judged if judged else None,
        success_rate=rate,
        bias=(sum(actual) - sum(predicted)) / judged if judged else None,
        brier=sum((y - p) ** 2 for y, p in zip(actual, predicted, strict=True)) / judged
        if judged
        else None,
        base_brier=sum((y - rate) ** 2 for y in actual) / judged if rate is not None else None,
        cost_error=statistics.median(costs) if costs else None,
    )
