"""Filling a tool's parameters from the words of a goal, by their JSON-Schema types.

Offline planning has no model to read a goal for it, so this reads it the
way a careful person would fill a form: numbers go to numeric fields in the
order they appear, quoted text to text fields, file names to path-like
fields, a known enum value to its field, the words after "about" to a topic,
and what is left of the goal, minus the request's own verbs, to the main
text field. A required parameter that nothing fits is reported as missing,
so the planner can try the next tool instead of guessing.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dendrite.planning import references
from dendrite.retrieval.lexical import tokenize

_DIGITS = r"(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)"  # "1,500" is one number; "1,2,3" three
_FRACTION = r"(?<![\w./])[-+]?\d+/[1-9]\d*(?![\d./])"  # "3/4"; of "3/4/2025", nothing
_NUMBER = re.compile(rf"(?<![\w.])[-+]?{_DIGITS}(?:\.\d+)?(?:[eE][-+]?\d+)?(?![\w])")
_QUANTITY = re.compile(  # in a conversion, "3/4 miles to km" is 0.75 miles
    rf"(?P<fraction>{_FRACTION})(?=\s*[A-Za-z°][\w°/]*\s+(?:to|in|into)\s+[A-Za-z°])"
    rf"|{_NUMBER.pattern}",
    re.I,
)
QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|(?<!\w)'([^']{2,})'(?!\w)|`([^`]+)`")
"""A quoted passage, its text in one of the groups. Single quotes only around a passage,
not within words: "what's … today's" quotes nothing."""
_PATH = re.compile(r"(?<![\w/.{-])((?:[\w.-]+/)*[\w-][\w.-]*\.[A-Za-z][\w]{0,7})(?![\w])")
_QUOTED_PATH = re.compile(r"[^\n\\/]*(?:/[^\n\\/]+)*\.[A-Za-z]\w{0,7}")
_URL = re.compile(r"https?://[^\s\"'<>]+")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2})?)?\b")
_DATE_PARTS = {"year": (0, 4), "month": (5, 7), "day": (8, 10)}
_SLASHED = r"(?<!\S)#?/?(?=[^\s/]*[A-Za-z_])[^\s/]+(?:/[^\s/]+)+/?"  # users/1/age; not 3/4
_NOT_QUANTITIES = re.compile(f"{_URL.pattern}|{_DATE.pattern}|{_PATH.pattern}|{_SLASHED}")
_MATH_NAMES = r"\b(?:pi|e|sqrt|log|exp|sin|cos|tan|abs|round|min|max)\b"
_MATH_NUMBER = r"(?:\d[\d.]*|\.\d+)(?:e[-+]?\d+)?"  # 2.5e-3 whole: its "e" is not Euler's
_MATH_TOKEN = rf"(?:{_MATH_NUMBER}|{_MATH_NAMES}|\))"
_MATH_OPERATOR = r"(?:\*\*|//|[-+*/%^(,])"
_MATH_EXPRESSION = re.compile(  # ends on a number, a name or ")": never on an operator
    rf"(?:[-+(]\s*)*(?:{_MATH_NUMBER}|{_MATH_NAMES})(?:\s*(?:{_MATH_OPERATOR}\s*)*{_MATH_TOKEN})*",
    re.I,
)
_TOPIC = re.compile(
    r"\b(?:about|regarding|concerning|on the (?:topic|subject) of|with respect to|say about)\s+"
    r"(.+?)(?:[?.!]|$)",
    re.I,
)
_AMOUNT = rf"(?<![\d,.])[-+]?(?:{_DIGITS}(?:\.\d+)?|\.\d+)(?:[eE][-+]?\d+)?"  # 1e3, .5
_UNITS = re.compile(
    rf"(?P<value>{_FRACTION}|{_AMOUNT})\s*"
    r"(?P<from>[A-Za-z°][\w°/]*)\s+(?:to|in|into)\s+(?P<to>[A-Za-z°][\w°/]*)",
    re.I,
)
_HOW_MANY = re.compile(  # "how many miles is 10 km": the same groups, the other way round
    rf"\bhow\s+many\s+(?P<to>[A-Za-z°][\w°/]*)\s+(?:(?:is|are)(?:\s+(?:there\s+)?in)?|in)\s+"
    rf"(?P<value>{_AMOUNT}|(?:an?|one)(?=\s))\s*(?P<from>[A-Za-z°][\w°/]*)",  # "in a day"
    re.I,
)
_DEGREE_SIGN = re.compile(r"\bdeg(?:rees?)?\s+(?=[CFKR]\b)", re.I)  # "degrees F" is "°F"
_DEGREE_WORD = re.compile(r"\bdeg(?:rees?)?\s+(?=(?:celsius|fahrenheit|kelvin|rankine)\b)", re.I)
_COMPOUND = re.compile(r"\d\s*[A-Za-z°]+\s*,?\s*(?:and\s+)?$")  # "5 feet" before "6 inches"
_REQUEST_WORDS = re.compile(
    r"^\s*(?:please\s+)?(?:can you\s+|could you\s+)?"
    r"(?:search(?: for| the \w+ for)?|find|look (?:for|up)|show(?: me)?|tell me|get|fetch|"
    r"summari[sz]e|list|count|calculate|compute|extract|normali[sz]e|read|what (?:is|are)|"
    r"which|give me)\b\s*",
    re.I,
)

FILLER = {"a", "an", "the", "of", "for", "to", "in", "on", "and", "or", "is", "with"}
TEXT_NAMES = ("query", "text", "question", "q", "prompt", "content", "goal", "input", "message")
TOPIC_NAMES = ("topic", "subject", "about", "focus")
PATH_HINTS = ("path", "file", "filename", "document", "doc", "name", "first", "second", "source")
EXPRESSION_NAMES = ("expression", "expr", "formula", "equation")
PATTERN_NAMES = ("pattern", "regex", "regexp")
FOLDER_NAMES = ("folder", "directory", "dir", "path")
_FOLDER = re.compile(
    r"\b(?:in|under|inside|within)\s+(?:the\s+)?(?:"
    r"([\w.-]+(?:/[\w.-]+)*)\s+(?:folder|directory|dir)\b"
    r"|(?:folder|directory|dir)\s+([\w./-]+)"
    r"|([\w.-]+/[\w./-]*))",
    re.I,
)
_IN_FOLDER = re.compile(r"\b(?:in|under|inside|within)\s+(?:the\s+)?([\w.-]+(?:/[\w.-]+)*)", re.I)
_GLOB = re.compile(r"(?<!\S)[\w.-]*\*[\w.*?-]*(?!\S)")
_NEGATION = re.compile(r"\b(?:no|not|without|don't|do not|never)\s+(?:\w+\s+)?$", re.I)
_REGEX_SIGNS = re.compile(r"[\\\[\]()*+?^$|{}]")


@dataclass
class Extraction:
    params: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    from_rest: str | None = None
    """The parameter that took what was left of the goal's words, if one did."""

    @property
    def complete(self) -> bool:
        return not self.missing


