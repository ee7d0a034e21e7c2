"""The rows of the execution history, as validated pydantic models.

These models are the contract between whatever runs work (the orchestrator,
pools, the API) and the store: the store validates every record against them
on the caller's side, so a wrong type fails where it was made, with the field
named, rather than later inside a background flush.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from dendrite._ids import canonical_id, new_id
from dendrite._text import clean_text
from dendrite.telemetry.errors import ErrorType

RecordId = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
    ),
    AfterValidator(canonical_id),
]
"""A UUID in text form: ids are made by clients, so replays cannot duplicate rows.

Upper case and the form without hyphens are accepted and stored in the canonical
form (lower case, hyphenated), so every spelling of an id names the same row on
both backends."""

MAX_DURATION_MS = 1e12
"""About 31 years: longer is a unit mistake, and it would overflow a timestamp."""
MAX_TOKENS = 10**12
MAX_COST = 1e6
"""Per run, in the caller's currency. The rollups sum costs as 64-bit nano-units: at 10⁹
per run (the limit before) ten runs of one day and key overflowed the sum; at 10⁶ it
takes over 9,000 runs of a million each."""
INT32 = 2**31 - 1
MAX_LABEL = 64
"""The longest intent, query type or model tier an execution keeps."""
MAX_TOOL_NAME = 200
"""The longest tool name a tool execution keeps (and a registry takes)."""
MAX_PROJECT = 255
MAX_SESSION_ID = 128
"""The longest project and session id an execution keeps: callers that take them from
users (the API, the orchestrator's context) refuse longer ones before a run, whose record
the store would otherwise refuse after it."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class ExecutionStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"
    CANCELLED = "cancelled"


class _Record(BaseModel):
    # Infinity and NaN are refused: no database column or rollup sum can hold them.
    model_config = ConfigDict(extra="forbid", validate_assignment=False, allow_inf_nan=False)

    id: RecordId = Field(default_factory=new_id)

    @model_validator(mode="after")
    def _storable_text(self) -> Self:
        """Text fields as every backend stores them (``clean_text``: NUL and lone
        surrogates become U+FFFD) rather than a record refused in the background."""
        values = self.__dict__
        for name, value in values.items():
            if type(value) is str:
                values[name] = clean_text(value)
        return self


def _fill_times(
    started_at: datetime | None, finished_at: datetime | None, duration_ms: float
) -> tuple[datetime, datetime]:
    """Derive the missing end of the interval, so every row has both ends in UTC."""
    try:
        if finished_at is None:
            finished_at = (
                started_at + timedelta(milliseconds=duration_ms) if started_at else utcnow()
            )
        if started_at is None:
            started_at = finished_at - timedelta(milliseconds=duration_ms)
    except OverflowError:
        raise ValueError(
            f"duration_ms={duration_ms} puts the other end of the run outside the years 1 to 9999"
        ) from None
    return named_utc("started_at", started_at), named_utc("finished_at", finished_at)


def named_utc(name: str, value: datetime) -> datetime:
    """``as_utc(value)``, its ``ValueError`` naming the argument: a record has several times,
    and a read or ``prune`` takes one, so the caller can tell which one is out of range."""
    try:
        return as_utc(value)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def as_utc(value: datetime) -> datetime:
    """The same moment in UTC; a naive datetime is taken to be UTC already.

    ``ValueError`` when that moment is outside the years 1 to 9999 in UTC (9999-12-31
    23:00 at UTC-5 is the year 10000 in UTC), which no column can hold.
    """
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is outside the years 1 to 9999 in UTC") from None


Moment = Annotated[datetime, AfterValidator(as_utc)]
"""A point in time, kept in UTC."""


def _infer_error_type(success: bool, error: str | None, error_type: ErrorType | None):
    if error_type is not None or success:
        return error_type
    return ErrorType.infer(error)


def execution_derived(values: dict[str, Any]) -> dict[str, Any]:
    """What ``ExecutionRecord`` derives from an execution's checked fields, by name.

    Both ends of the run in UTC; an empty label or goal id as ``None`` (no label: the
    rollups key both as one; no goal id: the next readable one is assigned); the status
    and error type from the outcome when not given. One function for the model's
    validator and the store's path that skips pydantic (``dendrite.store.execution``),
    so that both build the same record. ``ValueError`` when a time leaves the calendar.
    """
    started_at, finished_at = _fill_times(
        values["started_at"], values["finished_at"], values["duration_ms"]
    )
    derived: dict[str, Any] = {"started_at": started_at, "finished_at": finished_at}
    for name in ("intent", "project", "task_type", "model_tier", "pool", "goal_id"):
        if values[name] == "":
            derived[name] = None
    success = values["success"]
    if values["status"] is None:
        derived["status"] = ExecutionStatus.SUCCEEDED if success else ExecutionStatus.FAILED
    derived["error_type"] = _infer_error_type(success, values["error"], values["error_type"])
    return derived


class PredictionError(BaseModel):
    """How far a prediction made before a run was from what happened.

    ``success`` is the signed error of the predicted success probability
    (outcome minus prediction, in [-1, 1]); ``duration`` and ``cost`` are
    relative errors ((actual - predicted) / predicted). A field is ``None``
    when either side is missing, or when a prediction of 0 met a non-zero outcome
    (no relative error is finite; a 0 that came true is an error of 0).
    """

    success: float | None = None
    duration: float | None = None
    cost: float | None = None


def _relative(actual: float | None, predicted: float | None) -> float | None:
    if actual is None or predicted is None:
        return None
    if predicted == 0:
        return 0.0 if actual == 0 else None
    error = (actual - predicted) / predicted
    # A prediction so small (a denormal) that the quotient overflows has, like 0, no finite
    # error, as the docstring says: not an infinity for a calibration to average.
    return error if math.isfinite(error) else None


class ExecutionRecord(_Record):
    """One goal or task run: the wide analytic record."""

    goal_id: str | None = Field(default=None, max_length=64)
    goal_text: str = ""
    intent: str | None = Field(default=None, max_length=MAX_LABEL)
    query_type: str | None = Field(default=None, max_length=MAX_LABEL)
    task_type: str | None = Field(default=None, max_length=128)
    project: str | None = Field(default=None, max_length=MAX_PROJECT)
    session_id: str | None = Field(default=None, max_length=MAX_SESSION_ID)
    parent_id: RecordId | None = None
    depth: int = Field(default=0, ge=0, le=INT32)
    success: bool
    status: ExecutionStatus | None = None
    error: str | None = None
    error_type: ErrorType | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_ms: float = Field(ge=0, le=MAX_DURATION_MS)
    model_tier: str | None = Field(default=None, max_length=MAX_LABEL)
    pool: str | None = Field(default=None, max_length=128)
    routing_confidence: float | None = Field(default=None, ge=0, le=1)
    complexity_score: float | None = None
    confidence_score: float | None = Field(default=None, ge=0, le=1)
    estimated_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    tokens_used: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    estimated_duration_ms: float | None = Field(default=None, ge=0, le=MAX_DURATION_MS)
    cost_estimate: float | None = Field(default=None, ge=0, le=MAX_COST)
    actual_cost: float | None = Field(default=None, ge=0, le=MAX_COST)
    quality_score: float | None = Field(default=None, ge=0, le=1)
    user_accepted: bool | None = None
    user_rating: int | None = Field(default=None, ge=1, le=5)
    peak_memory_mb: float | None = Field(default=None, ge=0)
    cpu_time_ms: float | None = Field(default=None, ge=0)
    solution_summary: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _complete(self) -> Self:
        for name, value in execution_derived(self.__dict__).items():
            setattr(self, name, value)  # as an assignment: ``model_fields_set`` names it
        return self

    def embedding_content(self) -> str:
        """The text that stands for this run in similarity search over past goals."""
        parts = [self.goal_text.strip()]
        for label, value in (
            ("intent", self.intent),
            ("query type", self.query_type),
            ("task type", self.task_type),
            ("project", self.project),
        ):
            if value and value.strip():
                parts.append(f"{label}: {value.strip()}")
        if self.solution_summary and self.solution_summary.strip():
            parts.append(f"solution: {self.solution_summary.strip()}")
        return "\n".join(p for p in parts if p)

    def prediction_error(self) -> PredictionError:
        """Error of the routing-time predictions (confidence, duration, cost) vs the outcome."""
        success = None
        if self.routing_confidence is not None:
            success = float(self.success) - self.routing_confidence
        return PredictionError(
            success=success,
            duration=_relative(self.duration_ms, self.estimated_duration_ms),
            cost=_relative(self.actual_cost, self.cost_estimate),
        )


class ToolExecutionRecord(_Record):
    """One attempt of one tool call: retries and fallbacks are rows of their own."""

    execution_id: RecordId
    step_id: str | None = Field(default=None, max_length=128)
    tool_name: str = Field(min_length=1, max_length=MAX_TOOL_NAME)
    parameters: dict[str, Any] = Field(default_factory=dict)
    result: Any = None
    success: bool
    error: str | None = None
    error_type: ErrorType | None = None
    attempt: int = Field(default=1, ge=1, le=INT32)
    fallback_of: str | None = Field(default=None, max_length=MAX_TOOL_NAME)
    duration_ms: float = Field(ge=0, le=MAX_DURATION_MS)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @model_validator(mode="after")
    def _complete(self) -> Self:
        self.started_at, self.finished_at = _fill_times(
            self.started_at, self.finished_at, self.duration_ms
        )
        self.error_type = _infer_error_type(self.success, self.error, self.error_type)
        return self

    def embedding_content(self) -> str:
        """The text that stands for this call when similar calls are looked up."""
        names = ", ".join(sorted(self.parameters))
        text = f"{self.tool_name}({names})"
        return f"{text}\nerror: {self.error}" if self.error else text


class RoutingCandidate(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    option: str
    score: float


class RoutingDecision(_Record):
    """Which option a router chose for a task, among which candidates, and why.

    The outcome is not stored here: it is the execution with the same
    ``execution_id``, joined at read time (``ExecutionStore.get_routing_outcomes``),
    so a policy can be evaluated offline against what actually happened.
    """

    execution_id: RecordId
    router: str = Field(default="model_tier", min_length=1, max_length=64)
    chosen: str = Field(min_length=1, max_length=128)
    candidates: list[RoutingCandidate] = Field(default_factory=list)
    confidence: float | None = Field(default=None, ge=0, le=1)
    reason: str | None = None
    features: dict[str, Any] = Field(default_factory=dict)
    predicted_success: float | None = Field(default=None, ge=0, le=1)
    predicted_cost: float | None = Field(default=None, ge=0, le=MAX_COST)
    predicted_duration_ms: float | None = Field(default=None, ge=0, le=MAX_DURATION_MS)
    created_at: Moment = Field(default_factory=utcnow)

    def prediction_error(
        self, outcome: ExecutionRecord, *, success: bool | None = None
    ) -> PredictionError:
        """Error of this decision's predictions against the execution it routed.

        ``success`` is the outcome as the chosen option earned it, where the router
        judges that otherwise than the run's own success (``outcome.success`` by default):
        a run that offline planners rescued after its tier's model went down failed the
        tier (``dendrite.learning.router.routed_success``), and is learned as a failure.
        """
        if success is None:
            success = outcome.success
        error = None
        if self.predicted_success is not None:
            error = float(success) - self.predicted_success
        return PredictionError(
            success=error,
            duration=_relative(outcome.duration_ms, self.predicted_duration_ms),
            cost=_relative(outcome.actual_cost, self.predicted_cost),
        )


class FeedbackRecord(_Record):
    """A judgement of one execution; several per execution are kept."""

    execution_id: RecordId
    # Strict: "5" or True read as a rating is a caller's mistake, not a judgement of 5 or 1.
    rating: int | None = Field(default=None, ge=1, le=5, strict=True)
    accepted: bool | None = Field(default=None, strict=True)
    feedback_text: str | None = None
    source: Literal["human", "llm", "code"] = "human"
    created_at: Moment = Field(default_factory=utcnow)
    recorded_at: Moment | None = None
    """When the store wrote it (set by the store; what a reader pages by): a judgement
    replayed from the journal is written after its ``created_at``."""

    @model_validator(mode="after")
    def _says_something(self) -> Self:
        if self.rating is None and self.accepted is None and not self.feedback_text:
            raise ValueError("feedback needs at least one of rating, accepted or feedback_text")
        return self


class SolutionRecord(_Record):
    """A reusable pattern extracted from a successful execution."""

    execution_id: RecordId | None = None
    pattern: str = Field(min_length=1, max_length=512)
    description: str = ""
    query_type: str | None = Field(default=None, max_length=MAX_LABEL)
    task_type: str | None = Field(default=None, max_length=128)
    plan: dict[str, Any] = Field(default_factory=dict)
    quality_score: float | None = Field(default=None, ge=0, le=1)
    created_at: Moment = Field(default_factory=utcnow)

    def embedding_content(self) -> str:
        """The text that stands for this solution when a new goal looks for one to reuse."""
        parts = [self.description.strip(), f"pattern: {self.pattern}"]
        if self.query_type:
            parts.append(f"query type: {self.query_type}")
        return "\n".join(p for p in parts if p)


class ToolCreationEvent(_Record):
    """A tool generated at run time, with the outcome of its validation."""

    tool_name: str = Field(min_length=1, max_length=MAX_TOOL_NAME)
    goal_text: str | None = None
    generated_code: str
    validation_passed: bool
    validation_errors: list[str] = Field(default_factory=list)
    execution_id: RecordId | None = None
    created_at: Moment = Field(default_factory=utcnow)


AnyRecord = (
    ExecutionRecord
    | ToolExecutionRecord
    | RoutingDecision
    | FeedbackRecord
    | SolutionRecord
    | ToolCreationEvent
)
