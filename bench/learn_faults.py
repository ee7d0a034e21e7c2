"""Learning around failing tools: goal success and wasted calls when tools turn flaky mid-stream.

Why: the learning loop's health monitor quarantines a tool whose recent calls mostly fail,
probes it after a cooldown and restores it when a probe succeeds; the tool ranker moves a
tool with a bad record down, and fallbacks are tried best record first. Without learning,
every goal starts with the tool retrieval ranks first, flaky or not, and pays a failed call
each time before a fallback answers. This script measures both, side by side in one run,
through the real ``Orchestrator.run`` path.

The catalogue (synthetic): 20 capabilities (weather forecast, exchange rates, parcel
tracking, ...) with 3 interchangeable tools each, 60 tools. The three tools of a capability
share its description (only the provider's name differs), so retrieval finds all three for
the capability's goals, and each declares the other two as ``alternatives``. Every tool
takes ``query: str`` and returns at once. A tool asked a goal of another capability raises
(as a wrong tool would); a healthy tool of the right capability always answers.

The stream: 2,000 goals (``--goals``), each a capability chosen at random (seeded) and one of
its phrasings with random details (cities, days, codes ...). At goal 700 (``--flip``) 30% of
the tools (18, chosen at random, seeded, at most two per capability so that every capability
keeps one working tool: otherwise no orchestrator could reach the target) turn flaky: from
then on each of their calls fails with a ``ConnectionError`` with probability 0.7 (a seeded
generator per contender).

Contenders, each with its own registry and its own SQLite store in a temporary directory,
both ``OrchestratorConfig(retry=RetryPolicy(max_attempts=1))`` (fallbacks, not retries, carry
the recovery) and ``DendritePlanner(strategy=SIMPLE)`` (one step per goal; the semantic
planner's next two candidates become fallbacks, then the tool's declared alternatives):

- learning off: ``learning=False``.
- learning on: ``Orchestrator(..., learning=LearningLoop(registry, health_policy=...,
  clock=...))`` so that its health monitor runs on the stream's clock: the ``HealthPolicy``
  defaults (window 20, 8 samples, 50% failures, 30 s cooldown doubling to 600 s) count
  seconds of a simulated clock that advances by ``--seconds-per-goal`` (1) per goal, as if
  goals arrived once a second. On wall seconds the cooldown would depend on this machine's
  speed (the 2,000 goals take about 6 s here, so a 30 s cooldown would never end).

Measures, per window of ``--window`` goals and before / after the flip: goal success rate
(some call of the right capability answered), wasted calls (failed calls, counted by the
tools themselves, so the attempts of a replanned run are all counted), calls to flaky
tools, and the health monitor's transitions (quarantines, probes, restores). Because every
capability keeps a working tool and each step's fallbacks plus declared alternatives cover
all three of its tools, learning off reaches every goal too: what learning changes here is
how many failed calls it takes to get there.

Run from the repository root::

    .venv/bin/python bench/learn_faults.py           # 2,000 goals, about 15 s
    .venv/bin/python bench/learn_faults.py --quick   # 600 goals, flip at 200
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dendrite import Orchestrator
from dendrite.learning.health import Health, HealthPolicy
from dendrite.learning.loop import LearningLoop
from dendrite.orchestrator import OrchestratorConfig
from dendrite.planning.default import DendritePlanner, Strategy
from dendrite.planning.plan import PlanValidationError, RetryPolicy
from dendrite.planning.planner import PlanningError
from dendrite.store import ExecutionStore
from dendrite.tools import ToolRegistry

TARGET_SUCCESS_AFTER = 0.99
PROVIDERS = ("acme", "globex", "initech")
FAILURE_RATE = 0.7
FLAKY_SHARE = 0.3

# capability: (description, goal phrasings). Placeholders are filled from FILLERS.
CAPABILITIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "weather_forecast": (
        "Weather forecast for a city and a day: temperature, rain and wind.",
        ("weather forecast for {city} on {day}", "will it rain in {city} on {day}, forecast",
         "{day} weather forecast in {city}"),
    ),
    "exchange_rate": (
        "Currency exchange rate between two currencies.",
        ("exchange rate from {cur} to {cur2}", "currency exchange rate {cur} {cur2} today",
         "how many {cur2} for one {cur}, exchange rate"),
    ),
    "translate_text": (
        "Translate text into another language: a translation.",
        ("translate '{phrase}' into {lang}", "{lang} translation of '{phrase}', translate",
         "translate the text '{phrase}' to {lang}"),
    ),
    "stock_quote": (
        "Latest stock quote of a ticker symbol: price and change.",
        ("stock quote for {ticker}", "latest share price quote of {ticker} stock",
         "{ticker} stock quote now"),
    ),
    "flight_status": (
        "Status of a flight by flight number: departure, arrival, delay.",
        ("flight status of {flight}", "is flight {flight} delayed, flight status",
         "arrival status for flight {flight}"),
    ),
    "parcel_tracking": (
        "Track a parcel shipment by its tracking code.",
        ("track parcel {code}", "where is my parcel shipment {code}, tracking",
         "parcel tracking for code {code}"),
    ),
    "restaurant_booking": (
        "Book a restaurant table for a party in a city.",
        ("book a restaurant table for {n} in {city}", "restaurant booking in {city} for {n} people",
         "reserve a table at a restaurant in {city}, party of {n}"),
    ),
    "calendar_meeting": (
        "Schedule a calendar meeting with a person on a day.",
        ("schedule a calendar meeting with {person} on {day}",
         "put a meeting with {person} in my calendar for {day}",
         "calendar invite: meeting with {person} {day}"),
    ),
    "email_sending": (
        "Send an email message to a recipient.",
        ("send an email to {person} about {topic}", "email {person} regarding the {topic}",
         "send {person} an email message on {topic}"),
    ),
    "news_headlines": (
        "News headlines on a topic from today's press.",
        ("news headlines on {topic}", "latest news about {topic}, headlines",
         "today's headlines in the news on {topic}"),
    ),
    "address_geocoding": (
        "Geocode a street address into latitude and longitude coordinates.",
        ("coordinates of {street} in {city}, geocode", "latitude and longitude of {street} {city}",
         "geocode the address {street}, {city}"),
    ),
    "image_resize": (
        "Resize an image file to a width in pixels.",
        ("resize image {file}.png to {n}0 pixels", "make the image {file}.jpg {n}00 pixels wide",
         "image resize of {file}.png, width {n}0 pixels"),
    ),
    "pdf_extraction": (
        "Extract the text of a PDF document.",
        ("extract text from pdf {file}.pdf", "pdf text extraction of {file}.pdf",
         "pull the text out of the pdf document {file}.pdf"),
    ),
    "sentiment_analysis": (
        "Sentiment of a review: positive, negative or neutral.",
        ("sentiment of the review '{phrase}'", "is this review positive or negative: '{phrase}'",
         "review sentiment for '{phrase}'"),
    ),
    "sql_query": (
        "Run a SQL query on a database table.",
        ("run a sql query on the {table} table", "sql query: count the rows of {table} in the "
         "database", "database sql select from {table}"),
    ),
    "invoice_payment": (
        "Pay an invoice by its number and amount.",
        ("pay invoice {code} of {n}00 dollars", "invoice payment for {code}, amount {n}00",
         "settle the invoice {code}, pay it"),
    ),
    "hotel_availability": (
        "Hotel room availability in a city on a date.",
        ("hotel rooms available in {city} on {day}", "hotel availability {city} {day}",
         "is there a free hotel room in {city} for {day}"),
    ),
    "spell_check": (
        "Spell check a sentence and list the misspelled words.",
        ("spell check '{phrase}'", "check the spelling of the sentence '{phrase}'",
         "spelling mistakes in '{phrase}', spell check"),
    ),
    "timezone_conversion": (
        "Convert a clock time from one timezone to another.",
        ("convert {n}:00 from {tz} to {tz2} timezone", "what time in {tz2} is {n}:00 {tz}, "
         "timezone", "timezone conversion of {n}:30 {tz} into {tz2}"),
    ),
    "recipe_search": (
        "Recipes with an ingredient for a cuisine.",
        ("recipe with {ingredient}", "{cuisine} recipes using {ingredient}",
         "recipe ideas: {ingredient}, {cuisine} cuisine"),
    ),
}  # fmt: skip

FILLERS: dict[str, tuple[str, ...]] = {
    "city": ("Paris", "Lisbon", "Osaka", "Denver", "Nairobi", "Oslo", "Lima", "Perth", "Quito",
             "Dublin", "Seoul", "Austin"),
    "day": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    "cur": ("USD", "EUR", "JPY", "GBP", "CHF", "CAD"),
    "cur2": ("SEK", "NOK", "AUD", "INR", "BRL", "MXN"),
    "phrase": ("good morning friends", "the train leaves at noon", "thank you for the gift",
               "the soup was cold", "great service and lovely staff", "see you tomorrow"),
    "lang": ("French", "German", "Japanese", "Spanish", "Italian", "Korean"),
    "ticker": ("AAPL", "MSFT", "NVDA", "TSLA", "AMZN", "IBM"),
    "flight": ("BA117", "LH400", "AF22", "UA901", "QF1", "KL605"),
    "code": ("ZX81-442", "PK-99812", "1Z999AA1", "RR4471", "INV-2024-7", "TRK-5531"),
    "n": ("2", "3", "4", "5", "6", "8"),
    "person": ("Alice", "Bob", "Chen", "Dara", "Emeka", "Farah"),
    "topic": ("budget", "launch plan", "elections", "climate", "football", "markets"),
    "street": ("10 Downing Street", "221B Baker Street", "1600 Amphitheatre Parkway",
               "5 Rue de Rivoli"),
    "file": ("holiday", "report_q3", "logo", "scan_0042", "contract", "poster"),
    "table": ("orders", "customers", "payments", "sessions", "invoices", "events"),
    "tz": ("UTC", "CET", "EST", "PST", "JST"),
    "tz2": ("IST", "AEST", "BRT", "MSK", "HKT"),
    "ingredient": ("lentils", "salmon", "spinach", "chickpeas", "mushrooms", "tofu"),
    "cuisine": ("Italian", "Thai", "Mexican", "Indian", "Greek", "Korean"),
}  # fmt: skip


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- the catalogue ---------------------------------------------------------------------------


class WrongToolError(Exception):
    """What a tool asked a goal of another capability raises."""


@dataclass
class World:
    """The current goal's capability, which tools are flaky, and every call made."""

    rng: random.Random
    flaky: frozenset[str]
    capability: str = ""
    broken: bool = False  # the flip has happened
    calls: list[tuple[str, bool]] = field(default_factory=list)

    def start(self, capability: str) -> None:
        self.capability = capability
        self.calls = []


