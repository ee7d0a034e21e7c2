"""The built-in tool packs: math, text, documents, files and data.

Every tool is exercised on its good path and its bad paths as plain Python, then once more
through the real engine (``Orchestrator.process``) to prove it works as a registered tool.
The documents and files live in ``tmp_path``: Markdown, plain text, HTML, a real PDF with
text (a minimal hand-written content stream), a corrupt PDF, CSV and JSON files, and
symbolic links that try to leave the root.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import time
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from dendrite import Orchestrator
from dendrite.planning.plan import Plan, PlanValidationError, Step
from dendrite.store import ExecutionStore
from dendrite.tools import ToolArgumentError, ToolRegistry
from dendrite.tools.builtin import (
    BuiltinToolError,
    CalculationError,
    DataError,
    DocumentStore,
    FileSandbox,
    PathOutsideRootError,
    PatternError,
    PatternTooSlowError,
    UnitError,
    UnknownDocumentError,
    register_builtin,
    register_documents,
    register_files,
    register_math,
    register_text,
    text_tools,
)
from dendrite.tools.builtin._text import Block
from dendrite.tools.builtin.documents import chunk_blocks
from dendrite.tools.builtin.math_tools import (
    MAX_PRIME_COUNT,
    MAX_PRIME_LIMIT,
    calculate,
    convert_units,
    first_primes,
    is_prime,
    primes,
    statistics,
)
from dendrite.tools.builtin.text_tools import keywords, normalize_text, regex_extract, word_count

# -- test data ----------------------------------------------------------------------------

ORCHESTRATOR_MD = """\
---
title: ignored front matter
---
# Dendrite orchestrator guide

Dendrite is an orchestrator for tools and agents. It records every goal and every tool call
in an execution-history store, and the analytics over that history feed the next decision.

## Plans and steps

A plan is a goal and a list of steps. Each step names a tool and its parameters; a step
starts as soon as its own dependencies are done. References such as `${search.hits.0}` pass
the output of one step to the next. The engine validates every plan before running it, so
an unknown tool or a dependency cycle is reported at once, with a hint.

Steps may have **timeouts**, *retries* with exponential backoff and fallbacks. A retry is
only attempted for errors that can succeed on a second try: timeouts, rate limits and
connection failures. A validation error is never retried, because it would fail the same
way again. Fallbacks run once the retries are spent, each with the same retry policy.
Conditions written with `when` skip a step, and the steps that need it, when they are
false. A `for_each` step runs once per element of a list produced upstream.

- Retries multiply the backoff by two each time.
- Fallbacks receive the parameters they accept by name.
- Disabled or quarantined tools are skipped.

## Confidence

The confidence of a step is the success probability of its tool: a Beta posterior of the
tool's reliability prior and its recorded history. Each retry lowers it a little, and an
answer from a fallback lowers it more. See [the design notes](https://example.org/design).

```python
orch.process(plan)  # runs the plan and records it
```
"""

STORE_TXT = """\
The execution-history store

The store records every execution and every tool call. It runs on SQLite by default and on
PostgreSQL when a database URL is given. Writes never block the caller: records are
validated, queued and written in batches by a background thread.

When the database is unreachable, batches go to a journal on disk, fsync'd, and are replayed
when the database returns. Dr. Smith measured the journal at 3.5 MB per million records,
e.g. on a laptop with an SSD.

Rollup tables keep the analytics fresh: success rates, timing percentiles and error
patterns per tool. They survive pruning of old rows.

- Migrations run automatically on first use.
- The SQLite file lives in the per-user data directory.
"""

PRICING_HTML = """\
<!DOCTYPE html>
<html>
<head>
  <title>Pricing &amp; plans</title>
  <style>body { color: red; }</style>
  <script>var tracking = "do not index this script";</script>
</head>
<body>
  <nav><a href="/">Home</a> <a href="/login">Login menu</a></nav>
  <h1>Pricing</h1>
  <p>The Team plan costs &euro;20 per user per month, billed annually. The Enterprise plan
  adds single sign-on, audit logs and a dedicated support engineer.</p>
  <h2>Refunds</h2>
  <p>Annual plans can be refunded within 30 days of purchase. Monthly plans are not
  refunded, but can be cancelled at any time.</p>
  <ul><li>Refunds go back to the original card.</li><li>Taxes are refunded too.</li></ul>
  <h2>Support</h2>
  <p>Support answers within one business day; Enterprise customers get a four-hour
  response time for urgent tickets.</p>
</body>
</html>
"""

REPORT_LINES = [
    "Quarterly report of the orchestrator team.",
    "Revenue grew by twelve percent in the third quarter.",
    "Costs fell because the cache hit rate of the store improved.",
    "The journal replay removed every lost record after outages.",
]

NOTES_MD = """\
# Meeting notes

The team agreed to ship the journal replay fix next week. Pricing was not discussed.
"""


def make_pdf(lines: list[str], title: str | None = None) -> bytes:
    """A real one-page PDF whose text pypdf can extract (Helvetica, one line per entry)."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    operators = ["BT", "/F1 11 Tf", "14 TL", "72 720 Td"]
    operators += [f"({escape(line)}) Tj T*" for line in lines]
    operators.append("ET")
    stream = "\n".join(operators).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
    ]
    if title:
        objects.append(b"<< /Title (" + escape(title).encode("latin-1") + b") >>")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    info = b" /Info %d 0 R" % len(objects) if title else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        info,
        xref,
    )
    return bytes(out)


