"""Search text handling: user queries into FTS5 syntax, and raw snippets into safe HTML.

Both backends return snippets with the matches between the control characters below (stripped
from the text they highlight, so content cannot forge them); the text is escaped and only then
are the markers turned into <mark>, the only markup a page will render.
"""

from __future__ import annotations

import html
import re

MARK_START = "\x01"
MARK_END = "\x02"

# A quoted phrase, or a run of anything but spaces and quotes; a leading "-" excludes.
_TERM = re.compile(r'(-?)"([^"]*)"?|(\S+)')
_WORD = re.compile(r"\w+", re.UNICODE)


def to_fts5_query(query: str) -> str:
    """Translates web-search syntax (words, "phrases", OR, -excluded) into an FTS5 query.

    The result only contains quoted strings and the operators AND/OR/NOT, so no user input
    can make FTS5 raise a syntax error. Empty when the query holds no words.
    """
    positive: list[str] = []
    negative: list[str] = []
    pending_or = False
    for match in _TERM.finditer(query):
        exclude, phrase, bare = match.group(1), match.group(2), match.group(3)
        if bare is not None:
            if bare == "OR":
                pending_or = bool(positive)
                continue
            if bare.startswith("-") and len(bare) > 1:
                exclude, text = "-", bare[1:]
            else:
                text = bare
        else:
            text = phrase
        words = _WORD.findall(text)
        if not words:
            continue
        term = '"' + " ".join(words) + '"'
        if exclude:
            negative.append(term)
        elif pending_or and positive:
            positive[-1] = f"{positive[-1]} OR {term}"
            pending_or = False
        else:
            positive.append(term)
    if not positive:
        return ""
    expression = " AND ".join(f"({term})" for term in positive)
    for term in negative:
        expression = f"({expression}) NOT {term}"
    return expression


def mark_snippet(raw: str) -> str:
    """Escapes the snippet's text and turns the match markers into <mark> tags."""
    return _marks(html.escape(raw, quote=False))


def mark_escaped_snippet(escaped: str) -> str:
    """Like mark_snippet, for text the database escaped itself (PostgreSQL must: ts_headline
    drops anything that parses as a tag). Stray angle brackets are escaped all the same, so
    <mark> stays the only markup whatever the database returned."""
    return _marks(escaped.replace("<", "&lt;").replace(">", "&gt;"))


def _marks(escaped: str) -> str:
    return escaped.replace(MARK_START, "<mark>").replace(MARK_END, "</mark>")


# Terms (words, phrases, exclusions, OR) a search may hold.
MAX_QUERY_TERMS = 32


def count_terms(query: str) -> int:
    """How many terms the query holds, as to_fts5_query and websearch_to_tsquery split it."""
    return sum(1 for _ in _TERM.finditer(query))
