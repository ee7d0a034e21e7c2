"""The math pack: a safe calculator, primes, descriptive statistics and unit conversion.

``calculate`` never calls ``eval``: the expression is parsed by Python's parser and a
walker evaluates only a whitelist of nodes (numbers, arithmetic operators, a few named
functions and constants). Integer results are bounded so that ``9**9**9`` is refused in
microseconds instead of eating the machine.
"""

from __future__ import annotations

import ast
import difflib
import math
import random
import re
import statistics as _stats
from collections.abc import Callable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal
from fractions import Fraction
from typing import Annotated, Any

from pydantic import Field
from typing_extensions import TypedDict

from dendrite.tools.builtin.errors import BuiltinToolError, CalculationError, UnitError
from dendrite.tools.registry import Reliability, Tool, ToolRegistry, tool

__all__ = [
    "MAX_EXPRESSION_LENGTH",
    "MAX_INT_BITS",
    "MAX_PRIME_COUNT",
    "MAX_PRIME_LIMIT",
    "Statistics",
    "calculate",
    "convert_units",
    "first_primes",
    "is_prime",
    "primes",
    "register_math",
    "statistics",
]

MAX_EXPRESSION_LENGTH = 1_000
"""Characters an expression may have (bounds parse time, nesting and literal sizes)."""
MAX_INT_BITS = 4_096
"""Largest integer an intermediate result may be (about 1,233 decimal digits)."""
MAX_PRIME_LIMIT = 10_000_000
"""Largest ``limit`` :func:`primes` accepts (664,579 primes; a ~10 MB sieve)."""
MAX_PRIME_COUNT = 664_579
"""Largest ``count`` :func:`first_primes` accepts: every prime below ``MAX_PRIME_LIMIT``."""
_MAX_DEPTH = 100
_MAX_ROUND_DIGITS = 100

Number = int | float


def _short(value: Number) -> str:
    """A number as a message shows it: huge integers by their size, negatives in parentheses."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"
    return f"({value})" if value < 0 else str(value)


def _quoted(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _checked_int(value: Number) -> Number:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise CalculationError(
            f"an intermediate result has {value.bit_length()} bits; the limit is "
            f"{MAX_INT_BITS} bits (about 1,233 digits)"
        )
    return value


def _power(base: Number, exponent: Number) -> Number:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if base in (0, 1):
            return base
        if base == -1:
            return 1 if exponent % 2 == 0 else -1
        # Bits of the result are about exponent * log2(|base|): refuse before computing.
        if exponent > MAX_INT_BITS or exponent * (abs(base).bit_length() - 1) > MAX_INT_BITS:
            raise CalculationError(
                f"{_short(base)}**{_short(exponent)} is too large: integer results are "
                f"limited to {MAX_INT_BITS} bits"
            )
    result = base**exponent
    if isinstance(result, complex):
        raise CalculationError(
            f"{_short(base)}**{_short(exponent)} is not a real number (a negative base to a "
            "fractional power)"
        )
    return _checked_int(result)


def _round(value: Number, digits: Number | None = None) -> Number:
    """Halves away from zero, as on paper and on a calculator, and of the number as
    written: Python's ``round`` gives 2 for 2.5 (halves to even) and 2.67 for 2.675 (the
    float just below it). Without ``digits`` the result is an integer, as in Python."""
    if digits is not None and not isinstance(digits, int):
        raise CalculationError(f"round(): the number of digits must be an integer, got {digits}")
    if digits is not None and abs(digits) > _MAX_ROUND_DIGITS:
        raise CalculationError(f"round(): digits must be within ±{_MAX_ROUND_DIGITS}")
    if isinstance(value, float) and not math.isfinite(value):
        if digits is None:
            raise CalculationError(f"round(): {value} has no integer value")
        return value
    written = Decimal(repr(value))
    places = digits or 0
    # Enough precision for every digit kept: 1e300 to 2 places has 303 of them.
    context = Context(prec=max(28, written.adjusted() + places + 2), rounding=ROUND_HALF_UP)
    rounded = written.quantize(Decimal(1).scaleb(-places), context=context)
    if digits is None or isinstance(value, int):
        return int(rounded)
    return float(rounded)


def _log(value: Number, base: Number | None = None) -> float:
    return math.log(value) if base is None else math.log(value, base)


def _sqrt(value: Number) -> float:
    """``math.sqrt``, also of an integer past the float range whose root is within it
    (sqrt(10**400) is 1e200): the integer root is exact to a float's precision there."""
    if isinstance(value, int) and value > 0 and value.bit_length() > 1000:
        return float(math.isqrt(value))
    return math.sqrt(value)