def tool_name(capability: str, provider: str) -> str:
    return f"{capability}_{provider}"


def all_tools() -> list[str]:
    return [tool_name(c, p) for c in CAPABILITIES for p in PROVIDERS]


def choose_flaky(seed: int) -> frozenset[str]:
    """30% of the tools, at random, at most two per capability (one always works)."""
    rng = random.Random(seed)
    wanted = round(FLAKY_SHARE * len(CAPABILITIES) * len(PROVIDERS))
    while True:
        chosen = rng.sample(all_tools(), wanted)
        per = Counter(name.rsplit("_", 1)[0] for name in chosen)
        if max(per.values()) < len(PROVIDERS):
            return frozenset(chosen)


def make_function(capability: str, name: str, world: World) -> Callable[..., Any]:
    def call(query: str) -> dict[str, Any]:
        if world.capability != capability:
            world.calls.append((name, False))
            raise WrongToolError(f"{name} does {capability}, not {world.capability}")
        if world.broken and name in world.flaky and world.rng.random() < FAILURE_RATE:
            world.calls.append((name, False))
            raise ConnectionError(f"{name}: upstream unavailable")
        world.calls.append((name, True))
        return {"tool": name, "answer": f"{capability} for {query!r}"}

    call.__name__ = name
    return call


def build_registry(world: World) -> ToolRegistry:
    registry = ToolRegistry()
    for capability, (description, _) in CAPABILITIES.items():
        names = [tool_name(capability, p) for p in PROVIDERS]
        for provider, name in zip(PROVIDERS, names, strict=True):
            registry.register_function(
                make_function(capability, name, world),
                name=name,
                description=f"{description} Provider: {provider.capitalize()}.",
                alternatives=[n for n in names if n != name],
            )
    return registry


