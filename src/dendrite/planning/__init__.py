"""Planning: from a goal to a validated DAG of tool calls."""

from dendrite.planning.conditions import ConditionError, compile_condition
from dendrite.planning.plan import (
    Plan,
    PlanProblem,
    PlanValidationError,
    RetryPolicy,
    Step,
    check,
    parse_plan,
    validate,
)
from dendrite.planning.planner import Planner, PlanningError, SingleToolPlanner

__all__ = [
    "ConditionError",
    "Plan",
    "PlanProblem",
    "PlanValidationError",
    "Planner",
    "PlanningError",
    "RetryPolicy",
    "SingleToolPlanner",
    "Step",
    "check",
    "compile_condition",
    "parse_plan",
    "validate",
]
