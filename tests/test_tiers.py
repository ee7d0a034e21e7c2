"""Model tiers: several models on one server, and the router that sends each run to one.

The server is a local one that speaks the OpenAI protocol (no model runs
here); what is tested is our side: the configuration, which model each
request names, and that the router learns from the runs' outcomes, through
the orchestrator and through the CLI, on a real store.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from dendrite import Orchestrator, OrchestratorConfig
from dendrite.cli import app
from dendrite.learning import Router, routing_accuracy
from dendrite.learning.router import ROUTE_UNUSED
from dendrite.llm import ChatLLM, LLMConfig, LLMError, LLMTier, llm_tier
from dendrite.orchestrator import current_route
from dendrite.planning import Plan, PlanningError, Step
from dendrite.store import ExecutionStore
from dendrite.telemetry import ExecutionRecord
from dendrite.tools import ToolRegistry
from tests.conftest import wait_until_drained
from tests.openai_server import chat_server
from tests.test_api import serve_app

TIERS = "small=mini-7b, large=maxi-70b"
COSTS = "large=1"
PLAN = json.dumps(
    {"steps": [{"id": "calc", "tool": "calculate", "params": {"expression": "6 * 7"}}]}
)


def calculator() -> ToolRegistry:
    registry = ToolRegistry()

    def calculate(expression: str) -> float:
        """Calculate the value of an arithmetic expression."""
        return float(eval(expression, {"__builtins__": {}}))  # digits and operators only

    registry.register_function(calculate)
    return registry


def only_large_plans(request: dict[str, Any]) -> str:
    """The small model answers with prose the planner cannot use; the large one plans."""
    return PLAN if request["model"] == "maxi-70b" else "I would calculate it."


def always_plans(request: dict[str, Any]) -> str:
    return PLAN


def tiered(url: str, weight: float = 0.1) -> ChatLLM:
    tiers = (LLMTier("small", "mini-7b", 0.1), LLMTier("large", "maxi-70b", 1.0))
    return ChatLLM(LLMConfig(url, "mini-7b", tiers=tiers, cost_weight=weight))


def run_goals(orch: Orchestrator, count: int) -> list[ExecutionRecord]:
    """Each run as the store recorded it, oldest first (a run that could not plan raised)."""
    assert orch.store is not None
    for _ in range(count):
        with contextlib.suppress(PlanningError):
            orch.process("calculate 6 * 7")
    wait_until_drained(orch.store)
    return orch.store.get_recent_executions(count)[::-1]


# -- configuration ---------------------------------------------------------------------------


def test_tiers_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv(
        "DENDRITE_LLM_TIERS",
        " small=qwen2.5:7b ,large=claude-3-5-haiku@20241022,mid=org/m=2@v2, ",
    )  # model names keep their ':', '@', '/' and '='
    monkeypatch.setenv("DENDRITE_LLM_TIER_COSTS", "small=0.1, large = 1")
    monkeypatch.setenv("DENDRITE_LLM_COST_WEIGHT", "0.25")
    config = LLMConfig.from_env()
    assert config is not None
    assert config.tiers == (
        LLMTier("small", "qwen2.5:7b", 0.1),
        LLMTier("large", "claude-3-5-haiku@20241022", 1.0),
        LLMTier("mid", "org/m=2@v2", 0.0),  # no cost given
    )
    assert config.model == "qwen2.5:7b" and config.cost_weight == 0.25  # the first tier's
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "llama3")
    config = LLMConfig.from_env()
    assert config is not None and config.model == "llama3"
    assert [config.model_for(t) for t in ("large", None, "unknown")] == [
        "claude-3-5-haiku@20241022",
        "llama3",
        "llama3",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DENDRITE_LLM_TIERS": "small"}, "DENDRITE_LLM_TIERS: 'small' is not NAME=VALUE"),
        ({"DENDRITE_LLM_TIERS": "small= "}, "'small=' is not NAME=VALUE"),
        ({"DENDRITE_LLM_TIERS": "=m"}, "'=m' is not NAME=VALUE"),
        ({"DENDRITE_LLM_TIER_COSTS": "a=1"}, "DENDRITE_LLM_TIER_COSTS: 'a' is not a tier"),
        ({"DENDRITE_LLM_TIER_COSTS": "a"}, "DENDRITE_LLM_TIER_COSTS: 'a' is not NAME=VALUE"),
        ({"DENDRITE_LLM_TIERS": "a=m", "DENDRITE_LLM_TIER_COSTS": "a=cheap"},
         "the cost of 'a' is not a number"),
        ({"DENDRITE_LLM_TIERS": "a=m", "DENDRITE_LLM_TIER_COSTS": "a=-1"},
         "the cost of 'a' must be a number >= 0"),
        ({"DENDRITE_LLM_TIERS": "a=m", "DENDRITE_LLM_TIER_COSTS": "a=nan"},
         "the cost of 'a' must be a number >= 0"),
        ({"DENDRITE_LLM_TIERS": "a=m,a=n"}, "tier names must be distinct; repeated: a"),
        ({"DENDRITE_LLM_COST_WEIGHT": "lots"}, "DENDRITE_LLM_COST_WEIGHT must be a number"),
        ({"DENDRITE_LLM_COST_WEIGHT": "-0.5"}, "DENDRITE_LLM_COST_WEIGHT must be a number >= 0"),
    ],
)  # fmt: skip
def test_bad_tier_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "m")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        LLMConfig.from_env()


def test_a_tier_may_live_on_a_server_of_its_own(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_API_KEY", "local-key")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", TIERS)
    monkeypatch.setenv("DENDRITE_LLM_TIER_URLS", "large=https://api.example.com/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIER_API_KEYS", "large=sk-large=x")  # keys may hold '='
    config = LLMConfig.from_env()
    assert config is not None
    small, large = config.tiers
    assert (small.base_url, small.api_key) == (None, None)
    assert (large.base_url, large.api_key) == ("https://api.example.com/v1", "sk-large=x")
    assert "sk-large" not in repr(config)
    assert config.server_for("large") == ("https://api.example.com/v1", "sk-large=x")
    assert config.server_for("small") == ("http://127.0.0.1:11434/v1", "local-key")
    assert config.server_for(None) == ("http://127.0.0.1:11434/v1", "local-key")
    # With no DENDRITE_LLM_MODEL the first tier stands in for calls made outside any tier:
    # its model, on its own server, at its prices.
    monkeypatch.setenv(
        "DENDRITE_LLM_TIER_URLS", "small=http://10.0.0.7:8000/v1, large=https://api.example.com/v1"
    )
    monkeypatch.setenv("DENDRITE_LLM_TIER_PRICES", "small=1/2")
    config = LLMConfig.from_env()
    assert config is not None and config.default_tier == "small"
    assert config.model_for(None) == "mini-7b"
    assert config.server_for(None) == ("http://10.0.0.7:8000/v1", "local-key")
    assert config.in_effect(None) == config.tiers[0]
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "maxi-70b")  # a tier's model: that tier's
    config = LLMConfig.from_env()
    assert config is not None and config.default_tier == "large"
    assert config.server_for(None) == ("https://api.example.com/v1", "sk-large=x")
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "llama3")  # no tier's: the configured server's
    config = LLMConfig.from_env()
    assert config is not None and config.default_tier is None
    assert config.server_for(None) == ("http://127.0.0.1:11434/v1", "local-key")
    assert config.in_effect(None) is None  # unpriced
    assert "local-key" not in repr(config)
    with pytest.raises(ValueError, match="default_tier 'nope' is not a tier"):
        LLMConfig("http://x/v1", "m", default_tier="nope")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DENDRITE_LLM_TIER_URLS": "huge=http://x"}, "DENDRITE_LLM_TIER_URLS: 'huge' is not"),
        ({"DENDRITE_LLM_TIER_URLS": "large=api.example.com"}, "must start with http"),
        ({"DENDRITE_LLM_TIER_API_KEYS": "huge=k"}, "DENDRITE_LLM_TIER_API_KEYS: 'huge' is not"),
        # A key given without its tier's name is not quoted back, nor a URL's password.
        ({"DENDRITE_LLM_TIER_API_KEYS": "large=k, sk-SECRET"},
         r"^DENDRITE_LLM_TIER_API_KEYS: item 2 is not NAME=VALUE$"),
        ({"DENDRITE_LLM_TIER_URLS": "large=me:SECRET@api.example.com/v1"},
         r"got 'api.example.com/v1'$"),
    ],
)  # fmt: skip
def test_bad_tier_servers_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", TIERS)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        LLMConfig.from_env()
    with pytest.raises(ValueError, match="base_url must be an http:// or https:// URL"):
        LLMConfig("http://x/v1", "m", tiers=(LLMTier("t", "m", base_url="ftp://x"),))


def test_each_tier_is_asked_on_its_own_server_with_its_own_key():
    with chat_server() as local, chat_server() as hosted:
        local.say("local answer", json.dumps({"ok": "local"}))
        hosted.reject_json_schema = True  # remembered for that server, not for the local one
        hosted.say("hosted answer", json.dumps({"ok": True}))
        tiers = (
            LLMTier("small", "mini-7b"),
            LLMTier("large", "mini-7b", base_url=hosted.url, api_key="sk-hosted"),
        )  # one model name on two servers
        llm = ChatLLM(LLMConfig(local.url, "mini-7b", api_key="local-key", tiers=tiers))
        messages = [{"role": "user", "content": "hi"}]

        async def calls() -> list[str]:
            answers = [await llm.complete(messages)]  # no tier: the configured server
            with llm_tier("large"):
                assert llm.name == f"mini-7b at {hosted.url}"
                answers.append(await llm.complete(messages))
                answers.append(await llm.complete(messages, json_schema={"type": "object"}))
            with llm_tier("small"):
                answers.append(await llm.complete(messages, json_schema={"type": "object"}))
            await llm.aclose()
            return answers

        answers = asyncio.run(calls())
    assert answers[:2] == ["local answer", "hosted answer"]
    assert [r["model"] for r in hosted.requests] == ["mini-7b"] * 3
    assert hosted.keys == ["sk-hosted"] * 3 and set(local.keys) == {"local-key"}
    formats = [r.get("response_format", {}).get("type") for r in hosted.requests[1:]]
    assert formats == ["json_schema", "json_object"]  # refused, then asked again
    assert local.requests[-1]["response_format"]["type"] == "json_schema"  # still asked


def test_clients_follow_the_event_loop_and_errors_name_no_password():
    """``Orchestrator.process`` runs each goal in an event loop of its own: a client whose
    kept-alive connections belong to a closed loop must not be reused."""
    with chat_server(keep_alive=True) as server:
        server.say(*["hello"] * 4)
        tiers = (LLMTier("small", "mini-7b"), LLMTier("large", "maxi-70b"))
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=tiers))
        messages = [{"role": "user", "content": "hi"}]

        async def both() -> list[str]:
            with llm_tier("large"):
                large = await llm.complete(messages)
            return [await llm.complete(messages), large]

        assert asyncio.run(both()) == ["hello", "hello"]
        assert asyncio.run(both()) == ["hello", "hello"]  # a new loop: new clients
        asyncio.run(llm.aclose())  # nothing of this loop's to close; no error
    secret = ChatLLM(LLMConfig("http://me:pw-SECRET@127.0.0.1:9/v1", "m", max_retries=0))

    async def fail() -> str:
        with pytest.raises(LLMError) as raised:
            await secret.complete(messages)
        await secret.aclose()
        return str(raised.value)

    text = asyncio.run(fail())
    assert "pw-SECRET" not in text and "m at http://127.0.0.1:9/v1 failed" in text


def test_tiers_without_a_server_are_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DENDRITE_LLM_TIERS", TIERS)
    with pytest.raises(ValueError, match="DENDRITE_LLM_TIERS is set but DENDRITE_LLM_BASE_URL"):
        LLMConfig.from_env()


def test_each_call_asks_the_model_of_the_tier_it_runs_in():
    with chat_server() as server:
        server.say(*["ok"] * 4)
        llm = tiered(server.url)
        messages = [{"role": "user", "content": "hi"}]

        async def calls() -> None:
            await llm.complete(messages)
            with llm_tier("large"):
                await asyncio.gather(llm.complete(messages))  # a task started in the tier
                assert llm.model == "maxi-70b"
            with llm_tier("retired"):
                await llm.complete(messages)
            await llm.complete(messages)

        asyncio.run(calls())
        asked = [r["model"] for r in server.requests]
        assert asked == ["mini-7b", "maxi-70b", "mini-7b", "mini-7b"]


# -- the router the orchestrator builds from the tiers ---------------------------------------


def test_no_router_without_two_tiers_or_without_learning():
    one = ChatLLM(LLMConfig("http://127.0.0.1:9/v1", "m", tiers=(LLMTier("only", "m"),)))
    with Orchestrator(calculator(), store=None, llm=one) as orch:
        assert orch.router is None
    with Orchestrator(calculator(), store=None, llm=tiered("http://127.0.0.1:9/v1")) as orch:
        assert orch.router is not None and orch.router.options == ("small", "large")
        assert orch.router.costs == {"small": 0.1, "large": 1.0}
        assert orch.router.cost_weight == 0.1
        assert orch.learning is not None  # recency weighs as the rest of learning's does
        assert orch.router.half_life == orch.learning.feedback_half_life == timedelta(days=14)
    off = OrchestratorConfig(learning=False)
    with Orchestrator(
        calculator(), store=None, llm=tiered("http://127.0.0.1:9/v1"), config=off
    ) as orch:
        assert orch.router is None


def test_runs_ask_the_routed_model_and_the_router_learns_the_one_that_plans(
    store: ExecutionStore,
):
    with chat_server() as server:
        server.say(*[only_large_plans] * 200)
        with Orchestrator(calculator(), store=store, llm=tiered(server.url)) as orch:
            orch.planner = orch.make_planner("llm")
            runs = run_goals(orch, 30)
        asked = [r["model"] for r in server.requests]
    routes = [run.model_tier for run in runs]
    assert set(routes) <= {"small", "large"}
    # Every request of a run named the model of the run's tier; the small model's prose
    # is sent back twice for repair before the planner gives up.
    models = {"small": ["mini-7b"] * 3, "large": ["maxi-70b"]}
    assert asked == [model for route in routes for model in models[route]]
    assert all(run.success == (run.model_tier == "large") for run in runs)
    # Charged per call: three to the small model (0.1 each), one to the large (1.0).
    assert all(
        run.actual_cost == pytest.approx({"small": 0.3, "large": 1.0}[run.model_tier])
        for run in runs
    )
    assert routes[-15:].count("large") >= 13, routes
    last = store.get_execution(runs[-1].id)
    assert last.metadata["why"]["route"].startswith(f"picked {last.model_tier} because")
    assert [d.chosen for d in last.routing] == [last.model_tier]
    tiers = {row.model_tier: row for row in store.get_tier_performance(1)}
    assert tiers["small"].success_rate == 0.0 and tiers["large"].success_rate == 1.0


def test_when_both_tiers_plan_the_router_settles_on_the_cheaper(store: ExecutionStore):
    with chat_server() as server:
        server.say(*[always_plans] * 100)
        with Orchestrator(calculator(), store=store, llm=tiered(server.url, 0.3)) as orch:
            orch.planner = orch.make_planner("llm")
            runs = run_goals(orch, 40)
    assert all(run.success for run in runs)
    routes = [run.model_tier for run in runs]
    assert routes[-20:].count("small") >= 15, routes  # Thompson sampling still explores a little


def test_a_tier_whose_model_is_down_loses_the_runs_the_offline_planners_save(
    store: ExecutionStore,
):
    """Every call to the small tier's model failed, the offline planners answered, and the
    router learnt a success of the small tier: it kept most of the runs."""

    def small_down(request: dict[str, Any]) -> str | int:
        return 500 if request["model"] == "mini-7b" else always_plans(request)

    with chat_server() as server:
        server.say(*[small_down] * 400)
        tiers = (LLMTier("small", "mini-7b", 0.1), LLMTier("large", "maxi-70b", 1.0))
        llm = ChatLLM(LLMConfig(server.url, "mini-7b", tiers=tiers, cost_weight=0.1, max_retries=0))
        with Orchestrator(calculator(), store=store, llm=llm) as orch:
            orch.planner = orch.make_planner("dendrite", "comprehensive")  # the model first
            results = [orch.process(f"what is {i} * 3") for i in range(30)]
            small = orch.router.predict("what is 5 * 3")["small"]
    assert all(r.success for r in results)  # the offline planners answered every one
    assert small.success < 0.5
    routes = [r.route for r in results]
    assert routes[-15:].count("large") >= 12, routes
    wait_until_drained(store)  # a restarted router reads the same from the record
    fresh = Router(["small", "large"], store=store)
    fresh.learn_from_store()
    assert fresh.predict("what is 5 * 3")["small"].success < 0.5


def test_runs_that_never_call_the_model_teach_the_router_nothing(store: ExecutionStore):
    plan = Plan(
        goal="calculate 6 * 7",
        steps=[Step(id="c", tool="calculate", params={"expression": "6 * 7"})],
    )
    with chat_server() as server:
        with Orchestrator(calculator(), store=store, llm=tiered(server.url)) as orch:
            assert orch.router is not None
            results = [orch.process(plan) for _ in range(4)]  # a plan given: no model asked
            assert orch.router.pending == []
            assert sum(e.observations for e in orch.router.predict("x").values()) == 0
        assert server.requests == []
    assert all(r.success and r.route is None for r in results)
    wait_until_drained(store)
    runs = [store.get_execution(r.execution_id) for r in results]
    assert all(run.model_tier is None and run.actual_cost is None for run in runs)
    assert all(run.metadata[ROUTE_UNUSED] is True for run in runs)
    assert all(run.metadata["why"]["route"].endswith("unused: the run did not call the model")
               for run in runs)  # fmt: skip
    assert store.get_tier_performance(1) == []  # no tier ran anything
    fresh = Router(["small", "large"], store=store)
    report = fresh.learn_from_store()
    assert (report.decisions, report.discarded, report.learned) == (4, 4, 0)
    rows = routing_accuracy(store)
    assert rows[-1].decisions == 4 and all(row.judged == 0 for row in rows)


class SlowPlanner:
    name = "slow"

    async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Plan:
        await asyncio.sleep(30)
        raise AssertionError("cancelled before it plans")


class BrokenPlanner:
    name = "broken"

    async def plan(self, goal: str, registry: ToolRegistry, context: Any) -> Plan:
        raise RuntimeError("planner bug")


def test_a_run_cancelled_or_crashing_while_it_plans_is_recorded_and_leaves_nothing_behind(
    store: ExecutionStore, capfd: pytest.CaptureFixture[str]
):
    llm = tiered("http://127.0.0.1:9/v1")
    with Orchestrator(calculator(), store=store, llm=llm, planner=SlowPlanner()) as orch:

        async def cancelled() -> None:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(orch.run("calculate 1 + 1"), 0.2)
            assert current_route() is None and llm.model == "mini-7b"  # frame and tier left

        asyncio.run(cancelled())
        orch.planner = BrokenPlanner()
        with pytest.raises(RuntimeError, match="planner bug"):
            orch.process("calculate 2 + 2")
        assert orch.router is not None and orch.router.pending == []
        orch.planner = orch.make_planner("single")
        after = orch.process("calculate 3 + 3")
    assert after.success and after.depth == 0 and after.parent_id is None
    wait_until_drained(store)
    gone, broken = store.get_recent_executions(3)[:0:-1]
    assert (gone.status, gone.error_type, gone.error) == (
        "cancelled", "cancelled", "the run was cancelled"
    )  # fmt: skip
    assert broken.status == "failed"
    assert broken.error == "the planner failed: RuntimeError: planner bug"
    assert "was created in a different Context" not in capfd.readouterr().err


def test_one_tier_refusing_json_schema_leaves_the_others_asking_for_it():
    with chat_server() as server:
        server.reject_json_schema = frozenset({"mini-7b"})
        server.say("{}", "{}", "{}")
        llm = tiered(server.url)
        messages = [{"role": "user", "content": "plan"}]

        async def calls() -> None:
            with llm_tier("small"):
                await llm.complete(messages, json_schema={"type": "object"})
            with llm_tier("large"):
                await llm.complete(messages, json_schema={"type": "object"})

        asyncio.run(calls())
        asked = [(r["model"], r["response_format"]["type"]) for r in server.requests]
    assert asked == [
        ("mini-7b", "json_schema"),  # refused with a 400
        ("mini-7b", "json_object"),
        ("maxi-70b", "json_schema"),
    ]


def large_is_gone(request: dict[str, Any]) -> str | int:
    """The large model was taken down: every call to it answers 404."""
    return 404 if request["model"] == "maxi-70b" else PLAN


def test_a_tier_whose_calls_fail_was_used_and_failed(store: ExecutionStore):
    with chat_server() as server:
        server.say(*[large_is_gone] * 100)
        costs = {"small": 0.1, "large": 1.0}
        router = Router(["small", "large"], costs=costs, store=store, seed=1)  # tries large
        llm = tiered(server.url)
        with Orchestrator(calculator(), store=store, llm=llm, router=router) as orch:
            orch.planner = orch.make_planner("llm")
            runs = run_goals(orch, 30)
    large = [run for run in runs if run.model_tier == "large"]
    assert large and not any(run.success for run in large)  # tried, and failed
    assert all(run.actual_cost == pytest.approx(1.0) for run in large)  # one call, charged
    assert all(run.success for run in runs if run.model_tier == "small")
    routes = [run.model_tier for run in runs]
    assert routes[-15:].count("small") >= 13, routes


def test_only_options_that_are_tiers_change_the_model(store: ExecutionStore):
    router = Router(["small", "large", "offline"], store=store, seed=7)
    with chat_server() as server:
        server.say(*[always_plans] * 60)
        llm = tiered(server.url)
        with Orchestrator(calculator(), store=store, llm=llm, router=router) as orch:
            orch.planner = orch.make_planner("llm")
            runs = run_goals(orch, 24)
        asked = [r["model"] for r in server.requests]
    models = {"small": "mini-7b", "large": "maxi-70b", "offline": "mini-7b"}  # the default
    assert asked == [models[run.model_tier] for run in runs]
    assert {run.model_tier for run in runs} == {"small", "large", "offline"}
    # "offline" is the tools' to read: it is learnt like any route. Its runs asked the
    # default model, which is the small tier's: each is charged that call, and so is
    # its route (the router learns the cost the store keeps).
    assert router.stats()["offline"]["observations"] == routes_count(runs, "offline")
    offline = [run for run in runs if run.model_tier == "offline"]
    assert all(run.metadata["llm_usage"]["calls"] == 1 for run in offline)
    assert all(run.actual_cost == pytest.approx(0.1) for run in offline)
    assert router.predict("calculate 6 * 7")["offline"].cost > 0.03  # from 0, towards 0.1


def routes_count(runs: list[ExecutionRecord], route: str) -> int:
    return sum(1 for run in runs if run.model_tier == route)


def test_a_router_of_its_own_name_fills_no_tier_or_pool_column(store: ExecutionStore):
    router = Router(["fast", "slow"], store=store, router_name="backend")
    plan = Plan(goal="calculate 1", steps=[Step(id="c", tool="calculate",
                                                params={"expression": "1"})])  # fmt: skip
    with Orchestrator(calculator(), store=store, llm=None, router=router) as orch:
        result = orch.process(plan)
    wait_until_drained(store)
    run = store.get_execution(result.execution_id)
    assert result.route in ("fast", "slow") and run.routing_confidence is not None
    assert (run.model_tier, run.pool) == (None, None)
    assert router.stats()[result.route]["observations"] == 1


def test_a_stream_left_after_its_plan_is_recorded_as_cancelled(store: ExecutionStore):
    with chat_server() as server:
        server.say(*[always_plans] * 5)
        with Orchestrator(calculator(), store=store, llm=tiered(server.url)) as orch:
            orch.planner = orch.make_planner("llm")

            async def leave() -> str:
                events = orch.stream("calculate 6 * 7")
                first = await anext(events)
                await events.aclose()  # the consumer goes away after plan_created
                return first.execution_id

            execution_id = asyncio.run(leave())
            assert orch.router is not None and orch.router.pending == []
    wait_until_drained(store)
    run = store.get_execution(execution_id)
    assert (run.status, run.error_type) == ("cancelled", "cancelled")


def test_a_new_process_routes_by_what_earlier_ones_learnt(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    with chat_server() as server:
        server.say(*[only_large_plans] * 300)
        with ExecutionStore(store_url, state_dir=tmp_path / "state") as store:
            with Orchestrator(calculator(), store=store, llm=tiered(server.url)) as orch:
                orch.planner = orch.make_planner("llm")
                run_goals(orch, 30)
            wait_until_drained(store)
            for limit, learnt in ((0, 0), (10, 10), (5_000, 30)):
                config = OrchestratorConfig(warm_start=limit)
                llm = tiered(server.url)
                with Orchestrator(calculator(), store=store, llm=llm, config=config) as orch:
                    assert orch.router is not None
                    seen = orch.router.predict("calculate 6 * 7").values()
                    assert sum(estimate.observations for estimate in seen) == learnt
        monkeypatch.setenv("DENDRITE_LLM_BASE_URL", server.url)
        monkeypatch.setenv("DENDRITE_LLM_TIERS", TIERS)
        monkeypatch.setenv("DENDRITE_LLM_TIER_COSTS", COSTS)
        monkeypatch.setenv("COLUMNS", "200")
        runner = CliRunner()
        args = ["run", "calculate 6 * 7", "--planner", "llm", "--json", "--url", store_url]
        routes = []
        for n in range(5):
            before = len(server.requests)
            done = runner.invoke(app, args)
            with ExecutionStore(store_url, state_dir=tmp_path / "state") as store:
                run = store.get_recent_executions(1)[0]
            routes.append(run.model_tier)
            # The process's router starts from every outcome the store holds...
            counts = re.findall(r"n=(\d+)", run.metadata["why"]["route"])
            assert sum(map(int, counts)) == 30 + n
            # ...and the run asks its tier's model, and fares as that model does.
            models = {"small": ["mini-7b"] * 3, "large": ["maxi-70b"]}[run.model_tier]
            assert [r["model"] for r in server.requests[before:]] == models
            assert done.exit_code == (0 if run.model_tier == "large" else 1), done.output
            if done.exit_code == 0:
                assert json.loads(done.output)["route"] == "large"
            else:  # the failed attempt is on the record, and the CLI says where (as JSON)
                assert json.loads(done.output)["execution_id"] == run.id
                shown = runner.invoke(app, ["trace", run.id, "--url", store_url])
                assert "error: the LLM's plan still had problems" in shown.output
        # Thompson sampling may still try the small tier now and then, rarely.
        assert routes.count("large") >= 3, routes
        done = runner.invoke(app, ["stats", "routing", "--json", "--url", store_url])
        assert done.exit_code == 0, done.output
        rows = {row["option"]: row for row in json.loads(done.output)}
        assert set(rows) == {"small", "large", "*"}
        assert rows["*"]["decisions"] == rows["*"]["judged"] == 35
        assert rows["small"]["success_rate"] == 0.0 and rows["large"]["success_rate"] == 1.0
        assert rows["small"]["bias"] < 0 < rows["large"]["bias"]  # began expecting 0.5 of each
        table = runner.invoke(app, ["stats", "routing", "--url", store_url])
        assert table.exit_code == 0 and "model_tier" in table.output and "brier" in table.output
        server.replies.clear()
        server.say(*[always_plans] * 3)  # whichever tier it picks, the run succeeds
        shown = runner.invoke(app, args[:-3] + args[-2:])  # without --json
        assert shown.exit_code == 0, shown.output
        assert re.search(r"routed to (small|large) · execution", shown.output), shown.output
        listed = runner.invoke(app, ["history", "--limit", "3", "--url", store_url])
        header = next(line for line in listed.output.splitlines() if "goal text" in line)
        assert "tier" in header and re.search(r"│ (small|large) +│", listed.output)


def test_the_cli_points_at_the_record_of_a_goal_it_could_not_plan(
    store_url: str, monkeypatch: pytest.MonkeyPatch
):
    with chat_server() as server:
        server.say(*["I would calculate it."] * 6)  # prose from both tiers: no plan
        monkeypatch.setenv("DENDRITE_LLM_BASE_URL", server.url)
        monkeypatch.setenv("DENDRITE_LLM_TIERS", TIERS)
        monkeypatch.setenv("COLUMNS", "200")
        runner = CliRunner()
        args = ["run", "calculate 6 * 7", "--planner", "llm", "--url", store_url]
        done = runner.invoke(app, args)
    assert done.exit_code == 1
    found = re.search(r"recorded as execution ([0-9a-f-]{36})", done.output)
    assert found, done.output
    shown = runner.invoke(app, ["trace", found[1], "--url", store_url])
    assert shown.exit_code == 0
    assert "error: the LLM's plan still had problems after 2 repair(s)" in shown.output
    assert "route: picked" in shown.output


def test_the_cli_names_a_bad_tier_setting_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", "small=mini")
    monkeypatch.setenv("DENDRITE_LLM_TIER_COSTS", "small=free")
    runner = CliRunner()
    for args in (["run", "calculate 1"], ["serve", "--port", "8765"], ["demo"]):
        done = runner.invoke(app, args)
        assert done.exit_code == 2
        assert "DENDRITE_LLM_TIER_COSTS: the cost of 'small' is not a number" in done.output
    assert not (tmp_path / "home" / "dendrite.db").exists()  # nothing was opened


def test_api_goals_naming_a_planner_plan_under_their_route(store: ExecutionStore):
    with chat_server() as server:
        server.say(*[only_large_plans] * 60)
        with (
            Orchestrator(calculator(), store=store, llm=tiered(server.url)) as orch,
            serve_app(orch) as live,
            httpx.Client(base_url=live.url, timeout=30) as client,
        ):
            for _ in range(12):
                before = len(server.requests)
                body = {"goal": "calculate 6 * 7", "planner": "llm"}
                response = client.post("/v1/goals", json=body)
                wait_until_drained(store)
                run = store.get_recent_executions(1)[0]
                assert run.model_tier in ("small", "large") and ROUTE_UNUSED not in run.metadata
                models = {"small": ["mini-7b"] * 3, "large": ["maxi-70b"]}[run.model_tier]
                assert [r["model"] for r in server.requests[before:]] == models
                assert response.status_code == (200 if run.model_tier == "large" else 422)
                body = response.json()
                assert body["execution_id"] == run.id
                if response.status_code == 200:
                    assert body["route"] == "large"
                    assert body["llm_usage"] == run.metadata["llm_usage"]
                    assert body["llm_usage"]["cost"] == pytest.approx(1.0)  # one call
                    trace = client.get(f"/v1/executions/{run.id}/trace").json()  # from memory
                    assert trace["llm_usage"] == body["llm_usage"]
            assert orch.router is not None
            learnt = orch.router.stats()
    assert learnt["small"]["observations"] + learnt["large"]["observations"] == 12