# -- the stream ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Goal:
    text: str
    capability: str


def make_goals(count: int, seed: int) -> list[Goal]:
    rng = random.Random(seed)
    goals = []
    for _ in range(count):
        capability = rng.choice(list(CAPABILITIES))
        template = rng.choice(CAPABILITIES[capability][1])
        values = {key: rng.choice(options) for key, options in FILLERS.items()}
        goals.append(Goal(template.format(**values), capability))
    return goals


class GoalClock:
    """Simulated seconds: each goal advances the clock by ``step``."""

    def __init__(self, step: float) -> None:
        self.step = step
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += self.step


@dataclass
class Outcome:
    success: bool
    wasted: int
    calls: int
    flaky_calls: int
    planner: str
    quarantined: int  # tools quarantined after this goal


@dataclass
class Contender:
    label: str
    world: World
    orch: Orchestrator
    store: ExecutionStore
    clock: GoalClock
    outcomes: list[Outcome] = field(default_factory=list)
    transitions_at: list[int] = field(default_factory=list)  # goal index of each transition
    seconds: float = 0.0


def make_contender(
    label: str, learning: bool, args: argparse.Namespace, flaky: frozenset[str], tmp: Path
) -> Contender:
    world = World(random.Random(args.seed + 1), flaky)
    registry = build_registry(world)
    slug = label.replace(" ", "_")
    store = ExecutionStore(f"sqlite:///{tmp / f'{slug}.db'}", state_dir=tmp / f"state-{slug}")
    config = OrchestratorConfig(learning=False, retry=RetryPolicy(max_attempts=1))
    clock = GoalClock(args.seconds_per_goal)
    loop = None
    if learning:
        policy = HealthPolicy(cooldown=args.cooldown, max_cooldown=max(600.0, args.cooldown))
        loop = LearningLoop(registry, health_policy=policy, clock=clock)
    planner = DendritePlanner(
        strategy=Strategy.SIMPLE,
        ranker=loop.ranker if loop else None,
        memory=loop.memory if loop else None,
    )
    orch = Orchestrator(
        registry, store=store, config=config, llm=None, planner=planner, learning=loop
    )
    return Contender(label, world, orch, store, clock)


