"""Routing a task to a model tier or a worker pool with a contextual bandit that learns online.

A :class:`Router` holds a set of *options* (``["small", "large"]``, or pool names), an optional
cost per option and a ``cost_weight``. For each task it turns the task's features (goal text,
task type, project, complexity) into a vector, predicts for every option the quality it would
deliver and what it would cost, and picks the option with the best
``quality - cost_weight * cost``. It only ever sees the outcome of the option it picked, so it
has to explore: that is a contextual bandit.

Algorithm: linear Thompson sampling with a ridge prior, one model per option ("disjoint" linear
models, as in Li et al. 2010, sampled as in Agrawal & Goyal 2013).

- Model. For option ``a`` the expected quality of a task with feature vector ``x`` is
  ``q0 + x·θ_a`` (``q0 = prior_quality``), observed with Gaussian noise of unknown variance
  ``s²``. The prior is normal-inverse-gamma: ``θ_a | s² ~ N(0, s²/λ · I)``
  (``λ = prior_strength``) and ``s² ~ InvGamma`` worth ``noise_weight`` observations of
  variance ``noise²``. The posterior is of the same family: precision
  ``P_a = λI + Σ w_i x_i x_iᵀ``, mean ``θ_a = P_a⁻¹ Σ w_i x_i (q_i - q0)`` (ridge regression,
  the Bayesian way), and the noise estimate moves from the prior ``noise = 0.5`` (the largest
  standard deviation a quality in [0, 1] can have) to what the residuals say. This is the
  "LinFullPost" linear posterior of Riquelme et al. 2018, a strong baseline in their
  comparison of Bayesian bandits.
- Local noise. A quality is mostly a success, 1 or 0, whose variance ``p(1 - p)`` depends on
  the task: an option right 95% of the time on one task type is far surer there than on one
  where it is right half the time, after as many outcomes. One noise variance per option
  makes it as unsure of both (too unsure where it nearly always succeeds, too sure where it
  is a coin). So the noise is taken where the task is (``local_noise``, the default): a
  fourth regression on the same ``P_a``, of the squared quality, gives ``E[q² | x]``, and the
  noise variance at ``x`` is ``v(x) = E[q² | x] - E[q | x]²`` (at least 1e-4), the prior's
  ``noise²`` until outcomes come. For a one-hot task type it is the shrunk sample variance
  there; for success alone, ``p̂(1 - p̂)``, so ``v(x) xᵀP⁻¹x`` is about the variance
  ``p(1 - p)/(n + λ)`` of a beta posterior of that task's success rate. The inverse-gamma
  posterior above still says how sure the router is of its noise: its draw relative to its
  mean scales ``v(x)``. ``local_noise=False`` keeps the pooled variance ``s²``.
- Updates are rank one: ``P_a⁻¹`` is kept and updated by Sherman-Morrison in ``O(d²)``, and
  re-inverted from ``P_a`` now and then (every ``refresh_every`` updates) so that rounding
  cannot accumulate. Features are sparse, so a prediction costs ``O(d · nnz(x))``.
- Decision. For each option draw the noise ``s̃² = v(x) · k/g``, ``g ~ Gamma(k)``, ``k`` the
  inverse-gamma posterior's shape (pooled: ``s̃² ~ InvGamma``), and
  ``q̃_a ~ N(q0 + x·θ_a, exploration² s̃² xᵀP_a⁻¹x)``, the predictive distribution of a
  posterior sample (for one decision, drawing the scalar is the same as drawing ``θ_a`` and
  taking ``x·θ̃_a``, at a fraction of the cost), and pick the largest
  ``q̃_a - cost_weight · ĉ_a``: Thompson sampling (Agrawal & Goyal 2013). An option is
  explored about as often as it may be the best, which gives logarithmic regret with no
  exploration schedule to tune. The posterior is tempered: ``exploration`` defaults to 0.5
  for Thompson sampling, not 1. A narrower sampling distribution is the usual practical
  adjustment (Chapelle & Li 2011 found it did better on their display-advertising data), and
  on RouteLLM's MMLU (``bench/learn_routing.py``) it cut the exploratory decisions from 16%
  to 6%, where most options' differences lie so near the cost weight that exploring them
  does not pay back (7% with local noise). ``policy="ucb"`` ranks by the upper confidence
  bound ``mean + exploration · sqrt(v(x) xᵀP_a⁻¹x)`` instead (LinUCB, Li et al. 2010,
  deterministic) and ``policy="greedy"`` by the mean alone.
- Cost. The cost of option ``a`` is its configured cost plus a learned, context-dependent
  residual (a second regression sharing ``P_a``, fitted to the costs reported to
  :meth:`Router.learn`; a report without a cost counts as the configured cost). Success
  probability is a third regression on the same ``P_a``; it is what ``predicted_success``
  says, and what ``RoutingDecision.prediction_error`` checks against the outcome. The squared
  quality (local noise) is the fourth.
- Reward: ``quality - cost_weight * cost``, with quality = success (1 or 0), or when a rating
  (1 to 5) is given ``(1 - rating_weight) · success + rating_weight · (rating - 1) / 4``.

Feedback that arrives after the outcome (a rating, a corrected cost) replaces that outcome's
targets in place: the regressions' right-hand sides get ``w_i · x_i · (new - old)``, so the model
is exactly what it would be had the rating come with the outcome. With ``half_life`` set, every
observation's weight decays as ``w_i = 0.5 ** (age_i / half_life)`` (age since its decision), so
that the router follows options that change (a provider updates a model); in Bayesian terms an
observation of age ``a`` has noise variance ``s² · 2 ** (a / half_life)``. A late rating is
then weighted by the recency of the decision it rates: a rating of yesterday's run moves the
model more than a rating of last month's.

Every decision goes to the store (``store_routing_decision``) with its candidates' scores, its
confidence, a reason, the raw features and the predicted success and cost; the outcome is the
execution recorded under the same ``execution_id``, joined at read time. After a restart,
:meth:`Router.learn_from_store` replays the decisions with their outcomes and reaches the same
state. Decisions waiting for their outcome are *pending*; they expire after ``pending_ttl``.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from dendrite.learning._checks import check_number
from dendrite.retrieval.embedding import Embedder
from dendrite.retrieval.lexical import stem, tokenize
from dendrite.telemetry.records import MAX_COST, ExecutionStatus, as_utc

if TYPE_CHECKING:
    from dendrite.store import ExecutionStore
    from dendrite.telemetry.records import ExecutionRecord

Policy = Literal["thompson", "ucb", "greedy"]

ROUTE_UNUSED = "route_unused"
"""Execution metadata key, true on a run that never acted on the option it was routed to
(sent to a model tier, it did not call the model): its outcome says nothing about it."""


ROUTE_DOWN = "route_down"
"""Execution metadata key, true on a run whose every call to its tier's model failed: the
tier failed it, whatever the offline planners then made of the run."""


def routed_success(outcome: ExecutionRecord) -> bool:
    """The run's success as the option it was routed to earned it (``ROUTE_DOWN``)."""
    return outcome.success and not outcome.metadata.get(ROUTE_DOWN)


