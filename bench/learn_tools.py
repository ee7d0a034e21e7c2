"""Learning which tool answers a goal, on BFCL: first-choice accuracy as history accumulates.

Why: the learning loop (``dendrite.learning``) is meant to make the orchestrator pick the
right tool more often the longer it runs: every attempt teaches the tool ranker (which
tool worked, or failed, for goals like this one), successful plans go to plan memory, and
the planner orders its candidates by what the ranker says. This script measures that on
real goals and a real catalogue, through the real ``Orchestrator.run`` path, with learning
on and off side by side in the same run.

The catalogue is BFCL's (v4, read from ``../shared/benchdata/bfcl/``, nothing copied into
the repository), pooled as ``bench/tool_selection.py`` pools it (its loader is imported),
and registered as real tools in a ``ToolRegistry``, one Python function per distinct name
(1,645 tools; a registry holds one tool per name, and same-named BFCL entries are versions
of one API: the first entry's description is kept and the parameters of all versions are
merged). Each tool's signature is derived from its BFCL parameters (string, integer,
float/number, boolean, array/tuple, dict/object, any -> str, int, float, bool, list, dict,
Any), with the parameter descriptions in the docstring, so retrieval sees the same names,
descriptions and parameters as in ``tool_selection.py``. Every parameter is optional
(``None`` by default): the offline argument reader cannot fill most BFCL arguments from
the text, and a required parameter it cannot fill would reject the right tool before it is
even ranked, which would measure argument reading, not tool choice. Names that are not
Python identifiers are rewritten (``math.factorial`` -> ``math_factorial``; the 10 names
that then collide get a ``_2`` suffix).

A tool call succeeds only when the tool is a gold tool of the current query (the script
sets the query's gold set before each run) and raises otherwise, as a wrong tool would.

The stream: every query that has a gold answer (simple_python, multiple, live_simple,
live_multiple, parallel_multiple: 2,111), in a fixed random order (``--seed``), each run
once by each contender with ``orch.run(goal)``. Contenders, each with its own registry and
its own SQLite store in a temporary directory:

- learning off: ``OrchestratorConfig(learning=False, retry=RetryPolicy(max_attempts=1))``;
  the planner ranks the catalogue by BM25 alone (or the hybrid, with ``--embedder``).
- learning on: the same with ``learning=True``: the ranker takes retrieval's 20 best
  candidates (its ``recall_depth``) plus the tools its learned words recall, and orders them
  by its model of each tool's success for the goal's words, learned online from the outcome
  of every call (``dendrite.learning.ranker``); plan memory reuses the plan of a close enough
  past success, its tools reordered by the same model; the engine orders fallbacks by each
  tool's record.

Both use ``DendritePlanner(strategy=SIMPLE)`` (one step per goal: a BFCL query asks for one
tool; for parallel_multiple, any of its gold tools counts), wired to the orchestrator's
ranker and plan memory as the constructor wires its default planner. The semantic planner
keeps its default five candidates; the next two that take the step's arguments become
fallbacks, and a step that still fails is replanned once (the default ``max_replans``).
Retries are off, so every extra call is a fallback or a replacement.

Measures, per window of ``--window`` queries and overall:

- first choice: the first tool called for the query is a gold tool (a query the planner
  cannot plan counts as wrong);
- success: some call for the query reached a gold tool;
- wasted calls: failed calls per query;
- seen / unseen: whether one of the query's gold tools was a gold tool of an earlier query
  in the stream. Learning from history can only help with the seen ones (most BFCL tools
  are gold for a single query); on the unseen ones it can at best do no harm.

The calls are counted by the tools themselves, not read from the result, so the attempts
of a run that was replanned are all counted. The target (first choice >= 0.85 with learning
on) is judged on the last ``--window`` queries of the stream.

Two reference rows put the contenders in context (computed, not run through an
orchestrator): "ceiling", every seen query right and the unseen ones as learning off picked
them, the most that learning from history can add to this retriever; and "ref. 1-NN", the
gold tool of the most similar earlier query (``SimilarTexts``, the index the ranker uses)
when the similarity reaches 0.4, else learning off's pick. The 1-NN rule knows the gold tools
of every earlier query, which an orchestrator does not (it learns only from the tools it
tried), so it says how far goal-text similarity alone can carry learning on this data.

``--embedder minilm`` (the ``neural`` extra) gives both contenders the same all-MiniLM-L6-v2
embedder: retrieval blends it with BM25 as ``ToolRetriever`` does, and the learning ranker finds
similar past goals by the embeddings' cosine (``--past-goals words``: by shared words). Every
text is embedded once, before either contender runs, so ms/goal compares the contenders.

Run from the repository root::

    .venv/bin/python bench/learn_tools.py            # the whole stream, about 2.5 minutes
    .venv/bin/python bench/learn_tools.py --quick    # the first 600 queries of the stream
    .venv/bin/python bench/learn_tools.py --embedder minilm   # about 15 minutes on 2 CPUs
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import keyword
import logging
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from dendrite import Orchestrator
from dendrite.learning.loop import LearningLoop
from dendrite.learning.ranker import ToolRanker
from dendrite.learning.similar import SimilarTexts
from dendrite.orchestrator import OrchestratorConfig
from dendrite.planning.default import DendritePlanner, Strategy
from dendrite.planning.plan import PlanValidationError, RetryPolicy
from dendrite.planning.planner import PlanningError
from dendrite.retrieval import SentenceTransformerEmbedder, ToolRetriever
from dendrite.store import ExecutionStore
from dendrite.tools import ToolRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tool_selection import DEFAULT_DATA, Bfcl, MemoEmbedder, load_bfcl

TARGET_LAST_WINDOW = 0.85
PLAIN_BM25_TOP1 = 0.465  # bench/tool_selection.py, "BM25 plain (baseline)", overall top-1
QUICK_QUERIES = 600
NN_THRESHOLD = 0.4  # best of 0.2-0.7 for the reference on the full stream, seed 42

TYPES: dict[str, Any] = {
    "string": str,
    "integer": int,
    "float": float,
    "number": float,
    "boolean": bool,
    "array": list,
    "tuple": list,
    "dict": dict,
    "object": dict,
    "any": Any,
}


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- the catalogue as real tools -----------------------------------------------------------


class WrongToolError(Exception):
    """What a tool that cannot answer the current query raises."""


@dataclass
class Oracle:
    """The current query's gold tools, and every call the tools received for it."""

    gold: frozenset[str] = frozenset()
    calls: list[tuple[str, bool]] = field(default_factory=list)

    def start(self, gold: frozenset[str]) -> None:
        self.gold = gold
        self.calls = []


