"""The model-tier / pool router (``dendrite.learning.router``): learning, costs, feedback, the
store round trip on both backends, predictions, bad input and concurrency."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from dendrite._ids import new_id
from dendrite.learning import (
    DecisionExpiredError,
    HashedFeaturiser,
    Router,
    RouterError,
    RoutingChoice,
    TaskFeatures,
    UnknownDecisionError,
    routing_accuracy,
)
from dendrite.learning.router import ROUTE_DOWN, ROUTE_UNUSED, routed_success
from dendrite.store import ExecutionStore, InvalidRecordError

# Two contexts with a different best arm at cost_weight 0.02 and costs 1 / 10:
# code: small 0.3 - 0.02 = 0.28 < large 0.9 - 0.2 = 0.70 -> large
# chat: small 0.85 - 0.02 = 0.83 > large 0.9 - 0.2 = 0.70 -> small
P_SUCCESS = {("code", "small"): 0.3, ("code", "large"): 0.9,
             ("chat", "small"): 0.85, ("chat", "large"): 0.9}  # fmt: skip
BEST = {"code": "large", "chat": "small"}
TEXT = {"code": "fix the failing unit test in the parser", "chat": "say hello to the team"}


class Clock:
    """A settable clock for the router."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def features(context: str) -> TaskFeatures:
    return TaskFeatures(text=TEXT[context], task_type=context, project="demo", complexity=0.5)


def run_rounds(router: Router, rounds: int, seed: int) -> list[tuple[str, RoutingChoice]]:
    """Route ``rounds`` tasks of random context and learn each outcome; returns the choices."""
    rng = np.random.default_rng(seed)
    choices = []
    for _ in range(rounds):
        context = "code" if rng.random() < 0.5 else "chat"
        eid = new_id()
        choice = router.choose(features(context), eid)
        router.learn(eid, bool(rng.random() < P_SUCCESS[context, choice.option]))
        choices.append((context, choice))
    return choices


def small_featuriser() -> HashedFeaturiser:
    """Fewer dimensions than the default, so that the tests run fast."""
    return HashedFeaturiser(text_dims=64, category_slots=16)


def two_tier_router(**kwargs) -> Router:
    kwargs.setdefault("featuriser", small_featuriser())
    kwargs.setdefault("costs", {"small": 1.0, "large": 10.0})
    kwargs.setdefault("cost_weight", 0.02)
    return Router(["small", "large"], **kwargs)


# -- learning ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["thompson", "ucb"])
def test_learns_the_best_arm_of_each_context(policy: str):
    router = two_tier_router(policy=policy, seed=7)
    choices = run_rounds(router, 1000, seed=11)
    late = choices[-400:]
    for context in ("code", "chat"):
        picks = [c.option for ctx, c in late if ctx == context]
        share = picks.count(BEST[context]) / len(picks)
        assert share >= 0.9, (context, share)
    early = choices[:30]
    assert sum(c.option == BEST[ctx] for ctx, c in early) / 30 < 0.9  # it did have to learn


def test_predictions_approach_the_true_success_rates():
    router = two_tier_router(seed=3)
    run_rounds(router, 1500, seed=5)
    code = router.predict(features("code"))
    chat = router.predict(features("chat"))
    assert code["large"].success == pytest.approx(0.9, abs=0.08)
    assert chat["small"].success == pytest.approx(0.85, abs=0.08)
    assert code["large"].reward > code["small"].reward
    assert chat["small"].reward > chat["large"].reward


def test_thompson_sampling_is_tempered_by_default_and_ucb_is_not():
    # Thompson sampling draws from a posterior scaled by 0.5 (it explored too much on
    # RouteLLM's MMLU); LinUCB keeps its usual one standard deviation; an explicit value wins.
    assert Router(["a", "b"]).exploration == 0.5
    assert Router(["a", "b"], policy="ucb").exploration == 1.0
    assert Router(["a", "b"], exploration=2.0).exploration == 2.0
    with pytest.raises(ValueError, match="exploration"):
        Router(["a", "b"], exploration=-1.0)


