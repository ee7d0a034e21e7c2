"""The text pack: keywords, counts, regular-expression extraction and normalization.

``regex_extract`` runs the pattern in a child Python process with a wall-clock bound.
Python's ``re`` backtracks, so a pattern such as ``(a+)+$`` takes exponential time on a
few dozen characters, and a match cannot be interrupted from another thread (tools run in
worker threads). A separate process is the one thing that can be stopped; it costs about
20-30 ms per call, small next to anything a planner does with the result.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Literal

from pydantic import Field
from typing_extensions import TypedDict

from dendrite.tools.builtin._text import WORD_RE, split_sentences, term_labels, terms, words
from dendrite.tools.builtin.errors import BuiltinToolError, PatternError, PatternTooSlowError
from dendrite.tools.registry import Reliability, Tool, ToolRegistry, tool

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_REGEX_TEXT",
    "REGEX_TIMEOUT",
    "Keyword",
    "RegexFlag",
    "WordCount",
    "keywords",
    "normalize_text",
    "regex_extract",
    "register_text",
    "word_count",
]

MAX_PATTERN_LENGTH = 1_000
"""Characters a regular expression may have."""
MAX_REGEX_TEXT = 1_000_000
MAX_RESULT_CHARS = 2_000_000
"""What the matches may add up to: a capture inside a lookahead, (?=(a*)), returns the rest
of the text at every position, and 10,000 of them over a long text were gigabytes."""
"""Characters of text ``regex_extract`` searches (a linear scan of this takes milliseconds)."""
REGEX_TIMEOUT = 3.0
"""Seconds a ``regex_extract`` call may take, interpreter start included (~20x headroom
over a linear-time pattern on the largest text; anything slower is backtracking)."""

RegexFlag = Literal["ignorecase", "multiline", "dotall", "verbose", "ascii"]
_FLAGS: dict[str, re.RegexFlag] = {
    "ignorecase": re.IGNORECASE,
    "multiline": re.MULTILINE,
    "dotall": re.DOTALL,
    "verbose": re.VERBOSE,
    "ascii": re.ASCII,
}


class Keyword(TypedDict):
    term: str
    count: int


class WordCount(TypedDict):
    words: int
    sentences: int
    characters: int


@tool(reliability=Reliability.HIGH, tags=["text"])
def keywords(text: str, top_k: Annotated[int, Field(ge=1, le=100)] = 10) -> list[Keyword]:
    """Find the most frequent content words of a text.

    Stop words, numbers and one-letter words are ignored; inflections are counted together
    ("tools" and "tool") and shown in their most common written form. Ties keep the order
    of first appearance.

    Args:
        text: the text to analyse
        top_k: how many keywords to return, 1 to 100
    """
    labels = term_labels(text)
    found: dict[str, int] = {}
    for term, count in Counter(terms(text)).most_common():  # ties: first appearance first
        label = labels.get(term, term)
        if label not in found:  # "SQLite" is two terms ("sq", "lite") but one word
            found[label] = count
            if len(found) >= top_k:
                break
    return [{"term": label, "count": count} for label, count in found.items()]


@tool(reliability=Reliability.HIGH, tags=["text"])
def word_count(text: str) -> WordCount:
    """Count the words, sentences and characters of a text.

    Words are runs of letters or digits ("don't" and "well-known" count once); sentences
    end with . ! or ? (abbreviations such as "e.g." and initials do not end one) or at a
    blank line.

    Args:
        text: the text to count
    """
    paragraphs = re.split(r"\n\s*\n", text)
    return {
        "words": len(words(text)),
        "sentences": sum(1 for p in paragraphs for s in split_sentences(p) if WORD_RE.search(s)),
        "characters": len(text),
    }


_WORKER = r"""
import json, re, sys
job = json.loads(sys.stdin.buffer.read().decode("ascii"))
compiled = re.compile(job["pattern"], job["flags"])
group = job["group"]
found = []
total = 0
for match in compiled.finditer(job["text"]):
    if group is None:
        value = match.group(1) if compiled.groups else match.group(0)
    else:
        value = match.group(group)
    found.append(value if value is not None else "")
    total += len(found[-1])
    if total > job["max_chars"]:
        sys.exit(3)
    if len(found) >= job["max_matches"]:
        break