@pytest.fixture
def docs_root(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "notes").mkdir(parents=True)
    (root / "orchestrator.md").write_text(ORCHESTRATOR_MD, encoding="utf-8")
    (root / "store.txt").write_text(STORE_TXT, encoding="utf-8")
    (root / "pricing.html").write_text(PRICING_HTML, encoding="utf-8")
    (root / "report.pdf").write_bytes(make_pdf(REPORT_LINES, title="Quarterly report"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\ngarbage\n")
    (root / "notes" / "meeting.md").write_text(NOTES_MD, encoding="utf-8")
    (root / ".draft.md").write_text("# Hidden draft\n\nNot to be loaded.\n", encoding="utf-8")
    (root / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    return root


@pytest.fixture
def store(docs_root: Path) -> DocumentStore:
    return DocumentStore(docs_root)


SALES_CSV = """\
region,product,units,revenue
North,Widget,10,"1,250.50"
South,Widget,4,480
North,Gadget,7,910.25
East,Widget,,0
south,Gadget,3,abc
"""

CONFIG = {
    "service": {"name": "dendrite", "ports": [8080, 8443]},
    "servers": [{"host": "alpha", "tags": ["db"]}, {"host": "beta", "tags": []}],
    "a/b": "slash",
    "m~n": "tilde",
    "": "empty key",
    "flag": True,
}


@pytest.fixture
def files_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    (root / "data" / "nested").mkdir(parents=True)
    (root / "data" / "sales.csv").write_text(SALES_CSV, encoding="utf-8")
    (root / "data" / "semi.csv").write_text("name;score\nada;3\nbob;5\n", encoding="utf-8")
    (root / "data" / "nested" / "deep.txt").write_text("deep\n", encoding="utf-8")
    (root / "config.json").write_text(json.dumps(CONFIG), encoding="utf-8")
    (root / "bad.json").write_text('{"a": 1,,}', encoding="utf-8")
    (root / "readme.txt").write_text("Hello, files.\nSecond line: café.\n", encoding="utf-8")
    (root / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (root / ".env").write_text("SECRET=1\n", encoding="utf-8")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("top secret\n", encoding="utf-8")
    (tmp_path / "sibling.txt").write_text("sibling secret\n", encoding="utf-8")
    try:
        (root / "escape.txt").symlink_to(outside / "secret.txt")
        (root / "escape_dir").symlink_to(outside, target_is_directory=True)
        (root / "alias.txt").symlink_to(root / "readme.txt")
    except OSError:  # pragma: no cover - platforms without symbolic links
        pass
    return root


@pytest.fixture
def sandbox(files_root: Path) -> FileSandbox:
    return FileSandbox(files_root)


def needs_symlinks(root: Path) -> None:
    if not (root / "escape.txt").is_symlink():  # pragma: no cover
        pytest.skip("symbolic links are not available here")


@pytest.fixture
def registry(store: DocumentStore, files_root: Path) -> ToolRegistry:
    registry = ToolRegistry()
    register_builtin(registry, docs_root=store, files_root=files_root)
    return registry


def run_plan(registry: ToolRegistry, *steps: Step) -> Any:
    with Orchestrator(registry, store=None) as orch:
        return orch.process(Plan(goal="use the built-in tools", steps=list(steps)))


def run_tool(registry: ToolRegistry, tool: str, params: dict[str, Any]) -> Any:
    result = run_plan(registry, Step(id="call", tool=tool, params=params))
    assert result.success, result.error
    return result.output


# -- registration and schemas -------------------------------------------------------------

MATH_TOOLS = ["calculate", "convert_units", "first_primes", "is_prime", "primes", "statistics"]
TEXT_TOOLS = ["keywords", "normalize_text", "regex_extract", "word_count"]
DOCUMENT_TOOLS = ["compare_documents", "list_documents", "search_documents", "summarize_document"]
FILE_TOOLS = ["csv_aggregate", "csv_select", "json_select", "list_files", "read_file"]


def test_register_builtin_registers_every_pack_with_described_schemas(registry: ToolRegistry):
    assert registry.names() == sorted(MATH_TOOLS + TEXT_TOOLS + DOCUMENT_TOOLS + FILE_TOOLS)
    described = {d["name"]: d for d in registry.describe()}
    for name, entry in described.items():
        schema = entry["parameters"]
        assert entry["description"], name
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name
        assert "self" not in schema["properties"], name  # bound methods hide their instance
        for param, prop in schema["properties"].items():
            assert prop.get("description"), f"{name}.{param} has no description"
    search = described["search_documents"]
    assert search["parameters"]["required"] == ["query"]
    assert search["parameters"]["properties"]["top_k"] == {
        "default": 5,
        "description": "the most passages to return, 1 to 50",
        "maximum": 50,
        "minimum": 1,
        "type": "integer",
    }
    assert described["csv_aggregate"]["parameters"]["properties"]["op"]["enum"] == [
        "sum",
        "mean",
        "min",
        "max",
        "count",
    ]
    flags = described["regex_extract"]["parameters"]["properties"]["flags"]
    assert flags["items"]["enum"] == ["ignorecase", "multiline", "dotall", "verbose", "ascii"]
    assert described["primes"]["parameters"]["properties"]["limit"]["maximum"] == 10_000_000
    assert described["statistics"]["returns"]["required"] == [
        "count",
        "mean",
        "median",
        "stdev",
        "min",
        "max",
    ]
    assert "snippet" in json.dumps(described["search_documents"]["returns"])
    assert {d["reliability"] for d in described.values()} == {"high"}
    assert set(described["read_file"]["tags"]) == {"files", "data"}


def test_packs_register_alone_and_optional_roots_are_skipped(tmp_path: Path, docs_root: Path):
    registry = ToolRegistry()
    tools = register_builtin(registry)
    assert [t.name for t in tools] == [
        "calculate",
        "is_prime",
        "primes",
        "first_primes",
        "statistics",
        "convert_units",
        "keywords",
        "word_count",
        "regex_extract",
        "normalize_text",
    ]
    assert {t.name for t in register_documents(registry, docs_root)} == set(DOCUMENT_TOOLS)
    assert {t.name for t in register_files(registry, tmp_path)} == set(FILE_TOOLS)
    again = ToolRegistry()
    register_math(again)
    register_text(again)
    assert again.names() == sorted(MATH_TOOLS + TEXT_TOOLS)
    with pytest.raises(ValueError, match="already registered"):
        register_math(again)
    assert register_math(again, replace=True)[0].version == 2


def test_roots_must_be_existing_folders(tmp_path: Path):
    with pytest.raises(NotADirectoryError, match="not a folder"):
        FileSandbox(tmp_path / "missing")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        register_builtin(ToolRegistry(), docs_root=tmp_path / "missing")
    with pytest.raises(ValueError, match="chunk_size"):
        DocumentStore(tmp_path, chunk_size=50)


# -- math ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("1 + 2 * 3", 7.0),
        ("2 * (3 + 4) ** 2 / sqrt(16)", 24.5),
        ("-2 ** 2", -4.0),
        ("(-2) ** 2", 4.0),
        ("10 // 3 + 10 % 3", 4.0),
        ("7 / 2", 3.5),
        ("2 ** -1", 0.5),
        ("2 ** 0.5", math.sqrt(2)),
        ("max(1, 5, 3) - min(4, 2)", 3.0),
        ("log(8, 2) + ln(e) + log10(1000) + log2(4)", 9.0),
        ("round(pi, 3)", 3.142),
        ("exp(0) + abs(-2.5)", 3.5),
        ("sin(pi / 2) + cos(0)", 2.0),
        ("floor(2.7) + ceil(2.1)", 5.0),
        ("1e3 + 0x10", 1016.0),
        ("2 ** 1000 / 2 ** 999", 2.0),  # exact integers until the final float
        ("1 ** 10 ** 100", 1.0),
        ("  3  ", 3.0),
    ],
)
def test_calculate_evaluates_arithmetic_functions_and_constants(expression: str, expected: float):
    assert calculate(expression) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("__import__('os').system('id')", "unknown function \"__import__('os').system\""),
        ("__import__('os')", "unknown function '__import__'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("eval('1 + 1')", "unknown function 'eval'"),
        ("exec('import os')", "unknown function 'exec'"),
        ("globals()", "unknown function 'globals'"),
        ("().__class__.__bases__[0].__subclasses__()", "unknown function"),
        ("(1).__class__", "not allowed in an expression: attribute access"),
        ("math.sqrt(4)", "unknown function 'math.sqrt'"),
        ("__builtins__", "unknown name '__builtins__'"),
        ("x + 1", "unknown name 'x'"),
        ("lambda: 1", "not allowed in an expression: lambda"),
        ("[1, 2][0]", "not allowed in an expression: indexing"),
        ("[c for c in 'ab']", "not allowed in an expression: comprehension"),
        ("'a' * 3", "only numbers are allowed, got 'a'"),
        ("True + 1", "only numbers are allowed, got True"),
        ("1j * 2", "only numbers are allowed"),
        ("1 < 2", "not allowed in an expression: comparison"),
        ("1 if 1 else 2", "not allowed in an expression: conditional expression"),
        ("(y := 2)", "not allowed in an expression: assignment"),
        ("f'{1}'", "not allowed in an expression: f-string"),
        ("1 << 4", "the operator LShift is not allowed"),
        ("~1", "the operator Invert is not allowed"),
        ("sqrt(x=4)", "plain positional arguments only"),
        ("sqrt(*[4])", "plain positional arguments only"),
        ("sqrt(1, 2)", "sqrt() takes 1 argument(s), got 2"),
        ("min()", "min() takes at least 1 argument(s), got 0"),
        # Python's own message was "Perhaps you forgot a comma?"
        ("1 500 + 2", "two numbers side by side ('1 500'); write one number without spaces (1500)"),
        ("2.5 3", "two numbers side by side ('2.5 3')"),
    ],
)
def test_calculate_refuses_anything_but_arithmetic(expression: str, message: str):
    with pytest.raises(CalculationError) as caught:
        calculate(expression)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("9**9**9", "9**387420489 is too large"),
        ("9**9**9**9", "too large"),
        ("2**100000", "too large"),
        ("10**5000", "too large"),
        ("(10**1000)**10", "<a 3322-bit integer>**10 is too large"),
        ("2**4095 * 2", "intermediate result has 4097 bits"),
        ("(2**4000) / 3", "the result is too large"),
        ("1.5 ** 10 ** 100", "the result is too large"),
        ("exp(1000)", "the result is too large"),
        ("1e308 * 10", "the result is not finite"),
        ("round(5, -10**9)", "digits must be within ±100"),
        ("-" * 200 + "1", "nested deeper than 100 levels"),
        ("(" * 300 + "1" + ")" * 300, "cannot parse"),
        ("1" * 1001, "the limit is 1000"),
    ],
)
def test_calculate_refuses_huge_work_quickly(expression: str, message: str):
    started = time.perf_counter()
    with pytest.raises(CalculationError) as caught:
        calculate(expression)
    assert message in str(caught.value)
    assert time.perf_counter() - started < 0.5


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("1 / 0", "division by zero"),
        ("5 // 0", "division by zero"),
        ("0 ** -1", "division by zero"),
        ("sqrt(-1)", "math domain error"),
        ("log(0)", "math domain error"),
        ("(-8) ** 0.5", "(-8)**0.5 is not a real number"),
        ("1 +", "cannot parse '1 +'"),
        ("", "the expression is empty"),
        ("   ", "the expression is empty"),
        ("round(2.5, 1.5)", "must be an integer"),
    ],
)
def test_calculate_reports_math_errors_clearly(expression: str, message: str):
    with pytest.raises(CalculationError) as caught:
        calculate(expression)
    assert message in str(caught.value)
    assert isinstance(caught.value, ValueError)  # recorded as a validation error, not retried


def test_is_prime_small_large_and_tricky_numbers():
    assert [n for n in range(-5, 40) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]
    assert not is_prime(561)  # a Carmichael number
    assert not is_prime(3_215_031_751)  # a strong pseudoprime to bases 2, 3, 5 and 7
    assert is_prime(2_147_483_647) and is_prime(1_000_000_007)
    assert not is_prime(1_000_000_007 * 998_244_353)
    assert is_prime(2**89 - 1) and is_prime(2**127 - 1)  # above 3.3e24: the random rounds
    assert not is_prime(2**127 + 1) and not is_prime((2**61 - 1) * (2**89 - 1))
    with pytest.raises(BuiltinToolError, match="up to 4096 bits"):
        is_prime(2**5000)


def test_primes_sieve_and_limits():
    assert primes(30) == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert primes(2) == [2] and primes(1) == [] and primes(0) == []
    assert len(primes(1_000_000)) == 78_498
    with pytest.raises(BuiltinToolError, match="10,000,000"):
        primes(10**12)
    with pytest.raises(BuiltinToolError, match="0 or more"):
        primes(-1)


def test_first_primes_counts_from_two_and_is_bounded_like_primes(registry: ToolRegistry):
    """ "the first 10 primes" had only ``primes(limit)``, which listed the primes up to 10."""
    assert first_primes(10) == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]
    assert first_primes(0) == [] and first_primes(1) == [2]
    for n in range(40):
        assert first_primes(n) == primes(200)[:n]
    everything = first_primes(MAX_PRIME_COUNT)
    assert len(everything) == MAX_PRIME_COUNT and everything[-1] == primes(MAX_PRIME_LIMIT)[-1]
    with pytest.raises(BuiltinToolError, match="count must be from 0 to 664,579"):
        first_primes(MAX_PRIME_COUNT + 1)
    with pytest.raises(ToolArgumentError, match="count"):
        registry.get("first_primes").validate_arguments({"count": -1})


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("round(2.5)", 3),  # Python's round gives 2 (halves to even)
        ("round(-2.5)", -3),
        ("round(12.5)", 13),
        ("round(2.675, 2)", 2.68),  # Python's gives 2.67 (the float just below 2.675)
        ("round(1.005, 2)", 1.01),
        ("round(25, -1)", 30),
        ("round(1234.5678, 1)", 1234.6),
        ("round(1e300, 2)", 1e300),
        ("round(-0.4)", 0),
    ],
)
def test_round_takes_halves_away_from_zero_as_written(expression: str, value: float):
    assert calculate(expression) == value


def test_primes_limit_is_checked_by_the_registry_before_any_work(registry: ToolRegistry):
    with pytest.raises(ToolArgumentError, match="less than or equal to 10000000"):
        registry.get("primes").validate_arguments({"limit": 10**12})


def test_statistics_describes_values():
    assert statistics([2, 4, 4, 4, 5, 5, 7, 9]) == {
        "count": 8,
        "mean": 5.0,
        "median": 4.5,
        "stdev": pytest.approx(2.138089935),
        "min": 2.0,
        "max": 9.0,
    }
    single = statistics([3.5])
    assert single["stdev"] is None and single["median"] == 3.5
    with pytest.raises(BuiltinToolError, match="at least one value"):
        statistics([])
    with pytest.raises(BuiltinToolError, match="finite"):
        statistics([1.0, math.nan])


@pytest.mark.parametrize(
    ("value", "source", "target", "expected"),
    [
        (1, "km", "mi", 0.621371192237334),
        (3, "feet", "inches", 36.0),
        (1, "in", "cm", 2.54),
        (5280, "ft", "miles", 1.0),
        (1, "nautical mile", "m", 1852.0),
        (2.5, "kg", "lb", 5.511556554622198),
        (16, "oz", "lbs", 1.0),
        (1, "t", "g", 1_000_000.0),
        (90, "min", "h", 1.5),
        (2, "hours", "seconds", 7200.0),
        (1, "yr", "d", 365.25),
        (1500, "ms", "s", 1.5),
        (100, "°C", "°F", 212.0),
        (98.6, "fahrenheit", "celsius", 37.0),
        (0, "K", "C", -273.15),
        (-40, "F", "C", -40.0),
        (491.67, "rankine", "kelvin", 273.15),
        (1, "GiB", "MiB", 1024.0),
        (1, "GB", "bytes", 1e9),
        (8, "bit", "B", 1.0),
        (1, "Mbit", "kB", 125.0),
        (1, "MB", "MiB", 0.95367431640625),
        (1, "KILOMETERS", "m", 1000.0),
    ],
)
def test_convert_units_across_dimensions(value: float, source: str, target: str, expected: float):
    assert convert_units(value, source, target) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("parsec", "m", "unknown unit 'parsec'"),
        ("m", "furlongs", "unknown unit 'furlongs'"),
        ("kilometre", "mtr", "unknown unit 'mtr'"),
        ("kg", "m", "cannot convert 'kg' (mass) to 'm' (length)"),
        ("s", "celsius", "cannot convert 's' (time) to 'celsius' (temperature)"),
        ("GB", "kg", "(data size) to 'kg' (mass)"),
        ("mb", "B", "unit 'mb' is ambiguous: write 'MB' (data size) or 'Mbit' (data size)"),
    ],
)
def test_convert_units_names_unknown_and_incompatible_units(source: str, target: str, message: str):
    with pytest.raises(UnitError) as caught:
        convert_units(1, source, target)
    assert message in str(caught.value)