@pytest.mark.parametrize("local_noise", [True, False])
def test_the_noise_of_a_quality_is_the_one_at_its_task(local_noise: bool):
    # One option, 60 outcomes on each of two task types: always right on one, right every
    # other time on the other. A success is Bernoulli, of variance p(1 - p): 0 against 0.25,
    # so the option is sure of the first long before the second, and the second's sd is the
    # binomial one, sqrt(0.25 / 60). One noise variance for the whole option (the pooled
    # model, local_noise=False) gives both the same sd, too wide for one, too narrow for the
    # other.
    router = Router(["a"], featuriser=small_featuriser(), seed=1, local_noise=local_noise)
    for i in range(60):
        for kind, success in (("sure", True), ("coin", i % 2 == 0)):
            eid = new_id()
            router.choose(TaskFeatures("t", task_type=kind), eid)
            router.learn(eid, success)
    sure = router.predict(TaskFeatures("t", task_type="sure"))["a"]
    coin = router.predict(TaskFeatures("t", task_type="coin"))["a"]
    assert sure.quality == pytest.approx(1.0, abs=0.02)
    assert coin.quality == pytest.approx(0.5, abs=0.02)
    if local_noise:
        assert sure.quality_sd < 0.25 * coin.quality_sd
        assert coin.quality_sd == pytest.approx(math.sqrt(0.25 / 60), rel=0.1)
    else:
        assert sure.quality_sd == pytest.approx(coin.quality_sd, rel=0.01)
        assert coin.quality_sd < 0.8 * math.sqrt(0.25 / 60)
    assert Router(["a"]).local_noise  # the default


def test_cost_weight_shifts_the_choice():
    # large is better (0.9 against 0.7) and costs 1 more: worth it at weight 0, not at 0.5.
    rates = {"small": 0.7, "large": 0.9}

    def large_share(cost_weight: float) -> float:
        router = Router(
            ["small", "large"],
            {"small": 0.0, "large": 1.0},
            cost_weight,
            featuriser=small_featuriser(),
            seed=1,
        )
        rng = np.random.default_rng(2)
        picks = []
        for _ in range(600):
            eid = new_id()
            choice = router.choose(TaskFeatures("summarise the report", task_type="summary"), eid)
            router.learn(eid, bool(rng.random() < rates[choice.option]))
            picks.append(choice.option)
        return picks[-300:].count("large") / 300

    assert large_share(0.0) > 0.8
    assert large_share(0.5) < 0.2


def test_reward_blends_success_with_a_rating_and_charges_cost():
    router = Router(["a", "b"], {"a": 2.0}, cost_weight=0.1, rating_weight=0.5)
    eid = new_id()
    option = router.choose("anything", eid).option
    cost = 2.0 if option == "a" else 0.0
    # quality = 0.5 * 1 + 0.5 * (4 - 1) / 4 = 0.875; reward = quality - 0.1 * cost
    assert router.learn(eid, True, rating=4) == pytest.approx(0.875 - 0.1 * cost)
    eid = new_id()
    option = router.choose("anything", eid).option
    assert router.learn(eid, False, cost=3.5) == pytest.approx(-0.35)


def test_feedback_after_the_outcome_changes_the_decision():
    # small always succeeds, large 80% of the time: small is preferred. Then the users rate
    # every answer of small 1 and every answer of large 5, and large becomes the choice.
    router = Router(["small", "large"], policy="ucb", featuriser=small_featuriser())
    rng = np.random.default_rng(0)
    task = TaskFeatures("draft the release notes", task_type="writing")
    made: list[tuple[str, str]] = []
    for _ in range(60):
        eid = new_id()
        option = router.choose(task, eid).option
        router.learn(eid, option == "small" or bool(rng.random() < 0.8))
        made.append((eid, option))
    assert {option for _, option in made} == {"small", "large"}
    assert router.choose(task, new_id()).option == "small"
    before = router.predict(task)
    for eid, option in made:
        router.feedback(eid, 1 if option == "small" else 5)
    after = router.predict(task)
    assert after["small"].quality < before["small"].quality - 0.3
    assert after["large"].quality > before["large"].quality
    assert router.choose(task, new_id()).option == "large"


def test_feedback_equals_learning_the_rating_with_the_outcome():
    def trained(late: bool) -> Router:
        router = Router(["x", "y"], policy="ucb", featuriser=small_featuriser())
        rng = np.random.default_rng(4)
        for i in range(30):
            eid = f"task-{i}"
            router.choose(TaskFeatures(f"job {i % 3}", task_type="t"), eid)
            success = bool(rng.random() < 0.6)
            rating = int(rng.integers(1, 6))
            if late:
                router.learn(eid, success)
                router.feedback(eid, 2)  # superseded by the later one: the latest rating wins
                router.feedback(eid, rating)
            else:
                router.learn(eid, success, rating=rating)
        return router

    a, b = trained(False).predict("job 1"), trained(True).predict("job 1")
    for option in ("x", "y"):
        assert a[option].quality == pytest.approx(b[option].quality, abs=1e-9)
        assert a[option].success == pytest.approx(b[option].success, abs=1e-9)