def numbers_in(text: str) -> list[float | int]:
    """The numbers written in ``text``, in order (thousands separators allowed); in a unit
    conversion, the fraction of its quantity is one number ("convert 3/4 miles to km":
    0.75), elsewhere two ("what is 3/4", "24/7 support", "rated 4/5 stars")."""
    return [value for value, _ in _numbers_at(text)]


def _numbers_at(text: str) -> list[tuple[float | int, int]]:
    """``numbers_in``, each with where it starts in ``text``."""
    found: list[tuple[float | int, int]] = []
    # The digits of an address, a date or a file's name are no quantities: from
    # "read reports/2024/q1.txt", max_bytes was 2024 (and "since 2024-01-15", a limit).
    text = _blanked(_NOT_QUANTITIES, text)
    for match in (_QUANTITY if _converts_units(text) else _NUMBER).finditer(text):
        if match.groupdict().get("fraction"):
            found.append((quantity(match.group("fraction")), match.start()))
            continue
        raw = match.group(0).replace(",", "")
        try:
            found.append(
                (int(raw) if re.fullmatch(r"[-+]?\d+", raw) else float(raw), match.start())
            )
        except ValueError:
            continue
    return found


def _blanked(pattern: re.Pattern[str], text: str) -> str:
    """``text`` with what ``pattern`` matches made spaces, every other character in place."""
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def quantity(written: str) -> float:
    """A quantity as the unit reader finds it written: "1,500", "2.5", "1e3", a fraction
    "3/4", or "a" ("how many seconds in a day")."""
    if written.lower() in ("a", "an", "one"):
        return 1.0
    numerator, _, denominator = written.replace(",", "").partition("/")
    return float(numerator) / float(denominator or 1)


def _converts_units(text: str) -> bool:
    """Whether ``text`` asks to convert a quantity ("3/4 miles to km", "5 kg in lb")."""
    return bool(re.search(r"\bconvert\b", text, re.I) and _UNITS.search(text))


def _conversion(goal: str) -> re.Match[str] | None:
    """The quantity and the units of a conversion ("5 kg in lb", "how many miles is 10
    km"); none for a compound quantity ("5 feet 6 inches to cm", "2 hours and 30
    minutes"), whose last part alone would be converted and answered wrongly."""
    found = _UNITS.search(goal) or _HOW_MANY.search(goal)
    if found is None or _COMPOUND.search(goal[: found.start()]):
        return None
    return found


def asks_unit_conversion(goal: str) -> bool:
    """Whether ``goal`` asks to convert one quantity to another unit: "convert 5 kg to lb",
    "how many miles is 10 km", or a goal that is nothing but the quantity and the units
    ("what's 100 F in C", "5 kg to lb"); not "list 5 files in docs", nor a compound
    quantity."""
    found = _conversion(goal)
    return found is not None and (
        found.re is _HOW_MANY
        or _converts_units(goal)
        or (
            bool(_ASKED_AS_IS.fullmatch(goal[: found.start()]))
            and not goal[found.end() :].strip(" ?.!")
        )
    )


_ASKED_AS_IS = re.compile(
    r"\s*(?:please\s+)?(?:what(?:'s|\s+is|\s+are)\s+|how\s+much\s+is\s+)?", re.I
)


def reads_as_conversion(goal: str) -> bool:
    """Whether a goal already taken for a calculation reads as a quantity and two units
    ("what is 5 kg in pounds"): a converter's, not a calculator's."""
    return _conversion(goal) is not None


def _asks_conversion(goal: str) -> bool:
    return bool(re.search(r"\bconvert\b|\bhow\s+many\b", goal, re.I))


@functools.lru_cache(maxsize=1024)  # plan memory asks again for each value it re-binds
def as_read(goal: str) -> str:
    """The goal as the argument reader reads it: a negative number written with a minus
    sign or the word as "-5", "degrees F" as "°F" and "degrees fahrenheit" as "fahrenheit".
    Plan memory compares values with this, not with the words as typed."""
    return _DEGREE_WORD.sub("", _DEGREE_SIGN.sub("°", _signed(goal)))