def _extremum(name: str, pick: Callable[..., Number]) -> Callable[..., Number]:
    def apply(*values: Number) -> Number:
        if not values:
            raise CalculationError(f"{name}() needs at least one argument")
        return pick(values)

    return apply


# name -> (function, fewest arguments, most arguments or None for any)
_FUNCTIONS: dict[str, tuple[Callable[..., Number], int, int | None]] = {
    "sqrt": (_sqrt, 1, 1),
    "log": (_log, 1, 2),
    "ln": (math.log, 1, 1),
    "log10": (math.log10, 1, 1),
    "log2": (math.log2, 1, 1),
    "exp": (math.exp, 1, 1),
    "sin": (math.sin, 1, 1),
    "cos": (math.cos, 1, 1),
    "tan": (math.tan, 1, 1),
    "abs": (abs, 1, 1),
    "round": (_round, 1, 2),
    "floor": (math.floor, 1, 1),
    "ceil": (math.ceil, 1, 1),
    "min": (_extremum("min", min), 1, None),
    "max": (_extremum("max", max), 1, None),
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e, "tau": math.tau}

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Number]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
    ast.Pow: _power,
}
_NODE_NAMES: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "lambda",
    ast.Compare: "comparison",
    ast.BoolOp: "and/or",
    ast.IfExp: "conditional expression",
    ast.ListComp: "comprehension",
    ast.SetComp: "comprehension",
    ast.DictComp: "comprehension",
    ast.GeneratorExp: "comprehension",
    ast.List: "list",
    ast.Tuple: "tuple",
    ast.Dict: "dict",
    ast.Set: "set",
    ast.NamedExpr: "assignment",
    ast.JoinedStr: "f-string",
    ast.Await: "await",
    ast.Yield: "yield",
}