def test_a_rating_for_a_pending_decision_waits_for_its_outcome():
    router = Router(["only"])
    eid = new_id()
    router.choose("task", eid)
    assert router.feedback(eid, 5) is None
    assert router.learn(eid, False) == pytest.approx(0.5)  # 0.5 * 0 + 0.5 * 1


def test_reporting_again_keeps_the_rating_feedback_gave():
    """The rating is the user's, not part of the outcome: learn() again for a corrected cost
    erased the one feedback() gave (which the store keeps), though a rating given while the
    decision was pending survives learn()."""
    corrected, direct = Router(["a"], {"a": 1.0}), Router(["a"], {"a": 1.0})
    eid = new_id()
    corrected.choose("same task", eid)
    corrected.learn(eid, True, cost=5.0)
    corrected.feedback(eid, 1)
    assert corrected.learn(eid, True, cost=2.0) == pytest.approx(0.5)  # 0.5 * 1 + 0.5 * 0
    direct.choose("same task", eid)
    direct.learn(eid, True, rating=1, cost=2.0)
    a, b = corrected.predict("same task")["a"], direct.predict("same task")["a"]
    assert a.quality == pytest.approx(b.quality) and a.cost == pytest.approx(b.cost)
    assert corrected.learn(eid, True, rating=5) == pytest.approx(1.0)  # a new rating wins


def test_reporting_again_replaces_the_outcome():
    replaced, direct = Router(["a"], {"a": 1.0}), Router(["a"], {"a": 1.0})
    for router, first in ((replaced, True), (direct, None)):
        eid = new_id()
        router.choose("same task", eid)
        if first is not None:
            router.learn(eid, first, cost=5.0)
        router.learn(eid, False, cost=2.0)
    a, b = replaced.predict("same task")["a"], direct.predict("same task")["a"]
    assert a.quality == pytest.approx(b.quality) and a.cost == pytest.approx(b.cost)
    assert replaced.stats()["a"]["observations"] == 1


def test_late_ratings_are_weighted_by_the_recency_of_their_decision():
    """With a half-life, a rating moves the model by the weight its decision still has."""
    half_life = timedelta(days=7)

    def shift(age_days: float) -> float:
        clock = Clock()
        router = Router(["only"], half_life=half_life, clock=clock, featuriser=small_featuriser())
        old = new_id()
        router.choose("review the invoice", old)
        router.learn(old, True)
        clock.advance(days=age_days)
        for i in range(5):  # recent history, so that the model is not the rated decision alone
            eid = new_id()
            router.choose(f"review the invoice {i}", eid)
            router.learn(eid, True)
        before = router.predict("review the invoice")["only"].quality
        router.feedback(old, 1)  # quality of the old outcome: 1.0 -> 0.5
        return before - router.predict("review the invoice")["only"].quality

    fresh, week, month = shift(0), shift(7), shift(28)
    assert fresh > week > month > 0
    # The correction is w * x * delta with w = 0.5 ** (age / half_life); the shift it makes is
    # not exactly proportional to w (the precision also holds the decayed observation), but
    # the ordering and the order of magnitude are the documented ones.
    assert week / fresh == pytest.approx(0.5, abs=0.2)
    assert month / fresh < 0.15


def test_without_a_half_life_old_and_new_outcomes_weigh_the_same():
    clock = Clock()
    router = Router(["only"], clock=clock)
    eid = new_id()
    router.choose("t", eid)
    router.learn(eid, True)
    clock.advance(days=365)
    assert router.stats()["only"]["weight"] == 1.0


def test_old_outcomes_fade_with_a_half_life():
    clock = Clock()
    router = Router(
        ["a", "b"],
        half_life=timedelta(days=1),
        clock=clock,
        policy="greedy",
        featuriser=small_featuriser(),
    )
    for _ in range(20):  # a was good
        eid = new_id()
        router.choose(TaskFeatures("t", task_type="k"), eid)
        router.learn(eid, True)
    clock.advance(days=10)
    eid = new_id()
    router.choose(TaskFeatures("t", task_type="k"), eid)
    assert router.stats()["a"]["weight"] < 0.01 * 20
    assert router.predict(TaskFeatures("t", task_type="k"))["a"].quality_sd > 0.4


# -- pending decisions ------------------------------------------------------------------------


