"""Tool selection on BFCL: how well ``dendrite.retrieval`` ranks a catalogue for a goal.

Why: every planner in Dendrite starts by retrieving the tools that fit a goal (the semantic
planner calls the best one, the LLM planner shows the top k in its prompt), and the
irrelevance case matters as much: when no registered tool fits, the right plan calls none.
This script measures both on the Berkeley Function Calling Leaderboard data (v4, read from
``../shared/benchdata/bfcl/``; nothing is copied into the repository).

1. Ranking. The functions of every category are pooled into one catalogue, deduplicated by
   (name, description): about 2,500 entries, 1,650 distinct names. Every query that has a
   gold answer (simple_python, multiple, live_simple, live_multiple, parallel_multiple) ranks
   the whole catalogue, not only its own 1 to 37 candidates. Metrics, at the tool level
   (a tool is a name: a registry holds one tool per name, and same-named BFCL entries are
   versions of one API whose descriptions differ in details no goal mentions), with the
   ranking collapsed to distinct names:

   - top-1: the first tool is a gold tool (for parallel_multiple, any of the query's 2 to 5
     gold tools counts);
   - top-5: at least one gold tool is among the first 5;
   - nDCG@10: binary gain 1 for each gold tool among the first 10, discounted by
     ``1 / log2(rank + 1)``, divided by the ideal DCG with ``min(#gold, 10)`` gold tools first.

   A second table gives the same metrics at the entry level (the exact (name, description)
   entry of the query's own candidates is the only right answer), which is stricter because
   a retriever cannot tell versions apart.

   Methods, in the same run: plain BM25 (bm25s' own tokenizer and English stop words over
   name + description + parameter names, the baseline), Dendrite's BM25 (identifier-aware
   tokenizer, stemming, name/description/parameter names and descriptions/tags), the neural
   embedder alone (cosine), and the two hybrids (reciprocal-rank fusion and the default
   score blend).

2. "No tool fits". As BFCL asks it: each query against its own candidate tools (a registry
   of 1 to 37 tools), calling a tool when at least one candidate ``fits`` (calibrated
   relevance >= threshold, see ``dendrite.retrieval.tools``), at the lenient threshold 0.25
   (the default) and the balanced one 0.5. On irrelevance and live_irrelevance the right
   decision is to call none (live_irrelevance queries with no candidate at all are left out);
   on the other categories, abstaining is the cost. The shipped calibration was fitted on this
   same data (``--calibrate`` refits it), so the table also gives 2-fold cross-validated
   figures: fitted on even-numbered queries, measured on odd ones and the reverse.

Run from the repository root (the neural rows need the ``neural`` extra)::

    .venv/bin/python bench/tool_selection.py                     # all of it, MiniLM on CPU
    .venv/bin/python bench/tool_selection.py --embedder none     # BM25 only
    .venv/bin/python bench/tool_selection.py --embedder openai \\
        --base-url http://127.0.0.1:8000/v1 --model bge-small-en  # any /v1/embeddings server
    .venv/bin/python bench/tool_selection.py --calibrate          # print refitted constants
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import bm25s
import numpy as np
from rich.console import Console
from rich.table import Table

from dendrite.retrieval import (
    Calibration,
    Embedder,
    OpenAIEmbedder,
    SentenceTransformerEmbedder,
    ToolDoc,
    ToolRetriever,
)
from dendrite.retrieval.lexical import tokenize
from dendrite.retrieval.tools import (
    BALANCED_THRESHOLD,
    HYBRID_CALIBRATION,
    LENIENT_THRESHOLD,
    LEXICAL_CALIBRATION,
)

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "benchdata" / "bfcl"
RANKED = ("simple_python", "multiple", "live_simple", "live_multiple", "parallel_multiple")
IRRELEVANT = ("irrelevance", "live_irrelevance")
CATEGORIES = RANKED + IRRELEVANT
DEPTH = 10  # nDCG cut-off
FETCH = 80  # entries fetched per query, enough for 10 distinct names

TARGET_TOP1 = 0.60


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- data ------------------------------------------------------------------------------------


@dataclass
class Query:
    id: str
    category: str
    text: str
    own: list[int]  # catalogue entries offered with the query
    gold: frozenset[str] | None  # gold tool names; None for the irrelevance categories
    gold_entries: frozenset[int]  # the own candidates that carry a gold name


@dataclass
class Bfcl:
    tools: list[ToolDoc]
    queries: list[Query]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tools]


def load_bfcl(root: Path, limit: int | None) -> Bfcl:
    if not root.is_dir():
        raise SystemExit(f"BFCL data not found at {root} (see ../shared/benchdata/README.md)")
    tools: list[ToolDoc] = []
    index: dict[tuple[str, str], int] = {}
    queries: list[Query] = []
    for category in CATEGORIES:
        gold: dict[str, frozenset[str]] = {}
        answers = root / "possible_answer" / f"BFCL_v4_{category}.json"
        if answers.exists():
            for line in answers.read_text().splitlines():
                row = json.loads(line)
                gold[row["id"]] = frozenset(next(iter(call)) for call in row["ground_truth"])
        rows = [json.loads(line) for line in (root / f"BFCL_v4_{category}.json").open()]
        for row in rows[:limit] if limit else rows:
            own = []
            for spec in row["function"]:
                key = (spec["name"], spec.get("description") or "")
                if key not in index:
                    index[key] = len(tools)
                    tools.append(ToolDoc.from_mapping(spec))
                own.append(index[key])
            text = "\n".join(
                m["content"] for turn in row["question"] for m in turn if m["role"] == "user"
            )
            if category in RANKED and row["id"] not in gold:
                continue
            names = gold.get(row["id"])
            entries = frozenset(i for i in own if names and tools[i].name in names)
            queries.append(Query(row["id"], category, text, own, names, entries))
    return Bfcl(tools, queries)


# -- embedders -------------------------------------------------------------------------------


class MemoEmbedder:
    """An :class:`Embedder` that remembers every vector, so the same text is embedded once
    (the per-query retrievers of section 2 share the catalogue's vectors)."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.name = inner.name
        self._vectors: dict[str, np.ndarray] = {}
        self.seconds = 0.0
        self.embedded = 0

    def prime(self, texts: Sequence[str]) -> None:
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        if missing:
            started = time.perf_counter()
            vectors = self.inner.embed(missing)
            self.seconds += time.perf_counter() - started
            self.embedded += len(missing)
            self._vectors.update(zip(missing, vectors, strict=True))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.prime(texts)
        return np.stack([self._vectors[t] for t in texts])


def make_embedder(args: argparse.Namespace, console: Console) -> MemoEmbedder | None:
    if args.embedder == "none":
        return None
    if args.embedder == "openai":
        if not args.base_url or not args.model:
            raise SystemExit("--embedder openai needs --base-url and --model")
        return MemoEmbedder(OpenAIEmbedder(args.base_url, args.model, os.getenv("OPENAI_API_KEY")))
    try:
        return MemoEmbedder(SentenceTransformerEmbedder(args.model))
    except ImportError as exc:
        note(console, f"no neural rows: {exc}")
        return None


# -- section 1: ranking ----------------------------------------------------------------------


@dataclass
class Scores:
    top1: float
    top5: float
    ndcg: float
    n: int


def _metrics(ranked: Sequence[Any], relevant: Callable[[Any], bool], n_gold: int) -> tuple:
    rel = [relevant(x) for x in ranked[:DEPTH]]
    dcg = sum(1.0 / math.log2(r + 2) for r, hit in enumerate(rel) if hit)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(n_gold, DEPTH)))
    return (bool(rel and rel[0]), any(rel[:5]), dcg / ideal if ideal else 0.0)


