import asyncio
import time
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from dendrite._ids import new_id
from dendrite.telemetry import (
    ErrorType,
    ExecutionRecord,
    ExecutionStatus,
    FeedbackRecord,
    RoutingDecision,
    SolutionRecord,
    ToolExecutionRecord,
    errors,
)
from dendrite.telemetry.errors import described
from dendrite.telemetry.records import named_utc


class RateLimitError(Exception):
    pass


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError("slow"), ErrorType.TIMEOUT),
        (asyncio.CancelledError(), ErrorType.CANCELLED),
        (ConnectionRefusedError("nope"), ErrorType.CONNECTION),
        (RateLimitError("slow down"), ErrorType.RATE_LIMIT),
        (ValueError("bad"), ErrorType.VALIDATION),
        (TypeError("f() missing 1 required positional argument"), ErrorType.VALIDATION),
        (RuntimeError("HTTP 429 from upstream"), ErrorType.RATE_LIMIT),
        (RuntimeError("boom"), ErrorType.TOOL_ERROR),
        ("Request timed out after 30s", ErrorType.TIMEOUT),
        ("connection refused by 10.0.0.1", ErrorType.CONNECTION),
        ("Rate limit reached for requests", ErrorType.RATE_LIMIT),
        ("missing required argument 'path'", ErrorType.VALIDATION),
        ("task was cancelled", ErrorType.CANCELLED),
        ("something odd happened", ErrorType.TOOL_ERROR),
        ("", ErrorType.UNKNOWN),
        (None, ErrorType.UNKNOWN),
        # "time out" only as words; a status code only where it reads as one.
        ("Failed to parse runtime output", ErrorType.TOOL_ERROR),
        (RuntimeError("estimated runtime out of range"), ErrorType.TOOL_ERROR),
        ("processed 502 rows then failed", ErrorType.TOOL_ERROR),
        ("processed 429 rows", ErrorType.TOOL_ERROR),
        ("upstream said HTTP 503", ErrorType.CONNECTION),
        ("Service Unavailable", ErrorType.CONNECTION),
        ("Bad Gateway", ErrorType.CONNECTION),
        ("status code: 422", ErrorType.VALIDATION),
        ("read time-out", ErrorType.TIMEOUT),
        # An exception's text is classed as the exception is.
        ("ValueError: bad", ErrorType.VALIDATION),
        ("KeyError: 'x'", ErrorType.VALIDATION),
        ("httpx.ReadTimeout: read", ErrorType.TIMEOUT),
        ("RuntimeError: boom", ErrorType.TOOL_ERROR),
        (ExceptionGroup("tasks", [TimeoutError("slow"), ValueError("x")]), ErrorType.TIMEOUT),
        # A code leading the message, in a URL, or after "exit code".
        ("429 Resource has been exhausted (e.g. check quota).", ErrorType.RATE_LIMIT),
        ("422, message='Unprocessable Entity', url='https://x'", ErrorType.VALIDATION),
        ("ResourceExhausted: 503 The service is currently unavailable.", ErrorType.CONNECTION),
        ("Client error '404 Not Found' for url 'https://x.org/orders/429'", ErrorType.TOOL_ERROR),
        ("process exited with code 502", ErrorType.TOOL_ERROR),
        ("Error: connect ETIMEDOUT 10.0.0.1:443", ErrorType.TIMEOUT),
        (type("InvalidArgument", (Exception,), {})("400 bad argument"), ErrorType.VALIDATION),
        # A host no route reaches, a server that hung up: connection failures, retried.
        (OSError(113, "No route to host"), ErrorType.CONNECTION),
        (
            "RemoteProtocolError: Server disconnected without sending a response.",
            ErrorType.CONNECTION,
        ),
        ("peer closed connection without sending complete message body", ErrorType.CONNECTION),
    ],
)
def test_error_type_is_inferred_from_exceptions_and_messages(error, expected):
    assert ErrorType.infer(error) is expected


