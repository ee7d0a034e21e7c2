"""Text as every backend can store it."""

from __future__ import annotations


def clean_text(value: str) -> str:
    """Text every backend can store: NUL and lone surrogates become U+FFFD.

    PostgreSQL refuses NUL in text and in ``jsonb``, and no UTF-8 encoder takes a
    lone surrogate (what ``surrogateescape`` decoding leaves of undecodable
    bytes): either would lose the whole record in the background. A tool's
    output or error with a stray binary byte is common enough to keep.
    """
    if "\x00" not in value and value.isascii():  # nearly always: nothing to do
        return value
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            value = value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return value