def test_case_decides_between_units_spelled_alike():
    """ "NM", the nautical mile of charts and aviation, folded to "nm" and came out a
    nanometre (1 NM was 1e-12 km); "Pb" folded to "PB", a petabyte, where "Mb", "Gb" and
    "Tb" are bits. Each case now names its own unit, and a case that names neither is
    refused rather than guessed."""
    assert convert_units(1, "NM", "km") == 1.852
    assert convert_units(3, "NMs", "m") == convert_units(3, "nmi", "m") == 5556.0
    assert convert_units(1, "NMI", "m") == 1852.0
    assert convert_units(1_000_000, "nm", "mm") == 1.0  # lower case is still the nanometre
    assert convert_units(1, "Pb", "TB") == 125.0 and convert_units(1, "Pbit", "Tb") == 1000.0
    assert convert_units(1, "PB", "TB") == 1000.0
    for unit in ("Nm", "nM"):
        with pytest.raises(UnitError, match=rf"unit '{unit}' is ambiguous: write 'nm' .* 'nmi'"):
            convert_units(1, unit, "km")
    with pytest.raises(UnitError, match=r"unit 'pb' is ambiguous: write 'PB' .* 'Pbit'"):
        convert_units(1, "pb", "B")


def test_convert_units_suggests_and_refuses_impossible_values():
    with pytest.raises(UnitError, match="did you mean 'meter'"):
        convert_units(1, "meterr", "m")
    with pytest.raises(UnitError, match="below absolute zero"):
        convert_units(-300, "C", "K")
    with pytest.raises(UnitError, match="finite"):
        convert_units(math.inf, "m", "km")


# -- text ---------------------------------------------------------------------------------


def test_keywords_counts_content_words_and_folds_inflections():
    text = (
        "The registry keeps tools. Tools are plain functions; a tool's schema comes from "
        "its signature. Registered tools can be quarantined, and the registry says why."
    )
    found = keywords(text, top_k=3)
    assert found[0] == {"term": "tools", "count": 4}
    assert found[1] == {"term": "registry", "count": 2}
    assert len(found) == 3
    assert all(k["term"] not in {"the", "are", "and", "its"} for k in keywords(text, top_k=100))
    assert keywords("") == [] and keywords("the and of 42") == []
    sqlite = keywords("SQLite is fast. SQLite is small.")
    assert sqlite[0] == {"term": "sqlite", "count": 2}


def test_word_count_handles_abbreviations_numbers_and_paragraphs():
    text = (
        "Dr. Smith arrived at 3.5 p.m. today, e.g. with 1,250 people. He left!  Why?\n\n"
        "A heading without a full stop\n\nDon't split well-known words."
    )
    assert word_count(text) == {"words": 24, "sentences": 5, "characters": len(text)}
    assert word_count("") == {"words": 0, "sentences": 0, "characters": 0}
    assert word_count("...!?") == {"words": 0, "sentences": 0, "characters": 5}


def test_regex_extract_matches_groups_and_flags():
    text = "Write to ada@example.org or BOB@Example.COM.\nline two: b@c.io"
    assert regex_extract(text, r"[\w.+-]+@[\w-]+\.\w+") == [
        "ada@example.org",
        "BOB@Example.COM",
        "b@c.io",
    ]
    assert regex_extract(text, r"@([\w-]+)\.") == ["example", "Example", "c"]  # first group
    assert regex_extract(text, r"(\w+)@(\w+)", group=2) == ["example", "Example", "c"]
    assert regex_extract(text, r"(\w+)@(\w+)", group=0) == ["ada@example", "BOB@Example", "b@c"]
    assert regex_extract("a=1 b=22 c=", r"(?P<key>\w)=(?P<value>\d*)", group="value") == [
        "1",
        "22",
        "",
    ]
    assert regex_extract(text, r"^line", flags=["ignorecase", "multiline"]) == ["line"]
    assert regex_extract("Line 1\nline 2", r"^line", flags=["ignorecase", "multiline"]) == [
        "Line",
        "line",
    ]
    assert regex_extract("a\nb", r"a.b", flags=["dotall"]) == ["a\nb"]
    assert regex_extract("x1 x2 x3 x4", r"x\d", max_matches=2) == ["x1", "x2"]
    assert regex_extract("nothing here", r"\d+") == []
    assert regex_extract("Größe", r"\w+", flags=["ascii"]) == ["Gr", "e"]
    assert regex_extract("naïve café 😀 Größe", r"\w+|😀") == ["naïve", "café", "😀", "Größe"]


@pytest.mark.parametrize(
    ("pattern", "kwargs", "message"),
    [
        ("(", {}, "invalid regular expression '(': missing ), unterminated subpattern"),
        ("[a-", {}, "invalid regular expression"),
        ("a{2,1}", {}, "invalid regular expression"),
        ("x" * 1001, {}, "the limit is 1000"),
        ("a", {"group": 3}, "the pattern has 0 group(s); group 3 does not exist"),
        ("(?P<a>x)", {"group": "b"}, "no group named 'b' (named groups: a)"),
    ],
)
def test_regex_extract_reports_bad_patterns(pattern: str, kwargs: dict[str, Any], message: str):
    with pytest.raises(PatternError) as caught:
        regex_extract("some text", pattern, **kwargs)
    assert message in str(caught.value)


def test_regex_extract_stops_catastrophic_backtracking(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(text_tools, "REGEX_TIMEOUT", 1.0)
    started = time.perf_counter()
    with pytest.raises(PatternTooSlowError, match="backtracks catastrophically"):
        regex_extract("a" * 64 + "!", r"(a+)+$")
    assert time.perf_counter() - started < 5
    with pytest.raises(PatternTooSlowError):
        regex_extract("x" * 40 + "y", r"(x|x)*z")
    with pytest.raises(BuiltinToolError, match="at most 1,000,000"):
        regex_extract("a" * 1_000_001, "a")


def test_normalize_text_options():
    # Full-width "Hello", a no-break space, the "fi" ligature and an ellipsis.
    messy = "  \uff28\uff45\uff4c\uff4c\uff4f,\u00a0WORLD!  The \ufb01nal   word\u2026\t\n"
    assert normalize_text(messy) == "hello, world! the final word..."
    assert normalize_text(messy, strip_punctuation=True) == "hello world the final word"
    assert normalize_text(messy, lowercase=False, collapse_whitespace=False) == (
        "  Hello, WORLD!  The final   word...\t\n"
    )
    assert normalize_text("") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stop\u2014start", "stop start"),
        ("pages 10\u201320, then well-known", "pages 10 20 then well known"),
        ("end.Start of (the) 'next'", "end start of the next"),
        ("price 3.5 dollars, 1,250 units, -5 \u00b0C", "price 3.5 dollars 1,250 units -5 \u00b0c"),
        ("version 2.0.1.", "version 2.0.1"),
        # An apostrophe inside a word and the dots of an abbreviation keep the word whole.
        ("don't\u2014it\u2019s James' book", "dont its james book"),
        ("e.g. the U.S., at 5.30 p.m.", "eg the us at 5.30 pm"),
    ],
)
def test_stripped_punctuation_separates_words_and_keeps_numbers(text: str, expected: str):
    """Punctuation was deleted outright: "stop\u2014start" became "stopstart", a page range
    "10\u201320" became 1020 and "3.5" became 35."""
    assert normalize_text(text, strip_punctuation=True) == expected


def test_stripped_punctuation_adds_no_space_where_there_was_one():
    assert normalize_text("a, b \u2014 c-d", strip_punctuation=True, collapse_whitespace=False) == (
        "a b  c d"
    )


# -- documents ----------------------------------------------------------------------------


def test_store_loads_every_format_and_reports_unreadable_files(store: DocumentStore):
    listing = store.list_documents()
    by_name = {d["name"]: d for d in listing["documents"]}
    assert sorted(by_name) == [
        "notes/meeting.md",
        "orchestrator.md",
        "pricing.html",
        "report.pdf",
        "store.txt",
    ]  # .draft.md is hidden, logo.png is not a document
    assert {d["format"] for d in by_name.values()} == {"markdown", "html", "pdf", "text"}
    assert by_name["orchestrator.md"]["title"] == "Dendrite orchestrator guide"
    assert by_name["pricing.html"]["title"] == "Pricing & plans"
    assert by_name["report.pdf"]["title"] == "Quarterly report"
    assert by_name["report.pdf"]["pages"] == 1
    assert by_name["store.txt"]["title"] == "The execution-history store"
    assert all(d["chunks"] >= 1 and d["characters"] > 50 for d in by_name.values())
    assert [u["name"] for u in listing["unreadable"]] == ["broken.pdf"]
    assert "not a readable PDF" in listing["unreadable"][0]["error"]
    assert "DocumentStore(" in repr(store) and len(store) == 5


def test_pdf_text_is_extracted(store: DocumentStore):
    text = store.documents["report.pdf"].text
    for line in REPORT_LINES:
        assert line in text


def test_html_keeps_content_and_drops_scripts_styles_and_navigation(store: DocumentStore):
    document = store.documents["pricing.html"]
    text = document.text
    assert "€20 per user per month" in text  # entities decoded
    assert "do not index" not in text and "color: red" not in text and "Login menu" not in text
    headings = [b.text for b in document.blocks if b.kind == "heading"]
    assert headings == ["Pricing", "Refunds", "Support"]
    assert [b.text for b in document.blocks if b.kind == "item"] == [
        "Refunds go back to the original card.",
        "Taxes are refunded too.",
    ]


def test_markdown_is_reduced_to_text_with_its_structure(store: DocumentStore):
    document = store.documents["orchestrator.md"]
    kinds = [b.kind for b in document.blocks]
    assert kinds.count("heading") == 3 and kinds.count("item") == 3 and kinds.count("code") == 1
    text = document.text
    assert "ignored front matter" not in text
    assert "**" not in text and "[the design notes]" not in text and "the design notes" in text
    assert "Steps may have timeouts, retries with exponential backoff" in text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"not a pdf at all", "not a readable PDF"),
        (make_pdf(REPORT_LINES)[:200], "not a readable PDF"),
        (make_pdf([]), "no text could be extracted (a scanned PDF holds images, not text)"),
    ],
)
def test_corrupt_or_empty_pdfs_are_reported_not_fatal(tmp_path: Path, content: bytes, reason: str):
    (tmp_path / "bad.pdf").write_bytes(content)
    (tmp_path / "good.md").write_text("# Good\n\nStill loaded.\n", encoding="utf-8")
    store = DocumentStore(tmp_path)
    assert list(store.documents) == ["good.md"]
    assert reason in store.problems["bad.pdf"]
    with pytest.raises(
        UnknownDocumentError, match=r"'bad.pdf' exists but could not be read: .*PDF"
    ):
        store.summarize_document("bad.pdf")


