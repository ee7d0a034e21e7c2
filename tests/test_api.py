"""The HTTP API over a real socket: uvicorn on 127.0.0.1 in a thread, httpx as the client.

Store-backed tests run on SQLite and on PostgreSQL (the ``store`` fixture).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import json
import operator
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.routing import APIRoute

from dendrite import Orchestrator, OrchestratorConfig
from dendrite import orchestrator as orchestrator_module
from dendrite.api import InsecureBindError, create_app, is_loopback, serve
from dendrite.api import app as api_app
from dendrite.api.server import SHUTDOWN_GRACE_SECONDS, check_bind
from dendrite.learning.jobs import JobScheduler
from dendrite.planning import RetryPolicy
from dendrite.store import ExecutionStore
from dendrite.telemetry import ExecutionStatus
from dendrite.tools import ToolContext, ToolRegistry, tool

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROBLEM = "application/problem+json"
FAST_RETRY = RetryPolicy(max_attempts=3, backoff=0.0, jitter=0.0)
# For tests where the store's backend makes no difference: SQLite only.
SQLITE_ONLY = pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)

NOTES = {
    "storage.md": "Dendrite records every run in SQLite by default, or PostgreSQL when asked.",
    "planning.md": "A goal is planned as a DAG of tool calls and validated before it runs.",
    "api.md": "The HTTP API runs goals, streams their events and serves the analytics.",
}


# -- tools -------------------------------------------------------------------


def make_registry(*, slow: bool = True) -> ToolRegistry:
    registry = ToolRegistry()
    calls = {"fetch_page": 0}

    @tool(reliability="high", tags=["notes", "search"])
    def search_notes(query: str, limit: int = 3) -> dict:
        """Search the project notes for words.

        Args:
            query: words to look for
            limit: most hits to return
        """
        words = {w.strip(".,?").lower() for w in query.split()}
        hits = [
            name
            for name, text in NOTES.items()
            if words & {w.strip(".,").lower() for w in text.split()}
        ]
        return {"hits": hits[: max(limit, 0)], "count": len(hits[: max(limit, 0)])}

    @tool(reliability="high", tags=["math"])
    def calculate(expression: str) -> float:
        """Evaluate an arithmetic expression such as 6 * 7.

        Args:
            expression: numbers with + - * / and parentheses
        """
        ops = {
            ast.Add: operator.add,
            ast.Sub: operator.sub,
            ast.Mult: operator.mul,
            ast.Div: operator.truediv,
            ast.USub: operator.neg,
        }

        def value(node: ast.AST) -> float:
            if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
                return node.value
            if isinstance(node, ast.BinOp) and type(node.op) in ops:
                return ops[type(node.op)](value(node.left), value(node.right))
            if isinstance(node, ast.UnaryOp) and type(node.op) in ops:
                return ops[type(node.op)](value(node.operand))
            raise ValueError(f"not arithmetic: {expression!r}")

        if len(expression) > 200:
            raise ValueError("expression too long")
        return float(value(ast.parse(expression, mode="eval").body))

    @tool(tags=["text"])
    def word_count(text: str) -> int:
        """Count the words in a text.

        Args:
            text: the text to count
        """
        return len(text.split())

    @tool(reliability="medium", tags=["web"])
    def fetch_page(url: str) -> str:
        """Fetch a page (the first call of each pair times out, as real networks do).

        Args:
            url: address of the page
        """
        calls["fetch_page"] += 1
        if calls["fetch_page"] % 2:
            raise TimeoutError("upstream timed out")
        return f"<html>{url}</html>"

    def slow_lookup(key: str, seconds: float, ctx: ToolContext) -> str:
        """Look a key up in a slow directory (stops when the run is cancelled)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ctx.raise_if_cancelled()
            time.sleep(0.01)
        return key

    for func in (search_notes, calculate, word_count, fetch_page):
        registry.register(func)
    if slow:
        registry.register_function(slow_lookup, reliability="low")
    return registry


# -- a live server -----------------------------------------------------------


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 (a free port) in a background thread."""

    def __init__(self, app: Any, lifespan: str = "off") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, log_level="warning", lifespan=lifespan, timeout_graceful_shutdown=3
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.sock.close()


def serve_app(orch: Orchestrator, **options: Any) -> LiveServer:
    return LiveServer(create_app(orch, **options))


@pytest.fixture
def orch(store: ExecutionStore) -> Iterator[Orchestrator]:
    with Orchestrator(
        make_registry(), store=store, llm=None, config=OrchestratorConfig(retry=FAST_RETRY)
    ) as orchestrator:
        yield orchestrator


@pytest.fixture
def live(orch: Orchestrator) -> Iterator[LiveServer]:
    with serve_app(orch, token=TOKEN, max_body_bytes=20_000) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, headers=AUTH, timeout=30) as c:
        yield c


def assert_problem(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A problem+json answer with the given status whose title or detail names ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:dendrite:problem:")
    assert body["title"] and body["detail"]
    text = f"{body['title']} {body['detail']}".lower()
    for word in words:
        assert word.lower() in text, body
    return body


def read_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body (comments skipped) into (event, data) pairs, in order."""
    events: list[tuple[str, dict[str, Any]]] = []
    name, data = None, []
    for line in response.iter_lines():
        if not line:
            if name is not None:
                events.append((name, json.loads("\n".join(data))))
            name, data = None, []
        elif line.startswith(":"):
            continue
        elif line.startswith("event:"):
            name = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            data.append(line.partition(":")[2].strip())
    return events