@pytest.mark.parametrize(
    "error",
    [ValueError(), KeyError(), KeyboardInterrupt(), ConnectionResetError(), BrokenPipeError()],
    ids=lambda error: type(error).__name__,
)
def test_an_exception_without_a_message_written_down_is_classed_as_the_exception(error):
    """``described`` writes it as its name alone ("KeyboardInterrupt"), which read as a
    tool_error where the exception is a cancellation (or a validation error, a connection
    failure)."""
    assert ErrorType.infer(described(error)) is ErrorType.infer(error)
    assert ErrorType.infer(f"builtins.{type(error).__name__}") is ErrorType.infer(error)


def test_a_long_error_text_is_classed_in_linear_time():
    """The type prefix was searched for at every position, "expected .* got" from every
    "expected": a 30,000-digit hex dump in a record's error took 7 s to class, ten times
    as long one minutes."""
    dump = "checksum mismatch, got bytes " + "0a1b2c3d4e5f" * 2_500
    for text in (dump, "expected " * 20_000):
        started = time.perf_counter()
        record = ExecutionRecord(success=False, duration_ms=1, error=text)
        assert record.error_type is ErrorType.TOOL_ERROR
        assert time.perf_counter() - started < 1


def test_execution_record_fills_times_status_and_error_type():
    end = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    rec = ExecutionRecord(
        goal_text="g", success=False, duration_ms=1500, finished_at=end, error="timed out"
    )
    assert rec.started_at == end - timedelta(milliseconds=1500)
    assert rec.status is ExecutionStatus.FAILED
    assert rec.error_type is ErrorType.TIMEOUT
    ok = ExecutionRecord(success=True, duration_ms=1, started_at=datetime(2026, 1, 1))
    assert ok.started_at.tzinfo is UTC and ok.finished_at > ok.started_at
    assert ok.status is ExecutionStatus.SUCCEEDED and ok.error_type is None


def test_embedding_content_and_prediction_error():
    rec = ExecutionRecord(
        goal_text="compare A and B",
        intent="tool_use",
        query_type="comparison",
        project="docs",
        success=True,
        duration_ms=300,
        estimated_duration_ms=200,
        routing_confidence=0.8,
        cost_estimate=0.01,
        actual_cost=0.015,
        solution_summary="search -> compare",
    )
    text = rec.embedding_content()
    assert text.startswith("compare A and B")
    assert "query type: comparison" in text and "solution: search -> compare" in text
    err = rec.prediction_error()
    assert err.success == pytest.approx(0.2)
    assert err.duration == pytest.approx(0.5)
    assert err.cost == pytest.approx(0.5)
    assert ExecutionRecord(success=False, duration_ms=1).prediction_error().success is None

    decision = RoutingDecision(execution_id=rec.id, chosen="large", predicted_success=0.9)
    assert decision.prediction_error(rec).success == pytest.approx(0.1)
    step = ToolExecutionRecord(
        execution_id=rec.id,
        tool_name="search",
        parameters={"q": 1, "k": 2},
        success=True,
        duration_ms=1,
    )
    assert step.embedding_content() == "search(k, q)"
    assert "pattern: a -> b" in SolutionRecord(pattern="a -> b").embedding_content()


def test_blank_labels_and_zero_predictions():
    """A blank summary gave a bare "solution: " line; a prediction of 0 that came true read
    as no prediction at all."""
    blank = ExecutionRecord(
        goal_text="  g ", intent=" ", solution_summary="   ", success=True, duration_ms=1
    )
    assert blank.embedding_content() == "g"
    free = ExecutionRecord(
        success=True, duration_ms=100, estimated_duration_ms=0, cost_estimate=0, actual_cost=0
    )
    assert free.prediction_error().cost == 0.0
    assert free.prediction_error().duration is None  # 0 predicted, 100 happened: not finite
    decision = RoutingDecision(execution_id=free.id, chosen="small", predicted_cost=0.0)
    assert decision.prediction_error(free).cost == 0.0
    assert ExecutionRecord(goal_id="", success=True, duration_ms=1).goal_id is None