def test_other_unreadable_files_are_reported(tmp_path: Path):
    (tmp_path / "binary.txt").write_bytes(b"\x00\x01\x02" * 10)
    (tmp_path / "empty.md").write_text("", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("Café crème, naïve résumé.".encode("cp1252"))
    (tmp_path / "big.txt").write_text("word " * 100, encoding="utf-8")
    store = DocumentStore(tmp_path, max_file_bytes=200)
    assert "binary content" in store.problems["binary.txt"]
    assert "no text" in store.problems["empty.md"]
    assert "200-byte limit" in store.problems["big.txt"]
    assert store.documents["latin1.txt"].text == "Café crème, naïve résumé."


def test_symlinks_out_of_the_document_root_are_not_loaded(tmp_path: Path, docs_root: Path):
    outside = tmp_path / "private.md"
    outside.write_text("# Private\n\nSalaries.\n", encoding="utf-8")
    try:
        (docs_root / "link.md").symlink_to(outside)
    except OSError:  # pragma: no cover
        pytest.skip("symbolic links are not available here")
    store = DocumentStore(docs_root)
    assert "link.md" not in store.documents
    assert "outside the document root" in store.problems["link.md"]


def test_chunks_respect_size_headings_and_overlap():
    paragraph = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(60))
    text = f"# Intro\n\nShort intro.\n\n## Long part\n\n{paragraph}\n\n## Tail\n\nThe end.\n"
    from dendrite.tools.builtin._text import markdown_blocks

    chunks = chunk_blocks(markdown_blocks(text), chunk_size=500, overlap=80)
    assert all(len(body) <= 500 for _, body in chunks)
    sections = [section for section, _ in chunks]
    assert sections[0] == "Intro" and sections[-1] == "Intro > Tail"
    long_part = [body for section, body in chunks if section == "Intro > Long part"]
    assert len(long_part) >= 3
    for previous, following in itertools.pairwise(long_part):
        carried = following.split(". ")[0] + "."
        assert previous.endswith(carried) or carried in previous[-81:]  # the overlap
        assert not previous.startswith(carried)
    assert all(body.endswith(".") for body in long_part)  # split between sentences
    assert chunks[-1][1] == "The end."


def test_store_chunks_are_indexed_with_their_sections(store: DocumentStore):
    guide = store.documents["orchestrator.md"].chunks
    assert [c.index for c in guide] == list(range(len(guide)))
    assert guide[0].section == "Dendrite orchestrator guide"
    assert any(c.section.endswith("> Confidence") for c in guide)
    assert all(len(c.text) <= store.chunk_size for c in store.chunks)


def test_search_documents_ranks_passages_with_centred_snippets(store: DocumentStore):
    hits = store.search_documents("refund for annual plans")
    assert hits[0]["document"] == "pricing.html"
    assert hits[0]["section"] == "Pricing > Refunds"
    assert "refunded within 30 days" in hits[0]["snippet"]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert set(hits[0]) == {"document", "chunk", "section", "score", "snippet"}

    outage = store.search_documents("journal replay after outages", top_k=2)
    assert len(outage) == 2
    assert outage[0]["document"] == "report.pdf"  # the PDF is searched like the rest
    assert {h["document"] for h in outage} <= {"report.pdf", "notes/meeting.md", "store.txt"}

    retry = store.search_documents("retried validation error", top_k=1)[0]
    assert retry["document"] == "orchestrator.md"
    snippet = retry["snippet"]
    assert len(snippet) <= 242 and snippet.startswith("…") and snippet.endswith("…")
    assert "validation error is never retried" in snippet  # centred on the matched words

    assert store.search_documents("zebra quantum") == []
    assert store.search_documents("the and of") == []  # stop words only
    with pytest.raises(BuiltinToolError, match="the query is empty"):
        store.search_documents("   ")


def test_summarize_document_extracts_representative_sentences(store: DocumentStore):
    summary = store.summarize_document("orchestrator.md", max_sentences=3)
    assert summary["document"] == "orchestrator.md"
    assert summary["title"] == "Dendrite orchestrator guide"
    assert len(summary["sentences"]) == 3 and summary["total_sentences"] > 10
    assert summary["sentences"][0] == "Dendrite is an orchestrator for tools and agents."
    assert summary["summary"] == " ".join(summary["sentences"])
    text = store.documents["orchestrator.md"].text
    positions = [text.index(s) for s in summary["sentences"]]
    assert positions == sorted(positions)  # document order
    assert "orch.process" not in summary["summary"]  # code is not prose

    short = store.summarize_document("meeting")  # a unique stem is enough
    assert short["document"] == "notes/meeting.md" and short["total_sentences"] == 2
    assert store.summarize_document("REPORT.PDF", max_sentences=1)["sentences"] == [
        "Quarterly report of the orchestrator team."
    ]


def test_unknown_document_names_list_the_loaded_ones(store: DocumentStore):
    with pytest.raises(UnknownDocumentError) as caught:
        store.summarize_document("orchestrator.txt")
    message = str(caught.value)
    assert "no document named 'orchestrator.txt'; did you mean 'orchestrator.md'" in message
    assert "notes/meeting.md, orchestrator.md, pricing.html, report.pdf, store.txt" in message
    with pytest.raises(UnknownDocumentError, match="Loaded documents"):
        store.compare_documents("store.txt", "nowhere.md")


def test_compare_documents_shared_and_distinctive_terms(store: DocumentStore):
    comparison = store.compare_documents("orchestrator.md", "store.txt")
    assert comparison["first"] == "orchestrator.md" and comparison["second"] == "store.txt"
    assert 0 < comparison["similarity"] < 1
    assert {"tool", "records", "history"} <= set(comparison["shared_terms"])
    assert {"step", "plan", "retries"} <= set(comparison["distinctive_first"])
    assert {"database", "journal", "sqlite"} <= set(comparison["distinctive_second"])
    assert not set(comparison["shared_terms"]) & set(comparison["distinctive_first"])
    assert comparison["topic"] is None
    assert comparison["first_sentences"][0] == "Dendrite is an orchestrator for tools and agents."
    assert len(comparison["second_sentences"]) == 3

    on_topic = store.compare_documents("pricing.html", "notes/meeting.md", topic="refunds")
    assert on_topic["topic"] == "refunds"
    assert on_topic["first_sentences"]
    assert all("refund" in s.lower() for s in on_topic["first_sentences"])
    assert on_topic["second_sentences"] == []  # the meeting notes never mention refunds
    assert store.compare_documents("store.txt", "store.txt")["similarity"] == pytest.approx(1)


def test_reload_picks_up_new_and_removed_files(store: DocumentStore, docs_root: Path):
    (docs_root / "store.txt").unlink()
    (docs_root / "faq.md").write_text("# FAQ\n\nZebras are not supported.\n", encoding="utf-8")
    store.reload()
    assert "store.txt" not in store.documents and "faq.md" in store.documents
    assert store.search_documents("zebras")[0]["document"] == "faq.md"


# -- files and data -----------------------------------------------------------------------


def test_list_files_in_the_root_and_below(sandbox: FileSandbox, files_root: Path):
    listing = sandbox.list_files()
    names = [e["path"] for e in listing["entries"]]
    assert "config.json" in names and "data" in names and "readme.txt" in names
    assert ".env" not in names  # hidden unless the pattern asks for it
    assert listing["directory"] == "." and listing["truncated"] is False
    data = {e["path"]: e for e in listing["entries"]}["data"]
    assert data == {"path": "data", "type": "directory", "size": None}
    assert sandbox.list_files(pattern=".*")["entries"][0]["path"] == ".env"

    csvs = sandbox.list_files(".", pattern="*.CSV", recursive=True)["entries"]
    assert [e["path"] for e in csvs] == ["data/sales.csv", "data/semi.csv"]
    assert csvs[0]["type"] == "file" and csvs[0]["size"] == len(SALES_CSV.encode())
    nested = sandbox.list_files("data/nested")
    assert nested["directory"] == "data/nested"
    assert [e["path"] for e in nested["entries"]] == ["data/nested/deep.txt"]


def test_list_files_hides_links_out_of_the_root(sandbox: FileSandbox, files_root: Path):
    needs_symlinks(files_root)
    names = [e["path"] for e in sandbox.list_files(recursive=True)["entries"]]
    assert "escape.txt" not in names and "escape_dir" not in names
    assert "alias.txt" in names  # a link that stays inside is fine
    assert not any("secret" in n for n in names)


@pytest.mark.parametrize(
    ("path", "error", "message"),
    [
        ("../sibling.txt", PathOutsideRootError, "'..' leads out of the files root"),
        ("data/../../sibling.txt", PathOutsideRootError, "'..' leads out of the files root"),
        ("..", PathOutsideRootError, "'..' leads out of the files root"),
        ("/etc/passwd", PathOutsideRootError, "is an absolute path"),
        ("~/secrets", PathOutsideRootError, "is an absolute path"),
        ("C:\\Windows\\win.ini", PathOutsideRootError, "is an absolute path"),
        ("a\x00b", PathOutsideRootError, "NUL"),
        ("missing.txt", FileNotFoundError, "no such file under the files root: 'missing.txt'"),
        ("readme.tx", FileNotFoundError, "did you mean 'readme.txt'?"),
        ("data", IsADirectoryError, "is a folder; use list_files"),
        ("blob.bin", BuiltinToolError, "looks binary"),
    ],
)
def test_read_file_refuses_paths_outside_and_reports_missing_ones(
    sandbox: FileSandbox, path: str, error: type[Exception], message: str
):
    with pytest.raises(error) as caught:
        sandbox.read_file(path)
    assert message in str(caught.value)
    assert str(sandbox.root) not in str(caught.value)  # the real location is not disclosed


def test_symlinks_pointing_out_of_the_root_are_refused(sandbox: FileSandbox, files_root: Path):
    needs_symlinks(files_root)
    for path in ("escape.txt", "escape_dir/secret.txt", "escape_dir"):
        with pytest.raises(PathOutsideRootError, match="symbolic link"):
            sandbox.read_file(path)
    with pytest.raises(PathOutsideRootError, match="symbolic link"):
        sandbox.list_files("escape_dir")
    assert sandbox.read_file("alias.txt")["content"].startswith("Hello, files.")
    (files_root / "loop").symlink_to(files_root / "loop")
    with pytest.raises(PathOutsideRootError, match="cannot be resolved"):
        sandbox.read_file("loop")
    assert "loop" not in [e["path"] for e in sandbox.list_files(recursive=True)["entries"]]


