"""Learning to route between a strong and a weak model online, on RouteLLM's MMLU and GSM8K.

Why: ``dendrite.learning.Router`` picks a model tier per task and learns only from the outcome
of the tier it picked (a contextual bandit). The question it must answer is the one RouteLLM
asks: how much of the strong model's quality can be kept while sending fewer tasks to it?
RouteLLM trains its routers offline on preference data; this router starts from nothing and
learns while it routes. The data (read from ``../shared/benchdata/routellm/``, never copied)
hold, for every prompt, whether each of the two models answered it correctly:
GPT-4 (gpt-4-1106-preview, the strong one) and Mixtral-8x7B-Instruct (the weak one).

Protocol, per dataset (MMLU: 57 subject files; GSM8K: one file), with the prompts that the
RouteLLM authors found in their training data removed (``*_contaminated_prompts.jsonl``):

- the prompts are streamed in a fixed random order (``--seeds`` orders; figures are means);
- for each, the router chooses ``strong`` (cost 1) or ``weak`` (cost 0) from the prompt's
  features, is told whether the model it chose was right, and learns from that alone;
- ``cost_weight`` is swept: the reward is ``correct - cost_weight * cost``, so a larger weight
  buys fewer strong calls at some loss of accuracy;
- accuracy is reported as a share of the strong model's accuracy, against the share of calls
  that went to the strong model, over the whole stream (learning included). The baseline is
  random routing at the same strong share: ``weak + share * (strong - weak)`` in expectation,
  also simulated with the same seeds.

Featurisers compared (``--featurisers``): ``type`` (the task type alone: the MMLU subject; for
GSM8K, which is one task type, this is a context-free bandit), ``type+words`` (the default
featuriser: task type, hashed bag of words of the prompt, its length and count of numbers),
``words`` (the same without the task type) and ``type+minilm`` (task type and the
all-MiniLM-L6-v2 embedding of the prompt; needs the ``neural`` extra; embeddings are computed
once and cached under ``--cache-dir``).

Reference points printed with the results: random routing needs about 68% strong calls to
keep 95% of GPT-4's MMLU accuracy; RouteLLM reports about 45% cost savings on MMLU (35% on
GSM8K) at 95%, trained offline; the hindsight router per task type (knowing each subject's
accuracies in advance, which no online router can) bounds what the task type alone can give.

Run from the repository root::

    .venv/bin/python bench/learn_routing.py                       # everything (about an hour
                                                                  # on 2 CPUs, MiniLM included)
    .venv/bin/python bench/learn_routing.py --quick               # one order, fewer weights
    .venv/bin/python bench/learn_routing.py --featurisers type,type+words --datasets mmlu
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from dendrite.learning import HashedFeaturiser, Router, TaskFeatures

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "benchdata" / "routellm"
WEAK_COLUMN = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG_COLUMN = "gpt-4-1106-preview"
DATASETS = ("mmlu", "gsm8k")
FEATURISERS = ("type", "type+words", "words", "type+minilm")
DEFAULT_WEIGHTS = "0,0.05,0.08,0.1,0.12,0.13,0.14,0.15,0.17,0.2,0.25,0.3"
TARGET_QUALITY = 0.95  # of the strong model's accuracy
TARGET_SHARE = 0.50  # of the calls going to the strong model
ROUTELLM_SAVINGS = {"mmlu": 0.45, "gsm8k": 0.35}  # published, at 95% of GPT-4's quality
MAX_TEXT_CHARS = 4000  # what HashedFeaturiser reads of a goal


def note(console: Console, text: str) -> None:
    """A progress or context line: dim, and never read as rich markup."""
    console.print(text, style="dim", markup=False, highlight=False)


# -- data ------------------------------------------------------------------------------------


@dataclass
class Dataset:
    name: str
    task_types: list[str]
    prompts: list[str]
    weak: np.ndarray  # bool: the weak model answered correctly
    strong: np.ndarray
    dropped: int  # contaminated prompts removed

    @property
    def size(self) -> int:
        return len(self.prompts)

    @property
    def weak_accuracy(self) -> float:
        return float(self.weak.mean())

    @property
    def strong_accuracy(self) -> float:
        return float(self.strong.mean())

    def random_quality(self, share: float, rows: np.ndarray | None = None) -> float:
        """Expected accuracy of random routing at ``share`` strong calls, / strong accuracy."""
        weak = self.weak if rows is None else self.weak[rows]
        strong = self.strong if rows is None else self.strong[rows]
        return float((weak.mean() + share * (strong.mean() - weak.mean())) / strong.mean())

    def random_share_for(self, quality: float) -> float:
        w, s = self.weak_accuracy, self.strong_accuracy
        return (quality * s - w) / (s - w)

    def hindsight_share_for(self, quality: float) -> float:
        """Fewest strong calls for ``quality`` when each task type's accuracies are known and
        whole task types go to the strong model, best gain first (interpolated)."""
        types = sorted(set(self.task_types))
        index = {t: i for i, t in enumerate(types)}
        of = np.array([index[t] for t in self.task_types])
        counts = np.bincount(of, minlength=len(types))
        gain = np.bincount(of, self.strong.astype(float) - self.weak.astype(float), len(types))
        order = np.argsort(-gain / counts)
        target = quality * self.strong.sum()
        correct, calls = float(self.weak.sum()), 0
        for i in order:
            if correct + gain[i] >= target:
                return (calls + counts[i] * (target - correct) / gain[i]) / self.size
            correct += gain[i]
            calls += counts[i]
        return 1.0


def _contaminated(path: Path) -> set[str]:
    return {json.loads(line)["eval_prompt"] for line in path.open() if line.strip()}


def _read(path: Path, task_type: str, drop: set[str], data: dict[str, list]) -> int:
    dropped = 0
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            if row["prompt"] in drop:
                dropped += 1
                continue
            data["types"].append(task_type)
            data["prompts"].append(row["prompt"])
            data["weak"].append(row[WEAK_COLUMN] == "True")
            data["strong"].append(row[STRONG_COLUMN] == "True")
    return dropped


def load(root: Path, name: str) -> Dataset:
    if not root.is_dir():
        raise SystemExit(f"RouteLLM data not found at {root} (see ../shared/benchdata/README.md)")
    data: dict[str, list] = {"types": [], "prompts": [], "weak": [], "strong": []}
    drop = _contaminated(root / f"{name}_contaminated_prompts.jsonl")
    if name == "mmlu":
        files = sorted((root / "mmlu").glob("mmlu_*.csv"))
        dropped = sum(_read(f, f.stem.removeprefix("mmlu_"), drop, data) for f in files)
    else:
        dropped = _read(root / "gsm8k_responses.csv", "grade_school_math", drop, data)
    return Dataset(
        name=name,
        task_types=data["types"],
        prompts=data["prompts"],
        weak=np.array(data["weak"], dtype=bool),
        strong=np.array(data["strong"], dtype=bool),
        dropped=dropped,
    )


# -- embeddings ------------------------------------------------------------------------------


class PrecomputedEmbedder:
    """An Embedder over vectors computed once for every prompt (the runs look them up)."""

    def __init__(self, name: str, texts: Sequence[str], vectors: np.ndarray) -> None:
        self.name = name
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = vectors
        self._blank = np.zeros(vectors.shape[1], dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self._rows.get(t) for t in texts]
        return np.stack([self._vectors[r] if r is not None else self._blank for r in rows])


def minilm_vectors(
    dataset: Dataset, cache_dir: Path, console: Console
) -> PrecomputedEmbedder | None:
    texts = [p[:MAX_TEXT_CHARS] for p in dataset.prompts]
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:16]
    path = cache_dir / f"minilm-{dataset.name}-{digest}.npy"
    name = "sentence-transformers/all-MiniLM-L6-v2"
    if path.exists():
        return PrecomputedEmbedder(name, texts, np.load(path))
    try:
        from dendrite.retrieval import SentenceTransformerEmbedder

        embedder = SentenceTransformerEmbedder()
    except ImportError as exc:
        note(console, f"no type+minilm rows: {exc}")
        return None
    note(console, f"embedding {len(texts):,} {dataset.name} prompts with MiniLM (cached after) …")
    started = time.perf_counter()
    vectors = embedder.embed(texts)
    note(console, f"… {time.perf_counter() - started:,.0f} s")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return PrecomputedEmbedder(name, texts, vectors)


# -- simulation ------------------------------------------------------------------------------

_DATA: dict[str, Dataset] = {}
_EMBEDDERS: dict[str, PrecomputedEmbedder] = {}
_ROUTER_OPTIONS: dict[str, float] = {}  # Router keyword arguments given on the command line


@dataclass
class Run:
    dataset: str
    featuriser: str
    cost_weight: float
    seed: int
    order: np.ndarray  # prompt indices in stream order
    strong: np.ndarray  # bool per step: routed to the strong model
    correct: np.ndarray  # bool per step
    explored: np.ndarray  # bool per step: not the option with the best expected reward
    seconds: float  # choose + learn, all steps

    @property
    def share(self) -> float:
        return float(self.strong.mean())

    def quality(self, data: Dataset) -> float:
        return float(self.correct.mean() / data.strong_accuracy)


def make_featuriser(name: str, dataset: str) -> HashedFeaturiser:
    if name == "type":
        return HashedFeaturiser(text_dims=0)
    if name == "type+minilm":
        return HashedFeaturiser(text_dims=0, embedder=_EMBEDDERS[dataset])
    return HashedFeaturiser()


def simulate(job: tuple[str, str, float, int]) -> Run:
    dataset, featuriser, cost_weight, seed = job
    data = _DATA[dataset]
    router = Router(
        ["weak", "strong"],
        costs={"weak": 0.0, "strong": 1.0},
        cost_weight=cost_weight,
        featuriser=make_featuriser(featuriser, dataset),
        seed=1000 + seed,
        **_ROUTER_OPTIONS,
    )
    order = np.random.default_rng(seed).permutation(data.size)
    strong = np.zeros(data.size, dtype=bool)
    correct = np.zeros(data.size, dtype=bool)
    explored = np.zeros(data.size, dtype=bool)
    use_type = featuriser != "words"
    elapsed = 0.0
    for step, row in enumerate(order):
        features = TaskFeatures(
            text=data.prompts[row], task_type=data.task_types[row] if use_type else None
        )
        eid = f"{dataset}-{row}"
        started = time.perf_counter()
        choice = router.choose(features, eid)
        right = bool(data.strong[row] if choice.option == "strong" else data.weak[row])
        router.learn(eid, right)
        elapsed += time.perf_counter() - started
        strong[step], correct[step], explored[step] = (
            choice.option == "strong",
            right,
            choice.explored,
        )
    return Run(dataset, featuriser, cost_weight, seed, order, strong, correct, explored, elapsed)


def random_routing(data: Dataset, share: float, seed: int) -> float:
    """Simulated random routing at ``share``: accuracy / strong accuracy."""
    pick = np.random.default_rng(10_000 + seed).random(data.size) < share
    return float(np.where(pick, data.strong, data.weak).mean() / data.strong_accuracy)


# -- summaries -------------------------------------------------------------------------------


@dataclass
class Point:
    featuriser: str
    cost_weight: float
    share: float
    share_sd: float
    quality: float
    quality_sd: float
    random_expected: float
    random_simulated: float
    explored: float
    us_per_decision: float


def points(data: Dataset, runs: list[Run]) -> list[Point]:
    out = []
    keys = sorted({(r.featuriser, r.cost_weight) for r in runs}, key=lambda k: (k[0], k[1]))
    for featuriser, weight in keys:
        group = [r for r in runs if (r.featuriser, r.cost_weight) == (featuriser, weight)]
        shares = np.array([r.share for r in group])
        qualities = np.array([r.quality(data) for r in group])
        out.append(
            Point(
                featuriser=featuriser,
                cost_weight=weight,
                share=float(shares.mean()),
                share_sd=float(shares.std()),
                quality=float(qualities.mean()),
                quality_sd=float(qualities.std()),
                random_expected=data.random_quality(float(shares.mean())),
                random_simulated=float(
                    np.mean([random_routing(data, r.share, r.seed) for r in group])
                ),
                explored=float(np.mean([r.explored.mean() for r in group])),
                us_per_decision=float(np.mean([r.seconds / data.size for r in group]) * 1e6),
            )
        )
    return out


def frontier(curve: list[Point]) -> list[tuple[float, float]]:
    """The (share, quality) points that no other point beats on both, by share."""
    pts = sorted((p.share, p.quality) for p in curve)
    out: list[tuple[float, float]] = []
    for share, quality in pts:
        if out and quality <= out[-1][1]:
            continue
        out.append((share, quality))
    return out


def share_for(curve: list[Point], quality: float) -> float | None:
    """Fewest strong calls reaching ``quality``, interpolating the frontier linearly."""
    pts = frontier(curve)
    for (s0, q0), (s1, q1) in itertools.pairwise(pts):
        if q0 < quality <= q1:
            return s0 + (s1 - s0) * (quality - q0) / (q1 - q0)
    if pts and pts[0][1] >= quality:
        return pts[0][0]
    return None


def quality_at(curve: list[Point], share: float) -> float | None:
    pts = frontier(curve)
    for (s0, q0), (s1, q1) in itertools.pairwise(pts):
        if s0 <= share <= s1:
            return q0 + (q1 - q0) * (share - s0) / (s1 - s0)
    return None


# -- printing --------------------------------------------------------------------------------


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def pct(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.{digits}f}%"


def print_environment(
    console: Console, args: argparse.Namespace, datasets: dict[str, Dataset]
) -> None:
    table = Table(title="Environment and data", show_header=False)
    router = Router(["weak", "strong"], **_ROUTER_OPTIONS)
    rows = [
        ("python", platform.python_version()),
        ("machine", f"{platform.machine()}, {platform.system()}, {_cpus()} CPUs"),
        ("numpy", np.__version__),
        ("torch / sentence-transformers", f"{_version('torch')} / "
         f"{_version('sentence-transformers')}"),
        ("router", f"{router.policy} sampling, exploration {router.exploration:g}, prior "
         f"strength {router.prior_strength:g}, noise prior {router.noise:g} "
         f"({'local' if router.local_noise else 'pooled'}); costs weak 0, strong 1"),
        ("cost weights", ", ".join(f"{w:g}" for w in args.cost_weights)),
        ("stream orders (seeds)", ", ".join(str(s) for s in args.seeds)),
        ("data", str(args.data)),
    ]  # fmt: skip
    for data in datasets.values():
        rows.append(
            (
                data.name,
                f"{data.size:,} prompts ({data.dropped} contaminated dropped), "
                f"{len(set(data.task_types))} task types; weak {pct(data.weak_accuracy)}, "
                f"strong {pct(data.strong_accuracy)} correct",
            )
        )
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def print_sweep(console: Console, data: Dataset, curve: list[Point], seeds: int) -> None:
    table = Table(
        title=f"{data.name}: strong share and accuracy along the cost weight "
        f"(accuracy as % of the strong model's {pct(data.strong_accuracy)}; "
        f"mean of {seeds} stream order{'s' if seeds > 1 else ''})"
    )
    for column in ("featuriser", "cost weight", "strong share", "accuracy", "random, expected",
                   "random, simulated", "gain vs random", "explored", "µs / decision"):  # fmt: skip
        table.add_column(column, justify="left" if column == "featuriser" else "right")
    previous = None
    for p in curve:
        if previous is not None and p.featuriser != previous:
            table.add_section()
        previous = p.featuriser
        spread = f" ±{100 * p.share_sd:.1f}" if seeds > 1 else ""
        qspread = f" ±{100 * p.quality_sd:.1f}" if seeds > 1 else ""
        table.add_row(
            p.featuriser,
            f"{p.cost_weight:g}",
            pct(p.share) + spread,
            pct(p.quality) + qspread,
            pct(p.random_expected),
            pct(p.random_simulated),
            f"{100 * (p.quality - p.random_expected):+.1f} pts",
            pct(p.explored),
            f"{p.us_per_decision:,.0f}",
        )
    console.print(table)


def print_summary(
    console: Console, datasets: dict[str, Dataset], curves: dict[str, list[Point]]
) -> None:
    table = Table(
        title=f"Summary: strong calls needed to keep {pct(TARGET_QUALITY, 0)} of the strong "
        f"model's accuracy (target: <= {pct(TARGET_SHARE, 0)}, learning online from zero)"
    )
    columns = ("dataset", "router", f"strong share for {pct(TARGET_QUALITY, 0)}",
               f"accuracy at {pct(TARGET_SHARE, 0)} strong", "vs random", "target")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("dataset", "router") else "right")
    for name, data in datasets.items():
        curve = curves[name]
        for featuriser in dict.fromkeys(p.featuriser for p in curve):
            mine = [p for p in curve if p.featuriser == featuriser]
            need = share_for(mine, TARGET_QUALITY)
            at_half = quality_at(mine, TARGET_SHARE)
            random_at_half = data.random_quality(TARGET_SHARE)
            ok = need is not None and need <= TARGET_SHARE
            table.add_row(
                name,
                f"online, {featuriser}",
                pct(need) if need is not None else f"> {pct(max(p.share for p in mine))}",
                pct(at_half),
                "n/a" if at_half is None else f"{100 * (at_half - random_at_half):+.1f} pts",
                "[green]met[/green]" if ok else "[red]not met[/red]",
            )
        random_need = data.random_share_for(TARGET_QUALITY)
        table.add_row(name, "random routing", pct(random_need), pct(random_at_half), "", "")
        table.add_row(
            name,
            "hindsight per task type (not online)",
            pct(data.hindsight_share_for(TARGET_QUALITY)),
            "",
            "",
            "",
        )
        table.add_row(
            name,
            "RouteLLM, trained offline (published)",
            pct(1 - ROUTELLM_SAVINGS[name], 0),
            "",
            "",
            "",
        )
        table.add_section()
    console.print(table)


def pick_curve_run(data: Dataset, runs: list[Run], featuriser: str) -> float | None:
    """The cost weight whose point is cheapest at >= the target quality, else the best one."""
    curve = [p for p in points(data, [r for r in runs if r.featuriser == featuriser])]
    if not curve:
        return None
    good = [p for p in curve if p.quality >= TARGET_QUALITY]
    best = min(good, key=lambda p: p.share) if good else max(curve, key=lambda p: p.quality)
    return best.cost_weight


def print_learning_curve(
    console: Console, data: Dataset, runs: list[Run], featuriser: str, window: int
) -> None:
    weight = pick_curve_run(data, runs, featuriser)
    if weight is None:
        return
    group = [r for r in runs if r.featuriser == featuriser and r.cost_weight == weight]
    table = Table(
        title=f"{data.name}: learning curve, {featuriser}, cost weight {weight:g} "
        f"(per window of {window:,} prompts, mean of {len(group)} order"
        f"{'s' if len(group) > 1 else ''})"
    )
    for column in ("prompts", "accuracy", "strong share", "explored", "random at that share",
                   "gain vs random"):  # fmt: skip
        table.add_column(column, justify="right")
    for start in range(0, data.size, window):
        end = min(start + window, data.size)
        quality, share, explored, random_q = [], [], [], []
        for run in group:
            rows = run.order[start:end]
            s = float(run.strong[start:end].mean())
            quality.append(run.correct[start:end].mean() / data.strong[rows].mean())
            share.append(s)
            explored.append(run.explored[start:end].mean())
            random_q.append(data.random_quality(s, rows))
        table.add_row(
            f"{start + 1:,} to {end:,}",
            pct(float(np.mean(quality))),
            pct(float(np.mean(share))),
            pct(float(np.mean(explored))),
            pct(float(np.mean(random_q))),
            f"{100 * (np.mean(quality) - np.mean(random_q)):+.1f} pts",
        )
    console.print(table)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="RouteLLM eval folder")
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    parser.add_argument("--featurisers", default=",".join(FEATURISERS), help="comma-separated")
    parser.add_argument("--cost-weights", default=DEFAULT_WEIGHTS, help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="stream orders (0, 1, …)")
    parser.add_argument("--window", type=int, default=1000, help="learning-curve window, MMLU")
    parser.add_argument("--gsm8k-window", type=int, default=250, help="the same, GSM8K")
    parser.add_argument("--jobs", type=int, default=_cpus() or 1, help="worker processes")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "dendrite-bench",
        help="where prompt embeddings are cached (outside the repository)",
    )
    parser.add_argument(
        "--exploration",
        type=float,
        default=None,
        help="the Router's exploration (posterior scale); default: the Router's default",
    )
    parser.add_argument(
        "--prior-strength",
        type=float,
        default=None,
        help="the Router's prior strength (ridge penalty); default: the Router's default",
    )
    parser.add_argument(
        "--pooled-noise",
        action="store_true",
        help="the Router's pooled noise variance per option instead of the noise at the task "
        "(local_noise=False, the model before 2026-11)",
    )
    parser.add_argument("--quick", action="store_true", help="one order, five cost weights")
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.featurisers = [f.strip() for f in args.featurisers.split(",") if f.strip()]
    if not args.datasets or any(d not in DATASETS for d in args.datasets):
        parser.error(f"--datasets must be a subset of {','.join(DATASETS)}")
    if not args.featurisers or any(f not in FEATURISERS for f in args.featurisers):
        parser.error(f"--featurisers must be a subset of {','.join(FEATURISERS)}")
    try:
        args.cost_weights = sorted({float(w) for w in args.cost_weights.split(",") if w.strip()})
    except ValueError:
        parser.error("--cost-weights must be numbers")
    if not args.cost_weights or min(args.cost_weights) < 0:
        parser.error("--cost-weights must be non-negative")
    if args.quick:
        args.seeds = 1
        args.cost_weights = [0.05, 0.1, 0.13, 0.17, 0.25]
    if min(args.seeds, args.window, args.gsm8k_window, args.jobs) < 1:
        parser.error("--seeds, --window, --gsm8k-window and --jobs must be positive")
    if args.exploration is not None and not (
        math.isfinite(args.exploration) and args.exploration >= 0
    ):
        parser.error("--exploration must be a finite number >= 0")
    if args.prior_strength is not None and not (
        math.isfinite(args.prior_strength) and args.prior_strength > 0
    ):
        parser.error("--prior-strength must be a finite number > 0")
    args.seeds = list(range(args.seeds))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 160)
    started = time.perf_counter()
    if args.exploration is not None:
        _ROUTER_OPTIONS["exploration"] = args.exploration
    if args.prior_strength is not None:
        _ROUTER_OPTIONS["prior_strength"] = args.prior_strength
    if args.pooled_noise:
        _ROUTER_OPTIONS["local_noise"] = False
    datasets = {name: load(args.data, name) for name in args.datasets}
    print_environment(console, args, datasets)
    featurisers = list(args.featurisers)
    if "type+minilm" in featurisers:
        for name, data in datasets.items():
            embedder = minilm_vectors(data, args.cache_dir, console)
            if embedder is None:
                featurisers.remove("type+minilm")
                break
            _EMBEDDERS[name] = embedder
    _DATA.update(datasets)
    jobs = [
        (name, featuriser, weight, seed)
        for name in datasets
        for featuriser in featurisers
        for weight in args.cost_weights
        for seed in args.seeds
    ]
    note(console, f"{len(jobs)} runs on {args.jobs} processes …")
    context = multiprocessing.get_context("fork")
    with context.Pool(args.jobs) as pool:
        runs = pool.map(simulate, jobs, chunksize=1)
    curves: dict[str, list[Point]] = {}
    for name, data in datasets.items():
        mine = [r for r in runs if r.dataset == name]
        curves[name] = points(data, mine)
        curves[name].sort(key=lambda p: (featurisers.index(p.featuriser), p.cost_weight))
        print_sweep(console, data, curves[name], len(args.seeds))
    print_summary(console, datasets, curves)
    for name, data in datasets.items():
        window = args.window if name == "mmlu" else args.gsm8k_window
        for featuriser in featurisers:
            print_learning_curve(
                console, data, [r for r in runs if r.dataset == name], featuriser, window
            )
    note(console, f"total wall time {time.perf_counter() - started:,.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