class _Evaluator:
    """Evaluates a parsed expression, allowing only whitelisted nodes."""

    def visit(self, node: ast.AST, depth: int = 0) -> Number:
        if depth > _MAX_DEPTH:
            raise CalculationError(f"the expression is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, ast.Expression):
            return self.visit(node.body, depth + 1)
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise CalculationError(f"only numbers are allowed, got {value!r}")
            return _checked_int(value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            operand = self.visit(node.operand, depth + 1)
            return -operand if isinstance(node.op, ast.USub) else +operand
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            # "1 + 2 + ... + 120" nests on the left: a sequence, not depth, so it is walked.
            chain = [node]
            while isinstance(chain[-1].left, ast.BinOp) and type(chain[-1].left.op) in _BINARY:
                chain.append(chain[-1].left)
            value = self.visit(chain[-1].left, depth + 1)
            for link in reversed(chain):
                right = self.visit(link.right, depth + 1)
                value = _checked_int(_BINARY[type(link.op)](value, right))
            return value
        if isinstance(node, ast.Name):
            if node.id in _CONSTANTS:
                return _CONSTANTS[node.id]
            raise CalculationError(
                f"unknown name {node.id!r}; constants are {', '.join(sorted(_CONSTANTS))}"
            )
        if isinstance(node, ast.Call):
            return self.call(node, depth)
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            op = type(node.op).__name__
            raise CalculationError(f"the operator {op} is not allowed; use + - * / // % **")
        what = _NODE_NAMES.get(type(node), type(node).__name__)
        raise CalculationError(f"not allowed in an expression: {what}")

    def call(self, node: ast.Call, depth: int) -> Number:
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            shown = ast.unparse(node.func)
            raise CalculationError(
                f"unknown function {shown!r}; allowed: {', '.join(sorted(_FUNCTIONS))}"
            )
        name = node.func.id
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise CalculationError(f"{name}() takes plain positional arguments only")
        func, fewest, most = _FUNCTIONS[name]
        count = len(node.args)
        if count < fewest or (most is not None and count > most):
            if most is None:
                expected = f"at least {fewest}"
            else:
                expected = str(fewest) if fewest == most else f"{fewest} or {most}"
            raise CalculationError(f"{name}() takes {expected} argument(s), got {count}")
        args = [self.visit(arg, depth + 1) for arg in node.args]
        return _checked_int(func(*args))


_SIDE_BY_SIDE = re.compile(r"(?<![\w.])\d[\d.]*\s+\d[\d.]*(?![\w.])")


@tool(reliability=Reliability.HIGH, tags=["math"])
def calculate(expression: str) -> float:
    """Evaluate an arithmetic expression safely and return its value.

    Allowed: numbers, + - * / // % ** (powers), unary minus, parentheses, the constants
    pi, e and tau, and the functions sqrt, log (natural, or log(x, base)), ln, log10, log2,
    exp, sin, cos, tan (radians), abs, round, floor, ceil, min and max. Anything else
    (names, attributes, strings, imports) is refused.

    Args:
        expression: the expression, e.g. "2 * (3 + 4) ** 2 / sqrt(16)"
    """
    text = expression.strip()
    if not text:
        raise CalculationError("the expression is empty")
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise CalculationError(
            f"the expression has {len(text)} characters; the limit is {MAX_EXPRESSION_LENGTH}"
        )
    shown = _quoted(text)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as error:
        side_by_side = _SIDE_BY_SIDE.search(text)
        if side_by_side:  # Python's own guess, "forgot a comma?", misleads here
            written = side_by_side.group(0)
            raise CalculationError(
                f"cannot parse {shown}: two numbers side by side ({written!r}); write one "
                f"number without spaces ({''.join(written.split())}) or an operator between them"
            ) from None
        raise CalculationError(f"cannot parse {shown}: {error.msg}") from None
    except (RecursionError, MemoryError, ValueError):
        raise CalculationError(f"cannot parse {shown}: too complex") from None
    try:
        value = _Evaluator().visit(tree)
        result = float(value)
    except CalculationError as error:
        raise CalculationError(f"cannot evaluate {shown}: {error}") from None
    except ZeroDivisionError:
        raise CalculationError(f"cannot evaluate {shown}: division by zero") from None
    except OverflowError:
        raise CalculationError(f"cannot evaluate {shown}: the result is too large") from None
    except (ValueError, TypeError) as error:  # math domain errors, e.g. sqrt(-1)
        raise CalculationError(f"cannot evaluate {shown}: {error}") from None
    except RecursionError:
        raise CalculationError(f"cannot evaluate {shown}: too deeply nested") from None
    if not math.isfinite(result):
        raise CalculationError(f"cannot evaluate {shown}: the result is not finite ({result})")
    return result


# -- primes -------------------------------------------------------------------------------

_SMALL_PRIMES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)
# Miller-Rabin with the first 13 primes as bases is exact below this bound.
_DETERMINISTIC_BELOW = 3_317_044_064_679_887_385_961_981
_MAX_PRIME_BITS = 4_096
_RANDOM_ROUNDS = 40


def _strong_probable_prime(n: int, base: int, d: int, s: int) -> bool:
    x = pow(base, d, n)
    if x in (1, n - 1):
        return True
    for _ in range(s - 1):
        x = x * x % n
        if x == n - 1:
            return True
    return False


@tool(reliability=Reliability.HIGH, tags=["math"])
def is_prime(n: int) -> bool:
    """Tell whether an integer is a prime number.

    Exact (deterministic Miller-Rabin) below 3.3e24; above, 40 further random rounds make
    a wrong "true" less likely than 1 in 10^24. Integers up to 4,096 bits are accepted.

    Args:
        n: the integer to test
    """
    if n.bit_length() > _MAX_PRIME_BITS:
        raise BuiltinToolError(
            f"n has {n.bit_length()} bits; is_prime accepts integers up to {_MAX_PRIME_BITS} bits"
        )
    if n < 2:
        return False
    for p in _SMALL_PRIMES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    if not all(_strong_probable_prime(n, a, d, s) for a in _SMALL_PRIMES):
        return False
    if n < _DETERMINISTIC_BELOW:
        return True
    rng = random.SystemRandom()
    return all(
        _strong_probable_prime(n, rng.randrange(2, n - 1), d, s) for _ in range(_RANDOM_ROUNDS)
    )


@tool(reliability=Reliability.HIGH, tags=["math"])
def primes(limit: Annotated[int, Field(ge=0, le=MAX_PRIME_LIMIT)]) -> list[int]:
    """List every prime number up to and including a limit (sieve of Eratosthenes).

    Args:
        limit: the largest number to consider, from 0 to 10,000,000
    """
    if limit < 0:
        raise BuiltinToolError(f"limit must be 0 or more, got {limit}")
    if limit > MAX_PRIME_LIMIT:
        raise BuiltinToolError(
            f"limit {limit:,} is too large; primes() lists primes up to {MAX_PRIME_LIMIT:,} "
            "(use is_prime to test one large number)"
        )
    return _sieve(limit)


@tool(reliability=Reliability.HIGH, tags=["math"])
def first_primes(count: Annotated[int, Field(ge=0, le=MAX_PRIME_COUNT)]) -> list[int]:
    """The first n prime numbers, counting from 2: the first 5 are 2, 3, 5, 7, 11.

    A tool of its own, not a parameter of ``primes``: "the first 10 primes" and "the
    primes up to 10" are different lists, and a planner must see which one it is asked.

    Args:
        count: how many to list, up to 664,579 (all of them below 10,000,000)
    """
    if not 0 <= count <= MAX_PRIME_COUNT:
        raise BuiltinToolError(
            f"count must be from 0 to {MAX_PRIME_COUNT:,} (the primes below "
            f"{MAX_PRIME_LIMIT:,}), got {count:,}"
        )
    return _sieve(_nth_prime_bound(count))[:count]


def _sieve(limit: int) -> list[int]:
    """The primes up to and including ``limit`` (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    sieve = bytearray([1]) * (limit + 1)
    sieve[0] = sieve[1] = 0
    for p in range(2, math.isqrt(limit) + 1):
        if sieve[p]:
            sieve[p * p :: p] = bytes(len(range(p * p, limit + 1, p)))
    return [i for i, flag in enumerate(sieve) if flag]


def _nth_prime_bound(n: int) -> int:
    """A number the n-th prime does not exceed (Rosser: p_n < n(ln n + ln ln n) for
    n >= 6), within the sieve's limit, so that the first n primes cost one sieve."""
    if n < 6:
        return 11
    return min(MAX_PRIME_LIMIT, math.ceil(n * (math.log(n) + math.log(math.log(n)))))


# -- statistics ---------------------------------------------------------------------------


class Statistics(TypedDict):
    count: int
    mean: float
    median: float
    stdev: float | None
    min: float
    max: float


@tool(reliability=Reliability.HIGH, tags=["math", "data"])
def statistics(values: list[float]) -> Statistics:
    """Describe a list of numbers: count, mean, median, sample standard deviation, min, max.

    The standard deviation is the sample one (n - 1); it is null for a single value.

    Args:
        values: the numbers, at least one
    """
    if not values:
        raise BuiltinToolError("statistics needs at least one value, got an empty list")
    bad = [v for v in values if not math.isfinite(v)]
    if bad:
        raise BuiltinToolError(f"values must be finite numbers, got {bad[0]}")
    try:
        mean, stdev = _stats.fmean(values), _stats.stdev(values) if len(values) > 1 else None
    except OverflowError:  # sums past the float range: the same on values scaled down
        scale = max(abs(v) for v in values)
        scaled = [v / scale for v in values]
        mean = _stats.fmean(scaled) * scale
        stdev = _stats.stdev(scaled) * scale if len(values) > 1 else None
    ordered = sorted(values)
    middle = len(ordered) // 2
    low, high = ordered[middle - 1], ordered[middle]
    # Halfway without overflow: the sum of two large values of one sign, or the difference
    # of two of opposite signs, is past the float range; and halving each first underflows.
    halfway = (low + high) / 2 if (low < 0) != (high < 0) else low + (high - low) / 2
    median = high if len(ordered) % 2 else halfway
    if not math.isfinite(mean) or (stdev is not None and not math.isfinite(stdev)):
        raise BuiltinToolError("the mean or the spread of these values is too large for a float")
    return {
        "count": len(values),
        "mean": mean,
        "median": float(median),
        "stdev": stdev,
        "min": float(min(values)),
        "max": float(max(values)),
    }


# -- units --------------------------------------------------------------------------------

# dimension -> unit -> (factor to the base unit, aliases). Factors are exact decimal strings
# so conversions are exact rationals until the final rounding to a float. An abbreviation
# that another unit spells in another case is listed here in its own case: the lookup folds
# case only for a name no unit spells exactly, so "NM" (the nautical mile, as charts and
# aviation write it) must be an alias or it would fold to "nm", a nanometre; and petabits
# are "Pb" as megabits are "Mb", or "Pb" would fold to "PB", eight times as much.
_UNITS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "length": {
        "m": ("1", ("meter", "metre")),
        "km": ("1000", ("kilometer", "kilometre")),
        "cm": ("0.01", ("centimeter", "centimetre")),
        "mm": ("0.001", ("millimeter", "millimetre")),
        "um": ("0.000001", ("µm", "μm", "micrometer", "micrometre", "micron")),
        "nm": ("0.000000001", ("nanometer", "nanometre")),
        "in": ("0.0254", ("inch", "inches", '"')),
        "ft": ("0.3048", ("foot", "feet", "'")),
        "yd": ("0.9144", ("yard",)),
        "mi": ("1609.344", ("mile",)),
        "nmi": ("1852", ("NM", "nautical mile")),
    },
    "mass": {
        "kg": ("1", ("kilogram", "kilo")),
        "g": ("0.001", ("gram", "gramme")),
        "mg": ("0.000001", ("milligram",)),
        "ug": ("0.000000001", ("µg", "μg", "microgram")),
        "t": ("1000", ("tonne", "metric ton")),
        "lb": ("0.45359237", ("lbs", "pound")),
        "oz": ("0.028349523125", ("ounce",)),
        "st": ("6.35029318", ("stone",)),
    },
    "time": {
        "s": ("1", ("sec", "secs", "second")),
        "ms": ("0.001", ("millisecond",)),
        "us": ("0.000001", ("µs", "μs", "microsecond")),
        "ns": ("0.000000001", ("nanosecond",)),
        "min": ("60", ("mins", "minute")),
        "h": ("3600", ("hr", "hrs", "hour")),
        "d": ("86400", ("day",)),
        "wk": ("604800", ("week",)),
        "yr": ("31557600", ("year",)),  # the Julian year, 365.25 days
    },
    "data size": {
        "bit": ("0.125", ("b", "bits")),
        "B": ("1", ("byte",)),
        "kB": ("1000", ("KB", "kilobyte")),
        "MB": ("1000000", ("megabyte",)),
        "GB": ("1000000000", ("gigabyte",)),
        "TB": ("1000000000000", ("terabyte",)),
        "PB": ("1000000000000000", ("petabyte",)),
        "KiB": ("1024", ("kibibyte",)),
        "MiB": ("1048576", ("mebibyte",)),
        "GiB": ("1073741824", ("gibibyte",)),
        "TiB": ("1099511627776", ("tebibyte",)),
        "PiB": ("1125899906842624", ("pebibyte",)),
        "kbit": ("125", ("Kb", "kb", "kilobit")),
        "Mbit": ("125000", ("Mb", "megabit")),
        "Gbit": ("125000000", ("Gb", "gigabit")),
        "Tbit": ("125000000000", ("Tb", "terabit")),
        "Pbit": ("125000000000000", ("Pb", "petabit")),
    },
}
# Temperatures are affine: kelvin = (value + offset) * scale.
_TEMPERATURES: dict[str, tuple[Fraction, Fraction, tuple[str, ...]]] = {
    "K": (Fraction(0), Fraction(1), ("kelvin", "kelvins")),
    "°C": (
        Fraction("273.15"),
        Fraction(1),
        ("C", "degC", "celsius", "centigrade", "degree celsius", "degrees celsius"),
    ),
    "°F": (
        Fraction("459.67"),
        Fraction(5, 9),
        ("F", "degF", "fahrenheit", "degree fahrenheit", "degrees fahrenheit"),
    ),
    "°R": (Fraction(0), Fraction(5, 9), ("R", "degR", "rankine", "degrees rankine")),
}