def quarantined(contender: Contender) -> int:
    learning = contender.orch.learning
    if learning is None:
        return 0
    return sum(1 for s in learning.health.summary().values() if s["health"] == "quarantined")


async def run_stream(
    contender: Contender, goals: Sequence[Goal], flip: int, console: Console
) -> None:
    started = time.perf_counter()
    world = contender.world
    learning = contender.orch.learning
    for index, goal in enumerate(goals):
        world.broken = index >= flip
        world.start(goal.capability)
        seen = len(learning.health.transitions) if learning else 0
        planner = "not planned"
        try:
            result = await contender.orch.run(goal.text)
            planner = result.plan.planner or "?"
        except (PlanningError, PlanValidationError):
            pass
        contender.clock.tick()
        if learning:
            contender.transitions_at += [index] * (len(learning.health.transitions) - seen)
        calls = world.calls
        contender.outcomes.append(
            Outcome(
                success=any(ok for _, ok in calls),
                wasted=sum(1 for _, ok in calls if not ok),
                calls=len(calls),
                flaky_calls=sum(1 for name, _ in calls if name in world.flaky),
                planner=planner,
                quarantined=quarantined(contender),
            )
        )
        if (index + 1) % 500 == 0:
            note(console, f"  [{contender.label}] {index + 1:,} goals in "
                 f"{time.perf_counter() - started:,.1f} s")  # fmt: skip
    contender.seconds = time.perf_counter() - started


# -- report ----------------------------------------------------------------------------------


def share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_environment(
    console: Console, args: argparse.Namespace, goals: list[Goal], flaky: frozenset[str]
) -> None:
    table = Table(title="Environment and stream", show_header=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    first_flaky = sum(tool_name(c, PROVIDERS[0]) in flaky for c in CAPABILITIES)
    per = Counter(name.rsplit("_", 1)[0] for name in flaky)
    for key, value in (
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()}, {platform.system()}, {cpus} CPUs"),
        ("pydantic / sqlalchemy", f"{_version('pydantic')} / {_version('sqlalchemy')}"),
        ("catalogue", f"{len(CAPABILITIES)} capabilities x {len(PROVIDERS)} tools, alternatives "
         "declared, query: str, instant calls"),
        ("stream", f"{len(goals):,} goals, seed {args.seed}; flip before goal {args.flip + 1:,}"),
        ("flaky after the flip", f"{len(flaky)} tools fail {FAILURE_RATE:.0%} of calls; "
         f"capabilities with 2 flaky: {sum(v == 2 for v in per.values())}, with 1: "
         f"{sum(v == 1 for v in per.values())}; retrieval's first tool is flaky for "
         f"{first_flaky} of {len(CAPABILITIES)}"),
        ("health policy (learning on)", f"HealthPolicy(cooldown={args.cooldown:g}) on a "
         f"simulated clock, {args.seconds_per_goal:g} s per goal"),
        ("orchestrator", "SIMPLE strategy, RetryPolicy(max_attempts=1), max_replans=1, "
         "SQLite store, llm=None"),
    ):  # fmt: skip
        table.add_row(key, value)
    console.print(table)


