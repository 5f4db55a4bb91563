"""Where sentences end in Chinese, English and mixed text; paragraphs and list items end them too.

Chinese end marks (。！？；) end a sentence wherever they stand. The ASCII ones (. ! ? …) are ambiguous:
they end a sentence only before a space, a line end or a Chinese character, never inside a number, URL
or abbreviation (see ``protect``), and not before a lowercase word ("etc. and", "wait... then").
Closing quotes and brackets after the mark stay with their sentence.
"""

from __future__ import annotations

import re

from .chars import CLAUSE_MARKS, CLOSERS, ENDERS, FULL_ENDERS, WIDE_CLASS, is_wide
from .protect import protected

_END_RUN = re.compile(f"[{re.escape(ENDERS)}]+[{re.escape(ENDERS + CLOSERS)}]*")
_FULL_ENDERS = frozenset(FULL_ENDERS)
_SPACE = re.compile(r"\s+")
_SPACE_BETWEEN_WIDE = re.compile(f"(?<={WIDE_CLASS}) (?={WIDE_CLASS})")
#: a line that starts a list item starts a new sentence: "- item", "1. item", "2) item", "（3）", "a) item"
_LIST_ITEM = re.compile(r"(?:[-*•·‣◦]\s|(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,4})[.)]\s|\d{1,3}[．、]|[（(]\d{1,3}[)）])")


def split_sentences(text: str) -> list[str]:
    """The text's sentences in order, whitespace tidied; no length limits (see ``split_segments``)."""
    sentences: list[str] = []
    for block in blocks(text):
        blocked = protected(block)
        sentences.extend(block[start:end] for start, end in sentence_spans(block, blocked))
    return sentences


def blocks(text: str) -> list[str]:
    """Paragraphs and list items, each on one line: a line break is a sentence end unless it only wraps prose.

    A line continues the one before when it starts with a lowercase word or the line before ends with a
    clause mark ("as follows:"), so text wrapped at a fixed width stays one paragraph while headings,
    list items and Chinese paragraphs (which are never wrapped) stand alone.
    """
    grouped: list[list[str]] = []
    after_blank = True
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            after_blank = True
            continue
        if not after_blank and _continues(grouped[-1][-1], line):
            grouped[-1].append(line)
        else:
            grouped.append([line])
        after_blank = False
    return [_tidy(" ".join(lines)) for lines in grouped]


def sentence_spans(block: str, blocked: bytearray) -> list[tuple[int, int]]:
    """``(start, end)`` of each sentence of a tidied block, without the spaces between them."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in _END_RUN.finditer(block):
        first, end = match.span()
        if blocked[first] or not _ends_sentence(block, match.group(), end):
            continue
        spans.append((start, end))
        start = end + 1 if end < len(block) and block[end] == " " else end
    if start < len(block):
        spans.append((start, len(block)))
    return spans


def _ends_sentence(block: str, run: str, end: int) -> bool:
    if end == len(block) or not _FULL_ENDERS.isdisjoint(run):
        return True
    after = block[end]
    if after == " ":  # a tidied block has single spaces and no space at its end
        return not block[end + 1].islower()
    return is_wide(after)


def _continues(previous: str, line: str) -> bool:
    if _LIST_ITEM.match(line):
        return False
    return line[0].islower() or previous[-1] in CLAUSE_MARKS


def _tidy(line: str) -> str:
    """One space for each run of whitespace, none between two Chinese characters (``line`` is stripped)."""
    return _SPACE_BETWEEN_WIDE.sub("", _SPACE.sub(" ", line))
