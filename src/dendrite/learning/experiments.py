"""A/B experiments: two (or more) planners on the same traffic, judged by the store.

Assignment is deterministic: a unit (the session by default, else the goal's
text) hashes to the same arm in every process and after every restart, so a
user never flips between arms mid-session and a replayed goal lands where it
did. Each assignment is recorded beside the execution; the report joins the
two in SQL and tests the difference in success rate (Fisher's exact test when
counts are small, a two-proportion z-test otherwise) and in duration (Welch's
t-test). When a unit ran more than once (a session's goals), its runs are not
independent (some users' goals are harder than others'), and testing them as
if they were finds differences that are not there: success is then compared
with a cluster-robust t-test over the units, and not at all while an arm has
fewer than two units (the report says so instead). Arms are compared with a control:
the arm named when reporting, else the one with the most runs.
"""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Real
from typing import TYPE_CHECKING, Any, Literal

from dendrite.planning import PLANNERS
from dendrite.planning.planner import Planner

if TYPE_CHECKING:
    from dendrite.store import ExecutionStore
    from dendrite.store.bookkeeping import ArmOutcomes

Unit = Literal["session", "goal", "execution"]


class Experiment:
    """``arms`` maps an arm's name to its planner: a planner's name (``"dendrite"``,
    ``"semantic"``, …; the orchestrator makes it, with its ranker and plan memory, as
    ``Orchestrator.make_planner`` does) or a planner object, used as it is. Reports
    compare every arm with a control: the arm named when reporting, else the one with
    the most runs (the store keeps outcomes, not the order the arms were declared in)."""

    def __init__(
        self,
        name: str,
        arms: Mapping[str, Planner | str],
        *,
        weights: Mapping[str, float] | None = None,
        unit: Unit = "session",
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"experiment name must be a string, got {name!r}")
        if not name or len(name) > 128:
            raise ValueError(f"experiment name must be 1-128 characters, got {name!r}")
        if not isinstance(arms, Mapping):
            raise TypeError(
                f"experiment {name!r}: arms must map each arm's name to its planner, "
                f"got {type(arms).__name__}"
            )
        if len(arms) < 2:
            raise ValueError(f"experiment {name!r} needs at least two arms, got {list(arms)}")
        for arm, planner in arms.items():
            _check_arm(arm, planner)
        weights = _checked_weights(name, arms, weights)
        if unit not in ("session", "goal", "execution"):
            raise ValueError(f"unit must be 'session', 'goal' or 'execution', got {unit!r}")
        self.name = name
        self.arms = dict(arms)
        self.unit = unit
        total = sum(weights.values())
        self._bounds: list[tuple[float, str]] = []
        running = 0.0
        for arm in arms:
            running += weights[arm] / total
            self._bounds.append((running, arm))

    def unit_of(self, goal: str, session_id: str | None, execution_id: str) -> str:
        """What is assigned: the session (falling back to the goal), the goal, or the run."""
        if self.unit == "execution":
            return execution_id
        if self.unit == "session" and session_id:
            return f"session:{session_id}"
        return f"goal:{' '.join(goal.lower().split())}"

    def assign(self, unit: str) -> str:
        """The arm of ``unit``: the same in every process, uniform over the weights."""
        digest = hashlib.blake2b(f"{self.name}\x00{unit}".encode(), digest_size=8).digest()
        point = int.from_bytes(digest, "big") / 2**64
        for bound, arm in self._bounds:
            if point < bound:
                return arm
        return self._bounds[-1][1]


def _check_arm(arm: object, planner: object) -> None:
    """An arm is a name and a planner known by name or one that can plan: anything else
    would be accepted here and then fail every run assigned to the arm."""
    if not isinstance(arm, str):
        raise TypeError(f"arm names must be strings, got {arm!r}")
    if not arm or len(arm) > 64:
        raise ValueError(f"arm names must be 1-64 characters, got {arm!r}")
    if isinstance(planner, str):
        if planner not in PLANNERS:
            raise ValueError(
                f"arm {arm!r} names planner {planner!r}; planners are {', '.join(PLANNERS)}"
            )
    elif not inspect.iscoroutinefunction(getattr(planner, "plan", None)):
        raise TypeError(
            f"arm {arm!r} must be a planner's name ({', '.join(PLANNERS)}) or a planner "
            f"(an object with an async plan method), got {type(planner).__name__} {planner!r}"
        )


def _checked_weights(
    name: str, arms: Mapping[str, object], weights: Mapping[str, float] | None
) -> dict[str, float]:
    """Every arm's weight, all given: an arm left out of ``weights`` would silently get
    no traffic, which is better said with an explicit 0."""
    if weights is None:
        return dict.fromkeys(arms, 1.0)
    if not isinstance(weights, Mapping):
        raise TypeError(
            f"experiment {name!r}: weights must map arm names to numbers, "
            f"got {type(weights).__name__}"
        )
    unknown = [w for w in weights if w not in arms]
    if unknown:
        raise ValueError(f"weights name unknown arm(s) {unknown}; arms are {list(arms)}")
    missing = [arm for arm in arms if arm not in weights]
    if missing:
        raise ValueError(
            f"weights give no weight for arm(s) {missing}; give every arm one (0 for no traffic)"
        )
    for arm, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, Real):
            raise TypeError(f"weight of arm {arm!r} must be a number, got {weight!r}")
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight of arm {arm!r} must be finite and >= 0, got {weight}")
    if not any(weights.values()):
        raise ValueError(f"weights must be > 0 for some arm, not all 0, got {dict(weights)}")
    return {arm: float(weights[arm]) for arm in arms}