def print_windows(console: Console, contenders: list[Contender], flip: int, size: int) -> None:
    off, on = contenders
    table = Table(title=f"Per window of {size} goals (learning off / on)")
    for column in (
        "goals", "success off", "success on", "wasted off", "wasted on", "flaky calls off",
        "flaky calls on", "quarantined at end (on)", "transitions (on)",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "goals" else "right")
    n = len(off.outcomes)
    for start in range(0, n, size):
        chunk = range(start, min(start + size, n))
        a = [off.outcomes[i] for i in chunk]
        b = [on.outcomes[i] for i in chunk]
        label = f"{start + 1:,}-{chunk[-1] + 1:,}" + (
            " (flip)" if start <= flip < start + size else ""
        )
        table.add_row(
            label,
            f"{share([o.success for o in a]):.3f}",
            f"{share([o.success for o in b]):.3f}",
            f"{sum(o.wasted for o in a):,}",
            f"{sum(o.wasted for o in b):,}",
            f"{sum(o.flaky_calls for o in a):,}",
            f"{sum(o.flaky_calls for o in b):,}",
            f"{b[-1].quarantined}",
            f"{sum(1 for i in on.transitions_at if i in chunk):,}",
        )
    console.print(table)


def phase_rows(contenders: list[Contender], flip: int) -> list[tuple[str, range]]:
    n = len(contenders[0].outcomes)
    return [
        (f"before the flip (goals 1-{flip:,})", range(0, flip)),
        (f"after the flip (goals {flip + 1:,}-{n:,})", range(flip, n)),
    ]


def print_phases(console: Console, contenders: list[Contender], flip: int) -> None:
    off, on = contenders
    table = Table(title="Before and after the flip")
    for column in (
        "phase", "contender", "goal success", "failed goals", "wasted calls", "wasted/goal",
        "calls/goal", "calls to flaky tools", "wasted on ÷ off",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("phase", "contender") else "right")
    for label, span in phase_rows(contenders, flip):
        wasted_off = sum(off.outcomes[i].wasted for i in span)
        for c in contenders:
            o = [c.outcomes[i] for i in span]
            wasted = sum(x.wasted for x in o)
            table.add_row(
                label if c is off else "",
                c.label,
                f"{share([x.success for x in o]):.4f}",
                f"{sum(not x.success for x in o):,}",
                f"{wasted:,}",
                f"{wasted / len(o):.3f}" if o else "-",
                f"{sum(x.calls for x in o) / len(o):.3f}" if o else "-",
                f"{sum(x.flaky_calls for x in o):,}",
                (f"{wasted / wasted_off:.2f}" if wasted_off else "-") if c is on else "",
            )
    console.print(table)
    for c in contenders:
        planners = Counter(x.planner for x in c.outcomes)
        after = c.outcomes[flip:]
        wasted: Counter[str] = Counter()
        for x in after:
            wasted[x.planner] += x.wasted
        note(
            console,
            f"  {c.label}: {c.seconds:.1f} s for {len(c.outcomes):,} goals "
            f"({c.seconds / len(c.outcomes) * 1000:.1f} ms/goal); plans by "
            + ", ".join(f"{k} {v:,}" for k, v in planners.most_common())
            + "; after the flip, by planner: "
            + ", ".join(
                f"{k} {sum(x.planner == k for x in after):,} goals / {wasted[k]:,} wasted"
                for k, _ in Counter(x.planner for x in after).most_common()
            ),
        )