def _signed(goal: str) -> str:
    """The goal with a negative number written with a minus sign (U+2212) or a word ("to
    minus 5 degrees", "negative 40") as "-5", which the number reader reads; "7 minus 5"
    is left to arithmetic."""
    return re.sub(
        "(?:\u2212|\\bminus\\s|\\b(?P<word>negative)\\s)\\s*(?=\\d)",
        lambda m: (
            m.group(0)
            if not m.group("word") and re.search(r"[\d)]\s*$", goal[: m.start()])
            else "-"
        ),
        goal,
        flags=re.I,
    )


def paths_in(text: str) -> list[str]:
    """The file names written in ``text`` ("notes/todo.txt"; "2.5" is no file), a quoted
    one whole ("my report.txt" is not "report.txt")."""
    quoted = [q for q in _quoted(text) if _QUOTED_PATH.fullmatch(q)]
    bare = _PATH.findall(_blanked(QUOTED, text))
    return quoted + [p for p in bare if not re.fullmatch(r"[\d.]+", p)]


def _quoted(text: str) -> list[str]:
    return [next(g for g in m.groups() if g) for m in QUOTED.finditer(text)]


def _kind(prop: dict[str, Any]) -> str | None:
    if "type" in prop:
        return prop["type"] if isinstance(prop["type"], str) else None
    for option in prop.get("anyOf", []):
        if option.get("type") not in (None, "null"):
            return option["type"]
    return None


def _items(prop: dict[str, Any]) -> dict[str, Any]:
    """The item schema of an array parameter, optional ones (``list[str] | None``) too."""
    if "items" in prop:
        return prop["items"]
    return next((o["items"] for o in prop.get("anyOf", []) if "items" in o), {})