@dataclass
class CatalogueTool:
    name: str  # in the registry (an identifier)
    original: str  # BFCL's name
    description: str
    params: dict[str, tuple[Any, str]]  # identifier -> (type, description)


def identifier(name: str) -> str:
    text = re.sub(r"\W", "_", name)
    if not text or text[0].isdigit():
        text = f"t_{text}"
    return f"{text}_" if keyword.iskeyword(text) else text


def one_line(text: Any) -> str:
    return " ".join(str(text or "").split())


def catalogue(data: Bfcl) -> list[CatalogueTool]:
    """One tool per distinct BFCL name: the first entry's description, every entry's
    parameters."""
    merged: dict[str, CatalogueTool] = {}
    taken: set[str] = set()
    for doc in data.tools:
        entry = merged.get(doc.name)
        if entry is None:
            name = identifier(doc.name)
            while name in taken:
                name += "_2"
            taken.add(name)
            entry = merged[doc.name] = CatalogueTool(name, doc.name, one_line(doc.description), {})
        properties = doc.parameters.get("properties") or {}
        for pname, schema in properties.items() if isinstance(properties, dict) else ():
            schema = schema if isinstance(schema, dict) else {}
            param = identifier(str(pname))
            if param not in entry.params:
                kind = TYPES.get(str(schema.get("type")), Any)
                entry.params[param] = (kind, one_line(schema.get("description")))
    return list(merged.values())