def print_transitions(console: Console, contender: Contender, flip: int) -> None:
    learning = contender.orch.learning
    assert learning is not None
    table = Table(title="Health transitions (learning on), from orch.learning.health.transitions")
    for column in ("transition", "before the flip", "after the flip", "tools"):
        table.add_column(column, justify="left" if column in ("transition", "tools") else "right")
    kinds: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for at, t in zip(contender.transitions_at, learning.health.transitions, strict=True):
        kinds.setdefault((t.before.value, t.after.value), []).append((at, t.tool))
    for (before, after), items in sorted(kinds.items()):
        tools = {tool for _, tool in items}
        flaky = len(tools & contender.world.flaky)
        table.add_row(
            f"{before} -> {after}",
            f"{sum(1 for at, _ in items if at < flip):,}",
            f"{sum(1 for at, _ in items if at >= flip):,}",
            f"{len(tools)} ({flaky} flaky)",
        )
    console.print(table)
    quarantines = sum(1 for t in learning.health.transitions if t.after is Health.QUARANTINED)
    restores = sum(1 for t in learning.health.transitions if t.after is Health.HEALTHY)
    final = Counter(s["health"] for s in learning.health.summary().values())
    note(
        console,
        f"  {quarantines} quarantines, {restores} restores; at the end: "
        + ", ".join(f"{k} {v}" for k, v in sorted(final.items()))
        + f" (of {len(final and learning.health.summary())} tools the monitor has seen); "
        "healthy tools wrongly quarantined: "
        + str(
            len(
                {t.tool for t in learning.health.transitions if t.after is Health.QUARANTINED}
                - contender.world.flaky
            )
        ),
    )


def print_verdict(console: Console, contenders: list[Contender], flip: int) -> None:
    off, on = contenders
    after = range(flip, len(on.outcomes))
    success = share([on.outcomes[i].success for i in after])
    wasted_on = sum(on.outcomes[i].wasted for i in after)
    wasted_off = sum(off.outcomes[i].wasted for i in after)
    table = Table(title="Against the targets")
    for column in ("check", "measured", "target", "pass"):
        table.add_column(column)

    def verdict(ok: bool) -> str:
        return "[green]yes[/green]" if ok else "[red]NO[/red]"

    table.add_row(
        "goal success after the flip, learning on",
        f"{success:.4f} (learning off {share([off.outcomes[i].success for i in after]):.4f})",
        f">= {TARGET_SUCCESS_AFTER}",
        verdict(success >= TARGET_SUCCESS_AFTER),
    )
    table.add_row(
        "wasted calls after the flip",
        f"on {wasted_on:,}, off {wasted_off:,}"
        + (f" ({wasted_on / wasted_off:.2f}x)" if wasted_off else ""),
        "on < off",
        verdict(wasted_on < wasted_off),
    )
    console.print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--goals", type=int, default=2_000)
    parser.add_argument("--flip", type=int, default=700, help="goals before tools turn flaky")
    parser.add_argument("--window", type=int, default=100, help="goals per window")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cooldown", type=float, default=HealthPolicy().cooldown,
                        help="health cooldown, simulated seconds")  # fmt: skip
    parser.add_argument("--seconds-per-goal", type=float, default=1.0, help="simulated clock")
    parser.add_argument("--quick", action="store_true", help="600 goals, flip at 200")
    args = parser.parse_args(argv)
    if args.quick:
        args.goals, args.flip = 600, 200
    if min(args.goals, args.window) < 1 or not 0 <= args.flip < args.goals:
        parser.error("need --goals >= 1, --window >= 1 and 0 <= --flip < --goals")
    if args.cooldown <= 0 or args.seconds_per_goal <= 0:
        parser.error("--cooldown and --seconds-per-goal must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    # Every quarantine and restore is logged as a warning; the tables report them.
    logging.getLogger("dendrite").setLevel(logging.ERROR)
    started = time.perf_counter()
    goals = make_goals(args.goals, args.seed)
    flaky = choose_flaky(args.seed)
    print_environment(console, args, goals, flaky)
    tmp = Path(tempfile.mkdtemp(prefix="dendrite_learn_faults_"))
    contenders: list[Contender] = []
    try:
        for label, learning in (("learning off", False), ("learning on", True)):
            note(console, f"{label}: running {len(goals):,} goals …")
            contender = make_contender(label, learning, args, flaky, tmp)
            contenders.append(contender)
            asyncio.run(run_stream(contender, goals, args.flip, console))
    finally:
        for c in contenders:
            c.orch.close()
            c.store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print_windows(console, contenders, args.flip, args.window)
    print_phases(console, contenders, args.flip)
    print_transitions(console, contenders[1], args.flip)
    print_verdict(console, contenders, args.flip)
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