@dataclass(frozen=True, slots=True)
class _Unit:
    symbol: str
    dimension: str
    factor: Fraction  # kelvin or base units per unit
    offset: Fraction = Fraction(0)  # added before scaling (temperatures only)


def _unit_table() -> tuple[dict[str, _Unit], dict[str, list[_Unit]]]:
    exact: dict[str, _Unit] = {}

    def add(unit: _Unit, names: tuple[str, ...]) -> None:
        for name in (unit.symbol, *names):
            exact[name] = unit
            # Plurals ("days", "lbs", "miles"); not of one letter, where "m" + "s" is "ms".
            if len(name) > 1 and name.isalpha() and not name.endswith("s"):
                exact.setdefault(name + "s", unit)
            if " " in name:
                first, rest = name.split(" ", 1)
                exact[f"{first} {rest}s"] = unit

    for dimension, units in _UNITS.items():
        for symbol, (factor, names) in units.items():
            add(_Unit(symbol, dimension, Fraction(factor)), names)
    for symbol, (offset, scale, names) in _TEMPERATURES.items():
        add(_Unit(symbol, "temperature", scale, offset), names)
    folded: dict[str, list[_Unit]] = {}
    for name, unit in exact.items():
        candidates = folded.setdefault(name.lower(), [])
        if all(u.symbol != unit.symbol for u in candidates):
            candidates.append(unit)
    return exact, folded