def make_function(spec: CatalogueTool, oracle: Oracle) -> Callable[..., Any]:
    """A function with ``spec``'s signature that answers only when it is a gold tool."""
    original = spec.original

    def call(**kwargs: Any) -> dict[str, Any]:
        ok = original in oracle.gold
        oracle.calls.append((original, ok))
        if not ok:
            raise WrongToolError(f"{original} cannot answer this query")
        return {
            "tool": original,
            "arguments": sorted(k for k, v in kwargs.items() if v is not None),
        }

    parameters = []
    annotations: dict[str, Any] = {}
    lines = []
    for pname, (kind, description) in spec.params.items():
        annotation = Any if kind is Any else kind | None
        parameters.append(inspect.Parameter(pname, inspect.Parameter.KEYWORD_ONLY, default=None))
        annotations[pname] = annotation
        lines.append(f"    {pname}: {description}" if description else f"    {pname}: -")
    call.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    call.__annotations__ = annotations
    call.__doc__ = "\n".join(["Args:", *lines]) if lines else None
    call.__name__ = spec.name
    return call


def build_registry(tools: Sequence[CatalogueTool], oracle: Oracle) -> ToolRegistry:
    registry = ToolRegistry()
    for spec in tools:
        registry.register_function(
            make_function(spec, oracle), name=spec.name, description=spec.description
        )
    return registry


# -- the stream ------------------------------------------------------------------------------


@dataclass
class Goal:
    text: str
    gold: frozenset[str]
    category: str
    seen: bool  # a gold tool of an earlier query in the stream


def stream(data: Bfcl, seed: int, limit: int | None) -> list[Goal]:
    queries = [q for q in data.queries if q.gold is not None and q.text.strip()]
    random.Random(seed).shuffle(queries)
    goals = []
    before: set[str] = set()
    for q in queries[:limit] if limit else queries:
        assert q.gold is not None
        goals.append(Goal(q.text, q.gold, q.category, bool(q.gold & before)))
        before |= q.gold
    return goals


@dataclass
class Outcome:
    first_ok: bool
    success: bool
    wasted: int
    calls: int
    planner: str  # semantic, memory, documents, or "not planned"


@dataclass
class Contender:
    label: str
    learning: bool
    oracle: Oracle
    orch: Orchestrator
    store: ExecutionStore
    outcomes: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    setup_seconds: float = 0.0


def make_contender(
    label: str,
    learning: bool,
    tools: Sequence[CatalogueTool],
    tmp: Path,
    candidates: int,
    embedder: MemoEmbedder | None,
    past_goals: str,
) -> Contender:
    """``embedder`` (shared by both contenders) ranks tools with BM25; with ``past_goals``
    "embedder" the ranker also finds similar past goals by it, else by shared words."""
    started = time.perf_counter()
    oracle = Oracle()
    registry = build_registry(tools, oracle)
    slug = label.replace(" ", "_")
    store = ExecutionStore(f"sqlite:///{tmp / f'{slug}.db'}", state_dir=tmp / f"state-{slug}")
    config = OrchestratorConfig(learning=learning, retry=RetryPolicy(max_attempts=1))
    loop = None
    if learning:
        ranker = ToolRanker(embedder=embedder if past_goals == "embedder" else None)
        loop = LearningLoop(registry, ranker=ranker)
    orch = Orchestrator(registry, store=store, config=config, llm=None, learning=loop)
    # One step per goal, wired to the learning loop as the constructor wires its default.
    planner = DendritePlanner(
        embedder=embedder,
        strategy=Strategy.SIMPLE,
        ranker=orch.learning.ranker if orch.learning else None,
        memory=orch.learning.memory if orch.learning else None,
    )
    planner.simple.candidates = candidates
    orch.planner = planner
    contender = Contender(label, learning, oracle, orch, store)
    contender.setup_seconds = time.perf_counter() - started
    return contender