def distinct_names(entries: Sequence[int], names: Sequence[str]) -> list[str]:
    seen: dict[str, None] = {}
    for i in entries:
        seen.setdefault(names[i], None)
        if len(seen) == DEPTH:
            break
    return list(seen)


@dataclass
class Method:
    label: str
    rank: Callable[[str], list[int]]  # catalogue entries, best first
    tool_level: dict[str, list[tuple]] = field(default_factory=dict)
    entry_level: dict[str, list[tuple]] = field(default_factory=dict)
    seconds: float = 0.0


def plain_bm25(tools: Sequence[ToolDoc]) -> Callable[[str], list[int]]:
    """The baseline: bm25s' own tokenizer over name + description + parameter names."""
    texts = [
        f"{t.name} {t.description} {' '.join(p for p, _ in t.parameter_items())}" for t in tools
    ]
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def rank(goal: str) -> list[int]:
        tokens = bm25s.tokenization.tokenize(
            [goal], stopwords="en", return_ids=False, show_progress=False
        )[0]
        ids = retriever.get_tokens_ids(tokens)
        if not ids:
            return []
        scores = retriever.get_scores_from_ids(ids)
        order = np.lexsort((np.arange(len(scores)), -scores))[:FETCH]
        return [int(i) for i in order if scores[i] > 0]

    return rank