def test_list_files_bad_paths_and_patterns(sandbox: FileSandbox):
    with pytest.raises(PathOutsideRootError):
        sandbox.list_files("..")
    with pytest.raises(NotADirectoryError, match="use read_file"):
        sandbox.list_files("readme.txt")
    with pytest.raises(FileNotFoundError, match="no such file"):
        sandbox.list_files("nowhere")
    with pytest.raises(BuiltinToolError, match="matches names, not paths"):
        sandbox.list_files(pattern="../*")


def test_read_file_reads_text_with_a_byte_limit(sandbox: FileSandbox):
    whole = sandbox.read_file("readme.txt")
    assert whole == {
        "path": "readme.txt",
        "size": len("Hello, files.\nSecond line: café.\n".encode()),
        "truncated": False,
        "encoding": "utf-8",
        "content": "Hello, files.\nSecond line: café.\n",
    }
    cut = sandbox.read_file("readme.txt", max_bytes=31)  # inside the two bytes of "é"
    assert cut["truncated"] is True and cut["content"] == "Hello, files.\nSecond line: caf"
    assert sandbox.read_file("./data/../readme.txt")["path"] == "readme.txt"
    with pytest.raises(BuiltinToolError, match="at most"):
        FileSandbox(sandbox.root, max_read_bytes=10).read_file("readme.txt", max_bytes=11)


def test_csv_select_columns_filters_and_limits(sandbox: FileSandbox):
    everything = sandbox.csv_select("data/sales.csv")
    assert everything["columns"] == ["region", "product", "units", "revenue"]
    assert everything["matched"] == 5 and everything["truncated"] is False
    assert everything["rows"][0] == {
        "region": "North",
        "product": "Widget",
        "units": "10",
        "revenue": "1,250.50",
    }
    south = sandbox.csv_select(
        "data/sales.csv", columns=["product", "Revenue"], where={"region": "SOUTH"}
    )
    assert south["columns"] == ["product", "revenue"]
    assert south["rows"] == [
        {"product": "Widget", "revenue": "480"},
        {"product": "Gadget", "revenue": "abc"},
    ]
    numeric = sandbox.csv_select("data/sales.csv", where={"units": 7, "product": "Gadget"})
    assert [r["region"] for r in numeric["rows"]] == ["North"]
    assert sandbox.csv_select("data/sales.csv", where={"units": "10.0"})["matched"] == 1
    assert sandbox.csv_select("data/sales.csv", where={"units": None})["matched"] == 1
    limited = sandbox.csv_select("data/sales.csv", limit=2)
    assert len(limited["rows"]) == 2 and limited["matched"] == 5 and limited["truncated"]
    semi = sandbox.csv_select("data/semi.csv", where={"name": "bob"})
    assert semi["columns"] == ["name", "score"] and semi["rows"] == [{"name": "bob", "score": "5"}]


def test_csv_select_bad_columns_and_files(sandbox: FileSandbox, files_root: Path):
    with pytest.raises(DataError) as caught:
        sandbox.csv_select("data/sales.csv", columns=["region", "revenu"])
    assert "has no column 'revenu'; did you mean 'revenue'?" in str(caught.value)
    assert "Columns: region, product, units, revenue" in str(caught.value)
    with pytest.raises(DataError, match="no column 'country'"):
        sandbox.csv_select("data/sales.csv", where={"country": "NL"})
    with pytest.raises(FileNotFoundError):
        sandbox.csv_select("data/missing.csv")
    with pytest.raises(PathOutsideRootError):
        sandbox.csv_select("../sibling.txt")
    (files_root / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match="no header row"):
        sandbox.csv_select("empty.csv")


def test_csv_aggregate_groups_and_operations(sandbox: FileSandbox, files_root: Path):
    (files_root / "clean.csv").write_text(
        "region,revenue\nNorth,10\nSouth,4\nNorth,2.5\nEast,\n", encoding="utf-8"
    )

    def groups(op: str) -> dict[str, Any]:
        result = sandbox.csv_aggregate("clean.csv", group_by="region", column="revenue", op=op)
        assert result["group_by"] == "region" and result["column"] == "revenue"
        return result["groups"]

    assert groups("sum") == {"North": 12.5, "South": 4.0, "East": 0.0}
    assert groups("mean") == {"North": 6.25, "South": 4.0, "East": None}
    assert groups("min") == {"North": 2.5, "South": 4.0, "East": None}
    assert groups("max") == {"North": 10.0, "South": 4.0, "East": None}
    assert groups("count") == {"North": 2, "South": 1, "East": 0}
    counted = sandbox.csv_aggregate("data/sales.csv", "product", "revenue", "count")
    assert counted["groups"] == {"Widget": 3, "Gadget": 2}
    units = sandbox.csv_aggregate("data/sales.csv", "region", "units", "sum")["groups"]
    assert units == {"North": 17.0, "South": 4.0, "East": 0.0, "south": 3.0}


def test_csv_aggregate_reports_non_numeric_values_and_bad_columns(sandbox: FileSandbox):
    with pytest.raises(DataError) as caught:
        sandbox.csv_aggregate("data/sales.csv", "region", "revenue", "sum")
    assert "column 'revenue' has a non-numeric value 'abc' on line 6" in str(caught.value)
    with pytest.raises(DataError, match="no column 'zone'"):
        sandbox.csv_aggregate("data/sales.csv", "zone", "revenue", "sum")
    with pytest.raises(DataError, match="no column 'price'"):
        sandbox.csv_aggregate("data/sales.csv", "region", "price", "mean")


@pytest.mark.parametrize(
    ("pointer", "expected"),
    [
        ("", CONFIG),
        ("/service/name", "dendrite"),
        ("/service/ports/1", 8443),
        ("/servers/0", {"host": "alpha", "tags": ["db"]}),
        ("/servers/1/tags", []),
        ("/a~1b", "slash"),
        ("/m~0n", "tilde"),
        ("/", "empty key"),
        ("/flag", True),
        ("#/servers/0/host", "alpha"),
        ("#/a~1b", "slash"),
    ],
)
def test_json_select_follows_rfc6901(sandbox: FileSandbox, pointer: str, expected: Any):
    assert sandbox.json_select("config.json", pointer) == expected


@pytest.mark.parametrize(
    ("pointer", "message"),
    [
        ("service/name", "it must be empty or start with '/'"),
        ("/nope", "the object at the root has no key 'nope' (keys: 'service', 'servers'"),
        ("/service/port", "the object at /service has no key 'port'"),
        ("/servers/2", "index 2 is out of range; the array at /servers has 2 element(s)"),
        ("/servers/-", "'-' names the element after the last one"),
        ("/servers/01", "needs an index (0, 1, …), got '01'"),
        ("/servers/first", "needs an index (0, 1, …), got 'first'"),
        ("/service/name/x", "the value at /service/name is a string, which has no member 'x'"),
        ("/flag/x", "is a boolean"),
        ("/a~2b", "'~' must be followed by 0 (for '~') or 1 (for '/')"),
    ],
)
def test_json_select_reports_bad_pointers(sandbox: FileSandbox, pointer: str, message: str):
    with pytest.raises(DataError) as caught:
        sandbox.json_select("config.json", pointer)
    assert message in str(caught.value)


def test_json_select_bad_files(sandbox: FileSandbox, files_root: Path):
    with pytest.raises(DataError, match=r"'bad.json' is not valid JSON: .* at line 1, column 9"):
        sandbox.json_select("bad.json", "/a")
    with pytest.raises(FileNotFoundError, match=r"did you mean 'config\.json'"):
        sandbox.json_select("confg.json", "")
    with pytest.raises(PathOutsideRootError):
        sandbox.json_select("/etc/hosts", "")
    (files_root / "big.json").write_text("[" + "1," * 100 + "1]", encoding="utf-8")
    with pytest.raises(DataError, match="parses at most 100"):
        FileSandbox(files_root, max_data_bytes=100).json_select("big.json", "")


# -- through the engine -------------------------------------------------------------------

ENGINE_CASES: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    ("calculate", {"expression": "2 * (3 + 4)"}, lambda out: out == 14.0),
    ("is_prime", {"n": 97}, lambda out: out is True),
    ("primes", {"limit": 20}, lambda out: out == [2, 3, 5, 7, 11, 13, 17, 19]),
    ("first_primes", {"count": 4}, lambda out: out == [2, 3, 5, 7]),
    ("statistics", {"values": [1, 2, 3, 4]}, lambda out: out["mean"] == 2.5),
    (
        "convert_units",
        {"value": 10, "from_unit": "km", "to_unit": "m"},
        lambda out: out == 10_000.0,
    ),
    ("keywords", {"text": "tools and more tools", "top_k": 1}, lambda out: out[0]["count"] == 2),
    ("word_count", {"text": "One two. Three!"}, lambda out: out["sentences"] == 2),
    (
        "regex_extract",
        {"text": "a1 b22", "pattern": r"\d+", "flags": ["ignorecase"]},
        lambda out: out == ["1", "22"],
    ),
    ("normalize_text", {"text": "  A   B  "}, lambda out: out == "a b"),
    (
        "search_documents",
        {"query": "refund annual plan", "top_k": 2},
        lambda out: out[0]["document"] == "pricing.html",
    ),
    (
        "summarize_document",
        {"name": "report.pdf", "max_sentences": 2},
        lambda out: len(out["sentences"]) == 2,
    ),
    (
        "compare_documents",
        {"first": "orchestrator.md", "second": "store.txt", "topic": "journal"},
        lambda out: "journal" in " ".join(out["second_sentences"]),
    ),
    ("list_documents", {}, lambda out: len(out["documents"]) == 5),
    ("list_files", {"path": "data", "pattern": "*.csv"}, lambda out: len(out["entries"]) == 2),
    ("read_file", {"path": "readme.txt", "max_bytes": 5}, lambda out: out["content"] == "Hello"),
    (
        "csv_select",
        {"path": "data/sales.csv", "columns": ["region"], "where": {"product": "Gadget"}},
        lambda out: out["rows"] == [{"region": "North"}, {"region": "south"}],
    ),
    (
        "csv_aggregate",
        {"path": "data/sales.csv", "group_by": "product", "column": "units", "op": "max"},
        lambda out: out["groups"] == {"Widget": 10.0, "Gadget": 7.0},
    ),
    (
        "json_select",
        {"path": "config.json", "pointer": "/servers/1/host"},
        lambda out: out == "beta",
    ),
]


def test_engine_cases_cover_every_tool():
    assert sorted(name for name, _, _ in ENGINE_CASES) == sorted(
        MATH_TOOLS + TEXT_TOOLS + DOCUMENT_TOOLS + FILE_TOOLS
    )


@pytest.mark.parametrize(
    ("tool", "params", "check"), ENGINE_CASES, ids=[c[0] for c in ENGINE_CASES]
)
def test_every_tool_runs_through_the_orchestrator(
    registry: ToolRegistry, tool: str, params: dict[str, Any], check: Callable[[Any], bool]
):
    output = run_tool(registry, tool, params)
    assert check(output), output