async def run_one(contender: Contender, goal: Goal) -> Outcome:
    oracle = contender.oracle
    oracle.start(goal.gold)
    planner = "not planned"
    try:
        result = await contender.orch.run(goal.text)
        planner = result.plan.planner or "?"
    except (PlanningError, PlanValidationError):
        pass
    calls = oracle.calls
    return Outcome(
        first_ok=bool(calls) and calls[0][1],
        success=any(ok for _, ok in calls),
        wasted=sum(1 for _, ok in calls if not ok),
        calls=len(calls),
        planner=planner,
    )


async def run_stream(contender: Contender, goals: Sequence[Goal], console: Console) -> None:
    started = time.perf_counter()
    for number, goal in enumerate(goals, start=1):
        contender.outcomes.append(await run_one(contender, goal))
        if number % 500 == 0:
            note(console, f"  [{contender.label}] {number:,} goals in "
                 f"{time.perf_counter() - started:,.0f} s")  # fmt: skip
    contender.seconds = time.perf_counter() - started


# -- references (no orchestrator) ------------------------------------------------------------


def nearest_neighbour(
    goals: Sequence[Goal], fallback: Sequence[bool], threshold: float
) -> list[bool]:
    """First-choice hits of a rule that knows the gold tools of every earlier query.

    The tool of the most similar earlier query (``SimilarTexts``, the index the ranker uses)
    when the similarity reaches ``threshold``, else what learning off picked (``fallback``).
    Its labels are perfect, which no orchestrator has: it learns only from the tools it
    tried. A reference for what goal-text similarity can tell, not a contender.
    """
    index: SimilarTexts[str] = SimilarTexts()
    hits = []
    for goal, off in zip(goals, fallback, strict=True):
        match = index.search(goal.text, k=1, min_similarity=threshold)
        hits.append(match[0].item in goal.gold if match else off)
        for tool in sorted(goal.gold):
            index.add(goal.text, tool)
    return hits


def ceiling(goals: Sequence[Goal], fallback: Sequence[bool]) -> list[bool]:
    """Every seen query right, the unseen ones as learning off picked them."""
    return [g.seen or off for g, off in zip(goals, fallback, strict=True)]


# -- report ----------------------------------------------------------------------------------


def share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else float("nan")


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def print_environment(
    console: Console,
    args: argparse.Namespace,
    data: Bfcl,
    tools: list,
    goals: list[Goal],
    embedder: MemoEmbedder | None,
) -> None:
    table = Table(title="Environment and stream", show_header=False)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    categories: dict[str, int] = {}
    for g in goals:
        categories[g.category] = categories.get(g.category, 0) + 1
    seen = sum(g.seen for g in goals)
    for key, value in (
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()}, {platform.system()}, {cpus} CPUs"),
        ("pydantic / numpy / bm25s", f"{_version('pydantic')} / {_version('numpy')} / "
         f"{_version('bm25s')}"),
        ("data", str(args.data)),
        ("catalogue", f"{len(data.tools):,} BFCL entries -> {len(tools):,} registered tools "
         "(one per name, typed optional parameters)"),
        ("stream", f"{len(goals):,} queries with a gold answer, shuffled with seed {args.seed}: "
         + ", ".join(f"{c} {n:,}" for c, n in categories.items())),
        ("seen gold tool", f"{seen:,} of {len(goals):,} queries ({seen / len(goals):.1%}) "
         "have a gold tool that was gold for an earlier query"),
        ("orchestrator", f"SIMPLE strategy, {args.candidates} candidates, 2 fallbacks, "
         "max_replans=1, RetryPolicy(max_attempts=1), SQLite store, llm=None"),
        ("retrieval (both)", "BM25 alone" if embedder is None else
         f"BM25 blended with {embedder.name} ({_version('sentence-transformers')}, torch "
         f"{_version('torch')}), {embedder.embedded:,} texts embedded in "
         f"{embedder.seconds:,.0f} s before the runs"),
        ("ranker's similar past goals", "shared words" if embedder is None
         or args.past_goals == "words" else f"cosine of {embedder.name} embeddings"),
    ):  # fmt: skip
        table.add_row(key, value)
    console.print(table)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


