"""Text that arrives in pieces (an LLM's tokens) cut into segments as soon as each one is complete.

The rules are fan-out's (``speech_router.text``): sentence ends in Chinese, English and mixed text, never inside
a number, URL or abbreviation, a long sentence cut at the clause mark nearest below ``max_chars``. What is new is
*when*: a sentence is complete once text after it has started (the next token confirms that ``world.`` ended a
sentence and ``3.`` did not), or once nothing more arrived for ``hold_s`` after a mark that ends one (an LLM
that pauses, or writes slower than one token per ``hold_s``); the rest waits for more text or ``input.done``.
Short sentences that complete together are merged (``min_chars``), as fan-out does; one that completes alone
goes alone, since waiting for a neighbour would delay the audio.

Every cut remembers when its last character arrived (``complete_at``), so time to first audio is measured from
the moment the sentence was written, not from when the router noticed.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Literal

from ..config.realtime import DEFAULT_SENTENCE_HOLD_MS
from ..text.chars import CLAUSE_MARKS, CLOSERS, ENDERS, WIDE_CLASS
from ..text.protect import BEFORE_NUMBERS, NEVER_FINAL, TITLES, protected
from ..text.segment import split_segments

#: how text is cut: at sentence ends (clause marks when a sentence grows long), at every clause mark too, or
#: only at ``input.done`` (vllm-omni's ``split_granularity``)
Granularity = Literal["sentence", "clause", "none"]

_SPACE = re.compile(r"\s+")
#: a clause mark (with what closes it) followed by a space or a wide character: where clause mode cuts
_CLAUSE_END = re.compile(f"[{re.escape(CLAUSE_MARKS)}]+[{re.escape(CLOSERS)}]*(?= |{WIDE_CLASS})")
_WORD_BEFORE_DOT = re.compile(r"([A-Za-z][A-Za-z.]*)\.$")


@dataclass(frozen=True)
class Cut:
    """One segment of text, ready to synthesize; ``complete_at``: when its last character arrived."""

    text: str
    complete_at: float


class TextCutter:
    """One utterance's text as it arrives; ``feed`` returns the segments it completed."""

    def __init__(self, *, max_chars: int, min_chars: int, granularity: Granularity = "sentence",
                 hold_s: float = DEFAULT_SENTENCE_HOLD_MS / 1000) -> None:
        self.max_chars = max_chars
        self.min_chars = min_chars
        self.granularity = granularity
        self.hold_s = hold_s
        self._raw = ""  # text not cut yet, as it came
        self._arrivals: list[tuple[int, float]] = []  # (end offset in _raw of one piece of input, when it came)

    def __repr__(self) -> str:
        return f"TextCutter(buffered={len(self._raw)}, granularity={self.granularity!r})"

    @property
    def buffered(self) -> int:
        """Characters received and not cut yet."""
        return len(self._raw)

    def feed(self, text: str, now: float) -> list[Cut]:
        """Add ``text`` (arrived at ``now``); the segments it completed, in order."""
        if not text:
            return []
        self._raw += text
        self._arrivals.append((len(self._raw), now))
        if self.granularity == "none":
            return []
        pieces = self._pieces(self._raw)
        if len(pieces) < 2:
            return []
        tail = _tail_start(self._raw, pieces[-1])
        if tail is None:  # the pieces do not map back onto the text: wait for a sentence end or input.done
            return []
        return self._cut(tail)

    def due(self) -> float | None:
        """When the text held back should be cut if nothing more arrives: it ends with a sentence mark."""
        if self.granularity == "none" or not self._arrivals or not _ends_sentence(self._raw):
            return None
        return self._arrivals[-1][1] + self.hold_s

    def cut_held(self) -> list[Cut]:
        """The held text as segments, once ``due`` has passed without more text."""
        return self._cut(len(self._raw)) if self.due() is not None else []

    def flush(self) -> list[Cut]:
        """Everything left (``input.done``)."""
        return self._cut(len(self._raw))

    def _pieces(self, text: str) -> list[str]:
        pieces = split_segments(text, max_chars=self.max_chars, min_chars=1)
        if self.granularity == "clause":
            pieces = [part for piece in pieces for part in _clauses(piece)]
        return pieces

    def _cut(self, end: int) -> list[Cut]:
        """Segments of ``_raw[:end]``, which is then dropped from the buffer."""
        done, self._raw = self._raw[:end], self._raw[end:]
        arrivals = self._arrivals
        self._arrivals = [(offset - end, t) for offset, t in arrivals if offset > end]
        if self.granularity == "clause":
            texts = self._pieces(done)
        else:
            texts = split_segments(done, max_chars=self.max_chars, min_chars=self.min_chars)
        cuts = []
        seen = 0  # non-space characters of ``done`` before the segment's end
        for segment in texts:
            seen += len(_SPACE.sub("", segment))
            cuts.append(Cut(segment, _arrival(arrivals, _offset_of(done, seen))))
        return cuts


def _tail_start(raw: str, tail: str) -> int | None:
    """Where in ``raw`` the last piece begins (segments keep every non-space character, in order), or None."""
    wanted = len(_SPACE.sub("", tail))
    count = 0
    for index in range(len(raw) - 1, -1, -1):
        if not raw[index].isspace():
            count += 1
            if count == wanted:
                return index if _SPACE.sub("", raw[index:]) == _SPACE.sub("", tail) else None
    return None


def _offset_of(text: str, nonspace: int) -> int:
    """The index of the ``nonspace``-th non-space character of ``text`` (the last one when there are fewer)."""
    count = 0
    for index, char in enumerate(text):
        if not char.isspace():
            count += 1
            if count >= nonspace:
                return index
    return max(0, len(text) - 1)


def _arrival(arrivals: list[tuple[int, float]], offset: int) -> float:
    """When the character at ``offset`` arrived."""
    ends = [end for end, _ in arrivals]
    index = min(bisect.bisect_right(ends, offset), len(arrivals) - 1)
    return arrivals[index][1]


def _clauses(piece: str) -> list[str]:
    """A piece cut after each clause mark that is not inside a number or another token."""
    blocked = protected(piece)
    parts, start = [], 0
    for match in _CLAUSE_END.finditer(piece):
        if blocked[match.start()]:
            continue
        parts.append(piece[start:match.end()].strip())
        start = match.end()
    parts.append(piece[start:].strip())
    return [part for part in parts if part]


def _ends_sentence(text: str) -> bool:
    """Whether ``text`` ends with a mark that ends a sentence whatever comes next (not ``3.`` nor ``Dr.``)."""
    text = text.rstrip().rstrip(CLOSERS)
    if not text or text[-1] not in ENDERS:
        return False
    if text[-1] != ".":
        return True
    if len(text) > 1 and text[-2].isdigit():  # "3." may go on as "3.5"
        return False
    word = _WORD_BEFORE_DOT.search(text)
    if word is not None:
        name = word.group(1)
        if len(name) == 1 or "." in name or name in TITLES or name in BEFORE_NUMBERS or name.lower() in NEVER_FINAL:
            return False
    return not protected(text)[len(text) - 1]