def test_tools_chain_through_references(registry: ToolRegistry):
    result = run_plan(
        registry,
        Step(id="find", tool="search_documents", params={"query": "journal replay", "top_k": 1}),
        Step(id="sum", tool="summarize_document", params={"name": "${find.0.document}"}),
        Step(
            id="port",
            tool="json_select",
            params={"path": "config.json", "pointer": "/service/ports/0"},
        ),
        Step(id="double", tool="calculate", params={"expression": "${port} * 2 + 1"}),
        Step(id="stats", tool="csv_select", params={"path": "data/semi.csv"}),
    )
    assert result.success, result.error
    outputs = {step.step_id: step.output for step in result.steps}
    assert outputs["sum"]["document"] == outputs["find"][0]["document"]
    assert outputs["double"] == 16161.0


def test_a_refused_call_fails_the_step_cleanly_without_retries(registry: ToolRegistry):
    result = run_plan(
        registry, Step(id="evil", tool="calculate", params={"expression": "__import__('os')"})
    )
    assert not result.success
    assert "unknown function '__import__'" in (result.error or "")
    assert result.error_type == "validation"
    assert len(result.steps[0].attempts) == 1

    escape = run_plan(
        registry, Step(id="peek", tool="read_file", params={"path": "../sibling.txt"})
    )
    assert not escape.success and "leads out of the files root" in (escape.error or "")

    with pytest.raises(PlanValidationError, match="parameter 'limit': expected integer"):
        run_plan(registry, Step(id="p", tool="primes", params={"limit": "lots"}))


def test_a_goal_naming_a_file_works_on_its_content_not_on_the_goals_words(
    registry: ToolRegistry,
):
    """ "count the words in readme.txt" counted "the words in readme.txt" (4 words)."""
    with Orchestrator(registry, store=None, llm=None) as orch:
        for goal in (
            "count the words in readme.txt",
            "read readme.txt then count the words",
        ):
            result = orch.process(goal)
            assert result.success, (goal, result.error)
            assert [s.tool for s in result.plan.steps] == ["read_file", "word_count"], goal
            assert result.output["words"] == 5, goal  # "Hello, files. Second line: café."


def test_a_goal_listing_files_works_on_each_files_content(registry: ToolRegistry, files_root: Path):
    """ "count the words in a.md and b.md" counted the words "the words in a.md and b.md",
    and "read a.md and b.md" read a.md only."""
    (files_root / "two.txt").write_text("Just two.\n", encoding="utf-8")
    with Orchestrator(registry, store=None, llm=None) as orch:
        counted = orch.process("count the words in readme.txt and two.txt")
        read = orch.process("read readme.txt, two.txt")
    assert counted.success and read.success
    assert [s.tool for s in counted.plan.steps] == ["read_file", "word_count"] * 2
    assert [v["words"] for v in counted.output.values()] == [5, 2]
    assert [v["path"] for v in read.output.values()] == ["readme.txt", "two.txt"]


def test_written_arithmetic_goes_to_the_calculator_not_to_a_tool_sharing_a_word(
    registry: ToolRegistry,
):
    """ "the square root of 144" listed the files ("root" is in list_files' description)."""
    with Orchestrator(registry, store=None, llm=None) as orch:
        for goal, value in (
            ("what is the square root of 144", 12.0),
            ("calculate 15% of 200", 30.0),
            ("what is 7 times 6", 42.0),
        ):
            result = orch.process(goal)
            assert (result.plan.steps[0].tool, result.output) == ("calculate", value), goal


def test_then_summarize_the_best_match_names_the_best_hits_document(registry: ToolRegistry):
    """The summariser was handed the whole list of hits as its document name."""
    with Orchestrator(registry, store=None, llm=None) as orch:
        result = orch.process("search for background batches then summarize the best match")
    assert [s.params for s in result.plan.steps][1] == {"name": "${step1.0.document}"}
    assert result.success and result.output["document"] == "store.txt"


def test_a_prefix_in_the_wrong_case_is_no_other_unit_and_overflow_is_a_tool_error():
    """ "Mg" was read as "mg" (a megagram is 10^9 milligrams); sums past the float range
    raised a bare OverflowError."""
    for unit in ("Mg", "Mm", "Ms", "MM"):
        with pytest.raises(UnitError, match=f"unknown unit '{unit}'"):
            convert_units(1, unit, "kg")
    assert convert_units(1, "KG", "g") == 1000.0 and convert_units(1, "MILES", "km") == 1.609344
    with pytest.raises(UnitError, match="too large for a float"):
        convert_units(1.7e308, "km", "nm")
    assert statistics([1e308, 1e308])["mean"] == 1e308
    with pytest.raises(BuiltinToolError, match="too large for a float"):
        statistics([1.7e308, -1.7e308])


def test_a_pipe_or_a_name_too_long_is_refused_without_blocking_or_the_roots_location(
    tmp_path: Path,
):
    import os

    os.mkfifo(tmp_path / "pipe.txt")
    (tmp_path / "a.md").write_text("# A\n\nSome text.\n", encoding="utf-8")
    sandbox = FileSandbox(tmp_path)
    with pytest.raises(BuiltinToolError, match="not a regular file"):
        sandbox.read_file("pipe.txt")
    with pytest.raises(BuiltinToolError, match="cannot read 'xxx") as caught:
        sandbox.read_file("x" * 300)
    assert str(tmp_path) not in str(caught.value)
    assert "a.md" in set(DocumentStore(tmp_path).documents)  # it loads, and skips the pipe


def test_short_plurals_are_units_and_a_huge_integer_in_json_is_a_data_error(tmp_path: Path):
    assert convert_units(8, "bits", "B") == 1.0 and convert_units(2, "mins", "secs") == 120.0
    assert convert_units(1, "hrs", "mins") == 60.0
    (tmp_path / "big.json").write_text('{"a": ' + "9" * 5000 + "}", encoding="utf-8")
    with pytest.raises(DataError, match=r"'big\.json' cannot be parsed: Exceeds the limit"):
        FileSandbox(tmp_path).json_select("big.json", "/a")


def test_regex_matches_that_add_up_past_the_bound_are_refused():
    """A capture inside a lookahead returns the rest of the text at every position: 2,000
    of them over 100,000 characters were 198 million characters (and 660 MB)."""
    with pytest.raises(BuiltinToolError, match="add up to more than 2,000,000 characters"):
        regex_extract("a" * 100_000, r"(?=(a*))", max_matches=2000)
    assert len(regex_extract("a" * 1_000, r"(?=(a*))", max_matches=1000)) == 1000


def test_utf16_text_with_a_byte_order_mark_is_text_not_binary(tmp_path: Path):
    """Notepad and PowerShell save UTF-16: its NUL bytes made it "binary"."""
    for name, bom, codec in (
        ("le.txt", b"\xff\xfe", "utf-16-le"),
        ("be.md", b"\xfe\xff", "utf-16-be"),
    ):
        (tmp_path / name).write_bytes(bom + "# Hi\n\nSome text, café.\n".encode(codec))
    read = FileSandbox(tmp_path).read_file("le.txt")
    assert (read["encoding"], read["content"]) == ("utf-16", "# Hi\n\nSome text, café.\n")
    assert {"le.txt", "be.md"} <= set(DocumentStore(tmp_path).documents)
    (tmp_path / "bin.dat.txt").write_bytes(b"ab\x00cd")
    with pytest.raises(BuiltinToolError, match="looks binary"):
        FileSandbox(tmp_path).read_file("bin.dat.txt")


def test_a_name_two_documents_answer_to_is_ambiguous_not_unknown(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    for name in ("guide.md", "guide.txt", "readme.md", "sub/readme.md"):
        (tmp_path / name).write_text("# Title\n\nSome text.\n", encoding="utf-8")
    store = DocumentStore(tmp_path)
    with pytest.raises(UnknownDocumentError, match=r"'guide' is ambiguous: write 'guide\.md' or"):
        store.get("guide")
    with pytest.raises(UnknownDocumentError, match="'readme' is ambiguous"):
        store.get("readme")
    assert store.get("sub/readme.md").name == "sub/readme.md"


def test_csv_filters_compare_numbers_exactly(tmp_path: Path):
    """Through float, an ID past 2**53 matched its neighbour, and 10**400 raised."""
    (tmp_path / "orders.csv").write_text(
        "order_id,who\n12345678901234567890,alice\n12345678901234567891,bob\n"
        "9007199254740993,carol\n9007199254740992,dave\n0.1,erin\n",
        encoding="utf-8",
    )
    sandbox = FileSandbox(tmp_path)

    def who(value: Any) -> list[str]:
        return [
            r["who"] for r in sandbox.csv_select("orders.csv", where={"order_id": value})["rows"]
        ]

    assert who("12345678901234567890") == ["alice"]
    assert who(9007199254740993) == ["carol"]
    assert who(0.1) == who("0.10") == ["erin"]
    assert who(10**400) == [] and who("1e400") == []


def test_the_csv_and_json_tools_read_the_encodings_read_file_reads(tmp_path: Path):
    (tmp_path / "wide.csv").write_bytes("city,sales\nZürich,10\nBern,5\n".encode("utf-16"))
    (tmp_path / "win.csv").write_bytes("city,sales\nZürich,10\nBern,5\n".encode("cp1252"))
    (tmp_path / "wide.json").write_bytes('{"city": "Zürich"}'.encode("utf-16"))
    sandbox = FileSandbox(tmp_path)
    for name in ("wide.csv", "win.csv"):
        assert sandbox.read_file(name)["content"].startswith("city,sales\nZürich")
        rows = sandbox.csv_select(name)["rows"]
        assert rows == [{"city": "Zürich", "sales": "10"}, {"city": "Bern", "sales": "5"}]
    assert sandbox.json_select("wide.json", "/city") == "Zürich"


def test_nul_anywhere_is_binary_and_a_bad_utf16_unit_spoils_one_character(tmp_path: Path):
    (tmp_path / "late.txt").write_bytes(b"a" * 10_000 + b"\x00\x00")
    (tmp_path / "odd16.txt").write_bytes(b"\xff\xfe" + "Hello".encode("utf-16-le") + b"\x00\xd8ok")
    sandbox = FileSandbox(tmp_path)
    with pytest.raises(BuiltinToolError, match="looks binary"):
        sandbox.read_file("late.txt")
    read = sandbox.read_file("odd16.txt")
    assert read["encoding"] == "utf-16" and read["content"].startswith("Hello\ufffd")


def test_names_with_a_tilde_or_spaces_are_names_and_a_locked_folder_stays_unsaid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "~notes.txt").write_text("tilde", encoding="utf-8")
    (tmp_path / " report.txt").write_text("space", encoding="utf-8")
    sandbox = FileSandbox(tmp_path)
    assert sandbox.read_file("~notes.txt")["content"] == "tilde"
    assert sandbox.read_file(" report.txt")["content"] == "space"
    for home in ("~", "~/notes.txt", "~bob/notes.txt"):
        with pytest.raises(PathOutsideRootError, match="absolute path"):
            sandbox.read_file(home)
    (tmp_path / "locked").mkdir()
    listing = Path.iterdir

    def refused(self: Path) -> Any:  # as the OS answers a folder without read permission
        if self.name == "locked":  # (root, who runs CI, may read it anyway)
            raise PermissionError(13, "Permission denied", str(self))
        return listing(self)

    monkeypatch.setattr(Path, "iterdir", refused)
    with pytest.raises(PermissionError) as caught:
        sandbox.list_files("locked")
    assert str(tmp_path) not in str(caught.value) and "'locked'" in str(caught.value)
    with pytest.raises(FileNotFoundError) as missing:
        sandbox.read_file("locked/y.txt")
    assert str(tmp_path) not in str(missing.value)