def run_goal(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/goals", json=body)
    assert response.status_code == 200, response.text
    return response.json()


# -- goals -------------------------------------------------------------------


def test_goal_runs_and_is_recorded(client: httpx.Client, store: ExecutionStore) -> None:
    result = run_goal(client, goal="calculate 6 * 7", session_id="s-1")
    assert result["answer"] == 42.0
    assert result["success"] is True and result["status"] == "succeeded"
    assert 0 < result["confidence"] <= 1
    assert result["query_type"] == "calculation" and result["intent"] == "tool_use"
    assert result["session_id"] == "s-1"
    [step] = result["steps"]
    assert step["tool"] == "calculate" and step["status"] == "succeeded"
    assert step["attempts"] == 1 and step["retries"] == 0 and step["duration_ms"] >= 0
    uuid.UUID(result["execution_id"])

    detail = client.get(f"/v1/executions/{result['execution_id']}").json()
    assert detail["goal_text"] == "calculate 6 * 7" and detail["success"] is True
    assert detail["query_type"] == "calculation" and detail["session_id"] == "s-1"
    assert [s["tool_name"] for s in detail["steps"]] == ["calculate"]
    assert detail["metadata"]["output"] == 42.0


def test_explicit_plan_with_retries(client: httpx.Client) -> None:
    plan = {
        "goal": "fetch the docs page and count its words",
        "steps": [
            {"id": "page", "tool": "fetch_page", "params": {"url": "https://example.org/docs"}},
            {"id": "size", "tool": "word_count", "params": {"text": "${page}"}},
        ],
    }
    result = run_goal(client, plan=plan)
    assert result["success"] is True and result["answer"] == 1
    assert result["planner"] == "explicit"
    page, size = result["steps"]
    assert page["attempts"] == 2 and page["retries"] == 1
    assert size["attempts"] == 1

    trace = client.get(f"/v1/executions/{result['execution_id']}/trace").json()
    assert trace["execution_id"] == result["execution_id"] and trace["success"] is True
    attempts = trace["steps"][0]["attempts"]
    assert [a["success"] for a in attempts] == [False, True]
    assert attempts[0]["error_type"] == "timeout"


def test_goal_that_cannot_be_planned_is_422_and_recorded(
    client: httpx.Client, store: ExecutionStore
) -> None:
    response = client.post("/v1/goals", json={"goal": "hello there", "session_id": "nope"})
    body = assert_problem(response, 422, "could not be planned")
    assert body["problems"] and "hello there" in body["detail"]
    page = client.get("/v1/executions", params={"session_id": "nope"}).json()
    [failed] = page["items"]
    assert failed["success"] is False and failed["error_type"] == "validation"
    assert failed["goal_text"] == "hello there"
    assert body["execution_id"] == failed["id"]  # the problem points at the record


@SQLITE_ONLY
def test_invalid_plan_names_every_problem(client: httpx.Client) -> None:
    plan = {
        "goal": "broken",
        "steps": [
            {"id": "a", "tool": "serch_notes", "params": {"query": "x"}},
            {"id": "b", "tool": "word_count", "params": {"text": "${missing.out}"}},
        ],
    }
    body = assert_problem(client.post("/v1/goals", json={"plan": plan}), 422, "problem")
    problems = " ".join(body["problems"])
    assert "serch_notes" in problems and "search_notes" in problems  # did you mean
    assert "missing" in problems
    assert len(body["problems"]) == 2


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({}, ["neither was given"]),  # said "not both"
        ({"goal": "calculate 1 + 1", "plan": {"steps": [{"id": "a", "tool": "x"}]}}, ["not both"]),
        ({"goal": "   "}, ["blank"]),
        ({"goal": "calculate 1 + 1", "rating": 3}, ["extra"]),
        ({"goal": 5}, ["string"]),
        ({"goal": "x", "planner": "oracle"}, ["planner"]),
        ({"goal": "x", "planner": "single", "strategy": "simple"}, ["dendrite"]),
        ({"plan": {"goal": "no steps", "steps": []}}, ["steps"]),
    ],
)
def test_goal_request_validation(
    client: httpx.Client, body: dict[str, Any], words: list[str]
) -> None:
    problem = assert_problem(client.post("/v1/goals", json=body), 422, *words)
    assert problem["errors"] and all("message" in e for e in problem["errors"])


@SQLITE_ONLY
def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/goals", content=b'{"goal": "calc', headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 400, "json")


@SQLITE_ONLY
def test_a_body_not_sent_as_json_is_415_saying_so(client: httpx.Client) -> None:
    """curl -d sends a form: every documented example answered a 422 about a "valid
    dictionary" that never said what was wrong."""
    body = b'{"goal": "calculate 6 * 7"}'
    for headers in ({"Content-Type": "application/x-www-form-urlencoded"}, {}):
        response = client.post("/v1/goals", content=body, headers=headers)
        assert_problem(response, 415, "Content-Type: application/json")
    assert_problem(client.post("/v1/goals", content=b""), 422)  # no body at all: a field


def test_requested_planner_and_strategy(client: httpx.Client, store: ExecutionStore) -> None:
    result = run_goal(client, goal="word_count the quick brown fox", planner="single")
    assert result["planner"] == "single_tool" and result["answer"] == 4
    result = run_goal(client, goal="calculate 2 * 21", strategy="simple")
    assert result["answer"] == 42.0 and result["strategy"] == "simple"
    # The planner asked for keeps the learning loop: plan memory recalls the last plan.
    result = run_goal(client, goal="calculate 3 * 21", strategy="simple")
    assert result["answer"] == 63.0 and result["planner"] == "memory"
    # No model on this server: asking for the LLM planner is refused up front.
    assert_problem(client.post("/v1/goals", json={"goal": "x", "planner": "llm"}), 422, "model")
    # A requested planner that cannot plan is refused, and the attempt is on the record.
    response = client.post(
        "/v1/goals", json={"goal": "nothing here", "planner": "single", "session_id": "p"}
    )
    assert_problem(response, 422, "no registered tool")
    [failed] = client.get("/v1/executions", params={"session_id": "p"}).json()["items"]
    assert failed["planner"] == "single_tool" and failed["error_type"] == "validation"
    # The strategy asked for is on the record of a goal it could not plan, too.
    body = {"goal": "nothing here zzz", "planner": "dendrite", "strategy": "simple"}
    response = client.post("/v1/goals", json={**body, "session_id": "q"})
    assert response.status_code == 422
    [failed] = client.get("/v1/executions", params={"session_id": "q"}).json()["items"]
    assert store.get_execution(failed["id"]).metadata["strategy"] == "simple"


# -- streaming ---------------------------------------------------------------


def test_stream_events_in_order(client: httpx.Client) -> None:
    body = {"goal": "calculate (1 + 2) * 14", "session_id": "stream"}
    with client.stream("POST", "/v1/goals/stream", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)
    names = [name for name, _ in events]
    assert names[0] == "plan_created" and names[-1] == "final_answer"
    assert names == ["plan_created", "step_started", "step_finished", "final_answer"]
    assert all(data["type"] == name for name, data in events)
    execution_id = events[0][1]["execution_id"]
    assert {data["execution_id"] for _, data in events} == {execution_id}
    assert events[0][1]["data"]["plan"]["steps"][0]["tool"] == "calculate"
    final = events[-1][1]["data"]
    assert final["output"] == 42.0 and final["success"] is True
    detail = client.get(f"/v1/executions/{execution_id}").json()
    assert detail["success"] is True and detail["session_id"] == "stream"


@SQLITE_ONLY
def test_stream_with_retry_and_explicit_plan(client: httpx.Client) -> None:
    plan = {"steps": [{"id": "page", "tool": "fetch_page", "params": {"url": "u"}}]}
    with client.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
        names = [name for name, _ in read_events(response)]
    assert names == ["plan_created", "step_started", "step_retry", "step_finished", "final_answer"]