@dataclass
class References:
    nn: list[bool]  # nearest_neighbour
    ceiling: list[bool]


def print_windows(
    console: Console,
    goals: list[Goal],
    contenders: list[Contender],
    refs: References,
    size: int,
) -> None:
    off, on = contenders
    table = Table(title=f"First-choice accuracy per window of {size} queries (learning off / on)")
    for column in (
        "queries", "seen share", "off", "on", "on - off", "seen: off / on", "unseen: off / on",
        "wasted/query: off / on", "ref. 1-NN", "ceiling", "on curve",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column in ("queries", "on curve") else "right")
    for start in range(0, len(goals), size):
        chunk = range(start, min(start + size, len(goals)))

        def hits(c: Contender, seen: bool | None, chunk: range = chunk) -> float:
            return share(
                [c.outcomes[i].first_ok for i in chunk if seen is None or goals[i].seen is seen]
            )

        a, b = hits(off, None), hits(on, None)
        table.add_row(
            f"{start + 1:,}-{chunk[-1] + 1:,}",
            f"{share([goals[i].seen for i in chunk]):.2f}",
            f"{a:.3f}",
            f"{b:.3f}",
            f"{b - a:+.3f}",
            f"{hits(off, True):.3f} / {hits(on, True):.3f}",
            f"{hits(off, False):.3f} / {hits(on, False):.3f}",
            f"{mean([off.outcomes[i].wasted for i in chunk]):.2f} / "
            f"{mean([on.outcomes[i].wasted for i in chunk]):.2f}",
            f"{share([refs.nn[i] for i in chunk]):.3f}",
            f"{share([refs.ceiling[i] for i in chunk]):.3f}",
            "#" * round(b * 40),
        )
    console.print(table)
    note(
        console,
        f"  seen share: queries whose gold tool was gold earlier in the stream. ref. 1-NN: the "
        f"gold tool of the most similar earlier query when the similarity is >= {NN_THRESHOLD}, "
        "else learning off's pick, with perfect labels for every earlier query (a reference, "
        "not an orchestrator). ceiling: every seen query right, the unseen ones as learning "
        "off did: the most that learning from history can add to this retriever.",
    )


def print_overall(
    console: Console, goals: list[Goal], contenders: list[Contender], refs: References
) -> None:
    table = Table(title="Overall (whole stream)")
    for column in (
        "contender", "first choice", "seen", "unseen", "success", "wasted/query",
        "calls/query", "not planned", "memory plans (first ok)", "ms/goal", "setup s",
    ):  # fmt: skip
        table.add_column(column, justify="left" if column == "contender" else "right")
    seen = [g.seen for g in goals]

    def split(hits: Sequence[bool]) -> list[str]:
        return [
            f"{share(hits):.3f}",
            f"{share([h for h, s in zip(hits, seen, strict=True) if s]):.3f}",
            f"{share([h for h, s in zip(hits, seen, strict=True) if not s]):.3f}",
        ]

    for c in contenders:
        o = c.outcomes
        memory = [x for x in o if x.planner == "memory"]
        table.add_row(
            c.label,
            *split([x.first_ok for x in o]),
            f"{share([x.success for x in o]):.3f}",
            f"{mean([x.wasted for x in o]):.2f}",
            f"{mean([x.calls for x in o]):.2f}",
            f"{sum(x.planner == 'not planned' for x in o):,}",
            f"{len(memory):,} ({share([x.first_ok for x in memory]):.2f})",
            f"{c.seconds / len(o) * 1000:.1f}",
            f"{c.setup_seconds:.1f}",
        )
    for label, hits in (("ref. 1-NN, perfect labels", refs.nn), ("ceiling", refs.ceiling)):
        table.add_row(f"[dim]{label}[/dim]", *split(hits), *["-"] * 7)
    console.print(table)
    n_seen = sum(seen)
    note(
        console,
        f"  seen: the {n_seen:,} queries with a gold tool that was gold earlier in the stream; "
        f"unseen: the other {len(goals) - n_seen:,}. success: some call reached a gold tool. "
        "not planned: the planner found no tool (no call; a wrong first choice). memory plans: "
        "runs planned by plan memory, and the share of them whose first call was right. "
        f"Plain BM25 in bench/tool_selection.py: top-1 {PLAIN_BM25_TOP1} over the same queries.",
    )