def retriever_rank(retriever: ToolRetriever) -> Callable[[str], list[int]]:
    return lambda goal: [r.index for r in retriever.rank(goal, k=FETCH)]


def run_ranking(data: Bfcl, methods: list[Method], console: Console) -> None:
    names = data.names
    queries = [q for q in data.queries if q.gold is not None and q.text.strip()]
    for method in methods:
        note(console, f"1. ranking {len(queries):,} queries with {method.label} …")
        started = time.perf_counter()
        for q in queries:
            entries = method.rank(q.text)
            assert q.gold is not None
            gold = q.gold
            tool = _metrics(distinct_names(entries, names), gold.__contains__, len(gold))
            exact = q.gold_entries
            entry = _metrics(entries, exact.__contains__, len(exact))
            method.tool_level.setdefault(q.category, []).append(tool)
            method.entry_level.setdefault(q.category, []).append(entry)
        method.seconds = time.perf_counter() - started


def summarize(rows: dict[str, list[tuple]]) -> dict[str, Scores]:
    out = {}
    for category in (*RANKED, "overall"):
        values = (
            [v for vs in rows.values() for v in vs] if category == "overall" else rows.get(category)
        )
        if values:
            a = np.asarray(values, dtype=np.float64)
            out[category] = Scores(*a.mean(axis=0).tolist(), n=len(values))
    return out


def print_ranking(console: Console, methods: list[Method], level: str) -> None:
    title = (
        "1. Ranking the pooled catalogue: tool level (top-1 / top-5 / nDCG@10)"
        if level == "tool"
        else "1b. Same, entry level (exact (name, description) entry): top-1 / top-5 / nDCG@10"
    )
    table = Table(title=title)
    table.add_column("method")
    summaries = {
        m.label: summarize(m.tool_level if level == "tool" else m.entry_level) for m in methods
    }
    first = next(iter(summaries.values()))
    for category in first:
        table.add_column(f"{category} (n={first[category].n})", justify="right")
    for label, summary in summaries.items():
        cells = [f"{s.top1:.3f} / {s.top5:.3f} / {s.ndcg:.3f}" for s in summary.values()]
        table.add_row(label, *cells)
    console.print(table)


# -- section 2: no tool fits -----------------------------------------------------------------


@dataclass
class Decision:
    category: str
    relevant: bool
    features: np.ndarray  # per candidate: cosine (0 without embedder), ln(1 + matched words)
    top_is_gold: bool  # the retriever's first candidate is a gold tool


def collect_decisions(data: Bfcl, embedder: Embedder | None) -> list[Decision]:
    out = []
    for q in data.queries:
        if not q.own or not q.text.strip():
            continue
        retriever = ToolRetriever([data.tools[i] for i in q.own], embedder)
        _, semantic, _ = retriever.scores(q.text)
        goal_words = set(tokenize(q.text))
        matched = np.array(
            [len(goal_words & set(tokenize(t.lexical_text()))) for t in retriever.tools]
        )
        cosine = semantic if semantic is not None else np.zeros(len(matched))
        features = np.stack([cosine, np.log1p(matched)], axis=1)
        ranked = retriever.rank(q.text, k=1)
        top_is_gold = bool(ranked and q.gold is not None and ranked[0].name in q.gold)
        out.append(Decision(q.category, q.gold is not None, features, top_is_gold))
    return out