def test_pending_decisions_expire_after_their_ttl():
    clock = Clock()
    router = Router(["a", "b"], pending_ttl=timedelta(hours=1), clock=clock)
    ids = [new_id() for _ in range(3)]
    for eid in ids:
        router.choose("t", eid)
    assert router.pending == ids
    clock.advance(minutes=59)
    router.learn(ids[0], True)
    assert router.pending == ids[1:]
    clock.advance(minutes=2)
    assert router.pending == []
    assert router.expired_count == 2
    with pytest.raises(DecisionExpiredError, match="expired after waiting 1:00:00"):
        router.learn(ids[1], True)


def test_the_oldest_pending_decisions_are_dropped_beyond_max_pending():
    router = Router(["a"], max_pending=2)
    ids = [new_id() for _ in range(3)]
    for eid in ids:
        router.choose("t", eid)
    assert router.pending == ids[1:]
    with pytest.raises(DecisionExpiredError):
        router.learn(ids[0], True)


def test_outcomes_older_than_max_tracked_cannot_be_revised():
    router = Router(["a"], max_tracked=2)
    ids = [new_id() for _ in range(3)]
    for eid in ids:
        router.choose("t", eid)
        router.learn(eid, True)
    router.feedback(ids[2], 3)
    with pytest.raises(UnknownDecisionError, match="too long ago"):
        router.feedback(ids[0], 3)


# -- the store ------------------------------------------------------------------------------


def route_and_record(
    router: Router, store: ExecutionStore, n: int, seed: int, *, outcomes: bool = True
) -> list[tuple[str, str, RoutingChoice]]:
    """Route n tasks through ``router``, record each execution in ``store`` and learn it."""
    rng = np.random.default_rng(seed)
    done = []
    for _ in range(n):
        context = "code" if rng.random() < 0.5 else "chat"
        eid = new_id()
        choice = router.choose(features(context), eid)
        if outcomes:
            success = bool(rng.random() < P_SUCCESS[context, choice.option])
            cost = router.costs[choice.option] * (1.2 if context == "code" else 1.0)
            store.store_execution(
                id=eid,
                goal_text=TEXT[context],
                task_type=context,
                success=success,
                duration_ms=100.0,
                model_tier=choice.option,
                routing_confidence=choice.confidence,
                cost_estimate=choice.predicted_cost,
                actual_cost=cost,
            )
            router.learn(eid, success, cost=cost)
        done.append((context, eid, choice))
    return done


def assert_same_model(a: Router, b: Router) -> None:
    for context in ("code", "chat"):
        pa, pb = a.predict(features(context)), b.predict(features(context))
        for option in a.options:
            for field in ("quality", "quality_sd", "success", "cost"):
                assert getattr(pa[option], field) == pytest.approx(
                    getattr(pb[option], field), abs=1e-9
                ), (context, option, field)
            assert pa[option].observations == pb[option].observations


def test_decisions_are_stored_joined_to_outcomes_and_replayed_after_a_restart(
    store: ExecutionStore,
):
    router = two_tier_router(store=store, seed=1, router_name="tier")
    done = route_and_record(router, store, 40, seed=2)
    waiting = route_and_record(router, store, 3, seed=3, outcomes=False)

    rows = store.get_routing_outcomes(router="tier")
    assert len(rows) == 43
    by_id = {row.decision.execution_id: row for row in rows}
    for context, eid, choice in done:
        row = by_id[eid]
        assert row.decision.chosen == choice.option
        assert {c.option: c.score for c in row.decision.candidates} == pytest.approx(choice.scores)
        assert row.decision.confidence == pytest.approx(choice.confidence)
        assert row.decision.reason == choice.reason
        assert row.decision.features["task_type"] == context
        assert row.decision.features["text"] == TEXT[context]
        assert row.decision.predicted_success == pytest.approx(choice.predicted_success)
        assert row.decision.predicted_cost == pytest.approx(choice.predicted_cost)
        assert row.outcome is not None and row.outcome.model_tier == choice.option
    for _, eid, _ in waiting:
        assert by_id[eid].outcome is None

    # After a restart: the same configuration, warm-started from the store.
    restarted = two_tier_router(store=store, seed=1, router_name="tier")
    report = restarted.learn_from_store()
    assert (report.decisions, report.learned, report.pending) == (43, 40, 3)
    assert_same_model(router, restarted)
    assert restarted.pending == router.pending == [eid for _, eid, _ in waiting]
    # Replaying again changes nothing.
    again = restarted.learn_from_store()
    assert (again.learned, again.corrected, again.already_known) == (0, 0, 40)
    assert_same_model(router, restarted)

    # Ratings recorded later in the store reach both routers through the store.
    for _, eid, _ in done[:10]:
        store.store_feedback(eid, rating=1)
    before = restarted.predict(features("chat"))
    assert restarted.learn_from_store().corrected == 10
    assert router.learn_from_store().corrected == 10
    assert_same_model(router, restarted)
    after = restarted.predict(features("chat"))
    assert after != before

    # An outcome recorded by another process for a pending decision is learned from the store.
    context, eid, choice = waiting[0]
    store.store_execution(id=eid, success=True, duration_ms=5.0, model_tier=choice.option)
    assert restarted.learn_from_store().learned == 1
    assert eid not in restarted.pending
    # The original router can still learn it directly; then both agree again.
    router.learn(eid, True)
    assert_same_model(router, restarted)