def judges_route(outcome: ExecutionRecord) -> bool:
    """Whether a run's outcome tells how the option it was routed to did: not when the run
    was cancelled, nor when it never used the option (``ROUTE_UNUSED``)."""
    return outcome.status != ExecutionStatus.CANCELLED and not outcome.metadata.get(ROUTE_UNUSED)


class RouterError(Exception):
    """Base class of the router's own errors."""


class UnknownDecisionError(RouterError, LookupError):
    """``learn`` or ``feedback`` named an execution this router has no decision for."""


class DecisionExpiredError(UnknownDecisionError):
    """The decision waited longer than ``pending_ttl`` for its outcome and was dropped."""


# -- features --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskFeatures:
    """What a router knows about a task before running it.

    ``complexity`` is on a 0-1 scale (as the classifier's ``complexity_score``); any float is
    accepted and clipped to [-10, 10].
    """

    text: str = ""
    task_type: str | None = None
    project: str | None = None
    complexity: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TypeError(f"TaskFeatures.text must be a str, got {type(self.text).__name__}")
        for name in ("task_type", "project"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise TypeError(f"TaskFeatures.{name} must be a str or None, got {value!r}")
        if self.complexity is not None:
            if isinstance(self.complexity, bool) or not isinstance(self.complexity, int | float):
                raise TypeError(
                    f"TaskFeatures.complexity must be a number, got {self.complexity!r}"
                )
            if not math.isfinite(self.complexity):
                raise ValueError(f"TaskFeatures.complexity must be finite, got {self.complexity}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "task_type": self.task_type,
            "project": self.project,
            "complexity": self.complexity,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskFeatures:
        """From what :meth:`to_dict` wrote (other keys, such as the featuriser's name, ignored)."""
        complexity = data.get("complexity")
        return cls(
            text=str(data.get("text") or ""),
            task_type=data.get("task_type"),
            project=data.get("project"),
            complexity=float(complexity) if complexity is not None else None,
        )

    @classmethod
    def from_record(cls, record: ExecutionRecord) -> TaskFeatures:
        """The features of a recorded execution (its goal, task type, project, complexity)."""
        return cls(
            text=record.goal_text,
            task_type=record.task_type or record.query_type,
            project=record.project,
            complexity=record.complexity_score,
        )


@dataclass(frozen=True)
class FeatureVector:
    """A sparse vector: distinct ``indices`` (int64) with their ``values`` (float64)."""

    indices: np.ndarray
    values: np.ndarray

    def dense(self, dim: int) -> np.ndarray:
        out = np.zeros(dim)
        out[self.indices] = self.values
        return out


@runtime_checkable
class Featuriser(Protocol):
    """Turns :class:`TaskFeatures` into a fixed-length vector. Must be thread-safe."""

    @property
    def name(self) -> str:
        """A stable description of the featuriser (stored with every decision)."""
        ...

    @property
    def dim(self) -> int: ...

    def vectorise(self, features: TaskFeatures, *, grow: bool = True) -> FeatureVector:
        """``grow=False``: do not learn anything new (such as a category's slot) from it."""
        ...

    def vectorise_many(
        self, items: Sequence[TaskFeatures], *, grow: bool = True
    ) -> list[FeatureVector]: ...


_stem = lru_cache(maxsize=1 << 17)(stem)


def _tokens(text: str) -> list[str]:
    """:func:`dendrite.retrieval.tokenize`, with the stemmer memoised (words repeat a lot)."""
    return [_stem(word) for word in tokenize(text, stemming=False)]


@lru_cache(maxsize=1 << 17)
def _hash_token(token: str) -> int:
    """A stable 64-bit hash of a token (blake2b, unlike ``hash`` the same in every process)."""
    return int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")


_BIAS, _COMPLEXITY, _NO_COMPLEXITY, _LENGTH, _NUMBERS = range(5)
_FIXED = 5


class HashedFeaturiser:
    """The default featuriser: a few numbers, one-hot categories, hashed words, an embedding.

    Layout of the vector (``dim = 5 + category_slots + text_dims (+ embedding dim)``):

    - a constant 1 (the option's overall quality), the complexity (or, when unknown, a 1 in a
      separate slot), ``log(1 + tokens) / log(257)`` and ``log(1 + numbers) / log(17)``: the
      length of the goal and how many numbers it holds, two domain-free proxies of difficulty;
    - one-hot task type and project, each value with a slot of its own, given in the order
      values are first seen (a linear model with an isotropic prior does not care which slot
      is which, so a router that replays history in another order reaches the same model).
      Beyond ``category_slots`` values, new ones share slots by a stable hash;
    - the goal's words (:func:`dendrite.retrieval.tokenize`: identifier-aware, stop words
      dropped, lightly stemmed) hashed into ``text_dims`` buckets with blake2b and a hashed
      sign (signed feature hashing, Weinberger et al. 2009), weighted ``log(1 + count)``,
      scaled to norm ``text_weight``;
    - with an :class:`~dendrite.retrieval.Embedder`, its unit vector of the goal times
      ``embedding_weight``.

    A block's weight is the prior scale of its effect (the ridge penalty of a block scaled by
    ``w`` is divided by ``w²``). Task types and projects get 1: a category can change an
    option's quality by a lot. Words get 0.25 and the embedding 0.5: every goal brings words
    never seen before, and a large weight would make the router explore for ever on the
    chance that they matter (on RouteLLM's data, ``bench/learn_routing.py``, words at weight
    1 kept 20-30% of the decisions exploratory and never paid it back).

    Only the first ``max_text_chars`` characters of the goal are used (and stored with the
    decision), so a replay sees exactly what the decision saw.
    """

    def __init__(
        self,
        text_dims: int = 512,
        category_slots: int = 128,
        *,
        text_weight: float = 0.25,
        category_weight: float = 1.0,
        embedder: Embedder | None = None,
        embedding_weight: float = 0.5,
        max_text_chars: int = 4000,
    ) -> None:
        if text_dims < 0 or category_slots < 0:
            raise ValueError("text_dims and category_slots must be >= 0")
        for label, value in (
            ("text_weight", text_weight),
            ("category_weight", category_weight),
            ("embedding_weight", embedding_weight),
        ):
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{label} must be a finite number >= 0, got {value}")
        if max_text_chars < 1:
            raise ValueError(f"max_text_chars must be at least 1, got {max_text_chars}")
        self.text_dims = text_dims
        self.category_slots = category_slots
        self.text_weight = float(text_weight)
        self.category_weight = float(category_weight)
        self.embedder = embedder
        self.embedding_weight = float(embedding_weight)
        self.max_text_chars = max_text_chars
        self._slots: dict[str, int] = {}
        self._lock = threading.Lock()
        self._embedding_dim = 0
        if embedder is not None:
            self._embedding_dim = int(embedder.embed(["dimension probe"]).shape[1])
        self._category_base = _FIXED
        self._text_base = _FIXED + category_slots
        self._embedding_base = self._text_base + text_dims

    @property
    def name(self) -> str:
        name = (
            f"hashed(text={self.text_dims}x{self.text_weight:g},categories={self.category_slots})"
        )
        if self.embedder is not None:
            name += f"+{self.embedder.name}x{self.embedding_weight:g}"
        return name

    @property
    def dim(self) -> int:
        return self._embedding_base + self._embedding_dim

    @property
    def categories(self) -> dict[str, int]:
        """The slot of every category value seen so far (``"task_type=summary"`` → slot)."""
        with self._lock:
            return dict(self._slots)

    def _slot(self, key: str, grow: bool) -> int | None:
        with self._lock:
            slot = self._slots.get(key)
            if slot is None and len(self._slots) < self.category_slots:
                if not grow:
                    return None
                slot = self._slots[key] = len(self._slots)
        if slot is None:  # every slot taken: share one by a stable hash
            slot = _hash_token(key) % self.category_slots
        return slot

    def _base(self, features: TaskFeatures, text: str, grow: bool) -> dict[int, float]:
        entries: dict[int, float] = {_BIAS: 1.0}
        if features.complexity is None:
            entries[_NO_COMPLEXITY] = 1.0
        else:
            entries[_COMPLEXITY] = min(10.0, max(-10.0, float(features.complexity)))
        tokens = _tokens(text)
        if tokens:
            entries[_LENGTH] = math.log1p(len(tokens)) / math.log(257)
            numbers = sum(1 for t in tokens if t[0].isdigit())
            if numbers:
                entries[_NUMBERS] = math.log1p(numbers) / math.log(17)
        if self.category_slots and self.category_weight:
            for label, value in (("task_type", features.task_type), ("project", features.project)):
                if value:
                    slot = self._slot(f"{label}={value}", grow)
                    if slot is not None:
                        index = self._category_base + slot
                        entries[index] = entries.get(index, 0.0) + self.category_weight
        if self.text_dims and self.text_weight and tokens:
            counts: dict[str, int] = {}
            for token in tokens:
                counts[token] = counts.get(token, 0) + 1
            words: dict[int, float] = {}
            for token, count in counts.items():
                h = _hash_token(token)
                index = self._text_base + h % self.text_dims
                sign = 1.0 if (h >> 63) & 1 else -1.0
                words[index] = words.get(index, 0.0) + sign * math.log1p(count)
            norm = math.sqrt(sum(v * v for v in words.values()))
            if norm > 0:
                scale = self.text_weight / norm
                for index, value in words.items():
                    if value:
                        entries[index] = value * scale
        return entries

    def vectorise(self, features: TaskFeatures, *, grow: bool = True) -> FeatureVector:
        return self.vectorise_many([features], grow=grow)[0]

    def vectorise_many(
        self, items: Sequence[TaskFeatures], *, grow: bool = True
    ) -> list[FeatureVector]:
        texts = [f.text[: self.max_text_chars] for f in items]
        embeddings = None
        if self.embedder is not None and items:
            embeddings = self.embedder.embed([t if t.strip() else " " for t in texts])
            if embeddings.shape != (len(items), self._embedding_dim):
                raise ValueError(
                    f"embedder {self.embedder.name} returned shape {embeddings.shape}, "
                    f"expected ({len(items)}, {self._embedding_dim})"
                )
        out = []
        for i, (features, text) in enumerate(zip(items, texts, strict=True)):
            entries = self._base(features, text, grow)
            indices = np.fromiter(entries.keys(), dtype=np.int64, count=len(entries))
            values = np.fromiter(entries.values(), dtype=np.float64, count=len(entries))
            if embeddings is not None and self.embedding_weight:
                indices = np.concatenate(
                    [indices, np.arange(self._embedding_base, self.dim, dtype=np.int64)]
                )
                values = np.concatenate(
                    [values, np.asarray(embeddings[i], dtype=np.float64) * self.embedding_weight]
                )
            out.append(FeatureVector(indices, values))
        return out

    def __repr__(self) -> str:
        return f"HashedFeaturiser({self.name})"


# -- the per-option model --------------------------------------------------------------------

_QUALITY, _SUCCESS, _COST, _SQUARE = range(4)
_MIN_NOISE_VARIANCE = 1e-4  # the local noise is kept above (sd 0.01): a fit can dip below 0


class _Arm:
    """Bayesian ridge regression of (quality, success, cost residual, squared quality) on x,
    with shared P.

    The noise variance of the quality is unknown, with a normal-inverse-gamma prior: the
    quality model's posterior is ``θ | s² ~ N(P⁻¹b, s² P⁻¹)``, ``s² ~ InvGamma(a, c)`` with
    ``a = a0 + Σw/2`` and ``c = c0 + (Σ w y² - bᵀP⁻¹b) / 2``, all from sufficient statistics,
    so the order of the updates and later corrections do not matter.
    """

    __slots__ = (
        "a0",
        "b",
        "c0",
        "cov",
        "fit",
        "observations",
        "precision",
        "prior",
        "since_refresh",
        "weight",
        "yy",
    )

    def __init__(self, dim: int, prior: float, noise: float, noise_weight: float) -> None:
        self.prior = prior
        self.precision = np.eye(dim) * prior
        self.cov = np.eye(dim) / prior
        self.b = np.zeros((4, dim))
        self.a0 = noise_weight / 2
        self.c0 = noise_weight * noise * noise / 2
        self.yy = 0.0  # Σ w y² of the quality target
        self.fit = 0.0  # bᵀP⁻¹b of the quality target
        self.observations = 0
        self.weight = 0.0
        self.since_refresh = 0

    @property
    def noise_shape(self) -> float:
        return self.a0 + self.weight / 2

    @property
    def noise_scale(self) -> float:
        return self.c0 + max(0.0, self.yy - self.fit) / 2

    @property
    def noise_variance(self) -> float:
        """The posterior estimate of the quality's noise variance, ``c / a``."""
        return self.noise_scale / self.noise_shape

    def _times(self, x: FeatureVector) -> np.ndarray:
        """``P⁻¹x``: from the columns x touches, or (for dense x) a plain product."""
        if 4 * x.indices.size > self.cov.shape[0]:
            return self.cov @ x.dense(self.cov.shape[0])
        return self.cov[:, x.indices] @ x.values

    def estimate(self, x: FeatureVector) -> tuple[np.ndarray, float]:
        """The posterior means of the four targets (centred) and ``xᵀP⁻¹x``."""
        u = self._times(x)
        return self.b @ u, max(float(x.values @ u[x.indices]), 0.0)

    def _refit(self) -> None:
        q = self.b[_QUALITY]
        self.fit = float(q @ (self.cov @ q))

    def add(self, x: FeatureVector, weight: float, targets: np.ndarray) -> None:
        idx, val = x.indices, x.values
        su = self._times(x)
        denominator = 1.0 / weight + float(val @ su[idx])
        self.cov -= np.multiply.outer(su, su / denominator)
        self.precision[np.ix_(idx, idx)] += weight * np.multiply.outer(val, val)
        self.b[:, idx] += weight * np.multiply.outer(targets, val)
        self.yy += weight * float(targets[_QUALITY]) ** 2
        self.observations += 1
        self.weight += weight
        self.since_refresh += 1
        self._refit()

    def correct(self, x: FeatureVector, weight: float, old: np.ndarray, new: np.ndarray) -> None:
        self.b[:, x.indices] += weight * np.multiply.outer(new - old, x.values)
        self.yy += weight * (float(new[_QUALITY]) ** 2 - float(old[_QUALITY]) ** 2)
        self._refit()

    def decay(self, factor: float) -> None:
        """Scale every observation's weight by ``factor`` (the prior stays)."""
        eye = np.eye(self.precision.shape[0]) * self.prior
        self.precision = eye + factor * (self.precision - eye)
        self.b *= factor
        self.yy *= factor
        self.weight *= factor
        self.refresh()

    def refresh(self) -> None:
        self.cov = np.linalg.inv(self.precision)
        self.cov = (self.cov + self.cov.T) / 2
        self.since_refresh = 0
        self._refit()


# -- decisions -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptionEstimate:
    """What the router expects of one option for one task (no exploration)."""

    quality: float
    quality_sd: float
    success: float
    cost: float
    reward: float
    observations: int


@dataclass(frozen=True)
class RoutingChoice:
    """A router's decision for one task.

    ``scores`` are what the policy ranked (a posterior sample of the reward under Thompson
    sampling, the upper bound under UCB); ``expected`` the posterior mean rewards.
    ``confidence`` is the posterior probability that ``option`` has the best expected reward
    (exact for two options, a lower bound for more) — not the probability of success, which
    is ``predicted_success``.
    """

    option: str
    scores: dict[str, float]
    confidence: float
    reason: str
    predicted_success: float
    predicted_cost: float
    predicted_quality: float
    expected: dict[str, float]
    explored: bool
    execution_id: str
    decided_at: datetime


@dataclass
class ReplayReport:
    """What :meth:`Router.learn_from_store` did with the decisions it read."""

    decisions: int = 0
    learned: int = 0
    corrected: int = 0
    pending: int = 0
    already_known: int = 0
    expired: int = 0
    unknown_option: int = 0
    discarded: int = 0
    """Decisions whose run was cancelled or never used the option (see ``judges_route``)."""


@dataclass
class _Pending:
    option: str
    x: FeatureVector
    decided_at: datetime
    rating: int | None = None


@dataclass
class _Observation:
    option: str
    x: FeatureVector | None  # dropped once more than ``max_tracked`` observations are newer
    decided_at: datetime
    success: bool
    rating: int | None
    cost: float | None
    targets: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(4))


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def judged_rating(rating: int | None, accepted: bool | None) -> int | None:
    """A user's judgement as the one rating (1-5) the router learns from.

    The learning loop rewards a rating and an acceptance given together by their mean
    (``reward_of``); the router takes the rating nearest that mean, so one judgement is the
    same judgement to both: accepted alone is 5, rejected alone 1, a 3 that was rejected 2.
    """
    if accepted is None:
        return rating
    if rating is None:
        return 5 if accepted else 1
    return math.floor((rating + (5 if accepted else 1)) / 2 + 0.5)


def _check_rating(rating: Any) -> int | None:
    if rating is None:
        return None
    if isinstance(rating, bool) or not isinstance(rating, int | np.integer) or not 1 <= rating <= 5:
        raise ValueError(f"rating must be an integer from 1 to 5 or None, got {rating!r}")
    return int(rating)


class Router:
    """Chooses one of ``options`` per task and learns online from the outcomes.

    Thread-safe: ``choose``, ``learn``, ``feedback`` and ``learn_from_store`` may be called
    from any thread. See the module docstring for the algorithm and its parameters.
    """

    def __init__(
        self,
        options: Sequence[str],
        costs: Mapping[str, float] | None = None,
        cost_weight: float = 0.0,
        *,
        store: ExecutionStore | None = None,
        router_name: str = "model_tier",
        featuriser: Featuriser | None = None,
        embedder: Embedder | None = None,
        policy: Policy = "thompson",
        exploration: float | None = None,
        noise: float = 0.5,
        noise_weight: float = 4.0,
        prior_strength: float = 1.0,
        prior_quality: float = 0.5,
        rating_weight: float = 0.5,
        half_life: timedelta | None = None,
        pending_ttl: timedelta = timedelta(hours=24),
        max_pending: int = 100_000,
        max_tracked: int = 10_000,
        max_remembered: int = 200_000,
        refresh_every: int = 2_000,
        local_noise: bool = True,
        seed: int | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise TypeError("options must be a list of option names")
        names = list(options)
        if not names:
            raise ValueError("options must name at least one option")
        for name in names:
            if not isinstance(name, str) or not name.strip():
                raise ValueError(f"option names must be non-empty strings, got {name!r}")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"options must be distinct; repeated: {', '.join(duplicates)}")
        costs = dict(costs or {})
        unknown = sorted(set(costs) - set(names))
        if unknown:
            raise ValueError(
                f"costs name unknown option(s) {', '.join(map(repr, unknown))}; "
                f"options are {', '.join(map(repr, names))}"
            )
        self.options: tuple[str, ...] = tuple(names)
        self.costs: dict[str, float] = {
            n: check_number(f"cost of {n!r}", costs.get(n, 0.0), maximum=MAX_COST) for n in names
        }
        self.cost_weight = check_number("cost_weight", cost_weight, maximum=MAX_COST)
        if policy not in ("thompson", "ucb", "greedy"):
            raise ValueError(f"policy must be 'thompson', 'ucb' or 'greedy', got {policy!r}")
        if not isinstance(router_name, str) or not router_name:
            raise ValueError("router_name must be a non-empty string")
        if featuriser is not None and embedder is not None:
            raise ValueError("give either a featuriser or an embedder, not both")
        self.policy: Policy = policy
        if exploration is None:  # Thompson sampling tempered (module docstring); LinUCB's 1
            exploration = 0.5 if policy == "thompson" else 1.0
        self.exploration = check_number("exploration", exploration)
        self.noise = check_number("noise", noise, strict=True)
        self.noise_weight = check_number("noise_weight", noise_weight, strict=True)
        self.prior_strength = check_number("prior_strength", prior_strength, strict=True)
        self.prior_quality = check_number("prior_quality", prior_quality)
        if self.prior_quality > 1:
            raise ValueError(f"prior_quality must be in [0, 1], got {prior_quality}")
        self.rating_weight = check_number("rating_weight", rating_weight)
        if self.rating_weight > 1:
            raise ValueError(f"rating_weight must be in [0, 1], got {rating_weight}")
        if half_life is not None and half_life <= timedelta(0):
            raise ValueError(f"half_life must be positive or None, got {half_life}")
        if not isinstance(pending_ttl, timedelta) or pending_ttl <= timedelta(0):
            raise ValueError(f"pending_ttl must be a positive timedelta, got {pending_ttl!r}")
        for label, value in (
            ("max_pending", max_pending),
            ("max_tracked", max_tracked),
            ("max_remembered", max_remembered),
            ("refresh_every", refresh_every),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{label} must be a positive integer, got {value!r}")
        self.store = store
        self.router_name = router_name
        self.featuriser: Featuriser = featuriser or HashedFeaturiser(embedder=embedder)
        self.half_life = half_life
        self.pending_ttl = pending_ttl
        self.max_pending = max_pending
        self.max_tracked = max_tracked
        self.max_remembered = max(max_remembered, max_tracked)
        self.refresh_every = refresh_every
        self.local_noise = bool(local_noise)
        self._clock = clock or _utcnow
        self._rng = np.random.default_rng(seed)
        self._lock = threading.RLock()
        dim = self.featuriser.dim
        self._arms = {
            name: _Arm(dim, self.prior_strength, self.noise, self.noise_weight)
            for name in self.options
        }
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._expired: OrderedDict[str, datetime] = OrderedDict()
        self._learned: OrderedDict[str, _Observation] = OrderedDict()
        self._with_vectors: deque[str] = deque()  # learned ids that still hold their vector
        self._forgotten_until: datetime | None = None  # newest decision no longer remembered
        self._reference: datetime | None = None  # the time decay weights are relative to
        self.expired_count = 0

    # -- helpers (call with the lock held) ---------------------------------------------------

    def _weight(self, decided_at: datetime) -> float:
        """The weight of an observation decided at ``decided_at``, relative to the reference."""
        if self.half_life is None or self._reference is None:
            return 1.0
        age = (self._reference - decided_at) / self.half_life
        return 0.5**age

    def _advance(self, now: datetime) -> None:
        """Move the decay reference to ``now`` once weights have drifted by more than 1%."""
        if self.half_life is None:
            return
        if self._reference is None:
            self._reference = now
            return
        elapsed = (now - self._reference) / self.half_life
        if elapsed > 0.0144:  # 2 ** 0.0144 = 1.01
            factor = 0.5**elapsed
            for arm in self._arms.values():
                arm.decay(factor)
            self._reference = now

    def _expire(self, now: datetime) -> None:
        cutoff = now - self.pending_ttl
        while self._pending:
            execution_id, pending = next(iter(self._pending.items()))
            if pending.decided_at > cutoff:
                break
            self._drop_pending(execution_id)

    def _drop_pending(self, execution_id: str) -> None:
        pending = self._pending.pop(execution_id)
        self._expired[execution_id] = pending.decided_at
        self.expired_count += 1
        while len(self._expired) > self.max_pending:
            self._expired.popitem(last=False)

    def _quality(self, success: bool, rating: int | None) -> float:
        if rating is None:
            return float(success)
        return (1 - self.rating_weight) * float(success) + self.rating_weight * (rating - 1) / 4

    def _targets(self, option: str, success: bool, rating: int | None, cost: float | None):
        configured = self.costs[option]
        quality = self._quality(success, rating)
        return np.array(
            [
                quality - self.prior_quality,
                float(success) - self.prior_quality,
                (configured if cost is None else cost) - configured,
                quality * quality - self.prior_quality**2 - self.noise**2,
            ]
        )

    def _estimates(self, x: FeatureVector) -> dict[str, tuple[np.ndarray, float]]:
        return {name: arm.estimate(x) for name, arm in self._arms.items()}

    def _summaries(
        self,
        x: FeatureVector,
        variances: dict[str, float] | None = None,
        noises: dict[str, float] | None = None,
    ) -> dict[str, OptionEstimate]:
        """Per option, the posterior expectation; ``variances`` receives each ``xᵀP⁻¹x`` and
        ``noises`` each noise variance of the quality at ``x``."""
        out = {}
        if variances is None:
            variances = {}
        if noises is None:
            noises = {}
        for name, (means, variance) in self._estimates(x).items():
            arm = self._arms[name]
            quality = self.prior_quality + float(means[_QUALITY])
            cost = max(0.0, self.costs[name] + float(means[_COST]))
            if self.local_noise:  # E[q² | x] - E[q | x]²: the noise of the quality at x
                square = self.prior_quality**2 + self.noise**2 + float(means[_SQUARE])
                noise2 = max(square - quality * quality, _MIN_NOISE_VARIANCE)
            else:
                noise2 = arm.noise_variance
            noises[name] = noise2
            out[name] = OptionEstimate(
                quality=quality,
                quality_sd=math.sqrt(noise2 * variance),
                success=min(1.0, max(0.0, self.prior_quality + float(means[_SUCCESS]))),
                cost=cost,
                reward=quality - self.cost_weight * cost,
                observations=arm.observations,
            )
            variances[name] = variance
        return out

    def _learn_new(
        self,
        execution_id: str,
        option: str,
        x: FeatureVector,
        decided_at: datetime,
        success: bool,
        rating: int | None,
        cost: float | None,
    ) -> float:
        self._advance(decided_at)
        targets = self._targets(option, success, rating, cost)
        arm = self._arms[option]
        arm.add(x, self._weight(decided_at), targets)
        if arm.since_refresh >= self.refresh_every:
            arm.refresh()
        self._learned[execution_id] = _Observation(
            option, x, decided_at, success, rating, cost, targets
        )
        self._with_vectors.append(execution_id)
        self._trim_learned()
        quality = targets[_QUALITY] + self.prior_quality
        return float(quality - self.cost_weight * (targets[_COST] + self.costs[option]))

    def _trim_learned(self) -> None:
        while len(self._with_vectors) > self.max_tracked:
            observation = self._learned.get(self._with_vectors.popleft())
            if observation is not None:
                observation.x = None
        while len(self._learned) > self.max_remembered:
            _, observation = self._learned.popitem(last=False)
            if self._forgotten_until is None or observation.decided_at > self._forgotten_until:
                self._forgotten_until = observation.decided_at

    def _revise(
        self,
        execution_id: str,
        observation: _Observation,
        success: bool,
        rating: int | None,
        cost: float | None,
    ) -> float:
        if observation.x is None:
            raise UnknownDecisionError(
                f"the outcome of execution {execution_id} was learned too long ago to be "
                f"revised (only the newest {self.max_tracked} outcomes can be; see max_tracked)"
            )
        targets = self._targets(observation.option, success, rating, cost)
        delta = targets - observation.targets
        if np.any(delta != 0):
            self._arms[observation.option].correct(
                observation.x, self._weight(observation.decided_at), observation.targets, targets
            )
        observation.success, observation.rating, observation.cost = success, rating, cost
        observation.targets = targets
        quality = targets[_QUALITY] + self.prior_quality
        cost_now = targets[_COST] + self.costs[observation.option]
        return float(quality - self.cost_weight * cost_now)

    def _unknown(self, execution_id: str) -> UnknownDecisionError:
        if execution_id in self._expired:
            decided = self._expired[execution_id]
            return DecisionExpiredError(
                f"the decision for execution {execution_id} (made {decided.isoformat()}) expired "
                f"after waiting {self.pending_ttl} for its outcome (pending_ttl)"
            )
        return UnknownDecisionError(
            f"router {self.router_name!r} has no decision for execution {execution_id!r}: "
            f"call choose() for it first (or learn_from_store() after a restart)"
        )

    # -- public API --------------------------------------------------------------------------

    def choose(self, features: TaskFeatures | str, execution_id: str) -> RoutingChoice:
        """Pick an option for the task run as ``execution_id`` and remember the decision."""
        if isinstance(features, str):
            features = TaskFeatures(text=features)
        if not isinstance(features, TaskFeatures):
            raise TypeError(
                f"features must be TaskFeatures or the goal's text, got {type(features).__name__}"
            )
        if not isinstance(execution_id, str) or not execution_id:
            raise ValueError(f"execution_id must be a non-empty string, got {execution_id!r}")
        x = self.featuriser.vectorise(features)
        with self._lock:
            now = as_utc(self._clock())
            self._expire(now)
            if execution_id in self._pending or execution_id in self._learned:
                raise ValueError(
                    f"router {self.router_name!r} already decided for execution {execution_id}"
                )
            self._advance(now)
            variances: dict[str, float] = {}
            noises: dict[str, float] = {}
            estimates = self._summaries(x, variances, noises)
            scores: dict[str, float] = {}
            for name, est in estimates.items():
                bonus = 0.0
                if self.policy == "thompson":
                    # s² = v(x) · a / Gamma(a): the noise at x scaled by the inverse-gamma
                    # posterior's draw relative to its mean (pooled: s² ~ InvGamma(a, c)),
                    # then quality ~ N(mean, s² xᵀP⁻¹x)
                    shape = self._arms[name].noise_shape
                    s2 = noises[name] * shape / float(self._rng.gamma(shape))
                    sd = math.sqrt(s2 * variances[name])
                    bonus = self.exploration * sd * float(self._rng.standard_normal())
                elif self.policy == "ucb":
                    bonus = self.exploration * est.quality_sd
                scores[name] = est.quality + bonus - self.cost_weight * est.cost

            def rank(values: dict[str, float]) -> str:
                return max(
                    self.options,
                    key=lambda n: (values[n], -estimates[n].cost, -self.options.index(n)),
                )

            expected = {n: e.reward for n, e in estimates.items()}
            option = rank(scores)
            greedy = rank(expected)
            confidence = self._confidence(option, estimates)
            chosen = estimates[option]
            reason = self._reason(option, greedy, estimates, confidence)
            choice = RoutingChoice(
                option=option,
                scores=scores,
                confidence=confidence,
                reason=reason,
                predicted_success=chosen.success,
                predicted_cost=chosen.cost,
                predicted_quality=chosen.quality,
                expected=expected,
                explored=option != greedy,
                execution_id=execution_id,
                decided_at=now,
            )
            if self.store is not None:
                stored = features.to_dict()
                stored["text"] = stored["text"][: getattr(self.featuriser, "max_text_chars", None)]
                stored["featuriser"] = self.featuriser.name
                self.store.store_routing_decision(
                    execution_id,
                    option,
                    candidates=scores,
                    confidence=confidence,
                    reason=reason,
                    router=self.router_name,
                    features=stored,
                    predicted_success=chosen.success,
                    predicted_cost=chosen.cost,
                    created_at=now,
                )
            self._pending[execution_id] = _Pending(option, x, now)
            while len(self._pending) > self.max_pending:
                self._drop_pending(next(iter(self._pending)))
            return choice

    def _confidence(self, option: str, estimates: Mapping[str, OptionEstimate]) -> float:
        chosen = estimates[option]
        confidence = 1.0
        for name, other in estimates.items():
            if name == option:
                continue
            sd = math.hypot(chosen.quality_sd, other.quality_sd)
            gap = chosen.reward - other.reward
            confidence *= _phi(gap / sd) if sd > 0 else (1.0 if gap >= 0 else 0.0)
        return min(1.0, max(0.0, confidence))

    def _reason(
        self,
        option: str,
        greedy: str,
        estimates: Mapping[str, OptionEstimate],
        confidence: float,
    ) -> str:
        if all(e.observations == 0 for e in estimates.values()):
            lead = f"no outcomes yet; {self.policy} pick"
        elif option == greedy:
            lead = f"best expected reward (p={confidence:.2f} it is the best)"
        else:
            lead = f"exploring: best is {greedy!r}, {option!r} may be better (p={confidence:.2f})"
        parts = [
            f"{name}: q={e.quality:.2f}±{e.quality_sd:.2f} cost={e.cost:g} n={e.observations}"
            for name, e in estimates.items()
        ]
        return f"{lead}; reward = quality - {self.cost_weight:g} x cost; " + "; ".join(parts)

    def predict(self, features: TaskFeatures | str) -> dict[str, OptionEstimate]:
        """The router's current expectation for every option, without deciding or exploring."""
        if isinstance(features, str):
            features = TaskFeatures(text=features)
        x = self.featuriser.vectorise(features, grow=False)
        with self._lock:
            return self._summaries(x)

    def learn(
        self,
        execution_id: str,
        success: bool,
        rating: int | None = None,
        cost: float | None = None,
    ) -> float:
        """Learn the outcome of the option chosen for ``execution_id``; returns its reward.

        Reporting again for an execution already learned replaces its outcome (a late
        rating, a corrected cost). A rating left out keeps the one :meth:`feedback` gave,
        before the outcome or after: it is the user's, not part of the outcome. Raises
        :class:`UnknownDecisionError` for an execution this router did not decide
        (:class:`DecisionExpiredError` if its decision expired).
        """
        if not isinstance(success, bool | np.bool_):
            raise TypeError(f"success must be a bool, got {success!r}")
        success = bool(success)
        rating = _check_rating(rating)
        if cost is not None:
            cost = check_number("cost", cost, maximum=MAX_COST)
        with self._lock:
            self._expire(as_utc(self._clock()))
            pending = self._pending.pop(execution_id, None)
            if pending is not None:
                if rating is None:
                    rating = pending.rating
                return self._learn_new(
                    execution_id, pending.option, pending.x, pending.decided_at,
                    success, rating, cost,
                )  # fmt: skip
            observation = self._learned.get(execution_id)
            if observation is not None:
                if rating is None:
                    rating = observation.rating
                return self._revise(execution_id, observation, success, rating, cost)
            raise self._unknown(execution_id)

    def feedback(self, execution_id: str, rating: int) -> float | None:
        """A rating that arrives after (or before) the outcome.

        For a learned outcome, its quality becomes the blend of success and this rating (the
        latest rating wins, as in the store) and the reward is returned; for a pending
        decision the rating is kept until :meth:`learn` reports the outcome (``None``).
        """
        rating = _check_rating(rating)
        if rating is None:
            raise ValueError("feedback needs a rating from 1 to 5")
        with self._lock:
            self._expire(as_utc(self._clock()))
            pending = self._pending.get(execution_id)
            if pending is not None:
                pending.rating = rating
                return None
            observation = self._learned.get(execution_id)
            if observation is None:
                raise self._unknown(execution_id)
            return self._revise(
                execution_id, observation, observation.success, rating, observation.cost
            )

    def learn_from_store(
        self, since: datetime | None = None, *, limit: int = 30_000
    ) -> ReplayReport:
        """Replay this router's stored decisions joined to their outcomes.

        Warm-starts a fresh router after a restart (it reaches the state of the router that
        made the decisions), picks up ratings recorded in the store since (``store_feedback``
        sets the execution's ``user_rating``, which revises the outcome already learned), and
        learns outcomes of decisions made by other processes. Decisions without an outcome
        yet become pending again unless older than ``pending_ttl``; those whose run was
        cancelled or never used the option are skipped (``judges_route``). Idempotent. ``since``
        limits the replay to decisions made at or after it; ``limit`` to the newest ones.
        """
        if self.store is None:
            raise RouterError("learn_from_store needs a router created with store=...")
        outcomes = self.store.get_routing_outcomes(
            router=self.router_name, limit=limit, since=since
        )
        outcomes.sort(key=lambda o: (o.decision.created_at, o.decision.id))
        report = ReplayReport(decisions=len(outcomes))
        with self._lock:
            now = as_utc(self._clock())
            self._expire(now)
            todo = []
            for item in outcomes:
                decision = item.decision
                if decision.chosen not in self._arms:
                    report.unknown_option += 1
                    continue
                if item.outcome is not None and not judges_route(item.outcome):
                    self._pending.pop(decision.execution_id, None)
                    report.discarded += 1
                    continue
                execution_id = decision.execution_id
                decided_at = as_utc(decision.created_at)
                observation = self._learned.get(execution_id)
                if observation is not None:
                    outcome = item.outcome
                    if outcome is None or observation.x is None:
                        report.already_known += 1
                        continue
                    # The store adds what it knows; it never erases a rating or a cost
                    # that was reported to learn() directly.
                    rating = judged_rating(outcome.user_rating, outcome.user_accepted)
                    rating = observation.rating if rating is None else rating
                    cost = outcome.actual_cost
                    cost = observation.cost if cost is None else cost
                    success = routed_success(outcome)
                    if (success, rating, cost) == (
                        observation.success, observation.rating, observation.cost,
                    ):  # fmt: skip
                        report.already_known += 1
                    else:
                        self._revise(execution_id, observation, success, rating, cost)
                        report.corrected += 1
                    continue
                if self._forgotten_until is not None and decided_at <= self._forgotten_until:
                    report.already_known += 1
                    continue
                pending = self._pending.get(execution_id)
                if item.outcome is None:
                    if pending is not None:
                        report.pending += 1
                    elif decided_at <= now - self.pending_ttl:
                        report.expired += 1
                    else:
                        todo.append((item, decided_at))
                    continue
                todo.append((item, decided_at))
            vectors: list[FeatureVector | None] = [None] * len(todo)
            need = [
                i
                for i, (item, _) in enumerate(todo)
                if item.decision.execution_id not in self._pending
            ]
            if need:
                features = [TaskFeatures.from_dict(todo[i][0].decision.features) for i in need]
                for i, vector in zip(need, self.featuriser.vectorise_many(features), strict=True):
                    vectors[i] = vector
            for (item, decided_at), vector in zip(todo, vectors, strict=True):
                execution_id = item.decision.execution_id
                if execution_id in self._learned:  # the same execution routed twice
                    report.already_known += 1
                    continue
                pending = self._pending.pop(execution_id, None)
                x = pending.x if pending is not None else vector
                assert x is not None
                if item.outcome is None:
                    self._pending[execution_id] = _Pending(item.decision.chosen, x, decided_at)
                    report.pending += 1
                    continue
                outcome = item.outcome
                rating = judged_rating(outcome.user_rating, outcome.user_accepted)
                if rating is None and pending is not None:
                    rating = pending.rating
                self._learn_new(
                    execution_id, item.decision.chosen, x, decided_at,
                    routed_success(outcome), rating, outcome.actual_cost,
                )  # fmt: skip
                report.learned += 1
            self._pending = OrderedDict(
                sorted(self._pending.items(), key=lambda kv: kv[1].decided_at)
            )
            while len(self._pending) > self.max_pending:
                self._drop_pending(next(iter(self._pending)))
        return report

    def discard(self, execution_id: str) -> bool:
        """Forget a decision nothing was learnt from: its run was cancelled, or never used
        the option chosen. Returns whether the decision was waiting for its outcome."""
        with self._lock:
            return self._pending.pop(execution_id, None) is not None

    # -- inspection --------------------------------------------------------------------------

    @property
    def pending(self) -> list[str]:
        """Execution ids of the decisions waiting for their outcome, oldest first."""
        with self._lock:
            self._expire(as_utc(self._clock()))
            return list(self._pending)

    def stats(self) -> dict[str, dict[str, float]]:
        """Per option: outcomes learned, their total (decayed) weight and the configured cost."""
        with self._lock:
            return {
                name: {
                    "observations": float(arm.observations),
                    "weight": arm.weight,
                    "cost": self.costs[name],
                }
                for name, arm in self._arms.items()
            }

    def __repr__(self) -> str:
        return (
            f"Router({list(self.options)!r}, cost_weight={self.cost_weight:g}, "
            f"router_name={self.router_name!r}, policy={self.policy!r})"
        )