def test_sums_past_the_float_range_are_data_errors_and_means_are_not(tmp_path: Path):
    (tmp_path / "big.csv").write_text("g,v\na,1e308\na,1e308\n", encoding="utf-8")
    sandbox = FileSandbox(tmp_path)
    assert sandbox.csv_aggregate("big.csv", "g", "v", "mean")["groups"] == {"a": 1e308}
    with pytest.raises(DataError, match="sum of column 'v' for 'a' is too large for a float"):
        sandbox.csv_aggregate("big.csv", "g", "v", "sum")


def test_conversions_are_exact_for_decimals_as_written_and_know_short_plurals():
    assert convert_units(-273.15, "C", "K") == 0.0
    assert convert_units(-459.67, "F", "K") == 0.0  # absolute zero, not below it
    assert convert_units(37.2, "C", "F") == 98.96 and convert_units(100.1, "C", "F") == 212.18
    assert convert_units(2, "days", "h") == 48.0 and convert_units(3, "lbs", "oz") == 48.0


def test_a_long_flat_sum_is_no_deep_nesting():
    terms = "+".join(str(i) for i in range(1, 121))
    assert calculate(terms) == 7260
    assert calculate("*".join(["1.01"] * 150)) == pytest.approx(1.01**150)
    with pytest.raises(CalculationError, match="nested deeper than 100 levels"):
        calculate("(" * 120 + "1" + ")" * 120 + "+" + "-" * 120 + "1")


def test_roots_of_integers_past_the_float_range_and_medians_of_tiny_values():
    assert calculate("sqrt(10**400)") == 1e200
    with pytest.raises(CalculationError, match="too large"):
        calculate("sqrt(2**4000)")
    assert statistics([5e-324, 5e-324])["median"] == 5e-324  # halved first, it was 0
    assert statistics([1.7e308, 1.7e308])["median"] == 1.7e308


def test_review_of_the_exactness_and_encoding_changes(tmp_path: Path):
    """What the first round of these fixes broke, and a review found."""
    assert statistics([-1e308, 1e308])["median"] == 0.0  # the difference overflowed
    assert convert_units(Decimal("1.5"), "km", "m") == 1500.0  # repr of a Decimal
    (tmp_path / "codes.csv").write_text("code,who\n_1,a\n1_,b\n1,c\n1__0,d\n", encoding="utf-8")
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbfname,amount\nZo\xc3\xab,10\nA \x96 B,20\n")
    (tmp_path / "stray.csv").write_bytes(b"name,city\nZo\xc3\xab,K\xc3\xb6ln\nA \x96 B,X\n")
    (tmp_path / "notes.txt").write_text("hello", encoding="utf-8")
    sandbox = FileSandbox(tmp_path)
    rows = sandbox.csv_select("codes.csv", where={"code": 1})["rows"]
    assert [r["who"] for r in rows] == ["c"]  # Decimal reads "_1" and "1_" as 1
    assert sandbox.csv_select("codes.csv", where={"code": "10"})["rows"] == []
    assert sandbox.csv_select("excel.csv")["columns"] == ["name", "amount"]
    assert sandbox.csv_select("stray.csv", where={"name": "Zoë"})["matched"] == 1
    read = sandbox.read_file("stray.csv")
    assert read["encoding"] == "utf-8" and "Köln" in read["content"]
    for name in ("notes.txt\n", "notes.txt ", "\tnotes.txt"):
        assert sandbox.read_file(name)["content"] == "hello"
    (tmp_path / "tiny.csv").write_text("g,v\na,5e-324\na,5e-324\n", encoding="utf-8")
    assert sandbox.csv_aggregate("tiny.csv", "g", "v", "mean")["groups"] == {"a": 5e-324}


# -- documents: what a reader of the rendered Markdown sees, and what a file's bytes say --


def test_markdown_html_comments_scripts_and_styles_are_not_prose(tmp_path: Path):
    """A reader never sees them: they were summarized and searched like paragraphs."""
    (tmp_path / "guide.md").write_text(
        "# Guide\n\nInstall the package with pip. <!-- TODO: internal secret note -->\n\n"
        "<script>\nvar trackingPixel = 1;\n</script>\n\n<STYLE>\nbody { color: red; }\n"
        "</STYLE>\n\n<!--\nhidden draft paragraph\n-->\n\nRun the tool. Type `<!--` to"
        " open a comment.\n",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path)
    text = store.documents["guide.md"].text
    assert (
        text
        == "Guide\n\nInstall the package with pip.\n\nRun the tool. Type <!-- to open a comment."
    )
    for hidden in ("secret", "trackingPixel", "color", "draft"):
        assert store.search_documents(hidden) == []
    # Runs of backticks of ever new lengths, each without a partner: a code span is looked
    # for over a bounded stretch, or this line takes minutes.
    ticks = "".join("`" * k + "a" for k in range(1, 450))
    (tmp_path / "ticks.md").write_text(f"{ticks} <!-- gone --> kept\n", encoding="utf-8")
    started = time.perf_counter()
    store.reload()
    assert time.perf_counter() - started < 5
    assert store.documents["ticks.md"].text.endswith("a kept")


def test_markdown_tags_that_break_a_line_separate_words(tmp_path: Path):
    (tmp_path / "faq.md").write_text(
        "# FAQ\n\nPress Enter<br>then Escape.<p>Done</p>and <b>bold</b>ly gone.\n",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path)
    assert store.documents["faq.md"].text == "FAQ\n\nPress Enter then Escape. Done and boldly gone."
    assert [hit["document"] for hit in store.search_documents("enter")] == ["faq.md"]


def test_only_pdf_text_loses_the_hyphen_at_a_line_break(tmp_path: Path):
    """A layout engine hyphenates PDF words; a writer's line ending "long-" means "long-term"."""
    wrapped = "We track every long-\nterm risk and each state-of-\nthe-art fix.\n"
    (tmp_path / "notes.txt").write_text(f"Risk notes\n\n{wrapped}", encoding="utf-8")
    (tmp_path / "notes.md").write_text(f"# Risks\n\n{wrapped}", encoding="utf-8")
    (tmp_path / "report.pdf").write_bytes(make_pdf(["Every exam-", "ple counts."]))
    store = DocumentStore(tmp_path)
    for name in ("notes.txt", "notes.md"):
        assert "every long-term risk and each state-of-the-art fix." in store.documents[name].text
    assert "Every example counts." in store.documents["report.pdf"].text


def test_windows_1252_with_one_pair_that_reads_as_utf8_is_windows_1252(tmp_path: Path):
    """ "ß…" is the bytes of a UTF-8 character: it made the whole file UTF-8, "Größe" "Gr��e"."""
    text = "Größe und Übergröße: Die Maße sind wichtig.\n\nViel Spaß…"
    (tmp_path / "de.txt").write_bytes(text.encode("cp1252"))
    store = DocumentStore(tmp_path)
    assert store.documents["de.txt"].text == text
    assert [hit["document"] for hit in store.search_documents("Größe")] == ["de.txt"]
    read = FileSandbox(tmp_path).read_file("de.txt")
    assert (read["encoding"], read["content"]) == ("cp1252", text)


def test_a_leading_rule_above_prose_is_no_front_matter(tmp_path: Path):
    (tmp_path / "memo.md").write_text(
        "---\n\nThe budget was approved on Monday.\n\n---\n\nHiring starts next week.\n",
        encoding="utf-8",
    )
    (tmp_path / "post.md").write_text(
        "---\ntitle: Hidden\ntags:\n  - a\n- b\n# a comment\n...\nShown.\n", encoding="utf-8"
    )
    store = DocumentStore(tmp_path)
    assert store.documents["memo.md"].text == (
        "The budget was approved on Monday.\n\nHiring starts next week."
    )
    assert store.documents["post.md"].text == "Shown."


def test_a_loop_of_symbolic_links_is_unreadable_without_the_roots_location(tmp_path: Path):
    """Python 3.11 raises RuntimeError naming the loop's absolute path, which was reported."""
    (tmp_path / "ok.md").write_text("# Ok\n\nFine.\n", encoding="utf-8")
    try:
        (tmp_path / "a.md").symlink_to(tmp_path / "b.md")
        (tmp_path / "b.md").symlink_to(tmp_path / "a.md")
    except OSError:  # pragma: no cover
        pytest.skip("symbolic links are not available here")
    store = DocumentStore(tmp_path)
    assert list(store.documents) == ["ok.md"]
    unreadable = store.list_documents()["unreadable"]
    assert [u["name"] for u in unreadable] == ["a.md", "b.md"]
    assert all(str(tmp_path) not in u["error"] and "loop" in u["error"] for u in unreadable)


def test_markdown_fences_close_on_a_long_enough_fence_and_indented_code_is_code(tmp_path: Path):
    (tmp_path / "doc.md").write_text(
        "# Doc\n\nIntro text here.\n\n````markdown\n```python\nsecret_value = compute()\n```\n"
        "``` not a fence\n~~~~\n````\n\nAfter text.\n\n    $ rm -rf build\n\n\tmake install\n"
        "Closing words.\n\n- an item\n\n    its second paragraph.\n",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path)
    blocks = store.documents["doc.md"].blocks
    assert [(b.kind, b.text) for b in blocks] == [
        ("heading", "Doc"),
        ("text", "Intro text here."),
        (
            "code",
            "```python\nsecret_value = compute()\n```\n``` not a fence\n~~~~",
        ),
        ("text", "After text."),
        ("code", "$ rm -rf build\n\nmake install"),
        ("text", "Closing words."),
        ("item", "an item"),
        ("text", "its second paragraph."),
    ]
    sentences = store.summarize_document("doc", 10)["sentences"]
    assert sentences == [
        "Intro text here.",
        "After text.",
        "Closing words.",
        "an item",
        "its second paragraph.",
    ]


def test_a_long_run_without_spaces_is_cut_into_whole_chunks():
    """Cut by position now (it copied the rest of the run at every cut: 1.3 s for 8 MB,
    0.16 s after, measured with the audit's script); the pieces must stay what they were."""
    run = "ACGT" * 2_500
    chunks = chunk_blocks([Block("text", run)], chunk_size=1_000, overlap=0)
    assert all(len(text) <= 1_000 for _, text in chunks) and len(chunks) == 11
    assert "".join(text for _, text in chunks) == run