def print_verdict(
    console: Console,
    goals: list[Goal],
    contenders: list[Contender],
    refs: References,
    size: int,
) -> None:
    off, on = contenders
    last = range(max(0, len(goals) - size), len(goals))
    a = share([on.outcomes[i].first_ok for i in last])
    b = share([off.outcomes[i].first_ok for i in last])
    table = Table(title="Against the target")
    for column in ("check", "measured", "target", "pass"):
        table.add_column(column)
    table.add_row(
        f"first choice, last {len(last)} queries ({last[0] + 1:,}-{len(goals):,}), learning on",
        f"{a:.3f} (off {b:.3f}; ref. 1-NN {share([refs.nn[i] for i in last]):.3f}; "
        f"ceiling {share([refs.ceiling[i] for i in last]):.3f})",
        f">= {TARGET_LAST_WINDOW}",
        "[green]yes[/green]" if a >= TARGET_LAST_WINDOW else "[red]NO[/red]",
    )
    console.print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BFCL v4 folder")
    parser.add_argument("--seed", type=int, default=42, help="order of the stream")
    parser.add_argument("--window", type=int, default=200, help="queries per window")
    parser.add_argument("--limit", type=int, default=None, help="first N queries of the stream")
    parser.add_argument("--candidates", type=int, default=5, help="semantic planner candidates")
    parser.add_argument(
        "--embedder",
        choices=("none", "minilm"),
        default="none",
        help="retrieval for both contenders: BM25 alone, or BM25 blended with all-MiniLM-L6-v2 "
        "(the neural extra)",
    )
    parser.add_argument(
        "--past-goals",
        choices=("embedder", "words"),
        default="embedder",
        help="how the learning ranker finds similar past goals when there is an embedder",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"the first {QUICK_QUERIES} queries of the stream"
    )
    args = parser.parse_args(argv)
    if args.quick and args.limit is None:
        args.limit = QUICK_QUERIES
    if min(args.window, args.candidates, args.limit or 1) < 1:
        parser.error("--window, --candidates and --limit must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 180)
    # Flagged tools (failing, no alternative) are logged as warnings: hundreds here.
    logging.getLogger("dendrite").setLevel(logging.ERROR)
    started = time.perf_counter()
    data = load_bfcl(args.data, None)
    tools = catalogue(data)
    goals = stream(data, args.seed, args.limit)
    embedder = None
    if args.embedder == "minilm":
        embedder = MemoEmbedder(SentenceTransformerEmbedder())
        # Embedded once, before either contender runs, so neither pays for it in ms/goal:
        # the catalogue, and each goal as the planner passes it (no labels are involved).
        ToolRetriever.from_registry(build_registry(tools, Oracle()), embedder=embedder)
        embedder.prime([g.text.strip() for g in goals])
    print_environment(console, args, data, tools, goals, embedder)
    tmp = Path(tempfile.mkdtemp(prefix="dendrite_learn_tools_"))
    contenders: list[Contender] = []
    try:
        for label, learning in (("learning off", False), ("learning on", True)):
            note(console, f"{label}: registering {len(tools):,} tools …")
            contender = make_contender(
                label, learning, tools, tmp, args.candidates, embedder, args.past_goals
            )
            contenders.append(contender)
            note(console, f"{label}: running {len(goals):,} goals …")
            asyncio.run(run_stream(contender, goals, console))
    finally:
        for c in contenders:
            c.orch.close()
            c.store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    off_hits = [o.first_ok for o in contenders[0].outcomes]
    refs = References(nearest_neighbour(goals, off_hits, NN_THRESHOLD), ceiling(goals, off_hits))
    print_windows(console, goals, contenders, refs, args.window)
    print_overall(console, goals, contenders, refs)
    print_verdict(console, goals, contenders, refs, args.window)
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
