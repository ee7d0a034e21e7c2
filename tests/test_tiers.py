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
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dendrite import Orchestrator, OrchestratorConfig
from dendrite.cli import app
from dendrite.llm import ChatLLM, LLMConfig, LLMTier, llm_tier
from dendrite.planning import PlanningError
from dendrite.store import ExecutionStore
from dendrite.telemetry import ExecutionRecord
from dendrite.tools import ToolRegistry
from tests.conftest import wait_until_drained
from tests.openai_server import chat_server

TIERS = "small=mini-7b@0, large=maxi-70b@1"
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
    tiers = (LLMTier("small", "mini-7b", 0.0), LLMTier("large", "maxi-70b", 1.0))
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
    monkeypatch.setenv("DENDRITE_LLM_TIERS", " small=qwen2.5:7b@0.1 ,large=qwen2.5:72b@1,mid=m ")
    monkeypatch.setenv("DENDRITE_LLM_COST_WEIGHT", "0.25")
    config = LLMConfig.from_env()
    assert config is not None
    assert config.tiers == (
        LLMTier("small", "qwen2.5:7b", 0.1),
        LLMTier("large", "qwen2.5:72b", 1.0),
        LLMTier("mid", "m", 0.0),
    )
    assert config.model == "qwen2.5:7b" and config.cost_weight == 0.25  # the first tier's
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "llama3")
    config = LLMConfig.from_env()
    assert config is not None and config.model == "llama3"
    assert [config.model_for(t) for t in ("large", None, "unknown")] == [
        "qwen2.5:72b",
        "llama3",
        "llama3",
    ]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DENDRITE_LLM_TIERS": "small"}, "'small' is not NAME=MODEL or NAME=MODEL@COST"),
        ({"DENDRITE_LLM_TIERS": "small=@1"}, "'small=@1' is not NAME=MODEL"),
        ({"DENDRITE_LLM_TIERS": "=m@1"}, "'=m@1' is not NAME=MODEL"),
        ({"DENDRITE_LLM_TIERS": "a=m@cheap"}, "the cost in 'a=m@cheap' is not a number"),
        ({"DENDRITE_LLM_TIERS": "a=m@-1"}, "the cost in 'a=m@-1' must be a number >= 0"),
        ({"DENDRITE_LLM_TIERS": "a=m@nan"}, "the cost in 'a=m@nan' must be a number >= 0"),
        ({"DENDRITE_LLM_TIERS": "a=m,a=n"}, "tier names must be distinct; repeated: a"),
        ({"DENDRITE_LLM_COST_WEIGHT": "lots"}, "DENDRITE_LLM_COST_WEIGHT must be a number"),
        ({"DENDRITE_LLM_COST_WEIGHT": "-0.5"}, "cost_weight must be a number >= 0"),
    ],
)
def test_bad_tier_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:11434/v1")
    monkeypatch.setenv("DENDRITE_LLM_MODEL", "m")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        LLMConfig.from_env()


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
        assert orch.router.costs == {"small": 0.0, "large": 1.0}
        assert orch.router.cost_weight == 0.1
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
    assert set(routes) <= {"small", "large"} and "small" in routes  # it had to find out
    # Every request of a run named the model of the run's tier; the small model's prose
    # is sent back twice for repair before the planner gives up.
    models = {"small": ["mini-7b"] * 3, "large": ["maxi-70b"]}
    assert asked == [model for route in routes for model in models[route]]
    assert all(run.success == (run.model_tier == "large") for run in runs)
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


def test_the_cli_names_a_bad_tier_setting_before_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DENDRITE_LLM_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("DENDRITE_LLM_TIERS", "small=mini@free")
    runner = CliRunner()
    for args in (["run", "calculate 1"], ["serve", "--port", "8765"]):
        done = runner.invoke(app, args)
        assert done.exit_code == 2
        assert "DENDRITE_LLM_TIERS: the cost in 'small=mini@free' is not a number" in done.output
    assert not (tmp_path / "home" / "dendrite.db").exists()  # nothing was opened