def test_a_name_written_with_composed_accents_finds_a_file_named_with_decomposed_ones(
    tmp_path: Path,
):
    """macOS and zip write "résumé" decomposed; typed, it is composed: "no document named
    'résumé.md'; did you mean 'résumé.md'?"."""
    (tmp_path / unicodedata.normalize("NFD", "résumé.md")).write_text("# CV\n\nWelding.\n")
    store = DocumentStore(tmp_path)
    for typed in ("résumé.md", "résumé", "RÉSUMÉ"):
        assert store.get(unicodedata.normalize("NFC", typed)).text.startswith("CV")


def test_markdown_tables_are_read_as_cells_not_pipes(tmp_path: Path):
    """A GitHub table's pipes and "|---|" row were kept as text: in chunks, snippets and
    summaries ("Plan | Price | Seats Basic | $10 | 1"), and "--- | ---" without outer pipes."""
    (tmp_path / "plans.md").write_text(
        "# Plans\n\nOur plans are below.\n\n"
        "| Plan | Price | Seats |\n|:-----|------:|:-----:|\n| Basic | $10 | 1 |\n"
        "| **Pro** | $20 | `a \\| b` |\n\n"
        "Without outer pipes:\n\nPlan | Price\n--- | ---\nTeam | $50\n\n"
        "| Only headings |\n| --- |\n\nA closing sentence.\n",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path)
    document = store.documents["plans.md"]
    assert [(b.kind, b.text) for b in document.blocks if b.kind == "row"] == [
        ("row", "Plan: Basic; Price: $10; Seats: 1"),
        ("row", "Plan: Pro; Price: $20; Seats: a | b"),  # "\|" is a pipe inside a cell
        ("row", "Plan: Team; Price: $50"),
        ("row", "Only headings"),
    ]
    chunks = " ".join(chunk.text for chunk in document.chunks)
    assert "---" not in chunks and "Basic |" not in chunks and "| Price" not in chunks
    hit = store.search_documents("price of the team plan", top_k=1)[0]
    assert "Plan: Team; Price: $50" in hit["snippet"]
    summary = store.summarize_document("plans", max_sentences=10)
    assert summary["sentences"] == [  # rows are data, not prose to quote
        "Our plans are below.",
        "Without outer pipes:",
        "A closing sentence.",
    ]
    (tmp_path / "prices.md").write_text("| Plan | Price |\n|---|---|\n| Basic | $10 |\n")
    store.reload()
    only_rows = store.summarize_document("prices")  # was empty: no prose to quote
    assert only_rows["sentences"] == ["Plan: Basic; Price: $10"]


def test_html_tables_are_read_as_cells(tmp_path: Path):
    """Cells ran together ("New", "York" read "New York") and each row was prose."""
    (tmp_path / "cities.html").write_text(
        "<h1>Offices</h1><p>Where we work.</p><table><thead><tr><td>Office<td>City</thead>"
        "<tr><td>New</td><td>York</td></tr><tr><td>Main<td><p>Oslo</p><p>Norway</p>"
        "<script>track()</script></table><p>More to come.</p>",
        encoding="utf-8",
    )
    store = DocumentStore(tmp_path)
    blocks = store.documents["cities.html"].blocks
    assert [(b.kind, b.text) for b in blocks] == [
        ("heading", "Offices"),
        ("text", "Where we work."),
        ("row", "Office: New; City: York"),
        ("row", "Office: Main; City: Oslo Norway"),
        ("text", "More to come."),
    ]
    assert store.summarize_document("cities", 5)["sentences"] == [
        "Where we work.",
        "More to come.",
    ]


def test_compare_documents_shares_whole_words_not_pieces_of_words(tmp_path: Path):
    """The index's tokenizer splits "SQLite" into "sq" and "lite", "JavaScript" into "java"
    and "script": two documents sharing no word were 0.46 alike, sharing both."""
    (tmp_path / "db.md").write_text(
        "# Storage\n\nThe history lives in SQLite. SQLite is embedded. "
        "Our tools use JavaScript and IPv6.\n",
        encoding="utf-8",
    )
    (tmp_path / "drinks.md").write_text(
        "# Drinks\n\nThe lite drink is popular. Order the lite version. "
        "Script writers love lite and IPv4.\n",
        encoding="utf-8",
    )
    (tmp_path / "other.md").write_text(
        "# Other\n\nThe sqlite tool reads the history.\n", encoding="utf-8"
    )
    store = DocumentStore(tmp_path)
    unrelated = store.compare_documents("db.md", "drinks.md")
    assert unrelated["shared_terms"] == [] and unrelated["similarity"] == 0
    assert {"sqlite", "javascript", "ipv6"} <= set(unrelated["distinctive_first"])
    assert {"lite", "script", "ipv4"} <= set(unrelated["distinctive_second"])
    related = store.compare_documents("db.md", "other.md")  # case and inflections still fold
    assert set(related["shared_terms"]) == {"sqlite", "history", "tools"}


def test_a_file_name_that_is_not_utf8_is_shown_and_found_as_text(tmp_path: Path):
    r"""A Linux name with a byte that is not UTF-8 came out as a lone surrogate: the listing
    could not be written as UTF-8 JSON, no typed name found it, and the execution store
    recorded "caf\ufffd.md", which names nothing."""
    root = os.fsencode(tmp_path)
    try:
        for name, content in [
            (b"caf\xe9.md", b"# Menu\n\nThe coffee is strong.\n"),  # "café.md" in Latin-1
            (b"caf\xc3\xa9.md", b"# Cafe\n\nThe UTF-8 one.\n"),  # the same name in UTF-8
            (b"bad\xff.pdf", b"not a pdf"),
        ]:
            Path(os.fsdecode(os.path.join(root, name))).write_bytes(content)
    except OSError:  # pragma: no cover - file systems that refuse such names
        pytest.skip("this file system refuses names that are not UTF-8")
    store = DocumentStore(tmp_path)
    listing = store.list_documents()
    assert sorted(d["name"] for d in listing["documents"]) == ["caf\\xe9.md", "café.md"]
    assert [u["name"] for u in listing["unreadable"]] == ["badÿ.pdf"]
    json.dumps(listing, ensure_ascii=False).encode("utf-8")
    json.dumps(store.search_documents("coffee"), ensure_ascii=False).encode("utf-8")
    assert store.get("café.md").text.startswith("Cafe")  # the UTF-8 name keeps its own
    assert store.get("caf\\xe9.md").text.startswith("Menu")
    assert store.get(os.fsdecode(b"caf\xe9.md")).text.startswith("Menu")  # as on disk
    with pytest.raises(UnknownDocumentError, match=r"'badÿ\.pdf' exists but could not be read"):
        store.get("badÿ")

    (tmp_path / "café.md").unlink()  # alone, the Latin-1 name reads as the name meant
    registry = ToolRegistry()
    register_documents(registry, DocumentStore(tmp_path))
    with ExecutionStore(f"sqlite:///{tmp_path / 'h.db'}", state_dir=tmp_path / "s") as runs:
        with Orchestrator(registry, store=runs) as orch:
            result = orch.process(
                Plan(goal="list", steps=[Step(id="s", tool="list_documents", params={})])
            )
        runs.flush()
        recorded = runs.get_execution(result.execution_id)
    assert recorded is not None
    assert [d["name"] for d in recorded.steps[0].result["documents"]] == ["café.md"]


def test_a_linked_document_is_named_and_read_as_its_link(tmp_path: Path):
    """Stems were the link target's ("handbook" found nothing, "handbook-2023-v7" found the
    link), and a link to a file without a suffix failed with "KeyError: ''"."""
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / "handbook-2023-v7.md").write_text("# Handbook\n\nHolidays.\n")
    (tmp_path / "archive" / "README").write_text("# Readme\n\n*Read* me first.\n")
    try:
        (tmp_path / "handbook.md").symlink_to(tmp_path / "archive" / "handbook-2023-v7.md")
        (tmp_path / "readme.md").symlink_to(tmp_path / "archive" / "README")
    except OSError:  # pragma: no cover
        pytest.skip("symbolic links are not available here")
    store = DocumentStore(tmp_path)
    assert store.get("handbook").name == "handbook.md"
    assert store.get("handbook-2023-v7").name == "archive/handbook-2023-v7.md"
    assert store.problems == {}
    readme = store.get("readme")
    assert readme.name == "readme.md" and readme.format == "markdown"
    assert readme.text == "Readme\n\nRead me first."


def test_an_unreadable_file_named_by_its_stem_says_it_could_not_be_read(tmp_path: Path):
    """By stem (or a decomposed accent) it was "no document named 'q3-report'", as if the
    file were not there."""
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "q3-report.pdf").write_bytes(b"not a pdf at all")
    (tmp_path / unicodedata.normalize("NFD", "Résumé.md")).write_bytes(b"")
    (tmp_path / "guide.md").write_text("# Guide\n\nRead this.\n", encoding="utf-8")
    (tmp_path / "guide.pdf").write_bytes(b"not a pdf either")
    store = DocumentStore(tmp_path)
    said = "document 'reports/q3-report.pdf' exists but could not be read: not a readable PDF"
    for typed in ("q3-report", "Q3-REPORT", "q3-report.pdf", "reports/q3-report.pdf"):
        with pytest.raises(UnknownDocumentError) as caught:
            store.get(typed)
        assert str(caught.value).startswith(said)
    for typed in ("résumé", "RÉSUMÉ.md"):
        with pytest.raises(UnknownDocumentError, match="exists but could not be read: no text"):
            store.get(typed)
    with pytest.raises(
        UnknownDocumentError,
        match=r"'guide' is ambiguous: write 'guide\.md' or 'guide\.pdf' \(unreadable\)",
    ):
        store.get("guide")
    assert store.get("guide.md").name == "guide.md"


def test_names_with_backslashes_are_names(tmp_path: Path):
    """A backslash is part of a Linux file name, but every one was read as "/": such a file
    was "no document named 'C:\\\\temp\\\\draft.md'; did you mean 'C:\\\\temp\\\\draft.md'?"."""
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "meeting.md").write_text("# Meeting\n\nWe met.\n", encoding="utf-8")
    (tmp_path / "C:\\temp\\draft.md").write_text("# Draft\n\nA draft.\n", encoding="utf-8")
    (tmp_path / "broken\\old.pdf").write_bytes(b"not a pdf")
    store = DocumentStore(tmp_path)
    assert sorted(store.documents) == ["C:\\temp\\draft.md", "notes/meeting.md"]
    for typed in ("C:\\temp\\draft.md", "c:\\temp\\draft", " C:\\temp\\draft.md\n"):
        assert store.get(typed).name == "C:\\temp\\draft.md"
    assert store.get("notes\\meeting.md").name == "notes/meeting.md"  # Windows separators
    with pytest.raises(UnknownDocumentError, match=r"'broken\\old\.pdf' exists but could not"):
        store.get("broken\\old.pdf")
    with pytest.raises(UnknownDocumentError) as caught:
        store.get("C:\\temp\\draft.txt")
    assert "did you mean 'C:\\temp\\draft.md'?" in str(caught.value)  # as written, not repr