_EXACT_UNITS, _FOLDED_UNITS = _unit_table()


def _unit(name: str) -> _Unit:
    key = " ".join(name.replace("_", " ").split())
    if key in _EXACT_UNITS:
        return _EXACT_UNITS[key]
    folded = _FOLDED_UNITS.get(key.lower(), [])
    candidates = folded
    if len(key) <= 3 and key[:1] in ("M", "m", "P", "p"):
        # Mega and milli, peta and pico: the case of the prefix is its meaning. "Mg" is no
        # "mg" (a megagram is 10^9 milligrams), though "KG" and "LB" are kg and lb.
        candidates = [u for u in folded if u.symbol[:1] == key[:1]]
    if len(candidates) == 1:
        return candidates[0]
    options = " or ".join(f"{u.symbol!r} ({u.dimension})" for u in folded)
    if len(folded) > 1:
        raise UnitError(f"unit {name!r} is ambiguous: write {options}")
    if folded:
        raise UnitError(f"unknown unit {name!r}: a prefix's case is its meaning; not {options}")
    close = difflib.get_close_matches(key, list(_EXACT_UNITS), n=3, cutoff=0.75)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnitError(f"unknown unit {name!r}{hint} (known: {', '.join(supported_units())})")


def supported_units() -> list[str]:
    """Every unit symbol ``convert_units`` knows, grouped by dimension."""
    symbols = [symbol for units in _UNITS.values() for symbol in units]
    return symbols + list(_TEMPERATURES)