def fit_calibration(decisions: Sequence[Decision], semantic: bool) -> Calibration:
    """Class-balanced logistic regression (Newton's method) on each query's best features."""
    cols = [0, 1] if semantic else [1]
    x = np.array([d.features[:, cols].max(axis=0) for d in decisions])
    y = np.array([d.relevant for d in decisions], dtype=np.float64)
    weights = np.where(y > 0, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    x1 = np.c_[x, np.ones(len(x))]
    beta = np.zeros(x1.shape[1])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-(x1 @ beta)))
        gradient = x1.T @ (weights * (p - y))
        hessian = (x1 * (weights * p * (1 - p))[:, None]).T @ x1 + 1e-9 * np.eye(len(beta))
        step = np.linalg.solve(hessian, gradient)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    if semantic:
        return Calibration(semantic=float(beta[0]), lexical=float(beta[1]), bias=float(beta[2]))
    return Calibration(semantic=0.0, lexical=float(beta[0]), bias=float(beta[1]))


def calls_a_tool(d: Decision, calibration: Calibration, threshold: float) -> bool:
    cosine = d.features[:, 0] if calibration.semantic else None
    matched = np.expm1(d.features[:, 1])
    return bool((calibration.relevance(cosine, matched) >= threshold).any())


@dataclass
class DecisionRow:
    label: str
    per_category: dict[str, tuple[float, float, int]]  # right decision, right tool too, n


def evaluate_decisions(
    label: str,
    decisions: Sequence[Decision],
    calibration: Calibration | None,
    semantic: bool,
    threshold: float,
) -> DecisionRow:
    """With ``calibration`` None: 2-fold cross-validation (fit on one half, judge the other)."""
    if calibration is None:
        fitted = [
            fit_calibration([d for i, d in enumerate(decisions) if i % 2 != fold], semantic)
            for fold in (0, 1)
        ]
        verdicts = [calls_a_tool(d, fitted[i % 2], threshold) for i, d in enumerate(decisions)]
    else:
        verdicts = [calls_a_tool(d, calibration, threshold) for d in decisions]
    groups: dict[str, list[tuple[bool, bool]]] = {}
    for d, calls in zip(decisions, verdicts, strict=True):
        right = calls == d.relevant
        outcome = (right, right and (not calls or d.top_is_gold))
        groups.setdefault(d.category, []).append(outcome)
        groups.setdefault("relevant" if d.relevant else "irrelevant", []).append(outcome)
    per = {}
    for key, values in groups.items():
        a = np.asarray(values, dtype=np.float64)
        per[key] = (float(a[:, 0].mean()), float(a[:, 1].mean()), len(values))
    return DecisionRow(label, per)


def decision_rows(
    name: str, decisions: Sequence[Decision], shipped: Calibration, semantic: bool
) -> list[DecisionRow]:
    return [
        evaluate_decisions(f"{name} {how} >={t:g}", decisions, cal, semantic, t)
        for how, cal in (("shipped", shipped), ("CV", None))
        for t in (LENIENT_THRESHOLD, BALANCED_THRESHOLD)
    ]


def print_decisions(console: Console, rows: list[DecisionRow]) -> None:
    table = Table(
        title="2. Call a tool or none? Each query against its own candidates: share of right "
        "decisions (relevant queries: a tool is called; in brackets: and the first one is gold)"
    )
    table.add_column("queries")
    for row in rows:
        table.add_column(row.label, justify="right")
    first = rows[0].per_category
    for key in (*IRRELEVANT, "irrelevant", *RANKED, "relevant"):
        if key not in first:
            continue
        relevant = key in RANKED or key == "relevant"
        cells = []
        for row in rows:
            right, with_tool, _ = row.per_category[key]
            cells.append(f"{right:.3f} ({with_tool:.3f})" if relevant else f"{right:.3f}")
        label = f"{key} (n={first[key][2]:,})"
        table.add_row(
            f"[bold]{label}[/bold]" if key in ("irrelevant", "relevant") else label, *cells
        )
    console.print(table)
    note(
        console,
        "  relevance = sigmoid(sem * cosine + lex * ln(1 + goal words in the tool) + bias); a "
        "tool is called when one candidate's relevance reaches the threshold (0.25: lenient, the "
        "default; 0.5: balanced). shipped: the constants in dendrite.retrieval.tools, fitted on "
        "all of this data; CV: refitted on one half of the queries, judged on the other.",
    )