def test_learn_from_store_reads_only_its_own_router_and_known_options(store: ExecutionStore):
    tiers = two_tier_router(store=store, router_name="model_tier")
    pools = Router(["local", "ray"], store=store, router_name="pool")
    route_and_record(tiers, store, 5, seed=1)
    eid = new_id()
    pools.choose("t", eid)
    store.store_execution(id=eid, success=True, duration_ms=1.0, pool="local")
    pools.learn(eid, True)
    store.store_routing_decision(new_id(), "retired-tier", router="model_tier")

    fresh = two_tier_router(store=store, router_name="model_tier")
    report = fresh.learn_from_store()
    assert (report.decisions, report.learned, report.unknown_option) == (6, 5, 1)
    since = fresh.learn_from_store(since=datetime.now(UTC) + timedelta(hours=1))
    assert since.decisions == 0
    with pytest.raises(RouterError, match="store="):
        Router(["a"]).learn_from_store()


def test_the_store_adds_ratings_but_never_erases_one_reported_directly(store: ExecutionStore):
    router = Router(["a"], store=store, featuriser=small_featuriser())
    rated, unrated = new_id(), new_id()
    for eid in (rated, unrated):
        router.choose("t", eid)
        store.store_execution(id=eid, success=True, duration_ms=1.0, model_tier="a")
    router.learn(rated, True, rating=2)  # the store has no rating for it
    router.learn(unrated, True)
    assert router.learn_from_store().corrected == 0
    store.store_feedback(unrated, rating=5)
    report = router.learn_from_store()
    assert (report.corrected, report.already_known) == (1, 1)
    twin = Router(["a"], featuriser=small_featuriser())
    for eid, rating in ((rated, 2), (unrated, 5)):
        twin.choose("t", eid)
        twin.learn(eid, True, rating=rating)
    assert router.predict("t")["a"].quality == pytest.approx(twin.predict("t")["a"].quality)


def test_stored_decisions_say_how_well_they_predicted(store: ExecutionStore):
    router = two_tier_router(store=store, seed=4)
    done = route_and_record(router, store, 500, seed=9)
    rows = {r.decision.execution_id: r for r in store.get_routing_outcomes(limit=1000)}
    errors = [rows[eid].decision.prediction_error(rows[eid].outcome) for _, eid, _ in done]
    first, last = errors[:20], errors[-200:]
    brier_last = sum(e.success**2 for e in last) / len(last)
    brier_first = sum(e.success**2 for e in first) / len(first)
    # The outcomes' own variance p(1-p) at the best arms is 0.09 (code) to 0.13 (chat); a
    # constant guess of 0.5 scores 0.25.
    assert brier_last < 0.13
    assert brier_first > brier_last + 0.03
    assert abs(sum(e.success for e in last) / len(last)) < 0.05  # calibrated on average
    # Costs: code tasks cost 20% more than configured; the router learns it.
    cost_first = [abs(e.cost) for (ctx, _, _), e in zip(done[:20], first, strict=False)
                  if ctx == "code"]  # fmt: skip
    cost_last = [abs(e.cost) for (ctx, _, _), e in zip(done[-200:], last, strict=True)
                 if ctx == "code"]  # fmt: skip
    assert max(cost_first) > 0.15
    assert max(cost_last) < 0.05
    # The execution record's own check uses routing_confidence (the probability the choice
    # was the best), which is not a success probability: predicted_success is.
    assert all(math.isfinite(e.success) for e in errors)


# -- bad input ------------------------------------------------------------------------------