@tool(reliability=Reliability.HIGH, tags=["math", "units"])
def convert_units(value: float, from_unit: str, to_unit: str) -> float:
    """Convert a value between units of length, mass, time, temperature or data size.

    Units are symbols or names: m, km, cm, mm, um, nm (nanometre), in, ft, yd, mi,
    nmi/NM (nautical mile); kg, g, mg, ug, t, lb, oz, st; s, ms, us, ns, min, h, d, wk, yr
    (365.25 days); B, kB/KB, MB, GB, TB, PB (powers of 1000), KiB, MiB, GiB, TiB, PiB
    (powers of 1024), bit, kbit/kb, Mbit/Mb, Gbit/Gb, Tbit/Tb, Pbit/Pb; °C/C/celsius,
    °F/F/fahrenheit, K/kelvin, °R/rankine. Names may be plural ("miles"). Case is ignored
    only where no other unit is spelled that way: "nm" is a nanometre and "NM" a nautical
    mile, while "Nm" or "mb" (MB or Mbit?) is refused as ambiguous.

    Args:
        value: the amount to convert
        from_unit: the unit the value is in, e.g. "km" or "fahrenheit"
        to_unit: the unit wanted, of the same kind, e.g. "mi" or "celsius"
    """
    if not math.isfinite(value):
        raise UnitError(f"value must be a finite number, got {value}")
    source, target = _unit(from_unit), _unit(to_unit)
    if source.dimension != target.dimension:
        raise UnitError(
            f"cannot convert {from_unit!r} ({source.dimension}) to {to_unit!r} "
            f"({target.dimension}): they measure different things"
        )
    # The value as written (37.2, not the float's binary value), so that 37.2 °C is 98.96 °F
    # and -273.15 °C is 0 K exactly.
    base = (Fraction(repr(float(value))) + source.offset) * source.factor
    if source.dimension == "temperature" and base < 0:
        raise UnitError(f"{value} {from_unit} is below absolute zero")
    try:
        return float(base / target.factor - target.offset)
    except OverflowError:
        raise UnitError(f"{value} {from_unit} in {to_unit} is too large for a float") from None


def register_math(registry: ToolRegistry, *, replace: bool = False) -> list[Tool]:
    """Register the math pack: calculate, is_prime, primes, first_primes, statistics,
    convert_units."""
    return [
        registry.register(func, replace=replace)
        for func in (calculate, is_prime, primes, first_primes, statistics, convert_units)
    ]
