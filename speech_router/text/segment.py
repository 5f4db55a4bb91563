"""Cut a long text into segments that several TTS nodes can synthesize at once and play back in order.

A segment is a natural prosodic unit: whole sentences, merged while shorter than ``min_chars`` (a very
short text synthesizes with odd prosody and costs a whole request), and an overlong sentence split at
the clause mark nearest below ``max_chars``, else at a space, else (Chinese, no spaces) between two
characters; never inside a number, URL, e-mail address, abbreviation or word. A single token longer than
``max_chars`` stays whole. Joining the segments with a space (none between Chinese characters) gives the
text back with its whitespace tidied: nothing is lost or repeated.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from .chars import CLAUSE_MARKS, CLOSERS, ENDERS, OPENERS, gap, is_wide, speakable
from .protect import protected
from .sentences import blocks, sentence_spans

_SPACE = re.compile(" ")
_CLAUSE_RUN = re.compile(f"[{re.escape(CLAUSE_MARKS)}]+[{re.escape(CLOSERS)}]*")
#: a piece must not start with these
_TRAILING_MARKS = frozenset(CLOSERS + CLAUSE_MARKS + ENDERS)

DEFAULT_MAX_CHARS = 120
DEFAULT_MIN_CHARS = 20


def split_segments(text: str, *, max_chars: int = DEFAULT_MAX_CHARS, min_chars: int = DEFAULT_MIN_CHARS) -> list[str]:
    """Segments of ``text`` in order, each at most ``max_chars`` long unless one token alone is longer.

    Pure and deterministic: the same text and limits always give the same segments, so a cached
    segment's audio can be reused.
    """
    if max_chars < 1:
        raise ValueError(f"max_chars must be at least 1, not {max_chars}")
    pieces: list[tuple[str, str]] = []  # (what joins it to the piece before, text)
    for block in blocks(text):
        blocked = protected(block)
        for sentence_start, sentence_end in sentence_spans(block, blocked):
            for start, end in _fit(block, blocked, sentence_start, sentence_end, max_chars, min_chars):
                piece = block[start:end]
                if start:
                    joiner = " " if block[start - 1] == " " else ""
                else:
                    joiner = gap(pieces[-1][1][-1], piece[0]) if pieces else ""
                pieces.append((joiner, piece))
    return _merge(pieces, max_chars, min_chars)


def _merge(pieces: list[tuple[str, str]], max_chars: int, min_chars: int) -> list[str]:
    """Short or unspeakable pieces join the next piece, or the one before when the next has no room."""

    def lonely(piece: str) -> bool:
        return len(piece) < min_chars or not speakable(piece)

    groups: list[list[str]] = []  # [joiner, text]
    for joiner, piece in pieces:
        if groups and (lonely(groups[-1][1]) or not speakable(piece)):
            if len(groups[-1][1]) + len(joiner) + len(piece) <= max_chars:
                groups[-1][1] += joiner + piece
                continue
        groups.append([joiner, piece])
    for index in range(len(groups) - 1, 0, -1):
        joiner, piece = groups[index]
        if lonely(piece) and len(groups[index - 1][1]) + len(joiner) + len(piece) <= max_chars:
            groups[index - 1][1] += joiner + piece
            del groups[index]
    return [piece for _, piece in groups if speakable(piece)]


def _fit(
    block: str, blocked: bytearray, start: int, end: int, max_chars: int, min_chars: int
) -> Iterator[tuple[int, int]]:
    """Split the sentence ``block[start:end]`` into pieces of at most ``max_chars`` where it is longer."""
    while end - start > max_chars:
        cut = _cut(block, blocked, start, end, max_chars, min_chars)
        if cut >= end:
            break
        piece_end = cut
        while block[piece_end - 1] == " ":
            piece_end -= 1
        yield start, piece_end
        start = cut
        while block[start] == " ":
            start += 1
    yield start, end


def _cut(block: str, blocked: bytearray, start: int, end: int, max_chars: int, min_chars: int) -> int:
    """Where to end the first piece: the best-ranked allowed cut nearest below the limit.

    Ranks: a clause mark, a space, then (text without spaces) between two characters. Within a rank a
    cut that leaves at least ``min_chars`` after it wins, so a sentence just over the limit does not
    shed a fragment that would then be glued to the next sentence.
    """
    high = min(start + max_chars, end - 1)
    clauses = [
        match.end() for match in _CLAUSE_RUN.finditer(block, start, high + 1)
        if not blocked[match.end()] and block[match.end()] not in _TRAILING_MARKS
    ]
    spaces = [match.start() for match in _SPACE.finditer(block, start, high + 1) if not blocked[match.start()]]
    highs = (min(high, end - min_chars - 1), high)  # - 1: the space a cut usually leaves behind
    balanced = start + max(1, max_chars // 3)  # not a sliver of a piece when a cut further on exists
    for cuts, low in ((clauses, balanced), (spaces, balanced), (clauses, start + 1), (spaces, start + 1)):
        for limit in highs:
            cut = next((cut for cut in reversed(cuts) if low <= cut <= limit), None)
            if cut is not None:
                return cut
    for limit in highs:
        for cut in range(limit, start, -1):
            if _between_characters(block, blocked, cut):
                return cut
    for cut in range(high + 1, end):  # one token longer than the limit: end the piece right after it
        if _between_characters(block, blocked, cut) or (block[cut - 1] in CLAUSE_MARKS and not blocked[cut]):
            return cut
    return end


def _between_characters(block: str, blocked: bytearray, cut: int) -> bool:
    """A cut that splits no token, word or run of Latin letters and digits, and strands no punctuation."""
    if blocked[cut]:
        return False
    left, right = block[cut - 1], block[cut]
    if left == " " or right == " ":
        return True
    if right in _TRAILING_MARKS or left in OPENERS:
        return False
    return is_wide(left) or is_wide(right)