def test_a_prediction_too_small_for_a_finite_relative_error_has_none():
    """A denormal prediction met by an outcome overflowed to an infinite relative error,
    which the docstring says is no error at all, as for a prediction of 0."""
    tiny = ExecutionRecord(
        success=True, duration_ms=1000, estimated_duration_ms=1e-320, cost_estimate=5e-324,
        actual_cost=1.0,
    )  # fmt: skip
    error = tiny.prediction_error()
    assert (error.duration, error.cost) == (None, None)
    decision = RoutingDecision(execution_id=tiny.id, chosen="small", predicted_cost=5e-324)
    assert decision.prediction_error(tiny).cost is None


def test_records_refuse_bad_values_naming_the_field():
    with pytest.raises(ValidationError, match="rating"):
        FeedbackRecord(execution_id=new_id(), rating=6)
    with pytest.raises(ValidationError, match="at least one of rating"):
        FeedbackRecord(execution_id=new_id())
    with pytest.raises(ValidationError, match="execution_id"):
        ToolExecutionRecord(execution_id="not-a-uuid", tool_name="t", success=True, duration_ms=1)
    with pytest.raises(ValidationError, match="duration_ms"):
        ExecutionRecord(success=True, duration_ms=-1)
    with pytest.raises(ValidationError, match="surprise"):
        ExecutionRecord(success=True, duration_ms=1, surprise=1)


def test_named_utc_converts_and_names_the_moment_it_cannot_hold():
    """The one conversion records and the store's reads share: naive is taken as UTC, and a
    moment past the UTC calendar is refused naming the argument it came in."""
    naive = datetime(2024, 5, 1, 12, 0)
    assert named_utc("since", naive) == naive.replace(tzinfo=UTC)
    five_east = datetime(2024, 5, 1, 12, 0, tzinfo=timezone(timedelta(hours=5)))
    assert named_utc("since", five_east) == datetime(2024, 5, 1, 7, 0, tzinfo=UTC)
    late = datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-5)))
    with pytest.raises(ValueError, match=r"^older_than: .*outside the years 1 to 9999 in UTC"):
        named_utc("older_than", late)


def test_ids_are_unique_time_ordered_uuid7():
    ids = [new_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(i[14] == "7" for i in ids)


def test_the_fields_a_record_fills_in_count_as_set():
    """``model_dump(exclude_unset=True)`` keeps the times, status and error type the record
    derived: rebuilt from that dump (and its id) it is the same record, not one stamped
    anew."""
    record = ExecutionRecord(goal_text="g", success=False, error="timed out", duration_ms=5)
    assert {"started_at", "finished_at", "status", "error_type"} <= record.model_fields_set
    assert ExecutionRecord(**record.model_dump(exclude_unset=True), id=record.id) == record
    call = ToolExecutionRecord(execution_id=record.id, tool_name="t", success=True, duration_ms=1)
    assert {"started_at", "finished_at", "error_type"} <= call.model_fields_set


def test_a_remembered_message_is_classified_as_it_was_the_first_time():
    """``ErrorType.infer`` remembers the class of short messages; long ones (a traceback, a
    page of output) are classified each time and never kept."""
    messages = [
        "timed out after 30s",
        "rate limit exceeded (429 Too Many Requests)",
        "grep failed: invalid parameter 'path': must be absolute",
        "KeyError: 'items'",
        "plan could not be completed",
        "   ",
        "",
    ]
    first = [errors._from_text(m) for m in messages]
    assert [ErrorType.infer(m) for m in messages] == first
    assert [ErrorType.infer(m) for m in messages] == first  # now from memory
    remembered = errors._remembered.cache_info().currsize
    long = "connection refused " + "x" * errors._REMEMBERED_LENGTH
    assert ErrorType.infer(long) is ErrorType.CONNECTION
    assert errors._remembered.cache_info().currsize == remembered