def resolve_ref(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``schema`` itself, or the definition its local ``$ref`` names (``#/$defs/Hit``)."""
    ref = schema.get("$ref")
    return defs.get(ref.rsplit("/", 1)[-1], {}) if isinstance(ref, str) else schema


def _enum(prop: dict[str, Any], defs: dict[str, Any]) -> list[Any] | None:
    if "enum" in prop:
        return prop["enum"]
    if "$ref" in prop:
        return resolve_ref(prop, defs).get("enum")
    for option in prop.get("anyOf", []):
        found = _enum(option, defs)
        if found:
            return found
    return None


def _main_text(goal: str, consumed: list[str]) -> str:
    text = goal
    for piece in consumed:
        text = text.replace(piece, " ")
    text = _REQUEST_WORDS.sub("", text)
    text = re.sub(r"\b(?:in|from|of|for|the|my|our)\s*$", "", text.strip(), flags=re.I)
    return re.sub(r"\s+", " ", text).strip(" ?.!:,")


def extract_arguments(
    goal: str, schema: dict[str, Any], *, given: dict[str, Any] | None = None
) -> Extraction:
    """Fill what ``schema``'s parameters can take from ``goal``; ``given`` values win."""
    props: dict[str, dict[str, Any]] = schema.get("properties", {})
    required = set(schema.get("required", []))
    defs = schema.get("$defs", {})
    result = Extraction(params=dict(given or {}))
    goal = as_read(goal)
    quoted = _quoted(goal)
    # A number inside quotes belongs to that text ("[0-9]+", "Route 66"), not to a count.
    located = _numbers_at(_blanked(QUOTED, goal))
    numbers = [value for value, _ in located]
    paths = paths_in(goal)
    units = _conversion(goal)
    topic = _TOPIC.search(goal)
    date = _DATE.search(goal)
    consumed: list[str] = []
    # A number written beside a parameter's own word ("the first 3 matches") is that
    # parameter's, whatever the order of the parameters.
    named_numbers: dict[str, float | int] = {}
    pooled: list[str] = []  # numeric parameters given the next number in the goal
    for name, prop in props.items():
        if name not in result.params and _kind(prop) in ("number", "integer"):
            found = _number_named(name.lower(), goal)
            if found is None:
                continue
            value, at = found
            # That occurrence, not the first of its value: "scale 1, 2 and 3 by a factor
            # of 2" keeps the list [1, 2, 3].
            index = next((i for i, (_, start) in enumerate(located) if start == at), None)
            if index is None and value in numbers:
                index = numbers.index(value)
            if index is not None:
                del numbers[index], located[index]
                named_numbers[name] = value
    # A pattern chooses among the quoted passages before a text field takes the longest.
    order = sorted(
        props,
        key=lambda n: (
            n not in required,
            not _named(n.lower(), PATTERN_NAMES),
            list(props).index(n),
        ),
    )
    for name in order:
        if name in result.params:
            continue
        prop = props[name]
        kind = _kind(prop)
        lname = name.lower()
        value: Any = None
        choices = _enum(prop, defs)
        if choices:
            value = next((c for c in choices if _says_choice(goal, str(c))), None)
        elif units and lname in ("from_unit", "source_unit", "unit_from"):
            value = units.group("from")
        elif units and lname in ("to_unit", "target_unit", "unit_to"):
            value = units.group("to")
        elif units and kind in ("number", "integer") and lname in ("value", "amount", "quantity"):
            value = quantity(units.group("value"))
            if value in numbers:
                numbers.remove(value)
        elif name in named_numbers:
            value = named_numbers[name]
        elif kind == "integer" and lname in _DATE_PARTS and date:
            value = int(date.group(0)[slice(*_DATE_PARTS[lname])])  # "2024-01-15"
        elif kind in ("number", "integer"):
            pick = next((n for n in numbers if kind == "number" or isinstance(n, int)), None)
            if lname.endswith(BOUND_NAMES) and (upper := _upper_of_range(goal, numbers)):
                pick = upper  # "primes between 1 and 20": the limit is 20, not the first number
            if pick is not None:
                numbers.remove(pick)
                value = pick
                pooled.append(name)
        elif kind == "boolean":
            value = _flag(lname, _blanked(QUOTED, goal))  # the user's quoted text says none
        elif kind == "array":
            items = _items(prop)
            item_kind = _kind(items)
            item_choices = _enum(items, defs)
            if item_choices:  # flags named in the goal: "with the ignorecase flag"
                value = [
                    c for c in item_choices if re.search(rf"\b{re.escape(str(c))}\b", goal, re.I)
                ] or None
            elif item_kind in ("number", "integer") and len(numbers) >= 1:
                value, numbers = list(numbers), []
            elif item_kind == "string" and lname in COLUMN_LIST_NAMES and _COLUMNS.search(goal):
                listed = _COLUMNS.search(goal)  # "the amount and region columns"
                assert listed is not None
                value = re.split(r"\s*,\s*(?:and\s+)?|\s+and\s+", listed.group(1))
            elif item_kind == "string" and quoted:
                value, quoted = list(quoted), []
        elif kind == "object" and lname in FILTER_NAMES:
            value = _filters(goal) or None
        elif kind == "string":
            value = _string_for(lname, goal, quoted, paths, topic)
            if value is None and prop.get("default") == "." and not paths:
                # A folder parameter (its default is the current one): "list files in notes"
                bare = _IN_FOLDER.search(goal)
                if bare and bare.group(1).lower() not in FILLER:
                    value = bare.group(1)
            if isinstance(value, str) and value in quoted:
                quoted.remove(value)
            if isinstance(value, str) and value in paths:
                paths.remove(value)
        if value is not None and value != "":
            result.params[name] = value
            result.used.append(name)
            if isinstance(value, str):
                consumed.append(value)
    _order_bounds(result.params, pooled)
    _exclusive_bound(result.params, props, goal)
    text_params = [
        n
        for n in order
        if n not in result.params and _kind(props[n]) == "string" and _named(n.lower(), TEXT_NAMES)
    ]
    if text_params:
        if topic and any(n in result.params for n in props if n.lower() in TOPIC_NAMES):
            consumed.append(topic.group(0))
        main = _main_text(goal, consumed)
        if main:
            result.params[text_params[0]] = main
            result.used.append(text_params[0])
            result.from_rest = text_params[0]
    result.missing = [n for n in order if n in required and n not in result.params]
    for name in result.used:  # the goal's "${HOME}" is the user's text, not a reference
        result.params[name] = references.literal(result.params[name])
    return result


_VAGUE_WORDS = {"max", "min", "num", "number", "count", "total", "limit"}


# Bounds only: a start and an end keep the goal's order ("count down from 10 to 1").
_LOW_WORDS = frozenset({"min", "minimum", "low", "lower", "floor"})
_HIGH_WORDS = frozenset({"max", "maximum", "high", "upper", "ceiling"})


def _flag(lname: str, goal: str) -> bool | None:
    """A boolean whose name the goal says ("strip punctuation" for ``strip_punctuation``):
    true, or false after a negation ("don't strip punctuation"); None when the goal does
    not say it."""
    named = tokenize(" ".join(w for w in lname.split("_") if w not in _VAGUE_WORDS))
    words = re.findall(r"[^\W_]+", goal.lower())
    # "upper case" and "upper-case" say ``uppercase`` too.
    said = set(tokenize(goal)) | {t for a, b in itertools.pairwise(words) for t in tokenize(a + b)}
    if not named or not set(named) <= said:
        return None
    first = re.search(rf"\b{re.escape(lname.split('_')[0][:4])}\w*", goal, re.I)
    return not (first and _NEGATION.search(goal[: first.start()]))


def _order_bounds(params: dict[str, Any], pooled: list[str]) -> None:
    """A low and a high bound given the goal's numbers in the order the tool lists its
    parameters ("between 1 and 100" gave maximum 1, minimum 100): the smaller is the low."""
    lows = [n for n in pooled if set(n.lower().split("_")) & _LOW_WORDS]
    highs = [n for n in pooled if set(n.lower().split("_")) & _HIGH_WORDS]
    if len(lows) != 1 or len(highs) != 1:
        return
    low, high = lows[0], highs[0]
    same_kind = isinstance(params[low], int) == isinstance(params[high], int)
    if same_kind and params[low] > params[high]:
        params[low], params[high] = params[high], params[low]


def _number_named(lname: str, goal: str) -> tuple[float | int, int] | None:
    """The number written right before or after a word of the parameter's name: "3 matches"
    or "matches: 3" for ``max_matches``, and where it starts; None when its name has no
    such word in the goal."""
    for word in lname.split("_"):
        if len(word) < 3 or word in _VAGUE_WORDS:
            continue
        stem = re.escape(word.rstrip("s"))
        found = re.search(
            rf"(?<![\w.])({_DIGITS}(?:\.\d+)?)\s+{stem}\w*"
            rf"|\b{stem}\w*\s*(?:of|:|=)?\s*({_DIGITS}(?:\.\d+)?)\b",
            goal,
            re.I,
        )
        if found:
            group = 1 if found.group(1) else 2
            return numbers_in(found.group(group))[0], found.start(group)
    return None


_NUM = r"(?:\d[\d.]*|\.\d+)"
_SIGNED = rf"(?:(?<![\d.)])-)?{_NUM}"  # "-3", but not the "-5" of "3-5": that is subtraction
_NUMBER_LIST = re.compile(  # "add 3, 4 and 5", "the sum of 3 and 4", "the average of 3 and 4"
    rf"\b(?:(?P<sum>add|(?:the\s+)?sum(?:\s+of)?)|(?:the\s+)?(?P<product>product)\s+of|"
    rf"(?:the\s+)?(?P<mean>average|mean)\s+of)\s+"
    rf"(?P<numbers>{_SIGNED}(?:\s*,\s*{_SIGNED})*\s*,?\s+and\s+{_SIGNED})(?![\w.])",
    re.I,
)


def _listed(match: re.Match[str]) -> str:
    numbers = re.findall(rf"-?{_NUM}", match.group("numbers"))
    if match.group("mean"):
        return f"({' + '.join(numbers)}) / {len(numbers)}"
    return f"({(' + ' if match.group('sum') else ' * ').join(numbers)})"  # "... multiplied by 4"


_SPOKEN_MATH = (
    (re.compile("[\u00d7\u2715]"), "*"),  # multiplication signs
    (re.compile("\u00f7"), "/"),
    (re.compile(r"(?<=\d)\s*[\u2212\u2013]\s*(?=[\d.(])"), " - "),  # minus, en dash
    (re.compile(rf"(?:the\s+)?square\s+root\s+of\s+({_NUM})", re.I), r"sqrt(\1)"),
    (re.compile(rf"({_NUM})\s*(?:%|percent)\s+of\s+({_SIGNED})", re.I), r"(\1 / 100 * \2)"),
    (re.compile(rf"({_SIGNED})\s+squared\b", re.I), r"(\1) ** 2"),  # "-5 squared" is 25
    (re.compile(rf"({_SIGNED})\s+cubed\b", re.I), r"(\1) ** 3"),
    (re.compile(r"\b(?:to\s+the\s+power\s+of|raised\s+to(?:\s+the\s+power\s+of)?)\b", re.I), "**"),
    (
        re.compile(rf"\bmultiply\s+({_SIGNED})\s+(?:by|and|with)\s+({_SIGNED})", re.I),
        r"\1 * \2",
    ),
    (re.compile(rf"\bdivide\s+({_SIGNED})\s+by\s+({_SIGNED})", re.I), r"\1 / \2"),
    (  # "the remainder of 17 divided by 5", "17 mod 5"
        re.compile(
            rf"\bremainder\s+(?:of|when)\s+({_SIGNED})\s+(?:is\s+)?divided\s+by\s+({_SIGNED})", re.I
        ),
        r"\1 % \2",
    ),
    (  # "round 3.14159 to 2 decimals"
        re.compile(
            rf"\bround\s+({_SIGNED})\s+to\s+(\d+)\s+(?:decimals?|decimal\s+places|places|digits)\b",
            re.I,
        ),
        r"round(\1, \2)",
    ),
    (re.compile(r"(?<=\d)\s+(?:mod|modulo)\s+(?=[-\d.])", re.I), " % "),
    (re.compile(r"(?<=[\d)])\s*\^\s*(?=[-\d.(])"), " ** "),  # "2^10": powers, as written
    (_NUMBER_LIST, _listed),
    (re.compile(rf"\badd\s+({_SIGNED})\s+(?:and|to)\s+({_SIGNED})", re.I), r"\1 + \2"),
    (re.compile(rf"\bsubtract\s+({_SIGNED})\s+from\s+({_SIGNED})", re.I), r"\2 - (\1)"),
    (re.compile(r"\b(?:times|multiplied\s+by)\b", re.I), "*"),
    (re.compile(r"\bdivided\s+by\b", re.I), "/"),
    (re.compile(r"\bplus\b", re.I), "+"),
    (re.compile(r"\bminus\b", re.I), "-"),
)
_OPERATOR_TEXT = r"\*\*|[+*/^%]|\s-\s"  # a hyphen between digits is a date's or a phone's
_OPERATOR = re.compile(_OPERATOR_TEXT)  # ("3 times a week": a lone 3 beside "*")
_ARITHMETIC = re.compile(
    rf"[\d.)]\s*(?:{_OPERATOR_TEXT})\s*[\d.(]|\b(?:sqrt|log|exp|sin|cos|tan|round|abs|floor|ceil)\("
)
_GROUPED = re.compile(r"(?<![\w.,])\d{1,3}(?:,\d{3})+(?![\d,])")
# "1 500" or "12 000 000" (spaces, no-break or thin spaces between groups of three): in an
# expression two numbers side by side mean nothing, so they are one number written in groups.
_SPACED = re.compile(r"(?<![\w.,])\d{1,3}(?:[ \u00a0\u2009\u202f]\d{3})+(?![\w.,])")


@functools.lru_cache(maxsize=1024)  # plan memory asks again for each value it re-binds
def spoken_math(goal: str) -> str:
    """``goal`` with arithmetic written in words or signs as the calculator writes it:
    "7 times 6" is "7 * 6", "15% of 200" is "(15 / 100 * 200)", "the square root of 144"
    is "sqrt(144)", a multiplication sign is "*", "the sum of 3, 4 and 5" is "3 + 4 + 5";
    "1,250" outside a call's parentheses is 1250, and so is "1 250"."""
    out, last = [], 0
    for match in _GROUPED.finditer(goal):  # first: the words' patterns take plain numbers
        if not _in_call(goal, match.start()):
            out += [goal[last : match.start()], match.group(0).replace(",", "")]
            last = match.end()
    goal = _SPACED.sub(lambda m: re.sub(r"\D", "", m.group(0)), "".join(out) + goal[last:])
    for pattern, replacement in _SPOKEN_MATH:
        goal = pattern.sub(replacement, goal)
    return goal


def _in_call(text: str, position: int) -> bool:
    """Whether ``position`` lies inside a call's parentheses ("max(1,250)": two arguments),
    not a group's ("(1,250 + 750) * 2": one number)."""
    depth = 0
    for index in range(position - 1, -1, -1):
        char = text[index]
        if char == ")":
            depth += 1
        elif char == "(":
            if depth == 0:
                return bool(re.search(rf"{_MATH_NAMES}\s*$", text[:index], re.I))
            depth -= 1
    return False


def written_arithmetic(goal: str) -> bool:
    """Whether ``goal`` writes out arithmetic (in signs or words, as ``spoken_math`` reads
    them): an operator or a function between numbers, and no unit conversion."""
    return bool(_ARITHMETIC.search(spoken_math(goal))) and not _converts_units(goal)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _named(lname: str, names: tuple[str, ...]) -> bool:
    return any(h == lname or lname.endswith(h) for h in names)


_TIMES_X = re.compile(r"(?<![\w./])(\d[\d.]*)\s*x\s*(-?\d[\d.]*)(?![\w/])")
_ONLY_A_NUMBER = re.compile(
    r"\s*(?:please\s+)?(?:(?:calculate|compute|evaluate|what(?:'s|\s+is)|how\s+much\s+is)\s+)*"
    r"(?:the\s+value\s+of\s+)?[-+]?(?:\d[\d.]*|\.\d+)(?:e[-+]?\d+)?\s*[?.!]?\s*",
    re.I,
)


_EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"
_LINK = r"https?://[^\s<>\"')\]]+"  # not the ")" or "]" that closes a Markdown link
_PATTERNS = {  # by the first two letters of what the goal asks to pull out of a text
    "em": _EMAIL,
    "e-": _EMAIL,
    "ur": _LINK,
    "li": _LINK,
    "ph": r"(?<![\w-])(?!\d{4}-\d{2}-\d{2}\b)\+?\d[\d ().-]{5,}\d(?![\w-])",  # not a date
    "da": r"\b\d{4}-\d{2}-\d{2}\b",
    "nu": r"(?<![\w.-])-?\d+(?:[.,]\d+)*",  # "2023-04-01" is no "-04"
}
_KINDS = r"(e-?mail(?:\s+address)?|url|link|phone(?:\s+number)?|date|number)"
_NAMED_PATTERN = re.compile(  # "extract the email", "find all emails"; not "the number of rows"
    rf"\b(?:extract\s+(?:(?:all|every|each|the)\s+)*{_KINDS}(?:e?s)?"
    rf"|(?:find|get|list|show|pull(?:\s+out)?|collect)\s+(?:(?:all|every|each|the)\s+)*"
    rf"{_KINDS}(?:es|s))\b(?!\s+of\b)",
    re.I,
)


_POINTER = re.compile(r"(?<![\w./~:])#?/[^\s/\"']+(?:/[^\s/\"']*)*(?<![.,;?!])")  # JSON Pointer


_BOUND = re.compile(
    rf"\b(?:(?P<below>below|under|less\s+than|smaller\s+than|lower\s+than)|up\s+to|at\s+most|"
    rf"no\s+more\s+than|not\s+above|until|through)\s+(?:and\s+including\s+)?({_AMOUNT})",
    re.I,
)
BOUND_NAMES = ("limit", "max", "maximum", "upper", "bound", "up_to", "until", "stop", "end")


_BETWEEN = re.compile(rf"\bbetween\s+({_AMOUNT})\s+and\s+({_AMOUNT})(?![\w.])", re.I)


def _upper_of_range(goal: str, numbers: list[float | int]) -> float | int | None:
    """The larger number of "between A and B", as the goal wrote it, for a tool's one upper
    bound: the first number in the goal is the lower one."""
    found = _BETWEEN.search(goal)
    if found is None:
        return None
    upper = max(numbers_in(found.group(1)) + numbers_in(found.group(2)), default=None)
    return upper if upper in numbers else None


def bound_in(goal: str) -> float | None:
    """The number a goal gives as a bound ("primes below 30": 30), if any: it is the value
    of a tool's limit, not a number to test ("is 30 prime" is another question)."""
    found = _BOUND.search(goal)
    return quantity(found.group(2)) if found else None


def _exclusive_bound(params: dict[str, Any], props: dict[str, Any], goal: str) -> None:
    """ "primes below 29" asks for no 29: a whole-number limit its tool counts in ("the
    largest number to consider") takes the number before a bound the goal keeps out."""
    found = _BOUND.search(goal)
    if found is None or not found.group("below"):
        return
    bound = quantity(found.group(2))
    for name, value in params.items():
        prop = props.get(name, {})
        if (
            name.lower().endswith(BOUND_NAMES)
            and _kind(prop) == "integer"
            and value == bound
            and _INCLUSIVE.search(str(prop.get("description", "")))
        ):
            params[name] = int(value) - 1


_INCLUSIVE = re.compile(r"\b(?:largest|greatest|including|inclusive|at\s+most)\b", re.I)


def names_a_pattern(goal: str) -> bool:
    """Whether the goal asks to pull a kind of text out ("find all emails in x.txt")."""
    return _NAMED_PATTERN.search(goal) is not None


def _string_for(
    lname: str, goal: str, quoted: list[str], paths: list[str], topic: re.Match[str] | None
) -> str | None:
    if _named(lname, EXPRESSION_NAMES):
        # "3 x 4" is a product only in what a calculator is given: in a goal it is as likely
        # a card's size or a file's name ("3 x 5 cards", "img_2x2.txt").
        spoken = _TIMES_X.sub(r"\1 * \2", spoken_math(goal))
        candidates = [_called(m.group(0).strip()) for m in _MATH_EXPRESSION.finditer(spoken)]
        # A lone number is the expression only when the goal asks for nothing but it
        # ("calculate 42"): of "7 times 6" read wrong, taking "7" would answer a confident
        # wrong 7, and so would "5 factorial", "is 7.5 prime" or "5 kg in pounds".
        alone = bool(_ONLY_A_NUMBER.fullmatch(spoken))
        candidates = [
            c
            for c in candidates
            if re.search(r"[-+*/%^(]|\w\(", c.lstrip("-+")) or (alone and _is_number(c))
        ]
        return _rounded(goal, max(candidates, key=len)) if candidates else None
    if _named(lname, PATTERN_NAMES):  # the quoted passage that reads as a pattern
        glob = _GLOB.search(goal)  # or a name pattern written bare: "the *.md files"
        named = _NAMED_PATTERN.search(goal)  # "extract the emails": the pattern of one
        fallback = (
            _PATTERNS[next(g for g in named.groups() if g).lower()[:2]]
            if named
            else quoted[0]
            if quoted
            else glob.group(0)
            if glob
            else None
        )
        return next((q for q in quoted if _REGEX_SIGNS.search(q)), fallback)
    if lname.endswith("pointer") and not quoted:  # "get /users/0/name from data.json"
        found = _POINTER.search(goal)
        if found:
            return found.group(0)
        # Written without its leading slash, "users/0/name" is the same pointer; a file's
        # path ("data/users.json") is not one.
        bare = [
            written
            for m in re.finditer(_SLASHED, goal)
            if not _PATH.fullmatch(written := m.group(0).rstrip(".,;?!"))
        ]
        return f"/{bare[0]}" if bare else None
    if lname in TOPIC_NAMES:
        return topic.group(1).strip() if topic else None
    if "url" in lname:
        found = _URL.search(goal)
        return found.group(0) if found else None
    if "date" in lname or lname.endswith("_at") or lname in ("since", "until"):
        found = _DATE.search(goal)
        return found.group(0) if found else None
    if any(h in lname for h in PATH_HINTS) and paths:
        return paths[0]
    if _named(lname, FOLDER_NAMES) and not paths:
        found = _FOLDER.search(goal)  # "in the reports folder", "under reports/2024"
        if found:
            return next(g for g in found.groups() if g)
    if lname in GROUP_NAMES:  # "grouped by region", "per product"
        found = _GROUPED_BY.search(goal)
        if found and found.group(1).lower() not in FILLER:
            return found.group(1)
    if lname in COLUMN_NAMES:  # "the amount column", "total amount by region"
        found = _COLUMN.search(goal)
        if found:
            return next(g for g in found.groups() if g)
    label = re.escape(lname.replace("_", " "))
    named = [  # "room B", "city Oslo": the last such pair is the most specific
        name
        for m in re.finditer(rf"\b{label}\s+(?=[\w.-])", goal, re.I)
        if (name := _name_at(goal, m.end())).lower() not in FILLER
    ]
    if named:
        return named[-1]
    if quoted:  # text fields take the longest quoted passage, others the first
        if _named(lname, TEXT_NAMES):
            return max(quoted, key=len)
        return quoted[0]
    return None


_BARE_CALL = re.compile(
    rf"(?P<name>sqrt|log|exp|sin|cos|tan|abs)\s+(?!\()(?P<operand>{_MATH_NUMBER})(?P<rest>.*)"
    r"|round\s+(?!\()(?P<rounded>.+)",
    re.I,
)
# Rounding asked as an instruction: "and round", ", rounded", "round 100 / 8", "rounded up";
# not a noun or an adjective ("rounding errors", "a round pool").
_ROUND_ASKED = re.compile(
    r"(?:^|\band\s+|\bthen\s+|,\s*)(?:please\s+)?round\b(?!\s+(?:trip|robin|of|table)\b)"
    r"|\brounded\b",
    re.I,
)
_ROUND_WAY = re.compile(
    r"\bround(?:ed)?\s+(?:it\s+|that\s+|the\s+(?:result|answer)\s+)?(up|down)\b", re.I
)
_ROUND_PLACES = re.compile(
    r"\bto\s+(?:(?P<places>\d+)\s+(?:decimals?|decimal\s+places|places|digits)"
    r"|the\s+nearest\s+(?P<nearest>whole\s+number|integer|ten|hundred|thousand|tenth|"
    r"hundredth|thousandth))\b",
    re.I,
)
_NEAREST = {"ten": -1, "hundred": -2, "thousand": -3, "tenth": 1, "hundredth": 2, "thousandth": 3}


def _called(expression: str) -> str:
    """A function written before what it takes, without parentheses, as a call: "sqrt 16 +
    9" is "sqrt(16) + 9" (a function binds its operand before any operator), and "round 100 /
    8" is "round(100 / 8)" (rounding is asked of the result); the calculator reads neither."""
    bare = _BARE_CALL.fullmatch(expression)
    if bare is None:
        return expression
    if bare.group("rounded") is not None:
        return f"round({bare.group('rounded')})"
    return f"{bare.group('name').lower()}({bare.group('operand')}){bare.group('rest')}"


def _rounded(goal: str, expression: str) -> str:
    """``expression`` rounded as the goal asks ("divide 100 by 8 and round", "..., rounded
    to 2 decimal places", "round 100 / 8 to the nearest ten", "rounded up"): left as it is,
    the answer has every decimal."""
    asked = _ROUND_ASKED.search(goal)
    if asked is None:
        return expression
    inner = expression
    if expression.startswith("round(") and expression.endswith(")") and "," not in expression:
        inner = expression[len("round(") : -1]  # a bare "round 100 / 8": places may follow
    elif re.search(r"\b(?:round|floor|ceil)\(", expression):
        return expression  # "round 3.14159 to 2 decimals", read as a call already
    way = _ROUND_WAY.search(goal)
    places = _ROUND_PLACES.search(goal, asked.start())
    digits = 0
    if places is not None:
        written = places.group("places")
        digits = int(written) if written else _NEAREST.get(places.group("nearest").lower(), 0)
    if way and not digits:  # "rounded up": to a whole number (no function here takes places)
        return f"{'ceil' if way.group(1).lower() == 'up' else 'floor'}({inner})"
    return f"round({inner}, {digits})" if digits else f"round({inner})"


GROUP_NAMES = ("group_by", "groupby", "by", "key")
COLUMN_NAMES = ("column", "value_column", "field")
_AGGREGATE_WORDS = r"sum|total|average|mean|max(?:imum)?|min(?:imum)?|highest|lowest|count"
_GROUPED_BY = re.compile(
    r"\b(?:grouped\s+by|group\s+by|by|per|for\s+each|for\s+every)\s+(?:the\s+)?([A-Za-z_][\w-]*)",
    re.I,
)
_COLUMN = re.compile(
    r"\b(?:the\s+)?([A-Za-z_][\w-]*)\s+column\b(?!\s+[A-Za-z_])"
    rf"|\b(?:{_AGGREGATE_WORDS})\s+(?:of\s+)?(?:the\s+)?"
    r"(?!(?:column|rows?|lines?|records?|entries|entry|items?|values?)\b)([A-Za-z_][\w-]*)",
    re.I,
)
COLUMN_LIST_NAMES = ("columns", "fields")
FILTER_NAMES = ("where", "filter", "filters")
_COLUMNS = re.compile(
    r"\b(?:the\s+)?([A-Za-z_][\w-]*(?:(?:\s*,\s*(?:and\s+)?|\s+and\s+)[A-Za-z_][\w-]*)+)\s+columns\b",
    re.I,
)
_WHERE = re.compile(r"\bwhere\s+(.+?)\s*[?.!]?\s*$", re.I)
_EQUALS = re.compile(
    r"([A-Za-z_][\w-]*)\s*(?:==?|\bis\b|\bequals\b)\s*(?:\"([^\"]*)\"|'([^']*)'|(\S+))", re.I
)


def _filters(goal: str) -> dict[str, str]:
    """The equality filters of "... where region is North and qty = 3": column -> value."""
    found = _WHERE.search(goal)
    if not found:
        return {}
    filters = {}
    for part in re.split(r"\s+and\s+", found.group(1)):
        match = _EQUALS.fullmatch(part.strip())
        if match is None:
            return {}  # a condition this reader cannot read whole: none rather than a part
        filters[match.group(1)] = next(g for g in match.groups()[1:] if g is not None)
    return filters


_CHOICE_WORDS = {  # an enum's value as a goal says it: "the total amount" is a sum
    "sum": ("total",),
    "mean": ("average", "avg"),
    "max": ("maximum", "highest", "largest"),
    "min": ("minimum", "lowest", "smallest"),
}


def _says_choice(goal: str, choice: str) -> bool:
    words = (choice, *_CHOICE_WORDS.get(choice.lower(), ()))
    return any(re.search(rf"\b{re.escape(w)}\b", goal, re.I) for w in words)


def _name_at(goal: str, start: int) -> str:
    """The value written at ``start``: one word, or a name of several capitalised words
    ("New York", "Living Room"), up to a word that is no part of a name ("Please", "To",
    a lone letter or an abbreviation: "Oslo I guess", "Paris TX")."""
    words = re.match(r"[\w.-]+(?:\s+[\w.-]+)*", goal[start:])
    parts = words.group(0).split() if words else []
    if not parts:
        return ""
    name = [parts[0]]
    if parts[0][:1].isupper():
        for word in parts[1:]:
            if not word[:1].isupper() or len(word) == 1 or word.isupper():
                break
            if word.lower() in FILLER or word.lower() in _NOT_NAMES:
                break
            name.append(word)
    return " ".join(name)


_NOT_NAMES = frozenset({"please", "thanks", "today", "tomorrow", "now", "then"})


_LIST_JOINER = r"(?:\s*,\s*(?:and\s+)?|\s+(?:and|&)\s+)"  # "a, b", "a and b", "a, and b"


def one_goal_per_file(goal: str) -> list[str]:
    """The goal once per file it lists, each joined to the next by a comma or "and" ("a.md,
    b.md and c.md"), with the list replaced by that file and the rest of its words kept
    ("... in 2 sentences"); none when it names fewer than two, or names them apart ("a.md
    for bob.txt")."""
    named = list(dict.fromkeys(paths_in(goal)))
    listing = re.search(_LIST_JOINER.join(re.escape(name) for name in named), goal)
    if len(named) < 2 or listing is None:
        return []
    return [goal[: listing.start()] + name + goal[listing.end() :] for name in named]
