"""Planning: from a goal to a validated DAG of tool calls."""

from dendrite.planning.classify import Classification, Intent, QueryType, classify
from dendrite.planning.conditions import ConditionError, compile_condition
from dendrite.planning.default import DendritePlanner, Strategy
from dendrite.planning.llm_planner import LLMPlanner
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
from dendrite.planning.semantic import SemanticPlanner
from dendrite.planning.templates import TemplatePlanner

PLANNERS = ("dendrite", "semantic", "template", "llm", "single")
"""The planners a run may ask for by name (``Orchestrator.make_planner``, ``dendrite run
--planner``, the API's ``planner``)."""

__all__ = [
    "PLANNERS",
    "Classification",
    "ConditionError",
    "DendritePlanner",
    "Intent",
    "LLMPlanner",
    "Plan",
    "PlanProblem",
    "PlanValidationError",
    "Planner",
    "PlanningError",
    "QueryType",
    "RetryPolicy",
    "SemanticPlanner",
    "SingleToolPlanner",
    "Step",
    "Strategy",
    "TemplatePlanner",
    "check",
    "classify",
    "compile_condition",
    "parse_plan",
    "validate",
]
