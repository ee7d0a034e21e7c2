"""Request and response bodies of the HTTP API (they are its OpenAPI schema)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from dendrite.learning.calibration import RouteAccuracy
from dendrite.learning.policies import QualityPolicy
from dendrite.planning import PLANNERS
from dendrite.planning.default import Strategy
from dendrite.planning.plan import Plan
from dendrite.store.analytics import PoolPerformance, SuccessRate, TierPerformance, ToolStatistics
from dendrite.store.bookkeeping import JobRun
from dendrite.store.store import StoreStatus
from dendrite.telemetry.records import MAX_PROJECT, MAX_SESSION_ID

PlannerName = Literal["dendrite", "semantic", "template", "llm", "single"]


def _optional(**extra: Any) -> Callable[[dict[str, Any]], None]:
    """Document a field that may be left out, but not sent as null (null still parses)."""

    def edit(schema: dict[str, Any]) -> None:
        options = schema.pop("anyOf", None) or []
        for option in options:
            if option.get("type") != "null":
                schema.update(option)
        schema.update(extra)

    return edit


class GoalRequest(BaseModel):
    """A goal in plain words, or an explicit plan; not both."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "oneOf": [
                {"required": ["goal"], "not": {"required": ["plan"]}},
                {
                    "required": ["plan"],
                    "not": {
                        "anyOf": [
                            {"required": ["goal"]},
                            {"required": ["planner"]},
                            {"required": ["strategy"]},
                        ]
                    },
                },
            ]
        },
    )

    goal: str | None = Field(
        default=None,
        min_length=1,
        max_length=20_000,
        json_schema_extra=_optional(pattern=r"\S"),
        description="what to do, in plain words; the orchestrator's planner makes the plan",
        examples=["calculate 6 * 7"],
    )
    plan: Plan | None = Field(
        default=None,
        description="an explicit plan (a DAG of tool calls) to validate and run",
        json_schema_extra=_optional(),
    )
    session_id: str | None = Field(default=None, min_length=1, max_length=MAX_SESSION_ID)
    context: dict[str, Any] = Field(
        default_factory=dict, description="values plans may reference as ${context.key}"
    )
    planner: PlannerName | None = Field(
        default=None,
        description="plan this goal with this planner instead of the orchestrator's own: "
        + ", ".join(PLANNERS),
    )
    strategy: Strategy | None = Field(
        default=None, description="strategy of the 'dendrite' planner for this goal"
    )

    @model_validator(mode="after")
    def _one_target(self) -> GoalRequest:
        if self.goal is None and self.plan is None:
            raise ValueError("give 'goal' (plain words) or 'plan' (explicit); neither was given")
        if self.goal is not None and self.plan is not None:
            raise ValueError("give either 'goal' (plain words) or 'plan' (explicit), not both")
        if self.plan is not None and (self.planner or self.strategy):
            raise ValueError("'planner' and 'strategy' apply to a goal, not to an explicit plan")
        if self.strategy is not None and self.planner not in (None, "dendrite"):
            raise ValueError(f"'strategy' applies to the 'dendrite' planner, not {self.planner!r}")
        if self.goal is not None and not self.goal.strip():
            raise ValueError("'goal' is blank")
        project = self.context.get("project")
        if project is not None and not isinstance(project, str):  # it would be dropped
            raise ValueError(f"'context.project' must be a string, got {type(project).__name__}")
        if isinstance(project, str) and len(project) > MAX_PROJECT:
            raise ValueError(f"'context.project' is longer than {MAX_PROJECT} characters")
        return self


class StepSummary(BaseModel):
    step_id: str
    tool: str = Field(description="the tool that answered (a fallback's name if one did)")
    status: str
    duration_ms: float
    attempts: int = Field(description="tool calls made: retries and fallbacks included")
    retries: int
    fallback_used: str | None = None
    error: str | None = None
    skip_reason: str | None = None
    confidence: float | None = None
    not_tried: list[str] = Field(
        default_factory=list,
        description="candidates passed over without a call, each with why (e.g. quarantined)",
    )


class GoalResult(BaseModel):
    execution_id: str
    goal: str
    answer: Any = Field(description="the run's output")
    success: bool
    status: str = Field(description="succeeded, failed, partial or cancelled")
    confidence: float
    intent: str | None = None
    query_type: str | None = None
    planner: str | None = None
    strategy: str | None = None
    route: str | None = Field(
        default=None, description="the model tier (or pool) the router sent the run to"
    )
    llm_usage: dict[str, Any] | None = Field(
        default=None,
        description="the model calls the run made, nested runs' included: calls, prompt and "
        "completion tokens, answers without reported usage, cost",
    )
    error: str | None = None
    error_type: str | None = None
    duration_ms: float
    started_at: datetime
    session_id: str | None = None
    steps: list[StepSummary]


class ExecutionSummary(BaseModel):
    id: str
    goal_id: str | None = None
    goal_text: str
    intent: str | None = None
    query_type: str | None = None
    session_id: str | None = None
    parent_id: str | None = None
    depth: int = 0
    success: bool
    status: str | None = None
    error: str | None = None
    error_type: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float
    confidence_score: float | None = None
    user_rating: int | None = None
    user_accepted: bool | None = None
    planner: str | None = None


class ExecutionPage(BaseModel):
    items: list[ExecutionSummary]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next (older) page; null on the last page"
    )


