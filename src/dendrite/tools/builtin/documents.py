"""The documents pack: a folder of text, Markdown, HTML and PDF files, searched and summarized.

A :class:`DocumentStore` loads every supported file under its root once, splits each into
blocks (headings, paragraphs, list items, code, table rows), packs the blocks into chunks
of roughly ``chunk_size`` characters that never cross a heading, with a small overlap
between the chunks of one section, and keeps a BM25 index (:class:`~dendrite.retrieval.
lexical.LexicalIndex`) over the chunks. A file that cannot be read is reported by
``list_documents`` and in errors naming it; it never stops the others from loading.

The tools are bound methods of the store, registered under stable names by
:func:`register_documents`, so the registry describes them from their signatures like any
other tool.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, ClassVar

from pydantic import Field
from typing_extensions import TypedDict

from dendrite.retrieval.lexical import LexicalIndex, tokenize
from dendrite.tools.builtin._text import (
    WORD_RE,
    BinaryContentError,
    Block,
    BlockKind,
    decode_text,
    markdown_blocks,
    plain_blocks,
    split_sentences,
    table_row,
    terms,
    word_terms,
)
from dendrite.tools.builtin.errors import BuiltinToolError, UnknownDocumentError
from dendrite.tools.registry import Reliability, Tool, ToolRegistry

__all__ = [
    "FORMATS",
    "Chunk",
    "Comparison",
    "Document",
    "DocumentInfo",
    "DocumentList",
    "DocumentStore",
    "SearchHit",
    "Summary",
    "register_documents",
]

FORMATS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".pdf": "pdf",
}
"""File suffixes the store loads, and the format each is read as."""

_SNIPPET_WIDTH = 240


class _Unreadable(Exception):
    """A file the store skips; the message says why."""


@dataclass(frozen=True, slots=True)
class Chunk:
    document: str
    index: int  # position within the document, from 0
    section: str  # the heading path, "Guide > Install"; "" before the first heading
    text: str


@dataclass(slots=True)
class Document:
    name: str  # path relative to the root, with / separators; a link's own, readable as text
    path: Path  # where it was read: a link's target
    format: str
    title: str | None
    blocks: list[Block]
    pages: int | None = None
    chunks: list[Chunk] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n\n".join(block.text for block in self.blocks)


class SearchHit(TypedDict):
    document: str
    chunk: int
    section: str
    score: float
    snippet: str


class Summary(TypedDict):
    document: str
    title: str | None
    summary: str
    sentences: list[str]
    total_sentences: int


class Comparison(TypedDict):
    first: str
    second: str
    similarity: float
    shared_terms: list[str]
    distinctive_first: list[str]
    distinctive_second: list[str]
    topic: str | None
    first_sentences: list[str]
    second_sentences: list[str]


class DocumentInfo(TypedDict):
    name: str
    format: str
    title: str | None
    characters: int
    chunks: int
    pages: int | None


class UnreadableFile(TypedDict):
    name: str
    error: str


class DocumentList(TypedDict):
    documents: list[DocumentInfo]
    unreadable: list[UnreadableFile]


# -- readers ------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    try:
        return decode_text(data)[0]
    except BinaryContentError as error:
        raise _Unreadable(str(error)) from None


@dataclass(slots=True)
class _Table:
    """An HTML table being read: its column headings, and the row and cell open in it."""

    header: list[str] | None = None
    row: list[str] | None = None
    headings_only: bool = True  # every cell of the open row so far is a <th>
    in_head: bool = False  # inside <thead>, whose rows are headings whatever their cells
    cell: list[str] | None = None
    rows: int = 0


class _HTMLBlocks(HTMLParser):
    """HTML to blocks: headings, paragraphs, list items, preformatted text and table rows.

    Scripts, styles, navigation and other non-content elements are dropped. A table row is
    one block of its cells, each named by its column's heading (the first row, when it is
    all <th>), as Markdown tables are read; end tags HTML lets a writer leave out (</td>,
    </tr>) are taken as read.
    """

    _SKIP = frozenset(
        {"script", "style", "noscript", "template", "svg", "nav", "iframe", "object", "canvas"}
    )
    _BLOCK = frozenset(
        {
            *("p", "div", "section", "article", "header", "footer", "main", "aside"),
            *("ul", "ol", "dl", "dd", "dt", "table", "thead", "tbody", "tfoot", "tr"),
            *("blockquote", "br", "hr", "figure", "figcaption", "form", "fieldset"),
            *("address", "details", "summary", "body", "html", "caption"),
        }
    )
    _HEADINGS: ClassVar[dict[str, int]] = {f"h{n}": n for n in range(1, 7)}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[Block] = []
        self.title_parts: list[str] = []
        self._buffer: list[str] = []
        self._heading = 0
        self._skip = 0
        self._in_title = False
        self._items = 0
        self._pre = 0
        self._tables: list[_Table] = []  # open tables, the innermost last

    def _flush(self) -> None:
        text = "".join(self._buffer)
        self._buffer = []
        kind: BlockKind
        if self._heading:
            kind, text = "heading", " ".join(text.split())
        elif self._pre:
            kind, text = "code", text.strip("\n")
        else:
            kind, text = ("item" if self._items else "text"), " ".join(text.split())
        if text.strip():
            self.blocks.append(Block(kind, text, self._heading))

    def _cell(self) -> list[str] | None:
        return self._tables[-1].cell if self._tables else None

    def _end_cell(self) -> None:
        table = self._tables[-1]
        if table.cell is not None and table.row is not None:
            table.row.append(" ".join("".join(table.cell).split()))
        table.cell = None

    def _end_row(self) -> None:
        self._end_cell()
        table = self._tables[-1]
        cells, table.row = table.row, None
        if cells is None:
            return
        if table.header is None and (table.headings_only or table.in_head) and not table.rows:
            table.header = cells
            return
        text = table_row(table.header or [], cells)
        if text:
            self.blocks.append(Block("row", text))
            table.rows += 1

    def _end_table(self) -> None:
        self._end_row()
        table = self._tables.pop()
        if table.header and not table.rows:  # headings alone are still the table's words
            self.blocks.append(Block("row", table_row([], table.header)))

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "table":
            self._flush()
            self._tables.append(_Table())
        elif self._tables and tag in ("td", "th"):
            table = self._tables[-1]
            self._end_cell()
            if table.row is None:
                table.row, table.headings_only = [], True
            table.headings_only = table.headings_only and tag == "th"
            table.cell = []
        elif self._tables and tag in ("tr", "thead", "tbody", "tfoot"):
            self._end_row()
            self._tables[-1].in_head = tag == "thead" or (tag == "tr" and self._tables[-1].in_head)
        elif (cell := self._cell()) is not None:
            if tag in self._BLOCK or tag in self._HEADINGS or tag in ("li", "pre"):
                cell.append(" ")  # a paragraph or line break inside a cell separates words
        elif tag in self._HEADINGS:
            self._flush()
            self._heading = self._HEADINGS[tag]
        elif tag == "li":
            self._flush()
            self._items += 1
        elif tag == "pre":
            self._flush()
            self._pre += 1
        elif tag in self._BLOCK:
            self._flush()
        elif tag in ("td", "th"):
            self._buffer.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag == "table" and self._tables:
            self._end_table()
        elif self._tables and tag in ("td", "th"):
            self._end_cell()
        elif self._tables and tag in ("tr", "thead", "tbody", "tfoot"):
            self._end_row()
            self._tables[-1].in_head = self._tables[-1].in_head and tag == "tr"
        elif (cell := self._cell()) is not None:
            if tag in self._BLOCK or tag in self._HEADINGS or tag in ("li", "pre"):
                cell.append(" ")
        elif tag in self._HEADINGS:
            self._flush()
            self._heading = 0
        elif tag == "li":
            self._flush()
            self._items = max(0, self._items - 1)
        elif tag == "pre":
            self._flush()
            self._pre = max(0, self._pre - 1)
        elif tag in self._BLOCK:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title_parts.append(data)
        elif (cell := self._cell()) is not None:
            cell.append(data)
        else:
            self._buffer.append(data)

    def close(self) -> None:
        super().close()
        while self._tables:  # a table left open at the end of the file
            self._end_table()
        self._flush()


def _read_html(data: bytes) -> tuple[str | None, list[Block]]:
    parser = _HTMLBlocks()
    parser.feed(_decode(data))
    parser.close()
    title = " ".join("".join(parser.title_parts).split()) or None
    return title, parser.blocks


def _read_pdf(path: Path) -> tuple[str | None, list[Block], int]:
    from pypdf import PdfReader

    try:
        reader = PdfReader(path)
        if reader.is_encrypted and not reader.decrypt(""):
            raise _Unreadable("encrypted PDF: a password is needed")
        blocks: list[Block] = []
        for page in reader.pages:
            blocks.extend(plain_blocks(page.extract_text() or "", dehyphenate=True))
        pages = len(reader.pages)
        metadata = reader.metadata
        title = (metadata.title if metadata else None) or None
    except _Unreadable:
        raise
    except Exception as error:
        raise _Unreadable(f"not a readable PDF ({type(error).__name__}: {error})") from None
    return (str(title).strip() or None) if title else None, blocks, pages


def _first_heading(blocks: list[Block]) -> str | None:
    return next((b.text for b in blocks if b.kind == "heading"), None)


def read_document(path: Path, name: str) -> Document:
    """Read one file into a :class:`Document` (without chunks); raise ``_Unreadable``.

    ``path`` is where the bytes are, a link's target; ``name`` is the file as listed. The
    target's suffix says how to read it, and when it has none of ours the name's does: a
    link "readme.md" to "README" is Markdown.
    """
    if not path.is_file():  # a named pipe would block the load for ever
        raise _Unreadable("not a regular file (a pipe, socket or device)")
    fmt = FORMATS.get(path.suffix.lower()) or FORMATS[PurePosixPath(name).suffix.lower()]
    pages: int | None = None
    if fmt == "pdf":
        title, blocks, pages = _read_pdf(path)
    else:
        data = path.read_bytes()
        if fmt == "html":
            title, blocks = _read_html(data)
            title = title or _first_heading(blocks)
        elif fmt == "markdown":
            blocks = markdown_blocks(_decode(data))
            title = _first_heading(blocks)
        else:
            blocks = plain_blocks(_decode(data), title_line=True)
            title = _first_heading(blocks)
    if not any(block.text.strip() for block in blocks):
        hint = " (a scanned PDF holds images, not text)" if fmt == "pdf" else ""
        raise _Unreadable(f"no text could be extracted{hint}")
    return Document(name=name, path=path, format=fmt, title=title, blocks=blocks, pages=pages)


# -- names --------------------------------------------------------------------------------

_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, surrogate-escaped


def _readable(name: str) -> str:
    r"""A file name as text that can be shown, typed back, and written as UTF-8 (JSON, a
    terminal, the execution store).

    A Linux name is bytes, and Python gives those that are not UTF-8 as lone surrogates,
    which none of those can hold: the store recorded "caf\ufffd.md", no document's name. A
    part of the path that is not UTF-8 is read as Windows-1252 (Latin-1 as Windows writes
    it), as the tools read text that is not UTF-8: b"caf\xe9.md" is "café.md".
    """
    if not _ESCAPED_BYTE.search(name):
        return name
    return "/".join(
        os.fsencode(part).decode("cp1252", errors="replace") if _ESCAPED_BYTE.search(part) else part
        for part in name.split("/")
    )


def _display_names(names: Iterable[str]) -> dict[str, str]:
    r"""Each file's name as the tools show it and look it up, by its name on disk.

    Names on disk are distinct, and so must the shown ones be: one that is not UTF-8 reads
    as another name only when that name is not taken (a folder can hold "café.md" in UTF-8
    and in Latin-1); else its bytes are written out ("caf\xe9.md").
    """
    names = list(names)
    shown = {name: name for name in names if not _ESCAPED_BYTE.search(name)}
    taken = set(shown.values())
    for name in names:
        if name in shown:
            continue
        escaped = PurePosixPath(os.fsencode(name).decode("utf-8", errors="backslashreplace"))
        numbered = (escaped.with_stem(f"{escaped.stem} ({n})") for n in itertools.count(2))
        candidates = itertools.chain([_readable(name), escaped.as_posix()], map(str, numbered))
        shown[name] = next(c for c in candidates if c not in taken)
        taken.add(shown[name])
    return shown


def _quoted(name: str) -> str:
    r"""A name in a message, between quotes as it is written: repr would double every
    backslash ("C:\\notes.md"), and a reader copying it back would name no file. What
    cannot be printed (a control character) is escaped, as repr does."""
    return f"'{name}'" if name.isprintable() else repr(name)


def _unreadable(name: str, reason: str) -> UnknownDocumentError:
    return UnknownDocumentError(f"document {_quoted(name)} exists but could not be read: {reason}")


def _spellings(name: str) -> list[str]:
    r"""The names a lookup tries, in order: as given, without surrounding white space, then
    with Windows separators as "/" and no leading "./" ("notes\meeting.md"). A backslash is
    an ordinary character of a Linux file name, so it is tried as written first."""
    name = _readable(name)
    stripped = name.strip()
    return list(dict.fromkeys([name, stripped, stripped.replace("\\", "/").removeprefix("./")]))


# -- chunking -----------------------------------------------------------------------------


def _folded(name: str) -> str:
    """A name as typed and as a file system keeps it compare equal: "résumé" is one name
    whether its accents are composed (as typed) or not (as macOS and zip write them)."""
    return unicodedata.normalize("NFC", name).lower()


def _hard_split(text: str, size: int) -> list[str]:
    """Pieces of at most ``size`` characters, cut at white space where possible.

    It walks the text by position: cutting a copy of the rest at every piece made a long
    run without spaces (a sequence, base64) quadratic, about a minute at the 50 MB limit.
    """
    pieces: list[str] = []
    start, end = 0, len(text)
    while end - start > size:
        cut = text.rfind(" ", start, start + size + 1)
        if cut - start <= size // 2:
            cut = start + size
        pieces.append(text[start:cut].strip())
        start = cut
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
    if start < end:
        pieces.append(text[start:end])
    return pieces


def _tail(text: str, overlap: int) -> str:
    """The end of a chunk repeated at the start of the next: whole sentences if they fit."""
    if overlap <= 0:
        return ""
    sentences = split_sentences(text[-(overlap * 3) :])
    carried = ""
    for sentence in reversed(sentences[1:] if len(sentences) > 1 else sentences):
        candidate = f"{sentence} {carried}".strip()
        if len(candidate) > overlap:
            break
        carried = candidate
    if carried:
        return carried
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :].strip() if 0 <= space < len(tail) - 1 else tail.strip()


def chunk_blocks(
    blocks: list[Block], chunk_size: int = 900, overlap: int = 120
) -> list[tuple[str, str]]:
    """``(section, text)`` chunks: paragraphs packed up to ``chunk_size`` characters.

    A heading always starts a new chunk (and names the section of the chunks under it);
    a paragraph too long for a chunk is split between sentences (a sentence too long,
    between words); consecutive chunks of one section share up to ``overlap`` characters
    (whole sentences when they fit), and no chunk exceeds ``chunk_size`` characters.
    """
    chunks: list[tuple[str, str]] = []
    headings: list[tuple[int, str]] = []
    units: list[tuple[str, str]] = []  # (text, separator before it)

    def pack() -> None:
        section = " > ".join(text for _, text in headings)
        current = ""
        for text, separator in units:
            if current and len(current) + len(separator) + len(text) > chunk_size:
                chunks.append((section, current))
                carry = _tail(current, overlap)
                current = f"{carry} {text}" if carry else text
            else:
                current = f"{current}{separator}{text}" if current else text
        if current:
            chunks.append((section, current))
        units.clear()

    for block in blocks:
        if block.kind == "heading":
            pack()
            while headings and headings[-1][0] >= max(block.level, 1):
                headings.pop()
            headings.append((max(block.level, 1), block.text))
            continue
        # Units leave room for the overlap, so a chunk with its carried tail still fits.
        room = chunk_size - overlap - 1
        if len(block.text) <= room:
            units.append((block.text, "\n\n"))
            continue
        separator = "\n\n"
        for sentence in split_sentences(block.text) if block.kind != "code" else [block.text]:
            for piece in _hard_split(sentence, room):
                units.append((piece, separator))
                separator = " "
    pack()
    if not chunks and headings:  # a document of headings only
        chunks.append(("", "\n".join(text for _, text in headings)))
    return chunks


# -- snippets and sentence scoring --------------------------------------------------------


def _snippet(text: str, query_terms: set[str], width: int = _SNIPPET_WIDTH) -> str:
    """About ``width`` characters of ``text`` around the densest run of query words."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    spans: list[tuple[int, int, frozenset[str]]] = []
    for match in WORD_RE.finditer(text):
        hit = frozenset(tokenize(match.group())) & query_terms
        if hit:
            spans.append((match.start(), match.end(), hit))
    if spans:
        best, best_key = (spans[0][0], spans[0][1]), (0, 0)
        for i, (start, _, _) in enumerate(spans):
            inside = [s for s in spans[i:] if s[1] <= start + width]
            key = (len(frozenset().union(*(s[2] for s in inside))), len(inside))
            if key > best_key:
                best, best_key = (start, inside[-1][1]), key
        middle = (best[0] + best[1]) // 2
        start = max(0, min(middle - width // 2, len(text) - width))
    else:
        start = 0
    end = min(len(text), start + width)
    if start > 0:
        space = text.find(" ", start)
        start = space + 1 if 0 <= space < start + 30 else start
    if end < len(text):
        space = text.rfind(" ", start, end)
        end = space if space > end - 30 else end
    return ("…" if start > 0 else "") + text[start:end].strip() + ("…" if end < len(text) else "")


def _sentences(document: Document) -> list[tuple[str, bool]]:
    """``(sentence, opens its paragraph)`` for the prose of a document, in order; for a
    document that is nothing but tables, its rows (a summary of a price list is rows of
    it, not nothing)."""
    found: list[tuple[str, bool]] = []
    for block in document.blocks:
        if block.kind in ("text", "item"):
            for j, sentence in enumerate(split_sentences(block.text)):
                if WORD_RE.search(sentence):
                    found.append((sentence, j == 0))
    if not found:
        found = [(b.text, True) for b in document.blocks if b.kind == "row"]
    return found


def _ranked_sentences(document: Document) -> list[tuple[float, int, str]]:
    """``(score, position, sentence)`` best first: extractive summarization by term weight.

    A sentence scores by the average frequency (in the whole document) of its content
    terms, damped for sentences with few terms, and lifted by its position (earlier is
    better; the lead sentence and the first of each paragraph more) and by terms it shares
    with the title and headings.
    """
    sentences = _sentences(document)
    if not sentences:
        return []
    term_lists = [terms(s) for s, _ in sentences]
    frequency = Counter(t for tl in term_lists for t in tl)
    if not frequency:
        return [(0.0, i, s) for i, (s, _) in enumerate(sentences)]
    top = max(frequency.values())
    heading_text = " ".join(b.text for b in document.blocks if b.kind == "heading")
    heading_terms = set(terms(f"{document.title or ''} {heading_text}"))
    n = len(sentences)
    ranked: list[tuple[float, int, str]] = []
    for i, ((sentence, opens), term_list) in enumerate(zip(sentences, term_lists, strict=True)):
        unique = set(term_list)
        if not unique:
            ranked.append((0.0, i, sentence))
            continue
        density = sum(frequency[t] / top for t in unique) / len(unique)
        coverage = min(1.0, len(unique) / 4)
        lift = 1.0 + 0.5 * (1 - i / n) + (0.15 if opens else 0.0) + (0.3 if i == 0 else 0.0)
        lift += 0.3 * min(len(unique & heading_terms), 3) / 3
        length = len(sentence.split())
        penalty = 0.7 if length > 60 else 1.0
        ranked.append((density * coverage * lift * penalty, i, sentence))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    return ranked


def _pick(ranked: list[tuple[float, int, str]], count: int) -> list[tuple[int, str]]:
    """The best ``count`` sentences, skipping near-duplicates, in document order."""
    chosen: list[tuple[int, str, set[str]]] = []
    for _, position, sentence in ranked:
        words = set(terms(sentence))
        if any(words and len(words & other) / len(words | other) >= 0.6 for _, _, other in chosen):
            continue
        chosen.append((position, sentence, words))
        if len(chosen) >= count:
            break
    return [(p, s) for p, s, _ in sorted(chosen)]


def _word_counts(text: str) -> tuple[Counter[str], dict[str, str]]:
    """How often each whole-word term occurs in ``text``, and the word it is most often
    written as (for display). Comparisons count whole words: see :func:`word_terms`."""
    written = Counter(word_terms(text))
    counts: Counter[str] = Counter()
    labels: dict[str, str] = {}
    for (term, word), count in written.most_common():
        counts[term] += count
        labels.setdefault(term, word)
    return counts, labels


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    dot = sum(count * b[t] for t, count in a.items() if t in b)
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return dot / norm if norm else 0.0


# -- the store ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    documents: dict[str, Document]
    problems: dict[str, str]
    chunks: list[Chunk]
    index: LexicalIndex
    renamed: dict[str, str]  # shown names of files whose names on disk are not UTF-8


class DocumentStore:
    """The documents under one folder, chunked and indexed for search.

    Args:
        root: the folder to load (recursively; hidden files and folders are skipped)
        chunk_size: the most characters of a chunk (a single over-long word excepted)
        overlap: about how many characters consecutive chunks of one section share
        max_file_bytes: larger files are reported as unreadable instead of loaded
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        chunk_size: int = 900,
        overlap: int = 120,
        max_file_bytes: int = 50 * 1024 * 1024,
    ) -> None:
        if chunk_size < 200:
            raise ValueError(f"chunk_size must be at least 200 characters, got {chunk_size}")
        if not 0 <= overlap < chunk_size // 2:
            raise ValueError(f"overlap must be between 0 and chunk_size / 2, got {overlap}")
        self.root = Path(root).expanduser().resolve()
        if not self.root.is_dir():
            raise NotADirectoryError(f"document root {str(root)!r} is not a folder")
        self.chunk_size = chunk_size
        self.overlap = overlap
        self.max_file_bytes = max_file_bytes
        self._loaded = _Loaded({}, {}, [], LexicalIndex([]), {})
        self.reload()

    @property
    def documents(self) -> dict[str, Document]:
        """The loaded documents by name (path under the root, with / separators)."""
        return self._loaded.documents

    @property
    def problems(self) -> dict[str, str]:
        """Files that could not be loaded, by name, with the reason."""
        return self._loaded.problems

    @property
    def chunks(self) -> list[Chunk]:
        """Every chunk of every document, in the index's order."""
        return self._loaded.chunks

    # -- loading ---------------------------------------------------------------------------

    def _files(self) -> dict[str, Path]:
        """Each file to load, by its name on disk (relative to the root, "/" separators)."""
        found: dict[str, Path] = {}
        for folder, subfolders, files in os.walk(self.root):
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
            for filename in sorted(files):
                path = Path(folder, filename)
                if filename.startswith(".") or path.suffix.lower() not in FORMATS:
                    continue
                found[path.relative_to(self.root).as_posix()] = path
        return found

    def reload(self) -> None:
        """Read the folder again: new, changed and removed files are taken into account."""
        documents: dict[str, Document] = {}
        problems: dict[str, str] = {}
        files = self._files()
        shown = _display_names(files)
        for on_disk, path in files.items():
            name = shown[on_disk]
            try:
                try:
                    real = path.resolve()
                except RuntimeError:  # Python 3.11 and 3.12 name the loop's real location
                    raise _Unreadable("a loop of symbolic links") from None
                if not real.is_relative_to(self.root):
                    raise _Unreadable("a symbolic link pointing outside the document root")
                size = real.stat().st_size
                if size > self.max_file_bytes:
                    raise _Unreadable(
                        f"{size:,} bytes is more than the {self.max_file_bytes:,}-byte limit"
                    )
                documents[name] = read_document(real, name)
            except _Unreadable as error:
                problems[name] = str(error)
            except OSError as error:  # its text names the real location, which stays unsaid
                problems[name] = f"{type(error).__name__}: {error.strerror or 'cannot be read'}"
            except Exception as error:  # a reader's bug must not stop the other files
                problems[name] = f"{type(error).__name__}: {error}"
        chunks: list[Chunk] = []
        for document in documents.values():
            pieces = chunk_blocks(document.blocks, self.chunk_size, self.overlap)
            document.chunks = [
                Chunk(document.name, i, section, text) for i, (section, text) in enumerate(pieces)
            ]
            chunks.extend(document.chunks)
        # Titles and section headings are indexed with each chunk: they say what it is about.
        index = LexicalIndex(
            [
                "\n".join(filter(None, (documents[c.document].title, c.section, c.text)))
                for c in chunks
            ]
        )
        renamed = {disk: name for disk, name in shown.items() if disk != name}
        self._loaded = _Loaded(documents, problems, chunks, index, renamed)  # one swap: readers see
        # either the old state or the new one, never a mix

    def get(self, name: str) -> Document:
        """The document called ``name``: its path under the root, or a unique file name or stem.

        Raises :class:`UnknownDocumentError` listing the loaded names, or saying why when
        the name is that of a file that could not be read: it was found, and "no document
        named" would send the caller looking for another name.
        """
        loaded = self._loaded  # one state throughout, should a reload swap it meanwhile
        names = [*loaded.documents, *loaded.problems]
        for key in _spellings(loaded.renamed.get(name, name)):
            if key in loaded.documents:
                return loaded.documents[key]
            if key in loaded.problems:
                raise _unreadable(key, loaded.problems[key])
            folded = _folded(key)
            for part in (
                lambda n: n,
                lambda n: n.rsplit("/", 1)[-1],
                lambda n: PurePosixPath(n).stem,  # the link's, for a link: the name shown
            ):
                found = sorted(n for n in names if _folded(part(n)) == folded)
                if len(found) == 1:
                    if found[0] in loaded.documents:
                        return loaded.documents[found[0]]
                    raise _unreadable(found[0], loaded.problems[found[0]])
                if found:  # "guide" is guide.md and guide.txt: say which, not "no document"
                    shown = " or ".join(
                        _quoted(n) if n in loaded.documents else f"{_quoted(n)} (unreadable)"
                        for n in found
                    )
                    raise UnknownDocumentError(
                        f"document name {_quoted(name)} is ambiguous: write {shown}"
                    )
        listed = sorted(loaded.documents)
        close = difflib.get_close_matches(_spellings(name)[-1], listed, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(_quoted(c) for c in close)}?" if close else ""
        shown = ", ".join(listed[:50])
        if len(listed) > 50:
            shown += f" and {len(listed) - 50} more"
        raise UnknownDocumentError(
            f"no document named {_quoted(name)}{hint} Loaded documents: {shown or 'none'}"
        )

    # -- tools -----------------------------------------------------------------------------

    def search_documents(
        self, query: str, top_k: Annotated[int, Field(ge=1, le=50)] = 5
    ) -> list[SearchHit]:
        """Search the loaded documents for passages about a query (BM25 over chunks).

        Returns the best passages first, each with its document, chunk number, section
        heading, score and a snippet centred on the words that matched. Passages sharing no
        word with the query are not returned, so the list may be empty.

        Args:
            query: words to look for, e.g. "refund policy for annual plans"
            top_k: the most passages to return, 1 to 50
        """
        if not query.strip():
            raise BuiltinToolError("the query is empty")
        query_terms = set(tokenize(query))
        loaded = self._loaded
        hits: list[SearchHit] = []
        for position, score in loaded.index.search(query, k=top_k):
            chunk = loaded.chunks[position]
            hits.append(
                {
                    "document": chunk.document,
                    "chunk": chunk.index,
                    "section": chunk.section,
                    "score": round(score, 4),
                    "snippet": _snippet(chunk.text, query_terms),
                }
            )
        return hits

    def summarize_document(
        self, name: str, max_sentences: Annotated[int, Field(ge=1, le=20)] = 5
    ) -> Summary:
        """Summarize one document with its most representative sentences (extractive).

        Sentences are scored by how frequent their words are in the whole document, by
        their position (earlier is better) and by the words they share with the title and
        headings; near-duplicates are skipped and the chosen ones keep document order.

        Args:
            name: the document, as list_documents names it (a unique file name or stem works)
            max_sentences: the most sentences in the summary, 1 to 20
        """
        document = self.get(name)
        ranked = _ranked_sentences(document)
        chosen = [sentence for _, sentence in _pick(ranked, max_sentences)]
        return {
            "document": document.name,
            "title": document.title,
            "summary": " ".join(chosen),
            "sentences": chosen,
            "total_sentences": len(ranked),
        }

    def compare_documents(self, first: str, second: str, topic: str | None = None) -> Comparison:
        """Compare two documents: shared and distinctive key terms, and what each says.

        Shared terms are frequent in both; distinctive terms are frequent in one and absent
        or far rarer in the other. With a topic, each side gives its (up to three) most
        relevant sentences about it; without one, its three summary sentences. Similarity is
        the cosine of the two documents' term counts (0 to 1).

        Args:
            first: the first document's name
            second: the second document's name
            topic: what to compare them on, e.g. "pricing"; optional
        """
        a, b = self.get(first), self.get(second)
        (counts_a, labels_a), (counts_b, labels_b) = _word_counts(a.text), _word_counts(b.text)
        total_a, total_b = sum(counts_a.values()) or 1, sum(counts_b.values()) or 1
        share_a = {t: c / total_a for t, c in counts_a.items()}
        share_b = {t: c / total_b for t, c in counts_b.items()}
        labels = {**labels_b, **labels_a}

        def named(found: list[str], count: int = 10) -> list[str]:
            labelled: list[str] = []
            for term in found:
                label = labels.get(term, term)
                if label not in labelled:
                    labelled.append(label)
            return labelled[:count]

        shared = sorted(
            set(counts_a) & set(counts_b), key=lambda t: (-min(share_a[t], share_b[t]), t)
        )[:10]

        def distinctive(mine: dict[str, float], theirs: dict[str, float]) -> list[str]:
            # Frequent here, and absent or at most a third as frequent there.
            found = [t for t, s in mine.items() if theirs.get(t, 0.0) * 3 <= s and t not in shared]
            found.sort(key=lambda t: (-(mine[t] - theirs.get(t, 0.0)), t))
            return found

        topic = topic.strip() if topic and topic.strip() else None
        return {
            "first": a.name,
            "second": b.name,
            "similarity": round(_cosine(counts_a, counts_b), 4),
            "shared_terms": named(shared),
            "distinctive_first": named(distinctive(share_a, share_b)),
            "distinctive_second": named(distinctive(share_b, share_a)),
            "topic": topic,
            "first_sentences": self._about(a, topic),
            "second_sentences": self._about(b, topic),
        }

    @staticmethod
    def _about(document: Document, topic: str | None, count: int = 3) -> list[str]:
        if topic is None:
            return [s for _, s in _pick(_ranked_sentences(document), count)]
        sentences = [s for s, _ in _sentences(document)]
        if not sentences:
            return []
        hits = LexicalIndex(sentences).search(topic, k=count)
        return [sentences[i] for i, _ in hits]

    def list_documents(self) -> DocumentList:
        """List the loaded documents (name, format, title, size, chunks) and unreadable files."""
        return {
            "documents": [
                {
                    "name": d.name,
                    "format": d.format,
                    "title": d.title,
                    "characters": len(d.text),
                    "chunks": len(d.chunks),
                    "pages": d.pages,
                }
                for d in self.documents.values()
            ],
            "unreadable": [{"name": n, "error": e} for n, e in self.problems.items()],
        }

    def __len__(self) -> int:
        return len(self.documents)

    def __repr__(self) -> str:
        return (
            f"DocumentStore({str(self.root)!r}: {len(self.documents)} documents, "
            f"{len(self.chunks)} chunks, {len(self.problems)} unreadable)"
        )


_TOOLS = ("search_documents", "summarize_document", "compare_documents", "list_documents")


def register_documents(
    registry: ToolRegistry,
    documents: DocumentStore | str | os.PathLike[str],
    *,
    replace: bool = False,
) -> list[Tool]:
    """Register the documents pack, bound to a store (or a folder to load into one).

    Tools: search_documents, summarize_document, compare_documents, list_documents.
    """
    store = documents if isinstance(documents, DocumentStore) else DocumentStore(documents)
    tools: list[Tool] = []
    for name in _TOOLS:
        method: Any = getattr(store, name)
        tools.append(
            registry.register_function(
                method,
                name=name,
                reliability=Reliability.HIGH,
                tags=("documents",),
                replace=replace,
            )
        )
    return tools