@SQLITE_ONLY
def test_stream_sends_keepalives_while_quiet(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dendrite.api.app

    monkeypatch.setattr(dendrite.api.app, "KEEPALIVE_SECONDS", 0.05)
    plan = {"steps": [{"id": "w", "tool": "slow_lookup", "params": {"key": "k", "seconds": 0.5}}]}
    with client.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
        lines = list(response.iter_lines())
    assert ": keep-alive" in lines
    events = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    assert events == ["plan_created", "step_started", "step_finished", "final_answer"]


@SQLITE_ONLY
def test_stream_planning_error_is_an_error_event(client: httpx.Client) -> None:
    with client.stream("POST", "/v1/goals/stream", json={"goal": "hello there"}) as response:
        assert response.status_code == 200
        events = read_events(response)
    [(name, problem)] = events
    assert name == "error"
    assert problem["status"] == 422 and problem["problems"]
    assert problem["type"] == "urn:dendrite:problem:planning-failed"


@SQLITE_ONLY
def test_stream_rejects_a_bad_body_before_streaming(client: httpx.Client) -> None:
    assert_problem(client.post("/v1/goals/stream", json={"goal": ""}), 422)


def test_a_session_or_project_the_history_cannot_keep_is_422(
    client: httpx.Client, store: ExecutionStore
) -> None:
    goal = "calculate 1 + 1"
    too_long = {"goal": goal, "session_id": "s" * 129}
    assert_problem(client.post("/v1/goals", json=too_long), 422, "session_id")
    too_long = {"goal": goal, "context": {"project": "p" * 256}}
    assert_problem(client.post("/v1/goals", json=too_long), 422, "context.project")
    # A project that is not text was dropped: the run was recorded under no project.
    not_text = {"goal": goal, "context": {"project": 5}}
    assert_problem(client.post("/v1/goals", json=not_text), 422, "context.project", "string")
    kept = run_goal(client, goal=goal, session_id="s" * 128)["execution_id"]
    assert client.get(f"/v1/executions/{kept}").status_code == 200
    blank = client.post(f"/v1/executions/{kept}/feedback", json={"comment": "   "})
    assert_problem(blank, 422, "at least one of")  # a feedback row that says nothing


def test_stream_disconnect_cancels_the_run(client: httpx.Client, store: ExecutionStore) -> None:
    plan = {
        "goal": "look up a key slowly",
        "steps": [{"id": "wait", "tool": "slow_lookup", "params": {"key": "k", "seconds": 30}}],
    }
    started = time.monotonic()
    with client.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
        lines = response.iter_lines()
        seen: list[str] = []
        execution_id = None
        for line in lines:
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
            if line.startswith("data:") and execution_id is None:
                execution_id = json.loads(line.split(":", 1)[1])["execution_id"]
            if seen[-1:] == ["step_started"]:
                break
    # Leaving the block closes the connection mid-run.
    assert seen == ["plan_created", "step_started"] and execution_id
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        detail = store.get_execution(execution_id)
        if detail is not None:
            break
        time.sleep(0.05)
    assert detail is not None, "the cancelled run was never recorded"
    assert detail.status == "cancelled" and detail.success is False
    assert time.monotonic() - started < 20  # long before the tool's 30 s
    [attempt] = detail.steps
    assert attempt.tool_name == "slow_lookup" and attempt.error_type == "cancelled"


@SQLITE_ONLY
def test_metrics_count_the_attempts_of_a_cancelled_stream(client: httpx.Client) -> None:
    """A streamed run its client left was counted as a cancelled run with no attempts,
    though the store records the tool call it cut short."""
    plan = {"steps": [{"id": "wait", "tool": "slow_lookup", "params": {"key": "k", "seconds": 30}}]}
    with client.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
        for line in response.iter_lines():
            if line == "event: step_started":
                break  # leaving the block closes the connection mid-run
    cut_short = 'dendrite_step_attempts_total{outcome="failure",tool="slow_lookup"} 1.0'
    deadline = time.monotonic() + 10
    while cut_short not in (text := client.get("/metrics").text):
        assert time.monotonic() < deadline, text
        time.sleep(0.05)
    assert 'dendrite_runs_total{status="cancelled"} 1.0' in text
    assert "dendrite_run_duration_seconds_count 1.0" in text


# -- executions --------------------------------------------------------------


def test_list_filters_and_paginates(client: httpx.Client) -> None:
    for n in range(7):
        run_goal(client, goal=f"calculate {n} + 1", session_id="pages")
    run_goal(client, goal="word_count one two", session_id="pages", planner="single")
    client.post("/v1/goals", json={"goal": "hello there", "session_id": "pages"})

    first = client.get("/v1/executions", params={"session_id": "pages", "limit": 4}).json()
    assert len(first["items"]) == 4 and first["next_cursor"]
    seen = [item["id"] for item in first["items"]]
    cursor = first["next_cursor"]
    while cursor:
        page = client.get(
            "/v1/executions", params={"session_id": "pages", "limit": 4, "cursor": cursor}
        ).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
    assert len(seen) == 9 == len(set(seen))
    times = [client.get(f"/v1/executions/{i}").json()["started_at"] for i in seen]  # newest first
    assert times == sorted(times, reverse=True)

    failed = client.get("/v1/executions", params={"session_id": "pages", "success": "false"})
    assert [i["goal_text"] for i in failed.json()["items"]] == ["hello there"]
    ok = client.get("/v1/executions", params={"session_id": "pages", "success": True}).json()
    assert len(ok["items"]) == 8 and ok["next_cursor"] is None
    intents = [i["intent"] for i in first["items"]]
    same = client.get("/v1/executions", params={"session_id": "pages", "intent": intents[0]})
    assert {i["intent"] for i in same.json()["items"]} == {intents[0]}
    assert len(same.json()["items"]) >= intents.count(intents[0])
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert client.get("/v1/executions", params={"since": future}).json()["items"] == []
    past = (datetime.now(UTC) - timedelta(hours=1)).replace(tzinfo=None).isoformat()
    assert len(client.get("/v1/executions", params={"since": past}).json()["items"]) == 9


def test_pages_split_runs_that_started_together(
    client: httpx.Client, store: ExecutionStore
) -> None:
    at = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    ids = {
        store.store_execution(
            goal_text=f"same instant {n}",
            success=True,
            duration_ms=1.0,
            started_at=at,
            session_id="ties",
        )
        for n in range(7)
    }
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"session_id": "ties", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/v1/executions", params=params).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert len(seen) == 7 and set(seen) == ids
    assert seen == sorted(seen, reverse=True)  # same start: by id, newest first


@SQLITE_ONLY
def test_list_bad_parameters(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/executions", params={"cursor": "not-a-cursor"}), 400, "cursor")
    assert_problem(client.get("/v1/executions", params={"limit": 0}), 422, "limit")
    assert_problem(client.get("/v1/executions", params={"limit": 501}), 422, "limit")
    assert_problem(client.get("/v1/executions", params={"success": "maybe"}), 422, "success")
    assert_problem(client.get("/v1/executions", params={"since": "yesterday"}), 422, "since")


def _cursor(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


@SQLITE_ONLY
def test_times_outside_utc_years_and_odd_cursors_are_refused_not_500(
    client: httpx.Client,
) -> None:
    """A ``since`` or cursor time valid in its own offset but outside the years 1 to 9999
    in UTC overflowed in the store, and a cursor whose id is not text broke uuid.UUID:
    each was a 500."""
    for since in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"):
        for path in ("/v1/executions", "/v1/analytics/success-rate"):
            response = client.get(path, params={"since": since})
            assert_problem(response, 422, "since", "outside the years 1 to 9999 in UTC")
    some_id = str(uuid.uuid4())
    for cursor in (
        {"t": "2025-01-01T00:00:00", "id": 5},
        {"t": "0001-01-01T00:00:00+05:00", "id": some_id},
    ):
        response = client.get("/v1/executions", params={"cursor": _cursor(cursor)})
        assert_problem(response, 400, "cursor")
    # An offset inside the range still filters, compared in UTC.
    shifted = client.get("/v1/executions", params={"since": "2000-01-01T05:00:00+05:00"})
    assert shifted.status_code == 200, shifted.text


@SQLITE_ONLY
def test_query_parameters_are_found_once_per_route_not_per_request(
    orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each route's dependency tree is walked for its query parameters once, when the route
    is built; requests are checked against that set: unknown refused by name, known taken."""
    walks: list[object] = []
    walk = api_app._query_parameters

    def counted(dependant: Any) -> frozenset[str]:
        walks.append(dependant)
        return walk(dependant)

    monkeypatch.setattr(api_app, "_query_parameters", counted)
    app = create_app(orch)
    assert len(walks) == sum(isinstance(route, APIRoute) for route in app.routes)
    built = len(walks)
    with LiveServer(app) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        for _ in range(3):
            listed = c.get("/v1/executions", params={"limit": 5, "success": "true"})
            assert listed.status_code == 200, listed.text
            rate = c.get("/v1/analytics/success-rate", params={"since": "2024-01-01T00:00:00"})
            assert rate.status_code == 200, rate.text
            takes = "cursor, intent, limit, session_id, since, success"
            misspelled = c.get("/v1/executions", params={"limit": 5, "sesion_id": "s"})
            assert_problem(misspelled, 422, "'sesion_id'", takes)
            assert_problem(c.get("/v1/tools", params={"verbose": 1}), 422, "'verbose'", "none")
    assert len(walks) == built


def test_execution_lookups(client: httpx.Client) -> None:
    unknown = str(uuid.uuid4())
    assert_problem(client.get(f"/v1/executions/{unknown}"), 404, unknown)
    assert_problem(client.get(f"/v1/executions/{unknown}/trace"), 404, unknown)
    assert_problem(client.get("/v1/executions/not-a-uuid"), 422, "uuid")
    assert_problem(client.get("/v1/executions/not-a-uuid/trace"), 422, "uuid")


def test_trace_of_an_older_run_comes_from_the_store(store: ExecutionStore, tmp_path: Path) -> None:
    config = OrchestratorConfig(retry=FAST_RETRY, keep_traces=0)
    with (
        Orchestrator(make_registry(), store=store, llm=None, config=config) as orch,
        serve_app(orch) as live,
        httpx.Client(base_url=live.url) as c,
    ):
        result = run_goal(c, goal="calculate 3 * 3")
        trace = c.get(f"/v1/executions/{result['execution_id']}/trace").json()
    assert trace["steps"][0]["tool"] == "calculate"
    assert trace["steps"][0]["attempts"][0]["success"] is True


def test_feedback(client: httpx.Client, store: ExecutionStore) -> None:
    execution_id = run_goal(client, goal="calculate 1 + 1")["execution_id"]
    response = client.post(
        f"/v1/executions/{execution_id}/feedback",
        json={"rating": 4, "accepted": True, "comment": "right answer"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["execution_id"] == execution_id
    uuid.UUID(response.json()["feedback_id"])
    learned = response.json()["learned"]
    assert learned["reward"] == 0.875 and learned["tools"] == ["calculate"]
    assert 0.99 < learned["weight"] <= 1 and learned["router"] is False
    detail = client.get(f"/v1/executions/{execution_id}").json()
    assert detail["user_rating"] == 4 and detail["user_accepted"] is True
    assert detail["feedback"][0]["feedback_text"] == "right answer"

    path = f"/v1/executions/{execution_id}/feedback"
    assert_problem(client.post(path, json={"rating": 6}), 422, "rating")
    assert_problem(client.post(path, json={"rating": 0}), 422, "rating")
    assert_problem(client.post(path, json={"rating": "great"}), 422, "rating")
    assert_problem(client.post(path, json={"rating": True}), 422, "rating")  # not a 1
    assert_problem(client.post(path, json={"accepted": "yes"}), 422, "accepted")
    assert_problem(client.post(path, json={}), 422, "at least one")
    assert_problem(client.post(path, json={"stars": 5}), 422, "extra")
    unknown = str(uuid.uuid4())
    assert_problem(
        client.post(f"/v1/executions/{unknown}/feedback", json={"rating": 3}), 404, unknown
    )
    assert_problem(client.post("/v1/executions/42/feedback", json={"rating": 3}), 422, "uuid")


# -- tools -------------------------------------------------------------------


@SQLITE_ONLY
def test_tools_list_enable_disable(client: httpx.Client) -> None:
    tools = {t["name"]: t for t in client.get("/v1/tools").json()["tools"]}
    assert set(tools) == {"search_notes", "calculate", "word_count", "fetch_page", "slow_lookup"}
    search = tools["search_notes"]
    assert search["parameters"]["required"] == ["query"]
    assert search["reliability"] == "high" and search["status"] == "enabled"

    disabled = client.post("/v1/tools/calculate/disable", json={"reason": "maintenance"}).json()
    assert disabled["status"] == "disabled" and disabled["status_reason"] == "maintenance"
    listed = {t["name"]: t for t in client.get("/v1/tools").json()["tools"]}
    assert listed["calculate"]["status"] == "disabled"  # still listed
    plan = {"steps": [{"id": "c", "tool": "calculate", "params": {"expression": "1+1"}}]}
    assert_problem(client.post("/v1/goals", json={"plan": plan}), 422, "disabled")

    enabled = client.post("/v1/tools/calculate/enable").json()
    assert enabled["status"] == "enabled" and enabled["status_reason"] is None
    assert run_goal(client, plan=plan)["answer"] == 2.0
    assert client.post("/v1/tools/word_count/disable").json()["status"] == "disabled"

    body = assert_problem(client.post("/v1/tools/calculat/enable"), 404, "unknown tool")
    assert "calculate" in body["detail"]  # did you mean
    assert_problem(client.post("/v1/tools/nope/disable"), 404, "nope")
    assert_problem(client.post("/v1/tools/calculate/disable", json={"reason": 5}), 422, "reason")


# -- analytics ---------------------------------------------------------------


def test_analytics(client: httpx.Client) -> None:
    for goal in ("calculate 2 + 2", "calculate 3 + 3", "word_count a b c"):
        run_goal(client, goal=goal)
    client.post("/v1/goals", json={"goal": "hello there"})
    client.post(
        "/v1/goals", json={"plan": {"steps": [{"id": "p", "tool": "fetch_page", "params": {}}]}}
    )

    tools = {t["tool_name"]: t for t in client.get("/v1/analytics/tools").json()["tools"]}
    assert tools["calculate"]["total_executions"] == 2
    assert tools["calculate"]["success_rate"] == 1.0 and tools["calculate"]["p95_duration_ms"] >= 0

    tiers = client.get("/v1/analytics/tiers", params={"days": 3}).json()
    assert tiers == {"days": 3, "tiers": []}  # no model tiers without a model
    assert_problem(client.get("/v1/analytics/tiers", params={"days": 0}), 422, "days")
    assert client.get("/v1/analytics/pools").json() == {"pools": []}
    assert client.get("/v1/analytics/routing").json() == {"days": 7, "routes": []}
    assert_problem(client.get("/v1/analytics/routing", params={"days": 0}), 422, "days")

    rate = client.get("/v1/analytics/success-rate").json()
    # The goal that could not be planned and the plan missing an argument count as failures.
    assert rate["total"] == 5 and rate["successful"] == 3 and rate["success_rate"] == 0.6
    since = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    recent = client.get("/v1/analytics/success-rate", params={"since": since}).json()
    assert recent["total"] == 5 and recent["since"]
    nothing = client.get("/v1/analytics/success-rate", params={"intent": "generative"}).json()
    assert nothing == {
        "total": 0,
        "successful": 0,
        "success_rate": None,
        "intent": "generative",
        "since": None,
    }
    assert_problem(client.get("/v1/analytics/success-rate", params={"since": "soon"}), 422)


def test_experiments_policies_and_jobs(client: httpx.Client, store: ExecutionStore) -> None:
    for arm, successes in (("a", 9), ("b", 2)):
        for i in range(10):
            execution = store.store_execution(goal_text="g", success=i < successes, duration_ms=1)
            store.store_assignment("ab", execution, arm, f"u{arm}{i}")
    store.flush()
    (report,) = client.get("/v1/analytics/experiments").json()["experiments"]
    assert report["experiment"] == "ab" and [a["arm"] for a in report["arms"]] == ["a", "b"]
    assert report["arms"][1]["success_test"] == "fisher"
    assert report["arms"][1]["p_success"] == pytest.approx(0.00548, abs=1e-4)
    for arm, successes in (("a", 8), ("b", 3)):  # sessions of two runs each: clustered
        for i in range(10):
            execution = store.store_execution(goal_text="g", success=i < successes, duration_ms=1)
            store.store_assignment("by_session", execution, arm, f"s{arm}{i // 2}")
    store.flush()
    clustered = client.get("/v1/analytics/experiments", params={"experiment": "by_session"})
    assert clustered.status_code == 200, clustered.text
    assert clustered.json()["experiments"][0]["arms"][1]["success_test"] == "cluster"
    none = client.get("/v1/analytics/experiments", params={"experiment": "other"})
    assert_problem(none, 404, "no experiment 'other' recorded")  # as the CLI says
    # A misspelled filter is refused, not ignored (it answered the unfiltered list).
    assert_problem(client.get("/v1/executions?sesion_id=s1"), 422, "'sesion_id'", "session_id")
    assert_problem(client.get("/v1/analytics/experiments", params={"alpha": 2}), 422, "alpha")
    assert client.get("/v1/analytics/policies").status_code == 200

    jobs = client.get("/v1/jobs").json()
    assert jobs["scheduled"] is False
    assert [j["name"] for j in jobs["jobs"]][:2] == ["statistics", "low_performers"]
    assert all(j["last_run"] is None for j in jobs["jobs"])
    run = client.post("/v1/jobs/statistics/run")
    assert run.status_code == 201 and run.json()["success"] and run.json()["trigger"] == "manual"
    listed = {j["name"]: j for j in client.get("/v1/jobs").json()["jobs"]}
    assert listed["statistics"]["last_run"]["id"] == run.json()["id"]
    assert_problem(client.post("/v1/jobs/nightly/run"), 404, "no job 'nightly'")


def test_the_server_runs_the_jobs_on_their_schedule(orch: Orchestrator) -> None:
    scheduler = JobScheduler(orch, intervals={"statistics": timedelta(seconds=0.05)})
    app = create_app(orch, token=TOKEN, jobs=scheduler)
    with (
        LiveServer(app, lifespan="on") as server,
        httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c,
    ):
        deadline = time.monotonic() + 20
        while not scheduler.runs and time.monotonic() < deadline:
            time.sleep(0.05)
        listed = c.get("/v1/jobs").json()
        assert listed["scheduled"] is True
        by_name = {j["name"]: j for j in listed["jobs"]}
        assert by_name["statistics"]["every_seconds"] == 0.05
        assert by_name["statistics"]["last_run"]["trigger"] == "schedule"
        assert by_name["lifecycle"]["every_seconds"] == 86_400
        assert scheduler.running
    assert not scheduler.running  # the app's shutdown stopped it


# -- system ------------------------------------------------------------------


def test_system_status_and_orchestrator(client: httpx.Client, store: ExecutionStore) -> None:
    status = client.get("/system/status").json()
    assert status["status"] == "ok" and status["recording"] is True
    assert status["store"]["reachable"] is True
    assert status["store"]["backend"] == store.backend
    assert status["store"]["pending_writes"] >= 0 and status["store"]["journal_records"] == 0
    assert status["tools"] == {"total": 5, "enabled": 5, "disabled": 0, "quarantined": 0}
    assert status["uptime_s"] >= 0 and status["runs_in_progress"] == 0
    assert "password" not in json.dumps(status)

    info = client.get("/system/orchestrator").json()
    assert info["planner"] == {
        "name": "dendrite",
        "kind": "DendritePlanner",
        "strategy": "adaptive",
    }
    assert info["strategies"] == ["simple", "parallel", "adaptive", "comprehensive"]
    assert "llm" not in info["planners"] and "single" in info["planners"]
    assert info["llm"] == {
        "configured": False,
        "model": None,
        "base_url": None,
        "default_tier": None,
        "tiers": [],
        "cost_weight": None,
    }
    assert info["config"]["max_parallel_steps"] == 16
    assert info["config"]["retry"]["max_attempts"] == 3
    assert info["router"] is None  # no model tiers, no router


def test_orchestrator_with_a_model_hides_its_secrets() -> None:
    from dendrite.llm import ChatLLM
    from dendrite.llm.client import LLMConfig, LLMTier

    tiers = (
        LLMTier("tiny", "tiny-model", 0.0),
        LLMTier(
            "huge",
            "huge-model",
            2.5,
            3.0,
            15.0,
            base_url="https://bob:pa55@api.example.com/v1",
            api_key="sk-huge",
        ),
    )
    llm = ChatLLM(
        LLMConfig("http://me:hunter2@127.0.0.1:9/v1", "tiny-model", api_key="sk-x", tiers=tiers)
    )
    with (
        Orchestrator(make_registry(), store=None, llm=llm) as orch,
        serve_app(orch) as live,
        httpx.Client(base_url=live.url) as c,
    ):
        info = c.get("/system/orchestrator").json()
        schema = c.get("/openapi.json").json()
    assert info["llm"] == {
        "configured": True,
        "model": "tiny-model",
        "base_url": "http://127.0.0.1:9/v1",
        "default_tier": "tiny",  # the default model is the tiny tier's
        "tiers": [
            {
                "name": "tiny",
                "model": "tiny-model",
                "cost": 0.0,
                "prompt_price": 0.0,
                "completion_price": 0.0,
                "base_url": None,
            },
            {
                "name": "huge",
                "model": "huge-model",
                "cost": 2.5,
                "prompt_price": 3.0,
                "completion_price": 15.0,
                "base_url": "https://api.example.com/v1",
            },
        ],
        "cost_weight": 0.1,
    }
    assert info["router"] == {  # two tiers: the orchestrator routes between them
        "name": "model_tier",
        "options": ["tiny", "huge"],
        "policy": "thompson",
        "cost_weight": 0.1,
        "observations": {"tiny": 0, "huge": 0},
    }
    assert "llm" in info["planners"]
    assert "hunter2" not in json.dumps(info) and "sk-x" not in json.dumps(info)
    assert "pa55" not in json.dumps(info) and "sk-huge" not in json.dumps(info)
    # The trace's reasons are in its schema, and a job's 422 (a name too long) is documented.
    assert {"why", "replans"} <= set(schema["components"]["schemas"]["TraceOut"]["properties"])
    assert "422" in schema["paths"]["/v1/jobs/{name}/run"]["post"]["responses"]
    planner = schema["components"]["schemas"]["GoalRequest"]["properties"]["planner"]
    assert "llm" in json.dumps(planner)


@SQLITE_ONLY
def test_metrics(client: httpx.Client) -> None:
    run_goal(client, goal="calculate 6 * 7")
    run_goal(client, plan={"steps": [{"id": "p", "tool": "fetch_page", "params": {"url": "u"}}]})
    client.post("/v1/goals", json={"goal": "hello there"})
    with client.stream("POST", "/v1/goals/stream", json={"goal": "calculate 1 + 1"}) as r:
        read_events(r)
    deadline = time.monotonic() + 10
    while True:  # the stream's metrics are taken just after its last event
        response = client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        if 'dendrite_runs_total{status="succeeded"} 3.0' in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert 'dendrite_runs_total{status="succeeded"} 3.0' in text
    assert 'dendrite_runs_total{status="failed"} 1.0' in text
    assert "dendrite_planning_errors_total 1.0" in text
    assert 'dendrite_step_attempts_total{outcome="failure",tool="fetch_page"} 1.0' in text
    assert 'dendrite_step_attempts_total{outcome="success",tool="fetch_page"} 1.0' in text
    assert 'dendrite_step_attempts_total{outcome="success",tool="calculate"} 2.0' in text
    assert "dendrite_run_duration_seconds_count 4.0" in text
    assert 'dendrite_run_duration_seconds_bucket{le="+Inf"} 4.0' in text
    assert "dendrite_store_pending_writes " in text
    assert "dendrite_store_reachable 1.0" in text
    assert 'dendrite_tools{status="enabled"} 5.0' in text
    assert "dendrite_runs_in_progress 0.0" in text


@SQLITE_ONLY
def test_unknown_route_and_method(client: httpx.Client) -> None:
    assert_problem(client.get("/v1/nothing"), 404, "/v1/nothing")
    assert_problem(client.delete("/v1/tools"), 405, "DELETE")


@SQLITE_ONLY
def test_unexpected_error_is_a_500_problem(
    client: httpx.Client, orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(execution_id: str) -> None:
        raise KeyError("secret internals")

    monkeypatch.setattr(orch, "get_execution_trace", broken)
    body = assert_problem(client.get(f"/v1/executions/{uuid.uuid4()}/trace"), 500, "server log")
    assert "secret" not in json.dumps(body)


def test_a_500_leaves_the_connection_usable(
    client: httpx.Client, orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starlette answered, then raised the error again for uvicorn, which closed the
    connection: the client's next request on it was reset (16 times in 20)."""

    def broken(execution_id: str) -> None:
        raise KeyError("secret internals")

    monkeypatch.setattr(orch, "get_execution_trace", broken)
    for _ in range(20):
        assert_problem(client.get(f"/v1/executions/{uuid.uuid4()}/trace"), 500, "server log")
        assert client.get("/healthz").status_code == 200


@SQLITE_ONLY
def test_an_error_that_says_closed_is_no_closed_orchestrator(store: ExecutionStore) -> None:
    """A planner's RuntimeError mentioning "closed" (httpx's "the client has been closed")
    was answered 503 orchestrator-closed; a closed orchestrator's stream sent a 500."""

    class Failing:
        name = "failing"

        async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Any:
            raise RuntimeError("Cannot send a request, as the client has been closed.")

    orch = Orchestrator(make_registry(), store=store, llm=None, planner=Failing())
    with serve_app(orch) as live, httpx.Client(base_url=live.url, timeout=30) as c:
        assert_problem(c.post("/v1/goals", json={"goal": "anything"}), 500, "server log")
        orch.close()
        assert_problem(c.post("/v1/goals", json={"goal": "anything"}), 503, "closed")
        with c.stream("POST", "/v1/goals/stream", json={"goal": "anything"}) as response:
            events = read_events(response)
    assert [(name, data["status"]) for name, data in events] == [("error", 503)]
    assert events[0][1]["type"] == "urn:dendrite:problem:orchestrator-closed"


def test_an_answer_that_contains_itself_keeps_the_responses_shape(
    store: ExecutionStore,
) -> None:
    """The whole response became one marker, without execution_id or status."""

    def loops() -> list:
        value: list = [1]
        value.append(value)
        return value

    registry = ToolRegistry()
    registry.register_function(loops)
    plan = {"goal": "g", "steps": [{"id": "s", "tool": "loops"}]}
    with (
        Orchestrator(registry, store=store, llm=None) as orch,
        serve_app(orch) as live,
        httpx.Client(base_url=live.url, timeout=30) as c,
    ):
        body = run_goal(c, plan=plan)
        with c.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
            final = dict(read_events(response))["final_answer"]
    assert body["status"] == "succeeded" and body["execution_id"]
    first, marker = body["answer"]
    assert first == 1 and marker["$error"] == "circular: it contains itself"
    assert final["data"]["success"] is True and final["data"]["output"][0] == 1


@SQLITE_ONLY
def test_odd_records_and_dates_at_the_calendars_end_are_answered_not_500(
    client: httpx.Client, store: ExecutionStore
) -> None:
    """A record whose metadata has "steps" of its own broke its trace; a cursor or a
    ``since`` of 9999-12-31 overflowed; a condition nested 4,000 deep broke the parser."""
    for steps in (["search", "summarize"], [{"step_id": "a", "started_ms": "12"}]):
        eid = store.store_execution(
            goal_text="imported", success=True, duration_ms=3, metadata={"steps": steps}
        )
        store.flush()
        assert client.get(f"/v1/executions/{eid}/trace").status_code == 200
    last = base64.urlsafe_b64encode(
        json.dumps({"t": "9999-12-31T23:59:59.999999", "id": str(uuid.uuid4())}).encode()
    ).decode()
    assert_problem(client.get("/v1/executions", params={"cursor": last}), 400, "cursor")
    rate = client.get("/v1/analytics/success-rate", params={"since": "9999-12-31T23:59:59"})
    assert rate.status_code == 200 and rate.json()["total"] == 0
    for condition in ("not " * 4000 + "True", "-" * 4000 + "1 > 0"):
        plan = {
            "goal": "g",
            "steps": [
                {"id": "a", "tool": "word_count", "params": {"text": "a"}},
                {"id": "b", "tool": "word_count", "params": {"text": "b"}, "when": condition},
            ],
        }
        response = client.post("/v1/goals", json={"plan": plan})
        assert_problem(response, 422, "nested too deeply")


# -- security ----------------------------------------------------------------


@SQLITE_ONLY
def test_token_required_except_healthz(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=10) as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        for method, path in [
            ("GET", "/v1/tools"),
            ("GET", "/v1/executions"),
            ("POST", "/v1/goals"),
            ("GET", "/metrics"),
            ("GET", "/system/status"),
            ("GET", "/openapi.json"),
            ("GET", "/docs"),
            ("GET", "/nowhere"),
        ]:
            response = anonymous.request(method, path)
            assert_problem(response, 401, "bearer")
            assert response.headers["www-authenticate"].startswith("Bearer")
        wrong = anonymous.get("/v1/tools", headers={"Authorization": "Bearer not-the-token"})
        body = assert_problem(wrong, 401, "not the one")
        assert TOKEN not in json.dumps(body)
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = anonymous.get("/v1/tools", headers={"Authorization": f"Basic {TOKEN}"})
        assert_problem(basic, 401)
        ok = anonymous.get("/v1/tools", headers={"authorization": f"bearer {TOKEN}"})
        assert ok.status_code == 200
        schema = anonymous.get("/openapi.json", headers=AUTH).json()
        assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
        assert schema["paths"]["/healthz"]["get"]["security"] == []
        planner = schema["components"]["schemas"]["GoalRequest"]["properties"]["planner"]
        assert "llm" not in json.dumps(planner["anyOf"])  # no model on this server


@SQLITE_ONLY
def test_body_size_limit(live: LiveServer, client: httpx.Client) -> None:
    big = {"goal": "word_count " + "word " * 10_000}  # about 50 kB; the limit is 20 kB
    assert_problem(client.post("/v1/goals", json=big), 413, "20000 bytes")

    def chunks() -> Iterator[bytes]:  # no Content-Length: sent chunked
        yield b'{"goal": "word_count '
        for _ in range(100):
            yield b"word " * 100
        yield b'"}'

    response = client.post(
        "/v1/goals", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "at most 20000")
    # A declared length far over the limit is refused without reading the body.
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as raw:
        raw.sendall(
            b"POST /v1/goals HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        reply = raw.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413") and PROBLEM in reply
    # Just under the limit is fine.
    small = {"goal": "word_count " + "w " * 4_000, "planner": "single"}
    assert run_goal(client, **small)["answer"] == 4_000


def test_bind_refusal_without_token() -> None:
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        for host in ("0.0.0.0", "::", "", "192.168.1.20", "example.com"):
            with pytest.raises(InsecureBindError, match="without a token"):
                serve(orch, host=host, port=1)
        with pytest.raises(ValueError, match="empty"):
            serve(orch, token="  ")
        with pytest.raises(ValueError, match="empty"):
            create_app(orch, token="")
        with pytest.raises(ValueError, match="max_body_bytes"):
            create_app(orch, max_body_bytes=0)
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost"):
        assert is_loopback(host)
        check_bind(host, None)
    check_bind("0.0.0.0", "a-token")  # a token makes any address acceptable


def test_serve_runs_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    served: dict[str, Any] = {}

    def fake_run(self: uvicorn.Server, sockets: Any = None) -> None:
        served.update(host=self.config.host, port=self.config.port)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", fake_run)
    with Orchestrator(make_registry(), store=None, llm=None) as orch:
        serve(orch)
        assert served["host"] == "127.0.0.1" and served["port"] == 8000
        serve(orch, host="0.0.0.0", port=9000, token="t0ken")
        assert served["host"] == "0.0.0.0"


SERVE_SCRIPT = """
import asyncio, sys
from dendrite import Orchestrator
from dendrite.api import serve
from dendrite.store import ExecutionStore
from dendrite.tools import ToolRegistry

async def nap(seconds: float) -> str:
    \"\"\"Sleep on the event loop.\"\"\"
    await asyncio.sleep(seconds)
    return "rested"

registry = ToolRegistry()
registry.register_function(nap)
url, state, port = sys.argv[1:]
with ExecutionStore(url, state_dir=state) as store, Orchestrator(registry, store=store) as orch:
    serve(orch, port=int(port), jobs=False, log_level="warning")
"""


@SQLITE_ONLY
def test_ctrl_c_ends_open_streams_and_records_their_runs_cancelled(
    store_url: str, tmp_path: Path
) -> None:
    """uvicorn waits for open responses, and a stream is open as long as its run: Ctrl-C
    left the server up until the run finished, then recorded it as succeeded."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = str(tmp_path / "state")
    command = [sys.executable, "-c", SERVE_SCRIPT, store_url, state, str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    plan = {"goal": "rest", "steps": [{"id": "nap", "tool": "nap", "params": {"seconds": 30}}]}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                with contextlib.suppress(httpx.TransportError):
                    if c.get("/healthz").status_code == 200:
                        break
                time.sleep(0.1)
            with c.stream("POST", "/v1/goals/stream", json={"plan": plan}) as response:
                lines = response.iter_lines()
                for line in lines:
                    if line == "event: step_started":
                        break
                server.send_signal(signal.SIGINT)
                stopping = time.monotonic()
                rest = list(lines)  # the stream ends now, not when the run would have
        assert server.wait(timeout=15) == 0
        assert time.monotonic() - stopping < SHUTDOWN_GRACE_SECONDS  # not cut off at the end
    finally:
        if server.poll() is None:
            server.kill()
        log = server.communicate()[0]
    assert [line for line in rest if line.startswith("event:")] == ["event: error"], rest
    problem = json.loads([line for line in rest if line.startswith("data:")][-1][5:])
    assert problem["status"] == 503 and problem["type"].endswith(":shutting-down"), problem
    assert "Traceback" not in log, log
    with ExecutionStore(store_url, state_dir=state) as store:
        [record] = store.get_recent_executions(5)
    assert record.goal_text == "rest" and record.status is ExecutionStatus.CANCELLED


# -- no store ----------------------------------------------------------------


def test_without_a_store_history_routes_answer_503() -> None:
    with (
        Orchestrator(make_registry(), store=None, llm=None) as orch,
        serve_app(orch) as live,
        httpx.Client(base_url=live.url, timeout=30) as c,
    ):
        result = run_goal(c, goal="calculate 5 * 5")
        assert result["answer"] == 25.0
        trace = c.get(f"/v1/executions/{result['execution_id']}/trace")  # from memory
        assert trace.status_code == 200 and trace.json()["success"] is True
        assert_problem(c.get(f"/v1/executions/{uuid.uuid4()}/trace"), 404)
        for path in (
            "/v1/executions",
            f"/v1/executions/{result['execution_id']}",
            "/v1/analytics/tools",
            "/v1/analytics/tiers",
            "/v1/analytics/pools",
            "/v1/analytics/routing",
            "/v1/analytics/success-rate",
        ):
            assert_problem(c.get(path), 503, "recording is off")
        assert_problem(
            c.post(f"/v1/executions/{result['execution_id']}/feedback", json={"rating": 5}),
            503,
            "recording is off",
        )
        status = c.get("/system/status").json()
        assert status["recording"] is False and status["store"] is None
        assert c.get("/metrics").status_code == 200


# -- load --------------------------------------------------------------------


def test_fifty_concurrent_goals_all_recorded(live: LiveServer, store: ExecutionStore) -> None:
    goals = [f"calculate {n} * 2" for n in range(25)] + [
        f"word_count {'w ' * n}" for n in range(1, 26)
    ]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, headers=AUTH, timeout=60) as c:
            return await asyncio.gather(
                *(
                    c.post(
                        "/v1/goals",
                        json={
                            "goal": goal,
                            "session_id": "load",
                            "planner": "single" if goal.startswith("word") else None,
                        },
                    )
                    for goal in goals
                )
            )

    responses = asyncio.run(post_all())
    assert [r.status_code for r in responses] == [200] * 50
    answers = sorted(r.json()["answer"] for r in responses if r.json()["goal"][0] == "c")
    assert answers == [float(2 * n) for n in range(25)]
    ids = {r.json()["execution_id"] for r in responses}
    assert len(ids) == 50
    store.flush()
    recorded = store.get_recent_executions(1000, session_id="load")
    assert {r.id for r in recorded} == ids
    assert all(r.success for r in recorded)
    steps = [s for r in recorded for s in store.get_execution(r.id).steps]
    assert len(steps) == 50


# -- schemathesis ------------------------------------------------------------


def test_openapi_fuzzing_finds_no_server_errors(tmp_path: Path) -> None:
    """Schemathesis generates requests for every operation of the live OpenAPI schema.

    No answer may be a 5xx, and every answer must match the schema: its status
    code, content type, headers and body are documented for that operation.
    """
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_headers_conformance,
        response_schema_conformance,
    ]
    statuses: dict[str, set[int]] = {}
    with (
        ExecutionStore(f"sqlite:///{tmp_path / 'fuzz.db'}", state_dir=tmp_path / "st") as store,
        Orchestrator(
            make_registry(slow=False),
            store=store,
            llm=None,
            config=OrchestratorConfig(retry=FAST_RETRY, default_timeout=5),
        ) as orch,
        serve_app(orch, token=TOKEN) as live,
        httpx.Client(base_url=live.url, headers=AUTH) as c,
    ):
        seed = run_goal(c, goal="calculate 1 + 1")["execution_id"]

        def fuzz(strategy: Any, seen: set[int]) -> None:
            @settings(
                max_examples=15,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy)
            def probe(case: Any) -> None:
                response = case.call_and_validate(
                    base_url=live.url, headers=AUTH, timeout=30, checks=checks
                )
                seen.add(response.status_code)

            probe()

        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", headers=AUTH)
        budget = time.monotonic() + 120  # a bound on the whole run, whatever the machine
        for result in schema.get_all_operations():
            operation = result.ok()
            if time.monotonic() > budget:
                break
            strategy = operation.as_strategy()
            if "{execution_id}" in operation.path:  # random ids are unknown: mix in a real one
                strategy = st.one_of(
                    strategy, operation.as_strategy(path_parameters={"execution_id": seed})
                )
            if "{name}" in operation.path:
                strategy = st.one_of(
                    strategy,
                    *(
                        operation.as_strategy(path_parameters={"name": name})
                        for name in ("word_count", "fetch_page", "statistics")
                    ),
                )
            seen = statuses.setdefault(f"{operation.method.upper()} {operation.path}", set())
            fuzz(strategy, seen)
    assert len(statuses) == 22, sorted(statuses)
    # The fuzzing reached the routes' real work, not only their refusals.
    for route in (
        "POST /v1/goals",
        "POST /v1/goals/stream",
        "GET /v1/executions",
        "GET /v1/executions/{execution_id}",
        "GET /v1/executions/{execution_id}/trace",
        "POST /v1/executions/{execution_id}/feedback",
        "POST /v1/tools/{name}/disable",
        "POST /v1/jobs/{name}/run",
    ):
        assert any(200 <= code < 300 for code in statuses[route]), (route, statuses[route])
    assert all(code < 500 for codes in statuses.values() for code in codes), statuses


def test_an_output_too_deep_for_json_is_marked_alone_not_the_whole_answer(
    store: ExecutionStore,
) -> None:
    """A tool's output nested past JSON's depth turned the whole response into the
    "circular or too deeply nested" marker: its execution id, status and steps were lost."""
    registry = ToolRegistry()

    @registry.tool
    def tree(depth: int) -> list:
        """Build a nested list."""
        value: list = []
        for _ in range(depth):
            value = [value]
        return value

    plan = {"goal": "deep", "steps": [{"id": "t", "tool": "tree", "params": {"depth": 5000}}]}
    with (
        Orchestrator(registry, store=store, llm=None) as orch,
        serve_app(orch) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        response = client.post("/v1/goals", json={"plan": plan})
    assert response.status_code == 200
    body = response.json()
    assert body["success"] is True and body["status"] == "succeeded"
    assert body["execution_id"] and [s["step_id"] for s in body["steps"]] == ["t"]
    assert body["answer"]["$error"] == "circular or too deeply nested"  # the tool's output


def test_a_tool_state_saved_by_another_process_shows_without_a_run(
    store: ExecutionStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dendrite tools disable`` beside a running server: its tool list, status and
    metrics showed the tool enabled until the server ran a goal."""
    monkeypatch.setattr(orchestrator_module, "TOOL_STATES_REFRESH", 0.0)  # not 30 s
    with (
        Orchestrator(make_registry(), store=store, llm=None) as server_side,
        serve_app(server_side) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        with Orchestrator(make_registry(), store=store, llm=None) as command_line:
            command_line.set_tool_status("word_count", "disabled", "maintenance")
        tools = {t["name"]: t for t in client.get("/v1/tools").json()["tools"]}
        assert tools["word_count"]["status"] == "disabled"
        assert 'dendrite_tools{status="disabled"} 1.0' in client.get("/metrics").text