def test_bad_configuration_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'huge'; options are 'small'"):
        Router(["small", "large"], costs={"huge": 3.0})
    with pytest.raises(ValueError, match="cost_weight must be a finite number >= 0"):
        Router(["a"], cost_weight=-0.1)
    with pytest.raises(ValueError, match="cost_weight"):
        Router(["a"], cost_weight=float("nan"))
    with pytest.raises(ValueError, match="cost of 'a'"):
        Router(["a"], costs={"a": -1})
    with pytest.raises(ValueError, match="at least one option"):
        Router([])
    with pytest.raises(ValueError, match="repeated: a"):
        Router(["a", "b", "a"])
    with pytest.raises(TypeError, match="list of option names"):
        Router("small")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty strings"):
        Router(["a", ""])
    with pytest.raises(ValueError, match="policy"):
        Router(["a"], policy="epsilon")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="half_life"):
        Router(["a"], half_life=timedelta(0))
    with pytest.raises(ValueError, match="rating_weight"):
        Router(["a"], rating_weight=1.5)
    with pytest.raises(ValueError, match="prior_strength"):
        Router(["a"], prior_strength=0)
    with pytest.raises(ValueError, match="max_pending"):
        Router(["a"], max_pending=0)


def test_bad_calls_are_refused_and_change_nothing():
    router = Router(["a", "b"], seed=0)
    with pytest.raises(UnknownDecisionError, match="no decision for execution 'nope'"):
        router.learn("nope", True)
    with pytest.raises(UnknownDecisionError):
        router.feedback("nope", 3)
    eid = new_id()
    router.choose("t", eid)
    with pytest.raises(ValueError, match="already decided"):
        router.choose("t", eid)
    with pytest.raises(ValueError, match="rating must be an integer from 1 to 5"):
        router.learn(eid, True, rating=6)
    with pytest.raises(ValueError, match="rating"):
        router.learn(eid, True, rating=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="success must be a bool"):
        router.learn(eid, "yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cost must be a finite number >= 0"):
        router.learn(eid, True, cost=-1.0)
    assert router.pending == [eid]  # nothing was consumed by the refused calls
    router.learn(eid, True)
    with pytest.raises(ValueError, match="already decided"):
        router.choose("t", eid)
    with pytest.raises(TypeError, match="TaskFeatures or the goal's text"):
        router.choose(42, new_id())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="execution_id"):
        router.choose("t", "")
    with pytest.raises(ValueError, match="complexity must be finite"):
        TaskFeatures("t", complexity=float("inf"))
    with pytest.raises(TypeError, match="task_type"):
        TaskFeatures("t", task_type=3)  # type: ignore[arg-type]


def test_a_decision_the_store_refuses_is_not_left_pending(store: ExecutionStore):
    router = Router(["a", "b"], store=store)
    with pytest.raises(InvalidRecordError, match="execution_id"):
        router.choose("t", "not-a-uuid")
    assert router.pending == []


# -- features -----------------------------------------------------------------------------


def test_words_are_hashed_stably_with_blake2b():
    featuriser = HashedFeaturiser(text_dims=64, category_slots=4)
    vector = featuriser.vectorise(TaskFeatures("parser parser lexer"))
    text = {int(i): v for i, v in zip(vector.indices, vector.values, strict=True) if i >= 9}
    expected = {}
    for word, count in (("parser", 2), ("lexer", 1)):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        sign = 1.0 if (h >> 63) & 1 else -1.0
        expected[9 + h % 64] = expected.get(9 + h % 64, 0.0) + sign * math.log1p(count)
    norm = math.sqrt(sum(v * v for v in expected.values()))
    scale = featuriser.text_weight / norm
    assert text == pytest.approx({k: v * scale for k, v in expected.items()})
    again = HashedFeaturiser(text_dims=64, category_slots=4).vectorise(
        TaskFeatures("parser parser lexer")
    )
    assert np.array_equal(again.indices, vector.indices)
    assert np.array_equal(again.values, vector.values)


def test_categories_get_slots_of_their_own_then_share_by_hash():
    featuriser = HashedFeaturiser(text_dims=0, category_slots=3)
    featuriser.vectorise(TaskFeatures(task_type="search", project="docs"))
    featuriser.vectorise(TaskFeatures(task_type="summary", project="docs"))
    assert featuriser.categories == {"task_type=search": 0, "project=docs": 1,
                                     "task_type=summary": 2}  # fmt: skip
    overflow = featuriser.vectorise(TaskFeatures(task_type="compare"))
    assert any(5 <= i < 8 for i in overflow.indices)
    assert len(featuriser.categories) == 3
    unseen = HashedFeaturiser(text_dims=0).vectorise(TaskFeatures(task_type="x"), grow=False)
    assert not any(i >= 5 for i in unseen.indices)