sys.stdout.buffer.write(json.dumps(found).encode("ascii"))
"""


@tool(reliability=Reliability.HIGH, tags=["text"])
def regex_extract(
    text: str,
    pattern: str,
    flags: Sequence[RegexFlag] = (),
    group: int | str | None = None,
    max_matches: Annotated[int, Field(ge=1, le=10_000)] = 100,
) -> list[str]:
    """Extract the matches of a regular expression (Python syntax) from a text.

    Each result is the whole match, or, when the pattern has capturing groups, the first
    group (as re.findall does); name a group to pick another. Patterns of up to 1,000
    characters on texts of up to 1,000,000 characters; a pattern that runs longer than a
    few seconds (catastrophic backtracking, e.g. "(a+)+$") is stopped with an error.

    Args:
        text: the text to search
        pattern: the regular expression, e.g. "[\\w.+-]+@[\\w-]+\\.[\\w.]+" for e-mail addresses
        flags: any of ignorecase, multiline, dotall, verbose, ascii
        group: the group to return (number or name); default the first group, if any
        max_matches: the most matches to return, 1 to 10,000
    """
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise PatternError(
            f"the pattern has {len(pattern)} characters; the limit is {MAX_PATTERN_LENGTH}"
        )
    if len(text) > MAX_REGEX_TEXT:
        raise BuiltinToolError(
            f"the text has {len(text):,} characters; regex_extract searches at most "
            f"{MAX_REGEX_TEXT:,}"
        )
    unknown = [f for f in flags if f not in _FLAGS]
    if unknown:
        raise PatternError(f"unknown flag {unknown[0]!r}; flags are {', '.join(_FLAGS)}")
    flag_bits = 0
    for name in flags:
        flag_bits |= _FLAGS[name]
    try:
        compiled = re.compile(pattern, flag_bits)
    except re.error as error:
        raise PatternError(f"invalid regular expression {pattern!r}: {error}") from None
    except (OverflowError, RecursionError, MemoryError, ValueError) as error:
        raise PatternError(f"invalid regular expression {pattern!r}: {error}") from None
    if isinstance(group, str) and group.isdigit():
        group = int(group)
    if group is not None:
        if isinstance(group, int) and not 0 <= group <= compiled.groups:
            raise PatternError(
                f"the pattern has {compiled.groups} group(s); group {group} does not exist"
            )
        if isinstance(group, str) and group not in compiled.groupindex:
            names = ", ".join(compiled.groupindex) or "none"
            raise PatternError(f"the pattern has no group named {group!r} (named groups: {names})")
    job = {
        "pattern": pattern,
        "flags": int(flag_bits),
        "text": text,
        "group": group,
        "max_matches": max_matches,
        "max_chars": MAX_RESULT_CHARS,
    }
    if not sys.executable:
        raise BuiltinToolError("regex_extract needs a Python interpreter to run patterns in")
    try:
        done = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _WORKER],
            input=json.dumps(job).encode("ascii"),  # ASCII JSON: no locale can garble it
            capture_output=True,
            timeout=REGEX_TIMEOUT,
            check=False,
        )
    except OSError as error:
        raise BuiltinToolError(f"regex_extract could not start its worker: {error}") from None
    except subprocess.TimeoutExpired:
        raise PatternTooSlowError(
            f"the pattern {pattern!r} did not finish within {REGEX_TIMEOUT:g} s on this text; "
            "it probably backtracks catastrophically (nested quantifiers such as (a+)+ or "
            "overlapping alternatives such as (a|a)*): simplify it"
        ) from None
    if done.returncode == 3:
        raise BuiltinToolError(
            f"the matches add up to more than {MAX_RESULT_CHARS:,} characters (overlapping "
            "captures repeat the text); ask for fewer matches or a narrower pattern"
        )
    if done.returncode != 0:
        errors = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
        raise PatternError(f"the pattern {pattern!r} could not be run: {(errors or ['?'])[-1]}")
    result: list[str] = json.loads(done.stdout)
    return result


_COLLAPSE = re.compile(r"\s+")
# Punctuation that belongs to a word or a number, which strip_punctuation must not turn into
# a space: the dots of a dotted abbreviation ("e.g.", "U.S.") and an apostrophe between
# letters ("don't") are dropped, so the word stays one; a decimal point or thousands
# separator between digits ("3.5", "1,250") and the sign or point that opens a number
# ("-5", ".5") are kept, or the number would change.
_ABBREVIATION = re.compile(r"(?<![^\W_])(?:[^\W\d_]\.){2,}")
_INNER_APOSTROPHE = re.compile(r"(?<=[^\W_])['\u2019](?=[^\W_])")
_NUMBER_MARK = re.compile(r"(?<=\d)[.,](?=\d)|(?<![^\W_])[-.](?=\d)")


def _strip_punctuation(text: str) -> str:
    """Remove punctuation (Unicode category P) without joining what it separated.

    Deleting it outright joined words and numbers: a dash made "stop-start" "stopstart"
    and a page range "10-20" 1020, and "3.5" became 35. Punctuation between two non-space
    characters becomes one space; next to white space or an end it is simply dropped
    ("hello, world" keeps its single space). The marks of words and numbers above are
    handled first.
    """
    text = _ABBREVIATION.sub(lambda match: match.group().replace(".", ""), text)
    text = _INNER_APOSTROPHE.sub("", text)
    kept = {match.start() for match in _NUMBER_MARK.finditer(text)}
    out: list[str] = []
    separated = False
    for index, char in enumerate(text):
        if index not in kept and unicodedata.category(char).startswith("P"):
            separated = True
            continue
        if separated and out and not out[-1].isspace() and not char.isspace():
            out.append(" ")
        out.append(char)
        separated = False
    return "".join(out)


@tool(reliability=Reliability.HIGH, tags=["text"])
def normalize_text(
    text: str,
    lowercase: bool = True,
    strip_punctuation: bool = False,
    collapse_whitespace: bool = True,
    uppercase: bool = False,
) -> str:
    """Normalize a text: Unicode compatibility forms (NFKC), case, punctuation, white space.

    NFKC is always applied (full-width letters, ligatures such as "ﬁ", non-breaking
    spaces become their plain forms).

    Args:
        text: the text to normalize
        lowercase: lower-case everything
        strip_punctuation: remove punctuation characters (Unicode category P), keeping
            letters, digits, symbols and white space. Punctuation between two words or
            numbers becomes a space ("stop-start" and "10-20", with a hyphen or any dash,
            are "stop start" and "10 20"); a number's decimal point, thousands separator
            and minus sign stay ("3.5", "1,250", "-5"); an apostrophe inside a word and the
            dots of an abbreviation go ("don't" is "dont", "e.g." is "eg")
        collapse_whitespace: turn every run of white space into one space and trim both ends
        uppercase: upper-case everything instead (it wins over ``lowercase``, which is on
            by default)
    """
    result = unicodedata.normalize("NFKC", text)
    if uppercase:
        result = result.upper()
    elif lowercase:
        result = result.lower()
    if strip_punctuation:
        result = _strip_punctuation(result)
    if collapse_whitespace:
        result = _COLLAPSE.sub(" ", result).strip()
    return result


def register_text(registry: ToolRegistry, *, replace: bool = False) -> list[Tool]:
    """Register the text pack: keywords, word_count, regex_extract, normalize_text."""
    return [
        registry.register(func, replace=replace)
        for func in (keywords, word_count, regex_extract, normalize_text)
    ]