# -- report ----------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def print_environment(
    console: Console, args: argparse.Namespace, data: Bfcl, embedder: MemoEmbedder | None
) -> None:
    table = Table(title="Environment and data", show_header=False)
    counts = {c: sum(q.category == c for q in data.queries) for c in CATEGORIES}
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for key, value in (
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()}, {platform.system()}, {cpus} CPUs"),
        ("numpy / bm25s", f"{np.__version__} / {bm25s.__version__}"),
        ("torch / sentence-transformers", f"{_version('torch')} / "
         f"{_version('sentence-transformers')}"),
        ("embedder", embedder.name if embedder else "none (BM25 only)"),
        ("data", str(args.data)),
        ("catalogue", f"{len(data.tools):,} entries (name, description), "
         f"{len(set(data.names)):,} distinct names"),
        ("queries", ", ".join(f"{c} {n:,}" for c, n in counts.items())),
    ):  # fmt: skip
        table.add_row(key, value)
    console.print(table)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BFCL v4 folder")
    parser.add_argument("--embedder", choices=("minilm", "openai", "none"), default="minilm")
    parser.add_argument("--model", default=None, help="embedding model (name or path)")
    parser.add_argument("--base-url", default=None, help="for --embedder openai")
    parser.add_argument("--limit", type=int, default=None, help="queries per category (smoke)")
    parser.add_argument("--calibrate", action="store_true", help="print refitted constants")
    args = parser.parse_args(argv)
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    started = time.perf_counter()
    data = load_bfcl(args.data, args.limit)
    embedder = make_embedder(args, console)
    print_environment(console, args, data, embedder)

    if embedder is not None:
        note(console, f"embedding {len(data.tools):,} tools and {len(data.queries):,} goals …")
        embedder.prime([t.semantic_text() for t in data.tools])
        embedder.prime([q.text for q in data.queries if q.text.strip()])
        note(
            console,
            f"  {embedder.embedded:,} texts in {embedder.seconds:.1f} s "
            f"({embedder.embedded / max(embedder.seconds, 1e-9):,.0f} texts/s)",
        )

    methods = [
        Method("BM25 plain (baseline)", plain_bm25(data.tools)),
        Method("BM25 dendrite", retriever_rank(ToolRetriever(data.tools))),
    ]
    if embedder is not None:
        methods += [
            Method(
                f"neural ({embedder.name})",
                retriever_rank(ToolRetriever(data.tools, embedder, semantic_weight=1.0)),
            ),
            Method("hybrid RRF", retriever_rank(ToolRetriever(data.tools, embedder, fusion="rrf"))),
            Method("hybrid blend (default)", retriever_rank(ToolRetriever(data.tools, embedder))),
        ]
    run_ranking(data, methods, console)
    print_ranking(console, methods, "tool")
    print_ranking(console, methods, "entry")

    note(console, "2. no-tool decision, one retriever per query over its own candidates …")
    lexical = collect_decisions(data, None)
    rows = decision_rows("BM25", lexical, LEXICAL_CALIBRATION, False)
    if embedder is not None:
        hybrid = collect_decisions(data, embedder)
        rows += decision_rows("hybrid", hybrid, HYBRID_CALIBRATION, True)
    print_decisions(console, rows)
    if args.calibrate:
        for label, decisions, semantic in (
            ("LEXICAL_CALIBRATION", lexical, False),
            *([("HYBRID_CALIBRATION", hybrid, True)] if embedder is not None else []),
        ):
            c = fit_calibration(decisions, semantic)
            console.print(
                f"{label} = Calibration(semantic={c.semantic:.3f}, lexical={c.lexical:.3f}, "
                f"bias={c.bias:.3f})",
                markup=False,
            )

    best = max(methods, key=lambda m: summarize(m.tool_level)["overall"].top1)
    top1 = summarize(best.tool_level)["overall"].top1
    verdict = "meets" if top1 >= TARGET_TOP1 else "misses"
    console.print(
        f"best overall top-1 (tool level): {best.label} {top1:.3f}, which {verdict} the "
        f"target of {TARGET_TOP1:.2f}",
        markup=False,
    )
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
