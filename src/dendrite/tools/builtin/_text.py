"""Text plumbing shared by the text and document tools: words, sentences, terms, blocks.

Terms (what keywords and summaries count) come from the same tokenizer as the lexical index
(:func:`dendrite.retrieval.lexical.tokenize`: lower case, stop words dropped, light
stemming), so a word a search matches is a word a summary counts. Comparisons count whole
words (:func:`word_terms`): the tokenizer's pieces of "SQLite" are not a second document's
"lite".
"""

from __future__ import annotations

import codecs
import itertools
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Literal

from dendrite.retrieval.lexical import STOP_WORDS, stem, tokenize
from dendrite.retrieval.lexical import WORD as _INDEX_WORD

# A word: dotted abbreviations ("e.g.", "U.S."), numbers with decimal or thousands marks
# ("3.5", "1,250"), or letters/digits with inner apostrophes or hyphens ("don't", "well-known").
WORD_RE = re.compile(r"(?:[^\W\d_]\.){2,}|\d+(?:[.,]\d+)+|[^\W_]+(?:['\u2019\-][^\W_]+)*")

_ALNUM = re.compile(r"[^\W_]+")

# Words after which a full stop does not end a sentence.
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "eg",
        "ie",
        "fig",
        "figs",
        "no",
        "nos",
        "inc",
        "ltd",
        "co",
        "corp",
        "dept",
        "approx",
        "cf",
        "al",
        "jan",
        "feb",
        "mar",
        "apr",
        "jun",
        "jul",
        "aug",
        "sep",
        "sept",
        "oct",
        "nov",
        "dec",
        "mt",
        "ave",
        "est",
        "vol",
        "pp",
        "p",
        "ca",
    ]
)
# A candidate boundary: terminal punctuation (and closing quotes/brackets), then white space,
# then something that can start a sentence.
# (\u201c-\u201d and \u2018-\u2019 are the typographic double and single quotes.)
_BOUNDARY = re.compile(r"""[.!?…]+["'\u201d\u2019)\]]*\s+(?=["'\u201c\u2018(\[]?[A-Z0-9À-Ý])""")
_LAST_WORD = re.compile(r"([\w.]+)[.!?…]+[\"'\u201d\u2019)\]]*$")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (white space collapsed), keeping abbreviations and initials whole."""
    text = " ".join(text.split())
    if not text:
        return []
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        if text[match.start()] == ".":
            # Only the word before the boundary matters, and an abbreviation is short: the
            # last 64 characters, not the sentence so far (searched whole, a long sentence,
            # or one long word, took quadratic time: minutes for a page of DNA).
            tail = text[max(start, match.start() - 64) : match.end()].rstrip()
            last = _LAST_WORD.search(tail)
            word = last.group(1).lower() if last else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        candidate = text[start : match.end()].strip()
        if candidate:
            sentences.append(candidate)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def words(text: str) -> list[str]:
    """The words of ``text`` as written (numbers count as words)."""
    return WORD_RE.findall(text)


def terms(text: str) -> list[str]:
    """Content terms: lower-cased, stemmed, without stop words, numbers or one-letter tokens."""
    return [t for t in tokenize(text) if len(t) > 1 and not t.isdigit()]


def term_labels(text: str) -> dict[str, str]:
    """For each term of ``text``, the surface word it most often comes from (for display)."""
    seen: dict[str, Counter[str]] = {}
    for part in _ALNUM.findall(text):
        # "tools" -> "tool" is labelled "tools"; a word the tokenizer splits further
        # ("SQLite" -> "sq", "lite") labels each piece with the whole word.
        for term in terms(part):
            seen.setdefault(term, Counter())[part.lower()] += 1
    return {term: forms.most_common(1)[0][0] for term, forms in seen.items()}


def word_terms(text: str) -> list[tuple[str, str]]:
    """``(term, word)`` for each content word of ``text``, the word lower-cased as written.

    A term stands for a whole word here, where :func:`terms` splits one as the search index
    does ("SQLite" is "sq" and "lite", so that a search for "lite" finds it): comparing by
    those pieces, a document about SQLite and one about lite beer shared a term. Inflections
    still fold ("tools" is "tool"); scripts written without spaces between words have no
    whole words to go by and are counted in pairs of characters, as the index counts them.
    """
    found: list[tuple[str, str]] = []
    text = unicodedata.normalize("NFKC", text).lower().replace("i\u0307", "i")
    for word in _INDEX_WORD.findall(text):
        if word.isascii():
            if len(word) > 1 and not word.isdigit() and word not in STOP_WORDS:
                found.append((stem(word), word))
            continue
        pieces = terms(word)
        found.extend((piece, word if len(pieces) == 1 else piece) for piece in pieces)
    return found


# -- blocks: the structure documents are chunked and summarized by ------------------------

# A "row" is a table row: searched and chunked like text, but data, not prose to summarize.
BlockKind = Literal["heading", "text", "item", "code", "row"]


@dataclass(frozen=True, slots=True)
class Block:
    kind: BlockKind
    text: str
    level: int = 0  # heading level, 1-6


_BULLET = re.compile(r"^\s*(?:[-*+•·▪‣◦]|\d{1,3}[.)])\s+")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_RULE = re.compile(r"^\s{0,3}(?:(?:\*\s*){3,}|(?:-\s*){3,}|(?:_\s*){3,})$")
_FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
_INDENTED = re.compile(r"^(?: {4}|\t)")
_QUOTE = re.compile(r"^\s{0,3}>\s?")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\](?:\([^)]*\)|\[[^\]]*\])")
_AUTOLINK = re.compile(r"<((?:https?|mailto):[^>\s]+)>")
_INLINE_HTML = re.compile(r"</?[A-Za-z][^>]*>")
# Tags that break a line or a block where they stand: dropped without a space, "Enter<br>then"
# read "Enterthen".
_BREAKING_HTML = re.compile(
    r"</?(?:br|p|div|hr|li|ul|ol|dl|dt|dd|table|thead|tbody|tfoot|tr|td|th|h[1-6]|blockquote"
    r"|pre|section|article|header|footer|aside|main|figure|figcaption|details|summary)\b[^>]*>",
    re.IGNORECASE,
)
# What a Markdown reader never shows: HTML comments and script and style elements. A code
# span is matched too, to be kept as written ("`<!--`" is a tag being talked about): a whole
# run of backticks, then at most 1,000 characters to a run as long (unanchored and unbounded,
# each run of a new length scanned the rest of the line from each of its backticks: a line
# of 100,000 characters took over a minute).
_HIDDEN_HTML = re.compile(
    r"(?<!`)(`+)(?!`).{0,1000}?(?<!`)\1(?!`)|<!--|<(script|style)\b", re.IGNORECASE
)
# YAML front matter: "key: value" lines, and the indented, list, comment and blank lines
# that carry a key's value on. A "---" rule above prose is no front matter.
_YAML_KEY = re.compile(r"^[A-Za-z_][\w.-]*\s*:(?:\s|$)")
_YAML_MORE = re.compile(r"^(?:[ \t#-]|$)")
_CODE_SPAN = re.compile(r"`+([^`]+)`+")
# Emphasis spans a line's words, not a page: bounded, an unmatched "*" looks no further than
# 300 characters (unbounded, every "*" of a glob table scanned the rest of it: quadratic).
_EMPHASIS = re.compile(r"(?<![\w*_])([*_]{1,3})(?=\S)([^\n]{1,300}?)(?<=\S)\1(?![\w*_])")
_HYPHEN_BREAK = re.compile(r"(\w)-\s*\n\s*(\w)")
_MARKUP = re.compile(r"[\[<`*_]")  # what images, links, HTML, code and emphasis start with
# A GitHub-flavoured Markdown table: a header row, then a delimiter row ("|:---|---:|"; it
# needs a pipe: "---" alone is a rule or a setext heading), then a row a line to the first
# blank line or other block. A cell is split off at each pipe not escaped as "\|".
_TABLE_DELIMITER = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)*\s*:?-+:?\s*\|?\s*$")
_CELL_BORDER = re.compile(r"(?<!\\)\|")


def _join_lines(lines: list[str], *, dehyphenate: bool = False) -> str:
    """The lines as one line; a word broken after a hyphen is joined again.

    With ``dehyphenate`` (text extracted from a PDF, whose layout engine hyphenated its
    words) the hyphen goes: "exam-\\nple" is "example". Without it the hyphen stays: a line
    of a text or Markdown file ending in "long-" is the writer's "long-term".
    """
    joined = "\n".join(line.strip() for line in lines)
    joined = _HYPHEN_BREAK.sub(r"\1\2" if dehyphenate else r"\1-\2", joined)
    return " ".join(joined.split())


def plain_blocks(text: str, *, title_line: bool = False, dehyphenate: bool = False) -> list[Block]:
    """Blocks of plain text: paragraphs split on blank lines; bulleted lines become items.

    With ``title_line``, a short first paragraph of one line without final punctuation,
    followed by more text, is taken as the title (a level-1 heading). ``dehyphenate`` joins
    words hyphenated across a line break (for text extracted from a PDF).
    """
    blocks: list[Block] = []
    lines: list[str] = []
    item = False

    def flush() -> None:
        nonlocal lines, item
        body = _join_lines(lines, dehyphenate=dehyphenate)
        if body:
            blocks.append(Block("item" if item else "text", body))
        lines, item = [], False

    for raw in text.splitlines():
        if not raw.strip():
            flush()
            continue
        bullet = _BULLET.match(raw)
        if bullet:
            flush()
            lines, item = [raw[bullet.end() :]], True
            continue
        lines.append(raw)
    flush()
    if title_line and len(blocks) > 1:
        first = blocks[0]
        lines_in_first = text.lstrip().split("\n", 1)[0].strip()
        if (
            first.kind == "text"
            and first.text == lines_in_first
            and len(first.text) <= 80
            and first.text[-1] not in ".!?:;,"
        ):
            blocks[0] = Block("heading", first.text, 1)
    return blocks


def _inline_markdown(text: str) -> str:
    """``text`` with its inline markup reduced to what a reader sees.

    Text without a character any of the markup starts with is returned as it is: ten
    regular expressions a line made a long table three times slower to load than before
    its rows were read one by one.
    """
    if not _MARKUP.search(text):
        return text
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _AUTOLINK.sub(r"\1", text)
    text = _BREAKING_HTML.sub(" ", text)
    text = _INLINE_HTML.sub("", text)
    text = _CODE_SPAN.sub(r"\1", text)
    for _ in range(3):  # nested emphasis: ***a*** -> a
        text = _EMPHASIS.sub(r"\2", text)
    return text


def _table_cells(line: str) -> list[str]:
    """The cells of a table row as written: the outer pipes dropped, "\\|" a pipe in a cell."""
    row = line.strip().removeprefix("|")
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    return [cell.strip().replace("\\|", "|") for cell in _CELL_BORDER.split(row)]


def table_row(header: list[str], cells: list[str]) -> str:
    """A table row (of Markdown or HTML) as text, each cell after its column's heading:
    "Plan: Pro; Price: $20".

    Alone in a chunk or a search snippet, a row of bare values would not say what they are,
    and cells run together ("New", "York" is no "New York"). Cells past the header's are
    kept without a heading; empty cells are left out.
    """
    parts: list[str] = []
    for column, cell in itertools.zip_longest(header, cells, fillvalue=""):
        value = " ".join(cell.split())
        if value:
            parts.append(f"{column}: {value}" if column else value)
    return "; ".join(parts)


def _hide_html(line: str) -> tuple[str, str | None]:
    """``line`` without its HTML comments, scripts and styles, and the mark that ends the
    one left open at its end (``None`` when none is): "-->", "</script>" or "</style>".

    A reader of the rendered page never sees them, so neither should a summary or a search.
    """
    kept: list[str] = []
    position = 0
    while match := _HIDDEN_HTML.search(line, position):
        if match.group(1):  # a code span, kept as written
            kept.append(line[position : match.end()])
            position = match.end()
            continue
        kept.append(line[position : match.start()])
        closing = "-->" if match.group(2) is None else f"</{match.group(2).lower()}>"
        end = line.lower().find(closing, match.end())
        if end < 0:
            return "".join(kept), closing
        position = end + len(closing)
    kept.append(line[position:])
    return "".join(kept), None


def _front_matter_end(lines: list[str]) -> int:
    """How many lines of YAML front matter open ``lines`` (0 when none do).

    Front matter is "---", lines that read as YAML keys and their values, then "---" or
    "...". A document opening on a "---" rule above prose keeps its prose.
    """
    if not lines or lines[0].strip() != "---":
        return 0
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            body = [line for line in lines[1:end] if line.strip()]
            yaml = all(_YAML_KEY.match(line) or _YAML_MORE.match(line) for line in body)
            return end + 1 if yaml and (not body or _YAML_KEY.match(body[0])) else 0
    return 0


def markdown_blocks(text: str) -> list[Block]:
    """Blocks of Markdown: ATX and setext headings, paragraphs, list items, code blocks
    and table rows.

    Inline markup (links, images, emphasis, code spans, inline HTML) is reduced to its
    text; front matter, horizontal rules, HTML comments, scripts and styles are dropped.
    Code is fenced (closed only by a fence of the same character at least as long) or
    indented by four spaces or a tab below a blank line, a heading or the start. A table's
    pipes and delimiter row are markup too: each row is a block of its cells, named by
    their column headings (a table without rows keeps its header as one).
    """
    lines = text.splitlines()
    lines = lines[_front_matter_end(lines) :]
    blocks: list[Block] = []
    para: list[str] = []
    item = False
    fence: str | None = None  # the open fence, "```" or longer
    indented = False  # inside an indented code block
    hidden: str | None = None  # the mark that ends an open comment, script or style
    code: list[str] = []
    table: list[str] | None = None  # the open table's column headings
    table_start = 0  # where its rows begin in ``blocks``

    def flush() -> None:
        nonlocal para, item, table
        if table is not None and len(blocks) == table_start and any(table):
            blocks.append(Block("row", table_row([], table)))
        table = None
        body = _inline_markdown(_join_lines(para))
        if body.strip():
            blocks.append(Block("item" if item else "text", " ".join(body.split())))
        para, item = [], False

    def flush_code() -> None:
        nonlocal code
        if any(c.strip() for c in code):
            blocks.append(Block("code", "\n".join(code).strip("\n")))
        code = []

    for raw in lines:
        if fence is not None:
            closing = _FENCE.match(raw)
            if (
                closing
                and closing.group(1)[0] == fence[0]
                and len(closing.group(1)) >= len(fence)
                and not raw[closing.end() :].strip()
            ):
                flush_code()
                fence = None
            else:
                code.append(raw)
            continue
        if indented:
            if not raw.strip() or _INDENTED.match(raw):
                code.append(_INDENTED.sub("", raw, count=1))
                continue
            flush_code()
            indented = False
        if hidden is not None:
            end = raw.lower().find(hidden)
            if end < 0:
                continue
            raw, hidden = raw[end + len(hidden) :], None
        elif (
            not para
            and table is None  # an indented row is still a row
            and raw.strip()
            and _INDENTED.match(raw)
            and not (blocks and blocks[-1].kind == "item")  # a list item's next paragraph
        ):
            indented, code = True, [_INDENTED.sub("", raw, count=1)]
            continue
        opened = _FENCE.match(raw)
        if opened:
            flush()
            fence = opened.group(1)
            continue
        raw, hidden = _hide_html(raw)
        if not raw.strip():
            flush()
            continue
        heading = _ATX.match(raw)
        if heading:
            flush()
            title = " ".join(_inline_markdown(heading.group(2)).split())
            if title:
                blocks.append(Block("heading", title, len(heading.group(1))))
            continue
        setext = _SETEXT.match(raw)
        if setext and para and not item:
            title = " ".join(_inline_markdown(_join_lines(para)).split())
            para = []
            blocks.append(Block("heading", title, 1 if setext.group(1)[0] == "=" else 2))
            continue
        if _RULE.match(raw):
            flush()
            continue
        line = _QUOTE.sub("", raw)
        if para and "|" in line and _TABLE_DELIMITER.match(line):
            header = para[-1]
            if "|" in header or len(_table_cells(header)) == len(_table_cells(line)):
                para.pop()
                flush()
                table = [" ".join(c.split()) for c in _table_cells(_inline_markdown(header))]
                table_start = len(blocks)
                continue
        bullet = _BULLET.match(line)
        if bullet:
            flush()
            para, item = [line[bullet.end() :]], True
            continue
        if table is not None:
            row = table_row(table, _table_cells(_inline_markdown(line)))  # one pass a row
            if row:
                blocks.append(Block("row", row))
            continue
        para.append(line)
    flush_code()
    flush()
    return blocks


class BinaryContentError(ValueError):
    """Bytes with NUL in them that are not UTF-16 text: a binary file, not text."""


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, surrogate-escaped
_NON_ASCII = re.compile("[^\x00-\x7f]")


def text_codec(head: bytes, *, final: bool = True) -> str:
    """The codec every tool reads a text file in, judged from its first bytes ``head``
    (``final``: all of it): UTF-16 or UTF-8 after a byte-order mark (Notepad, PowerShell
    and Excel write one), else UTF-8, else Windows-1252, which decodes anything.

    Text with UTF-8 characters in it and a stray byte (a Windows-1252 dash pasted in) is
    still UTF-8, the stray byte replaced: read as Windows-1252, every "ë" in it would turn
    into "Ã«". It takes at least two UTF-8 characters for each byte that is not UTF-8:
    Windows-1252 text now and then holds a pair that reads as UTF-8 ("ß…" is "\\xdf\\x85",
    a valid "߅"), but then most of its other accented letters are not.
    """
    return _sniffed(head, final)[0]


def _sniffed(head: bytes, final: bool) -> tuple[str, str | None]:
    """``text_codec``'s answer, and the text when that took reading all of ``head`` as
    UTF-8 (which ``decode_text`` then need not decode again)."""
    if head[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return "utf-16", None
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig", None
    try:
        text = codecs.getincrementaldecoder("utf-8")(errors="strict").decode(head, final=final)
    except UnicodeDecodeError:
        # Each byte that is not UTF-8 decodes to one lone surrogate, which UTF-8 proper
        # never yields; every other character past ASCII is a valid UTF-8 sequence.
        escaped = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
        loose = escaped.decode(head, final=final)
        invalid = len(_ESCAPED_BYTE.findall(loose))
        valid = len(_NON_ASCII.findall(loose)) - invalid
        return ("utf-8-sig" if valid >= 2 * invalid else "cp1252"), None
    return "utf-8-sig", text


def decode_text(data: bytes, *, final: bool = True) -> tuple[str, str]:
    """The text and the name of its encoding (``text_codec``'s, "utf-8" for UTF-8).

    ``final=False`` when ``data`` was cut from a longer file: a character split at the cut
    is not an error. Raises :class:`BinaryContentError` for NUL bytes anywhere outside
    UTF-16 text. A bad UTF-16 unit is replaced, not a reason to read the rest as
    Windows-1252.
    """
    codec, text = _sniffed(data, final)
    if codec != "utf-16" and b"\x00" in data:
        raise BinaryContentError("binary content (NUL bytes), not text")
    if text is None:
        text = codecs.getincrementaldecoder(codec)(errors="replace").decode(data, final=final)
    return text, "utf-8" if codec == "utf-8-sig" else codec