class TraceOut(BaseModel):
    execution_id: str
    goal: str
    success: bool
    status: str
    confidence: float | None = None
    duration_ms: float
    started_at: datetime
    planner: str | None = None
    error: str | None = None
    parent_id: str | None = None
    depth: int
    steps: list[dict[str, Any]] = Field(
        description="each step: status, tool, timing, error, skip reason, fallback, confidence "
        "and every attempt"
    )
    llm_usage: dict[str, Any] | None = Field(
        None,
        description="the model calls the run made, nested runs' included: calls, prompt and "
        "completion tokens, answers without reported usage, cost",
    )
    why: dict[str, str] = Field(
        default_factory=dict,
        description="which learned component chose what, and why: per step id the tool "
        "picked, and run-level choices (route, experiment, policy)",
    )
    replans: list[dict[str, Any]] = Field(
        default_factory=list, description="each repair of the plan: the failed step and why"
    )


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["rating"]},
                {"required": ["accepted"]},
                {"required": ["comment"]},
            ]
        },
    )

    rating: int | None = Field(default=None, ge=1, le=5, strict=True, json_schema_extra=_optional())
    accepted: bool | None = Field(default=None, strict=True, json_schema_extra=_optional())
    comment: str | None = Field(
        default=None, min_length=1, max_length=10_000, json_schema_extra=_optional()
    )
    source: Literal["human", "llm", "code"] = "human"

    @model_validator(mode="after")
    def _says_something(self) -> FeedbackRequest:
        if self.rating is None and self.accepted is None and not (self.comment or "").strip():
            raise ValueError("feedback needs at least one of 'rating', 'accepted' or 'comment'")
        return self


class FeedbackLearned(BaseModel):
    reward: float | None = Field(description="the judgement as a reward in [0, 1]")
    weight: float = Field(description="recency weight of the judged run (1 = just finished)")
    tools: list[str] = Field(description="tools whose ranking moved")
    plans_judged: list[str] = Field(description="remembered plans judged")
    router: bool = Field(description="whether the router revised its outcome")


class FeedbackCreated(BaseModel):
    feedback_id: str
    execution_id: str
    learned: FeedbackLearned | None = None


class ToolStateChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=2_000)


class ToolDescription(BaseModel):
    name: str
    description: str
    parameters: dict[str, Any]
    returns: dict[str, Any] | None = None
    reliability: str
    estimated_duration: float | None = None
    alternatives: list[str]
    tags: list[str]
    timeout: float | None = None
    version: int
    status: str
    status_reason: str | None = None


class ToolList(BaseModel):
    tools: list[ToolDescription]


class ToolPerformanceList(BaseModel):
    tools: list[ToolStatistics]


class TierPerformanceList(BaseModel):
    days: int
    tiers: list[TierPerformance]


class PoolPerformanceList(BaseModel):
    pools: list[PoolPerformance]


class RouteAccuracyList(BaseModel):
    days: int
    routes: list[RouteAccuracy]


class ArmOut(BaseModel):
    arm: str
    executions: int
    successes: int
    success_rate: float | None
    success_interval: list[float] | None = Field(description="95% Wilson interval")
    mean_duration_ms: float | None
    mean_rating: float | None
    rated: int
    p_success: float | None = Field(description="vs the control; None for the control")
    success_test: Literal["fisher", "z", "cluster"] | None
    p_duration: float | None = Field(description="Welch's t-test vs the control")


class ExperimentOut(BaseModel):
    experiment: str
    control: str
    alpha: float
    verdict: str
    arms: list[ArmOut]


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut]


class PolicyList(BaseModel):
    policies: list[QualityPolicy]


class JobInfo(BaseModel):
    name: str
    description: str
    every_seconds: float = Field(description="how often `dendrite serve` runs it")
    last_run: JobRun | None


class JobList(BaseModel):
    scheduled: bool = Field(description="whether this server runs the jobs on their schedule")
    jobs: list[JobInfo]


class SuccessRateOut(SuccessRate):
    intent: str | None = None
    since: datetime | None = None


class Health(BaseModel):
    status: Literal["ok"]


class StoreHealth(StoreStatus):
    """``ExecutionStore.status()`` as the API reports it."""


class ToolCounts(BaseModel):
    total: int
    enabled: int
    disabled: int
    quarantined: int


class SystemStatus(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="degraded when the store is unreachable or has a backlog in its journal"
    )
    version: str
    started_at: datetime
    uptime_s: float
    recording: bool
    store: StoreHealth | None
    tools: ToolCounts
    runs_in_progress: int


class PlannerInfo(BaseModel):
    name: str
    kind: str
    strategy: str | None = None


class TierInfo(BaseModel):
    name: str
    model: str
    cost: float = Field(description="per call")
    prompt_price: float = Field(0.0, description="per million prompt tokens")
    completion_price: float = Field(0.0, description="per million completion tokens")
    base_url: str | None = Field(
        None, description="the tier's own server (no credentials); none: the model's server"
    )


class LLMInfo(BaseModel):
    configured: bool
    model: str | None = Field(None, description="what calls made outside any tier ask")
    base_url: str | None = Field(None, description="where those calls go (no credentials)")
    default_tier: str | None = Field(
        None, description="the tier those calls stand for (its model, server and prices)"
    )
    tiers: list[TierInfo] = Field(
        default_factory=list, description="models the router picks from, one per run"
    )
    cost_weight: float | None = None


class RouterInfo(BaseModel):
    name: str = Field(description="what it routes: model_tier, pool, or a name of its own")
    options: list[str]
    policy: str
    cost_weight: float
    observations: dict[str, int] = Field(description="outcomes learned, per option")


class OrchestratorInfo(BaseModel):
    planner: PlannerInfo
    planners: list[str]
    strategies: list[str]
    llm: LLMInfo
    router: RouterInfo | None = Field(
        None, description="the router that picks each top-level run's option; none when off"
    )
    config: dict[str, Any]