@dataclass(frozen=True, slots=True)
class ArmReport:
    arm: str
    executions: int
    successes: int
    success_rate: float | None
    success_interval: tuple[float, float] | None
    """95% Wilson interval of the success rate."""
    mean_duration_ms: float | None
    mean_rating: float | None
    rated: int
    p_success: float | None
    """p-value of the difference in success rate from the control (None for the control)."""
    success_test: str | None
    p_duration: float | None
    """Welch's t-test p-value of the difference in mean duration from the control."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "arm": self.arm,
            "executions": self.executions,
            "successes": self.successes,
            "success_rate": self.success_rate,
            "success_interval": list(self.success_interval) if self.success_interval else None,
            "mean_duration_ms": self.mean_duration_ms,
            "mean_rating": self.mean_rating,
            "rated": self.rated,
            "p_success": self.p_success,
            "success_test": self.success_test,
            "p_duration": self.p_duration,
        }


@dataclass(frozen=True, slots=True)
class ExperimentReport:
    experiment: str
    control: str
    arms: list[ArmReport]
    alpha: float
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "control": self.control,
            "alpha": self.alpha,
            "verdict": self.verdict,
            "arms": [a.to_dict() for a in self.arms],
        }


def report(
    store: ExecutionStore,
    experiment: str | None = None,
    *,
    alpha: float = 0.05,
    control: str | None = None,
) -> list[ExperimentReport]:
    """One report per experiment recorded in ``store`` (or only ``experiment``).

    The control is ``control`` if given, else the arm with the most executions
    (the store does not know the arms' declared order).
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    by_experiment: dict[str, list[ArmOutcomes]] = {}
    for row in store.get_arm_outcomes(experiment):
        by_experiment.setdefault(row.experiment, []).append(row)
    return [_report(name, rows, alpha, control) for name, rows in sorted(by_experiment.items())]


def _report(
    name: str, rows: list[ArmOutcomes], alpha: float, control: str | None
) -> ExperimentReport:
    rows = sorted(rows, key=lambda r: (-r.executions, r.arm))
    if control is not None and all(r.arm != control for r in rows):
        arms = ", ".join(sorted(r.arm for r in rows))
        raise ValueError(
            f"experiment {name!r} has no arm {control!r} with recorded runs; its arms: {arms}"
        )
    base = next((r for r in rows if r.arm == control), rows[0])
    rows = [base, *(r for r in rows if r is not base)]
    arms = []
    for row in rows:
        is_base = row is base
        p_success, test = (None, None) if is_base else _compare_success(base, row)
        arms.append(
            ArmReport(
                arm=row.arm,
                executions=row.executions,
                successes=row.successes,
                success_rate=row.successes / row.executions if row.executions else None,
                success_interval=wilson(row.successes, row.executions),
                mean_duration_ms=row.duration_sum_ms / row.executions if row.executions else None,
                mean_rating=row.rating_sum / row.rated if row.rated else None,
                rated=row.rated,
                p_success=p_success,
                success_test=test,
                p_duration=None if is_base else _compare_duration(base, row),
            )
        )
    outcomes = {row.arm: row for row in rows}
    return ExperimentReport(name, base.arm, arms, alpha, _verdict(arms, alpha, outcomes))


def _verdict(arms: list[ArmReport], alpha: float, outcomes: dict[str, ArmOutcomes]) -> str:
    control = arms[0]
    if len(arms) < 2:
        return f"only arm {control.arm!r} has executions yet"
    findings = []
    for arm in arms[1:]:
        ours, theirs = outcomes[arm.arm], outcomes[control.arm]
        if _too_few_units(theirs, ours):
            findings.append(
                f"{arm.arm} vs {control.arm}: not enough units to test ({arm.arm} has "
                f"{ours.units}, {control.arm} {theirs.units}; a unit's runs are not "
                "independent, so each arm needs at least 2)"
            )
        elif arm.p_success is None or control.success_rate is None or arm.success_rate is None:
            findings.append(f"{arm.arm}: not enough executions to compare")
        elif arm.p_success < alpha:
            better = "better" if arm.success_rate > control.success_rate else "worse"
            findings.append(
                f"{arm.arm} succeeds {better} than {control.arm} "
                f"({arm.success_rate:.1%} vs {control.success_rate:.1%}, p={arm.p_success:.3g})"
            )
        else:
            findings.append(
                f"{arm.arm} vs {control.arm}: no significant difference in success "
                f"({arm.success_rate:.1%} vs {control.success_rate:.1%}, p={arm.p_success:.3g})"
            )
    return "; ".join(findings)


def wilson(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _compare_success(a: ArmOutcomes, b: ArmOutcomes) -> tuple[float | None, str | None]:
    if a.executions == 0 or b.executions == 0 or _too_few_units(a, b):
        return None, None
    if a.units < a.executions or b.units < b.executions:
        p = clustered_t(a, b)
        if p is not None:
            return p, "cluster"
    table = (a.successes, a.executions - a.successes, b.successes, b.executions - b.successes)
    n = a.executions + b.executions
    successes = a.successes + b.successes
    smallest_expected = (
        min(
            a.executions * successes,
            a.executions * (n - successes),
            b.executions * successes,
            b.executions * (n - successes),
        )
        / n
    )
    if smallest_expected < 5:
        return fisher_exact(*table), "fisher"
    return two_proportion_z(a.successes, a.executions, b.successes, b.executions), "z"


def _too_few_units(a: ArmOutcomes, b: ArmOutcomes) -> bool:
    """Whether some unit ran more than once and an arm has fewer than two units.

    A unit's runs are then not independent (one user's goals are harder than another's),
    and one unit shows no spread between units to test against: a run-level test would
    call the difference between two users a difference between the arms.
    """
    clustered = a.units < a.executions or b.units < b.executions
    return clustered and min(a.units, b.units) < 2


def two_proportion_z(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of H0: equal success rates, with the pooled standard error."""
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def clustered_t(a: ArmOutcomes, b: ArmOutcomes) -> float | None:
    """Two-sided p-value of equal success rates when each arm's runs come in units.

    Each rate's variance is the cluster-robust (sandwich) one of a ratio of sums,
    ``k/(k-1) · Σ (y_i - p·m_i)² / (Σ m_i)²`` over an arm's ``k`` units of ``m_i``
    runs and ``y_i`` successes (the usual unpooled variance when every unit ran
    once), and the difference is referred to Student's t with ``k_a + k_b - 2``
    degrees of freedom. ``None`` when an arm has fewer than two units (nothing to test:
    see :func:`_too_few_units`), or when the units of both arms agree so closely that the
    spread between them is no more than the runs' own binomial spread would give (a handful
    of identical sessions, or all runs alike): an estimate of zero would call any
    difference certain, and the run-level test is the fairer one.
    """
    variances = []
    for row in (a, b):
        if row.units < 2:
            return None
        p = row.successes / row.executions
        spread = row.unit_success_sq - 2 * p * row.unit_cross + p * p * row.unit_runs_sq
        variances.append(row.units / (row.units - 1) * max(spread, 0.0) / row.executions**2)
    difference = a.successes / a.executions - b.successes / b.executions
    se2 = sum(variances)
    pooled = (a.successes + b.successes) / (a.executions + b.executions)
    binomial = pooled * (1 - pooled) * (1 / a.executions + 1 / b.executions)
    if se2 <= binomial:  # no more spread than the runs' own (zero when all agree)
        return None
    df = a.units + b.units - 2
    return _regularized_beta(df / (df + difference * difference / se2), df / 2, 0.5)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided p-value of Fisher's exact test on the table [[a, b], [c, d]].

    Sums the probabilities of every table with the same margins that is no more
    likely than the one observed (the usual two-sided definition).
    """
    row1, col1, n = a + b, a + c, a + b + c + d

    def log_p(x: int) -> float:
        return _log_comb(col1, x) + _log_comb(n - col1, row1 - x) - _log_comb(n, row1)

    observed = log_p(a)
    low, high = max(0, row1 + col1 - n), min(row1, col1)
    total = sum(math.exp(lp) for x in range(low, high + 1) if (lp := log_p(x)) <= observed + 1e-9)
    return min(1.0, total)


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def _compare_duration(a: ArmOutcomes, b: ArmOutcomes) -> float | None:
    stats = [_mean_var(r) for r in (a, b)]
    if any(s is None for s in stats):
        return None
    (m1, v1, n1), (m2, v2, n2) = stats  # type: ignore[misc]
    return welch_t(m1, v1, n1, m2, v2, n2)


def _mean_var(row: ArmOutcomes) -> tuple[float, float, int] | None:
    n = row.executions
    if n < 2:
        return None
    mean = row.duration_sum_ms / n
    var = max(0.0, (row.duration_sq_sum - n * mean * mean) / (n - 1))
    return mean, var, n


def welch_t(m1: float, v1: float, n1: int, m2: float, v2: float, n2: int) -> float:
    """Two-sided p-value of Welch's t-test from each sample's mean, variance and size."""
    se2 = v1 / n1 + v2 / n2
    if se2 == 0:
        return 1.0 if m1 == m2 else 0.0
    t = (m1 - m2) / math.sqrt(se2)
    df = se2 * se2 / ((v1 / n1) ** 2 / (n1 - 1) + (v2 / n2) ** 2 / (n2 - 1))
    return _regularized_beta(df / (df + t * t), df / 2, 0.5)


def _regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b) by its continued fraction (Numerical Recipes' betacf): the t CDF's tail."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _regularized_beta(1 - x, b, a)
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-12:
            break
    return front * h / a