class FakeEmbedder:
    """A deterministic 8-dimensional embedder (the Embedder protocol)."""

    name = "fake/8"

    def __init__(self) -> None:
        self.calls = 0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        rows = []
        for text in texts:
            digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
            row = np.frombuffer(digest, dtype=np.uint8).astype(np.float32) + 1
            rows.append(row / np.linalg.norm(row))
        return np.asarray(rows, dtype=np.float32)


def test_an_embedder_adds_its_vector_to_the_features():
    embedder = FakeEmbedder()
    router = Router(["a", "b"], embedder=embedder, seed=0)
    plain = HashedFeaturiser()
    assert router.featuriser.dim == plain.dim + 8
    assert "fake/8" in router.featuriser.name
    vector = router.featuriser.vectorise(TaskFeatures("hello"))
    tail = vector.values[vector.indices >= plain.dim]
    assert tail.shape == (8,)
    assert np.linalg.norm(tail) == pytest.approx(router.featuriser.embedding_weight, abs=1e-6)
    eid = new_id()
    router.choose("hello", eid)
    router.learn(eid, True)
    calls = embedder.calls
    router.featuriser.vectorise_many([TaskFeatures("a"), TaskFeatures("b")])
    assert embedder.calls == calls + 1  # one batch
    with pytest.raises(ValueError, match="either a featuriser or an embedder"):
        Router(["a"], embedder=embedder, featuriser=plain)


def test_a_custom_featuriser_plugs_in():
    class LengthOnly:
        name = "length"
        dim = 2

        def vectorise(self, features: TaskFeatures, *, grow: bool = True):
            return self.vectorise_many([features])[0]

        def vectorise_many(self, items, *, grow: bool = True):
            from dendrite.learning import FeatureVector

            return [
                FeatureVector(np.array([0, 1]), np.array([1.0, min(len(f.text), 100) / 100]))
                for f in items
            ]

    router = Router(["short", "long"], featuriser=LengthOnly(), policy="ucb")
    for i in range(200):
        eid = new_id()
        text = "x" * (5 if i % 2 else 90)
        choice = router.choose(text, eid)
        router.learn(eid, (choice.option == "long") == (len(text) > 50))
    assert router.predict("x" * 95)["long"].quality > router.predict("x" * 95)["short"].quality
    assert router.predict("x" * 2)["short"].quality > router.predict("x" * 2)["long"].quality


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_choose_and_learn_from_many_threads():
    router = two_tier_router(seed=0)
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            run_rounds(router, 100, seed)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = router.stats()
    assert stats["small"]["observations"] + stats["large"]["observations"] == 800
    assert router.pending == []


def test_choice_reports_what_it_predicted():
    router = two_tier_router(seed=0)
    run_rounds(router, 300, seed=1)
    choice = router.choose(features("code"), new_id())
    assert choice.option in ("small", "large")
    assert set(choice.scores) == set(choice.expected) == {"small", "large"}
    assert 0.0 <= choice.confidence <= 1.0 and 0.0 <= choice.predicted_success <= 1.0
    assert choice.predicted_cost == pytest.approx(router.costs[choice.option])
    assert "reward = quality - 0.02 x cost" in choice.reason
    assert choice.explored == (choice.option != max(choice.expected, key=choice.expected.get))


# -- how well the routers predicted ---------------------------------------------------------


def test_routing_accuracy_sums_the_prediction_errors_per_router_and_option(
    store: ExecutionStore,
):
    now = datetime.now(UTC)
    # (router, chosen, predicted success, predicted cost, outcome success, actual cost)
    decisions = [
        ("model_tier", "small", 0.8, 1.0, True, 1.5),
        ("model_tier", "small", 0.6, 1.0, False, 0.5),
        ("model_tier", "large", 0.9, 10.0, True, 12.0),
        ("model_tier", "large", 0.7, 10.0, True, None),
        ("model_tier", "large", None, 10.0, True, 10.0),  # no success prediction
        ("pool", "gpu", 0.5, None, False, None),
    ]
    for router, chosen, p, cost, success, actual in decisions:
        eid = new_id()
        store.store_routing_decision(
            eid, chosen, router=router, predicted_success=p, predicted_cost=cost
        )
        store.store_execution(
            id=eid, goal_text="g", success=success, duration_ms=1.0, actual_cost=actual
        )
    # Runs that say nothing about their option: cancelled, and sent to a tier left unused.
    for extra in ({"status": "cancelled"}, {"metadata": {ROUTE_UNUSED: True}}):
        eid = new_id()
        store.store_routing_decision(eid, "small", router="model_tier", predicted_success=0.9)
        store.store_execution(id=eid, goal_text="g", success=False, duration_ms=1.0, **extra)
    unrouted = new_id()  # decided, but its run was never recorded
    store.store_routing_decision(unrouted, "small", router="model_tier", predicted_success=0.5)
    store.store_routing_decision(  # outside the window
        new_id(), "small", router="model_tier", created_at=now - timedelta(days=30)
    )
    store.flush()

    rows = {(r.router, r.option): r for r in routing_accuracy(store, since=now - timedelta(1))}
    assert list(rows) == [
        ("model_tier", "large"),
        ("model_tier", "small"),
        ("model_tier", "*"),
        ("pool", "gpu"),
        ("pool", "*"),
    ]
    small = rows["model_tier", "small"]
    assert (small.decisions, small.judged, small.share) == (5, 2, pytest.approx(5 / 8))
    assert small.predicted_success == pytest.approx(0.7) and small.success_rate == 0.5
    assert small.bias == pytest.approx(-0.2)  # it expected too much of the small tier
    assert small.brier == pytest.approx((0.2**2 + 0.6**2) / 2)
    assert small.base_brier == pytest.approx(0.25)
    assert small.cost_error == pytest.approx(0.5)  # +0.5 and -0.5: off by half either way
    large = rows["model_tier", "large"]
    assert (large.decisions, large.judged, large.success_rate) == (3, 2, 1.0)
    assert large.bias == pytest.approx(0.2) and large.brier == pytest.approx((0.01 + 0.09) / 2)
    assert large.base_brier == 0.0 and large.cost_error == pytest.approx(0.1)  # 0.2 and 0.0
    everything = rows["model_tier", "*"]
    assert (everything.decisions, everything.judged, everything.share) == (8, 4, 1.0)
    assert everything.brier == pytest.approx((0.04 + 0.36 + 0.01 + 0.09) / 4)
    assert everything.bias == pytest.approx(0.0)
    # Against each option predicted at its own rate (0.5 and 1.0), not the pooled 0.75.
    assert everything.base_brier == pytest.approx((2 * 0.25 + 2 * 0.0) / 4)
    gpu = rows["pool", "gpu"]
    assert (gpu.judged, gpu.brier, gpu.cost_error) == (1, pytest.approx(0.25), None)
    only_pools = routing_accuracy(store, "pool")
    assert [r.option for r in only_pools] == ["gpu", "*"]
    assert len(routing_accuracy(store)) == 5  # the old decision is in, with no outcome:
    assert routing_accuracy(store)[1].decisions == 6  # small, all time
    assert routing_accuracy(store, "nobody") == []
    with pytest.raises(ValueError, match="limit must be a positive integer"):
        routing_accuracy(store, limit=0)


def test_routing_accuracy_judges_a_run_whose_tier_was_down_as_the_router_learns_it(
    store: ExecutionStore,
):
    """A run that the offline planners rescued after every call to its tier's model failed
    is a failure of the tier to the router (``routed_success``); judged a success here, it
    showed the tier underrated for the very runs the router learned it failed."""
    router = Router(["small", "large"], {"small": 1.0, "large": 10.0}, store=store)
    for i in range(4):
        eid = new_id()
        option = router.choose(f"summarise report {i}", eid).option
        store.store_execution(
            id=eid,
            goal_text="g",
            success=True,
            duration_ms=1.0,
            model_tier=option,
            metadata={ROUTE_DOWN: True},
        )
        router.learn(eid, False)
    store.flush()
    everything = routing_accuracy(store)[-1]
    assert (everything.option, everything.judged, everything.success_rate) == ("*", 4, 0.0)
    assert everything.bias == pytest.approx(-everything.predicted_success)
    item = store.get_routing_outcomes()[0]
    assert item.decision.predicted_success is not None and item.outcome is not None
    routed = item.decision.prediction_error(item.outcome, success=routed_success(item.outcome))
    assert routed.success == pytest.approx(-item.decision.predicted_success)
    own = item.decision.prediction_error(item.outcome)  # the run's own success, by default
    assert own.success == pytest.approx(1 - item.decision.predicted_success)
